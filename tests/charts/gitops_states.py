"""A FineTuneJob in every state it goes through, as a GitOps tool reads it from the API server.

The statuses are the operator's own (kubetune.controller.status: observe() on a Job and its pods, then
compute()), plus the trainer's progress where it reports one, and the object is defaulted the way the
API server serves a custom resource read back from etcd (the CRD's structural defaults, status included).
Used by the Argo CD health check and the kstatus / Flux tests.
"""

from __future__ import annotations

import copy

from kubetune.api.constants import Phase, Reason
from kubetune.controller import builders, status
from tests.api import crdcheck
from tests.controller.samples import LORA_TEXT_SPEC

NOW = "2026-01-01T00:00:00Z"
SPEC = LORA_TEXT_SPEC | {"output": {"uri": "s3://out/"}}
PROGRESS = {"step": 1200, "totalSteps": 3000, "epoch": 1.2, "percent": 40, "etaSeconds": 1800}


def served(obj: dict) -> dict:
    """The object as a GET or watch returns it: the CRD's defaults applied (apiextensions-apiserver
    defaults what it decodes from etcd), so also a status the operator has not written yet."""
    return crdcheck.apply_defaults(crdcheck.schema(), copy.deepcopy(obj))


def new_job(generation: int = 1, **spec_changes) -> dict:
    """As `kubectl apply` creates it: no status (a create drops any status the request carried)."""
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": generation},
        "spec": SPEC | spec_changes,
    }


def _job(suspend: bool = False, annotations: dict | None = None, labels: dict | None = None, **counters) -> dict:
    return {
        "metadata": {"name": "bot", "uid": "j-1", "annotations": annotations or {}, "labels": labels or {}},
        "spec": {"suspend": suspend},
        "status": counters,
    }


def _pod(phase: str, exit_code: int | None = None, message: str = "") -> dict:
    pod = {"metadata": {"name": f"bot-{phase.lower()}", "creationTimestamp": NOW}, "status": {"phase": phase}}
    if exit_code is not None:
        pod["status"]["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
        ]
    return pod


def _with_status(
    obj: dict, job: dict | None, pods: list[dict], *, queue_name: str = "", spec_suspend: bool = False
) -> dict:
    seen = status.observe(
        job, pods, nodes=1, spec_suspend=spec_suspend, queue_name=queue_name, backoff_limit=3, active_deadline_seconds=0
    )
    obj = copy.deepcopy(obj)
    obj["status"] = status.compute(obj, seen, "bot", NOW).status
    return obj


def states() -> dict[str, dict]:
    """name -> the FineTuneJob as served; every phase, and each cause of Queued and Suspended."""
    base = new_job()
    complete = [{"type": "Complete", "status": "True"}]
    user_error = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
    running = _with_status(base, _job(active=1), [_pod("Running")])
    running["status"]["progress"] = dict(PROGRESS)
    suspended = new_job(suspend=True)
    result = {
        "new": base,
        "pending": _with_status(base, None, []),
        "pods-pending": _with_status(base, _job(active=1), [_pod("Pending")]),
        "retrying": _with_status(base, _job(failed=1, active=1), [_pod("Failed", 20, "S3 timed out")]),
        "queued-by-kueue": _with_status(
            new_job(queueName="team-a"),  # the Job carries its LocalQueue's label
            _job(suspend=True, labels={builders.LABEL_KUEUE_QUEUE: "team-a"}),
            [],
            queue_name="team-a",
        ),
        "queued-by-namespace-cap": _with_status(
            base, _job(suspend=True, annotations={builders.ANNOTATION_HELD: "true"}), []
        ),
        "running": running,
        "suspended-by-spec": _with_status(suspended, _job(suspend=True), [], spec_suspend=True),
        "succeeded": _with_status(base, _job(succeeded=1, conditions=complete), [_pod("Succeeded")]),
        "failed": _with_status(
            base, _job(failed=1, conditions=user_error), [_pod("Failed", 10, "spec.datasets[0]: column 'text' missing")]
        ),
    }
    # The training Job suspended by someone else than the user (a Kueue webhook that manages the namespace).
    result["suspended-by-other"] = _with_status(base, _job(suspend=True), [])
    # The job resumed after a suspension: Suspended=False beside the running conditions.
    resumed = copy.deepcopy(result["suspended-by-spec"])
    resumed["spec"]["suspend"] = False
    result["resumed"] = _with_status(resumed, _job(active=1), [_pod("Running")])
    invalid = copy.deepcopy(base)
    invalid["status"] = status.compute_invalid(invalid, ["spec.lora.rank: must be > 0"], NOW).status
    result["invalid"] = invalid
    # The user edited the spec (e.g. spec.suspend); the operator has not answered yet.
    edited = copy.deepcopy(result["running"])
    edited["metadata"]["generation"] = 2
    result["spec-edited"] = edited
    deleting = copy.deepcopy(result["running"])
    deleting["metadata"]["deletionTimestamp"] = NOW
    result["deleting"] = deleting
    assert {r["status"].get("phase") for r in result.values() if r.get("status")} == {str(p) for p in Phase}
    assert result["queued-by-kueue"]["status"]["phase"] == Phase.QUEUED
    assert _reason(result["queued-by-namespace-cap"], "Queued") == Reason.NAMESPACE_LIMIT
    return {name: served(obj) for name, obj in result.items()}


def _reason(obj: dict, kind: str) -> str | None:
    return next((c["reason"] for c in obj["status"]["conditions"] if c["type"] == kind), None)
