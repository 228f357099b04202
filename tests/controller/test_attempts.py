"""Attempts: a multi-node attempt fails and restarts as a gang, preemptions are not counted, spec.backoffLimit counts
failed attempts (and its message says so), and a job that failed for its backoffLimit or deadline runs again when
its spec is raised. The real operator against the API emulator; harness.ClusterSim plays the Job controller's
failure handling as kubernetes pkg/controller/job has it (podFailurePolicy, backoffLimit, FailureTarget) and the
emulator the garbage collector's foreground deletion."""

from __future__ import annotations

import time

import pytest

from kubetune.controller import builders, status
from kubetune.testing.harness import ClusterSim, wait_for
from tests.controller.samples import CONFIG, FTJ, SPEC

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


def _uid(sim, ns, name):
    job = sim.kube.get("Job", ns, name)
    return job and job["metadata"]["uid"]


def _annotations(sim, ns, name):
    return sim.job(ns, name)["metadata"].get("annotations") or {}


# ----------------------------------------------------------------------------------------- the Job as built


def test_a_multi_node_job_fails_whole_on_its_first_failure_and_a_one_node_job_retries_its_pod():
    """The Job controller's rules (ClusterSim._policy_action, ported from pod_failure_policy.go) applied to the Jobs
    the operator builds: several nodes, any failure or disruption ends the Job (FailJob, or backoffLimit 0);
    one node, a disruption is replaced uncounted and a failure retried up to spec.backoffLimit."""

    def failed_pod(code, disrupted=False):
        conditions = [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []
        return {
            "metadata": {"name": "p", "namespace": "team-a"},
            "status": {
                "phase": "Failed",
                "conditions": conditions,
                "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": code}}}],
            },
        }

    gang = builders.build_job(FTJ, builders.resolve_spec(SPEC | {"nodes": 2}, CONFIG), CONFIG, suspend=False)
    assert gang["spec"]["backoffLimit"] == 0 and gang["spec"]["completionMode"] == "Indexed"
    assert ClusterSim._policy_action(gang, failed_pod(137))[0] == "Count"  # counted: over backoffLimit 0
    assert ClusterSim._policy_action(gang, failed_pod(143, disrupted=True))[0] == "FailJob"
    assert ClusterSim._policy_action(gang, failed_pod(10))[0] == "FailJob"
    # A pod the Job controller deletes itself when Kueue suspends the Job exits 143 (SIGTERM) and matches no FailJob
    # rule: a suspended Job does not fail.
    assert ClusterSim._policy_action(gang, failed_pod(143))[0] == "Count"
    single = builders.build_job(FTJ, builders.resolve_spec(SPEC, CONFIG), CONFIG, suspend=False)
    assert single["spec"]["backoffLimit"] == SPEC["backoffLimit"]
    assert ClusterSim._policy_action(single, failed_pod(143, disrupted=True))[0] == "Ignore"
    # Earlier Jobs' failures and active time come off the next Job's limits.
    earlier = builders.Tally(attempts=3, failures=2, seconds=600)
    later = builders.build_job(FTJ, builders.resolve_spec(SPEC, CONFIG), CONFIG, suspend=False, earlier=earlier)
    assert later["spec"]["backoffLimit"] == 0 and later["spec"]["activeDeadlineSeconds"] == 3000
    assert builders.Tally.of_job(later) == builders.Tally(3, 2, 600)
    # A multi-GPU pod bounds its collectives; a one-GPU pod has none.
    env = {e["name"]: e.get("value") for e in gang["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS"] == str(CONFIG.collective_timeout_seconds)
    env = {e["name"]: e.get("value") for e in single["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS" not in env


def test_what_follows_an_ended_attempt():
    """status.ended_attempt: a failure counts once per attempt, a disruption not at all, and the message of a job
    over its backoffLimit counts what the limit counts."""

    def job(failed=0, reason="BackoffLimitExceeded", earlier=builders.Tally()):  # noqa: B008 - a frozen dataclass
        return {
            "metadata": {"name": "bot", "annotations": earlier.job_annotations()},
            "spec": {"completionMode": "Indexed", "completions": 2},
            "status": {"failed": failed, "conditions": [{"type": "Failed", "status": "True", "reason": reason}]},
        }

    def pod(index, code, disrupted=False):
        terminated = {"exitCode": code, "message": f"exit {code}", "finishedAt": f"2026-01-01T00:00:0{index}Z"}
        conditions = [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []
        return {
            "metadata": {"name": f"bot-{index}", "annotations": {status.COMPLETION_INDEX: str(index)}},
            "status": {
                "phase": "Failed",
                "conditions": conditions,
                "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
            },
        }

    def after(job, pods, limit=3):
        failed = status.condition_true(job, "Failed")
        attempts = status.count_attempts(job, 2, pods)
        return status.ended_attempt(
            job, pods, failed, nodes=2, attempts=attempts, backoff_limit=limit, active_deadline_seconds=0
        )

    # Both pods of the attempt failed (the Job controller counts every pod of a failed Job): one attempt, one failure.
    first = after(job(failed=2), [pod(1, 137), pod(0, 20)])
    assert (first.phase, first.reason, first.attempts) == ("Pending", "Retrying", 1)
    assert first.next == builders.Tally(1, 1, 0, "Retrying", first.message)
    assert first.message == (
        "attempt 1 failed on node 0: exit 20; the attempt's other pods are stopped and every node "
        "starts again from the newest complete checkpoint"
    )  # node 0 failed first
    preempted = after(job(failed=2, reason="PodFailurePolicy", earlier=first.next), [pod(1, 143, disrupted=True)])
    assert (preempted.reason, preempted.next.failures, preempted.attempts) == ("Preempted", 1, 2)
    # Over the limit: the words count failed attempts, and say how many attempts there were.
    last = after(job(failed=2, earlier=builders.Tally(3, 1)), [pod(0, 20)], limit=1)
    assert (last.phase, last.reason, last.next) == ("Failed", "BackoffLimitExceeded", None)
    assert last.message == (
        "2 failed attempts, more than spec.backoffLimit (1) allows (4 attempts in all: preemptions "
        "are not counted); last failure on node 0: exit 20"
    )
    # A user error ends the job whatever the limit.
    user_error = after(job(failed=2, reason="PodFailurePolicy"), [pod(1, 10)])
    assert (user_error.phase, user_error.reason, user_error.next) == ("Failed", "UserError", None)


# ----------------------------------------------------------------------------------------- the gang in the operator


def test_a_failed_node_ends_its_attempt_and_every_node_restarts_counted_once(user, sim, emulator):
    """One pod of a 2-node job dies mid-run: the Job controller ends the other at once (the Job's podFailurePolicy and
    backoffLimit 0), the operator ends the attempt (its Job goes once every pod of it is gone), and the next attempt
    starts every node in a new Job that resumes from the checkpoints. The whole event counts once."""
    ns = user.ns
    user.apply("gang", nodes=2, backoffLimit=1)
    wait_for(lambda: sim.kube.get("Job", ns, "gang"), what="the Job")
    first_uid = _uid(sim, ns, "gang")
    sim.start(ns, "gang", graceful=True)  # its pods take their time to stop, as a kubelet's do
    user.wait_phase("gang", "Running")
    killed = time.monotonic()
    sim.fail_pod(ns, "gang", 1, 137, "OOMKilled")
    # The other node is ended at once: the Job controller's doing, which the Job's policy asks for.
    others = [p for p in sim.kube.list("Pod", ns) if p["metadata"]["annotations"][status.COMPLETION_INDEX] == "0"]
    assert [p["status"]["phase"] for p in others] == ["Failed"] and others[0]["metadata"].get("deletionTimestamp")
    # The operator ends the attempt within seconds: the Job is being deleted (foreground), and no new Job is made
    # while a pod of the old attempt is still stopping.
    wait_for(
        lambda: (j := sim.kube.get("Job", ns, "gang")) and j["metadata"].get("deletionTimestamp"),
        5,
        "the failed attempt's Job being deleted",
    )
    assert time.monotonic() - killed < 5
    retrying = user.wait_phase("gang", "Pending")
    assert user.condition("gang", "Running")["reason"] == "Retrying"
    assert retrying["message"] == (
        "attempt 1 failed on node 1: OOMKilled; the attempt's other pods are stopped and "
        "every node starts again from the newest complete checkpoint"
    )
    time.sleep(0.5)
    assert _uid(sim, ns, "gang") == first_uid  # still the old Job: its pods have not stopped yet
    assert sim.stop_terminating(ns) == 2
    wait_for(lambda: _uid(sim, ns, "gang") not in (None, first_uid), 10, "the next attempt's Job")
    annotations = _annotations(sim, ns, "gang")
    assert annotations[builders.ANNOTATION_PREVIOUS_ATTEMPTS] == "1"
    assert annotations[builders.ANNOTATION_PREVIOUS_FAILURES] == "1"
    assert sim.job(ns, "gang")["spec"]["backoffLimit"] == 0
    sim.start(ns, "gang")
    running = wait_for(lambda: (st := user.status("gang")).get("phase") == "Running" and st, what="attempt 2 running")
    assert running["attempts"] == 2
    assert user.events("gang").count(("Warning", "Retrying")) == 1
    # The second failure is over spec.backoffLimit (1): the job fails, saying what the limit counts.
    sim.fail_pod(ns, "gang", 0, 20, "InfraError: lost peer: rank 1 gave up after 300 s")
    failed = user.wait_phase("gang", "Failed")
    assert user.condition("gang", "Failed")["reason"] == "BackoffLimitExceeded"
    assert failed["attempts"] == 2
    assert failed["message"] == (
        "2 failed attempts, more than spec.backoffLimit (1) allows; last failure on node 0: "
        "InfraError: lost peer: rank 1 gave up after 300 s"
    )
    assert sim.kube.get("Job", ns, "gang") is not None  # the last attempt's Job and pod stay, for `kubectl logs`


def test_a_preempted_node_ends_its_attempt_at_once_and_counts_nothing(user, sim):
    """The scheduler preempts one node of a 2-node job (DisruptionTarget on a running pod): the operator ends the
    whole attempt at once, so every rank gets SIGTERM and saves together, and the next attempt starts uncounted; so
    does a disruption the Job controller saw first. backoffLimit 0 still lets a job survive preemptions."""
    ns = user.ns
    user.apply("spot", nodes=2, backoffLimit=0)
    wait_for(lambda: sim.kube.get("Job", ns, "spot"), what="the Job")
    first_uid = _uid(sim, ns, "spot")
    sim.start(ns, "spot")
    user.wait_phase("spot", "Running")
    sim.disrupt_pod(ns, "spot", 1)
    wait_for(lambda: _uid(sim, ns, "spot") not in (None, first_uid), 10, "the next attempt's Job")
    assert _annotations(sim, ns, "spot")[builders.ANNOTATION_PREVIOUS_ATTEMPTS] == "1"
    assert builders.ANNOTATION_PREVIOUS_FAILURES not in _annotations(sim, ns, "spot")
    wait_for(lambda: ("Warning", "Preempted") in user.events("spot"), what="the Preempted Event")
    second_uid = _uid(sim, ns, "spot")
    sim.start(ns, "spot")
    wait_for(lambda: (st := user.status("spot")).get("phase") == "Running" and st["attempts"] == 2, what="attempt 2")
    # Evicted and stopped before the operator looked: the Job controller fails the Job (FailJob on DisruptionTarget),
    # the operator still counts nothing.
    sim.fail_pod(ns, "spot", 0, 143, "", disruption=True)
    wait_for(lambda: _uid(sim, ns, "spot") not in (None, second_uid), 10, "the third attempt's Job")
    assert builders.ANNOTATION_PREVIOUS_FAILURES not in _annotations(sim, ns, "spot")
    sim.start(ns, "spot")
    wait_for(lambda: (st := user.status("spot")).get("phase") == "Running" and st["attempts"] == 3, what="attempt 3")
    sim.fail_pod(ns, "spot", 1, 1, "Traceback ...: RuntimeError: CUDA error")
    failed = user.wait_phase("spot", "Failed")
    assert failed["message"] == (
        "1 failed attempt, more than spec.backoffLimit (0) allows (3 attempts in all: "
        "preemptions are not counted); last failure on node 1: Traceback ...: RuntimeError: "
        "CUDA error"
    )


def test_a_user_error_on_one_node_fails_the_job_without_a_retry(user, sim):
    ns = user.ns
    user.apply("baddata", nodes=2, backoffLimit=3)
    wait_for(lambda: sim.kube.get("Job", ns, "baddata"), what="the Job")
    uid = _uid(sim, ns, "baddata")
    sim.start(ns, "baddata")
    user.wait_phase("baddata", "Running")
    sim.fail_pod(ns, "baddata", 0, 10, "UserError: spec.datasets[0]: no rows")
    failed = user.wait_phase("baddata", "Failed")
    assert user.condition("baddata", "Failed")["reason"] == "UserError"
    assert failed["message"] == "UserError: spec.datasets[0]: no rows" and failed["attempts"] == 1
    time.sleep(0.5)
    assert _uid(sim, ns, "baddata") == uid


# ----------------------------------------------------------------------------------------- re-opening a failed job


def _fail_twice(user, sim, name: str) -> dict:
    """A one-node job with backoffLimit 1 fails twice: BackoffLimitExceeded after 2 attempts."""
    ns = user.ns
    wait_for(lambda: sim.kube.get("Job", ns, name), what="the Job")
    sim.start(ns, name)
    user.wait_phase(name, "Running")
    sim.fail(ns, name, 20, "S3 upload timed out")  # the Job controller retries: a new pod
    wait_for(lambda: (st := user.status(name)).get("attempts") == 2 and st["phase"] == "Running", what="attempt 2")
    sim.fail(ns, name, 20, "S3 upload timed out again")
    failed = user.wait_phase(name, "Failed")
    assert user.condition(name, "Failed")["reason"] == "BackoffLimitExceeded"
    assert failed["message"] == (
        "2 failed attempts, more than spec.backoffLimit (1) allows; last failure: S3 upload timed out again"
    )
    return failed


def test_raising_backoff_limit_reopens_a_failed_job_and_attempts_count_on(user, sim):
    ns = user.ns
    user.apply("flaky", backoffLimit=1)
    failed = _fail_twice(user, sim, "flaky")
    first_uid, root = (
        _uid(sim, ns, "flaky"),
        {e["name"]: e.get("value") for e in sim.job(ns, "flaky")["spec"]["template"]["spec"]["containers"][0]["env"]}[
            "KUBETUNE_OUTPUT_URI"
        ],
    )
    user.edit("flaky", backoffLimit=3)
    reopened = user.wait_phase("flaky", "Pending")  # Reopened, then PodsPending once its new Job is there
    assert user.condition("flaky", "Running")["reason"] in ("Reopened", "PodsPending")
    assert reopened["message"] == (
        "spec.backoffLimit is now 3 (2 failed attempts so far): the next attempt resumes "
        "from the newest complete checkpoint"
    )
    assert reopened["observedGeneration"] == 2 and "completionTime" not in reopened
    assert not any(c["type"] in ("Failed", "Stalled") for c in reopened["conditions"])
    assert reopened["startTime"] == failed["startTime"] and reopened["attempts"] == 2
    wait_for(lambda: ("Normal", "Reopened") in user.events("flaky"), what="the Reopened Event")
    # A new Job, the same output root, the earlier attempts and failures carried: 1 retry left of the 3.
    wait_for(lambda: _uid(sim, ns, "flaky") not in (None, first_uid), what="the re-opened job's Job")
    job = sim.job(ns, "flaky")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_OUTPUT_URI"] == root
    tally = builders.Tally.of_job(job)
    assert job["spec"]["backoffLimit"] == 1 and (tally.attempts, tally.failures) == (2, 2)
    sim.start(ns, "flaky")
    assert user.wait_phase("flaky", "Running")["attempts"] == 3
    sim.fail(ns, "flaky", 20, "S3 upload timed out a third time")  # retried by the Job controller: attempt 4
    wait_for(lambda: (st := user.status("flaky")).get("attempts") == 4 and st["phase"] == "Running", what="attempt 4")
    sim.fail(ns, "flaky", 20, "S3 upload timed out a fourth time")
    failed = user.wait_phase("flaky", "Failed")
    assert failed["message"] == (
        "4 failed attempts, more than spec.backoffLimit (3) allows; last failure: S3 upload timed out a fourth time"
    )
    assert failed["attempts"] == 4


def test_kubetune_retry_reopens_a_failed_job(user, sim, emulator, tmp_path, capsys):
    """`kubetune retry NAME -n NS` with the user's kubeconfig: the patch that raises spec.backoffLimit, which the
    operator answers by re-opening the job."""
    import yaml

    from kubetune.cli import main
    from kubetune.testing.emulator import ADMIN_TOKEN

    ns = user.ns
    user.apply("again", backoffLimit=1)
    _fail_twice(user, sim, "again")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emulator.kubeconfig(ADMIN_TOKEN)))
    code = main(["retry", "again", "-n", ns, "--kubeconfig", str(kubeconfig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == (
        f"{ns}/again: spec.backoffLimit 1 -> 3: the operator re-opens the job, and attempt 3 "
        "resumes from the newest complete checkpoint"
    )
    assert user.get("again")["spec"]["backoffLimit"] == 3
    user.wait_phase("again", "Pending")
    wait_for(lambda: ("Normal", "Reopened") in user.events("again"), what="the Reopened Event")
    # Not failed (any more): a second retry says so, in one line.
    code = main(["retry", "again", "-n", ns, "--kubeconfig", str(kubeconfig)])
    out, err = capsys.readouterr()
    assert code == 1 and err.strip().startswith("kubetune: error: ") and len(err.strip().splitlines()) == 1
    assert f"{ns}/again is Pending, not Failed" in err


def test_raising_the_deadline_reopens_a_job_with_what_is_left_of_it(user, sim):
    ns = user.ns
    user.apply("slow", activeDeadlineSeconds=60)
    wait_for(lambda: sim.kube.get("Job", ns, "slow"), what="the Job")
    sim.start(ns, "slow")
    user.wait_phase("slow", "Running")
    sim.exceed_deadline(ns, "slow")
    assert user.wait_phase("slow", "Failed")["message"] == "the job ran longer than spec.activeDeadlineSeconds (60 s)"
    first_uid = _uid(sim, ns, "slow")
    user.edit("slow", activeDeadlineSeconds=150)
    assert user.wait_phase("slow", "Pending")["message"] == (
        "spec.activeDeadlineSeconds is now 150 s (60 s used): the job runs again from the newest complete checkpoint"
    )
    wait_for(lambda: _uid(sim, ns, "slow") not in (None, first_uid), what="the re-opened job's Job")
    assert sim.job(ns, "slow")["spec"]["activeDeadlineSeconds"] == 90  # what is left of the 150 s
    sim.start(ns, "slow")
    sim.exceed_deadline(ns, "slow")
    assert user.wait_phase("slow", "Failed")["message"] == "the job ran longer than spec.activeDeadlineSeconds (150 s)"


def test_a_job_whose_objects_its_ttl_removed_reopens_too(user, sim):
    ns = user.ns
    user.apply("gone", backoffLimit=0, ttlSecondsAfterFinished=1)
    wait_for(lambda: sim.kube.get("Job", ns, "gone"), what="the Job")
    sim.start(ns, "gone")
    user.wait_phase("gone", "Running")
    sim.fail(ns, "gone", 20, "node lost")
    user.wait_phase("gone", "Failed")
    wait_for(lambda: sim.kube.get("ConfigMap", ns, "gone-spec") is None, 10, "the TTL's removal")
    user.edit("gone", backoffLimit=2)
    user.wait_phase("gone", "Pending")
    job = wait_for(lambda: sim.kube.get("Job", ns, "gone"), 10, "the re-opened job's Job")
    # The tally went with the objects: every attempt counts as failed.
    assert builders.Tally.of_job(job) == builders.Tally(1, 1, builders.Tally.of_job(job).seconds)
    assert job["spec"]["backoffLimit"] == 1
    assert sim.kube.get("ConfigMap", ns, "gone-spec") is not None
    sim.start(ns, "gone")
    assert user.wait_phase("gone", "Running")["attempts"] == 2


def test_every_edit_of_a_finished_job_is_observed(user, sim):
    """GitOps tools wait for observedGeneration: an edit of a finished job is observed at once, whatever it does
    (kstatus reads the job Current or Failed, not InProgress). A TTL edit takes effect; a raised backoffLimit does
    not re-open a job that failed for a user error."""
    from tests.charts import kstatus

    ns = user.ns
    user.apply("done")
    wait_for(lambda: sim.kube.get("Job", ns, "done"), what="the Job")
    sim.start(ns, "done")
    sim.succeed(ns, "done")
    user.wait_phase("done", "Succeeded")
    user.edit("done", ttlSecondsAfterFinished=1)
    wait_for(lambda: user.status("done").get("observedGeneration") == 2, 5, "generation 2 observed")
    assert kstatus.compute(user.get("done")).status == kstatus.CURRENT
    assert all(c["observedGeneration"] == 2 for c in user.status("done")["conditions"])
    wait_for(lambda: sim.kube.get("Job", ns, "done") is None, 10, "the TTL applied after the edit")

    user.apply("wrong", backoffLimit=0)
    wait_for(lambda: sim.kube.get("Job", ns, "wrong"), what="the Job")
    uid = _uid(sim, ns, "wrong")
    sim.start(ns, "wrong")
    sim.fail(ns, "wrong", 10, "UserError: spec.datasets[0]: no rows")
    user.wait_phase("wrong", "Failed")
    user.edit("wrong", backoffLimit=5)
    wait_for(lambda: user.status("wrong").get("observedGeneration") == 2, 5, "generation 2 observed")
    assert kstatus.compute(user.get("wrong")).status == kstatus.FAILED
    time.sleep(0.5)
    assert user.status("wrong")["phase"] == "Failed" and _uid(sim, ns, "wrong") == uid
