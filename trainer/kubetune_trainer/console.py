"""ConsoleReporter: progress as plain log lines (`kubetune run`, and the pod's logs)."""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from kubetune_trainer.reporting import CheckpointReport, OutputReport, ProgressReport

_ORDER = ["loss", "evalLoss", "learningRate", "gradNorm", "tokensPerSecond", "reward"]


def _fmt(name: str, value: float) -> str:
    if name == "learningRate":
        return f"lr {value:.2e}"
    if name == "tokensPerSecond":
        return f"tok/s {value:,.0f}"
    if name == "gradNorm":
        return f"grad_norm {value:.3f}"
    label = {"evalLoss": "eval_loss"}.get(name, name)
    return f"{label} {value:.4f}"


def progress_line(report: ProgressReport, width: int = 20) -> str:
    filled = int(width * report.percent / 100)
    bar = "#" * filled + "-" * (width - filled)
    parts = [f"[{bar}] {report.percent:3d}% step {report.step}/{report.total_steps} epoch {report.epoch:.2f}"]
    if report.stage:
        parts.insert(0, f"({report.stage})")
    names = [n for n in _ORDER if n in report.metrics] + sorted(n for n in report.metrics if n not in _ORDER)
    parts += [_fmt(n, report.metrics[n]) for n in names]
    if report.eta_seconds is not None:
        parts.append(f"eta {timedelta(seconds=int(report.eta_seconds))}")
    return " ".join(parts)


class ConsoleReporter:
    def __init__(self, stream=None, min_interval: float = 0.0):
        self.stream = stream or sys.stdout
        self.min_interval = min_interval
        self._last = 0.0
        self._pending: ProgressReport | None = None

    def _print(self, text: str) -> None:
        try:
            print(f"[kubetune] {text}", file=self.stream, flush=True)
        except Exception:  # noqa: BLE001 - a closed stdout must not stop training
            pass

    def progress(self, report: ProgressReport) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval and report.step < report.total_steps:
            self._pending = report
            return
        self._last, self._pending = now, None
        self._print(progress_line(report))

    def checkpoints(self, complete: list[CheckpointReport]) -> None:
        if complete:
            newest = complete[-1]
            self._print(f"checkpoint step-{newest.step} complete: {newest.uri} ({len(complete)} kept)")

    def output(self, report: OutputReport) -> None:
        self._print(f"final model: {report.model_uri}")
        self._print(f"metrics: {report.metrics_uri}  tensorboard: {report.tensorboard_uri}")

    def close(self) -> None:
        if self._pending is not None:
            self._print(progress_line(self._pending))
            self._pending = None
