"""Where training progress goes: the interface every reporter implements.

The trainer calls one Reporter; locally (`kubetune run`) it prints, in a pod it patches the
FineTuneJob's status (kubetune_trainer.status_reporter). Implementations must never raise into the
training loop and must bound their own rate.

What a pod reports is data, not the job's result: the operator decides the phase from the Job and its pods,
and shows only result URIs under the job's output root. Text made from user data (a column name, a JSON key,
a file name) goes into messages through `quoted`, so that it reads as data and stays short.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Protocol

# How much of one piece of user data a message quotes.
QUOTED_LENGTH = 80


def _escaped(char: str) -> str:
    # Escaped: the quote, the backslash, and every control or format character (line breaks, terminal escape
    # sequences, bidirectional overrides that reorder what a reader sees), the latter as JSON escapes them.
    if char in "'\\":
        return "\\" + char
    if unicodedata.category(char)[0] == "C":
        return json.dumps(char)[1:-1]
    return char


def quoted(value: Any, limit: int = QUOTED_LENGTH) -> str:
    """A piece of user data (a CSV header, a JSON key, a value) for a message: in single quotes (as Python's repr
    quotes a name), escaped so that it stays one line and holds nothing a terminal or a log parser acts on, and cut
    to `limit` characters inside the quotes, ending in "..." when cut."""
    text = value if isinstance(value, str) else repr(value)
    pieces = [_escaped(char) for char in text]
    if sum(map(len, pieces)) > limit:
        kept, length = [], 0
        for piece in pieces:  # whole escapes only: never half of a \uXXXX
            if length + len(piece) > limit - 3:
                break
            kept.append(piece)
            length += len(piece)
        pieces = [*kept, "..."]
    return "'" + "".join(pieces) + "'"


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

    def plan(self, plan: Any) -> None:
        """The memory plan the run chose: status.plan, the API's Plan model (kubetune.api.v1alpha1) or its wire
        form. Optional: MultiReporter passes it on to the reporters that have it."""

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

    def plan(self, plan: Any) -> None:
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
            call = getattr(reporter, method, None)
            if call is None:  # an optional report this reporter does not take
                continue
            try:
                call(*args)
            except Exception as err:  # noqa: BLE001 - reporting must never break training
                logging.getLogger("kubetune.reporting").warning(
                    "%s.%s failed: %s", type(reporter).__name__, method, err
                )

    def progress(self, report: ProgressReport) -> None:
        self._each("progress", report)

    def checkpoints(self, complete: list[CheckpointReport]) -> None:
        self._each("checkpoints", complete)

    def output(self, report: OutputReport) -> None:
        self._each("output", report)

    def plan(self, plan: Any) -> None:
        self._each("plan", plan)

    def close(self) -> None:
        self._each("close")
