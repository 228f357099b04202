"""The reconcile loop: read a FineTuneJob and its children, create or fix what is missing, write status.

Level-based and idempotent: every call starts from what the API server says now, so a restart, a
repeated event or a concurrent call never creates a second Job (deterministic names; AlreadyExists
-> adopt when owned by this FineTuneJob). kopf handlers (handlers.py) await `reconcile`; so does a
resync task (every unfinished job, every `resync_seconds`, and at TTL deadlines). Everything runs on
kopf's event loop: one thread, no locks against other threads.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections import defaultdict

from kubetune.api.constants import API_VERSION, KIND, Reason
from kubetune.api.validation import SpecError
from kubetune.controller import builders, status
from kubetune.controller.config import OperatorConfig
from kubetune.controller.kube import Kube, is_status
from kubetune.controller.metrics import Metrics
from kubetune.controller.slots import Slot, Slots

log = logging.getLogger("kubetune.operator")
# After a failed reconcile (kopf does not retry event handlers): 5 s, doubling per failure in a row, at most 5 min.
RETRY_SECONDS = 5
RETRY_MAX_SECONDS = 300


class NotOwnedError(RuntimeError):
    """A child name is taken by an object this FineTuneJob does not own."""


def _owned_by(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _job_finished(job: dict) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


class Reconciler:
    def __init__(self, kube: Kube, config: OperatorConfig, metrics: Metrics | None = None):
        self.kube = kube
        self.config = config
        self.metrics = metrics or Metrics()
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._namespace_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # FineTuneJobs worked on at once: a burst of creates is served in arrival order, each one's Job
        # appearing soon, rather than all of them advancing one API call at a time (see slots.py).
        self._slots = Slots(config.concurrent_reconciles)
        self._written: set[tuple[str, str]] = set()  # FineTuneJobs whose status this process wrote
        self._failures: dict[tuple[str, str], int] = {}  # failed passes in a row, for the retry backoff
        self._wakeups: list[tuple[float, str, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.instance = os.environ.get("HOSTNAME", "kubetune-operator")

    # ------------------------------------------------------------------------------------- entry

    async def reconcile(self, namespace: str, name: str, body: dict | None = None, urgent: bool = True) -> str | None:
        """Bring one FineTuneJob's children and status in line; returns its phase (None = gone).

        `body`: the FineTuneJob as the caller just got it from a watch. It saves a GET, but only for an
        object this operator has not written a status for yet: after a write of ours, a watched copy can
        be older than what we wrote, so it is read again. `urgent=False`: a background pass, served after
        what watch events ask for (slots.py).
        """
        async with self._locks[(namespace, name)], self._slots.hold(urgent) as slot:
            started = time.monotonic()
            if body is not None and (namespace, name) in self._written:
                body = None
            try:
                phase = await self._reconcile(namespace, name, body, slot)
            except Exception as err:
                self.metrics.reconcile_errors.labels(reason=type(err).__name__).inc()
                self._failures[(namespace, name)] = self._failures.get((namespace, name), 0) + 1
                raise
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        self._failures.pop((namespace, name), None)
        self.metrics.set_phase(namespace, name, phase)
        return phase

    def retry_later(self, namespace: str, name: str) -> float:
        """Schedule another pass after a failed one, backing off; returns the delay in seconds."""
        failures = self._failures.get((namespace, name), 1)
        delay = min(RETRY_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
        self.schedule(namespace, name, time.time() + delay)
        return delay

    async def _reconcile(self, namespace: str, name: str, body: dict | None, slot: Slot) -> str | None:
        ftj = body if body is not None else await self.kube.get(KIND, namespace, name)
        if ftj is None or ftj["metadata"].get("deletionTimestamp"):
            self._written.discard((namespace, name))
            return None  # the garbage collector removes the children (ownerReferences)
        old = ftj.get("status") or {}
        now = status.now_rfc3339()
        try:
            spec = builders.resolve_spec(ftj.get("spec"), self.config, name)
        except SpecError as err:
            outcome = status.compute_invalid(ftj, [str(p) for p in err.problems], now)
            await self._write_status(ftj, outcome)
            return outcome.phase
        if old.get("phase") in status.FINISHED_PHASES:
            await self._expire(ftj, spec)
            return old["phase"]
        # A FineTuneJob the operator never wrote a status for has no Job yet, almost always: go straight to
        # creating (an existing one, after a restart mid-reconcile, is adopted on AlreadyExists).
        job = await self.kube.get("Job", namespace, builders.job_name(name)) if old.get("jobName") else None
        if job is not None and not _owned_by(job, ftj["metadata"]["uid"]):
            raise NotOwnedError(f"Job {namespace}/{name} exists and is not owned by this FineTuneJob")
        if job is None:
            job = await self._create_children(ftj, spec, old, slot)
        else:
            job = await self._propagate(ftj, spec, job)
        created = job.pop("_created", False)
        # A Job created this moment has no pods yet.
        pods = [] if created else [
            p for p in await self.kube.list("Pod", namespace, builders.selector(name))
            if _owned_by(p, job["metadata"]["uid"])
        ]
        observed = status.observe(job, pods, nodes=spec.nodes, spec_suspend=spec.suspend, queue_name=spec.queue_name,
                                  backoff_limit=spec.backoff_limit,
                                  active_deadline_seconds=spec.active_deadline_seconds)
        outcome = status.compute(ftj, observed, job["metadata"]["name"], now)
        if created:
            outcome = status.announce_job(outcome, job["metadata"]["name"], recreated=bool(old.get("jobName")))
        await self._write_status(ftj, outcome)
        if outcome.phase in status.FINISHED_PHASES:
            await self._after_finish(ftj, spec, outcome.status)
        return outcome.phase

    # ------------------------------------------------------------------------------------- children

    async def _create_or_adopt(self, obj: dict, uid: str) -> dict:
        try:
            created = await self.kube.create(obj)
            created["_created"] = True  # local marker, never sent back
            return created
        except Exception as err:
            if not is_status(err, 409):
                raise
        existing = await self.kube.get(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if existing is None:  # deleted in between: the next reconcile creates it
            raise RuntimeError(f"{obj['kind']} {obj['metadata']['name']} vanished while being adopted")
        if not _owned_by(existing, uid):
            raise NotOwnedError(f"{obj['kind']} {obj['metadata']['name']} exists and is not owned by this FineTuneJob")
        return existing

    async def _create_children(self, ftj: dict, spec, old_status: dict, slot: Slot) -> dict:
        meta = ftj["metadata"]
        uid = meta["uid"]
        previous = 0
        if old_status.get("jobName"):
            # We made a Job before and it is gone: someone deleted it. Run again; the trainer resumes.
            previous = old_status.get("attempts") or 0
            await self.event(ftj, "Warning", Reason.JOB_MISSING,
                             f"Job {meta['name']} was deleted while the FineTuneJob was unfinished; recreating it "
                             "(training resumes from the newest checkpoint)")
        for obj in builders.build_prerequisites(ftj, spec):
            await self._create_or_adopt(obj, uid)
        async with self._namespace_locks[meta["namespace"]]:
            held = (not spec.suspend and not spec.queue_name and self.config.max_running_per_namespace > 0
                    and await self._running_in_namespace(meta["namespace"], exclude=meta["name"])
                    >= self.config.max_running_per_namespace)
            job = builders.build_job(ftj, spec, self.config, suspend=builders.initial_suspend(spec) or held,
                                     held_by_namespace_limit=held, previous_attempts=previous)
            job = await self._create_or_adopt(job, uid)
        # The Job exists, so its pods can start. The rest (the reporter's grant, then the status write and
        # JobCreated) waits while other new FineTuneJobs wait for their Jobs.
        await slot.defer()
        for obj in builders.build_reporter_grant(ftj):
            await self._create_or_adopt(obj, uid)
        return job

    async def _running_in_namespace(self, namespace: str, exclude: str) -> int:
        jobs = await self.kube.list("Job", namespace, builders.MANAGED_SELECTOR)
        return sum(1 for j in jobs if j["metadata"]["name"] != exclude
                   and not (j.get("spec") or {}).get("suspend") and not _job_finished(j))

    async def _propagate(self, ftj: dict, spec, job: dict) -> dict:
        """Apply the mutable spec fields (suspend, backoffLimit, activeDeadlineSeconds) to the Job."""
        if _job_finished(job):
            return job
        patch_spec = builders.job_spec_updates(spec, job)
        annotations: dict = {}
        current = bool((job.get("spec") or {}).get("suspend"))
        held = (job["metadata"].get("annotations") or {}).get(builders.ANNOTATION_HELD) == "true"
        namespace = ftj["metadata"]["namespace"]
        async with self._namespace_locks[namespace]:
            if spec.suspend:
                desired = True
                if held:
                    annotations[builders.ANNOTATION_HELD] = None
            elif spec.queue_name:
                desired = current  # Kueue decides when the Job runs
            elif current and self.config.max_running_per_namespace > 0:
                running = await self._running_in_namespace(namespace, exclude=job["metadata"]["name"])
                over = running >= self.config.max_running_per_namespace
                desired = over
                if over and not held:
                    annotations[builders.ANNOTATION_HELD] = "true"
                elif not over and held:
                    annotations[builders.ANNOTATION_HELD] = None
            else:
                desired = False
                if held:
                    annotations[builders.ANNOTATION_HELD] = None
            if desired != current:
                patch_spec["suspend"] = desired
            if not patch_spec and not annotations:
                return job
            patch: dict = {}
            if patch_spec:
                patch["spec"] = patch_spec
            if annotations:
                patch["metadata"] = {"annotations": annotations}
            return await self.kube.patch("Job", namespace, job["metadata"]["name"], patch)

    # ------------------------------------------------------------------------------------- status & events

    async def _write_status(self, ftj: dict, outcome: status.Outcome) -> None:
        patch = status.status_patch(ftj.get("status") or {}, outcome.status)
        meta = ftj["metadata"]
        if patch:
            await self.kube.patch(KIND, meta["namespace"], meta["name"], {"status": patch}, subresource="status")
        self._written.add((meta["namespace"], meta["name"]))
        for event in outcome.events:
            await self.event(ftj, event.type, event.reason, event.message)

    async def event(self, ftj: dict, kind: str, reason: str, message: str) -> None:
        meta = ftj["metadata"]
        now = status.now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": kind,
            "reason": str(reason),
            "message": message[:1024],
            "source": {"component": "kubetune-operator"},
            "reportingComponent": "kubetune.dev/operator",
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(body)
        except Exception as err:  # an Event is worth a log line, never a failed reconcile
            log.warning("could not post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], err)

    # ------------------------------------------------------------------------------------- finished jobs

    async def _after_finish(self, ftj: dict, spec, new_status: dict) -> None:
        namespace = ftj["metadata"]["namespace"]
        if self.config.max_running_per_namespace > 0:
            await self.release_held(namespace)
        deadline = status.ttl_deadline(new_status, spec.ttl_seconds_after_finished)
        if deadline is not None:
            self.schedule(namespace, ftj["metadata"]["name"], deadline.timestamp())

    async def _expire(self, ftj: dict, spec) -> None:
        """ttlSecondsAfterFinished: remove the children (never the FineTuneJob, never the output)."""
        deadline = status.ttl_deadline(ftj.get("status") or {}, spec.ttl_seconds_after_finished)
        if deadline is None:
            return
        meta = ftj["metadata"]
        if deadline.timestamp() > time.time():
            self.schedule(meta["namespace"], meta["name"], deadline.timestamp())
            return
        name = meta["name"]
        removed = False
        for kind, child in (("Job", builders.job_name(name)), ("ConfigMap", builders.configmap_name(name)),
                            ("Service", builders.service_name(name)), ("RoleBinding", builders.reporter_name(name)),
                            ("Role", builders.reporter_name(name)), ("ServiceAccount", builders.reporter_name(name))):
            existing = await self.kube.get(kind, meta["namespace"], child)
            if existing is not None and _owned_by(existing, meta["uid"]):
                removed = await self.kube.delete(kind, meta["namespace"], child) or removed
        if removed:
            await self.event(ftj, "Normal", Reason.TTL_EXPIRED,
                             f"removed the Job and its objects {spec.ttl_seconds_after_finished} s after the job "
                             "finished (the output in storage is kept)")

    async def release_held(self, namespace: str) -> None:
        """Reconcile the jobs held by the namespace cap, so the next ones start as running ones finish."""
        jobs = await self.kube.list("Job", namespace, builders.MANAGED_SELECTOR)
        for job in jobs:
            if (job["metadata"].get("annotations") or {}).get(builders.ANNOTATION_HELD) == "true":
                parent = (job["metadata"].get("labels") or {}).get(builders.LABEL_FTJ)
                if parent:
                    self.schedule(namespace, parent, time.time())

    # ------------------------------------------------------------------------------------- resync task

    def schedule(self, namespace: str, name: str, at: float) -> None:
        heapq.heappush(self._wakeups, (at, namespace, name))
        self._wake.set()

    def start(self) -> None:
        """Start the resync task on the running loop (kopf's)."""
        self.loop = asyncio.get_running_loop()
        self._task = self.loop.create_task(self._resync_forever(), name="kubetune-resync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.kube.close()

    async def _resync_forever(self) -> None:
        next_resync = time.time() + self.config.resync_seconds
        while True:
            try:
                next_resync = await self._resync_once(next_resync)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the resync for the operator's lifetime
                log.exception("resync pass failed; trying again in %s s", RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)

    async def _resync_once(self, next_resync: float) -> float:
        """Reconcile what is due (retries, TTLs, held jobs), the full resync when its time has come, then
        sleep until the next of them; returns when the next full resync is due."""
        now = time.time()
        due = set()
        while self._wakeups and self._wakeups[0][0] <= now:
            _, namespace, name = heapq.heappop(self._wakeups)
            due.add((namespace, name))
        if due:
            await asyncio.gather(*(self._safely(namespace, name) for namespace, name in due))
        if time.time() >= next_resync:
            next_resync = time.time() + self.config.resync_seconds
            await self.resync()
        if not due:
            until = min([next_resync] + [w[0] for w in self._wakeups[:1]])
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, until - time.time()))
            except TimeoutError:
                pass
        return next_resync

    async def resync(self) -> None:
        """Reconcile every FineTuneJob that is unfinished or waits for its TTL: status never drifts.

        Except those whose last pass failed: their retry is scheduled (backing off up to 5 min), and a
        resync every minute would undo the backoff."""
        namespaces = self.config.namespaces or (None,)
        for namespace in namespaces:
            try:
                items = await self.kube.list(KIND, namespace)
            except Exception as err:
                log.warning("resync: cannot list FineTuneJobs: %s", err)
                continue
            await asyncio.gather(*(
                self._safely(ftj["metadata"]["namespace"], ftj["metadata"]["name"]) for ftj in items
                if ((ftj.get("status") or {}).get("phase") not in status.FINISHED_PHASES
                    or ((ftj.get("spec") or {}).get("ttlSecondsAfterFinished") or 0) > 0)
                and (ftj["metadata"]["namespace"], ftj["metadata"]["name"]) not in self._failures
            ))

    async def _safely(self, namespace: str, name: str) -> None:
        try:
            await self.reconcile(namespace, name, urgent=False)
        except Exception as err:
            delay = self.retry_later(namespace, name)
            log.warning("reconcile of %s/%s failed (retrying in %.0f s): %s", namespace, name, delay, err)
