"""A restart changes nothing: `kubetune operator` stopped and started again (an upgrade) over FineTuneJobs in every
phase it reports writes nothing: no status patch, no Event, no create, update, patch or delete of a child, for jobs
whose state did not change while it was down.

Its own API emulator (a fresh one, so that every call the operator makes is about these jobs) and its own operator
with a namespace cap; the session's operator is stopped meanwhile. harness.ClusterSim plays the Job controller and
the kubelet. The emulator records every request with its user before it authorizes or answers it, so a write the
server refused counts as much as one it stored."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import kubernetes
import pytest

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import ClusterSim, OperatorLog, OperatorThread, start_emulator, wait_for
from tests.controller.conftest import SETTINGS

pytestmark = pytest.mark.timeout(180)

MUTATING = ("create", "update", "patch", "delete", "deletecollection")
# The namespace cap: MAIN's unfinished, unsuspended jobs (the gang between attempts, pending, running) fit under it,
# HELD's fourth job does not.
CAP = 3
# Short, so that the watch window below holds several resync passes.
RESYNC_SECONDS = 1.0
MAIN, HELD = "restart-main", "restart-held"


@pytest.fixture
def cluster(operator):
    """A fresh emulator, a user and a ClusterSim on it; the session's operator stopped until the test ends."""
    operator.stop()
    emulator = start_emulator()
    sim = ClusterSim(emulator)
    admin = kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN))
    try:
        from tests.controller.test_operator import User

        core = kubernetes.client.CoreV1Api(admin)
        for ns in (MAIN, HELD):
            core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield emulator, sim, {ns: User(admin, ns) for ns in (MAIN, HELD)}
    finally:
        sim.close()
        emulator.stop()
        operator.start()


def phase_of(user, name: str) -> tuple[str | None, str | None]:
    """(phase, reason of the condition that tells it) as `kubectl get ftj` shows them."""
    status = user.status(name)
    phase = status.get("phase")
    told = {
        "Pending": "Running",
        "Running": "Running",
        "Queued": "Queued",
        "Suspended": "Running",
        "Succeeded": "Succeeded",
        "Failed": "Failed",
    }.get(phase)
    reasons = [c.get("reason") for c in status.get("conditions") or [] if c.get("type") == told]
    return phase, (reasons[0] if reasons else None)


def report_plan_and_progress(emulator, sim: ClusterSim, namespace: str, name: str) -> None:
    """The trainer's reports, with the pod's own identity (the job's reporter ServiceAccount, once its grant exists)."""
    from kubetune.api.v1alpha1 import Plan
    from kubetune_trainer.reporting import ProgressReport
    from kubetune_trainer.status_reporter import StatusReporter

    wait_for(lambda: sim.kube.get("RoleBinding", namespace, f"{name}-reporter"), what="the reporter's grant")
    client = kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{namespace}:{name}-reporter"))
    reporter = StatusReporter(name, namespace, interval_seconds=0, api_client=client)
    reporter.plan(Plan(strategy="ddp", world_size=1, per_gpu_gib=14.2, gpu_memory_gib=80.0, fits=True))
    reporter.progress(ProgressReport(step=10, total_steps=100, epoch=0.1, eta_seconds=900, metrics={"loss": 1.9}))
    reporter.close()
    assert reporter.errors == 0


def settle_into_every_phase(emulator, sim: ClusterSim, users: dict) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Drive a dozen FineTuneJobs, one at a time, into the states the operator reports; returns what each shows."""
    main, held = users[MAIN], users[HELD]

    def job_of(user, name):
        return wait_for(lambda: sim.kube.get("Job", user.ns, name), what=f"the Job of {name}")

    # A 2-node job between attempts: node 1 died, the Job controller ended node 0, the operator is deleting the Job
    # (foreground) and its pods are still stopping (the kubelet's grace period), so no next Job yet.
    main.apply("gang", nodes=2, backoffLimit=2)
    job_of(main, "gang")
    sim.start(MAIN, "gang", graceful=True)
    main.wait_phase("gang", "Running")
    sim.fail_pod(MAIN, "gang", 1, 137, "OOMKilled")
    wait_for(
        lambda: (j := sim.kube.get("Job", MAIN, "gang")) and j["metadata"].get("deletionTimestamp"),
        what="the gang's attempt ending",
    )
    wait_for(lambda: phase_of(main, "gang") == ("Pending", "Retrying"), what="gang Pending/Retrying")

    main.apply("succeeded")
    job_of(main, "succeeded")
    sim.start(MAIN, "succeeded")
    sim.succeed(MAIN, "succeeded")
    main.wait_phase("succeeded", "Succeeded")

    main.apply("backoff", backoffLimit=0)
    job_of(main, "backoff")
    sim.start(MAIN, "backoff")
    sim.fail(MAIN, "backoff", 20, "InfraError: storage unreachable")
    main.wait_phase("backoff", "Failed")

    main.apply("usererror", backoffLimit=3)
    job_of(main, "usererror")
    sim.start(MAIN, "usererror")
    sim.fail(MAIN, "usererror", 10, "UserError: spec.datasets[0]: no rows")
    main.wait_phase("usererror", "Failed")

    main.apply(
        "invalid",
        technique="qlora",
        hyperparameters={"learningRate": 5.0},
        datasets=[{"uri": "s3://data/x.jsonl", "format": "preference"}],
    )
    main.wait_phase("invalid", "Failed")

    main.apply("suspended", suspend=True)
    job_of(main, "suspended")
    main.wait_phase("suspended", "Suspended")

    main.apply("ttl-later", ttlSecondsAfterFinished=3600)  # finished, its TTL far off: children kept
    job_of(main, "ttl-later")
    sim.start(MAIN, "ttl-later")
    sim.succeed(MAIN, "ttl-later")
    main.wait_phase("ttl-later", "Succeeded")

    main.apply("ttl-done", ttlSecondsAfterFinished=1)  # finished, its TTL past: children removed
    job_of(main, "ttl-done")
    sim.start(MAIN, "ttl-done")
    sim.succeed(MAIN, "ttl-done")
    main.wait_phase("ttl-done", "Succeeded")
    wait_for(lambda: sim.kube.get("Job", MAIN, "ttl-done") is None, timeout=10, what="ttl-done's children removed")

    # Last in MAIN: with the gang they take the namespace's places, and the jobs above needed one each.
    main.apply("pending")  # its Job made, no pod yet
    job_of(main, "pending")
    main.wait_phase("pending", "Pending")

    main.apply("running")  # its trainer reported its memory plan (told as an Event) and its progress
    job_of(main, "running")
    sim.start(MAIN, "running")
    main.wait_phase("running", "Running")
    report_plan_and_progress(emulator, sim, MAIN, "running")
    wait_for(lambda: any(e["reason"] == "Planned" for e in sim.kube.list("Event", MAIN)), what="the Planned Event")

    for index in range(CAP):  # the namespace's places taken: two running, one not started
        held.apply(f"busy-{index}")
        job_of(held, f"busy-{index}")
        if index != 1:
            sim.start(HELD, f"busy-{index}")
            held.wait_phase(f"busy-{index}", "Running")
    held.apply("waiting")
    wait_for(lambda: phase_of(held, "waiting") == ("Queued", "NamespaceLimitReached"), what="waiting held by the cap")

    shown = {
        (user.ns, ftj["metadata"]["name"]): phase_of(user, ftj["metadata"]["name"])
        for user in (main, held)
        for ftj in user.crd.list_namespaced_custom_object(GROUP, VERSION, user.ns, PLURAL)["items"]
    }
    assert shown == {
        (MAIN, "gang"): ("Pending", "Retrying"),
        (MAIN, "pending"): ("Pending", "PodsPending"),
        (MAIN, "running"): ("Running", "PodsRunning"),
        (MAIN, "succeeded"): ("Succeeded", "TrainingComplete"),
        (MAIN, "backoff"): ("Failed", "BackoffLimitExceeded"),
        (MAIN, "usererror"): ("Failed", "UserError"),
        (MAIN, "invalid"): ("Failed", "SpecInvalid"),
        (MAIN, "suspended"): ("Suspended", "SuspendedByUser"),
        (MAIN, "ttl-later"): ("Succeeded", "TrainingComplete"),
        (MAIN, "ttl-done"): ("Succeeded", "TrainingComplete"),
        (HELD, "busy-0"): ("Running", "PodsRunning"),
        (HELD, "busy-1"): ("Pending", "PodsPending"),
        (HELD, "busy-2"): ("Running", "PodsRunning"),
        (HELD, "waiting"): ("Queued", "NamespaceLimitReached"),
    }, "the jobs did not reach the states this test restarts the operator over"
    return shown


def writes(calls) -> list[str]:
    """verb, resource and namespace/name of each write (a create's name is in its body, which is not recorded)."""
    return [
        f"{c.verb} {c.resource} {c.namespace}/{c.name or '(name in the body)'}" for c in calls if c.verb in MUTATING
    ]


def logged(log: OperatorLog) -> list[str]:
    """What the operator logged, per job: its actions (each Event it posts is logged first, with its reason)."""
    lines = []
    for record in log.records:
        ref = getattr(record, "k8s_ref", None) or {}
        lines.append(f"{ref.get('namespace')}/{ref.get('name')}: {record.getMessage()}")
    return lines


def wait_until_quiet(emulator, since: int, quiet: float, timeout: float) -> None:
    """Until the operator has made no write for `quiet` seconds (reads go on: the resync)."""
    deadline = time.monotonic() + timeout
    count, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = len(writes(emulator.calls("operator")[since:]))
        if now != count:
            count, changed = now, time.monotonic()
        elif time.monotonic() - changed >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError(f"the operator kept writing for {timeout} s: {writes(emulator.calls('operator')[since:])}")


def snapshot(emulator) -> tuple[dict, dict]:
    """Every FineTuneJob's status, and every Event as stored (name -> reason, message, count, last time)."""
    statuses = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o.get("status") for o in emulator.objects(GROUP, PLURAL)
    }
    events = {
        (e["metadata"]["namespace"], e["metadata"]["name"]): (
            e.get("reason"),
            e.get("message"),
            e.get("count"),
            e.get("lastTimestamp"),
        )
        for e in emulator.objects("", "events")
    }
    return statuses, events


def test_a_restarted_operator_writes_nothing_for_jobs_whose_state_did_not_change(cluster):
    emulator, sim, users = cluster
    settings = replace(SETTINGS, max_running_per_namespace=CAP, resync_seconds=RESYNC_SECONDS)
    first = OperatorThread(emulator, settings).start()
    try:
        shown = settle_into_every_phase(emulator, sim, users)
        # Settled: every status written, and a few resync passes more with no write.
        wait_until_quiet(emulator, 0, 3 * RESYNC_SECONDS + 0.5, 30)
    finally:
        first.stop()
    statuses, events = snapshot(emulator)
    assert all(status and status.get("phase") for status in statuses.values())

    # The pass over every job reads each one's Job and pods from the listings made at start-up: no call a job. (No
    # resync in this window: its passes read the API server.)
    since = len(emulator.calls("operator"))
    reading = OperatorThread(emulator, replace(settings, resync_seconds=3600)).start()
    try:
        wait_for(
            lambda: sum(reading.reconciler.metrics.phase_counts().values()) == len(shown),
            30,
            "a pass over every FineTuneJob after the restart",
        )
        calls = emulator.calls("operator")[since:]
    finally:
        reading.stop()
    assert not writes(calls)
    # Each job's reporter RoleBinding and Planned Events come from start-up listings too: no GET of anything a job.
    per_job = [
        f"{c.verb} {c.resource} {c.namespace}/{c.name or c.label_selector}"
        for c in calls
        if c.verb == "get" or (c.resource == "pods" and "finetunejob=" in (c.label_selector or ""))
    ]
    assert not per_job, f"the restarted operator read jobs' objects one by one: {per_job}"
    listed = Counter(c.resource for c in calls if c.verb == "list" and c.namespace is None)
    assert {kind: listed[kind] for kind in ("jobs", "pods", "rolebindings", "events")} == dict.fromkeys(
        ("jobs", "pods", "rolebindings", "events"), 1
    ), listed

    since = len(emulator.calls("operator"))
    log = OperatorLog().attach()
    second = OperatorThread(emulator, settings).start()
    try:
        # A pass over every job (each pass records the phase it found), then several resync periods more.
        wait_for(
            lambda: sum(second.reconciler.metrics.phase_counts().values()) == len(shown),
            30,
            "a pass over every FineTuneJob after the restart",
        )
        time.sleep(3 * RESYNC_SECONDS + 0.5)
        calls = emulator.calls("operator")[since:]
        phases = dict(second.reconciler.metrics.phase_counts())
    finally:
        second.stop()
        log.detach()

    made = writes(calls)
    assert not made, (
        f"the restarted operator made {len(made)} writes ({len(calls)} calls in all) over "
        f"{len(shown)} FineTuneJobs whose state did not change:\n  "
        + "\n  ".join(made)
        + "\nand logged meanwhile:\n  "
        + "\n  ".join(logged(log))
    )
    after_statuses, after_events = snapshot(emulator)
    changed = {
        key: (statuses[key], after_statuses.get(key)) for key in statuses if statuses[key] != after_statuses.get(key)
    }
    assert not changed, f"statuses changed across the restart: {changed}"
    assert after_events == events, f"Events changed across the restart: {set(after_events) ^ set(events)}"
    # And it found every job where the first operator left it.
    assert phases == Counter(phase for phase, _ in shown.values()), phases
