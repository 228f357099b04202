"""The in-cluster Reporter: progress, metrics, checkpoints, output and the memory plan into the FineTuneJob's status.

Merge patches of status.progress / metrics / checkpoints / output / plan only, built with the API's status models
(kubetune.api.v1alpha1: Status, Progress, CheckpointRef, OutputRefs, Plan), through the official client with
the pod's own identity: a per-job ServiceAccount whose Role allows get/patch on finetunejobs/status of this one
FineTuneJob. That is data the operator checks, not the job's result: phase, conditions, attempts and times are
the operator's, from its own look at the Job and pods, and it takes back any of them a pod writes, and any result
URI outside the job's output root (kubetune.controller.status).

Every value is cut to the CRD's bounds first (kubetune.controller.bounds: the API server refuses a whole patch
over one long string); a patch it refuses anyway (422, a cluster with another release's CRD) is cut to the bounds
its answer names and sent once more, else dropped, never retried as it was.

Rate-limited (at most one patch per KUBETUNE_REPORT_INTERVAL_SECONDS, default 10), sent from a
background thread, and never raising into training: a failed patch is logged and retried with the
next one; the last report is flushed on close().
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.api.v1alpha1 import Plan, Status
from kubetune.controller import bounds
from kubetune_trainer.reporting import CheckpointReport, OutputReport, ProgressReport

log = logging.getLogger("kubetune.trainer.status")

DEFAULT_INTERVAL_SECONDS = 10.0
# How long a closing reporter waits for its grant (see Reporter._grant_may_follow): GRANT_WAITS tries, this far apart.
GRANT_WAIT_SECONDS = 1.0
GRANT_WAITS = 8  # within close()'s 10 s


def _merge(into: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def status_patch(report: dict[str, Any]) -> dict[str, Any]:
    """A report (status keys in wire form) as the API's Status model takes it, within the CRD's bounds: camelCase,
    and nothing it left unset (a merge patch must not carry the defaults of keys that are someone else's, such as
    the operator's conditions)."""
    status = Status.model_validate(bounds.fit_status(report))
    return status.model_dump(by_alias=True, mode="json", exclude_unset=True, exclude_none=True)


def _unknown_plan_keys(plan: dict[str, Any]) -> list[str]:
    known = {f.alias for f in Plan.model_fields.values()}
    return sorted(set(plan) - known)


def _finite(values: dict[str, float]) -> dict[str, float]:
    # JSON has no NaN/Infinity: the API server would reject the whole patch.
    out = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


class StatusReporter:
    def __init__(
        self,
        name: str | None = None,
        namespace: str | None = None,
        *,
        interval_seconds: float | None = None,
        api_client: Any = None,
    ):
        self.name = name or os.environ.get("KUBETUNE_FTJ_NAME", "")
        self.namespace = namespace or os.environ.get("KUBETUNE_FTJ_NAMESPACE", "")
        if interval_seconds is None:
            raw = os.environ.get("KUBETUNE_REPORT_INTERVAL_SECONDS", "")
            try:
                interval_seconds = float(raw) if raw else DEFAULT_INTERVAL_SECONDS
            except ValueError:
                interval_seconds = DEFAULT_INTERVAL_SECONDS
        self.interval = max(0.0, interval_seconds)
        self._api_client = api_client
        self._api: Any = None
        self._pending: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._last_sent = -math.inf
        self._disabled = not (self.name and self.namespace)
        self.patches_sent = 0
        self.errors = 0
        # Bounds the API server held a patch to, tighter than this release's CRD: every later patch fits them.
        self._refused_bounds: dict[tuple[str, ...], int] = {}
        self._grant_waits = 0
        self._thread = threading.Thread(target=self._run, name="kubetune-status-reporter", daemon=True)
        if self._disabled:
            log.warning("status reporting is off: KUBETUNE_FTJ_NAME / KUBETUNE_FTJ_NAMESPACE are not set")
        else:
            self._thread.start()

    # ---------------------------------------------------------------------------- Reporter protocol

    def progress(self, report: ProgressReport) -> None:
        def build() -> dict[str, Any]:
            progress = {
                "step": int(report.step),
                "totalSteps": int(report.total_steps),
                "epoch": float(report.epoch) if math.isfinite(report.epoch) else 0.0,
                "percent": int(report.percent),
            }
            if report.eta_seconds is not None:
                progress["etaSeconds"] = int(report.eta_seconds)
            if report.stage:
                progress["stage"] = report.stage
            metrics = _finite(report.metrics or {})
            return {"progress": progress, **({"metrics": metrics} if metrics else {})}

        self._offer(build)

    def checkpoints(self, complete: list[CheckpointReport]) -> None:
        def build() -> dict[str, Any]:
            entries = []
            for ckpt in complete:
                entry = {"step": int(ckpt.step), "uri": ckpt.uri, "time": ckpt.time}
                if ckpt.eval_loss is not None and math.isfinite(ckpt.eval_loss):
                    entry["evalLoss"] = float(ckpt.eval_loss)
                entries.append({k: v for k, v in entry.items() if v is not None})
            return {"checkpoints": entries}

        self._offer(build)

    def output(self, report: OutputReport) -> None:
        self._offer(
            lambda: {
                "output": {
                    "modelUri": report.model_uri,
                    "metricsUri": report.metrics_uri,
                    "tensorboardUri": report.tensorboard_uri,
                    "checkpointsUri": report.checkpoints_uri,
                }
            }
        )

    def plan(self, plan: Plan | dict[str, Any]) -> None:
        """status.plan: the memory plan the run chose (the API's Plan model, or its wire form)."""

        def build() -> dict[str, Any]:
            if isinstance(plan, Plan):
                return {"plan": plan.model_dump(by_alias=True, mode="json", exclude_none=True)}
            unknown = _unknown_plan_keys(plan)
            if unknown:  # a key the API does not know would be dropped without a word
                log.warning(
                    "status.plan has no field %s (the API's are %s)",
                    ", ".join(unknown),
                    ", ".join(f.alias for f in Plan.model_fields.values()),
                )
            return {"plan": {k: v for k, v in plan.items() if k not in unknown}}

        self._offer(build)

    def close(self, timeout: float = 10.0) -> None:
        if self._disabled:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ---------------------------------------------------------------------------- internals

    def _offer(self, report: Callable[[], dict[str, Any]]) -> None:
        if self._disabled:
            return
        try:
            patch = status_patch(report())
            with self._cond:
                _merge(self._pending, patch)
                self._cond.notify_all()
        except Exception as err:  # never into training (a value the API's bounds refuse, for one)
            log.warning("status report dropped: %s", err)

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            if self._api_client is None:
                # Raises ConfigException while the token file is missing or empty (the reporter's token comes with
                # its grant, after the pod started): the report is kept and the loading tried again with the next.
                config.load_incluster_config()
                self._api_client = client.ApiClient()
            self._api = client.CustomObjectsApi(self._api_client)
        return self._api

    def _send(self, status: dict) -> None:
        status = bounds.refit(status, self._refused_bounds)
        try:
            self._patch(status)
            return
        except Exception as err:
            if getattr(err, "status", None) != 422:
                raise
            learned = bounds.refused_bounds(getattr(err, "body", None))
            refusal = getattr(err, "reason", None) or err
        # Refused for good as it is: cut to the bounds the answer names (and every later report with it), once.
        if learned and not learned.items() <= self._refused_bounds.items():
            self._refused_bounds.update(learned)
            try:
                self._patch(bounds.refit(status, self._refused_bounds))
                return
            except Exception as err:
                if getattr(err, "status", None) != 422:
                    raise
                refusal = getattr(err, "reason", None) or err
        log.warning("status patch for %s/%s refused (%s); this report is dropped", self.namespace, self.name, refusal)

    def _grant_may_follow(self, err: Exception) -> bool:
        """A refusal (403), or no token yet, before any report got through, while closing: the operator makes the
        reporter's token Secret and Role once it sees the job's pods (and the kubelet writes the token file once the
        Secret is there), so a trainer that finished within moments of starting may close before they exist. Its last
        report is tried again for a while rather than lost."""
        if self.patches_sent or self._grant_waits >= GRANT_WAITS:
            return False
        if getattr(err, "status", None) != 403 and not _no_token_yet(err):
            return False
        self._grant_waits += 1
        return True

    def _patch(self, status: dict) -> None:
        self._client().patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": status}, _request_timeout=30
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    wait = self._last_sent + self.interval - time.monotonic()
                    if self._pending and (wait <= 0 or self._closing):
                        break
                    if self._closing and not self._pending:
                        return
                    self._cond.wait(timeout=wait if self._pending and wait > 0 else None)
                status, self._pending = self._pending, {}
                closing = self._closing
            self._last_sent = time.monotonic()
            try:
                self._send(status)
                self.patches_sent += 1
            except Exception as err:
                self.errors += 1
                log.warning(
                    "status patch for %s/%s failed (%s); will retry with the next report",
                    self.namespace,
                    self.name,
                    "no token yet: the operator makes it once it sees the job's pods"
                    if _no_token_yet(err)
                    else type(err).__name__,
                )
                with self._cond:
                    # Keep what failed unless something newer replaced it.
                    merged = status
                    _merge(merged, self._pending)
                    self._pending = merged
                if closing:
                    if self._grant_may_follow(err):
                        time.sleep(GRANT_WAIT_SECONDS)
                        continue
                    return  # one last try was made; do not hold the pod's exit


def _no_token_yet(err: Exception) -> bool:
    """The in-cluster loader's refusal while the pod's token file is missing or empty."""
    from kubernetes.config import ConfigException

    return isinstance(err, ConfigException)
