"""Speed switches of spec.hyperparameters: attention kernel, Liger kernels, torch.compile, fused AdamW.

Each is a plain function of the spec and the machine, so a test (and the benchmark) can see what a run
would use. Every choice is logged once with its reason; a switch that cannot apply here (Liger on a CPU,
flex attention without torch support) is a logged no-op, never an error.

- attention: `auto` picks flex attention on a GPU when examples are packed (its BlockMask skips the
  blocks that cross examples instead of computing and masking them) and sdpa otherwise; explicit
  sdpa | flex | eager are honoured. Packed rows get their mask from kubetune_trainer.packing for
  whichever kernel the model uses.
- ligerKernel (default true): Liger's fused linear cross-entropy, RMSNorm, RoPE and SwiGLU for the
  architectures Liger supports, for causal-LM models on a GPU with liger-kernel importable.
- torchCompile (default false): transformers' Trainer compiles the model (TrainingArguments.torch_compile).
- AdamW runs fused (one kernel for all parameters) on a GPU.
"""

from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger(__name__)

# spec value -> transformers attn_implementation
ATTENTION_KERNELS = {"sdpa": "sdpa", "flex": "flex_attention", "eager": "eager"}


def _value(enum_or_str):
    return getattr(enum_or_str, "value", enum_or_str)


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def flex_attention_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def attention_implementation(spec, *, packed: bool, gpu: bool | None = None) -> tuple[str | None, str]:
    """(transformers attn_implementation or None for the library default, why) for this run."""
    requested = _value(spec.hyperparameters.attention)
    gpu = on_gpu() if gpu is None else gpu
    if requested in ATTENTION_KERNELS:
        kernel = ATTENTION_KERNELS[requested]
        if kernel == "flex_attention" and not flex_attention_available():
            return "sdpa", "attention flex requested but this torch has no flex attention: using sdpa"
        if kernel == "flex_attention" and not gpu:
            return kernel, "attention flex (on a CPU it compiles for a minute and runs slower than sdpa)"
        return kernel, f"attention {requested}"
    # auto
    if packed and gpu and flex_attention_available():
        return "flex_attention", "attention auto: flex attention with a block mask per packed row (GPU)"
    if packed:
        return "sdpa", "attention auto: sdpa with a block-diagonal mask per packed row"
    return None, "attention auto: the model's default kernel"


# --------------------------------------------------------------------------- Liger


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_supports(model_type: str | None) -> bool:
    if not model_type or not liger_available():
        return False
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:  # noqa: BLE001 - a broken install is "not available", logged by the caller
        return False
    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def liger_decision(spec, model_type: str | None, task: str, *, gpu: bool | None = None) -> tuple[bool, str]:
    """(apply Liger kernels?, why)."""
    if not spec.hyperparameters.liger_kernel:
        return False, "liger kernels off (spec.hyperparameters.ligerKernel: false)"
    if task != "causal-lm":
        return False, f"liger kernels not used for {task} models"
    if not (on_gpu() if gpu is None else gpu):
        return False, "liger kernels skipped: no GPU (its Triton kernels need one)"
    if not liger_available():
        return False, "liger kernels skipped: liger-kernel is not installed in this image"
    if not liger_supports(model_type):
        return False, f"liger kernels skipped: no Liger kernels for model type {model_type!r}"
    return True, f"liger kernels on for {model_type}: fused linear cross-entropy, RMSNorm, RoPE, SwiGLU"


def lm_head_is_adapted(spec) -> bool:
    """A LoRA on lm_head: Liger's fused cross-entropy reads lm_head.weight only and would skip it."""
    lora = getattr(spec, "lora", None)
    targets = getattr(lora, "target_modules", "") or ""
    return "lm_head" in [t.strip() for t in targets.split(",")]


def apply_liger(model, spec, task: str, *, gpu: bool | None = None) -> bool:
    """Patch a freshly loaded (not yet PEFT-wrapped) model with Liger kernels where they apply; returns
    whether it did. Must run before the technique wraps the model: the fused loss replaces the
    causal-LM forward of this instance, and PEFT calls that forward."""
    model_type = getattr(model.config, "model_type", None)
    use, why = liger_decision(spec, model_type, task, gpu=gpu)
    log.info(why)
    if not use:
        return False
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    fused_loss = not lm_head_is_adapted(spec)
    if not fused_loss:
        log.info("liger fused linear cross-entropy off: spec.lora.targetModules adapts lm_head")
    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=fused_loss, cross_entropy=False
    )
    model.kubetune_liger = True
    return True


# --------------------------------------------------------------------------- Trainer arguments


def compile_args(spec) -> dict:
    """TrainingArguments fields for spec.hyperparameters.torchCompile."""
    if not spec.hyperparameters.torch_compile:
        return {}
    log.info("torch.compile on (inductor)%s", "" if on_gpu() else ": on a CPU the first steps compile for minutes")
    return {"torch_compile": True}


def fused_adamw(optim: str) -> str:
    """adamw_torch -> adamw_torch_fused on a GPU (one kernel for every parameter; same update rule)."""
    if optim == "adamw_torch" and on_gpu():
        return "adamw_torch_fused"
    return optim
