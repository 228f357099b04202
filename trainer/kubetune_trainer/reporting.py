"""Where training progress goes: the interface every reporter implements.

The trainer calls one Reporter; locally (`kubetune run`) it prints, in a pod it patches the
FineTuneJob's status (kubetune_trainer.status_reporter). Implementations must never raise into the
training loop and must bound their own rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ProgressReport:
    step: int
    total_steps: int
    epoch: float
    eta_seconds: int | None = None
    stage: str | None = None  # rlhf: "reward-model" or "policy"
    # Latest metrics by contract name: loss, evalLoss, learningRate, gradNorm, tokensPerSecond, reward,
    # and eval_<task>_loss for multi-task runs.
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def percent(self) -> int:
        return int(100 * self.step / self.total_steps) if self.total_steps else 0


@dataclass
class CheckpointReport:
    step: int
    uri: str
    time: str  # RFC 3339
    eval_loss: float | None = None


@dataclass
class OutputReport:
    model_uri: str
    metrics_uri: str
    tensorboard_uri: str
    checkpoints_uri: str


class Reporter(Protocol):
    def progress(self, report: ProgressReport) -> None: ...

    def checkpoints(self, complete: list[CheckpointReport]) -> None:
        """The newest complete checkpoints (after every completed upload and pruning)."""

    def output(self, report: OutputReport) -> None: ...

    def close(self) -> None:
        """Flush anything rate-limited (the last progress must not be lost)."""


class NullReporter:
    """For ranks other than 0: only rank 0 reports."""

    def progress(self, report: ProgressReport) -> None:
        pass

    def checkpoints(self, complete: list[CheckpointReport]) -> None:
        pass

    def output(self, report: OutputReport) -> None:
        pass

    def close(self) -> None:
        pass


class MultiReporter:
    """Fans every report out to several reporters; one failing never stops the others or training."""

    def __init__(self, *reporters: Reporter):
        self.reporters = [r for r in reporters if r is not None]

    def _each(self, method: str, *args) -> None:
        import logging

        for reporter in self.reporters:
            try:
                getattr(reporter, method)(*args)
            except Exception as err:  # noqa: BLE001 - reporting must never break training
                logging.getLogger("kubetune.reporting").warning("%s.%s failed: %s", type(reporter).__name__, method, err)

    def progress(self, report: ProgressReport) -> None:
        self._each("progress", report)

    def checkpoints(self, complete: list[CheckpointReport]) -> None:
        self._each("checkpoints", complete)

    def output(self, report: OutputReport) -> None:
        self._each("output", report)

    def close(self) -> None:
        self._each("close")
