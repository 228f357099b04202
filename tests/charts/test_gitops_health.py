"""The Argo CD health check (Lua) run on sample FineTuneJob statuses with a real Lua runtime (lupa)."""

from __future__ import annotations

from pathlib import Path

import pytest

lupa = pytest.importorskip("lupa", reason="lupa (a Lua runtime for Python) is not installed")

SCRIPT = (Path(__file__).resolve().parents[2] / "docs" / "gitops" / "argocd-health.lua").read_text()


def health(obj: dict) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value):
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def ftj(status=None, generation=1):
    obj = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "a", "generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


def cond(type_, status, reason="", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_no_status_yet_is_progressing():
    assert health(ftj()) == ("Progressing", "Waiting for the kubetune operator")


def test_stale_observed_generation_is_progressing():
    status = {"phase": "Succeeded", "observedGeneration": 1}
    assert health(ftj(status, generation=2))[0] == "Progressing"


def test_running_shows_progress():
    status = {
        "phase": "Running",
        "observedGeneration": 1,
        "progress": {"step": 1200, "totalSteps": 3000, "percent": 40},
        "conditions": [cond("Ready", "False", "InProgress")],
    }
    assert health(ftj(status)) == ("Progressing", "Training: step 1200/3000 (40%)")


def test_queued_and_pending_are_progressing_with_reason():
    status = {"phase": "Queued", "conditions": [cond("Ready", "False", "WaitingForAdmission", "waiting for Kueue")]}
    assert health(ftj(status)) == ("Progressing", "Queued: waiting for Kueue")
    assert health(ftj({"phase": "Pending"})) == ("Progressing", "Pending")


def test_succeeded_is_healthy_with_model_uri():
    status = {"phase": "Succeeded", "observedGeneration": 1, "output": {"modelUri": "s3://b/x/final/"}}
    assert health(ftj(status)) == ("Healthy", "Training complete: s3://b/x/final/")


def test_failed_is_degraded_with_reason_and_message():
    status = {
        "phase": "Failed",
        "message": "spec.datasets[0]: column 'messages' missing in s3://d/train.jsonl",
        "conditions": [cond("Ready", "False", "UserError", "see message")],
    }
    assert health(ftj(status)) == ("Degraded", "UserError: spec.datasets[0]: column 'messages' missing in s3://d/train.jsonl")


def test_suspended():
    assert health(ftj({"phase": "Suspended"}))[0] == "Suspended"
