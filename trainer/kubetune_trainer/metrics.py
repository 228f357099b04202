"""Metrics: metrics.jsonl (one JSON object per logged step) and TensorBoard event files, written
locally by rank 0, synced to the output store periodically and at the end, and fed to the Reporter
under the contract's names (loss, evalLoss, learningRate, gradNorm, tokensPerSecond, reward,
eval_<task>_loss) with an ETA; the experiment trackers of spec.tracking get every record too
(kubetune_trainer.tracking). Early stopping is transformers' EarlyStoppingCallback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import EarlyStoppingCallback, TrainerCallback

from kubetune_trainer.reporting import ProgressReport

if TYPE_CHECKING:
    from kubetune_trainer.layout import OutputLayout
    from kubetune_trainer.reporting import Reporter
    from kubetune_trainer.storage import Storage
    from kubetune_trainer.tracking import Trackers

log = logging.getLogger("kubetune.metrics")

# Trainer log key -> status.metrics name (the contract).
CONTRACT_NAMES = {
    "loss": "loss",
    "eval_loss": "evalLoss",
    "learning_rate": "learningRate",
    "grad_norm": "gradNorm",
    "tokens_per_second": "tokensPerSecond",
    "reward": "reward",
}


def contract_metrics(record: dict) -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if key in CONTRACT_NAMES:
            out[CONTRACT_NAMES[key]] = float(value)
        elif key.startswith("eval_") and key.endswith("_loss"):
            out[key] = float(value)
    return out


def set_stage(callbacks, stage: str | None) -> None:
    """rlhf: name the stage now training ("reward-model", "policy") to every callback that follows stages (a
    `stage` attribute): the metrics and progress name it."""
    for callback in callbacks:
        if hasattr(callback, "stage"):
            callback.stage = stage


def truncate_metrics(text: str, last_step: int, stage: str | None = None) -> str:
    """metrics.jsonl lines up to `last_step` of the checkpointed `stage` (a resumed run re-logs the steps after
    its checkpoint); records of the other stages (rlhf's finished reward-model stage) are kept whole."""
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("stage") != stage or record.get("step", 0) <= last_step:
            kept.append(line)
    return "".join(line + "\n" for line in kept)


def tensorboard_scalars(record: dict) -> list[tuple[str, float]]:
    """(tag, value) for each number of a metrics.jsonl record, named as transformers' TensorBoard callback names
    them (train/loss, train/learning_rate, eval/loss, eval/<task>_loss), under the rlhf stage's name if any."""
    prefix = f"{record['stage']}/" if record.get("stage") else ""
    scalars = []
    for key, value in record.items():
        if (
            key in ("step", "stage")
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            continue
        if key.startswith("eval_"):
            tag = "eval/" + key[len("eval_") :]
        elif key.startswith("test_"):
            tag = "test/" + key[len("test_") :]
        else:
            tag = "train/" + key
        scalars.append((prefix + tag, float(value)))
    return scalars


def write_tensorboard(records: list[dict], folder: Path) -> None:
    """TensorBoard event files holding exactly `records` (a resume rebuilds them from metrics.jsonl, so no event
    a killed attempt logged after its checkpoint survives, and none before it is lost)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        for record in records:
            for tag, value in tensorboard_scalars(record):
                writer.add_scalar(tag, value, record.get("step", 0))
    finally:
        writer.close()


class MetricsCallback(TrainerCallback):
    def __init__(
        self,
        local_dir: Path,
        storage: Storage,
        layout: OutputLayout,
        reporter: Reporter,
        *,
        is_main: bool,
        sync_seconds: float | None = None,
        trackers: Trackers | None = None,
    ):
        self.local_dir = Path(local_dir)
        self.storage = storage
        self.layout = layout
        self.reporter = reporter
        self.is_main = is_main
        self.sync_seconds = (
            float(os.environ.get("KUBETUNE_METRICS_SYNC_SECONDS", "30")) if sync_seconds is None else sync_seconds
        )
        self.stage: str | None = None  # rlhf: "reward-model" / "policy"
        self.latest: dict[str, float] = {}
        self._writer = None
        self._start_step = 0
        self._last_sync = 0.0
        self._start: tuple[float, int] | None = None
        self._tokens: tuple[float, int] | None = None
        self.trackers = trackers  # spec.tracking's runs (rank 0): they get every record metrics.jsonl gets
        self._records: int | None = None  # lines in metrics.jsonl: the next record's position

    @property
    def metrics_path(self) -> Path:
        return self.local_dir / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.local_dir / "tensorboard"

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.local_dir.mkdir(parents=True, exist_ok=True)
        if self._writer is not None:
            self._writer.close()
        # A new event file beside what the attempt resumed from left (rebuilt from metrics.jsonl by the entrypoint).
        self._writer = SummaryWriter(str(self.tensorboard_dir))
        self._start_step = state.global_step
        now = time.monotonic()
        self._start = (now, state.global_step)
        self._tokens = (now, state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.is_main or not logs:
            return
        if self._start_step and state.global_step <= self._start_step:
            # Resumed at this step: what happened up to it is already logged. A finished run started again
            # trains no step and the Trainer only logs a summary of nothing (train_loss 0.0): not a record.
            return
        now = time.monotonic()
        record: dict = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if self.stage:
            record["stage"] = self.stage
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = value
        if self._tokens is not None and "loss" in logs and state.num_input_tokens_seen:
            then, seen = self._tokens
            if now > then and state.num_input_tokens_seen > seen:
                record["tokens_per_second"] = round((state.num_input_tokens_seen - seen) / (now - then), 1)
            self._tokens = (now, state.num_input_tokens_seen)
        if self._records is None:  # the records an attempt resumed from left (restored before training)
            self._records = len(self.metrics_path.read_text().splitlines()) if self.metrics_path.exists() else 0
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.record(record, self._records)
        self._records += 1
        if self._writer is not None:
            for tag, value in tensorboard_scalars(record):
                self._writer.add_scalar(tag, value, state.global_step)
        self.latest.update(contract_metrics(record))
        self.reporter.progress(
            ProgressReport(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=float(state.epoch or 0.0),
                eta_seconds=self._eta(state, now),
                stage=self.stage,
                metrics=dict(self.latest),
            )
        )
        if now - self._last_sync >= self.sync_seconds:
            self.sync()

    def _eta(self, state, now: float) -> int | None:
        if self._start is None or not state.max_steps:
            return None
        t0, s0 = self._start
        done = state.global_step - s0
        if done <= 0:
            return None
        return int((state.max_steps - state.global_step) * (now - t0) / done)

    def on_save(self, args, state, control, **kwargs):
        # A checkpoint's metrics are in the store before it: a resume continues them without a gap.
        if self.is_main:
            self.sync()

    def on_train_end(self, args, state, control, **kwargs):
        if self.is_main:
            self.sync()

    def sync(self) -> None:
        """Copy metrics.jsonl and the TensorBoard files to the output store (rank 0)."""
        if not self.is_main:
            return
        self._last_sync = time.monotonic()
        if self._writer is not None:
            self._writer.flush()
        if self.metrics_path.exists():
            self.storage.upload_file(self.metrics_path, self.layout.metrics_uri)
        if self.tensorboard_dir.is_dir():
            self.storage.upload_dir(self.tensorboard_dir, self.layout.tensorboard_uri)
        if self.trackers is not None:
            self.trackers.sync()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.trackers is not None:
            trackers, self.trackers = self.trackers, None
            trackers.close()


class EarlyStopping(EarlyStoppingCallback):
    """transformers' EarlyStoppingCallback that stands aside in a trainer without evaluation (e.g. an
    rlhf stage whose datasets carry no eval data) instead of failing its assertions."""

    @staticmethod
    def _active(args) -> bool:
        return args.metric_for_best_model is not None and str(args.eval_strategy) not in ("no", "IntervalStrategy.NO")

    def on_train_begin(self, args, state, control, **kwargs):
        if self._active(args):
            return super().on_train_begin(args, state, control, **kwargs)

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if self._active(args):
            return super().on_evaluate(args, state, control, metrics, **kwargs)
