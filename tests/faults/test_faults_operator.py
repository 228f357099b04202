"""Operator faults against the API emulator, with the operator in its own process: API errors
(409 / 500 / 410 Gone) and cut watch streams at random, SIGKILL at random moments while 100 jobs
reconcile, and trainer pods evicted or deleted mid-run. The harness plays the Job controller and the
kubelet. Every test ends with: exactly one Job per FineTuneJob and a status that matches that Job."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import kubernetes
import pytest
from operatorlib import OperatorProcess, ftj_manifest, mismatches, wait_until_consistent

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.testing.emulator import ADMIN_TOKEN, Fault
from kubetune.testing.harness import ClusterSim, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def crd_api(api):
    return kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(api.client_configuration(ADMIN_TOKEN)))


@pytest.fixture
def sim(api):
    cluster = ClusterSim(api)
    yield cluster
    cluster.close()


def _namespace(api, name: str) -> str:
    core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(api.client_configuration(ADMIN_TOKEN)))
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def _cleanup(crd_api, api, namespace):
    for ftj in api.objects(GROUP, PLURAL, namespace):
        try:
            crd_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, ftj["metadata"]["name"])
        except kubernetes.client.ApiException:
            pass


class Cluster:
    """Plays the Job controller and kubelet for every Job of a namespace, in a background thread:
    starts pods for new Jobs, and finishes or fails some of them at random."""

    def __init__(self, sim: ClusterSim, api, namespace: str, rng, finish: float = 0.1, fail: float = 0.05):
        self.sim, self.api, self.ns, self.rng = sim, api, namespace, rng
        self.finish, self.fail = finish, fail
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []

    def _step(self) -> None:
        for job in self.api.objects("batch", "jobs", self.ns):
            name = job["metadata"]["name"]
            conds = {c["type"] for c in (job.get("status") or {}).get("conditions") or []}
            if conds & {"Complete", "Failed"} or job["spec"].get("suspend"):
                continue
            pods = self.sim.pods(self.ns, job)
            if not pods:
                self.sim.start(self.ns, name)
            elif self.rng.random() < self.finish:
                self.sim.succeed(self.ns, name)
            elif self.rng.random() < self.fail and len(pods) < 3:
                self.sim.fail(self.ns, name, 20, "S3 upload timed out")  # retried: a new pod

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self._step()
            except Exception as err:  # noqa: BLE001 - a race with a deleted object: try again
                self.errors.append(repr(err))
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(10)


def _random_fault(rng, lock, counter, status, probability, predicate):
    def match(call):
        if call.user != "operator" or not predicate(call):
            return False
        with lock:
            hit = rng.random() < probability
            if hit:
                counter[status] += 1
        return hit

    return Fault(match, status, times=None, reason={409: "Conflict", 410: "Expired"}.get(status, "InternalError"))


class Supervisor:
    """Restarts the operator whenever its process ends, as the kubelet does for the Deployment's pod."""

    def __init__(self, operator: OperatorProcess):
        self.operator = operator
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if not self.operator.alive():
                self.operator.start()
                self.restarts += 1

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_api_errors_and_cut_watches_while_jobs_reconcile(api, crd_api, sim, tmp_path, rng, ledger):
    ns = _namespace(api, "fault-api")
    counter, lock = Counter(), threading.Lock()
    faults = [
        _random_fault(rng, lock, counter, 409, 0.10, lambda c: c.verb in ("create", "patch", "update")),
        _random_fault(rng, lock, counter, 500, 0.10, lambda c: True),
        # 410 Gone on a list (a real API server sends it when a paginated list's continue token expired)
        # or a watch request: the operator's watches list again (were the process to exit, its Deployment would
        # restart it: Supervisor plays that part). In-stream 410s come from forget_history().
        _random_fault(rng, lock, counter, 410, 0.03, lambda c: c.verb in ("list", "watch")),
    ]
    operator = OperatorProcess(api, tmp_path).start()
    cuts = forgets = 0
    try:
        for fault in faults:
            api.inject(fault)
        with Supervisor(operator) as supervisor, Cluster(sim, api, ns, rng):
            for i in range(30):
                crd_api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ftj_manifest(f"job-{i}", ns))
                if rng.random() < 0.3:
                    api.cut_watches()
                    cuts += 1
                time.sleep(0.1)

            # At least 12 s of faults, and on until enough API faults were injected (how many calls the
            # operator makes in a given time depends on the machine and on its retry backoff).
            def injected() -> int:
                with lock:
                    return sum(counter.values())

            started, enough = time.monotonic(), 40
            while time.monotonic() < started + 12 or (injected() < enough and time.monotonic() < started + 60):
                time.sleep(rng.uniform(0.3, 1.2))
                if rng.random() < 0.25:
                    api.forget_history()  # the next resumed watch gets 410 Gone
                    forgets += 1
                api.cut_watches()
                cuts += 1
            for fault in faults:
                api.call(lambda f=fault: api.server.faults.remove(f))
            problems = wait_until_consistent(api, ns, timeout=40)
        crashes = supervisor.restarts
        assert problems == [], problems[:10]
        phases = Counter((f.get("status") or {}).get("phase") for f in api.objects(GROUP, PLURAL, ns))
    finally:
        _cleanup(crd_api, api, ns)
        operator.stop()
    injected = sum(counter.values()) + cuts + forgets
    assert sum(counter.values()) >= 20, counter  # the suite really injected API faults
    ledger.record(
        "API: 409/500/410 + cut watches (30 jobs)",
        faults=injected,
        runs=30,
        survived=30 - len(problems),
        note=f"{dict(counter)} cuts={cuts} gone={forgets} operator exits={crashes} -> {dict(phases)}",
    )


def test_operator_sigkilled_at_random_moments_while_100_jobs_reconcile(api, crd_api, sim, tmp_path, rng, ledger):
    ns = _namespace(api, "fault-kill")
    operator = OperatorProcess(api, tmp_path).start()
    kills = 0
    try:
        created = threading.Event()

        def create_all():
            for i in range(100):
                crd_api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ftj_manifest(f"job-{i}", ns))
                time.sleep(0.05)
            created.set()

        creator = threading.Thread(target=create_all, daemon=True)
        with Cluster(sim, api, ns, rng, finish=0.05, fail=0.02):
            creator.start()
            while kills < 5 or not created.is_set():
                time.sleep(rng.uniform(0.5, 3.0))  # from "still importing" to "mid-burst of reconciles"
                operator.kill()
                kills += 1
                time.sleep(rng.uniform(0.0, 1.0))  # the cluster moves on while no operator runs
                operator.start()
            creator.join(30)
            problems = wait_until_consistent(api, ns, timeout=60)
        assert problems == [], problems[:10]
        creates = [
            c for c in api.calls("operator") if c.verb == "create" and c.resource == "jobs" and c.namespace == ns
        ]
        jobs = api.objects("batch", "jobs", ns)
        duplicates = len(jobs) - 100
        phases = Counter((f.get("status") or {}).get("phase") for f in api.objects(GROUP, PLURAL, ns))
        stuck = [
            f["metadata"]["name"] for f in api.objects(GROUP, PLURAL, ns) if not (f.get("status") or {}).get("phase")
        ]
        assert duplicates == 0 and stuck == []
    finally:
        _cleanup(crd_api, api, ns)
        operator.stop()
    ledger.record(
        "operator: SIGKILL x{} (100 jobs)".format(kills),
        faults=kills,
        runs=100,
        survived=100 - len(problems),
        duplicates=duplicates,
        leaks=len(stuck),
        note=f"{len(creates)} Job creates for 100 Jobs -> {dict(phases)}",
    )


def test_trainer_pod_evicted_or_deleted_mid_run_gets_a_new_attempt_with_a_reason(api, crd_api, sim, tmp_path, ledger):
    ns = _namespace(api, "fault-pods")
    operator = OperatorProcess(api, tmp_path).start()
    core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(api.client_configuration(ADMIN_TOKEN)))

    def status(name):
        return crd_api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}

    def events(name):
        return [
            (e.type, e.reason, e.message)
            for e in core.list_namespaced_event(ns).items
            if e.involved_object.name == name
        ]

    notes = []
    try:
        for name in ("evicted", "deleted"):
            crd_api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ftj_manifest(name, ns, backoffLimit=3))
            wait_for(lambda name=name: sim.kube.get("Job", ns, name), 30, "the Job")
            sim.start(ns, name)
            wait_for(lambda name=name: status(name).get("phase") == "Running", 30, f"{name} running")

        # Eviction (node drain, preemption): DisruptionTarget, not counted against backoffLimit.
        sim.fail(ns, "evicted", 143, "", disruption=True, restart=False)
        st = wait_for(lambda: (s := status("evicted")).get("phase") == "Pending" and s, 30, "evicted -> Pending")
        assert "preempted" in st["message"] and "resumes from the newest checkpoint" in st["message"]
        running = next(c for c in st["conditions"] if c["type"] == "Running")
        assert running["reason"] == "Preempted"
        sim.start(ns, "evicted")  # the Job controller's replacement pod
        st = wait_for(
            lambda: (s := status("evicted")).get("phase") == "Running" and s.get("attempts") == 2 and s,
            30,
            "evicted: attempt 2 running",
        )
        notes.append(f"evicted: attempts {st['attempts']}, reason {running['reason']}")

        # Deleted outright (kubectl delete pod, node lost): the pod object is gone; the Job controller
        # counts a failure and creates a replacement.
        job = sim.job(ns, "deleted")
        for pod in sim.pods(ns, job):
            sim.kube.delete("Pod", ns, pod["metadata"]["name"])
        sim._job_status(job, {"active": 0, "ready": 0, "failed": 1})
        # Until the Job controller has counted the failure, the job is Pending with no pod (waiting for one); then the
        # reason survives the pod object.
        st = wait_for(
            lambda: (s := status("deleted")).get("phase") == "Pending" and "lost" in s.get("message", "") and s,
            30,
            "deleted -> Pending, the lost pod named",
        )
        sim.start(ns, "deleted")
        st = wait_for(
            lambda: (s := status("deleted")).get("phase") == "Running" and s.get("attempts") == 2 and s,
            30,
            "deleted: attempt 2 running",
        )
        # Events follow the status write that they tell of.
        reasons = wait_for(lambda: [r for t, r, m in events("deleted") if t == "Warning"], 30, "a Warning Event")
        assert reasons == ["Retrying"], f"a lost pod leaves one Warning Event with its reason: {events('deleted')}"
        notes.append(f"deleted: attempts {st['attempts']}, events {reasons}")
        assert mismatches(api, ns) == []
    finally:
        _cleanup(crd_api, api, ns)
        operator.stop()
    ledger.record("pods: evicted + deleted mid-run", faults=2, runs=2, survived=2, note="; ".join(notes))


def test_two_replicas_only_the_lease_holder_reconciles_and_the_standby_takes_over(api, crd_api, sim, tmp_path):
    """`replicaCount: 2` (the chart's --leader-election): one replica reconciles, the other only reads the Lease; the
    leader stopped (a rollout's SIGTERM) gives the Lease up and the standby takes over well before the lease would
    run out; a leader whose renewals fail stops every pass and watch, and leads again once it holds the Lease."""
    ns = _namespace(api, "fault-ha")
    _namespace(api, "kubetune-system")
    replicas = {}
    for name in ("replica-a", "replica-b"):
        # Each replica its own user, so that the emulator tells their calls apart.
        api.call(lambda name=name: (api.server.tokens.update({name: name}), api.server.superusers.add(name)))
        replicas[name] = OperatorProcess(
            api,
            tmp_path,
            token=name,
            args=("--leader-election", "kubetune-operator"),
            POD_NAME=name,
            POD_NAMESPACE="kubetune-system",
            KUBETUNE_LEADER_ELECTION_LEASE_SECONDS="3",  # renewals every 0.4 s, lost after 2 s without one
        )
    a, b = replicas["replica-a"], replicas["replica-b"]

    def holder() -> str:
        leases = api.objects("coordination.k8s.io", "leases", "kubetune-system")
        return next((lease["spec"].get("holderIdentity") or "" for lease in leases), "")

    def reconciling_calls(user: str) -> list:
        return [c for c in api.calls(user) if c.resource != "leases"]

    def create(name: str) -> None:
        crd_api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, ftj_manifest(name, ns))

    def has_job(name: str) -> bool:
        return any(j["metadata"]["name"] == name for j in api.objects("batch", "jobs", ns))

    renewals_fail = threading.Event()
    api.inject(
        Fault(lambda c: renewals_fail.is_set() and c.user == "replica-b" and c.resource == "leases", 500, times=None)
    )
    try:
        a.start()
        wait_for(lambda: holder() == "replica-a", 30, "replica-a to hold the Lease")
        b.start()
        with Cluster(sim, api, ns, random.Random("ha"), finish=0.0, fail=0.0):
            for i in range(5):
                create(f"job-{i}")
            assert wait_until_consistent(api, ns, timeout=30) == []
            wait_for(lambda: "held by replica-a" in b.output(), 30, "replica-b to stand by")
            time.sleep(1.0)  # several of the standby's tries
            assert holder() == "replica-a"
            assert reconciling_calls("replica-b") == []  # no watch, no list, no write: standby
            assert {c.verb for c in api.calls("replica-b")} <= {"get", "update"}

            # A rollout stops the leader: it gives the Lease up, and the standby leads within a try or two.
            a.stop()
            stopped = time.monotonic()
            wait_for(lambda: holder() == "replica-b", 10, "replica-b to take the Lease over")
            assert time.monotonic() - stopped < 3.0  # released, not waited out
            calls_of_a = len(api.calls("replica-a"))
            create("job-5")
            wait_for(lambda: has_job("job-5"), 30, "the new leader to make job-5's Job")
            assert any(c.verb == "create" and c.resource == "jobs" for c in api.calls("replica-b"))
            assert len(api.calls("replica-a")) == calls_of_a  # the old leader is gone for good

            # The new leader's renewals fail: it stops reconciling before its Lease could pass to another.
            renewals_fail.set()
            wait_for(lambda: "leadership lost" in b.output(), 15, "replica-b to lose its leadership")
            calls_of_b = len(reconciling_calls("replica-b"))
            create("job-6")
            time.sleep(1.5)
            assert not has_job("job-6")  # nobody leads: nobody reconciles
            late = reconciling_calls("replica-b")[calls_of_b:]
            assert late == [], [(c.verb, c.resource, c.name) for c in late]
            # The API server answers again: it leads again, from a fresh listing.
            renewals_fail.clear()
            wait_for(lambda: has_job("job-6"), 30, "replica-b, leading again, to make job-6's Job")
            assert wait_until_consistent(api, ns, timeout=30) == []
        assert len(api.objects("batch", "jobs", ns)) == 7  # one Job each, whoever made it
    finally:
        _cleanup(crd_api, api, ns)
        for replica in replicas.values():
            replica.stop()
