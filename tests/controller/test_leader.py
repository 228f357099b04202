"""Leader election through a coordination.k8s.io/v1 Lease (controller/leader.py) against the API emulator.

The rules under test are ported from client-go: kubernetes/client-go tools/leaderelection/leaderelection.go
(tryAcquireOrRenew, isLeaseValid: expiry timed on the candidate's own clock from when it saw the record change;
renew with its renew deadline; tryRelease for ReleaseOnCancel) and tools/leaderelection/resourcelock/leaselock.go
(the LeaseSpec fields: holderIdentity, leaseDurationSeconds, acquireTime, renewTime, leaseTransitions; updates carry
the resourceVersion read, so a lost race is the API server's 409 Conflict).

Every replica here calls the API as a service account holding only the chart's generated leaderElection rules
(generate.operator_rules()), so those rules are shown to be enough. Timings are short: a 2 s lease, a 1 s renew
deadline, tries every 0.1 s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import kubernetes
import pytest
from kubernetes.client import ApiException

from kubetune import generate
from kubetune.controller import leader
from kubetune.controller.kube import Kube
from kubetune.controller.leader import LeaderElector
from kubetune.testing.emulator import Fault

LEASE = "kubetune-operator"
LEASE_SECONDS, RENEW_DEADLINE, RETRY = 2.0, 1.0, 0.1
TIMINGS = {"lease_seconds": LEASE_SECONDS, "renew_deadline_seconds": RENEW_DEADLINE, "retry_seconds": RETRY}
MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")  # metav1.MicroTime on the wire

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lease_namespace(admin, namespace):
    """The test's namespace with the chart's Lease Role bound to the replicas' service accounts."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "leader-election", "namespace": namespace},
            "rules": generate.operator_rules()["leaderElection"],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "leader-election", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
            "subjects": [
                {"kind": "ServiceAccount", "name": name, "namespace": namespace} for name in ("replica-a", "replica-b")
            ],
        },
    )
    return namespace


def user(namespace: str, replica: str) -> str:
    return f"sa:{namespace}:{replica}"  # the emulator's service-account tokens name their user


def elector(emulator, namespace: str, replica: str, kube_class=Kube, **timings) -> LeaderElector:
    kube = kube_class(emulator.client_configuration(user(namespace, replica)))
    return LeaderElector(kube, namespace, LEASE, replica, **(TIMINGS | timings))


def lease(emulator, namespace: str) -> dict | None:
    found = emulator.objects("coordination.k8s.io", "leases", namespace)
    return found[0] if found else None


def run(scenario):
    asyncio.run(asyncio.wait_for(scenario(), 45))


async def close(*electors: LeaderElector) -> None:
    for one in electors:
        await one.kube.close()


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def done_within(task: asyncio.Task, seconds: float) -> bool:
    """Whether the task ends within `seconds` (it goes on running either way)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), seconds)
        return True
    except asyncio.TimeoutError:
        return False


def test_a_free_lease_is_acquired_with_its_record_and_renewed(emulator, lease_namespace):
    async def scenario():
        a = elector(emulator, lease_namespace, "replica-a")
        try:
            assert lease(emulator, lease_namespace) is None and not a.is_leader
            await a.acquire()
            assert a.is_leader
            first = lease(emulator, lease_namespace)
            spec = first["spec"]
            assert spec["holderIdentity"] == "replica-a" and spec["leaseDurationSeconds"] == 2
            assert spec["leaseTransitions"] == 0
            assert MICRO_TIME.fullmatch(spec["acquireTime"]) and MICRO_TIME.fullmatch(spec["renewTime"])
            keeping = asyncio.create_task(a.keep())
            await asyncio.sleep(0.5)
            assert not keeping.done() and a.is_leader
            renewed = lease(emulator, lease_namespace)
            # Renewals move renewTime (and the resourceVersion) and keep acquireTime and the transitions.
            assert renewed["spec"]["renewTime"] > spec["renewTime"]
            assert renewed["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
            assert renewed["spec"]["acquireTime"] == spec["acquireTime"]
            assert renewed["spec"]["leaseTransitions"] == 0 and renewed["spec"]["holderIdentity"] == "replica-a"
            await a.release()
            await asyncio.wait_for(keeping, 1)  # keep() ends once released, and writes no more
            assert not a.is_leader
            released = lease(emulator, lease_namespace)
            assert released["spec"]["holderIdentity"] == "" and released["spec"]["leaseDurationSeconds"] == 1
            await asyncio.sleep(0.3)
            assert (
                lease(emulator, lease_namespace)["metadata"]["resourceVersion"]
                == released["metadata"]["resourceVersion"]
            )
        finally:
            await close(a)

    run(scenario)


def test_a_standby_waits_while_the_leader_renews_and_takes_over_at_once_when_it_is_released(
    emulator, lease_namespace, caplog
):
    # Longer timings than the other tests: this one fails if any renewal is late, and the API server here shares its
    # process with the session's operator, which on a loaded CI machine once stalled a renewal past 1 s.
    lease_seconds = 4.0
    slow = {"lease_seconds": lease_seconds, "renew_deadline_seconds": 3.0}

    async def scenario():
        a = elector(emulator, lease_namespace, "replica-a", **slow)
        b = elector(emulator, lease_namespace, "replica-b", **slow)
        try:
            await a.acquire()
            keeping = asyncio.create_task(a.keep())
            b_acquiring = asyncio.create_task(b.acquire())
            # Longer than the lease: renewals keep it, however old its first acquireTime gets.
            assert not await done_within(b_acquiring, lease_seconds + 1)
            assert not b.is_leader and lease(emulator, lease_namespace)["spec"]["holderIdentity"] == "replica-a"
            await stop(keeping)
            released = time.monotonic()
            await a.release()
            assert await done_within(b_acquiring, lease_seconds)
            assert time.monotonic() - released < lease_seconds / 2  # not waiting out the lease
            assert b.is_leader and not a.is_leader
            spec = lease(emulator, lease_namespace)["spec"]
            assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1
        finally:
            await close(a, b)

    with caplog.at_level(logging.INFO, "kubetune.operator"):
        run(scenario)
    text = caplog.text
    assert "replica-a acquired Lease" in text and "replica-a released Lease" in text
    assert "is held by replica-a; replica-b waits on standby" in text and "replica-b acquired Lease" in text


def test_a_leader_that_stops_renewing_is_replaced_only_once_the_lease_has_run_out(emulator, lease_namespace):
    async def scenario():
        a, b = elector(emulator, lease_namespace, "replica-a"), elector(emulator, lease_namespace, "replica-b")
        try:
            await a.acquire()
            keeping = asyncio.create_task(a.keep())
            b_acquiring = asyncio.create_task(b.acquire())
            await asyncio.sleep(0.5)
            await stop(keeping)  # a crashed or hung leader: no renewal, no release
            stopped = time.monotonic()
            await asyncio.wait_for(b_acquiring, LEASE_SECONDS + 2)
            waited = time.monotonic() - stopped
            # Its last renewal was at most one retry period before it stopped, and b counts the lease from when it
            # saw that renewal.
            assert LEASE_SECONDS - RETRY - 0.05 <= waited < LEASE_SECONDS + 1.5, waited
            spec = lease(emulator, lease_namespace)["spec"]
            assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1
        finally:
            await close(a, b)

    run(scenario)


def test_the_timestamps_in_the_lease_are_not_trusted(emulator, admin, lease_namespace):
    """A holder whose clock is years behind wrote renewTime: a candidate still waits the whole lease, counted on its
    own clock from when it first saw the record."""
    kubernetes.client.CoordinationV1Api(admin).create_namespaced_lease(
        lease_namespace,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": lease_namespace},
            "spec": {
                "holderIdentity": "skewed-replica",
                "leaseDurationSeconds": 2,
                "acquireTime": "2001-01-01T00:00:00.000000Z",
                "renewTime": "2001-01-01T00:00:00.000000Z",
                "leaseTransitions": 4,
            },
        },
    )

    async def scenario():
        b = elector(emulator, lease_namespace, "replica-b")
        try:
            started = time.monotonic()
            b_acquiring = asyncio.create_task(b.acquire())
            assert not await done_within(b_acquiring, LEASE_SECONDS - 0.2)
            await asyncio.wait_for(b_acquiring, 2)
            assert time.monotonic() - started >= LEASE_SECONDS
            spec = lease(emulator, lease_namespace)["spec"]
            assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 5
            assert spec["acquireTime"] > "2020"
        finally:
            await close(b)

    run(scenario)


def test_keep_returns_when_another_identity_has_taken_the_lease(emulator, admin, lease_namespace, caplog):
    async def scenario():
        a = elector(emulator, lease_namespace, "replica-a")
        try:
            await a.acquire()
            keeping = asyncio.create_task(a.keep())
            await asyncio.sleep(0.3)
            await asyncio.to_thread(
                kubernetes.client.CoordinationV1Api(admin).patch_namespaced_lease,
                LEASE,
                lease_namespace,
                {"spec": {"holderIdentity": "intruder", "renewTime": "2030-01-01T00:00:00.000000Z"}},
            )
            taken = time.monotonic()
            await asyncio.wait_for(keeping, RENEW_DEADLINE)
            # At its next renewal, not at the renew deadline; and without writing over the new holder.
            assert time.monotonic() - taken < RENEW_DEADLINE * 0.8
            assert not a.is_leader
            await a.release()  # not the leader: gives nothing up
            await asyncio.sleep(0.3)
            assert lease(emulator, lease_namespace)["spec"]["holderIdentity"] == "intruder"
        finally:
            await close(a)

    with caplog.at_level(logging.INFO, "kubetune.operator"):
        run(scenario)
    assert "replica-a lost Lease" in caplog.text and "held by intruder" in caplog.text


def test_a_leader_whose_renewals_fail_stops_leading_before_a_standby_starts(emulator, lease_namespace, caplog):
    """The renew deadline is shorter than the lease: the leader gives up before any standby may take over."""
    fault = Fault(
        match=lambda call: call.resource == "leases" and call.user == user(lease_namespace, "replica-a"),
        status=500,
        times=None,
    )

    async def scenario():
        a, b = elector(emulator, lease_namespace, "replica-a"), elector(emulator, lease_namespace, "replica-b")
        try:
            await a.acquire()
            keeping = asyncio.create_task(a.keep())
            b_acquiring = asyncio.create_task(b.acquire())
            await asyncio.sleep(0.3)
            emulator.inject(fault)  # the API server answers replica-a with errors from now on
            failing = time.monotonic()
            await asyncio.wait_for(keeping, RENEW_DEADLINE + 1)
            lost = time.monotonic()
            # The deadline counts from the start of the last renewal that succeeded: a retry period and that renewal's
            # round trip (which a loaded machine stretches) before the fault. Not at the first failure either.
            assert RENEW_DEADLINE / 2 <= lost - failing <= RENEW_DEADLINE + 0.5, lost - failing
            assert not a.is_leader and not b.is_leader
            await asyncio.wait_for(b_acquiring, LEASE_SECONDS + 1)
            assert time.monotonic() - failing >= LEASE_SECONDS - RETRY - 0.05
            assert lease(emulator, lease_namespace)["spec"]["holderIdentity"] == "replica-b"
        finally:
            emulator.call(lambda: emulator.server.faults.remove(fault) if fault in emulator.server.faults else None)
            await close(a, b)

    with caplog.at_level(logging.INFO, "kubetune.operator"):
        run(scenario)
    assert "replica-a lost Lease" in caplog.text and "no renewal succeeded within 1 s" in caplog.text


class RacingKube(Kube):
    """Holds its PUT until `go` is set, so that another candidate writes between its read and its write."""

    def __init__(self, configuration):
        super().__init__(configuration)
        self.at_write = asyncio.Event()
        self.go = asyncio.Event()
        self.answers: list[int] = []

    async def request(self, method, path, *args, **kwargs):
        if method != "PUT":
            return await super().request(method, path, *args, **kwargs)
        self.at_write.set()
        await self.go.wait()
        try:
            answer = await super().request(method, path, *args, **kwargs)
        except ApiException as err:
            self.answers.append(err.status)
            raise
        self.answers.append(200)
        return answer


def test_a_candidate_that_loses_the_race_for_a_free_lease_gets_409_and_is_not_leader(emulator, admin, lease_namespace):
    kubernetes.client.CoordinationV1Api(admin).create_namespaced_lease(
        lease_namespace,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": lease_namespace},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 2},  # released
        },
    )

    async def scenario():
        a = elector(emulator, lease_namespace, "replica-a")
        b = elector(emulator, lease_namespace, "replica-b", kube_class=RacingKube)
        try:
            b_try = asyncio.create_task(b._try_acquire_or_renew())
            await asyncio.wait_for(b.kube.at_write.wait(), 5)  # b has read the free Lease and is about to write
            await a.acquire()  # a reads and writes first
            b.kube.go.set()
            assert await b_try is False  # b's write carried the old resourceVersion
            assert b.kube.answers == [409]
            assert a.is_leader and not b.is_leader
            spec = lease(emulator, lease_namespace)["spec"]
            assert spec["holderIdentity"] == "replica-a" and spec["leaseTransitions"] == 3
            # b now sees a's record and waits for it like any standby.
            b_acquiring = asyncio.create_task(b.acquire())
            assert not await done_within(b_acquiring, 0.5)
            await stop(b_acquiring)
        finally:
            await close(a, b)

    run(scenario)


def test_the_rules_grant_leases_only_in_their_namespace(emulator, admin, lease_namespace):
    """The replicas' Role is in one namespace: a Lease elsewhere is refused (403), which is not leadership."""

    async def scenario():
        elsewhere = LeaderElector(
            Kube(emulator.client_configuration(user(lease_namespace, "replica-a"))),
            "default",
            LEASE,
            "replica-a",
            **TIMINGS,
        )
        try:
            assert await elsewhere._try_acquire_or_renew() is False
            assert not elsewhere.is_leader
        finally:
            await close(elsewhere)

    run(scenario)
    denied = [c for c in emulator.calls(user(lease_namespace, "replica-a")) if c.namespace == "default"]
    assert denied and all(c.resource == "leases" for c in denied)
    assert not emulator.objects("coordination.k8s.io", "leases", "default")


def test_timings_that_could_give_two_leaders_are_refused(emulator):
    async def scenario():
        kube = Kube(emulator.client_configuration("admin"))
        try:
            with pytest.raises(ValueError, match="lease_seconds must be greater than renew_deadline_seconds"):
                LeaderElector(kube, "ns", LEASE, "me", lease_seconds=5, renew_deadline_seconds=5, retry_seconds=1)
            with pytest.raises(ValueError, match="renew_deadline_seconds must be greater than retry_seconds"):
                LeaderElector(kube, "ns", LEASE, "me", lease_seconds=15, renew_deadline_seconds=2, retry_seconds=2)
            with pytest.raises(ValueError, match="identity"):
                LeaderElector(kube, "ns", LEASE, "", **TIMINGS)
        finally:
            await kube.close()

    run(scenario)


def test_the_lease_namespace_is_the_pods_own(monkeypatch, tmp_path):
    monkeypatch.setenv("POD_NAMESPACE", "kubetune-system")
    assert leader.lease_namespace() == "kubetune-system"
    monkeypatch.delenv("POD_NAMESPACE")
    mounted = tmp_path / "namespace"
    mounted.write_text("ops\n")
    monkeypatch.setattr(leader, "IN_CLUSTER_NAMESPACE_FILE", mounted)
    assert leader.lease_namespace() == "ops"
    monkeypatch.setattr(leader, "IN_CLUSTER_NAMESPACE_FILE", tmp_path / "absent")
    assert leader.lease_namespace() == "default"


def test_a_leader_that_starts_keeping_late_renews_at_once_and_retries_failures_every_retry_period(
    emulator, lease_namespace
):
    """keep() counts the renew deadline from acquire(): begun late, it renews at once; a failing renewal is tried
    again every retry period until the deadline, not in a busy loop."""
    fault = Fault(
        match=lambda call: call.resource == "leases" and call.verb == "update" and call.namespace == lease_namespace,
        status=500,
        times=None,
    )

    async def scenario():
        a = elector(emulator, lease_namespace, "replica-a")
        try:
            await a.acquire()
            acquired = lease(emulator, lease_namespace)["metadata"]["resourceVersion"]
            await asyncio.sleep(RENEW_DEADLINE / 2)
            keeping = asyncio.create_task(a.keep())
            await asyncio.sleep(RETRY / 2)
            assert lease(emulator, lease_namespace)["metadata"]["resourceVersion"] != acquired
            emulator.inject(fault)
            before = len(emulator.calls(user(lease_namespace, "replica-a")))
            await asyncio.wait_for(keeping, RENEW_DEADLINE + 1)
            tries = len(emulator.calls(user(lease_namespace, "replica-a"))) - before
            # A try is a write (the leader's fast path) and a read-and-write after it fails: about 3 calls a retry
            # period over the deadline.
            assert 3 <= tries <= 3 * (RENEW_DEADLINE / RETRY + 2), tries
        finally:
            emulator.call(lambda: emulator.server.faults.remove(fault) if fault in emulator.server.faults else None)
            await close(a)

    run(scenario)
