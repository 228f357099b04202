"""spec.distributed: data parallelism (ddp: a whole replica per process) or FSDP2 (fsdp: parameters, gradients
and optimizer state sharded over every process of every node), and checkpoints of a sharded model.

How it shards: transformers 5.24 shards a model while loading it (`from_pretrained(distributed_config=
DistributedConfig(fsdp_size=world))`, `fully_shard` per decoder layer then the root), on GPUs and on CPUs with
gloo alike, and its Trainer trains such a model: a PEFT adapter added afterwards stays whole on every rank,
broadcast from rank 0 and its gradient averaged. Accelerate's own FSDP path would be the other way, but it
refuses a CPU (AcceleratorState only turns MULTI_GPU-like types into FSDP), so the tests could not run the
path the GPUs run; this way both run the same code. transformers shards only over two ranks or more: CPU offload on
one process (a one-GPU job whose model fits only with its parameters, gradients and optimizer step in host memory)
is FSDP2 over a one-rank mesh that `shard_one_process` applies to the loaded model, in a process group of one.
A technique whose weights change shape as they load (qlora's 4-bit packing: transformers' load-time sharding records
each weight's unquantized shape, and FSDP's first forward then fails to copy the packed weight into it) declares
SHARD_AFTER_APPLY: it loads whole on every process and `shard_loaded` shards it once the technique is applied.

What transformers 5.24 does not do for such a model is checkpoint it (its Trainer refuses to save optimizer state
for a model sharded at load time). So `install_checkpointing` gives the Trainer kubetune's: the model's and the
optimizer's state dicts as torch.distributed.checkpoint writes them (every rank its own `dcp/__<rank>_0.distcp`,
rank 0 the `.metadata`), which dcp.load reshards onto any number of processes; plus what the Trainer writes
itself (trainer_state.json, scheduler.pt, rng_state_<rank>.pth). A checkpoint of 4 ranks resumes on 2, 2 on 4,
several nodes on one. The global batch is kept across such a resume: gradient accumulation makes up for the
changed number of processes (`accumulation_for`).

Mixed precision under FSDP: trained weights stay fp32 shards (the masters), FSDP's mixed-precision policy
gathers them in bf16 for compute and reduces gradients in fp32.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kubetune.api.constants import DistributedStrategy, Precision
from kubetune_trainer.errors import UserError

log = logging.getLogger("kubetune.sharding")

DCP_FOLDER = "dcp"
SHARDED_MARKER = "kubetune_sharded.json"  # in a sharded checkpoint: the world size and global batch it ran with


@dataclass(frozen=True)
class Strategy:
    name: str  # ddp | fsdp | fsdp+offload
    world: int
    why: str = ""

    @property
    def sharded(self) -> bool:
        """FSDP2 holds the model: over several processes, or over one with CPU offload (plain fsdp on one process
        has nothing to shard over and runs the whole model)."""
        return self.name != "ddp" and (self.world > 1 or self.offload)

    @property
    def offload(self) -> bool:
        return self.name == "fsdp+offload"


# A lost peer (its pod killed, its node gone) leaves every other rank waiting in a collective: after this long the
# wait fails, the rank exits and the attempt ends, instead of torch's 30 minutes of idle GPUs.
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 300


def collective_timeout_seconds() -> int:
    return int(os.environ.get("KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS", DEFAULT_COLLECTIVE_TIMEOUT_SECONDS))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def requested(spec) -> DistributedStrategy:
    return DistributedStrategy(spec.distributed.strategy) if spec.distributed is not None else DistributedStrategy.AUTO


def choose(spec, plan=None, world: int | None = None, resumed: bool | None = None) -> Strategy:
    """The strategy this run uses: the spec's, or for auto the plan's choice (ddp without a plan). `resumed`: the
    attempt resumes a checkpoint that was sharded (True) or not (False); auto keeps what the run began with, so a
    resume on another number of GPUs never switches between the two kinds of checkpoint."""
    world = world_size() if world is None else world
    wanted = requested(spec)
    offload = bool(spec.distributed and spec.distributed.cpu_offload)
    if wanted == DistributedStrategy.AUTO and resumed is not None:
        name = ("fsdp+offload" if offload else "fsdp") if resumed else "ddp"
        return Strategy(name, world, f"strategy auto: {name}, as the checkpoint this attempt resumes")
    if wanted == DistributedStrategy.DDP:
        return Strategy("ddp", world, "strategy ddp (spec.distributed)")
    if wanted == DistributedStrategy.FSDP:
        name = "fsdp+offload" if offload else "fsdp"
        if world == 1 and offload:
            return Strategy(
                name,
                world,
                "strategy fsdp+offload on one process: FSDP2 over a one-rank mesh keeps the parameters, gradients "
                "and optimizer step in host memory and brings each layer to the GPU for its compute",
            )
        if world == 1:
            return Strategy(
                name, world, f"strategy {name} on one process: nothing to shard over, the whole model is here"
            )
        return Strategy(name, world, f"strategy {name} over {world} processes (spec.distributed)")
    if plan is None:
        return Strategy("ddp", world, "strategy auto: ddp (no plan)")
    return Strategy(plan.chosen.strategy, world, plan.why)


def shards_after_apply(technique_module, offload: bool) -> bool:
    """Whether a sharded model is sharded once its technique is applied instead of as it loads: the technique says so
    (SHARD_AFTER_APPLY), or under CPU offload it trains only parameters it adds (PEFT and the bottleneck adapter put
    those on their base layer's device, which offload makes the host: FSDP must manage them to bring them to the GPU).
    The memory plan asks it too (an adapter sharded with its base is divided over the ranks and offloaded with it)."""
    return getattr(technique_module, "SHARD_AFTER_APPLY", False) or (
        offload and not technique_module.TRAINS_BASE_WEIGHTS
    )


def load_kwargs(spec, strategy: Strategy, *, trains_base_weights: bool, precision) -> dict:
    """`from_pretrained` arguments that shard the model as it loads. None on one process: transformers shards only
    over two ranks or more, and `shard_one_process` shards such a model once it is loaded."""
    if not strategy.sharded or strategy.world == 1:
        return {}
    from transformers.distributed.configuration_utils import DistributedConfig

    offload = strategy.offload
    if offload and not _has_accelerator():
        # transformers' offload policy pins host memory, which torch refuses without an accelerator ("Cannot access
        # accelerator device when none is available"); on a CPU the shards live in host memory anyway.
        log.info("no accelerator: the FSDP shards stay in host memory without transformers' pinned offload policy")
        offload = False
    return {
        "distributed_config": DistributedConfig(
            fsdp_size=strategy.world,
            fsdp_cpu_offload=offload,
            fsdp_mixed_precision=_mixed_precision(trains_base_weights, precision),
        )
    }


def _mixed_precision(trains_base_weights: bool, precision) -> bool:
    return precision.effective in (Precision.BF16, Precision.FP16) and trains_base_weights


def _has_accelerator() -> bool:
    import torch

    return torch.accelerator.is_available()


_started_one_process_group = False


def one_process_group() -> None:
    """A process group of one (FSDP2's collectives need one even alone): nccl on a GPU, gloo on the CPU, over an
    in-process store, so a plain one-process run needs no torchrun, address or port."""
    global _started_one_process_group
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    _started_one_process_group = True
    log.info("one-process group (%s) for FSDP2", backend)


def finish_one_process_group() -> None:
    """End the group `one_process_group` started (a group someone else started is theirs to end)."""
    global _started_one_process_group
    if not _started_one_process_group:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _started_one_process_group = False


def shard_one_process(model, strategy: Strategy, *, trains_base_weights: bool, precision):
    """FSDP2 over a one-rank mesh for CPU offload on one process, as transformers shards over several (see
    `shard_loaded`). With CPUOffloadPolicy the parameters, their gradients and the optimizer step stay in host memory;
    each unit is copied to the GPU for its compute. A one-process offload run resumes on N processes and the
    reverse."""
    if not (strategy.sharded and strategy.world == 1):
        return model
    return shard_loaded(model, strategy, trains_base_weights=trains_base_weights, precision=precision)


def shard_loaded(model, strategy: Strategy, *, trains_base_weights: bool, precision):
    """FSDP2 applied to a model already loaded (and, for a technique that shards after it is applied, already wrapped
    by it): every decoder layer (the base model's `_no_split_modules`) its own FSDP unit, then the root, over a mesh of
    every process. Without an accelerator there is no device memory to offload from: the offload policy runs unpinned
    (torch refuses to pin memory without an accelerator), the same FSDP2 code path with its copies made on the CPU.

    Parameters that train are made rank 0's first (an adapter each rank initialised on its own), so the shards
    every rank keeps belong to one model. The model is then marked the way transformers marks a model it sharded at
    load time, so the Trainer neither moves it nor wraps it, and its checkpoints are kubetune's sharded ones."""
    if not strategy.sharded:
        return model
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if strategy.world == 1:
        one_process_group()
    else:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    dist.broadcast(parameter.data, src=0)
    accelerator = _has_accelerator()
    device = torch.accelerator.current_accelerator().type if accelerator else "cpu"
    mesh = init_device_mesh(device, (strategy.world,), mesh_dim_names=("fsdp",))
    policies: dict = {}
    if strategy.offload:
        policies["offload_policy"] = CPUOffloadPolicy(pin_memory=accelerator)
    if _mixed_precision(trains_base_weights, precision):
        compute = torch.float16 if precision.effective == Precision.FP16 else torch.bfloat16
        policies["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_classes = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise UserError(
            f"distributed.strategy {strategy.name}: {type(base).__name__} names no decoder layer class "
            "(_no_split_modules) to shard one at a time"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True, **policies)
    fully_shard(model, mesh=mesh, **policies)
    # transformers' own markers of a model sharded at load time (what its Trainer and save_pretrained read).
    from transformers.distributed.configuration_utils import DistributedConfig

    base.config.distributed_config = DistributedConfig(
        fsdp_size=strategy.world, fsdp_cpu_offload=strategy.offload, fsdp_mixed_precision="mp_policy" in policies
    )
    base._is_distributed_loading_by_transformers = True
    base._is_fsdp_managed_module = True
    model._is_fsdp_managed_module = True
    if strategy.world == 1:
        log.info(
            "FSDP2 with CPU offload over one process: %d decoder layers, parameters in host memory%s",
            len(layers),
            "" if accelerator else " (no accelerator: unpinned)",
        )
    else:
        log.info("FSDP2 over %d processes, applied after loading: %d decoder layers", strategy.world, len(layers))
    return model


def local_numel(parameters) -> int:
    """Elements this rank holds: a sharded parameter's local shard, a whole one's every element."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in parameters)


def is_sharded(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(
        getattr(base, "is_distributed_loading_by_transformers", False)
        or getattr(model, "is_distributed_loading_by_transformers", False)
    )


def save_kwargs(model) -> dict:
    """`save_pretrained` arguments for a model FSDP2 holds where its own save does not gather the shards: its whole
    state dict, as plain tensors (on rank 0; every rank takes part in gathering it). transformers gathers the shards
    itself over two ranks or more for a model it sharded at load time, whose adapter, added afterwards, is whole; a
    model sharded by `shard_loaded` (its root an FSDP module) has sharded adapters too, or runs on one process."""
    from torch.distributed.fsdp import FSDPModule

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(getattr(base, "config", None), "distributed_config", None)
    if not is_sharded(model) or config is None or (config.dp_size > 1 and not isinstance(model, FSDPModule)):
        return {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return {"state_dict": get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))}


# --------------------------------------------------------------------------- global batch across world sizes


def accumulation_for(spec, checkpoint: Path | None, world: int) -> int:
    """gradientAccumulationSteps for this attempt: the spec's, or, resuming a sharded checkpoint saved by another
    number of processes, what keeps its global batch (batchSize x accumulation x processes)."""
    hp = spec.hyperparameters
    if checkpoint is None or not (Path(checkpoint) / SHARDED_MARKER).is_file():
        return hp.gradient_accumulation_steps
    saved = json.loads((Path(checkpoint) / SHARDED_MARKER).read_text())
    global_batch = int(saved["globalBatch"])
    per_step = hp.batch_size * world
    if global_batch % per_step:
        raise UserError(
            f"resuming a checkpoint of global batch {global_batch} ({saved['world']} processes) on {world} processes: "
            f"hyperparameters.batchSize {hp.batch_size} x {world} does not divide it; run on a number of GPUs that does"
        )
    accumulation = global_batch // per_step
    if accumulation != hp.gradient_accumulation_steps:
        log.info(
            "resuming on %d processes (checkpoint: %d): gradient accumulation %d keeps the global batch of %d",
            world,
            saved["world"],
            accumulation,
            global_batch,
        )
    return accumulation


# --------------------------------------------------------------------------- checkpoints


def is_sharded_checkpoint(folder) -> bool:
    return (Path(folder) / DCP_FOLDER).is_dir()


def install_checkpointing(trainer, *, sharded: bool) -> None:
    """Give a Trainer kubetune's sharded checkpoints (see the module docstring): it saves them when its model is
    sharded, and loads one whatever its model (a sharded run resumed on a single process is a whole model).

    The Trainer calls these private methods itself (_save_checkpoint when it saves, _load_from_checkpoint and
    _load_optimizer_and_scheduler when it resumes): replacing them on this instance is the narrowest way in. A
    checkpoint without a dcp/ folder still loads the Trainer's own way."""
    if sharded:
        trainer._save_checkpoint = functools.partial(_save_checkpoint, trainer)
    own_model_loader, own_optimizer_loader = trainer._load_from_checkpoint, trainer._load_optimizer_and_scheduler

    def load_model(checkpoint, model=None):
        if is_sharded_checkpoint(checkpoint):
            return _load_model(trainer, checkpoint)
        return own_model_loader(checkpoint, model) if model is not None else own_model_loader(checkpoint)

    def load_optimizer_and_scheduler(checkpoint):
        if checkpoint is not None and is_sharded_checkpoint(checkpoint):
            return _load_optimizer_and_scheduler(trainer, checkpoint)
        return own_optimizer_loader(checkpoint)

    trainer._load_from_checkpoint = load_model
    trainer._load_optimizer_and_scheduler = load_optimizer_and_scheduler


def _trained_state_options():
    """What a sharded checkpoint holds of the model: the parameters that train. A frozen base is loaded afresh by every
    attempt, and it may be held another way on another number of processes (qlora's 4-bit weights are packed in a
    float storage under FSDP, in bitsandbytes' uint8 on one process), so it is neither saved nor loaded. dcp.load still
    fails on a trained parameter the checkpoint lacks; `strict=False` only lets the frozen ones stay as loaded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _trained_only(model, model_state: dict) -> dict:
    """`model_state` without what is not a trained parameter: ignore_frozen_params leaves the entries a layer adds
    beside its parameters (a whole 4-bit layer's quantization state: absmax, quant_map...)."""
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {key: value for key, value in model_state.items() if key in trained}


def _save_checkpoint(trainer, model, trial=None) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    folder.mkdir(parents=True, exist_ok=True)
    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer, options=_trained_state_options())
    model_state = _trained_only(trainer.model, model_state)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder / DCP_FOLDER))
    trainer._save_rng_state(str(folder))
    if trainer.args.should_save:
        torch.save(trainer.lr_scheduler.state_dict(), folder / "scheduler.pt")
        trainer.state.save_to_json(str(folder / "trainer_state.json"))
        args = trainer.args
        world = args.world_size
        (folder / SHARDED_MARKER).write_text(
            json.dumps(
                {
                    "world": world,
                    "globalBatch": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
                }
            )
        )


def _load_model(trainer, checkpoint, model=None) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    model_state = _trained_only(trainer.model, get_model_state_dict(trainer.model, options=_trained_state_options()))
    dcp.load({"model": model_state}, checkpoint_id=str(Path(checkpoint) / DCP_FOLDER))
    set_model_state_dict(trainer.model, model_state, options=_trained_state_options())


def _load_optimizer_and_scheduler(trainer, checkpoint) -> None:
    if checkpoint is None:
        return
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer, options=_trained_state_options())
    model_state = _trained_only(trainer.model, model_state)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(Path(checkpoint) / DCP_FOLDER))
    set_state_dict(
        trainer.model,
        trainer.optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_trained_state_options(),
    )
    trainer.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / "scheduler.pt", weights_only=True))
