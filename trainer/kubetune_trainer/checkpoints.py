"""Checkpoints in the output store: uploaded in the background, marked complete last, pruned,
found again on resume. A SIGTERM (kubetune_trainer.preemption) makes the callback save and stop.

Layout: <root>/checkpoints/step-<N>/<the Trainer's checkpoint-N files> + `_COMPLETE` (JSON: step,
time, files with sizes) written after every other file. A step folder without the marker is an
upload that was cut off: it is never loaded, and is deleted once a newer checkpoint completes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from kubetune_trainer.errors import InfraError, TrainerError
from kubetune_trainer.layout import COMPLETE_MARKER as MARKER
from kubetune_trainer.preemption import PREEMPTION, Preemption
from kubetune_trainer.reporting import CheckpointReport

if TYPE_CHECKING:
    from kubetune_trainer.layout import OutputLayout
    from kubetune_trainer.reporting import Reporter
    from kubetune_trainer.storage import Storage

log = logging.getLogger("kubetune.checkpoints")

_STEP_DIR = re.compile(r"/checkpoints/step-(\d+)/(.+)$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RemoteCheckpoint:
    step: int
    uri: str
    complete: bool
    marker: dict | None = None

    @property
    def stage(self) -> str | None:
        """The rlhf stage that saved it (None for one-stage objectives)."""
        return (self.marker or {}).get("stage")


def scan(storage: Storage, layout: OutputLayout) -> dict[int, RemoteCheckpoint]:
    """Every step folder under checkpoints/, complete or not."""
    found: dict[int, RemoteCheckpoint] = {}
    for uri in storage.list(layout.checkpoints_uri):
        m = _STEP_DIR.search(uri)
        if not m:
            continue
        step = int(m.group(1))
        entry = found.setdefault(step, RemoteCheckpoint(step, layout.checkpoint_uri(step), False))
        if m.group(2) == MARKER:
            entry.complete = True
    return found


def complete_checkpoints(storage: Storage, layout: OutputLayout) -> list[RemoteCheckpoint]:
    """Complete checkpoints, oldest first, with their markers read."""
    out = []
    for _step, entry in sorted(scan(storage, layout).items()):
        if entry.complete:
            try:
                entry.marker = json.loads(storage.read_text(entry.uri + MARKER))
            except (FileNotFoundError, json.JSONDecodeError):
                continue  # deleted meanwhile, or not our marker: not usable
            out.append(entry)
    return out


def find_latest_complete(storage: Storage, layout: OutputLayout) -> RemoteCheckpoint | None:
    """The newest checkpoint whose marker exists; step folders without one are ignored."""
    complete = complete_checkpoints(storage, layout)
    return complete[-1] if complete else None


def download_checkpoint(storage: Storage, checkpoint: RemoteCheckpoint, local_dir: Path) -> Path:
    """A local copy of a complete checkpoint, checked against the file list in its marker."""
    done = local_dir / MARKER
    if done.exists():
        return local_dir
    if local_dir.exists():
        shutil.rmtree(local_dir)
    storage.download_prefix(checkpoint.uri, local_dir)
    (local_dir / MARKER).unlink(missing_ok=True)
    for name, size in (checkpoint.marker or {}).get("files", {}).items():
        path = local_dir / name
        if not path.is_file() or path.stat().st_size != size:
            raise InfraError(
                f"checkpoint {checkpoint.uri}: {name} is missing or has the wrong size; the store changed under us"
            )
    done.touch()
    return local_dir


class CheckpointManager:
    """Uploads checkpoints on one background thread (in order), then marks, prunes and reports."""

    def __init__(
        self, storage: Storage, layout: OutputLayout, keep: int, reporter: Reporter, *, delete_local: bool = True
    ):
        self.storage = storage
        self.layout = layout
        self.keep = keep
        self.reporter = reporter
        self.delete_local = delete_local
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self._futures: list[Future] = []
        self.last_complete_step: int | None = None

    def submit(
        self,
        local_dir: Path,
        step: int,
        eval_loss: float | None = None,
        stage: str | None = None,
        other_files: dict[str, int] | None = None,
    ) -> Future:
        """Upload `local_dir` as checkpoint `step`; `other_files` ({name: size}) are already in the store (other
        nodes uploaded them) and go into the marker's file list too."""
        future = self._pool.submit(self._upload, Path(local_dir), step, eval_loss, stage, dict(other_files or {}))
        self._futures.append(future)
        return future

    def clear(self, step: int) -> None:
        """Remove the leftovers of a cut-off upload of the same step (before any node uploads into it)."""
        self.storage.delete_prefix(self.layout.checkpoint_uri(step))

    def _upload(
        self,
        local_dir: Path,
        step: int,
        eval_loss: float | None,
        stage: str | None = None,
        other_files: dict[str, int] | None = None,
    ) -> None:
        started = time.monotonic()
        uri = self.layout.checkpoint_uri(step)
        files = local_files(local_dir)
        self.storage.upload_dir(local_dir, uri)
        files = dict(sorted(((other_files or {}) | files).items()))
        marker = {"step": step, "time": _now(), "files": files}
        if eval_loss is not None:
            marker["evalLoss"] = eval_loss
        if stage is not None:
            marker["stage"] = stage
        self.storage.write_text(uri + MARKER, json.dumps(marker, indent=1))  # last: now it is complete
        self.last_complete_step = step
        log.info("checkpoint step-%d uploaded in %.1fs", step, time.monotonic() - started)
        self.prune_and_report()
        if self.delete_local:
            shutil.rmtree(local_dir, ignore_errors=True)

    def prune_and_report(self) -> None:
        complete = complete_checkpoints(self.storage, self.layout)
        for old in complete[: max(0, len(complete) - self.keep)]:
            # Marker first: a half-deleted folder must never look complete.
            self.storage.delete_prefix(old.uri + MARKER)
            self.storage.delete_prefix(old.uri)
        kept = complete[-self.keep :]
        newest = kept[-1].step if kept else None
        if newest is not None:
            for step, entry in scan(self.storage, self.layout).items():
                if not entry.complete and step < newest:
                    self.storage.delete_prefix(entry.uri)
        self.reporter.checkpoints(
            [
                CheckpointReport(c.step, c.uri, (c.marker or {}).get("time", _now()), (c.marker or {}).get("evalLoss"))
                for c in kept
            ]
        )

    def wait(self, timeout: float | None = None) -> None:
        """Block until every upload so far is done; re-raise the first failure."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in list(self._futures):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            exc = future.exception(timeout=remaining)
            if exc is not None:
                if isinstance(exc, TrainerError):
                    raise exc
                raise InfraError(f"checkpoint upload failed: {type(exc).__name__}: {exc}") from exc
        self._futures = [f for f in self._futures if not f.done()]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)


def _any_rank(flag: bool) -> bool:
    """True when any rank has the flag (all ranks must stop at the same step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _gather(value):
    """Every rank's `value`, in rank order ([value] without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def local_files(local_dir: Path) -> dict[str, int]:
    """{relative path: size} of every file under a local checkpoint folder."""
    return {p.relative_to(local_dir).as_posix(): p.stat().st_size for p in sorted(local_dir.rglob("*")) if p.is_file()}


class NodeFiles:
    """On each node but the first: what its ranks wrote into the node's own checkpoint-N folder (their RNG states;
    under FSDP also their shards of the model and optimizer) goes into the same step folder in the store. Without
    them a multi-node resume would lack those shards, or go on with fresh random streams on those ranks."""

    def __init__(self, storage: Storage, layout: OutputLayout):
        self.storage = storage
        self.layout = layout

    def upload(self, local_dir: Path, step: int) -> dict[str, int]:
        uri = self.layout.checkpoint_uri(step)
        files = local_files(local_dir)
        for name in files:
            self.storage.upload_file(local_dir / name, uri + name)
        return files


class CheckpointCallback(TrainerCallback):
    """Hands each saved checkpoint-N to the manager (rank 0) and turns SIGTERM into save-and-stop."""

    def __init__(
        self,
        manager: CheckpointManager | None,
        *,
        is_main: bool,
        node_files: NodeFiles | None = None,
        preemption: Preemption = PREEMPTION,
        save_every: int | None = None,
    ):
        self.manager = manager
        self.is_main = is_main
        self.node_files = node_files  # set on the first rank of every node but the first
        self.preemption = preemption
        # A sharded model's Trainer has no save strategy (kubetune_trainer.sharding): this asks for its checkpoints.
        self.save_every = save_every
        self.stage: str | None = None  # rlhf: the stage training (metrics.set_stage), recorded in each marker
        # Debug/test knob: slow every step down (seconds) so a test can kill a run between checkpoints.
        self._step_sleep = float(os.environ.get("KUBETUNE_DEBUG_STEP_SLEEP", "0") or 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.preemption.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.preemption.training = False

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_sleep:
            time.sleep(self._step_sleep)
        if self.is_main and self.manager is not None:
            # A checkpoint's upload overlaps one training step, no more: the step after a save does not
            # end before that checkpoint is complete, so an interruption (even a SIGKILL) never loses
            # more than checkpointEverySteps steps. (Other ranks wait at their next collective.)
            self.manager.wait()
        if self.save_every and state.global_step % self.save_every == 0:
            control.should_save = True
        if _any_rank(self.preemption.requested):
            self.preemption.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        if self.is_main and self.manager is not None:
            self.manager.clear(step)
        _barrier()  # every rank has written its part of checkpoint-N; the step folder in the store is empty
        uploaded = self.node_files.upload(local, step) if self.node_files is not None and local.is_dir() else {}
        # The other nodes' parts are in the store once every rank has their list: rank 0 may upload its part and
        # write the marker, which lists every file of every node.
        others = {name: size for files in _gather(uploaded) for name, size in files.items()}
        if not self.is_main or self.manager is None:
            return
        if not local.is_dir():
            log.warning("expected %s after a save; nothing uploaded", local)
            return
        eval_loss = next(
            (e.get("eval_loss") for e in reversed(state.log_history) if e.get("step") == step and "eval_loss" in e),
            None,
        )
        self.manager.submit(local, step, eval_loss, self.stage, others)
