"""The trainer entrypoint: `kubetune run FILE` and `python -m kubetune_trainer FILE` (what the pod and
torchrun run). One function, `run_job`, does the work; `run_cli` maps its failures to exit codes and a
one-line reason in the termination log:

  0 done | 10 user error (spec, data, URI: retrying cannot help) | 20 infrastructure (retry) |
  30 internal error (a bug; traceback on stderr) | 143 preempted (checkpoint saved; the next attempt resumes)

Output root: --output, else $KUBETUNE_OUTPUT_URI (the operator sets <output.uri>/<namespace>/<name>/<uid>/),
else spec.output.uri. Under torchrun every rank trains; rank 0 alone writes to the output store and
reports; every rank resumes from the same (newest complete) checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.constants import TERMINATION_LOG, ExitCode
from kubetune.api.credentials import ROLE_MODEL, ROLE_OUTPUT, ROLE_REWARD_MODEL
from kubetune.api.uris import UriError, check_output_uri
from kubetune.api.validation import SpecError
from kubetune.manifests import ManifestFileError, load_job

from kubetune_trainer.errors import InfraError, UserError

log = logging.getLogger("kubetune")

# Spec fields that change how a run is scheduled, not what it trains: editing them must not make a
# retry refuse to resume its own run.
OPERATIONAL_FIELDS = (
    "suspend",
    "resources",
    "backoffLimit",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "queueName",
    "priorityClassName",
    "image",
)


# --------------------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m kubetune_trainer") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run one FineTuneJob on this machine (the trainer pod's entrypoint).")
    parser.add_argument("file", metavar="FILE", help="FineTuneJob manifest")
    parser.add_argument("--output", metavar="URI", help="override the output root (s3://... or file:///...)")
    parser.add_argument("--name", help="which document of a multi-document FILE to run")
    parser.add_argument("--termination-log", metavar="PATH", default=None, help="where to write the one-line failure reason")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Run the job named by `args` (file, output, name, termination_log); returns the exit code."""
    from kubetune_trainer.checkpoints import PREEMPTION, Preempted

    _setup_logging()
    termination_log = termination_log_path(getattr(args, "termination_log", None))
    PREEMPTION.install()
    PREEMPTION.on_timeout = lambda: write_termination_log(
        termination_log, "Preempted: the grace period ran out before the checkpoint upload finished", only_if_empty=True
    )
    try:
        run_job(args.file, output=getattr(args, "output", None), name=getattr(args, "name", None))
        return ExitCode.OK
    except Preempted as stop:
        return _fail(termination_log, ExitCode.PREEMPTED, f"Preempted: {stop}", only_if_empty=True)
    except (SpecError, ManifestFileError) as err:
        return _fail(termination_log, ExitCode.USER_ERROR, f"UserError: {args.file}: {err}")
    except UserError as err:
        return _fail(termination_log, ExitCode.USER_ERROR, f"UserError: {err}")
    except InfraError as err:
        return _fail(termination_log, ExitCode.INFRA_ERROR, f"InfraError: {err}")
    except KeyboardInterrupt:
        return _fail(termination_log, ExitCode.PREEMPTED, "Preempted: interrupted", only_if_empty=True)
    except Exception as err:  # noqa: BLE001 - a bug: details to stderr, one line to the log
        traceback.print_exc(file=sys.stderr)
        return _fail(termination_log, ExitCode.INTERNAL_ERROR, f"InternalError: {type(err).__name__}: {err}")


def _fail(path: str | None, code: int, message: str, *, only_if_empty: bool = False) -> int:
    message = redact(message)
    print(f"[kubetune] {message}", file=sys.stderr, flush=True)
    write_termination_log(path, message, only_if_empty=only_if_empty)
    return code


def termination_log_path(arg: str | None) -> str | None:
    if arg:
        return arg
    if os.environ.get("KUBETUNE_TERMINATION_LOG"):
        return os.environ["KUBETUNE_TERMINATION_LOG"]
    if os.path.exists(TERMINATION_LOG) and os.access(TERMINATION_LOG, os.W_OK):
        return TERMINATION_LOG
    return None


_SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)


def redact(text: str) -> str:
    """`text` with the value of every secret-looking environment variable replaced by ***."""
    for name, value in os.environ.items():
        if value and len(value) >= 6 and _SECRETISH.search(name):
            text = text.replace(value, "***")
    return text


def write_termination_log(path: str | None, message: str, *, only_if_empty: bool = False) -> None:
    if not path:
        return
    line = " ".join(redact(message).split())[:3900]  # one line; Kubernetes keeps 4096 bytes
    try:
        if only_if_empty and os.path.exists(path) and os.path.getsize(path) > 0:
            return  # another rank already wrote the real reason
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        pass


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a caller may have swapped it since setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _setup_logging() -> None:
    logger = logging.getLogger("kubetune")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("[kubetune] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    for name in ("kubetune_trainer",):
        logging.getLogger(name).setLevel(logging.INFO)
        if not logging.getLogger(name).handlers:
            logging.getLogger(name).addHandler(logger.handlers[0])
            logging.getLogger(name).propagate = False


# --------------------------------------------------------------------------- distributed


def _world() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def _local_main_first(world_size: int):
    """Local rank 0 first (it downloads), then the other ranks of the node (they find the copy)."""
    if world_size <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().local_main_process_first()


def _init_distributed(world_size: int) -> None:
    if world_size <= 1:
        return
    import torch
    from accelerate import PartialState

    # The Trainer reuses this state (a singleton); starting it now lets ranks wait for downloads.
    PartialState(backend="nccl" if torch.cuda.is_available() else "gloo")


# --------------------------------------------------------------------------- the run


def resolved_manifest(job, spec) -> dict[str, Any]:
    meta = {"name": job.metadata.name}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    return {"apiVersion": job.api_version, "kind": job.kind, "metadata": meta, "spec": spec.to_wire()}


def _identity(manifest: dict) -> dict:
    spec = dict(manifest.get("spec") or {})
    for key in OPERATIONAL_FIELDS:
        spec.pop(key, None)
    output = dict(spec.get("output") or {})
    output.pop("uri", None)  # the root itself (--output / operator layout) is where we are
    spec["output"] = output
    return {"name": (manifest.get("metadata") or {}).get("name"), "spec": spec}


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [path or "(document)"]


def check_same_run(storage, layout, manifest: dict) -> bool:
    """True when the root already holds this run's spec (a resume); UserError when it holds another's."""
    try:
        existing_text = storage.read_text(layout.spec_uri)
    except FileNotFoundError:
        return False
    try:
        existing = yaml.safe_load(existing_text)
    except yaml.YAMLError:
        existing = None
    if not isinstance(existing, dict):
        raise UserError(f"{layout.spec_uri} exists but is not a kubetune spec; refusing to write into {layout.root}")
    diffs = _differences(_identity(existing), _identity(manifest))
    if diffs:
        shown = ", ".join(d.replace("name", "metadata.name", 1) if d == "name" else d for d in diffs[:5])
        raise UserError(
            f"output {layout.root} holds a run of a different spec (differs in {shown}); "
            "never resuming someone else's run: choose another output or delete that one"
        )
    return True


def _work_dir(root: str, world_size: int) -> Path:
    if os.environ.get("KUBETUNE_WORK_DIR"):
        return Path(os.environ["KUBETUNE_WORK_DIR"])
    # Ranks of one torchrun share the parent process: same folder, so rank 0 uploads every rank's files.
    group = os.getppid() if world_size > 1 else os.getpid()
    digest = hashlib.sha1(root.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"kubetune-{digest}-{group}"


def make_reporter(is_main: bool):
    from kubetune_trainer.console import ConsoleReporter
    from kubetune_trainer.reporting import MultiReporter, NullReporter

    if not is_main:
        return NullReporter()
    reporters: list[Any] = [ConsoleReporter()]
    # In a pod the operator sets these; the StatusReporter patches the FineTuneJob's status.
    if os.environ.get("KUBETUNE_FTJ_NAME") and os.environ.get("KUBETUNE_FTJ_NAMESPACE"):
        try:
            from kubetune_trainer.status_reporter import StatusReporter

            reporters.append(StatusReporter())
        except Exception as err:  # noqa: BLE001 - progress reporting is best effort
            log.warning("status reporting disabled: %s", err)
    return MultiReporter(*reporters)


def output_root(spec, output: str | None) -> str:
    root = output or os.environ.get("KUBETUNE_OUTPUT_URI") or spec.output.uri
    if not root:
        raise UserError("spec.output.uri: not set; give an output with --output URI (s3://... or file:///...)")
    try:
        check_output_uri(root)
    except UriError as err:
        raise UserError(f"output: {err}") from None
    return root if root.endswith("/") else root + "/"


def run_job(file: str | Path, *, output: str | None = None, name: str | None = None) -> str:
    """Train the FineTuneJob in `file`; returns the final model's URI."""
    from kubetune_trainer.checkpoints import (
        PREEMPTION,
        CheckpointCallback,
        CheckpointManager,
        NodeRngStates,
        Preempted,
        download_checkpoint,
        find_latest_complete,
    )
    from kubetune_trainer.context import OutputLayout, RunContext
    from kubetune_trainer.data import load_tasks
    from kubetune_trainer.metrics import EarlyStopping, MetricsCallback, truncate_metrics
    from kubetune_trainer.reporting import OutputReport
    from kubetune_trainer.sources import fetch_model
    from kubetune_trainer.storage import get_storage

    job = load_job(file, name)
    spec = job.spec.resolved()
    root = output_root(spec, output)
    layout = OutputLayout(root)
    rank, world_size, local_rank = _world()
    is_main = rank == 0
    _init_distributed(world_size)

    storage = get_storage(root, credentials_role=ROLE_OUTPUT, spec=spec)
    manifest = resolved_manifest(job, spec)
    resuming = check_same_run(storage, layout, manifest)
    if is_main and not resuming:
        storage.write_text(layout.spec_uri, yaml.safe_dump(manifest, sort_keys=False))

    work_dir = _work_dir(root, world_size)
    created_work_dir = not work_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)
    succeeded = False
    try:
        with _local_main_first(world_size):
            # Data first: bad data fails in seconds, before a model download.
            tasks = load_tasks(spec, work_dir / "data")
            model_dir = fetch_model(
                spec.model.uri,
                work_dir / "model",
                role=ROLE_MODEL,
                spec=spec,
                allow_pickle=spec.model.allow_pickle,
                trust_remote_code=spec.model.trust_remote_code,
            )
            reward_model_dir = None
            if spec.rlhf is not None and spec.rlhf.reward_model.uri:
                reward_model_dir = fetch_model(
                    spec.rlhf.reward_model.uri,
                    work_dir / "reward-model",
                    role=ROLE_REWARD_MODEL,
                    spec=spec,
                    allow_pickle=spec.model.allow_pickle,
                    trust_remote_code=spec.model.trust_remote_code,
                )
            latest = find_latest_complete(storage, layout)
            resume_from = None
            if latest is not None:
                log.info("resuming from checkpoint step-%d (%s)", latest.step, latest.uri)
                resume_from = download_checkpoint(storage, latest, work_dir / "resume" / f"step-{latest.step}")

        reporter = make_reporter(is_main)
        metrics_dir = work_dir / "metrics"
        if is_main:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            if latest is not None:
                # Continue the metrics of the attempt we resume, minus what it logged after the checkpoint.
                try:
                    text = storage.read_text(layout.metrics_uri)
                    (metrics_dir / "metrics.jsonl").write_text(truncate_metrics(text, latest.step))
                except FileNotFoundError:
                    pass
                storage.download_prefix(layout.tensorboard_uri, metrics_dir / "tensorboard")
            else:
                storage.delete_prefix(layout.metrics_uri)
                storage.delete_prefix(layout.tensorboard_uri)

        manager = (
            CheckpointManager(
                storage, layout, spec.output.keep_checkpoints, reporter, delete_local=spec.evaluation.early_stopping is None
            )
            if is_main
            else None
        )
        if manager is not None and latest is not None:
            manager.prune_and_report()
        metrics_cb = MetricsCallback(metrics_dir, storage, layout, reporter, is_main=is_main)
        # The first rank of every other node (its own disk) adds its ranks' RNG states to each checkpoint.
        node_files = NodeRngStates(storage, layout) if local_rank == 0 and rank != 0 else None
        callbacks: list[Any] = [metrics_cb, CheckpointCallback(manager, is_main=is_main, node_files=node_files)]
        if spec.evaluation.early_stopping is not None:
            stopping = spec.evaluation.early_stopping
            callbacks.append(EarlyStopping(early_stopping_patience=stopping.patience, early_stopping_threshold=stopping.min_delta))

        ctx = RunContext(
            spec=spec,
            name=job.metadata.name,
            work_dir=work_dir,
            layout=layout,
            model_dir=Path(model_dir),
            tasks=tasks,
            resume_from=resume_from,
            callbacks=callbacks,
            reporter=reporter,
            world_size=world_size,
            rank=rank,
            reward_model_dir=reward_model_dir,
        )
        objective = importlib.import_module(f"kubetune_trainer.objectives.{spec.objective.value.replace('-', '_')}")
        try:
            result = objective.run(ctx)
            if PREEMPTION.requested:
                if manager is not None:
                    manager.wait(timeout=PREEMPTION.remaining())
                    metrics_cb.sync()
                    reporter.close()
                step = manager.last_complete_step if manager is not None else None
                raise Preempted(f"checkpoint step-{step} saved; the next attempt resumes from it" if step else "stopped")
            if is_main:
                # While the last checkpoint still uploads on its thread: its files are on disk already.
                _save_and_upload(result, spec, storage, layout, work_dir)
            if manager is not None:
                manager.wait()
            if is_main:
                metrics_cb.sync()
                reporter.output(
                    OutputReport(
                        model_uri=layout.final_uri,
                        metrics_uri=layout.metrics_uri,
                        tensorboard_uri=layout.tensorboard_uri,
                        checkpoints_uri=layout.checkpoints_uri,
                    )
                )
                reporter.close()
        finally:
            metrics_cb.close()
            if manager is not None:
                manager.close()
        succeeded = True
        return layout.final_uri
    finally:
        if world_size > 1:
            _finish_distributed(wait_for_others=succeeded)
        if created_work_dir and not os.environ.get("KUBETUNE_KEEP_WORK_DIR") and (world_size == 1 or _world()[2] == 0):
            shutil.rmtree(work_dir, ignore_errors=True)


def _save_and_upload(result, spec, storage, layout, work_dir: Path) -> None:
    from kubetune.api.uris import join_uri

    from kubetune_trainer.modeling import save_final

    final_dir = work_dir / "final"
    shutil.rmtree(final_dir, ignore_errors=True)
    save_final(result.model, result.tokenizer, spec, final_dir)
    # Overwrite in place, never delete first: final/reward-model/ (rlhf) lives there too, and one output
    # root belongs to one spec, so a retry writes the same file names.
    storage.upload_dir(final_dir, layout.final_uri)
    for key, (model, tokenizer) in (result.extra_models or {}).items():
        extra_dir = work_dir / "extra" / key
        model.save_pretrained(str(extra_dir), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(extra_dir))
        storage.upload_dir(extra_dir, join_uri(layout.root, key) + "/")
    log.info("final model uploaded to %s", layout.final_uri)


def _finish_distributed(wait_for_others: bool) -> None:
    # After a failure, no barrier: the other ranks may never reach it (torchrun stops them).
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            if wait_for_others:
                dist.barrier()
            dist.destroy_process_group()
