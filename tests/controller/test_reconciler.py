"""reconciler.py with APIs that fail, stall or record on demand (no operator, no emulator): retries, bounded
concurrency, the order of a burst's API calls, and what the reconciler keeps per job."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from kubernetes.client import ApiException

from kubetune.api.validation import parse_spec
from kubetune.controller import builders, status
from kubetune.controller.config import OperatorConfig
from kubetune.controller.queue import ItemExponentialBackoff
from kubetune.controller.reconciler import RETRY_MAX_SECONDS, RETRY_SECONDS, TRANSIENT_RETRY_MAX_SECONDS, Reconciler
from kubetune.controller.watches import LISTED

pytestmark = pytest.mark.timeout(60)
# No periodic resync during a test: it calls resync() itself.
CONFIG = OperatorConfig(resync_seconds=3600)


class FakeKube:
    async def close(self):
        pass


class FlakyKube(FakeKube):
    """Answers every GET of the FineTuneJob with a failure while `failing`, else with 'not found'; lists
    one unfinished FineTuneJob."""

    def __init__(self):
        self.failing = True
        self.gets = 0

    async def get(self, kind, namespace, name):
        self.gets += 1
        if self.failing:
            raise ConnectionError("the API server went away")
        return None  # deleted: nothing to do

    async def list(self, kind, namespace, label_selector=None):
        return [{"metadata": {"namespace": "team", "name": "bot"}, "status": {"phase": "Running"}}]


class RecordingBackoff(ItemExponentialBackoff):
    def __init__(self):
        super().__init__(RETRY_SECONDS, RETRY_MAX_SECONDS)
        self.delays = []

    def when(self, key, cap=None):
        self.delays.append(super().when(key, cap))
        return self.delays[-1]


async def settle(reconciler: Reconciler) -> None:
    while len(reconciler.queue) or reconciler.queue.processing:
        await asyncio.sleep(0.001)


def test_failed_passes_are_retried_with_a_doubling_delay_reset_by_a_success():
    async def scenario():
        kube = FlakyKube()
        reconciler = Reconciler(kube, CONFIG)
        reconciler.queue.rate_limiter = backoff = RecordingBackoff()
        reconciler.start()
        key = ("team", "bot")
        reconciler._unfinished.add(key)  # an earlier pass saw it running
        try:
            for _ in range(9):
                with pytest.raises(ConnectionError):
                    await reconciler.reconcile("team", "bot")
            assert backoff.delays[:3] == [RETRY_SECONDS, 2 * RETRY_SECONDS, 4 * RETRY_SECONDS]
            # The API server went away: nothing of the job's, so at most 20 s, however often in a row.
            assert max(backoff.delays) == TRANSIENT_RETRY_MAX_SECONDS == backoff.delays[-1]
            # Each failure scheduled its retry; the first one's, soonest, still stands.
            assert 0 < reconciler.queue.waiting_for(("team", "bot")) <= RETRY_SECONDS

            gets = kube.gets
            await reconciler.resync()  # in backoff: the periodic resync leaves it to its scheduled retry
            await settle(reconciler)
            assert kube.gets == gets

            kube.failing = False
            reconciler.queue.forget(key)  # what a pass that succeeds does
            await reconciler.resync()  # healthy again: visited like every unfinished job
            await settle(reconciler)
            assert kube.gets == gets + 1
            assert key not in reconciler._unfinished  # that pass found it gone: no more resync passes over it
            await reconciler.resync()
            await settle(reconciler)
            assert kube.gets == gets + 1
            kube.failing = True
            with pytest.raises(ConnectionError):
                await reconciler.reconcile("team", "bot")
            assert backoff.delays[-1] == RETRY_SECONDS  # a success starts the count again
        finally:
            await reconciler.stop()

    asyncio.run(scenario())


class SlowKube(FakeKube):
    """GETs that take a while, counting how many are in flight at once."""

    def __init__(self):
        self.in_flight = self.most = self.gets = 0

    async def get(self, kind, namespace, name):
        self.gets += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return None


def test_a_burst_is_reconciled_a_bounded_number_at_a_time_and_one_object_never_twice_at_once():
    async def scenario():
        kube = SlowKube()
        reconciler = Reconciler(kube, dataclasses.replace(CONFIG, concurrent_reconciles=4))
        reconciler.start()
        try:
            await asyncio.gather(*(reconciler.reconcile("team", f"job-{i}") for i in range(40)))
            assert kube.most == 4
            kube.most = kube.gets = 0
            await asyncio.gather(*(reconciler.reconcile("team", "same") for _ in range(10)))
            assert kube.most == 1
            assert kube.gets <= 2  # the asks that came while a pass ran share the one pass after it
        finally:
            await reconciler.stop()

    asyncio.run(scenario())


class RecordingKube(FakeKube):
    """An API that accepts every write and records its order (each call yields to the loop, as I/O does);
    lists the FineTuneJobs of `listed`."""

    def __init__(self):
        self.calls = []
        self.events = []
        self.listed = []

    async def list(self, kind, namespace, label_selector=None):
        await asyncio.sleep(0)
        return [new_finetunejob(name) | {"status": {"phase": "Succeeded"}} for name in self.listed]

    async def list_keys(self, kind, namespace):
        await asyncio.sleep(0)
        return {("team", name) for name in self.listed}

    async def create(self, obj, read=True):
        await asyncio.sleep(0)
        self.calls.append((obj["kind"], obj["metadata"].get("name") or obj["involvedObject"]["name"]))
        if obj["kind"] == "Event":
            self.events.append((obj["involvedObject"]["name"], obj["reason"]))
        return obj | {"metadata": obj["metadata"] | {"uid": "uid-" + obj["metadata"].get("name", "")}}

    async def patch(self, kind, namespace, name, patch, subresource=None):
        await asyncio.sleep(0)
        self.calls.append((f"{kind}/{subresource}" if subresource else kind, name))
        return {}

    async def get(self, kind, namespace, name):
        await asyncio.sleep(0)
        return None  # deleted


def new_finetunejob(name):
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "technique": "lora",
            "objective": "causal-lm",
            "model": {"uri": "hf://org/model"},
            "datasets": [{"uri": "s3://bucket-a/train.jsonl", "format": "text"}],
            "output": {"uri": "s3://bucket-a/out/"},
        },
    }


def test_a_burst_gets_every_job_created_before_the_work_that_can_wait_and_its_events_last():
    async def scenario():
        kube = RecordingKube()
        reconciler = Reconciler(kube, dataclasses.replace(CONFIG, concurrent_reconciles=2))
        reconciler.start()
        try:
            names = [f"job-{i}" for i in range(6)]
            phases = await asyncio.gather(*(reconciler.reconcile("team", n, body=new_finetunejob(n)) for n in names))
        finally:
            await reconciler.stop()
        return kube.calls, phases

    calls, phases = asyncio.run(scenario())
    assert phases == ["Pending"] * 6
    last_job = max(i for i, (kind, _) in enumerate(calls) if kind == "Job")
    after_job = ("FineTuneJob/status", "Event")
    deferred = [i for i, (kind, _) in enumerate(calls) if kind in after_job]
    assert len(deferred) == 6 * 2
    # Two at a time: only the last pair's status may come before the last Job.
    assert sum(i < last_job for i in deferred) <= 2 * 2, calls
    # And the Events after every status: what users and GitOps tools read comes first.
    last_status = max(i for i, (kind, _) in enumerate(calls) if kind == "FineTuneJob/status")
    assert all(i > last_status for i, (kind, _) in enumerate(calls) if kind == "Event"), calls
    for name in (f"job-{i}" for i in range(6)):  # and each job still gets everything, in a valid order
        mine = [kind for kind, n in calls if n in (name, f"{name}-spec", f"{name}-reporter")]
        assert mine == ["Job", *after_job], mine  # the reporter's account and grant follow the pods


def test_a_pass_s_events_keep_their_order_and_are_posted_even_when_the_pass_fails_after_its_status():
    """The Events of a status write wait for the end of the pass, but an Event posted later in the pass goes after
    them, and a pass that fails once its status is written still tells its Events."""

    async def scenario():
        kube = RecordingKube()
        reconciler = Reconciler(kube, CONFIG)
        ftj = new_finetunejob("in-order")
        outcome = status.Outcome({"phase": "Pending"}, [status.Event("Normal", "JobCreated", "created")])
        await reconciler._write_status(ftj, outcome)
        assert [kind for kind, _ in kube.calls] == ["FineTuneJob/status"]  # the Event waits
        await reconciler.event(ftj, "Warning", "JobMissing", "later in the pass")
        in_order = [kind for kind, _ in kube.calls]

        async def fails_after_the_status(ftj):
            raise ConnectionError("the API server went away")

        kube.calls.clear()
        reconciler._announce_plan = fails_after_the_status  # runs after a new job's status write
        reconciler.start()
        try:
            with pytest.raises(ConnectionError):
                await reconciler.reconcile("team", "fails", body=new_finetunejob("fails"))
        finally:
            await reconciler.stop()
        return in_order, kube.calls, kube.events

    in_order, calls, events = asyncio.run(scenario())
    assert in_order == ["FineTuneJob/status", "Event", "Event"]
    assert [reason for _, reason in events] == ["JobCreated", "JobMissing", "JobCreated"]
    assert calls[-2:] == [("FineTuneJob/status", "fails"), ("Event", "fails")], calls


@pytest.mark.parametrize("post_events", [True, False])
def test_a_graceful_stop_posts_the_events_passes_kept_aside_a_lost_lease_does_not(post_events):
    """A rollout's stop while leading posts the Events waiting behind a burst's statuses (a restarted operator would not
    tell them again: the statuses are written); a replica that lost its Lease writes nothing more."""

    async def scenario():
        kube = RecordingKube()
        reconciler = Reconciler(kube, CONFIG)
        reconciler.start()
        for name in ("a", "b"):
            outcome = status.Outcome({"phase": "Pending"}, [status.Event("Normal", "JobCreated", "created")])
            await reconciler._write_status(new_finetunejob(name), outcome)  # as a pass does, before its Events
        await reconciler.stop(post_events=post_events)
        return kube.events

    assert asyncio.run(scenario()) == ([("a", "JobCreated"), ("b", "JobCreated")] if post_events else [])


def test_nothing_is_kept_for_a_job_once_it_is_gone():
    """Any tenant can create and delete FineTuneJobs (and label pods after one): the reconciler's memory per
    job must end with the job."""

    async def scenario():
        kube = RecordingKube()
        reconciler = Reconciler(kube, CONFIG)
        reconciler.start()
        try:
            names = [f"job-{i}" for i in range(20)]
            await asyncio.gather(*(reconciler.reconcile("team", n, body=new_finetunejob(n)) for n in names))
            assert len(reconciler._records) == 20  # status written: a watched copy is read again from now on
            for name in names:  # deleted: the next pass finds it gone
                reconciler.enqueue("team", name)
            reconciler.enqueue("team", "never-existed")  # a pod's label naming no FineTuneJob
            await settle(reconciler)
            assert not reconciler._records
            # Deleted with nothing left to tell of it (its DELETED event lost with a watch): the sweep's
            # metadata-only listing shows it gone.
            kube.listed = ["kept"]
            await asyncio.gather(*(reconciler.reconcile("team", n, body=new_finetunejob(n)) for n in ("gone", "kept")))
            await reconciler.forget_deleted()
            assert set(reconciler._records) == {("team", "kept")} and reconciler.metrics.recorded() == {
                ("team", "kept")
            }
            reconciler.enqueue("team", "kept")
            await settle(reconciler)
            return reconciler
        finally:
            await reconciler.stop()

    reconciler = asyncio.run(scenario())
    assert not reconciler._records and not reconciler._bodies and not reconciler._callers
    assert not reconciler._namespace_locks and not reconciler._passes
    assert len(reconciler.queue) == 0 and reconciler.queue.processing == 0
    assert reconciler.metrics.phase_counts() == {}


def test_the_added_event_of_a_job_being_made_here_calls_for_no_pass_whenever_it_comes():
    """The Job's ADDED event may come back before the create's answer does: the Job is noted before the create."""

    class AnsweringLate(RecordingKube):
        def __init__(self, reconciler_box):
            super().__init__()
            self.box = reconciler_box
            self.gets = 0

        async def create(self, obj, read=True):
            if obj["kind"] == "Job":  # the watch delivers the event first
                meta = {"namespace": "team", "name": obj["metadata"]["name"], "labels": obj["metadata"]["labels"]}
                self.box[0].child_changed("Job", "ADDED", {"metadata": meta})
            return await super().create(obj, read)

        async def get(self, kind, namespace, name):
            self.gets += 1  # a pass the event asked for (the FineTuneJob is read again)
            return await super().get(kind, namespace, name)

    async def scenario():
        box = []
        kube = AnsweringLate(box)
        reconciler = Reconciler(kube, CONFIG)
        box.append(reconciler)
        reconciler.start()
        try:
            await reconciler.reconcile("team", "job-a", body=new_finetunejob("job-a"))
            await settle(reconciler)
            after_made = kube.gets
            meta = {"namespace": "team", "name": "job-a", "labels": {"kubetune.dev/finetunejob": "job-a"}}
            reconciler.child_changed("Job", "MODIFIED", {"metadata": meta})  # a later change does call for one
            await settle(reconciler)
            return after_made, kube.gets, reconciler._made_jobs
        finally:
            await reconciler.stop()

    after_made, after_change, made = asyncio.run(scenario())
    assert after_made == 0 and after_change == 1 and not made


def ftj(generation: int = 1, status: dict | None = None, deleting: bool = False) -> dict:
    meta = {"name": "x", "namespace": "n", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {}, **({"status": status} if status is not None else {})}


@pytest.mark.parametrize(
    ("event", "body", "wanted"),
    [
        ("ADDED", ftj(), True),  # new: no phase yet
        (LISTED, ftj(status={"phase": "Succeeded", "observedGeneration": 1}), True),  # listed, unknown to the process
        (LISTED, ftj(status={"phase": "Running", "observedGeneration": 1}), True),
        ("MODIFIED", ftj(2, {"phase": "Running", "observedGeneration": 1}), True),  # a spec edit
        ("MODIFIED", ftj(1, {"phase": "Running", "observedGeneration": 1, "progress": {"step": 3}}), False),  # a report
        ("MODIFIED", ftj(1, {"progress": {"step": 3}}), True),  # the reporter first, no phase yet
        ("DELETED", ftj(), False),
        ("MODIFIED", ftj(deleting=True), False),
    ],
)
def test_which_finetunejob_events_call_for_a_pass(event, body, wanted):
    assert Reconciler(kube=None, config=CONFIG).needs_reconcile(event, body) is wanted


def test_a_listed_job_calls_for_a_pass_unless_it_is_finished_and_known():
    """The listing at startup, or after a lost watch: a finished job the operator has had a pass over (its record
    agrees with the listed status) calls for nothing, so a history of finished jobs costs no pass."""
    from kubetune.controller import status
    from kubetune.controller.reconciler import Record

    reconciler = Reconciler(kube=None, config=CONFIG)
    done = {"phase": "Succeeded", "observedGeneration": 1}
    assert reconciler.needs_reconcile(LISTED, ftj(status=done)) is True  # not seen by this process yet
    reconciler._records[("n", "x")] = Record(status.canonical(done))
    assert reconciler.needs_reconcile(LISTED, ftj(status=done)) is False
    assert reconciler.needs_reconcile(LISTED, ftj(2, done)) is True  # edited while the watch was down
    assert reconciler.needs_reconcile(LISTED, ftj(status=done | {"phase": "Failed"})) is True  # someone else wrote it
    running = {"phase": "Running", "observedGeneration": 1}
    reconciler._records[("n", "x")] = Record(status.canonical(running))
    assert reconciler.needs_reconcile(LISTED, ftj(status=running)) is True  # unfinished: always looked at


def test_a_watch_event_queues_the_job_as_it_came_without_its_managed_fields():
    reconciler = Reconciler(kube=None, config=CONFIG)
    event = ftj()
    event["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    reconciler.finetunejob_changed("ADDED", event)
    assert reconciler.queue.waiting_for(("n", "x")) is None and len(reconciler.queue) == 1
    assert "managedFields" not in reconciler._bodies[("n", "x")]["metadata"]
    assert event["metadata"]["managedFields"]  # the event itself is left as it was
    reconciler.finetunejob_changed("MODIFIED", ftj(1, {"phase": "Running", "observedGeneration": 1}))
    assert len(reconciler.queue) == 1  # a status-only change of a job the process never wrote: still one key


def test_a_child_watch_listed_again_gives_every_unfinished_job_a_pass_even_in_a_retry_backoff():
    """A 410 loses the events between the watch's last version and the new listing: the resync leaves a job whose last
    pass failed to its backoff (up to 5 min), so the re-listing itself queues every unfinished job."""

    async def scenario():
        reconciler = Reconciler(kube=None, config=CONFIG)
        failed, running = ("n", "failed"), ("n", "running")
        reconciler._unfinished |= {failed, running}
        reconciler.queue.add_rate_limited(failed)  # its last pass failed: due in 5 s
        await reconciler.resync()
        assert set(reconciler.queue._dirty) == {running}  # the resync leaves it to its backoff
        reconciler.children_relisted()
        queued = set(reconciler.queue._dirty)
        reconciler.queue.shutdown()
        return queued

    assert asyncio.run(scenario()) == {("n", "failed"), ("n", "running")}


class ReadCountingKube(FakeKube):
    """Counts the reads a pass would make of the API server (a Job found, no pods)."""

    def __init__(self):
        self.reads = []

    async def get(self, kind, namespace, name):
        self.reads.append(("get", kind, name))
        return {"metadata": {"namespace": namespace, "name": name, "uid": "fresh"}, "status": {}}

    async def list(self, kind, namespace, label_selector=None):
        self.reads.append(("list", kind, label_selector))
        return []


def listed_child(kind: str, name: str, job: str, owner_uid: str, uid: str) -> dict:
    """A Job or pod as a listing brings it, with what a pass never reads (managedFields, a pod template, a pod's spec
    and the job's spec annotation)."""
    meta = {
        "namespace": "team",
        "name": name,
        "uid": uid,
        "labels": {"app.kubernetes.io/managed-by": "kubetune", "kubetune.dev/finetunejob": job},
        "annotations": {"kubetune.dev/spec": "technique: lora", "kept": "yes"},
        "ownerReferences": [{"uid": owner_uid, "controller": True}],
        "managedFields": [{"manager": "kube-controller-manager"}],
    }
    spec = {"template": {"spec": {}}, "suspend": False} if kind == "Job" else {"containers": [{"name": "trainer"}]}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec, "status": {"phase": "Running"}}


def test_a_job_s_first_pass_reads_its_children_from_the_start_up_listings_until_its_job_or_a_pod_changes():
    async def scenario():
        kube = ReadCountingKube()
        reconciler = Reconciler(kube, CONFIG)
        reconciler._prime("Job", LISTED, listed_child("Job", "a", "a", "ftj-a", "job-a"))
        reconciler._prime("Pod", LISTED, listed_child("Pod", "a-0", "a", "job-a", "pod-a0"))
        reconciler._prime("Pod", LISTED, listed_child("Pod", "a-old", "a", "job-before", "pod-a-old"))
        reconciler._prime("Pod", LISTED, listed_child("Pod", "b-0", "b", "job-b", "pod-b0"))  # no Job of b listed
        reconciler._prime(
            "RoleBinding",
            LISTED,
            {"metadata": listed_child("RoleBinding", "a-reporter", "a", "ftj-a", "r")["metadata"]},
        )
        reconciler._prime(
            "Event", LISTED, {"metadata": {"namespace": "team", "name": "a.planned-1"}, "involvedObject": {"name": "a"}}
        )
        # Nothing is taken from the listings before the FineTuneJobs are listed (which says which listings succeeded).
        assert await reconciler._read_job(("team", "a"), "a") == {
            "metadata": {"namespace": "team", "name": "a", "uid": "fresh"},
            "status": {},
        }
        for key in (("team", "a"), ("team", "b"), ("team", "c")):  # c: nothing of it was listed
            reconciler._primed_for(key)["listed"] = {"Job", "Pod", "RoleBinding", "Role", "Event"}
        kube.reads.clear()
        job = await reconciler._read_job(("team", "a"), "a")
        pods = await reconciler._read_pods(("team", "a"), job)
        binding = await reconciler._read_child(("team", "a"), "RoleBinding", "a-reporter")
        assert binding == {"metadata": {"ownerReferences": [{"uid": "ftj-a"}]}}  # who owns it, no more
        assert await reconciler._read_child(("team", "a"), "Role", "a-reporter") is None  # listed, not found
        assert await reconciler._event_exists(("team", "a"), "a.planned-1")
        assert not await reconciler._event_exists(("team", "c"), "c.planned-1")
        assert await reconciler._read_job(("team", "c"), "c") is None  # its Job was not listed: there is none
        assert kube.reads == []  # from memory
        assert job["metadata"]["uid"] == "job-a" and "template" not in job["spec"] and job["spec"]["suspend"] is False
        assert "managedFields" not in job["metadata"]
        assert [p["metadata"]["name"] for p in pods] == ["a-0"]  # only the Job's own (not a previous attempt's)
        assert "spec" not in pods[0] and pods[0]["metadata"]["annotations"] == {"kept": "yes"}
        assert pods[0]["status"] == {"phase": "Running"} and "managedFields" not in pods[0]["metadata"]
        assert [p["metadata"]["name"] for p in reconciler._primed[("team", "b")]["pods"]] == ["b-0"]
        # Another Job name than the listed one (a status naming another Job) is read; so is a kind whose listing failed.
        await reconciler._read_job(("team", "a"), "a-other")
        await reconciler._read_child(("team", "a"), "ServiceAccount", "a-reporter")
        assert kube.reads == [("get", "Job", "a-other"), ("get", "ServiceAccount", "a-reporter")]
        del kube.reads[1]
        # A watch event of one of its pods (metadata only): what was listed may be stale, so it is read afresh.
        reconciler.child_changed(
            "Pod", "MODIFIED", {"metadata": listed_child("Pod", "a-0", "a", "job-a", "p")["metadata"]}
        )
        job = await reconciler._read_job(("team", "a"), "a")
        await reconciler._read_pods(("team", "a"), job)
        assert job["metadata"]["uid"] == "fresh"
        assert kube.reads[1:] == [
            ("get", "Job", "a"),
            ("list", "Pod", "app.kubernetes.io/managed-by=kubetune,kubetune.dev/finetunejob=a"),
        ]
        reconciler.queue.shutdown()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("error", "cap"),
    [
        (ConnectionError("reset"), TRANSIENT_RETRY_MAX_SECONDS),
        (ApiException(status=503), TRANSIENT_RETRY_MAX_SECONDS),
        (ApiException(status=409), TRANSIENT_RETRY_MAX_SECONDS),
        (ApiException(status=403), RETRY_MAX_SECONDS),  # the job's own: it backs off to 5 min
        (KeyError("spec"), RETRY_MAX_SECONDS),
    ],
)
def test_a_failure_of_the_api_server_is_retried_within_20_s_one_of_the_job_backs_off_to_5_min(error, cap):
    class Failing(FakeKube):
        async def get(self, kind, namespace, name):
            raise error

    async def scenario():
        reconciler = Reconciler(Failing(), CONFIG)
        reconciler.queue.rate_limiter = backoff = RecordingBackoff()
        reconciler.start()
        try:
            for _ in range(9):
                with pytest.raises(type(error)):
                    await reconciler.reconcile("team", "bot")
            return backoff.delays
        finally:
            await reconciler.stop()

    assert max(asyncio.run(scenario())) == cap


class TokenSecretTaken(RecordingKube):
    """Answers the reporter's token Secret's create with 409 and `reason`; records every GET."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason
        self.gets = []

    async def create(self, obj, read=True):
        if obj["kind"] != "Secret":
            return await super().create(obj, read)
        await asyncio.sleep(0)
        self.calls.append(("Secret", obj["metadata"]["name"]))
        err = ApiException(status=409, reason=self.reason)
        err.body = json.dumps({"kind": "Status", "code": 409, "reason": self.reason, "message": "taken"})
        raise err

    async def get(self, kind, namespace, name):
        self.gets.append(kind)
        return None


@pytest.mark.parametrize("reason", ["AlreadyExists", "Conflict"])
def test_the_reporters_token_secret_is_never_read_and_counts_as_made_only_when_it_exists(reason):
    """The operator may not read Secrets: a 409 AlreadyExists to the token Secret's create is this job's (its name
    carries the job's uid), and the grant goes on; any other 409 fails the pass, to be tried again."""
    ftj = new_finetunejob("bot")
    spec = builders.resolve_written(parse_spec(ftj["spec"], name="bot"), CONFIG)

    async def scenario():
        kube = TokenSecretTaken(reason)
        reconciler = Reconciler(kube, CONFIG)
        try:
            await reconciler._grant_reporter(ftj, spec)
            return kube, None
        except ApiException as err:
            return kube, err

    kube, err = asyncio.run(scenario())
    assert "Secret" not in kube.gets
    made = [kind for kind, _ in kube.calls]
    if reason == "AlreadyExists":
        assert err is None and made == ["ServiceAccount", "Secret", "Role", "RoleBinding"]
    else:
        assert err is not None and err.status == 409 and made == ["ServiceAccount", "Secret"]
