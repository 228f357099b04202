"""What an objective recipe receives: the contract between the trainer's plumbing (sources, data,
checkpoints, metrics, reporting) and the per-objective recipes in `objectives/`.

An objective module exposes `run(ctx: RunContext) -> TrainResult`. It builds its model with
`kubetune_trainer.modeling`, its trainer (HF Trainer or a TRL trainer) with `ctx.training_args(...)`
and `ctx.callbacks`, trains (resuming from `ctx.resume_from`), and returns the trained model; the
entrypoint saves the final model and reports the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.constants import DatasetFormat
from kubetune.api.uris import join_uri
from kubetune.api.v1alpha1 import Spec

if TYPE_CHECKING:
    import datasets
    from transformers import TrainerCallback

    from kubetune_trainer.reporting import Reporter


@dataclass(frozen=True)
class OutputLayout:
    """Where everything of one run lives under its root URI (s3:// or file://)."""

    root: str

    @property
    def spec_uri(self) -> str:
        return join_uri(self.root, "spec.resolved.yaml")

    @property
    def checkpoints_uri(self) -> str:
        return join_uri(self.root, "checkpoints") + "/"

    def checkpoint_uri(self, step: int) -> str:
        return join_uri(self.root, "checkpoints", f"step-{step}") + "/"

    @property
    def metrics_uri(self) -> str:
        return join_uri(self.root, "metrics.jsonl")

    @property
    def tensorboard_uri(self) -> str:
        return join_uri(self.root, "tensorboard") + "/"

    @property
    def final_uri(self) -> str:
        return join_uri(self.root, "final") + "/"


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
    extra_models: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # e.g. {"reward-model": (model, tok)}


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
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def training_args(self, cls: type | None = None, **overrides: Any):
        """TrainingArguments (or a TRL config class `cls`) from the spec; see kubetune_trainer.args."""
        from kubetune_trainer.args import training_args

        return training_args(self, cls, **overrides)

    def set_stage(self, stage: str | None) -> None:
        """rlhf: name the stage now training ("reward-model", "policy") in metrics and progress."""
        for callback in self.callbacks:
            if hasattr(callback, "stage"):
                callback.stage = stage

    @property
    def preempted(self) -> bool:
        """SIGTERM arrived: a recipe with several stages must not start the next one."""
        from kubetune_trainer.checkpoints import PREEMPTION

        return PREEMPTION.requested
