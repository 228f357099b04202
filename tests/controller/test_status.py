"""status.py: (FineTuneJob, its Job, its pods) -> the status the operator writes, and its Events."""

from __future__ import annotations

import pytest

from kubetune.api.constants import Phase, Reason
from kubetune.api.v1alpha1 import MAX_STRING_LENGTH, Status
from kubetune.controller import bounds, builders, status
from tests.controller.samples import FTJ


def _job(**status_fields):
    return {
        "metadata": {"name": "bot", "uid": "j-1", "annotations": {}},
        "spec": {"suspend": False},
        "status": status_fields,
    }


def _failed_pod(code, message, disruption=False):
    conditions = [{"type": "DisruptionTarget", "status": "True"}] if disruption else []
    return {
        "metadata": {"name": "bot-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": "Failed",
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": code, "message": message}}}],
        },
    }


def _observe(job, pods=(), **kw):
    args = dict(nodes=1, spec_suspend=False, queue_name="", backoff_limit=3, active_deadline_seconds=0) | kw
    return status.observe(job, list(pods), **args)


def test_observe_user_error_carries_the_termination_message():
    job = _job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    seen = _observe(job, [_failed_pod(10, "spec.datasets[0].columns.messages: no such column")])
    assert (seen.phase, seen.reason) == (Phase.FAILED, Reason.USER_ERROR)
    assert seen.message == "spec.datasets[0].columns.messages: no such column"


def test_observe_retry_preemption_deadline_queue_and_suspend():
    retry = _observe(_job(failed=1, active=1), [_failed_pod(20, "S3 timed out")])
    assert (retry.phase, retry.reason, retry.attempts) == (Phase.PENDING, Reason.RETRYING, 2)
    preempted = _observe(_job(active=1), [_failed_pod(143, "", disruption=True)])
    assert preempted.reason == Reason.PREEMPTED
    out_of_time = _job(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}])
    out_of_time["spec"]["activeDeadlineSeconds"] = 60
    deadline = _observe(out_of_time, active_deadline_seconds=60)
    assert (deadline.phase, deadline.reason, deadline.next) == (Phase.FAILED, Reason.DEADLINE_EXCEEDED, None)
    queued = _job() | {"spec": {"suspend": True}}
    assert _observe(queued, queue_name="q").phase == Phase.QUEUED
    assert _observe(queued, spec_suspend=True).phase == Phase.SUSPENDED
    held = queued | {"metadata": {"name": "bot", "annotations": {builders.ANNOTATION_HELD: "true"}}}
    assert _observe(held).reason == Reason.NAMESPACE_LIMIT


def _pod_of_node(index, code, finished):
    pod = _failed_pod(code, f"exit {code}")
    pod["metadata"] |= {"name": f"bot-{index}", "annotations": {status.COMPLETION_INDEX: str(index)}}
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = finished
    return pod


def test_a_failed_node_is_named_not_the_node_the_job_controller_stopped_after_it():
    """Node 0 fails; the Job controller then stops node 1 (SIGTERM, exit 143). Seen before the Job says Failed, the
    cause is still node 0's."""
    pods = [_pod_of_node(1, 143, "2026-01-01T00:00:09Z"), _pod_of_node(0, 1, "2026-01-01T00:00:05Z")]
    seen = _observe(_job(failed=2), pods, nodes=2)
    assert seen.reason == Reason.RETRYING
    assert "exit 1" in seen.message and "exit 143" not in seen.message
    # Both in one second (finishedAt has 1 s resolution), the stopped node created first: still the failed one.
    stopped, failed = _pod_of_node(0, 143, "2026-01-01T00:00:05Z"), _pod_of_node(1, 137, "2026-01-01T00:00:05Z")
    stopped["metadata"]["creationTimestamp"] = "2025-12-31T23:00:00Z"
    for job in (_job(failed=2), _job(failed=2, conditions=[{"type": "Failed", "status": "True"}])):
        seen = _observe(job, [stopped, failed], nodes=2)
        assert "on node 1: exit 137" in seen.message, seen.message


def test_a_failure_the_job_controller_will_not_retry_is_not_told_as_a_retry():
    """One node, the Job not yet marked Failed: a user error (exit 10, which the pod failure policy fails the Job on)
    or one failure more than spec.backoffLimit is the job's end, never a "Retrying" (its Event would stay)."""
    user_error = _observe(_job(failed=1), [_failed_pod(10, "spec.datasets[0].uri: no such file")])
    assert (user_error.phase, user_error.reason) == (Phase.FAILED, Reason.USER_ERROR)
    assert user_error.message == "spec.datasets[0].uri: no such file"
    # the Job's failed counter may lag the pod it counts
    for counters in ({"failed": 1}, {}):
        spent = _observe(_job(**counters), [_failed_pod(1, "CUDA error")], backoff_limit=0)
        assert (spent.phase, spent.reason) == (Phase.FAILED, Reason.BACKOFF_LIMIT_EXCEEDED), counters
        assert "CUDA error" in spent.message
    still_allowed = _observe(_job(failed=1), [_failed_pod(1, "CUDA error")], backoff_limit=1)
    assert (still_allowed.phase, still_allowed.reason) == (Phase.PENDING, Reason.RETRYING)


def test_conditions_keep_transition_time_and_kstatus_conditions():
    ftj = dict(FTJ)
    running = status.compute(
        ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:00:00Z"
    )
    conds = {c["type"]: c for c in running.status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "InProgress"
    assert conds["Reconciling"]["status"] == "True" and "Stalled" not in conds
    assert [e.reason for e in running.events] == ["PodsRunning"]  # JobCreated already said it was valid
    ftj["status"] = running.status
    again = status.compute(
        ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:05:00Z"
    )
    assert again.events == [] and status.status_patch(running.status, again.status) == {}
    done = status.compute(
        ftj, status.Observed(Phase.FAILED, Reason.USER_ERROR, "bad column", 1), "bot", "2026-01-01T00:09:00Z"
    )
    conds = {c["type"]: c for c in done.status["conditions"]}
    assert conds["Validated"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # unchanged status, unchanged time
    assert conds["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # still False
    assert conds["Running"]["lastTransitionTime"] == "2026-01-01T00:09:00Z"
    assert conds["Stalled"]["status"] == "True" and "Reconciling" not in conds
    assert done.status["message"] == "bad column" and done.status["completionTime"] == "2026-01-01T00:09:00Z"
    assert [(e.type, e.reason) for e in done.events] == [("Warning", "UserError")]


def test_a_failure_seen_only_after_the_retry_started_is_still_told():
    """Attempt 1 failed and attempt 2 was running before the operator looked again: the status message and
    a Retrying Event still say why attempt 1 failed."""
    running_pod = {
        "metadata": {"name": "bot-y", "creationTimestamp": "2026-01-01T00:01:00Z"},
        "status": {"phase": "Running"},
    }
    seen = _observe(_job(failed=1, active=1), [_failed_pod(20, "S3 timed out"), running_pod])
    assert (seen.phase, seen.attempts) == (Phase.RUNNING, 2) and "S3 timed out" in seen.last_failure
    ftj = dict(FTJ)
    first = status.compute(
        ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:00:00Z"
    )
    ftj["status"] = first.status
    later = status.compute(ftj, seen, "bot", "2026-01-01T00:02:00Z")
    assert later.status["attempts"] == 2
    assert later.status["message"].startswith("attempt 1 failed:") and "S3 timed out" in later.status["message"]
    assert ("Warning", "Retrying") in [(e.type, e.reason) for e in later.events]
    ftj["status"] = later.status
    steady = status.compute(ftj, seen, "bot", "2026-01-01T00:03:00Z")
    assert steady.events == []  # told once


def test_a_failure_already_told_is_not_told_again_when_the_retry_runs():
    ftj = dict(FTJ)
    first = status.compute(
        ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:00:00Z"
    )
    ftj["status"] = first.status
    retrying = status.compute(
        ftj, status.Observed(Phase.PENDING, Reason.RETRYING, "attempt failed: oom", 1), "bot", "2026-01-01T00:01:00Z"
    )
    assert [e.reason for e in retrying.events] == ["Retrying"]
    ftj["status"] = retrying.status
    running = status.compute(
        ftj,
        status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 2, last_failure="oom"),
        "bot",
        "2026-01-01T00:02:00Z",
    )
    assert [e.reason for e in running.events] == ["PodsRunning"]


def _pod(phase):
    return {"metadata": {"name": f"bot-{phase.lower()}"}, "status": {"phase": phase}}


@pytest.mark.parametrize(
    "counters, pods, attempts",
    [
        ({"failed": 1}, [_pod("Running")], 2),  # replacement running; the Job has not counted it
        ({"active": 1}, [_failed_pod(20, "S3")], 1),  # the pod failed; the Job has not counted it
        ({"failed": 1, "active": 1}, [_failed_pod(20, "S3"), _pod("Running")], 2),
        ({"active": 1}, [], 1),  # the pod is not listed yet
        ({"failed": 2, "active": 1}, [_pod("Pending")], 3),  # two failed pods already removed
    ],
)
def test_attempts_count_the_job_and_its_pods_whichever_lags(counters, pods, attempts):
    assert status.count_attempts(_job(**counters), nodes=1, pods=pods) == attempts


def test_the_pass_that_creates_the_job_tells_it_in_one_event():
    pending = status.compute(
        dict(FTJ), status.Observed(Phase.PENDING, Reason.PODS_PENDING, "waiting", 0), "bot", "2026-01-01T00:00:00Z"
    )
    told = status.announce_job(pending, "bot", recreated=False)
    assert [(e.reason, e.message) for e in told.events] == [
        ("JobCreated", "created Job bot; waiting for the training pods to start")
    ]
    queued = status.compute(
        dict(FTJ),
        status.Observed(Phase.QUEUED, Reason.WAITING_FOR_ADMISSION, "waiting for Kueue", 0),
        "bot",
        "2026-01-01T00:00:00Z",
    )
    told = status.announce_job(queued, "bot", recreated=True)
    assert [(e.reason, e.message) for e in told.events] == [
        ("JobCreated", "recreated Job bot"),
        ("WaitingForAdmission", "waiting for Kueue"),
    ]


def test_the_operator_writes_its_keys_in_the_wire_form_of_the_status_model():
    ftj = dict(FTJ)
    pending = status.compute(
        ftj, status.Observed(Phase.PENDING, Reason.PODS_PENDING, "waiting", 0), "bot", "2026-01-01T00:00:00Z"
    )
    assert pending.status == {
        "phase": "Pending",
        "observedGeneration": 1,
        "attempts": 0,
        "jobName": "bot",
        "message": "",
        "conditions": [
            {
                "type": "Validated",
                "status": "True",
                "reason": "SpecValid",
                "message": "the spec is valid",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            },
            {
                "type": "Queued",
                "status": "False",
                "reason": "Admitted",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            },
            {
                "type": "Running",
                "status": "False",
                "reason": "PodsPending",
                "message": "waiting",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "InProgress",
                "message": "waiting",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            },
            {
                "type": "Reconciling",
                "status": "True",
                "reason": "PodsPending",
                "message": "waiting",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            },
        ],
    }  # camelCase, and no startTime / completionTime until there is one
    assert Status.model_validate(pending.status).to_wire() == pending.status
    # A merge patch of what changed; a key the operator no longer sets is removed (null).
    ftj["status"] = pending.status | {"startTime": "2025-12-31T00:00:00Z", "progress": {"step": 3}}
    again = status.compute(
        ftj, status.Observed(Phase.PENDING, Reason.PODS_PENDING, "waiting", 0), "bot", "2026-01-01T00:01:00Z"
    )
    assert status.status_patch(ftj["status"], again.status) == {}  # startTime kept, progress is the trainer's
    invalid = status.compute_invalid(ftj, ["spec.lora.rank: must be > 0"], "2026-01-01T00:02:00Z")
    patch = status.status_patch(ftj["status"], invalid.status)
    assert patch["jobName"] is None and patch["phase"] == "Failed" and "progress" not in patch
    assert set(status.OPERATOR_STATUS_KEYS) == {
        "phase",
        "observedGeneration",
        "conditions",
        "startTime",
        "completionTime",
        "attempts",
        "jobName",
        "message",
    }


def test_a_message_longer_than_the_api_allows_is_cut_to_fit():
    """The API server refuses a status write with a longer string, and with it the phase and conditions."""
    job = _job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    seen = _observe(job, [_failed_pod(10, "x" * 5000)])
    failed = status.compute(dict(FTJ), seen, "bot", "2026-01-01T00:00:00Z").status
    assert len(failed["message"]) == MAX_STRING_LENGTH and failed["message"].endswith(bounds.TRUNCATED)
    assert all(len(c["message"]) <= MAX_STRING_LENGTH for c in failed["conditions"])
    invalid = status.compute_invalid(dict(FTJ), ["spec.x: bad"] * 1000, "2026-01-01T00:00:00Z").status
    assert len(invalid["message"]) == MAX_STRING_LENGTH


def test_a_job_that_cannot_fit_its_gpus_fails_as_does_not_fit():
    job = _job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    words = "UserError: DoesNotFit: 14.2 GiB per GPU, 11.0 GiB usable of 12 GiB: use strategy fsdp or more GPUs"
    seen = _observe(job, [_failed_pod(10, words)])
    assert (seen.phase, seen.reason, seen.message) == (Phase.FAILED, Reason.DOES_NOT_FIT, words)
    failed = status.compute(dict(FTJ), seen, "bot", "2026-01-01T00:00:00Z")
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "DoesNotFit")]
    other = _observe(job, [_failed_pod(10, "UserError: spec.datasets[0]: no rows")])
    assert other.reason == Reason.USER_ERROR


def test_settings_that_will_not_take_effect_are_named_in_the_validated_condition():
    seen = status.Observed(Phase.PENDING, Reason.PODS_PENDING, "waiting", 0)
    plain = status.compute(dict(FTJ), seen, "bot", "2026-01-01T00:00:00Z")
    assert plain.status["conditions"][0]["message"] == "the spec is valid"
    told = status.compute(
        dict(FTJ),
        seen,
        "bot",
        "2026-01-01T00:00:00Z",
        notices=["spec.lora.dropout: 0.1 is not applied with objective preference"],
    )
    validated = told.status["conditions"][0]
    assert validated["status"] == "True" and validated["reason"] == "SpecValid"
    assert validated["message"] == (
        "the spec is valid; these settings will not take effect: spec.lora.dropout: 0.1 "
        "is not applied with objective preference"
    )


def test_text_from_a_pod_is_one_printable_line():
    hostile = "UserError: missing column 'text'\n\x1b[2J\x1b[31mtraining finished\x1b[0m\r\n\u202eevil\x00\x07"
    assert status.pod_text(hostile) == "UserError: missing column 'text' | training finished | evil"
    pod = _failed_pod(20, hostile)
    assert status.failure_text(pod) == "UserError: missing column 'text' | training finished | evil"


@pytest.mark.parametrize(
    "uri, inside",
    [
        ("s3://out/runs/team/bot/u-1/final/", True),
        ("s3://out/runs/team/bot/u-1/checkpoints/step-10/", True),
        ("s3://out/runs/team/bot/u-2/final/", False),  # another run of the same name
        ("s3://out/runs/team/bot/u-1/../u-2/final/", False),
        ("s3://out/runs/team/bot/u-1/%2e%2e/u-2/final/", False),
        ("s3://attacker/model/", False),
        (None, False),
    ],
)
def test_only_results_under_the_output_root_are_shown(uri, inside):
    root = "s3://out/runs/team/bot/u-1/"
    assert status.under_root(uri, root) is inside
    reported = {
        "output": {"modelUri": uri, "metricsUri": f"{root}metrics.jsonl"},
        "checkpoints": [{"step": 1, "uri": f"{root}checkpoints/step-1/"}, {"step": 2, "uri": uri}],
    }
    patch = status.untrusted_results(reported, root)
    if inside:
        assert patch == {}
    elif uri is None:
        assert patch == {"checkpoints": [{"step": 1, "uri": f"{root}checkpoints/step-1/"}]}
    else:
        assert patch == {
            "output": {"modelUri": None},
            "checkpoints": [{"step": 1, "uri": f"{root}checkpoints/step-1/"}],
        }


def test_the_operator_tells_its_own_keys_from_what_someone_else_wrote():
    mine = {"phase": "Running", "attempts": 1, "message": "", "progress": {"step": 3}}
    assert status.canonical(mine) == status.canonical({"attempts": 1, "phase": "Running", "metrics": {"loss": 1.0}})
    assert status.canonical(mine) != status.canonical({"phase": "Succeeded", "attempts": 1})
    assert status.status_patch({"phase": "Succeeded", "message": "forged"}, {"phase": "Running", "message": ""}) == {
        "phase": "Running",
        "message": None,
    }


def test_what_held_a_job_leaves_the_message_once_it_no_longer_does():
    ftj = dict(FTJ)
    missing = status.Observed(Phase.QUEUED, Reason.QUEUE_NOT_FOUND, "Kueue has no LocalQueue 'q'", 0)
    first = status.compute(ftj, missing, "bot", "2026-01-01T00:00:00Z")
    assert first.status["message"] == "Kueue has no LocalQueue 'q'"
    ftj["status"] = first.status
    admitted = status.compute(
        ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:01:00Z"
    )
    assert not admitted.status.get("message")
    retried = dict(
        FTJ,
        status=status.compute(
            dict(FTJ),
            status.Observed(Phase.PENDING, Reason.RETRYING, "attempt failed: oom", 1),
            "bot",
            "2026-01-01T00:00:00Z",
        ).status,
    )
    running = status.compute(
        retried, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 2), "bot", "2026-01-01T00:01:00Z"
    )
    assert running.status["message"] == "attempt failed: oom"  # a failure's words stay: it happened
