"""What an objective recipe receives: the contract between the trainer's plumbing (sources, data,
checkpoints, metrics, reporting) and the per-objective recipes in `objectives/`.

An objective module exposes `run(ctx: RunContext) -> TrainResult`. It builds its model with
`kubetune_trainer.modeling`, its trainer (HF Trainer or a TRL trainer) with `args.training_args(ctx, ...)`
and `ctx.callbacks`, readies it with `trainer_setup.prepare_trainer`, trains (resuming from
`ctx.resume_from`), and returns the trained model; the entrypoint saves the final model and reports the
output. Plain data: nothing here imports the plumbing that fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.constants import DatasetFormat
from kubetune.api.v1alpha1 import Spec
from kubetune_trainer.layout import OutputLayout
from kubetune_trainer.sharding import Strategy

if TYPE_CHECKING:
    import datasets
    from transformers import TrainerCallback

    from kubetune_trainer.reporting import Reporter


@dataclass
class TaskData:
    """One entry of spec.datasets, loaded and checked.

    Columns are renamed to the format's logical fields (kubetune.api.constants.FORMAT_FIELDS):
    text | prompt+completion | messages | prompt+chosen+rejected | text+label | prompt.
    """

    name: str
    format: DatasetFormat
    weight: float
    train: datasets.Dataset
    eval: datasets.Dataset | None = None


@dataclass
class TrainResult:
    model: Any  # the trained model (PeftModel, PreTrainedModel, ...)
    tokenizer: Any
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunContext:
    spec: Spec  # resolved: the technique's and objective's sections are filled
    name: str  # the FineTuneJob's name
    work_dir: Path  # local scratch
    layout: OutputLayout
    model_dir: Path  # local Hugging Face model folder
    tasks: list[TaskData]
    resume_from: Path | None  # local copy of the newest complete checkpoint, or None
    callbacks: list[TrainerCallback]
    reporter: Reporter
    world_size: int = 1
    rank: int = 0
    reward_model_dir: Path | None = None  # rlhf: local copy of spec.rlhf.rewardModel.uri
    strategy: Strategy = field(default_factory=lambda: Strategy("ddp", 1))  # how the model spreads over the processes
    warm_start: Path | None = None  # spec.resumeFrom's checkpoint when only its weights are taken (resume_from.py)

    @property
    def is_main(self) -> bool:
        return self.rank == 0
