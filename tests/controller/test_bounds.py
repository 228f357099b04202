"""Every status field the operator or the trainer writes fits the CRD's bounds, read from the CRD itself: a value
beyond maxLength, maxItems or maxProperties is cut (strings with a marker), and the result passes the API server's
own check of those bounds (the test API server's port of it, kubetune.testing.apivalidation)."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest

from kubetune.api.constants import Phase, Reason
from kubetune.api.crd import crd
from kubetune.controller import bounds, status
from kubetune.testing import apivalidation
from kubetune.testing.harness import wait_for
from kubetune_trainer.reporting import CheckpointReport, ProgressReport
from kubetune_trainer.status_reporter import StatusReporter
from tests.controller.samples import FTJ


def crd_status_schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def oversized(schema: dict) -> Any:
    """A value of this schema beyond each of its bounds, at every depth (and an ordinary one where it has none)."""
    kind = schema.get("type")
    if kind == "string":
        return "s" * ((schema.get("maxLength") or 20) + 50)
    if kind == "array":
        return [oversized(schema.get("items") or {}) for _ in range((schema.get("maxItems") or 2) + 3)]
    if kind == "object":
        out = {key: oversized(child) for key, child in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            out |= {f"key{i}": oversized(extra) for i in range((schema.get("maxProperties") or 2) + 3)}
        return out
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return 7


def test_the_bounds_are_the_crds_own():
    schema = crd_status_schema()
    assert bounds.status_schema() == schema
    assert bounds.max_length("message") == schema["properties"]["message"]["maxLength"]
    assert (
        bounds.max_length("conditions", "message")
        == schema["properties"]["conditions"]["items"]["properties"]["message"]["maxLength"]
    )


def test_a_status_beyond_every_bound_is_cut_to_fit_the_crd():
    schema = crd_status_schema()
    big = oversized(schema)
    causes = apivalidation.bound_causes(big, schema, "status")
    # The generated status breaks every bound the CRD sets on status: the test covers them all.
    bounded = {c["field"].split("[")[0] for c in causes}
    assert {
        "status.message",
        "status.conditions",
        "status.metrics",
        "status.checkpoints",
        "status.output.modelUri",
        "status.plan.strategy",
        "status.progress.stage",
    } <= bounded
    fitted = bounds.fit_status(big)
    assert apivalidation.bound_causes(fitted, schema, "status") == []
    assert fitted["message"].endswith(bounds.TRUNCATED) and len(fitted["message"]) == bounds.max_length("message")
    assert len(fitted["checkpoints"]) == schema["properties"]["checkpoints"]["maxItems"]
    assert len(fitted["metrics"]) == schema["properties"]["metrics"]["maxProperties"]
    small = {"message": "fine", "metrics": {"loss": 1.0}, "checkpoints": [{"step": 1, "uri": "s3://b/x/"}]}
    assert bounds.fit_status(small) == small  # within bounds: untouched


def test_the_newest_checkpoints_are_the_ones_kept():
    many = [{"step": i, "uri": f"s3://b/step-{i}/"} for i in range(1, 1101)]
    kept = bounds.fit_status({"checkpoints": many})["checkpoints"]
    assert kept[0]["step"] == 101 and kept[-1]["step"] == 1100


def test_what_the_operator_computes_fits_whatever_the_pod_wrote():
    long_words = "UserError: " + "a column is missing; " * 1000
    job = {
        "metadata": {"name": "bot", "annotations": {}},
        "spec": {},
        "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]},
    }
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 10, "message": long_words}}}
            ],
        },
    }
    seen = status.observe(
        job, [pod], nodes=1, spec_suspend=False, queue_name="", backoff_limit=2, active_deadline_seconds=0
    )
    outcome = status.compute(dict(FTJ), seen, "bot", "2026-01-01T00:00:00Z", notices=["spec.x: " + "y" * 9000])
    assert apivalidation.bound_causes(outcome.status, crd_status_schema(), "status") == []
    invalid = status.compute_invalid(dict(FTJ), ["spec.x: bad"] * 2000, "2026-01-01T00:00:00Z")
    assert apivalidation.bound_causes(invalid.status, crd_status_schema(), "status") == []


def test_the_bounds_an_api_server_names_when_it_refuses_a_write_are_read_from_its_answer():
    refusal = apivalidation.Invalid(
        "FineTuneJob",
        "kubetune.dev",
        "bot",
        [
            apivalidation.too_long("status.conditions[2].message", 100),
            apivalidation.too_long("status.message", 50),
            apivalidation.too_many("status.checkpoints", 12, 10),
        ],
    )
    body = json.dumps(
        {"kind": "Status", "code": 422, "reason": "Invalid", "message": refusal.message, "details": refusal.details}
    )
    learned = bounds.refused_bounds(body)
    assert learned == {
        ("status", "conditions", "message"): 100,
        ("status", "message"): 50,
        ("status", "checkpoints"): 10,
    }
    patch = {
        "message": "m" * 80,
        "conditions": [{"type": "Ready", "message": "c" * 150}],
        "checkpoints": [{"step": i} for i in range(12)],
    }
    refit = bounds.refit(patch, learned)
    assert len(refit["message"]) == 50 and len(refit["conditions"][0]["message"]) == 100
    assert [c["step"] for c in refit["checkpoints"]] == list(range(2, 12))
    assert bounds.refused_bounds("not json") == {} and bounds.refused_bounds(None) == {}


def test_a_report_beyond_the_bounds_reaches_the_status_cut_to_fit(admin, namespace, sim, emulator, operator):
    """The test API server refuses what breaks the CRD's bounds, as the real one does: the reporter's patches still
    get through, cut."""
    from tests.controller.test_operator import User

    user = User(admin, namespace)
    user.apply("chatty")
    wait_for(lambda: sim.kube.get("Job", namespace, "chatty"), what="the Job")
    sim.start(namespace, "chatty")
    user.wait_phase("chatty", "Running")
    root = f"s3://kubetune-out/runs/{namespace}/chatty/{user.get('chatty')['metadata']['uid']}/"
    client = kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{namespace}:chatty-reporter"))
    reporter = StatusReporter("chatty", namespace, interval_seconds=0, api_client=client)
    reporter.progress(
        ProgressReport(
            step=1, total_steps=2, epoch=0.5, stage="s" * 5000, metrics={f"eval_task{i}_loss": 1.0 for i in range(100)}
        )
    )
    reporter.checkpoints(
        [
            CheckpointReport(step=i, uri=f"{root}checkpoints/step-{i}/", time="2026-01-01T00:00:00Z")
            for i in range(1, 1201)
        ]
    )
    reporter.close()
    assert reporter.errors == 0
    reported = wait_for(lambda: (s := user.status("chatty")).get("checkpoints") and s, what="the reports")
    assert len(reported["progress"]["stage"]) == 4096 and reported["progress"]["stage"].endswith(bounds.TRUNCATED)
    assert len(reported["metrics"]) == 64 and len(reported["checkpoints"]) == 1000
    assert reported["checkpoints"][-1]["step"] == 1200
    assert reported["phase"] == Phase.RUNNING and reported["conditions"][2]["reason"] == Reason.PODS_RUNNING


def test_the_test_api_server_refuses_a_status_beyond_the_crds_bounds(admin, namespace, operator):
    """The port is in force: what the reporter cut would have been refused whole."""
    from tests.controller.test_operator import User

    user = User(admin, namespace)
    user.apply("refused")
    wait_for(lambda: user.status("refused").get("phase"), what="a status")
    with pytest.raises(kubernetes.client.ApiException) as refused:
        user.crd.patch_namespaced_custom_object_status(
            "kubetune.dev",
            "v1alpha1",
            namespace,
            "finetunejobs",
            "refused",
            {"status": {"progress": {"stage": "s" * 4097}}},
        )
    assert refused.value.status == 422
    assert (
        "status.progress.stage: Too long: may not be more than 4096 bytes" in json.loads(refused.value.body)["message"]
    )
