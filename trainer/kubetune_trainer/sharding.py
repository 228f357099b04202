"""spec.distributed: data parallelism (ddp: a whole replica per process) or FSDP2 (fsdp: parameters, gradients
and optimizer state sharded over every process of every node), and checkpoints of a sharded model.

How it shards: transformers 5.24 shards a model while loading it (`from_pretrained(distributed_config=
DistributedConfig(fsdp_size=world))`, `fully_shard` per decoder layer then the root), on GPUs and on CPUs with
gloo alike, and its Trainer trains such a model: a PEFT adapter added afterwards stays whole on every rank,
broadcast from rank 0 and its gradient averaged. Accelerate's own FSDP path would be the other way, but it
refuses a CPU (AcceleratorState only turns MULTI_GPU-like types into FSDP), so the tests could not run the
path the GPUs run; this way both run the same code.

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
        return self.name != "ddp" and self.world > 1

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
        if world == 1:
            return Strategy(
                name, world, f"strategy {name} on one process: nothing to shard over, the whole model is here"
            )
        return Strategy(name, world, f"strategy {name} over {world} processes (spec.distributed)")
    if plan is None:
        return Strategy("ddp", world, "strategy auto: ddp (no plan)")
    return Strategy(plan.chosen.strategy, world, plan.why)


def load_kwargs(spec, strategy: Strategy, *, trains_base_weights: bool, precision) -> dict:
    """`from_pretrained` arguments that shard the model as it loads."""
    if not strategy.sharded:
        return {}
    from transformers.distributed.configuration_utils import DistributedConfig

    mixed = precision.effective in (Precision.BF16, Precision.FP16) and trains_base_weights
    return {
        "distributed_config": DistributedConfig(
            fsdp_size=strategy.world, fsdp_cpu_offload=strategy.offload, fsdp_mixed_precision=mixed
        )
    }


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


def _save_checkpoint(trainer, model, trial=None) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    folder.mkdir(parents=True, exist_ok=True)
    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer)
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

    model_state = get_model_state_dict(trainer.model)
    dcp.load({"model": model_state}, checkpoint_id=str(Path(checkpoint) / DCP_FOLDER))
    set_model_state_dict(trainer.model, model_state)


def _load_optimizer_and_scheduler(trainer, checkpoint) -> None:
    if checkpoint is None:
        return
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(Path(checkpoint) / DCP_FOLDER))
    set_state_dict(
        trainer.model, trainer.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    trainer.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / "scheduler.pt", weights_only=True))
