"""`kubetune retry NAME` (and `kubectl ftj retry`): the spec edit that re-opens a job that failed for its backoffLimit
or deadline, as a user runs it with a kubeconfig (the operator's side: tests/controller/test_attempts.py)."""

from __future__ import annotations

from kubetune.api.constants import Phase, Reason
from kubetune.usercli.commands import kubectl_main
from tests.usercli.test_commands import assert_one_line_error, run


def _failed(world, name: str, reason: Reason, attempts: int, **spec) -> dict:
    ftj = world.create_job(name, **spec)
    world.operator_status(ftj, Phase.FAILED, reason, "it failed", attempts=attempts)
    return ftj


def test_retry_raises_the_backoff_limit_by_the_budget_the_job_had(world, capsys):
    ftj = _failed(world, "flaky", Reason.BACKOFF_LIMIT_EXCEEDED, attempts=4, backoffLimit=3)
    code, out, err = run(capsys, "retry", "flaky")
    assert code == 0, err
    assert out.strip() == (
        f"{world.namespace}/flaky: spec.backoffLimit 3 -> 7: the operator re-opens the job, and "
        "attempt 5 resumes from the newest complete checkpoint"
    )
    assert world.get(ftj)["spec"]["backoffLimit"] == 7
    assert world.get(ftj)["spec"]["hyperparameters"] == world.spec()["hyperparameters"]  # nothing else changed


def test_retry_with_an_explicit_limit_and_through_kubectl_ftj(world, capsys):
    ftj = _failed(world, "flaky", Reason.BACKOFF_LIMIT_EXCEEDED, attempts=2, backoffLimit=1)
    assert kubectl_main(["retry", "flaky", "--backoff-limit", "5", "-n", world.namespace]) == 0
    assert world.get(ftj)["spec"]["backoffLimit"] == 5
    capsys.readouterr()


def test_retry_doubles_the_deadline_of_a_job_out_of_time(world, capsys):
    ftj = _failed(world, "slow", Reason.DEADLINE_EXCEEDED, attempts=1, activeDeadlineSeconds=3600)
    code, out, err = run(capsys, "retry", "slow")
    assert code == 0, err
    assert out.strip() == (
        f"{world.namespace}/slow: spec.activeDeadlineSeconds 3600 s -> 7200 s: the operator "
        "re-opens the job, which resumes from the newest complete checkpoint"
    )
    assert world.get(ftj)["spec"]["activeDeadlineSeconds"] == 7200
    # No operator runs here, so the job is still Failed: 0 removes the deadline.
    code, out, err = run(capsys, "retry", "slow", "--active-deadline-seconds", "0")
    assert code == 0, err
    assert out.strip().startswith(f"{world.namespace}/slow: spec.activeDeadlineSeconds 7200 s -> none:")
    assert world.get(ftj)["spec"]["activeDeadlineSeconds"] == 0


def test_retry_refuses_what_another_attempt_cannot_fix_in_one_line(world, capsys):
    _failed(world, "wrong", Reason.USER_ERROR, attempts=1)
    code, _, err = run(capsys, "retry", "wrong")
    assert_one_line_error(
        code,
        err,
        f"{world.namespace}/wrong failed with UserError, which another attempt would meet again",
        "spec.resumeFrom: wrong starts it from this job's newest checkpoint",
    )
    running = world.create_job("busy")
    world.operator_status(running, Phase.RUNNING, Reason.PODS_RUNNING)
    code, _, err = run(capsys, "retry", "busy")
    assert_one_line_error(code, err, f"{world.namespace}/busy is Running, not Failed")
    _failed(world, "low", Reason.BACKOFF_LIMIT_EXCEEDED, attempts=4, backoffLimit=3)
    code, _, err = run(capsys, "retry", "low", "--backoff-limit", "2")
    assert_one_line_error(code, err, "--backoff-limit 2: it must be above the job's spec.backoffLimit (3)")
    code, _, err = run(capsys, "retry", "nope")
    assert_one_line_error(code, err, f'no FineTuneJob "nope" in namespace "{world.namespace}"')
