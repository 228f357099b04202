"""What kstatus (Flux `wait: true`, cli-utils) and the documented Flux `healthCheckExprs` make of a
FineTuneJob in every state the operator reports (tests/charts/kstatus.py ports kstatus' rules)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import celpy
import pytest
import yaml

from tests.api import crdcheck
from tests.charts import gitops_states, kstatus

DOCS = Path(__file__).resolve().parents[2] / "docs" / "gitops.md"
STATES = gitops_states.states()

# Suspended by something else than its spec, the operator reports the job Suspended today; a phase
# Queued would read InProgress like any other queued job.
KSTATUS = {
    "new": kstatus.IN_PROGRESS,
    "pending": kstatus.IN_PROGRESS,
    "pods-pending": kstatus.IN_PROGRESS,
    "retrying": kstatus.IN_PROGRESS,
    "queued-by-kueue": kstatus.IN_PROGRESS,
    "queued-by-namespace-cap": kstatus.IN_PROGRESS,
    "running": kstatus.IN_PROGRESS,
    "resumed": kstatus.IN_PROGRESS,
    "suspended-by-spec": kstatus.CURRENT,
    "suspended-by-other": kstatus.CURRENT
    if STATES["suspended-by-other"]["status"]["phase"] == "Suspended"
    else kstatus.IN_PROGRESS,
    "succeeded": kstatus.CURRENT,
    "failed": kstatus.FAILED,
    "invalid": kstatus.FAILED,
    "spec-edited": kstatus.IN_PROGRESS,
    "deleting": kstatus.TERMINATING,
}


def test_every_state_is_covered():
    assert set(KSTATUS) == set(STATES)


@pytest.mark.parametrize("name", list(KSTATUS))
def test_kstatus_of_every_state(name):
    assert kstatus.compute(STATES[name]).status == KSTATUS[name]


def test_a_new_job_reads_in_progress_until_the_operator_answers():
    """Flux applies and polls at once: a status-less object would read Current (nothing to wait for)."""
    stored = gitops_states.new_job()
    assert kstatus.compute(stored).status == kstatus.CURRENT  # why the CRD defaults the status
    served = STATES["new"]
    assert served["status"] == {"observedGeneration": 0}
    assert kstatus.compute(served).message == "FineTuneJob generation is 1, but latest observed generation is 0"


def test_the_status_default_needs_no_status_in_the_request():
    """apiextensions-apiserver: a create through a CRD with a status subresource drops the request's status
    (registry/customresource/strategy.go PrepareForCreate); the storage codec then applies structural
    defaults to what it decodes from etcd (apiserver/customresource_handler.go crdConversionRESTOptionsGetter
    with unstructuredDefaulter; schema/defaulting/algorithm.go Default also fills a missing root property).
    So the default is served for every job, also one created with a status of its own."""
    crd = crdcheck.crd()["spec"]["versions"][0]
    assert "status" in crd["subresources"]
    status_schema = crdcheck.schema()["properties"]["status"]
    assert status_schema["default"] == {"observedGeneration": 0}
    assert "required" not in status_schema  # the default must validate against the status schema
    sent = gitops_states.new_job() | {"status": {"phase": "Succeeded", "observedGeneration": 1}}
    stored = {k: v for k, v in copy.deepcopy(sent).items() if k != "status"}
    assert gitops_states.served(stored)["status"] == {"observedGeneration": 0}


# ------------------------------------------------------------------------------- Flux healthCheckExprs


def documented_exprs() -> list[dict]:
    """Every healthCheckExprs entry of docs/gitops.md: the Kustomization's, and each `current:` alternative."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    (kustomization,) = [yaml.safe_load(b) for b in blocks if "healthCheckExprs" in b]
    (entry,) = kustomization["spec"]["healthCheckExprs"]
    assert (entry["apiVersion"], entry["kind"]) == ("kubetune.dev/v1alpha1", "FineTuneJob")
    alternatives = re.findall(r'`current: "(.*?)"`', DOCS.read_text())
    assert alternatives
    return [entry] + [entry | {"current": current} for current in alternatives]


_ENV = celpy.Environment()


def flux_status(exprs: dict, obj: dict) -> str:
    """fluxcd/pkg runtime/cel status_evaluator.go StatusEvaluator.Evaluate: observedGeneration first, then
    inProgress, failed, current in that order (the first true wins), else InProgress. The expressions see
    the object's top-level fields as variables (status, metadata, spec)."""
    observed = (obj.get("status") or {}).get("observedGeneration")
    generation = (obj.get("metadata") or {}).get("generation")
    if observed is not None and generation is not None and observed != generation:
        return kstatus.IN_PROGRESS
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for key, result in (("inProgress", kstatus.IN_PROGRESS), ("failed", kstatus.FAILED), ("current", kstatus.CURRENT)):
        if not exprs.get(key):
            continue
        value = _ENV.program(_ENV.compile(exprs[key])).evaluate(activation)
        assert not isinstance(value, Exception), (exprs[key], value)
        if bool(value):
            return result
    return kstatus.IN_PROGRESS


def test_documented_health_check_exprs_for_every_state():
    started, finished = documented_exprs()
    for name, obj in STATES.items():
        phase = (
            obj["status"].get("phase") if obj["metadata"]["generation"] == obj["status"]["observedGeneration"] else None
        )
        want_started = {
            "Failed": kstatus.FAILED,
            "Running": kstatus.CURRENT,
            "Succeeded": kstatus.CURRENT,
            "Suspended": kstatus.CURRENT,
        }.get(phase, kstatus.IN_PROGRESS)
        want_finished = {"Failed": kstatus.FAILED, "Succeeded": kstatus.CURRENT, "Suspended": kstatus.CURRENT}.get(
            phase, kstatus.IN_PROGRESS
        )
        assert flux_status(started, obj) == want_started, name
        assert flux_status(finished, obj) == want_finished, name
    assert flux_status(started, STATES["new"]) == kstatus.IN_PROGRESS
    assert flux_status(started, STATES["running"]) == kstatus.CURRENT
    assert flux_status(finished, STATES["running"]) == kstatus.IN_PROGRESS
