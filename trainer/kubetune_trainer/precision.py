"""spec.hyperparameters.precision: the one place that decides what is held in which dtype.

| precision | trained weights | frozen weights | matmuls | gradients | AdamW state | bytes per trained parameter |
|---|---|---|---|---|---|---|
| bf16 (default) | fp32 master copy | bf16 | bf16 (autocast) | fp32 | fp32 m and v | 4 + 4 + 8 = 16 |
| bf16-pure | bf16 | bf16 | bf16 | bf16 | bf16 m, v and Kahan compensation | 2 + 2 + 6 = 10 |
| fp16 | fp32 master copy | fp16 | fp16 (autocast, loss scaling) | fp32 | fp32 m and v | 16 |
| fp32 | fp32 | fp32 | fp32 | fp32 | fp32 m and v | 16 |

Frozen weights cost 2 bytes per parameter in the half-precision rows and 4 in fp32 (a quantized base is
counted by its technique). `full` and `feature-extraction` train base weights: under mixed precision they
load in fp32, so the master copy holds the checkpoint's exact values, and feature-extraction's frozen layers
are then cast down to the compute dtype.

Why master weights: an AdamW step moves a weight by about the learning rate, and bf16 keeps 8 significant
bits, so at lr 2e-5 the update of a weight of 0.02 (one bf16 step there is 1.2e-4) rounds away. One such
step in pure bf16 with plain AdamW left 69 % of a tiny model's lm_head entries unchanged. bf16-pure is
therefore only offered with torch-optimi's AdamW and its Kahan summation: each parameter keeps a bf16
buffer of what rounding dropped and adds it back at the next step, so updates accumulate as in fp32.

Without a GPU everything runs in fp32: half-precision matmuls on a CPU are slow or missing, and a user
asking for bf16 does not expect a CPU run to measure it. `detect_device` is the one place that asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubetune.api.constants import Optimizer, Precision
from kubetune_trainer.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Device:
    """What the machine's accelerator can do, as far as precision is concerned."""

    accelerator: bool
    bf16: bool


def detect_device() -> Device:
    import torch

    if not torch.cuda.is_available():
        return Device(accelerator=False, bf16=False)
    return Device(accelerator=True, bf16=bool(torch.cuda.is_bf16_supported()))


# Bytes a trained parameter costs in weights + gradient + AdamW state, and a frozen one in weights.
TRAINED_BYTES = {Precision.BF16: 16, Precision.BF16_PURE: 10, Precision.FP16: 16, Precision.FP32: 16}
FROZEN_BYTES = {Precision.BF16: 2, Precision.BF16_PURE: 2, Precision.FP16: 2, Precision.FP32: 4}


@dataclass(frozen=True)
class PrecisionPlan:
    requested: Precision
    effective: Precision  # what runs on this machine
    why: str

    @property
    def mixed(self) -> bool:
        return self.effective in (Precision.BF16, Precision.FP16)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matmuls run in: QLoRA's compute dtype, a merged model's, the frozen base's."""
        import torch

        return {
            Precision.BF16: torch.bfloat16,
            Precision.BF16_PURE: torch.bfloat16,
            Precision.FP16: torch.float16,
        }.get(self.effective, torch.float32)

    @property
    def master_dtype(self) -> torch.dtype:
        """The dtype trained weights (and so their gradients and the optimizer's state) are kept in."""
        import torch

        return torch.bfloat16 if self.effective == Precision.BF16_PURE else torch.float32

    def load_dtype(self, trains_base_weights: bool) -> torch.dtype:
        """The dtype to load the base model in; a technique that trains base weights loads them as masters."""
        return self.master_dtype if trains_base_weights else self.compute_dtype

    @property
    def trainer_flags(self) -> dict[str, bool]:
        """TrainingArguments' autocast switches."""
        return {
            "bf16": self.effective in (Precision.BF16, Precision.BF16_PURE),
            "fp16": self.effective == Precision.FP16,
        }

    @property
    def trained_bytes(self) -> int:
        return TRAINED_BYTES[self.effective]

    @property
    def frozen_bytes(self) -> int:
        return FROZEN_BYTES[self.effective]


def plan(spec, device: Device | None = None) -> PrecisionPlan:
    requested = Precision(spec.hyperparameters.precision)
    if requested == Precision.BF16_PURE and Optimizer(spec.hyperparameters.optimizer) != Optimizer.ADAMW:
        raise UserError(
            "spec.hyperparameters.precision: bf16-pure needs optimizer adamw (its Kahan-compensated AdamW keeps "
            f"small updates); optimizer is {spec.hyperparameters.optimizer}"
        )
    device = device or detect_device()
    if requested == Precision.FP32:
        return PrecisionPlan(requested, Precision.FP32, "precision fp32")
    if not device.accelerator:
        return PrecisionPlan(
            requested, Precision.FP32, f"precision {requested} requested but no GPU is visible: training in fp32"
        )
    if requested in (Precision.BF16, Precision.BF16_PURE) and not device.bf16:
        return PrecisionPlan(
            requested, Precision.FP32, f"precision {requested} requested but this GPU has no bf16: training in fp32"
        )
    why = {
        Precision.BF16: "precision bf16: fp32 master weights and optimizer state, bf16 matmuls",
        Precision.BF16_PURE: "precision bf16-pure: bf16 weights and optimizer state, AdamW with Kahan summation",
        Precision.FP16: "precision fp16: fp32 master weights, fp16 matmuls with loss scaling",
    }[requested]
    return PrecisionPlan(requested, requested, why)


def place_weights(model, precision: PrecisionPlan, *, trains_base_weights: bool) -> None:
    """Put every parameter in its dtype once the technique has chosen what trains.

    Mixed precision: trained parameters become fp32 masters (PEFT adapters on a bf16 base, bottlenecks,
    heads); when the base was loaded in fp32 to train it, its frozen part drops to the compute dtype.
    bf16-pure: everything floating is bf16 (PEFT upcasts new adapters to fp32 by default)."""
    import torch

    floating = (torch.float32, torch.float16, torch.bfloat16)
    for param in model.parameters():
        if param.dtype not in floating:
            continue  # quantized storage (bitsandbytes) keeps its own dtype
        if precision.effective == Precision.BF16_PURE:
            target = torch.bfloat16
        elif param.requires_grad:
            target = precision.master_dtype
        elif precision.mixed and trains_base_weights:
            target = precision.compute_dtype
        else:
            continue
        if param.dtype != target:
            param.data = param.data.to(target)


def configure_optimizer(trainer, precision: PrecisionPlan) -> None:
    """bf16-pure: the Trainer builds torch-optimi's AdamW with Kahan summation instead of torch's AdamW.

    Set on the Trainer after it is made because TRL's trainers do not take `optimizer_cls_and_kwargs`; the
    Trainer reads it when it creates the optimizer at the start of training."""
    if precision.effective != Precision.BF16_PURE:
        return
    from optimi import AdamW

    class KahanAdamW(AdamW):
        # The Trainer passes a weight-decay and a no-decay group; one is empty for most PEFT models, and
        # optimi's foreach kernels refuse an empty group.
        def __init__(self, params, **kwargs):
            params = list(params)
            if params and isinstance(params[0], dict):
                params = [group for group in params if group["params"]]
            super().__init__(params, **kwargs)

    args = trainer.args
    trainer.optimizer_cls_and_kwargs = (
        KahanAdamW,
        {
            "lr": args.learning_rate,
            "betas": (args.adam_beta1, args.adam_beta2),
            "eps": args.adam_epsilon,
            "kahan_sum": True,
            "foreach": True,
        },
    )
