"""The trainer entrypoint: `kubetune run FILE` and `python -m kubetune_trainer FILE` (what the pod and
torchrun run). `run_job` does the work in five named steps, each a function a test can call:

  open_output -> fetch_inputs -> build_context -> train -> publish

`run_cli` maps failures to exit codes and a one-line reason in the termination log:

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
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubetune.api.constants import TERMINATION_LOG, ExitCode
from kubetune.api.credentials import ROLE_MODEL, ROLE_OUTPUT, ROLE_REWARD_MODEL
from kubetune.api.uris import UriError, check_output_uri
from kubetune.api.validation import SpecError
from kubetune.manifests import ManifestFileError, load_job
from kubetune_trainer import sharding
from kubetune_trainer.context import RunContext
from kubetune_trainer.errors import InfraError, UserError
from kubetune_trainer.layout import OutputLayout
from kubetune_trainer.sharding import Strategy

if TYPE_CHECKING:
    from kubetune_trainer.storage import Storage

log = logging.getLogger("kubetune")

# Spec fields that change how a run is scheduled, not what it trains: editing them must not make a
# retry refuse to resume its own run.
OPERATIONAL_FIELDS = (
    "suspend",
    "pod",
    "tracking",
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
    parser = argparse.ArgumentParser(
        prog=prog, description="Run one FineTuneJob on this machine (the trainer pod's entrypoint)."
    )
    parser.add_argument("file", metavar="FILE", help="FineTuneJob manifest")
    parser.add_argument("--output", metavar="URI", help="override the output root (s3://... or file:///...)")
    parser.add_argument("--name", help="which document of a multi-document FILE to run")
    parser.add_argument(
        "--termination-log", metavar="PATH", default=None, help="where to write the one-line failure reason"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Run the job named by `args` (file, output, name, termination_log); returns the exit code."""
    from kubetune_trainer.console import quiet_library_noise
    from kubetune_trainer.preemption import PREEMPTION, Preempted

    _setup_logging()
    quiet_library_noise()
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
        if lost_peer(err):  # another rank's node died or froze: retrying the attempt is the cure
            # Only if no rank said why first: a rank that failed on bad data ends its peers' collectives too.
            return _fail(
                termination_log,
                ExitCode.INFRA_ERROR,
                f"InfraError: a peer process of this run was lost: {err}",
                only_if_empty=True,
            )
        traceback.print_exc(file=sys.stderr)
        return _fail(termination_log, ExitCode.INTERNAL_ERROR, f"InternalError: {type(err).__name__}: {err}")


_PEER_LOST = re.compile(
    r"gloo/transport|Timed out waiting|Connection closed by peer|Connection reset by peer|NCCL", re.I
)


def lost_peer(err: BaseException) -> bool:
    """A collective failed because another rank went away (its pod killed, its node lost or frozen past the
    collective timeout): torch raises DistError for NCCL and a plain RuntimeError from gloo's transport."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and isinstance(err, getattr(distributed, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and bool(_PEER_LOST.search(str(err)))


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


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun launch (a plain run is rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        return cls(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def _local_main_first(world: World):
    """Local rank 0 first (it downloads), then the other ranks of the node (they find the copy). A barrier of our own:
    accelerate's `local_main_process_first` waits only when it counts the run as distributed, and it does not count
    a CPU run on gloo (every rank then downloaded at once)."""
    if world.size <= 1:
        yield
        return
    import torch.distributed as dist

    if world.local_rank != 0:
        dist.barrier()
    yield
    if world.local_rank == 0:
        dist.barrier()


def _init_distributed(world: World) -> None:
    if world.size <= 1:
        return
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    # The Trainer reuses this state (a singleton); starting it now lets ranks wait for downloads. Collectives
    # give up after the bounded timeout (sharding.collective_timeout_seconds): a lost peer ends the attempt.
    PartialState(
        backend="nccl" if torch.cuda.is_available() else "gloo",
        timeout=timedelta(seconds=sharding.collective_timeout_seconds()),
    )


def _finish_distributed(wait_for_others: bool) -> None:
    # After a failure, no barrier: the other ranks may never reach it (torchrun stops them).
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            if wait_for_others:
                dist.barrier()
            dist.destroy_process_group()


# --------------------------------------------------------------------------- step 1: the output


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


def output_root(spec, output: str | None) -> str:
    root = output or os.environ.get("KUBETUNE_OUTPUT_URI") or spec.output.uri
    if not root:
        raise UserError("spec.output.uri: not set; give an output with --output URI (s3://... or file:///...)")
    try:
        check_output_uri(root)
    except UriError as err:
        raise UserError(f"output: {err}") from None
    return root if root.endswith("/") else root + "/"


@dataclass
class RunOutput:
    layout: OutputLayout
    storage: Storage
    resuming: bool  # the root already holds this run: its checkpoints and metrics continue


def open_output(job, spec, output: str | None, world: World = World()) -> RunOutput:
    """The output root and its storage; a root holding another spec's run is refused, a new run writes its
    resolved spec there first."""
    from kubetune_trainer.storage import get_storage

    layout = OutputLayout(output_root(spec, output))
    storage = get_storage(layout.root, credentials_role=ROLE_OUTPUT, spec=spec)
    manifest = resolved_manifest(job, spec)
    resuming = check_same_run(storage, layout, manifest)
    if not resuming and storage.list(layout.checkpoints_uri):
        # Checkpoints without the spec that made them: nothing proves they are this run's.
        raise UserError(
            f"output {layout.root} holds checkpoints but no {layout.spec_uri.rsplit('/', 1)[1]}, so they cannot be "
            "shown to be this run's; never resuming them: choose another output or delete that one"
        )
    if world.is_main and not resuming:
        storage.write_text(layout.spec_uri, yaml.safe_dump(manifest, sort_keys=False))
    return RunOutput(layout, storage, resuming)


# --------------------------------------------------------------------------- step 2: the inputs


@dataclass
class Inputs:
    tasks: list  # TaskData per spec.datasets entry
    model_dir: Path
    reward_model_dir: Path | None
    latest: Any  # the newest complete checkpoint (checkpoints.RemoteCheckpoint) or None
    resume_from: Path | None  # its local copy
    strategy: Strategy = Strategy("ddp", 1)  # how the model spreads over the processes (sharding.choose)
    plan: Any = None  # the memory plan (plan.Plan), when the model's shape is one the plan knows
    source: Any = None  # spec.resumeFrom's checkpoint (resume_from.Source), for a run without checkpoints of its own
    warm_start: Path | None = None  # its local copy when only its weights are taken


def gpu_memory(spec) -> float | None:
    """Bytes of one GPU for the plan: spec.resources.gpuMemory, else the operator's table for the GPU product the spec
    selects (KUBETUNE_GPU_MEMORY), else this machine's GPU; None without a GPU."""
    from kubetune_trainer.plan import bytes_of

    if spec.resources.gpu_memory is not None:
        return bytes_of(spec.resources.gpu_memory)
    if os.environ.get("KUBETUNE_GPU_MEMORY"):
        return bytes_of(os.environ["KUBETUNE_GPU_MEMORY"])
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory)
    return None


def plan_run(spec, config: dict, world: World, resumed: bool | None = None):
    """The memory plan on this run's GPUs, and the strategy it leads to. A job that cannot fit stops here, before
    any weight is downloaded, with what to change (a user error: retrying cannot help)."""
    import torch

    from kubetune_trainer import plan

    try:
        result = plan.plan(
            spec,
            config,
            gpus_per_node=max(1, world.size // max(1, spec.nodes)),
            gpu_memory=gpu_memory(spec) if torch.cuda.is_available() else None,
        )
    except plan.PlanError as err:
        log.info("no memory plan: %s", err)
        return None, sharding.choose(spec, None, world.size, resumed)
    for line in plan.describe(result):
        log.info("plan: %s", line)
    if result.chosen.fits is False:
        raise UserError(f"DoesNotFit: {plan.advice(result)}")
    return result, sharding.choose(spec, result, world.size, resumed)


def fetch_inputs(spec, out: RunOutput, work_dir: Path, world: World = World()) -> Inputs:
    """Data first (bad data fails in seconds, before a model download), the model's config.json and the memory
    plan (a job that cannot fit its GPUs stops before the weights are fetched), the model(s), and a local copy of
    the newest complete checkpoint. Local rank 0 of each node fetches; the node's other ranks find its copy."""
    from kubetune_trainer import resume_from as resume_from_source
    from kubetune_trainer.checkpoints import download_checkpoint, find_latest_complete
    from kubetune_trainer.data import load_tasks
    from kubetune_trainer.sources import fetch_config, fetch_model

    def model(uri: str, folder: str, role: str) -> Path:
        return fetch_model(
            uri,
            work_dir / folder,
            role=role,
            spec=spec,
            allow_pickle=spec.model.allow_pickle,
            trust_remote_code=spec.model.trust_remote_code,
        )

    with _local_main_first(world):
        tasks = load_tasks(spec, work_dir / "data")
        latest = find_latest_complete(out.storage, out.layout)
        source = None
        if latest is None and (uri := resume_from_source.source_uri(spec)):
            source = resume_from_source.find(spec, uri)
            log.info("starting from %s: %s", source.checkpoint.uri, source.why)
        started_from = latest or (source.checkpoint if source is not None and source.continues else None)
        resumed = (
            None if started_from is None else sharding.SHARDED_MARKER in (started_from.marker or {}).get("files", {})
        )
        # Into the model's own folder: the snapshot (or the cache entry's copy) then finds config.json there.
        config = fetch_config(spec.model.uri, work_dir / "model", role=ROLE_MODEL, spec=spec)
        plan_result, strategy = plan_run(spec, config, world, resumed)
        log.info("%s", strategy.why)
        model_dir = model(spec.model.uri, "model", ROLE_MODEL)
        reward_model_dir = None
        if spec.rlhf is not None and spec.rlhf.reward_model.uri:
            reward_model_dir = model(spec.rlhf.reward_model.uri, "reward-model", ROLE_REWARD_MODEL)
        resume_from = warm_start = None
        if latest is not None:
            log.info("resuming from checkpoint step-%d (%s)", latest.step, latest.uri)
            resume_from = download_checkpoint(out.storage, latest, work_dir / "resume" / f"step-{latest.step}")
        elif source is not None:
            local = download_checkpoint(
                source.storage, source.checkpoint, work_dir / "resume-from" / f"step-{source.checkpoint.step}"
            )
            resume_from, warm_start = (local, None) if source.continues else (None, local)
    return Inputs(
        tasks, Path(model_dir), reward_model_dir, latest, resume_from, strategy, plan_result, source, warm_start
    )


# --------------------------------------------------------------------------- step 3: the run context


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


@dataclass
class Session:
    """The plumbing of one attempt that outlives the recipe: what `publish` finishes and closes."""

    reporter: Any
    metrics: Any  # metrics.MetricsCallback
    checkpoints: Any  # checkpoints.CheckpointManager on rank 0, else None

    def close(self) -> None:
        self.metrics.close()
        if self.checkpoints is not None:
            self.checkpoints.close()


def restore_metrics(out: RunOutput, inputs: Inputs, metrics_dir: Path) -> None:
    """metrics.jsonl as the attempt being resumed left it up to its checkpoint, and TensorBoard rebuilt from it
    (in the store too); a new run starts both afresh."""
    from kubetune_trainer.layout import OutputLayout
    from kubetune_trainer.metrics import truncate_metrics, write_tensorboard

    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    out.storage.delete_prefix(out.layout.tensorboard_uri)
    if inputs.latest is not None:
        storage, metrics_uri, checkpoint = out.storage, out.layout.metrics_uri, inputs.latest
    elif inputs.source is not None and inputs.source.continues:  # continuing another run: its curve so far
        storage, metrics_uri = inputs.source.storage, OutputLayout(inputs.source.root).metrics_uri
        checkpoint = inputs.source.checkpoint
    else:
        out.storage.delete_prefix(out.layout.metrics_uri)
        return
    try:
        text = truncate_metrics(storage.read_text(metrics_uri), checkpoint.step, checkpoint.stage)
    except FileNotFoundError:
        return
    (metrics_dir / "metrics.jsonl").write_text(text)
    write_tensorboard([json.loads(line) for line in text.splitlines()], metrics_dir / "tensorboard")
    out.storage.upload_dir(metrics_dir / "tensorboard", out.layout.tensorboard_uri)


def build_context(
    spec,
    name: str,
    out: RunOutput,
    inputs: Inputs,
    work_dir: Path,
    world: World = World(),
    *,
    reporter=None,
    callbacks=(),
) -> tuple[RunContext, Session]:
    """The RunContext a recipe trains with, and the Session around it: the reporter (console and, in a pod,
    the status), metrics continued from the attempt resumed, the checkpoint manager, and the callbacks
    (metrics, checkpoints, early stopping, then `callbacks`)."""
    from kubetune_trainer.checkpoints import CheckpointCallback, CheckpointManager, NodeFiles
    from kubetune_trainer.metrics import EarlyStopping, MetricsCallback
    from kubetune_trainer.tracking import open_trackers

    reporter = reporter if reporter is not None else make_reporter(world.is_main)
    metrics_dir = work_dir / "metrics"
    manager = None
    if world.is_main:
        if inputs.plan is not None and hasattr(reporter, "plan"):
            reporter.plan(inputs.plan.status())  # status.plan: the strategy chosen and the GiB per GPU
        restore_metrics(out, inputs, metrics_dir)
        stopping = spec.evaluation.early_stopping is not None
        manager = CheckpointManager(
            out.storage, out.layout, spec.output.keep_checkpoints, reporter, delete_local=not stopping
        )
        if inputs.latest is not None:
            manager.prune_and_report()
    trackers = open_trackers(spec, name, out.storage, out.layout, work_dir) if world.is_main else None
    metrics_cb = MetricsCallback(
        metrics_dir, out.storage, out.layout, reporter, is_main=world.is_main, trackers=trackers
    )
    # The first rank of every other node (its own disk) uploads what its ranks wrote into each checkpoint.
    node_files = NodeFiles(out.storage, out.layout) if world.local_rank == 0 and not world.is_main else None
    save_every = spec.output.checkpoint_every_steps if inputs.strategy.sharded else None
    all_callbacks: list[Any] = [
        metrics_cb,
        CheckpointCallback(manager, is_main=world.is_main, node_files=node_files, save_every=save_every),
    ]
    if spec.evaluation.early_stopping is not None:
        stopping = spec.evaluation.early_stopping
        all_callbacks.append(
            EarlyStopping(early_stopping_patience=stopping.patience, early_stopping_threshold=stopping.min_delta)
        )
    all_callbacks.extend(callbacks)
    ctx = RunContext(
        spec=spec,
        name=name,
        work_dir=work_dir,
        layout=out.layout,
        model_dir=inputs.model_dir,
        tasks=inputs.tasks,
        resume_from=inputs.resume_from,
        callbacks=all_callbacks,
        reporter=reporter,
        world_size=world.size,
        rank=world.rank,
        reward_model_dir=inputs.reward_model_dir,
        strategy=inputs.strategy,
        warm_start=inputs.warm_start,
    )
    return ctx, Session(reporter, metrics_cb, manager)


# --------------------------------------------------------------------------- steps 4 and 5: train, publish


def train(ctx: RunContext):
    """The objective's recipe (objectives/<objective>.py) trains and returns a TrainResult."""
    objective = importlib.import_module(f"kubetune_trainer.objectives.{ctx.spec.objective.value.replace('-', '_')}")
    return objective.run(ctx)


def publish(result, ctx: RunContext, session: Session, out: RunOutput) -> str:
    """After training: on SIGTERM, finish the checkpoint and stop (exit 143); else save and upload the final
    model (while the last checkpoint still uploads), wait for the checkpoints, sync the metrics and report
    where everything is. Returns the final model's URI."""
    from kubetune_trainer.preemption import PREEMPTION, Preempted

    manager = session.checkpoints
    if PREEMPTION.requested:
        if manager is not None:
            manager.wait(timeout=PREEMPTION.remaining())
            session.metrics.sync()
            session.reporter.close()
        step = manager.last_complete_step if manager is not None else None
        raise Preempted(f"checkpoint step-{step} saved; the next attempt resumes from it" if step else "stopped")
    if ctx.is_main or ctx.strategy.sharded:  # a sharded model's ranks all hand in their shards
        save_and_upload(result, ctx.spec, out, ctx.work_dir, is_main=ctx.is_main)
    if manager is not None:
        manager.wait()
    if ctx.is_main:
        session.metrics.sync()
        session.reporter.output(output_report(out.layout))
        session.reporter.close()
    return out.layout.final_uri


def save_and_upload(result, spec, out: RunOutput, work_dir: Path, *, is_main: bool = True) -> None:
    from kubetune_trainer.modeling import save_final

    final_dir = work_dir / "final"
    if is_main:
        shutil.rmtree(final_dir, ignore_errors=True)
    save_final(result.model, result.tokenizer, spec, final_dir, is_main=is_main)
    if not is_main:
        return
    # Overwrite in place, never delete first: final/reward-model/ (rlhf) lives there too, and one output
    # root belongs to one spec, so a retry writes the same file names.
    out.storage.upload_dir(final_dir, out.layout.final_uri)
    files = {p.relative_to(final_dir).as_posix(): p.stat().st_size for p in sorted(final_dir.rglob("*")) if p.is_file()}
    out.storage.write_text(out.layout.final_marker_uri, json.dumps({"files": files}, indent=1))  # last: complete
    log.info("final model uploaded to %s", out.layout.final_uri)


def output_report(layout: OutputLayout):
    """Where a finished run's results are (status.output)."""
    from kubetune_trainer.reporting import OutputReport

    return OutputReport(
        model_uri=layout.final_uri,
        metrics_uri=layout.metrics_uri,
        tensorboard_uri=layout.tensorboard_uri,
        checkpoints_uri=layout.checkpoints_uri,
    )


def finished(out: RunOutput) -> bool:
    """The root already holds this run's complete final model: there is nothing left to train."""
    return out.resuming and out.storage.exists(out.layout.final_marker_uri)


def report_finished(out: RunOutput, world: World) -> str:
    """A run started again after it finished (its pod restarted, `kubetune run` again): report where the results
    are, change nothing."""

    log.info("this run already finished: its final model is %s", out.layout.final_uri)
    if world.is_main:
        reporter = make_reporter(True)
        reporter.output(output_report(out.layout))
        reporter.close()
    return out.layout.final_uri


# --------------------------------------------------------------------------- the run


def _work_dir(root: str, world: World) -> Path:
    if os.environ.get("KUBETUNE_WORK_DIR"):
        return Path(os.environ["KUBETUNE_WORK_DIR"])
    # Ranks of one torchrun share the parent process: same folder, so rank 0 uploads every rank's files.
    group = os.getppid() if world.size > 1 else os.getpid()
    digest = hashlib.sha1(root.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"kubetune-{digest}-{group}"


def run_job(file: str | Path, *, output: str | None = None, name: str | None = None) -> str:
    """Train the FineTuneJob in `file`; returns the final model's URI."""
    job = load_job(file, name)
    spec = job.spec.resolved()
    world = World.from_env()
    _init_distributed(world)
    out = open_output(job, spec, output, world)
    if finished(out):
        return report_finished(out, world)
    work_dir = _work_dir(out.layout.root, world)
    created_work_dir = not work_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)
    succeeded = False
    try:
        inputs = fetch_inputs(spec, out, work_dir, world)
        ctx, session = build_context(spec, job.metadata.name, out, inputs, work_dir, world)
        try:
            result = train(ctx)
            final_uri = publish(result, ctx, session, out)
        finally:
            session.close()
        succeeded = True
        return final_uri
    finally:
        if world.size > 1:
            _finish_distributed(wait_for_others=succeeded)
        else:
            sharding.finish_one_process_group()  # the group CPU offload started on one process, if it did
        if (
            created_work_dir
            and not os.environ.get("KUBETUNE_KEEP_WORK_DIR")
            and (world.size == 1 or world.local_rank == 0)
        ):
            shutil.rmtree(work_dir, ignore_errors=True)
