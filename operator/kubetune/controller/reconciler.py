"""The reconcile pass: read a FineTuneJob and its children, create or fix what is missing, write status.

Level-based and idempotent: every pass starts from what the API server says now, so a restart, a
repeated event or a retry never creates a second Job (deterministic names; AlreadyExists -> adopt when
owned by this FineTuneJob). Which job gets a pass when, and how many at once, is the work queue's
(queue.py): the FineTuneJobs' watch events add keys to it (finetunejob_changed), and so do the Jobs' and pods'
watches (watches.py), the periodic resync, the retries of failed passes and the TTL wake-ups. Everything runs on
kopf's event loop: one thread, no locks against other threads.

Trust: the trainer's token may patch the FineTuneJob's status, all of it, so the status is never the
operator's memory. Phase, conditions, attempts and times come from what the operator sees of the Job and its
pods, and from its own record of what it wrote last (`Record`, in memory); a pass writes back whatever of its
keys someone else changed, and takes back result URIs outside the job's output root. A status-only change
calls for a pass only when it touched those (needs_reconcile asks `status_disagrees`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from kubernetes.client import ApiException

from kubetune.api.constants import API_VERSION, GROUP, KIND, Phase, Reason
from kubetune.api.validation import SpecError, notices, parse_spec
from kubetune.controller import bounds, builders, kueue, logs, modelcache, policy, status, watches
from kubetune.controller.config import OperatorConfig
from kubetune.controller.kube import METADATA_LIST, Kube
from kubetune.controller.metrics import Metrics
from kubetune.controller.queue import ItemExponentialBackoff, WorkQueue

log = logs.log
# After a failed pass: 5 s, doubling per failure in a row, at most 5 min.
RETRY_SECONDS = 5
RETRY_MAX_SECONDS = 300
# A failure that says nothing of the job (the API server or the network failing, a conflict with another writer) is
# retried within this long however often it came in a row: once the API server answers again, every job is seen
# again within it, not up to 5 min later (the fault suite's outage of 12 s or more left jobs behind for minutes).
TRANSIENT_RETRY_MAX_SECONDS = 20
# The API server's answers that say it, not the request, failed (or that another writer came first).
TRANSIENT_STATUSES = (409, 429, 500, 502, 503, 504)
# The jobs the API server no longer lists are looked for every this many resync periods (Reconciler.forget_deleted).
SWEEP_EVERY_RESYNCS = 10
# A queued job suspended by its spec waits this long between looks for the Workload Kueue makes for its Job.
KUEUE_WORKLOAD_WAIT_SECONDS = 0.5
# A graceful stop (a rollout's SIGTERM, while this replica leads) posts the Events its passes kept aside (a burst's,
# waiting behind the statuses) for this long at most, this many at once; within the process's stop grace (main.py).
STOP_EVENTS_SECONDS = 5.0
STOP_EVENTS_AT_ONCE = 16
# What the API server answers when it refuses an object for good: retrying the same request cannot help.
REFUSED = (400, 403, 422)
# The failures a spec edit can undo: raising spec.backoffLimit or spec.activeDeadlineSeconds re-opens the job.
REOPENABLE = (Reason.BACKOFF_LIMIT_EXCEEDED, Reason.DEADLINE_EXCEEDED)

Key = tuple[str, str]  # (namespace, name) of a FineTuneJob


class ChildRejected(Exception):
    """The API server refused an object the operator made for a job, or its name is taken by an object that is
    not this job's. The job fails with reason ChildRejected and these words."""

    @classmethod
    def refused(cls, err: ApiException, verb: str, kind: str, namespace: str, name: str) -> ChildRejected:
        return cls(f"the API server refused to {verb} {kind} {namespace}/{name}: {server_message(err)}")


def _status_field(err: ApiException, field: str) -> str | None:
    """A field of the API server's Status answer (None when the body is not one)."""
    try:
        return json.loads(err.body or "{}").get(field)
    except (ValueError, AttributeError):
        return None


def server_message(err: ApiException) -> str:
    """The message of the API server's Status answer (else its HTTP reason), one line."""
    return status.pod_text(_status_field(err, "message") or f"{err.status} {err.reason}")


def already_exists(err: ApiException) -> bool:
    """A create refused because an object of that name exists (409 AlreadyExists; a 409 can also be a Conflict)."""
    return _status_field(err, "reason") == "AlreadyExists"


def transient(err: BaseException) -> bool:
    """Whether a pass failed for the API server or the network, not for anything of the job's."""
    if isinstance(err, ApiException):
        return err.status in TRANSIENT_STATUSES
    return isinstance(err, (aiohttp.ClientError, asyncio.TimeoutError, OSError))


def describe(err: BaseException) -> str:
    """An error in one line: the API server's words for its refusals, else the exception's."""
    if isinstance(err, ApiException):
        return f"the API server answered {err.status}: {server_message(err)}"
    return status.pod_text(f"{type(err).__name__}: {err}")


def _owned_by(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _left_by_namesake(obj: dict, name: str, uid: str) -> bool:
    """An object made for an earlier FineTuneJob of the same name, which the garbage collector has yet to remove."""
    return any(
        ref.get("kind") == KIND
        and ref.get("apiVersion", "").startswith(f"{GROUP}/")
        and ref.get("name") == name
        and ref.get("uid") != uid
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


def _job_finished(job: dict) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in job.get("status", {}).get("conditions") or []
    )


def _being_replaced(job: dict) -> bool:
    """A Job the operator is deleting to start the next attempt (foreground deletion: it goes once its pods have):
    its job keeps its place under the namespace cap."""
    meta = job["metadata"]
    return bool(meta.get("deletionTimestamp")) and "foregroundDeletion" in (meta.get("finalizers") or [])


def _queue_order_of(job: dict) -> str:
    """A held Job's place in the cap's queue (a Job held by an older release of the operator: its creation time)."""
    meta = job["metadata"]
    return (meta.get("annotations") or {}).get(builders.ANNOTATION_QUEUE_ORDER) or f"{meta.get('creationTimestamp')}/"


def _lean(ftj: dict) -> dict:
    """The watched FineTuneJob as a pass reads it, kept until its pass: without metadata.managedFields (often the
    larger half of an object, and never read), so that a burst's queue holds less."""
    metadata = {key: value for key, value in (ftj.get("metadata") or {}).items() if key != "managedFields"}
    return {**ftj, "metadata": metadata}


# The Events a restarted operator lists to know which plans it told already (_announce_plan): core/v1 Events can be
# selected by these fields (kubernetes pkg/apis/core/v1 conversion.go, AddFieldLabelConversionsForEvent).
PLANNED_EVENTS = f"involvedObject.kind={KIND},reason={Reason.PLANNED}"
# The children of a job but its Job and pods, listed at start-up for their names and owners only (metadata): whether
# the reporter's grant exists (_grant_reporter), and what ttlSecondsAfterFinished has left to remove (_expire).
OTHER_CHILDREN = ("ConfigMap", "Service", "Role", "RoleBinding", "ServiceAccount")


def _lean_job(job: dict) -> dict:
    """A listed Job as a pass reads it: without its pod template (the job's spec again, as an annotation) and
    managedFields, never read, which are most of it."""
    metadata = {key: value for key, value in job["metadata"].items() if key != "managedFields"}
    spec = {key: value for key, value in (job.get("spec") or {}).items() if key != "template"}
    return {**job, "metadata": metadata, "spec": spec}


def _lean_pod(pod: dict) -> dict:
    """A listed pod as a pass reads it: its metadata and status (its spec is never read), without managedFields and the
    job's spec annotation."""
    metadata = {key: value for key, value in pod["metadata"].items() if key != "managedFields"}
    annotations = metadata.get("annotations") or {}
    if builders.ANNOTATION_SPEC in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != builders.ANNOTATION_SPEC}
    return {"apiVersion": pod.get("apiVersion"), "kind": "Pod", "metadata": metadata, "status": pod.get("status") or {}}


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ResumeSourceMissing(Exception):
    """spec.resumeFrom names a FineTuneJob that does not exist or has no complete checkpoint: the job fails with reason
    ResumeSourceNotFound and these words."""


@dataclass(frozen=True)
class Record:
    """What the operator last wrote into one FineTuneJob's status (its own keys, status.canonical) and the job's
    output root: the operator's memory of the job, which the object's status (anyone with the trainer's token
    may write it) is checked against."""

    status: str
    root: str = ""

    def operator_status(self) -> dict:
        return json.loads(self.status)


class Reconciler:
    def __init__(self, kube: Kube, config: OperatorConfig, metrics: Metrics | None = None):
        self.kube = kube
        self.config = config
        self.metrics = metrics or Metrics()
        self.kueue = kueue.KueueClient(kube)
        self.modelcache = modelcache.ModelCache(self)  # the shared model cache (modelcache.py)
        self.queue = WorkQueue(config.concurrent_reconciles, ItemExponentialBackoff(RETRY_SECONDS, RETRY_MAX_SECONDS))
        # Per key, only while the key waits for its next pass (so nothing here outlives a deleted job):
        self._bodies: dict[Key, dict] = {}  # the FineTuneJob as its newest watch event carried it
        self._callers: dict[Key, list[asyncio.Future]] = {}  # reconcile() callers waiting for that pass
        # Per key, only during its pass: the Events of the statuses the pass wrote, not posted yet (_write_status).
        self._unposted: dict[Key, list[tuple[dict, status.Event]]] = {}
        # Per FineTuneJob whose status this process wrote, until the job goes: what it wrote (Record).
        self._records: dict[Key, Record] = {}
        # Jobs this process is making or made whose ADDED event has not come yet (namespace, Job name): that event tells
        # nothing new. Noted before the create goes out, as its event may come back before the answer does.
        self._made_jobs: set[Key] = set()
        # The FineTuneJobs whose last pass left them unfinished: what the resync looks at.
        self._unfinished: set[Key] = set()
        # Per FineTuneJob with a Job: whether its reporter's grant exists (False: this process made the Job and no grant
        # yet; absent: not known to this process).
        self._granted: dict[Key, bool] = {}
        # Per FineTuneJob, what the start-up listings brought (_watch), until its first pass or a watch event of its
        # Job or a pod: {"job": ..., "pods": [...], "children": {(kind, name): its owners}, "planned": the names of
        # its Planned Events, "listed": the kinds whose listing succeeded, what a pass may take from here}.
        self._primed: dict[Key, dict] = {}
        # Per unfinished FineTuneJob whose plan (status.plan) the operator told as an Event: the plan's digest.
        self._announced: dict[Key, str] = {}
        # Bounds the API server held a status write to, where they were tighter than this release's CRD (a cluster
        # running another release's CRD): every later write fits them from the start.
        self._refused_bounds: dict[tuple[str, ...], int] = {}
        # One lock per namespace while passes count its running Jobs against the cap (and how many passes want it).
        self._namespace_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._passes: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._watch_kube: Kube | None = None  # the watches' own connections (start)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.instance = os.environ.get("HOSTNAME", "kubetune-operator")

    # ------------------------------------------------------------------------------------- entry

    def finetunejob_changed(self, kind_of_event: str, ftj: dict) -> None:
        """A FineTuneJob watch event, or a listed job (watches.LISTED): its metrics are updated (the trainer's progress
        reports included: they call for no pass); one that calls for a pass (needs_reconcile) queues it, with the job
        as the event carried it; a deletion queues the pass that forgets the job (the resync lists nothing that would
        notice)."""
        meta = ftj.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if kind_of_event == "DELETED":
            self.metrics.observe(namespace, name, None)
            self.enqueue(namespace, name, urgent=False)
            return
        self.metrics.observe(namespace, name, ftj)
        if self.needs_reconcile(kind_of_event, ftj):
            self.enqueue(namespace, name, body=_lean(ftj))

    def needs_reconcile(self, kind_of_event: str, ftj: dict) -> bool:
        """Which FineTuneJob watch events call for a pass (level-based: the pass reads the rest).

        The listing (at start-up, or after the watch lost its place) for a job this process has had no pass over, or
        one still unfinished; and anything the operator has not answered yet: a new object (no phase) or a spec change
        (generation ahead of status.observedGeneration). A finished job it knows, listed again, calls for nothing: a
        history of finished jobs costs no pass.
        Status-only changes (the operator's own writes, the trainer's progress reports) do not, unless they touched
        the operator's keys or reported a result outside the job's output root (anyone with the trainer's token can
        patch the whole status: the pass puts it right), or brought a memory plan (status.plan) the operator has not
        told as an Event yet.
        """
        metadata = ftj.get("metadata") or {}
        if kind_of_event == "DELETED" or metadata.get("deletionTimestamp"):
            return False
        listed = kind_of_event == watches.LISTED
        if listed and not self.knows(ftj):
            return True
        stored = ftj.get("status") or {}
        if not stored.get("phase") or metadata.get("generation") != stored.get("observedGeneration"):
            return True
        if listed and stored.get("phase") not in status.FINISHED_PHASES:
            return True
        return self.status_disagrees(ftj) or self.plan_unannounced(ftj)

    def enqueue(self, namespace: str, name: str, body: dict | None = None, urgent: bool = True) -> None:
        """Ask for a pass over one FineTuneJob (a watch event: urgent; the resync, a wake-up: not).

        `body`: the FineTuneJob as a watch event just carried it. It saves a GET, but only for an object
        this operator has not written a status for yet: after a write of ours, a watched copy can be older
        than what we wrote, so it is read again.
        """
        key = (namespace, name)
        if body is not None:
            self._bodies[key] = body
        self.queue.add(key, urgent=urgent)

    def status_disagrees(self, ftj: dict) -> bool:
        """Whether someone else changed the operator's keys of this job's status since the operator wrote them, or
        reported a result outside the job's output root (a watch event's copy, a listed one)."""
        meta = ftj.get("metadata") or {}
        record = self._records.get((meta.get("namespace"), meta.get("name")))
        if record is None:
            return False
        stored = ftj.get("status") or {}
        return status.canonical(stored) != record.status or bool(
            record.root and status.untrusted_results(stored, record.root)
        )

    async def reconcile(self, namespace: str, name: str, body: dict | None = None) -> str | None:
        """Queue a pass over one FineTuneJob and wait for it; returns its phase (None = gone), or raises
        what the pass raised (the queue retries it as well). Needs the workers running (`start`)."""
        waiter = asyncio.get_running_loop().create_future()
        self._callers.setdefault((namespace, name), []).append(waiter)
        self.enqueue(namespace, name, body)
        return await waiter

    async def _process(self, key: Key) -> None:
        """One pass, on a slot the queue handed out with the key."""
        namespace, name = key
        callers = self._callers.pop(key, ())  # those who asked after this point wait for the next pass
        body = self._bodies.pop(key, None)
        if body is not None and key in self._records:
            body = None
        started = time.monotonic()
        try:
            phase = await self._reconcile(namespace, name, body)
        except Exception as err:
            await self._post_unposted(key)
            self.metrics.reconcile_errors.labels(reason=type(err).__name__).inc()
            delay = self.queue.add_rate_limited(key, cap=TRANSIENT_RETRY_MAX_SECONDS if transient(err) else None)
            logs.action(
                namespace,
                name,
                "ReconcileError",
                f"the pass failed, retrying in {delay:.0f} s: {describe(err)}",
                level=logging.WARNING,
            )
            for caller in callers:
                if not caller.done():
                    caller.set_exception(err)
        else:
            if self._unposted.get(key):
                # The Events wait behind the other jobs' Jobs and statuses in a burst; out here, the pass holds only
                # them meanwhile (not _reconcile's spec, Job and job), so that thousands of waiting passes stay small.
                await self.queue.defer(key, behind_deferred=True)
                await self._post_unposted(key)
            self.queue.forget(key)
            self.metrics.set_phase(namespace, name, phase)
            if phase is None or phase in status.FINISHED_PHASES:
                self._unfinished.discard(key)
            else:
                self._unfinished.add(key)
            for caller in callers:
                if not caller.done():
                    caller.set_result(phase)
        finally:
            self._unposted.pop(key, None)  # a cancelled pass (the operator stops) posts nothing more
            self._primed.pop(key, None)  # read by this pass, or stale by now
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            self.queue.done(key)
            for caller in callers:
                if not caller.done():  # the pass was cancelled (the operator stops)
                    caller.cancel()

    def _trusted(self, key: Key, stored: dict) -> tuple[dict, bool]:
        """The operator's keys of a job's status as the operator wrote them (its record), and whether they come
        from its record. Without one (this process has not written it yet: a new job, or after a restart), the
        stored status is all there is."""
        record = self._records.get(key)
        if record is None:
            return status.operator_part(stored), False
        return record.operator_status(), True

    async def _reconcile(self, namespace: str, name: str, body: dict | None) -> str | None:
        key = (namespace, name)
        ftj = body if body is not None else await self.kube.get(KIND, namespace, name)
        if ftj is None or ftj["metadata"].get("deletionTimestamp"):
            self._forget(key)
            if self._records.pop(key, None) is not None:
                logs.action(
                    namespace,
                    name,
                    "Deleted",
                    "the FineTuneJob was deleted; the garbage collector removes "
                    "its Job and the other objects made for it (the output in storage is kept)",
                )
            return None  # the garbage collector removes the children (ownerReferences)
        uid = ftj["metadata"]["uid"]
        stored = ftj.get("status") or {}
        trusted, recorded = self._trusted(key, stored)
        view = {**ftj, "status": trusted}  # the job with the operator's own idea of its status
        now = status.now_rfc3339()
        try:
            written = parse_spec(ftj.get("spec"), name=name)  # parsed once a pass: pydantic is a tenth of the CPU
            spec = builders.resolve_written(written, self.config)
        except SpecError as err:
            outcome = status.compute_invalid(view, [str(p) for p in err.problems], now)
            await self._write_status(ftj, outcome)
            return outcome.phase
        root = builders.output_root(spec, namespace, name, uid)
        notes = [str(n) for n in notices(written)]  # settings of the valid spec that will not take effect
        job = None
        if trusted.get("phase") in status.FINISHED_PHASES and not recorded and trusted.get("jobName"):
            # A finished phase this process never wrote: after a restart, or a forgery. A Job of ours still at work
            # says which.
            job = await self._read_job(key, builders.job_name(name))
            if (
                job is not None
                and _owned_by(job, uid)
                and not _job_finished(job)
                and not job["metadata"].get("deletionTimestamp")
            ):
                logs.action(
                    namespace,
                    name,
                    "StatusRestored",
                    f"the status says phase {trusted['phase']}, but its Job "
                    "is still at work: the phase is taken from the Job again",
                    level=logging.WARNING,
                )
                trusted = {"jobName": trusted["jobName"]}
                view = {**ftj, "status": trusted}
            else:
                job = None
        generation = ftj["metadata"].get("generation")
        if trusted.get("phase") in status.FINISHED_PHASES:
            if (
                trusted["phase"] == Phase.FAILED
                and trusted.get("observedGeneration") != generation
                and status.phase_reason(trusted)[1] in REOPENABLE
            ):
                # A spec edit since: a raised backoffLimit or activeDeadlineSeconds runs the job again.
                reopened = await self._reopen(ftj, spec, view, root, now, notes)
                if reopened is not None:
                    return reopened
            # Every edit is observed (GitOps tools wait for observedGeneration); the job stays as it ended, but for
            # ttlSecondsAfterFinished, which _expire reads from the spec.
            await self._write_status(ftj, status.Outcome(status.observe_generation(trusted, generation)), root=root)
            await self._expire(ftj, spec, trusted)
            return trusted["phase"]
        # The platform's policy, before anything is created (a job already running keeps the rules it started under).
        denied = [] if trusted.get("jobName") else policy.check(self.config, ftj, spec)
        if denied:
            outcome = status.compute_invalid(view, [str(v) for v in denied], now, reason=Reason.POLICY_DENIED)
            await self._write_status(ftj, outcome)
            return outcome.phase
        try:
            # A FineTuneJob the operator never wrote a status for has no Job yet, almost always: go straight to
            # creating (an existing one, after a restart mid-reconcile, is adopted on AlreadyExists).
            if job is None and trusted.get("jobName"):
                job = await self._read_job(key, builders.job_name(name))
            if job is not None:
                self._check_owner(job, ftj)
                if job["metadata"].get("deletionTimestamp"):
                    # The Job is going: the operator ended its attempt (its pods go first, then the Job), or someone
                    # deleted it. Its DELETED event brings the pass that makes the next one.
                    if trusted.get("phase"):
                        await self._write_status(
                            ftj, status.Outcome(status.observe_generation(trusted, generation)), root=root
                        )
                    return trusted.get("phase")
                job = await self._propagate(ftj, spec, job)
            else:
                job = await self._create_children(ftj, spec, trusted)
        except ChildRejected as err:
            return await self._reject(ftj, view, spec, str(err), root)
        except modelcache.Waiting as wait:  # no Job before the job's model cache entry is complete
            observed = status.Observed(
                Phase.PENDING, Reason.WAITING_FOR_MODEL_CACHE, str(wait), trusted.get("attempts") or 0
            )
            outcome = status.compute(view, observed, trusted.get("jobName"), now, notices=notes)
            await self._write_status(ftj, outcome, root=root)
            return outcome.phase
        except modelcache.Refused as err:
            observed = status.Observed(Phase.FAILED, Reason.USER_ERROR, str(err), trusted.get("attempts") or 0, now)
            outcome = status.compute(view, observed, trusted.get("jobName"), now, notices=notes)
            await self._write_status(ftj, outcome, root=root)
            await self._after_finish(ftj, spec, outcome.status)
            return outcome.phase
        except ResumeSourceMissing as err:
            observed = status.Observed(
                Phase.FAILED, Reason.RESUME_SOURCE_NOT_FOUND, str(err), trusted.get("attempts") or 0, now
            )
            outcome = status.compute(view, observed, trusted.get("jobName"), now, notices=notes)
            await self._write_status(ftj, outcome, root=root)
            await self._after_finish(ftj, spec, outcome.status)
            return outcome.phase
        created = job.pop("_created", False)
        pods = [] if created else await self._read_pods(key, job)  # a Job created this moment has no pods yet
        if pods:
            try:
                await self._grant_reporter(ftj, spec)
            except ChildRejected as err:
                return await self._reject(ftj, view, spec, str(err), root)
        observed = status.observe(
            job,
            pods,
            nodes=spec.nodes,
            spec_suspend=spec.suspend,
            queue_name=spec.queue_name,
            backoff_limit=spec.backoff_limit,
            active_deadline_seconds=spec.active_deadline_seconds,
            queue_problem=await self._queue_problem(job, spec),
        )
        outcome = status.compute(view, observed, job["metadata"]["name"], now, notices=notes)
        if created or not trusted.get("jobName"):  # also a Job this operator made in a pass that failed after
            outcome = status.announce_job(outcome, job["metadata"]["name"], recreated=bool(trusted.get("jobName")))
        await self._write_status(ftj, outcome, root=root)
        if observed.next is not None:  # the attempt ended; the status says so before its Job goes
            await self._start_next_attempt(ftj, spec, observed.next, job)
        await self._announce_plan(ftj)
        if outcome.phase in status.FINISHED_PHASES:
            await self._after_finish(ftj, spec, outcome.status)
        return outcome.phase

    # ------------------------------------------------------------------------------------- attempts

    async def _read_job(self, key: Key, job_name: str) -> dict | None:
        """The job's Job as the start-up listing brought it, if nothing has happened to it since; else read now."""
        primed = self._primed.get(key)
        if primed is not None and "Job" in primed["listed"]:
            if primed["job"] is None or primed["job"]["metadata"]["name"] == job_name:
                return primed["job"]  # None: the listing had no Job of the job's
        return await self.kube.get("Job", key[0], job_name)

    async def _read_child(self, key: Key, kind: str, name: str) -> dict | None:
        """One of the job's children: its Job (_read_job), or another (OTHER_CHILDREN) from the start-up listing of
        its kind (only what tells its owners), else read now."""
        if kind == "Job":
            return await self._read_job(key, name)
        primed = self._primed.get(key)
        if primed is not None and kind in primed["listed"]:
            return primed["children"].get((kind, name))
        return await self.kube.get(kind, key[0], name)

    async def _read_pods(self, key: Key, job: dict) -> list[dict]:
        """The pods of `job` (the key's FineTuneJob's): from the start-up listing, if none of the job's has changed
        since; else listed now."""
        primed = self._primed.get(key)
        if primed is not None and "Pod" in primed["listed"]:
            pods = primed["pods"]
        else:
            pods = await self.kube.list("Pod", key[0], builders.selector(key[1]))
        return [p for p in pods if _owned_by(p, job["metadata"]["uid"])]

    async def _start_next_attempt(self, ftj: dict, spec, tally: builders.Tally, job: dict | None) -> None:
        """End an attempt and let the next one start, every node of it: record the tally the next Job starts from on
        the job's ConfigMap, then delete the Job with foreground propagation, so that it is gone only once all its pods
        are (the next attempt's pods never meet the old ones at the rendezvous, nor wait for their GPUs). Its DELETED
        event brings the pass that makes the next Job (_create_children reads the tally back). Without a Job (a
        re-opened job whose objects its TTL removed), that pass is queued here.

        JobSet restarts its child Jobs the same way (kubernetes-sigs/jobset pkg/controllers/jobset_controller.go
        deletes them with foreground propagation and makes them again under the same names)."""
        meta = ftj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        annotations = tally.configmap_annotation()
        try:
            await self.kube.patch(
                "ConfigMap", namespace, builders.configmap_name(name), {"metadata": {"annotations": annotations}}
            )
        except ApiException as err:
            if err.status in REFUSED:
                raise ChildRejected.refused(
                    err, "patch", "ConfigMap", namespace, builders.configmap_name(name)
                ) from None
            if err.status != 404:
                raise
            configmap = builders.build_configmap(ftj)
            configmap["metadata"]["annotations"] = annotations
            made = await self._create_or_adopt(configmap, ftj)
            if not made.get("_created"):  # made meanwhile by someone else's pass: write the tally on it
                await self.kube.patch(
                    "ConfigMap", namespace, builders.configmap_name(name), {"metadata": {"annotations": annotations}}
                )
        if job is None:
            self.enqueue(namespace, name, urgent=False)
            return
        if await self.kube.delete(
            "Job", namespace, job["metadata"]["name"], propagation="Foreground", uid=job["metadata"]["uid"]
        ):
            logs.action(
                namespace,
                name,
                "AttemptEnded",
                f"deleting Job {job['metadata']['name']} and its pods; the "
                f"next attempt starts in a new Job once they are gone ({tally.reason})",
                uid=meta["uid"],
            )

    async def _reopen(self, ftj: dict, spec, view: dict, root: str, now: str, notes: list[str]) -> str | None:
        """A job that failed for its backoffLimit or its deadline, whose spec was edited since: when the spec now
        allows more, it runs again (phase Pending, reason Reopened; the next attempt resumes from the newest complete
        checkpoint, in the same output root, and attempts are counted on). None: it stays as it ended."""
        meta = ftj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        trusted = view["status"]
        job = await self._read_job((namespace, name), trusted.get("jobName") or builders.job_name(name))
        if job is not None and (not _owned_by(job, meta["uid"]) or job["metadata"].get("deletionTimestamp")):
            job = None
        failed = job and (status.condition_true(job, "Failed") or status.condition_true(job, "FailureTarget"))
        if failed:
            pods = await self._read_pods((namespace, name), job)
            observed = status.ended_attempt(
                job,
                pods,
                failed,
                nodes=spec.nodes,
                attempts=status.count_attempts(job, spec.nodes, pods),
                backoff_limit=spec.backoff_limit,
                active_deadline_seconds=spec.active_deadline_seconds,
                reopening=True,
            )
        else:
            # No Job to read (ttlSecondsAfterFinished removed it): only the status is left.
            job = None
            observed = status.reopened_from_status(
                trusted, backoff_limit=spec.backoff_limit, active_deadline_seconds=spec.active_deadline_seconds
            )
        if observed.next is None:
            return None
        outcome = status.compute(view, observed, trusted.get("jobName"), now, notices=notes)
        await self._write_status(ftj, outcome, root=root)
        await self._start_next_attempt(ftj, spec, observed.next, job)
        return outcome.phase

    async def _announce_plan(self, ftj: dict) -> None:
        """The Planned Event, once per plan the trainer reports (status.plan): what the trainer chose, in words. Its
        name is the plan's digest, so an operator restarted meanwhile posts it once all the same."""
        meta = ftj["metadata"]
        key = (meta["namespace"], meta["name"])
        plan = (ftj.get("status") or {}).get("plan")
        digest = _digest(plan) if plan else ""
        if not digest or self._announced.get(key) == digest:
            return
        text = status.plan_text(plan)
        event_name = f"{meta['name']}.planned-{digest[:12]}"
        # A plan this process has not told of may have been told before a restart: looked up (in the start-up listing
        # of Planned Events, or asked for), not posted again.
        if text and (key in self._announced or not await self._event_exists(key, event_name)):
            await self.event(ftj, "Normal", Reason.PLANNED, text, name=event_name)
        self._announced[key] = digest

    async def _event_exists(self, key: Key, event_name: str) -> bool:
        primed = self._primed.get(key)
        if primed is not None and "Event" in primed["listed"]:
            return event_name in primed["planned"]
        return await self.kube.get("Event", key[0], event_name) is not None

    def plan_unannounced(self, ftj: dict) -> bool:
        """Whether a watch event's copy of an unfinished job carries a plan the operator has not told as an Event."""
        meta = ftj.get("metadata") or {}
        stored = ftj.get("status") or {}
        plan = stored.get("plan")
        if not plan or stored.get("phase") in status.FINISHED_PHASES:
            return False
        return self._announced.get((meta.get("namespace"), meta.get("name"))) != _digest(plan)

    async def _resolve_resume_from(self, ftj: dict) -> str:
        """spec.resumeFrom naming a FineTuneJob of the namespace: that job's output root, which the trainer resumes
        from (its newest complete checkpoint). ResumeSourceMissing when there is no such job, or it has no complete
        checkpoint yet (status.checkpoints lists only complete ones, under its output root)."""
        meta = ftj["metadata"]
        namespace, source_name = meta["namespace"], ftj["spec"]["resumeFrom"]
        if source_name == meta["name"]:
            raise ResumeSourceMissing(
                f"spec.resumeFrom names this FineTuneJob itself ({source_name!r}): name another "
                "FineTuneJob of the namespace, or a checkpoint URI"
            )
        source = await self.kube.get(KIND, namespace, source_name)
        if source is None or source["metadata"].get("deletionTimestamp"):
            raise ResumeSourceMissing(
                f"spec.resumeFrom: there is no FineTuneJob {source_name!r} in namespace "
                f"{namespace} (kubectl get ftj -n {namespace} lists them): name one that has a "
                "checkpoint, or a checkpoint URI, in a new FineTuneJob"
            )
        try:
            source_spec = builders.resolve_spec(source.get("spec"), self.config, source_name)
        except SpecError:
            raise ResumeSourceMissing(
                f"spec.resumeFrom: FineTuneJob {source_name!r} has an invalid spec and never "
                "trained, so it has no checkpoint"
            ) from None
        source_root = builders.output_root(source_spec, namespace, source_name, source["metadata"]["uid"])
        checkpoints = [
            c
            for c in (source.get("status") or {}).get("checkpoints") or []
            if isinstance(c, dict) and status.under_root(c.get("uri"), source_root)
        ]
        if not checkpoints:
            raise ResumeSourceMissing(
                f"spec.resumeFrom: FineTuneJob {source_name!r} has no complete checkpoint yet "
                "(its status.checkpoints is empty): create this job again once it has one, or "
                "name a checkpoint URI"
            )
        return source_root

    async def _reject(self, ftj: dict, view: dict, spec, message: str, root: str) -> str:
        """ChildRejected: the job fails, saying what the API server said. A Job of this one still at work is
        deleted: a Failed job runs nothing."""
        meta = ftj["metadata"]
        job = await self.kube.get("Job", meta["namespace"], builders.job_name(meta["name"]))
        job_name = None
        if job is not None and _owned_by(job, meta["uid"]):
            job_name = job["metadata"]["name"]
            if not _job_finished(job):
                await self.kube.delete("Job", meta["namespace"], job_name)
        now = status.now_rfc3339()
        attempts = (view.get("status") or {}).get("attempts") or 0
        observed = status.Observed(Phase.FAILED, Reason.CHILD_REJECTED, message, attempts, now)
        outcome = status.compute(view, observed, job_name, now)
        await self._write_status(ftj, outcome, root=root)
        await self._after_finish(ftj, spec, outcome.status)
        return outcome.phase

    # ------------------------------------------------------------------------------------- children

    @staticmethod
    def _check_owner(obj: dict, ftj: dict) -> None:
        """An object of a child's name that is not this job's is reported, never adopted; one an earlier
        FineTuneJob of the same name left is waited for (the garbage collector is removing it)."""
        meta = ftj["metadata"]
        if _owned_by(obj, meta["uid"]):
            return
        kind, name = obj.get("kind") or "object", obj["metadata"]["name"]
        if _left_by_namesake(obj, meta["name"], meta["uid"]) or obj["metadata"].get("deletionTimestamp"):
            raise RuntimeError(
                f"{kind} {name} belongs to an earlier FineTuneJob named {meta['name']}; waiting for "
                "the garbage collector to remove it"
            )
        raise ChildRejected(
            f"{kind} {meta['namespace']}/{name} already exists and was not made for this "
            f"FineTuneJob; kubetune does not take over objects it did not make: delete or rename "
            f"that {kind}, or give the FineTuneJob another name"
        )

    async def _create_or_adopt(self, obj: dict, ftj: dict) -> dict:
        """The object as created (what was sent: the answer is not read, a Job's is as long as its pod template and
        was a twentieth of a burst's CPU; no pass reads what the API server adds to a new object), or the existing
        one of that name, when it is this FineTuneJob's."""
        meta = obj["metadata"]
        try:
            await self.kube.create(obj, read=False)
            obj["_created"] = True  # local marker, never sent back
            return obj
        except ApiException as err:
            if err.status in REFUSED:
                raise ChildRejected.refused(err, "create", obj["kind"], meta["namespace"], meta["name"]) from None
            if err.status != 409:
                raise
            if obj["kind"] == "Secret":  # never read (the operator may not): its name carries this job's uid
                if already_exists(err):
                    return obj
                raise
        existing = await self.kube.get(obj["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted in between: the next reconcile creates it
            raise RuntimeError(f"{obj['kind']} {meta['name']} vanished while being adopted")
        existing.setdefault("kind", obj["kind"])
        self._check_owner(existing, ftj)
        return existing

    async def _create_children(self, ftj: dict, spec, trusted: dict) -> dict:
        meta = ftj["metadata"]
        names_a_job = bool(spec.resume_from) and "://" not in spec.resume_from
        # The first Job resolves spec.resumeFrom (before anything is made: a missing source fails the job cleanly);
        # later ones read what it resolved to from the ConfigMap.
        resume_from = await self._resolve_resume_from(ftj) if names_a_job and not trusted.get("jobName") else ""
        for obj in builders.build_prerequisites(ftj, spec, resume_from):
            await self._create_or_adopt(obj, ftj)
        configmap = None
        if trusted.get("jobName"):  # a Job before this one: the job's ConfigMap carries what the next one starts from
            configmap = await self.kube.get("ConfigMap", meta["namespace"], builders.configmap_name(meta["name"]))
            if configmap is not None and not _owned_by(configmap, meta["uid"]):
                configmap = None
        if names_a_job and not resume_from:
            resume_from = ((configmap or {}).get("metadata", {}).get("annotations") or {}).get(
                builders.ANNOTATION_RESUME_FROM
            ) or await self._resolve_resume_from(ftj)
        earlier = builders.Tally()
        if trusted.get("jobName"):
            # We made a Job before and it is gone. Either the operator ended its attempt (the ConfigMap holds the
            # tally the next one starts from, and the status has counted no attempt since), or someone deleted it:
            # run again all the same, the trainer resumes.
            planned = builders.Tally.of_configmap(configmap)
            if planned is not None and planned.attempts >= (trusted.get("attempts") or 0):
                earlier = planned
            else:
                earlier = builders.Tally(
                    trusted.get("attempts") or 0, planned.failures if planned else 0, planned.seconds if planned else 0
                )
                await self.event(
                    ftj,
                    "Warning",
                    Reason.JOB_MISSING,
                    f"Job {meta['name']} was deleted while the FineTuneJob was unfinished; recreating it "
                    "(training resumes from the newest checkpoint)",
                )
        # The shared model cache: the complete entry the pods read (raises modelcache.Waiting until there is one).
        cached = await self.modelcache.prepare(ftj, spec, trusted)
        async with self._namespace_lock(meta["namespace"]):
            order = self._queue_order(ftj)
            held = (
                not spec.suspend
                and not spec.queue_name
                and await self._over_cap(meta["namespace"], meta["name"], order)
            )
            job = builders.build_job(
                ftj,
                spec,
                self.config,
                suspend=builders.initial_suspend(spec) or held,
                held_by_namespace_limit=held,
                queue_order=order,
                earlier=earlier,
                resume_from=resume_from,
            )
            modelcache.wire(job, cached, self.config.model_cache)
            made = (meta["namespace"], job["metadata"]["name"])
            self._made_jobs.add(made)
            try:
                job = await self._create_or_adopt(job, ftj)
            finally:
                if not job.get("_created"):
                    self._made_jobs.discard(made)
        if job.get("_created"):
            self._granted[(meta["namespace"], meta["name"])] = False
            job = _lean_job(job)  # the pod template is never read again, and a burst's deferred passes hold their Jobs
        if spec.suspend and spec.queue_name:
            # Kueue makes the Job's Workload in a moment; it is deactivated then, before Kueue can admit it.
            self.queue.add_after((meta["namespace"], meta["name"]), KUEUE_WORKLOAD_WAIT_SECONDS)
        # The Job exists, so its pods can start. The rest (the status write and JobCreated) waits while other new
        # FineTuneJobs wait for their Jobs.
        await self.queue.defer((meta["namespace"], meta["name"]))
        return job

    async def _grant_reporter(self, ftj: dict, spec) -> None:
        """The reporter's account, token Secret, Role and RoleBinding (builders.build_reporter_grant), once the job's
        pods exist (a job waiting in a queue has none). Made once per job: a job whose grant this process did not make
        (after a restart) is looked up, not written; the RoleBinding is made last, so it stands for all four."""
        meta = ftj["metadata"]
        key = (meta["namespace"], meta["name"])
        known = self._granted.get(key)
        if known:
            return
        if known is None:
            binding = await self._read_child(key, "RoleBinding", builders.reporter_name(meta["name"]))
            if binding is not None and _owned_by(binding, meta["uid"]):
                self._granted[key] = True
                return
        for obj in builders.build_reporter_grant(ftj, spec):
            await self._create_or_adopt(obj, ftj)
        self._granted[key] = True

    @contextlib.asynccontextmanager
    async def _namespace_lock(self, namespace: str) -> AsyncIterator[None]:
        """Counting a namespace's running Jobs and then creating or unsuspending one is one step."""
        lock, users = self._namespace_locks.get(namespace) or (asyncio.Lock(), 0)
        self._namespace_locks[namespace] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._namespace_locks[namespace]
            if users == 1:
                del self._namespace_locks[namespace]
            else:
                self._namespace_locks[namespace] = (lock, users - 1)

    @staticmethod
    def _queue_order(ftj: dict) -> str:
        """A job's place in its namespace's queue for the cap (ANNOTATION_QUEUE_ORDER): its creation time, then (for
        jobs created within the same second) when the operator asked."""
        return f"{ftj['metadata'].get('creationTimestamp') or ''}/{status.now_rfc3339_micro()}"

    async def _over_cap(self, namespace: str, name: str, order: str) -> bool:
        """Whether the namespace cap holds the Job `name`: the Jobs running in the namespace, and those the cap holds
        that came before it (their FineTuneJobs were created earlier), take every place. So held jobs start in
        creation order, and a new one never takes the place an older held one waits for."""
        cap = self.config.max_running_per_namespace
        if cap <= 0:
            return False
        running = ahead = 0
        for job in await self.kube.list("Job", namespace, builders.MANAGED_SELECTOR):
            meta = job["metadata"]
            annotations = meta.get("annotations") or {}
            if meta["name"] == name:
                continue
            if annotations.get(builders.ANNOTATION_HELD) == "true":
                ahead += _queue_order_of(job) < order
            elif not (job.get("spec") or {}).get("suspend") and (not _job_finished(job) or _being_replaced(job)):
                running += 1
        return running + ahead >= cap

    async def _propagate(self, ftj: dict, spec, job: dict) -> dict:
        """Apply the mutable spec fields (suspend, backoffLimit, activeDeadlineSeconds) to the Job."""
        if _job_finished(job):
            return job
        patch_spec = builders.job_spec_updates(spec, job)
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        async with self._namespace_lock(namespace):
            suspend, annotations = await self._suspension(ftj, spec, job)
            if suspend is not None and suspend != bool((job.get("spec") or {}).get("suspend")):
                patch_spec["suspend"] = suspend
            if not patch_spec and not annotations:
                return job
            patch: dict = {}
            if patch_spec:
                patch["spec"] = patch_spec
            if annotations:
                patch["metadata"] = {"annotations": annotations}
            try:
                return await self.kube.patch("Job", namespace, name, patch)
            except ApiException as err:
                if err.status in REFUSED:
                    raise ChildRejected.refused(err, "patch", "Job", namespace, name) from None
                raise

    async def _suspension(self, ftj: dict, spec, job: dict) -> tuple[bool | None, dict]:
        """Who holds the Job, and what that asks of it: the new `spec.suspend` (None: leave it as it is) and the
        operator's annotations to change. One party decides at a time, so nothing is patched back and forth:

        - Kueue, for a Job in a LocalQueue (its label, set by spec.queueName or by Kueue's webhook) or one Kueue
          keeps a Workload for (manageJobsWithoutQueueName): the operator never sets such a Job's suspend; for
          spec.suspend it deactivates the Workload (Kueue then stops the Job) and on resume reactivates only a
          Workload it deactivated itself.
        - the user (spec.suspend) or the namespace cap, for the others; the operator unsuspends only a Job it
          suspended itself (annotations ANNOTATION_SUSPENDED_BY_USER, ANNOTATION_HELD), never one someone else did.
        """
        meta = ftj["metadata"]
        current = bool((job.get("spec") or {}).get("suspend"))
        annotations = job["metadata"].get("annotations") or {}
        marked = annotations.get(builders.ANNOTATION_SUSPENDED_BY_USER) == "true"
        held = annotations.get(builders.ANNOTATION_HELD) == "true"
        ours = {
            builders.ANNOTATION_SUSPENDED_BY_USER: marked,
            builders.ANNOTATION_HELD: held,
            builders.ANNOTATION_QUEUE_ORDER: bool(annotations.get(builders.ANNOTATION_QUEUE_ORDER)),
        }
        changes: dict = {}

        def keep(*wanted: str) -> None:  # the operator's annotations that stay; the others go
            for annotation, present in ours.items():
                if present and annotation not in wanted:
                    changes[annotation] = None

        queued = bool(kueue.queue_of(job))
        # Kueue's Workload of the Job, where it decides something: to deactivate it (suspend) or reactivate it
        # (resume), and to tell a Job Kueue manages without a queue label from one nobody manages.
        if (
            (spec.suspend or current)
            if queued
            else ((spec.suspend and not current) or (current and not marked and not held))
        ):
            workload = await self.kueue.workload(job)
        else:
            workload = None
        if queued or workload is not None:
            keep()
            if workload is None:  # Kueue has not made it yet: look again in a moment
                if spec.suspend:
                    self.queue.add_after((meta["namespace"], meta["name"]), KUEUE_WORKLOAD_WAIT_SECONDS)
            elif spec.suspend and kueue.is_active(workload):
                await self.kueue.set_active(job, workload, False)
                logs.action(
                    meta["namespace"],
                    meta["name"],
                    Reason.SUSPENDED_BY_USER,
                    f"deactivated Kueue Workload {workload['metadata']['name']} (Kueue stops the Job)",
                    uid=meta["uid"],
                )
            elif not spec.suspend and not kueue.is_active(workload) and kueue.deactivated_by_us(workload):
                await self.kueue.set_active(job, workload, True)
                logs.action(
                    meta["namespace"],
                    meta["name"],
                    Reason.RESUMED,
                    f"reactivated Kueue Workload {workload['metadata']['name']} (Kueue admits it again)",
                    uid=meta["uid"],
                )
            return None, changes
        if spec.suspend:
            if not current or held:
                changes[builders.ANNOTATION_SUSPENDED_BY_USER] = "true"
                keep(builders.ANNOTATION_SUSPENDED_BY_USER)
                return True, changes
            return None, changes  # suspended by us already, or by someone else: it stays so either way
        if not current:
            keep()
            return None, changes
        if not marked and not held:
            return None, changes  # someone else suspended it: theirs to unsuspend
        order = annotations.get(builders.ANNOTATION_QUEUE_ORDER) or self._queue_order(ftj)
        if await self._over_cap(meta["namespace"], job["metadata"]["name"], order):
            if not held:
                changes[builders.ANNOTATION_HELD] = "true"
            if not ours[builders.ANNOTATION_QUEUE_ORDER]:
                changes[builders.ANNOTATION_QUEUE_ORDER] = order
            keep(builders.ANNOTATION_HELD, builders.ANNOTATION_QUEUE_ORDER)
            return True, changes
        keep()
        return False, changes

    async def _queue_problem(self, job: dict, spec) -> str:
        """Why Kueue cannot admit a Job waiting in a LocalQueue: the queue is missing, or Kueue is. "" otherwise
        (also for Jobs no LocalQueue holds)."""
        queue = kueue.queue_of(job)
        annotations = job["metadata"].get("annotations") or {}
        if (
            not queue
            or spec.suspend
            or not (job.get("spec") or {}).get("suspend")
            or annotations.get(builders.ANNOTATION_HELD) == "true"
        ):
            return ""
        return (await self.kueue.local_queue(job["metadata"]["namespace"], queue)).problem

    # ------------------------------------------------------------------------------------- status & events

    async def _write_status(self, ftj: dict, outcome: status.Outcome, root: str = "") -> None:
        """Write the operator's keys where they differ from what is stored, and take back results outside the
        output root; then post the outcome's Events."""
        meta = ftj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = (namespace, name)
        stored = ftj.get("status") or {}
        wanted = bounds.refit(bounds.fit_status(outcome.status), self._refused_bounds)
        patch = status.status_patch(stored, wanted)
        previous = self._records.get(key)
        if patch and previous is not None and status.canonical(stored) != previous.status:
            logs.action(
                namespace,
                name,
                "StatusRestored",
                "someone else changed the operator's part of the status "
                f"({', '.join(sorted(patch))}); it is written back from the Job's and its pods' state",
                level=logging.WARNING,
                uid=meta["uid"],
            )
        taken_back = status.untrusted_results(stored, root) if root else {}
        if taken_back:
            logs.action(
                namespace,
                name,
                "ResultRejected",
                f"status {', '.join(sorted(taken_back))} named URIs outside "
                f"the job's output root {root}; they are removed",
                level=logging.WARNING,
                uid=meta["uid"],
            )
            patch |= taken_back
        record = Record(status.canonical(wanted), root)
        if patch:
            # Recorded before the write goes out: its own watch event may come back before the answer does.
            self._records[key] = record
            try:
                written = await self._patch_status(ftj, patch)
            except BaseException:
                if previous is None:
                    self._records.pop(key, None)
                else:
                    self._records[key] = previous
                raise
            if isinstance(written, dict) and "status" in written:  # what the API server stored, to the letter
                record = Record(status.canonical(written["status"]), root)
        self._records[key] = record
        if outcome.events:  # posted at the end of the pass (_process), or before the pass's next Event
            subject = {"metadata": {field: meta.get(field) for field in ("namespace", "name", "uid")}}
            self._unposted.setdefault(key, []).extend((subject, event) for event in outcome.events)

    async def _patch_status(self, ftj: dict, patch: dict) -> dict:
        """A status merge patch; when the API server refuses it (422), logged and sent again cut to the bounds its
        answer names, else in a minimal form (short messages), so that phase and conditions still get through."""
        meta = ftj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            return await self.kube.patch(KIND, namespace, name, {"status": patch}, subresource="status")
        except ApiException as err:
            if err.status != 422:
                raise
            refused = err
        logs.action(
            namespace,
            name,
            "StatusRefused",
            f"the API server refused the status write: {server_message(refused)}; sending it again in a form that fits",
            level=logging.WARNING,
            uid=meta["uid"],
        )
        learned = bounds.refused_bounds(refused.body)
        attempts = []
        if learned:
            self._refused_bounds.update(learned)
            attempts.append(bounds.refit(patch, self._refused_bounds))
        attempts.append(status.minimal(patch))
        for attempt in attempts:
            try:
                return await self.kube.patch(KIND, namespace, name, {"status": attempt}, subresource="status")
            except ApiException as err:
                if err.status != 422:
                    raise
                refused = err
        raise refused

    async def _post_kept(self, kept: list[tuple[dict, status.Event]]) -> None:
        for start in range(0, len(kept), STOP_EVENTS_AT_ONCE):
            await asyncio.gather(
                *(
                    self._post_event(subject, e.type, e.reason, e.message)
                    for subject, e in kept[start : start + STOP_EVENTS_AT_ONCE]
                )
            )

    async def _post_unposted(self, key: Key) -> None:
        for subject, event in self._unposted.pop(key, ()):
            await self._post_event(subject, event.type, event.reason, event.message)

    async def event(self, ftj: dict, kind: str, reason: str, message: str, name: str = "") -> None:
        """Post an Event on the FineTuneJob (kubectl describe tells the story) and log it, after those of the pass's
        status writes. `name`: an Event to post at most once (a second one of that name is refused, and nothing more
        is said)."""
        await self._post_unposted((ftj["metadata"]["namespace"], ftj["metadata"]["name"]))
        await self._post_event(ftj, kind, reason, message, name)

    async def _post_event(self, ftj: dict, kind: str, reason: str, message: str, name: str = "") -> None:
        meta = ftj["metadata"]
        logs.action(
            meta["namespace"],
            meta["name"],
            reason,
            message,
            level=logging.WARNING if kind == "Warning" else logging.INFO,
            uid=meta.get("uid"),
        )
        now = status.now_rfc3339()
        identity = {"name": name} if name else {"generateName": f"{meta['name']}."}
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {**identity, "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": kind,
            "reason": str(reason),
            "message": bounds.fit_text(message, 1024),  # events.k8s.io keeps a note to 1 KiB
            "source": {"component": "kubetune-operator"},
            "reportingComponent": "kubetune.dev/operator",
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(body, read=False)
        except ApiException as err:
            if not (name and err.status == 409):
                log.warning("could not post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], err)
        except Exception as err:  # an Event is worth a log line, never a failed reconcile
            log.warning("could not post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], err)

    # ------------------------------------------------------------------------------------- finished jobs

    async def _after_finish(self, ftj: dict, spec, new_status: dict) -> None:
        namespace = ftj["metadata"]["namespace"]
        self._announced.pop((namespace, ftj["metadata"]["name"]), None)
        if self.config.max_running_per_namespace > 0:
            await self.release_held(namespace)
        deadline = status.ttl_deadline(new_status, spec.ttl_seconds_after_finished)
        if deadline is not None:
            self.queue.add_after((namespace, ftj["metadata"]["name"]), deadline.timestamp() - time.time())

    async def _expire(self, ftj: dict, spec, operator_status: dict) -> None:
        """ttlSecondsAfterFinished: remove the children (never the FineTuneJob, never the output)."""
        deadline = status.ttl_deadline(operator_status, spec.ttl_seconds_after_finished)
        if deadline is None:
            return
        meta = ftj["metadata"]
        if deadline.timestamp() > time.time():
            self.queue.add_after((meta["namespace"], meta["name"]), deadline.timestamp() - time.time())
            return
        name = meta["name"]
        removed = False
        for kind, child in (
            ("Job", builders.job_name(name)),
            ("ConfigMap", builders.configmap_name(name)),
            ("Service", builders.service_name(name)),
            ("RoleBinding", builders.reporter_name(name)),
            ("Role", builders.reporter_name(name)),
            # The token controller deletes the account's token Secret with it (the operator never reads Secrets).
            ("ServiceAccount", builders.reporter_name(name)),
        ):
            existing = await self._read_child((meta["namespace"], name), kind, child)
            if existing is not None and _owned_by(existing, meta["uid"]):
                removed = await self.kube.delete(kind, meta["namespace"], child) or removed
        self._granted.pop((meta["namespace"], name), None)
        if removed:
            await self.event(
                ftj,
                "Normal",
                Reason.TTL_EXPIRED,
                f"removed the Job and its objects {spec.ttl_seconds_after_finished} s after the job "
                "finished (the output in storage is kept)",
            )

    async def release_held(self, namespace: str) -> None:
        """Queue the jobs held by the namespace cap, so the next ones start as running ones finish."""
        jobs = await self.kube.list("Job", namespace, builders.MANAGED_SELECTOR)
        for job in jobs:
            if (job["metadata"].get("annotations") or {}).get(builders.ANNOTATION_HELD) == "true":
                parent = (job["metadata"].get("labels") or {}).get(builders.LABEL_FTJ)
                if parent:
                    self.enqueue(namespace, parent, urgent=False)

    # ------------------------------------------------------------------------------------- workers & resync

    def start(self, watch: bool = False) -> None:
        """Start handing out passes, and the periodic resync, on the running loop (kopf's); with `watch`, the watches
        too: the FineTuneJobs', and the metadata-only ones of the operator's Jobs and pods (watches.py)."""
        self.loop = asyncio.get_running_loop()
        self._tasks = [
            self.loop.create_task(self._work_forever(), name="kubetune-workers"),
            self.loop.create_task(self._resync_forever(), name="kubetune-resync"),
            self.loop.create_task(self.modelcache.run_forever(), name="kubetune-model-cache"),
        ]
        if not watch:
            return
        # The watches hold their connections for as long as they run, and the listings must not wait behind a burst
        # of passes: a session of their own, so that the passes keep all concurrent_reconciles connections.
        namespaces = self.config.namespaces or (None,)
        self._watch_kube = Kube(self.kube.configuration, connections=3 * len(namespaces))
        for namespace in namespaces:
            self._tasks.append(self.loop.create_task(self._watch(namespace), name=f"kubetune-watch-{namespace or ''}"))

    async def _watch(self, namespace: str | None) -> None:
        """The watches of one namespace (None: of all).

        First the Jobs and pods are listed whole, the job's other children (OTHER_CHILDREN) by name and owner, and
        the Planned Events; then the FineTuneJobs, and each watch starts from its listing. So the first pass over each
        job (every job, at start-up) reads what it needs from what the listings brought (_primed), not from the API
        server: a restarted operator makes no call for a job whose state did not change, where it made two to seven.
        A watch event of a Job or pod drops what was primed for its job (child_changed), which is then read afresh.
        A listing that fails leaves its kind to be read as before (and the Jobs' and pods' watches to list for
        themselves)."""
        kube, listed_at = self._watch_kube, {}
        where = f"in {namespace}" if namespace else "cluster-wide"
        for kind in ("Job", "Pod", *OTHER_CHILDREN, "Event"):
            selector, fields = ("", PLANNED_EVENTS) if kind == "Event" else (builders.MANAGED_SELECTOR, "")
            accept = METADATA_LIST if kind in OTHER_CHILDREN else "application/json"
            prime = functools.partial(self._prime, kind)
            try:
                listed_at[kind] = await watches.list_all(kube, kind, namespace, selector, prime, fields, accept)
            except watches.FAILURES as err:
                log.warning("cannot list %ss %s: %s", kind, where, err)
                listed_at[kind] = ""
        # What a pass may take from the listings: what a listing that succeeded did not bring does not exist.
        complete = {kind for kind, version in listed_at.items() if version}
        listed: set[Key] | None = set()

        def finetunejob_listed(kind_of_event: str, ftj: dict) -> None:
            meta = ftj.get("metadata") or {}
            if not meta.get("deletionTimestamp"):  # one being deleted gets no pass to take what was kept for it
                key = (meta.get("namespace"), meta.get("name"))
                listed.add(key)
                self._primed_for(key)["listed"] = complete
            self.finetunejob_changed(kind_of_event, ftj)

        try:
            listed_at[KIND] = await watches.list_all(kube, KIND, namespace, "", finetunejob_listed)
        except watches.FAILURES as err:
            log.warning("cannot list FineTuneJobs %s: %s", where, err)
            listed_at[KIND], listed = "", None
        # No pass takes what was primed for a job not listed (a Job whose FineTuneJob is gone).
        for key in [k for k in self._primed if namespace in (None, k[0]) and (listed is None or k not in listed)]:
            del self._primed[key]
        children = [
            watches.watch_forever(
                kube,
                kind,
                namespace,
                builders.MANAGED_SELECTOR,
                functools.partial(self.child_changed, kind),
                on_relisted=self.children_relisted,
                listed_at=listed_at[kind],
            )
            for kind in ("Job", "Pod")
        ]
        await asyncio.gather(
            watches.watch_forever(
                kube,
                KIND,
                namespace,
                "",
                self.finetunejob_changed,
                metadata_only=False,
                on_listed=self.finetunejob_changed,
                listed_at=listed_at[KIND],
            ),
            *children,
        )

    def _primed_for(self, key: Key) -> dict:
        primed = self._primed.get(key)
        if primed is None:  # "listed": set when the FineTuneJobs are listed, nothing is taken from it before
            primed = self._primed[key] = {"job": None, "pods": [], "children": {}, "planned": set(), "listed": ()}
        return primed

    def _prime(self, kind: str, kind_of_event: str, child: dict) -> None:
        """A Job, pod, other child or Planned Event the start-up listings brought, kept for its FineTuneJob's first
        pass (_read_job, _read_pods, _read_child, _event_exists)."""
        meta = child.get("metadata") or {}
        if kind == "Event":
            parent = (child.get("involvedObject") or {}).get("name")
        else:
            parent = (meta.get("labels") or {}).get(builders.LABEL_FTJ)
        if not parent:
            return
        key = (meta.get("namespace"), parent)
        if kind == "Job":
            if meta.get("name") == builders.job_name(parent):  # the job's training Job (not a model cache's)
                self._primed_for(key)["job"] = _lean_job(child)
        elif kind == "Pod":
            self._primed_for(key)["pods"].append(_lean_pod(child))
        elif kind == "Event":
            self._primed_for(key)["planned"].add(meta.get("name"))
        else:  # what _owned_by reads of it
            owners = [{"uid": ref.get("uid")} for ref in meta.get("ownerReferences") or ()]
            self._primed_for(key)["children"][(kind, meta.get("name"))] = {"metadata": {"ownerReferences": owners}}

    def child_changed(self, kind: str, kind_of_event: str, child: dict) -> None:
        """A Job or pod of a FineTuneJob changed (its metadata): a pass over the job, but for the ADDED event of a Job
        this process has just made (the pass that made it wrote what there was to tell)."""
        meta = child.get("metadata") or {}
        parent = (meta.get("labels") or {}).get(builders.LABEL_FTJ)
        self._primed.pop((meta.get("namespace"), parent), None)
        made = (meta.get("namespace"), meta.get("name"))
        if kind == "Job" and kind_of_event == "ADDED" and made in self._made_jobs:
            self._made_jobs.discard(made)
            return
        if parent and meta.get("namespace"):
            self.enqueue(meta["namespace"], parent)

    def children_relisted(self) -> None:
        """A watch of the Jobs or pods lost its place (410) and listed again: a change in between (a Job that finished)
        came as no event. Every unfinished job gets a pass, those in a retry's backoff too (the resync leaves them to
        it, and a backoff grown to minutes would hide the change as long)."""
        for key in list(self._unfinished):
            self.queue.add(key, urgent=False)

    async def stop(self, post_events: bool = False) -> None:
        """Stop every pass and watch. `post_events`: then post the Events that the passes kept aside, before the
        connections close (a graceful stop: a restarted operator would not tell them again, the statuses they tell of
        being written); never after the Lease was lost, when nothing may be written."""
        self.queue.shutdown()
        kept = [entry for entries in self._unposted.values() for entry in entries] if post_events else []
        tasks = self._tasks + list(self._passes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if kept:
            try:
                await asyncio.wait_for(self._post_kept(kept), STOP_EVENTS_SECONDS)
            except TimeoutError:
                log.warning("stopping: %d Events the passes kept aside were not all posted in time", len(kept))
        await self.kube.close()
        if self._watch_kube is not None:
            await self._watch_kube.close()

    async def _work_forever(self) -> None:
        """A task per pass, as many at once as the queue has slots."""
        while (key := await self.queue.get()) is not None:
            task = self.loop.create_task(self._process(key))
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)

    async def _resync_forever(self) -> None:
        passes = 0
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            passes += 1
            try:
                await self.resync()
                if passes % SWEEP_EVERY_RESYNCS == 0:
                    await self.forget_deleted()
            except Exception:  # a bug here must not end the resync for the operator's lifetime
                log.exception("resync pass failed")

    async def forget_deleted(self) -> None:
        """Forget the jobs the API server no longer lists (a DELETED event lost with a watch): their records and
        metrics. One metadata-only list, every SWEEP_EVERY_RESYNCS resync periods."""
        known = set(self._records) | self.metrics.recorded()
        if not known:
            return
        listed: set[Key] = set()
        for namespace in self.config.namespaces or (None,):
            try:
                listed |= await self.kube.list_keys(KIND, namespace)
            except Exception as err:
                log.warning("cannot list FineTuneJobs to forget deleted ones: %s", err)
                return
        for namespace, name in known - listed:
            self._forget((namespace, name))
            if self._records.pop((namespace, name), None) is not None:
                logs.action(namespace, name, "Deleted", "the FineTuneJob is gone")
            self.metrics.set_phase(namespace, name, None)

    async def resync(self) -> None:
        """Queue every unfinished FineTuneJob as background work: its status never drifts, even after a missed event.

        Only the unfinished ones, from memory: no list of every FineTuneJob, so a history of finished jobs costs
        nothing. What can still change a finished job comes as a watch event (a spec edit, a status someone else
        wrote: needs_reconcile), its TTL as a scheduled wake-up, its deletion as a DELETED event.

        Except those whose last pass failed: their retry is due after a backoff of up to 5 min, and a
        resync every minute would undo it."""
        for key in list(self._unfinished):
            if not self.queue.num_requeues(key):
                self.queue.add(key, urgent=False)

    def _forget(self, key: Key) -> None:
        """What the reconciler keeps of a job, but its record (whose removal is logged by the caller)."""
        self._announced.pop(key, None)
        self._granted.pop(key, None)
        self._primed.pop(key, None)
        self._unfinished.discard(key)
        self._made_jobs.discard((key[0], builders.job_name(key[1])))

    def knows(self, ftj: dict) -> bool:
        """Whether this process has had a pass over the job (it holds a record of what it wrote there)."""
        meta = ftj.get("metadata") or {}
        return (meta.get("namespace"), meta.get("name")) in self._records
