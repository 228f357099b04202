"""Experiment trackers of spec.tracking (MLflow, Weights & Biases), beside metrics.jsonl and TensorBoard.

The trackers are fed from MetricsCallback's records, not by transformers' MLflowCallback/WandbCallback
(`report_to`), because:
- a record is what metrics.jsonl holds: the same names (loss, eval_loss, learning_rate, tokens_per_second, ...,
  "<stage>/<name>" for rlhf's stages, as TensorBoard's tags are), and after a resume only the steps after the
  checkpoint; transformers' callbacks log the Trainer's own dicts (without tokens_per_second, W&B's renamed to
  train/... and eval/..., no stage) and, after a resume, log again what the killed attempt had already sent;
- transformers' callbacks start their runs per Trainer (rlhf has two) and per attempt unless steered by
  process-wide environment variables (MLFLOW_RUN_ID, WANDB_RUN_ID, WANDB_RESUME), and log TrainingArguments, not
  the spec;
- credentials come from each tracker's own role (KUBETUNE_MLFLOW_*, KUBETUNE_WANDB_*, wired by the operator from
  the credentialsSecret), never from the spec.

One run per FineTuneJob, named <namespace>/<name>: rank 0 of the first attempt creates it and keeps its id in
tracking.json in the output root; every later attempt continues it. A resumed attempt feeds only the records after
its checkpoint (metrics.jsonl up to it is restored, not logged again), and what the killed attempt had already sent
after that checkpoint is not sent twice: MLflow is asked for the last step of each metric it holds (one point per
metric and step); W&B numbers its rows with the record's position in metrics.jsonl (the same in every attempt) and
reports on resume which row comes next. Offline, W&B cannot know what an earlier attempt wrote (its file of a killed
attempt holds only what it had flushed): the rows of a resumed attempt start at its checkpoint.
A tracker that fails never stops training: a warning says so, and training goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubetune.api.credentials import ROLE_MLFLOW, ROLE_WANDB, lookup
from kubetune.api.uris import join_uri

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec
    from kubetune_trainer.layout import OutputLayout
    from kubetune_trainer.storage import Storage

log = logging.getLogger("kubetune.tracking")

TRACKING_FILE = "tracking.json"
# Spec sections that are not parameters of the training: the pod's plumbing (env values, volumes) and this.
_NOT_PARAMS = ("pod", "tracking")
# Bounds on the parameters sent: MLflow servers refuse keys over 250 characters, and older ones values over 500.
MAX_PARAMS = 500
MAX_PARAM_KEY = 250
MAX_PARAM_VALUE = 500


def flatten_spec(spec: Spec) -> dict[str, str]:
    """The spec as flat parameters: "hyperparameters.learningRate" -> "0.0002", "datasets.0.uri" -> ...; lists of
    plain values as JSON; at most MAX_PARAMS, values cut to MAX_PARAM_VALUE characters."""
    wire = {k: v for k, v in spec.to_wire().items() if k not in _NOT_PARAMS}
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) > MAX_PARAM_VALUE:
                text = text[: MAX_PARAM_VALUE - 3] + "..."
            flat[prefix[:MAX_PARAM_KEY]] = text

    walk("", wire)
    return dict(list(flat.items())[:MAX_PARAMS])


def record_metrics(record: dict) -> dict[str, float]:
    """A metrics.jsonl record's numbers under the trackers' names: the record's own, "<stage>/<name>" in an rlhf
    stage; not the step (it is the x axis) and nothing that is not a finite number."""
    prefix = f"{record['stage']}/" if record.get("stage") else ""
    out = {}
    for key, value in record.items():
        if key in ("step", "stage") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[prefix + key] = float(value)
    return out


def run_name(name: str, namespace: str | None) -> str:
    return f"{namespace}/{name}" if namespace else name


# --------------------------------------------------------------------------- MLflow


class MlflowTracker:
    key = "mlflow"

    def __init__(self, config, job_name: str):
        self.uri = str(config.uri).rstrip("/")
        self.experiment = config.experiment or job_name
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._last_steps: dict[str, int] = {}  # metric -> the last step the run holds
        self._pending: list = []  # asynchronous log_batch operations not yet waited for

    def identity(self) -> dict:
        return {"uri": self.uri, "experiment": self.experiment}

    def start(self, name: str, stored: dict | None, params: dict[str, str], tags: dict[str, str]) -> dict:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        for key in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            value = lookup(ROLE_MLFLOW, key)
            if value:  # the MLflow client reads its credentials from these variables on every request
                os.environ[key] = value
        # MLflow retries a request 7 times by default, backing off up to about 4 minutes in all: a server that is
        # down would hold the GPUs that long before training starts. 4 retries ride out about 30 s of outage.
        # (spec.pod.env can set it.)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
        self.client = MlflowClient(tracking_uri=self.uri)
        run = self._existing_run(stored)
        if run is not None:
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            for metric in run.data.metrics:
                history = self.client.get_metric_history(self.run_id, metric)
                self._last_steps[metric] = max((m.step for m in history), default=-1)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.experiment_id = self._experiment_id()
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            self.run_id = run.info.run_id
            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=items[start : start + 100])
        return {**self.identity(), "experiment_id": self.experiment_id, "run_id": self.run_id}

    def _existing_run(self, stored: dict | None):
        """The run tracking.json names, unless the server no longer has it (deleted: a new run is made)."""
        from mlflow.exceptions import MlflowException

        if not (stored and stored.get("run_id")):
            return None
        try:
            run = self.client.get_run(stored["run_id"])
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("mlflow: run %s is gone from %s; starting a new one", stored["run_id"], self.uri)
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # another job created it meanwhile
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def log(self, position: int, step: int, metrics: dict[str, float], stage: str | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [Metric(k, v, now, step) for k, v in metrics.items() if step > self._last_steps.get(k, -1)]
        if not fresh:
            return
        for metric in fresh:
            self._last_steps[metric.key] = step
        # Sent in the background (MLflow's own queue), so a slow server does not slow the training loop.
        self._pending.append(self.client.log_batch(self.run_id, metrics=fresh, synchronous=False))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for operation in pending:
            if operation is not None:
                operation.wait()

    def finish(self, model_uri: str | None) -> None:
        self.flush()
        if model_uri:
            self.client.set_tag(self.run_id, "kubetune.model_uri", model_uri)
        # An attempt that stopped before the final model (preempted, failed) leaves the run KILLED; a retry
        # continues it (RUNNING again).
        self.client.set_terminated(self.run_id, status="FINISHED" if model_uri else "KILLED")


# --------------------------------------------------------------------------- Weights & Biases


class WandbTracker:
    key = "wandb"

    def __init__(self, config, job_name: str, work_dir: Path):
        self.project = config.project or job_name
        self.entity = config.entity or None
        self.work_dir = work_dir
        self.run = None
        self.next_row = 0  # the first row (record position in metrics.jsonl) not yet sent
        self._stages: set[str] = set()

    def identity(self) -> dict:
        return {"entity": self.entity or "", "project": self.project}

    def start(self, name: str, stored: dict | None, params: dict[str, str], tags: dict[str, str]) -> dict:
        import wandb

        folder = Path(os.environ.get("WANDB_DIR") or self.work_dir / "wandb")
        folder.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            api_key=lookup(ROLE_WANDB, "WANDB_API_KEY"),
            console="off",  # W&B would wrap stdout/stderr; the pod's log already has them
            silent=True,
            x_save_requirements=False,
        )
        continuing = bool(stored and stored.get("run_id"))
        self.run = wandb.init(
            entity=self.entity,
            project=self.project,
            dir=str(folder),
            id=stored["run_id"] if continuing else None,
            resume="allow" if continuing else None,
            name=name,
            # Sent by every attempt (an offline attempt's file is all W&B gets of it); a retry may have changed an
            # operational field (resources, image).
            config={**params, "kubetune.output_uri": tags.get("kubetune.output_uri", "")},
            allow_val_change=True,
            reinit="create_new",
            settings=settings,
        )
        self.next_row = int(self.run.step or 0)  # resumed online: the row after the last one the run holds
        return {**self.identity(), "run_id": self.run.id}

    def log(self, position: int, step: int, metrics: dict[str, float], stage: str | None) -> None:
        if position < self.next_row:
            return
        step_key = f"{stage}/global_step" if stage else "global_step"
        if step_key not in self._stages:
            # Charts plot against the global step (of the stage), not W&B's row number.
            self.run.define_metric(step_key)
            self.run.define_metric(f"{stage}/*" if stage else "*", step_metric=step_key)
            self._stages.add(step_key)
        self.run.log({step_key: step, **metrics}, step=position)
        self.next_row = position + 1

    def flush(self) -> None:
        pass  # W&B sends in the background and waits for it in finish()

    def finish(self, model_uri: str | None) -> None:
        if model_uri:
            self.run.summary["kubetune/model_uri"] = model_uri
        self.run.finish(exit_code=0 if model_uri else 1)


# --------------------------------------------------------------------------- the trackers of a run


class Trackers:
    """The trackers of one attempt (rank 0): MetricsCallback hands them each record, syncs and closes them."""

    def __init__(self, trackers: list, storage: Storage, layout: OutputLayout):
        self.trackers = trackers
        self.storage = storage
        self.layout = layout
        self._failed: set[str] = set()

    def _safely(self, tracker, what: str, call) -> None:
        try:
            call()
        except Exception as err:  # noqa: BLE001 - a tracker must never stop training
            if tracker.key not in self._failed:  # once per tracker: a server that is down fails every call
                self._failed.add(tracker.key)
                log.warning("%s: %s failed, training goes on (%s: %s)", tracker.key, what, type(err).__name__, err)

    def record(self, record: dict, position: int) -> None:
        """Send a metrics.jsonl record; `position` is its line in metrics.jsonl."""
        metrics = record_metrics(record)
        if not metrics:
            return
        step, stage = int(record.get("step", 0)), record.get("stage")
        for tracker in self.trackers:
            self._safely(tracker, "logging", lambda t=tracker: t.log(position, step, metrics, stage))

    def sync(self) -> None:
        """Wait for what was sent in the background (with metrics.jsonl's own sync: on every checkpoint)."""
        for tracker in self.trackers:
            self._safely(tracker, "logging", tracker.flush)

    def close(self) -> None:
        """End the attempt's runs, with the final model's URI when this attempt published it."""
        try:
            model_uri = self.layout.final_uri if self.storage.exists(self.layout.final_marker_uri) else None
        except Exception:  # noqa: BLE001 - a store that cannot say: no URI, the run still ends
            model_uri = None
        for tracker in self.trackers:
            self._safely(tracker, "closing the run", lambda t=tracker: t.finish(model_uri))
        self.trackers = []


def _namespace(storage: Storage, layout: OutputLayout) -> str | None:
    """The FineTuneJob's namespace: the operator's variable in a pod, else the manifest's (kept in the output)."""
    if os.environ.get("KUBETUNE_FTJ_NAMESPACE"):
        return os.environ["KUBETUNE_FTJ_NAMESPACE"]
    try:
        manifest = yaml.safe_load(storage.read_text(layout.spec_uri)) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return None
    return (manifest.get("metadata") or {}).get("namespace")


def open_trackers(spec: Spec, job_name: str, storage: Storage, layout: OutputLayout, work_dir: Path) -> Trackers | None:
    """Start (or continue) the runs of spec.tracking on rank 0; None without spec.tracking."""
    tracking = spec.tracking
    if tracking is None or (tracking.mlflow is None and tracking.wandb is None):
        return None
    uri = join_uri(layout.root, TRACKING_FILE)
    try:
        stored = json.loads(storage.read_text(uri))
    except (FileNotFoundError, json.JSONDecodeError):
        stored = {}
    namespace = _namespace(storage, layout)
    name = run_name(job_name, namespace)
    params = flatten_spec(spec)
    tags = {"kubetune.name": job_name, "kubetune.output_uri": layout.root}
    if namespace:
        tags["kubetune.namespace"] = namespace
    if os.environ.get("KUBETUNE_FTJ_UID"):
        tags["kubetune.uid"] = os.environ["KUBETUNE_FTJ_UID"]
    candidates: list = []
    if tracking.mlflow is not None:
        candidates.append(MlflowTracker(tracking.mlflow, job_name))
    if tracking.wandb is not None:
        candidates.append(WandbTracker(tracking.wandb, job_name, work_dir))
    started = []
    for tracker in candidates:
        previous = stored.get(tracker.key)
        # A run is continued only where it was made: a spec now naming another server or project starts afresh.
        if previous and any(previous.get(k) != v for k, v in tracker.identity().items()):
            previous = None
        try:
            stored[tracker.key] = tracker.start(name, previous, params, tags)
        except Exception as err:  # noqa: BLE001 - a tracker that cannot start never stops training
            log.warning(
                "%s: cannot start the run, training goes on without it (%s: %s)", tracker.key, type(err).__name__, err
            )
            continue
        log.info(
            "%s: %s run %s", tracker.key, "continuing" if previous else "started", stored[tracker.key].get("run_id")
        )
        started.append(tracker)
    if not started:
        return None
    # Before training: an attempt that dies from here on is continued in these runs.
    storage.write_text(uri, json.dumps(stored, indent=1, sort_keys=True))
    return Trackers(started, storage, layout)
