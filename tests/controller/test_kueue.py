"""The operator beside Kueue (kubetune.testing.kueuesim plays Kueue's Job webhook and reconciler through the API):
Kueue alone decides when a Job in a LocalQueue runs, a suspend goes through the Workload's spec.active, the
status says who holds a job, a missing LocalQueue or a missing Kueue is reported, and no object is patched back
and forth (the writes of both are counted)."""

from __future__ import annotations

import time

import pytest

from kubetune.controller.kueue import workload_name
from kubetune.testing.harness import wait_for
from kubetune.testing.kueuesim import KueueSim

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


def running(sim, namespace: str, name: str) -> bool:
    """The Job exists and is not suspended."""
    job = sim.kube.get("Job", namespace, name)
    return job is not None and not job["spec"].get("suspend")


def job_patches(emulator, user_name: str, namespace: str, name: str) -> int:
    return len(
        [
            c
            for c in emulator.calls(user_name)
            if c.verb == "patch" and c.resource == "jobs" and c.namespace == namespace and c.name == name
        ]
    )


def workload_patches(emulator, namespace: str) -> int:
    return len(
        [
            c
            for c in emulator.calls("operator")
            if c.verb == "patch" and c.resource == "workloads" and c.namespace == namespace
        ]
    )


def settled(emulator, namespace: str, name: str, seconds: float = 2.5) -> tuple[int, int, int]:
    """The Job and Workload writes of the operator and Kueue over a few of the operator's resync periods (1 s in
    these tests), once the job is where it should stay: none may come."""
    before = (
        job_patches(emulator, "operator", namespace, name),
        job_patches(emulator, "kueue", namespace, name),
        workload_patches(emulator, namespace),
    )
    time.sleep(seconds)
    after = (
        job_patches(emulator, "operator", namespace, name),
        job_patches(emulator, "kueue", namespace, name),
        workload_patches(emulator, namespace),
    )
    return tuple(b - a for a, b in zip(before, after, strict=True))


def test_a_queued_job_runs_when_kueue_admits_it_and_the_operator_never_touches_its_suspend(user, sim, emulator):
    with KueueSim(emulator, namespaces={user.ns}) as kueue:
        kueue.local_queue(user.ns, "team-a", capacity=0)  # full: nothing is admitted
        user.apply("queued", queueName="team-a")
        user.wait_phase("queued", "Queued")
        job = sim.job(user.ns, "queued")
        assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        queued = user.condition("queued", "Queued")
        assert queued["reason"] == "WaitingForAdmission" and "'team-a'" in queued["message"]
        assert settled(emulator, user.ns, "queued") == (0, 0, 0)  # the resync leaves Kueue's Job alone

        kueue.capacity[(user.ns, "team-a")] = 1
        wait_for(lambda: not sim.job(user.ns, "queued")["spec"]["suspend"], what="Kueue unsuspends the admitted Job")
        sim.start(user.ns, "queued")
        user.wait_phase("queued", "Running")
        assert user.condition("queued", "Queued")["reason"] == "Admitted"
        assert settled(emulator, user.ns, "queued") == (0, 0, 0)
        assert job_patches(emulator, "operator", user.ns, "queued") == 0
        assert job_patches(emulator, "kueue", user.ns, "queued") == 1  # the one unsuspend of the admission


def test_suspending_a_queued_job_deactivates_its_workload_without_a_fight(user, sim, emulator):
    """Issue: with queueName and suspend, the operator suspended the Job on every event and Kueue unsuspended it
    again (its Workload was admitted), forever. Now the operator sets the Workload's spec.active and Kueue stops and
    starts the Job itself."""
    with KueueSim(emulator, namespaces={user.ns}) as kueue:
        kueue.local_queue(user.ns, "team-a")
        user.apply("pausable", queueName="team-a")
        wait_for(lambda: running(sim, user.ns, "pausable"), what="admitted")
        sim.start(user.ns, "pausable")
        user.wait_phase("pausable", "Running")

        user.edit("pausable", suspend=True)
        wait_for(lambda: sim.job(user.ns, "pausable")["spec"]["suspend"], what="Kueue stops the Job")
        sim.sync_suspend(user.ns, "pausable")
        status = user.wait_phase("pausable", "Suspended")
        assert user.condition("pausable", "Suspended")["reason"] == "SuspendedByUser"
        workload = kueue.workload(sim.job(user.ns, "pausable"))
        assert workload["spec"]["active"] is False and not workload["status"].get("admission")
        assert settled(emulator, user.ns, "pausable") == (0, 0, 0)
        assert job_patches(emulator, "operator", user.ns, "pausable") == 0
        assert status["phase"] == "Suspended"

        user.edit("pausable", suspend=False)
        wait_for(lambda: not sim.job(user.ns, "pausable")["spec"]["suspend"], what="Kueue admits and starts it again")
        sim.start(user.ns, "pausable")
        user.wait_phase("pausable", "Running")
        assert kueue.workload(sim.job(user.ns, "pausable"))["spec"]["active"] is True
        assert settled(emulator, user.ns, "pausable") == (0, 0, 0)
        # Kueue: unsuspend, suspend, unsuspend; the operator: deactivate, reactivate; nothing else.
        assert job_patches(emulator, "kueue", user.ns, "pausable") == 3
        assert job_patches(emulator, "operator", user.ns, "pausable") == 0
        assert workload_patches(emulator, user.ns) == 2


def test_a_queued_job_created_suspended_is_never_admitted_until_resumed(user, sim, emulator):
    with KueueSim(emulator, namespaces={user.ns}) as kueue:
        kueue.local_queue(user.ns, "team-a", capacity=0)
        user.apply("later", queueName="team-a", suspend=True)
        user.wait_phase("later", "Suspended")
        job = wait_for(
            lambda: (
                (j := sim.job(user.ns, "later")) and (w := kueue.workload(j)) and w["spec"]["active"] is False and j
            ),
            what="the Workload deactivated",
        )
        kueue.capacity[(user.ns, "team-a")] = None  # room now; an inactive Workload is still not admitted
        assert settled(emulator, user.ns, "later") == (0, 0, 0)
        assert sim.job(user.ns, "later")["spec"]["suspend"] is True
        assert workload_name(job).startswith("job-later-")

        user.edit("later", suspend=False)
        wait_for(lambda: not sim.job(user.ns, "later")["spec"]["suspend"], what="admitted after the resume")
        assert job_patches(emulator, "operator", user.ns, "later") == 0


def test_kueue_managing_the_namespace_without_queue_name_decides_from_the_live_job(user, sim, emulator):
    """Issue: the namespace has a LocalQueue `default`, so Kueue's webhook labels and suspends the Job, and the
    operator, seeing no spec.queueName, unsuspended it, and Kueue suspended it again."""
    with KueueSim(emulator, namespaces={user.ns}) as kueue:
        kueue.local_queue(user.ns, "default", capacity=0)
        user.apply("defaulted")
        user.wait_phase("defaulted", "Queued")
        job = sim.job(user.ns, "defaulted")
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "default" and job["spec"]["suspend"]
        message = user.condition("defaulted", "Queued")["message"]
        assert "'default'" in message and "default LocalQueue" in message
        assert settled(emulator, user.ns, "defaulted") == (0, 0, 0)

        kueue.capacity[(user.ns, "default")] = 1
        wait_for(lambda: not sim.job(user.ns, "defaulted")["spec"]["suspend"], what="admitted")
        sim.start(user.ns, "defaulted")
        user.wait_phase("defaulted", "Running")
        assert job_patches(emulator, "operator", user.ns, "defaulted") == 0


def test_a_job_suspended_by_kueue_without_a_queue_label_is_left_to_kueue(user, sim, emulator):
    """manageJobsWithoutQueueName: Kueue suspends every Job of the namespace at creation; it is Kueue's (its
    Workload) to start, and the status says another controller holds it."""
    with KueueSim(emulator, namespaces={user.ns}, manage_jobs_without_queue_name=True):
        user.apply("managed")
        user.wait_phase("managed", "Queued")
        job = sim.job(user.ns, "managed")
        assert job["spec"]["suspend"] is True and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
        assert "another controller" in user.condition("managed", "Queued")["message"]
        assert settled(emulator, user.ns, "managed") == (0, 0, 0)

        user.edit("managed", suspend=True)  # the user's suspend goes through Kueue's Workload here too
        user.wait_phase("managed", "Suspended")
        wait_for(lambda: workload_patches(emulator, user.ns) == 1, what="the Workload deactivated")
        assert job_patches(emulator, "operator", user.ns, "managed") == 0


def test_a_missing_local_queue_or_a_missing_kueue_is_reported(user, sim, emulator, operator_log):
    user.apply("nowhere", queueName="team-b")
    user.wait_phase("nowhere", "Queued")
    wait_for(lambda: user.condition("nowhere", "Queued")["reason"] == "QueueNotFound", what="QueueNotFound")
    assert "Kueue is not installed" in user.condition("nowhere", "Queued")["message"]
    assert "Kueue is not installed" in user.status("nowhere")["message"]
    wait_for(lambda: ("Warning", "QueueNotFound") in user.events("nowhere"), what="the QueueNotFound Event")
    assert "QueueNotFound" in operator_log.reasons(user.ns, "nowhere")

    with KueueSim(emulator, namespaces={user.ns}) as kueue:
        wait_for(
            lambda: "no LocalQueue 'team-b'" in user.condition("nowhere", "Queued")["message"],
            timeout=10,
            what="the missing LocalQueue named (after a resync)",
        )
        kueue.local_queue(user.ns, "team-b")
        wait_for(lambda: not sim.job(user.ns, "nowhere")["spec"]["suspend"], what="admitted once the queue exists")
        sim.start(user.ns, "nowhere")
        user.wait_phase("nowhere", "Running")
        assert user.condition("nowhere", "Queued")["reason"] == "Admitted"
