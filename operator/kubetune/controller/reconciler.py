"""The reconcile pass: read a FineTuneJob and its children, create or fix what is missing, write status.

Level-based and idempotent: every pass starts from what the API server says now, so a restart, a
repeated event or a retry never creates a second Job (deterministic names; AlreadyExists -> adopt when
owned by this FineTuneJob). Which job gets a pass when, and how many at once, is the work queue's
(queue.py): kopf's event handlers (handlers.py) add keys to it, and so do the periodic resync, the
retries of failed passes and the TTL wake-ups. Everything runs on kopf's event loop: one thread, no
locks against other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

from kubetune.api.constants import API_VERSION, KIND, Reason
from kubetune.api.validation import SpecError
from kubetune.controller import builders, policy, status
from kubetune.controller.config import OperatorConfig
from kubetune.controller.kube import Kube, is_status
from kubetune.controller.metrics import Metrics
from kubetune.controller.queue import ItemExponentialBackoff, WorkQueue

log = logging.getLogger("kubetune.operator")
# After a failed pass: 5 s, doubling per failure in a row, at most 5 min.
RETRY_SECONDS = 5
RETRY_MAX_SECONDS = 300

Key = tuple[str, str]  # (namespace, name) of a FineTuneJob


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
        self.queue = WorkQueue(config.concurrent_reconciles, ItemExponentialBackoff(RETRY_SECONDS, RETRY_MAX_SECONDS))
        # Per key, only while the key waits for its next pass (so nothing here outlives a deleted job):
        self._bodies: dict[Key, dict] = {}  # the FineTuneJob as its newest watch event carried it
        self._callers: dict[Key, list[asyncio.Future]] = {}  # reconcile() callers waiting for that pass
        self._written: set[Key] = set()  # FineTuneJobs whose status this process wrote (dropped when one goes)
        # One lock per namespace while passes count its running Jobs against the cap (and how many passes want it).
        self._namespace_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._passes: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.instance = os.environ.get("HOSTNAME", "kubetune-operator")

    # ------------------------------------------------------------------------------------- entry

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
        if body is not None and key in self._written:
            body = None
        started = time.monotonic()
        try:
            phase = await self._reconcile(namespace, name, body)
        except Exception as err:
            self.metrics.reconcile_errors.labels(reason=type(err).__name__).inc()
            delay = self.queue.add_rate_limited(key)
            log.warning("reconcile of %s/%s failed (retrying in %.0f s): %s", namespace, name, delay, err)
            for caller in callers:
                if not caller.done():
                    caller.set_exception(err)
        else:
            self.queue.forget(key)
            self.metrics.set_phase(namespace, name, phase)
            for caller in callers:
                if not caller.done():
                    caller.set_result(phase)
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            self.queue.done(key)
            for caller in callers:
                if not caller.done():  # the pass was cancelled (the operator stops)
                    caller.cancel()

    async def _reconcile(self, namespace: str, name: str, body: dict | None) -> str | None:
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
        # The platform's policy, before anything is created (a job already running keeps the rules it started under).
        denied = [] if old.get("jobName") else policy.check(self.config, ftj, spec)
        if denied:
            outcome = status.compute_invalid(ftj, [str(v) for v in denied], now, reason=Reason.POLICY_DENIED)
            await self._write_status(ftj, outcome)
            return outcome.phase
        # A FineTuneJob the operator never wrote a status for has no Job yet, almost always: go straight to
        # creating (an existing one, after a restart mid-reconcile, is adopted on AlreadyExists).
        job = await self.kube.get("Job", namespace, builders.job_name(name)) if old.get("jobName") else None
        if job is not None and not _owned_by(job, ftj["metadata"]["uid"]):
            raise NotOwnedError(f"Job {namespace}/{name} exists and is not owned by this FineTuneJob")
        if job is None:
            job = await self._create_children(ftj, spec, old)
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

    async def _create_children(self, ftj: dict, spec, old_status: dict) -> dict:
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
        async with self._namespace_lock(meta["namespace"]):
            held = (not spec.suspend and not spec.queue_name and self.config.max_running_per_namespace > 0
                    and await self._running_in_namespace(meta["namespace"], exclude=meta["name"])
                    >= self.config.max_running_per_namespace)
            job = builders.build_job(ftj, spec, self.config, suspend=builders.initial_suspend(spec) or held,
                                     held_by_namespace_limit=held, previous_attempts=previous)
            job = await self._create_or_adopt(job, uid)
        # The Job exists, so its pods can start. The rest (the reporter's grant, then the status write and
        # JobCreated) waits while other new FineTuneJobs wait for their Jobs.
        await self.queue.defer()
        for obj in builders.build_reporter_grant(ftj, spec):
            await self._create_or_adopt(obj, uid)
        return job

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
        async with self._namespace_lock(namespace):
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
            self.queue.add_after((namespace, ftj["metadata"]["name"]), deadline.timestamp() - time.time())

    async def _expire(self, ftj: dict, spec) -> None:
        """ttlSecondsAfterFinished: remove the children (never the FineTuneJob, never the output)."""
        deadline = status.ttl_deadline(ftj.get("status") or {}, spec.ttl_seconds_after_finished)
        if deadline is None:
            return
        meta = ftj["metadata"]
        if deadline.timestamp() > time.time():
            self.queue.add_after((meta["namespace"], meta["name"]), deadline.timestamp() - time.time())
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
        """Queue the jobs held by the namespace cap, so the next ones start as running ones finish."""
        jobs = await self.kube.list("Job", namespace, builders.MANAGED_SELECTOR)
        for job in jobs:
            if (job["metadata"].get("annotations") or {}).get(builders.ANNOTATION_HELD) == "true":
                parent = (job["metadata"].get("labels") or {}).get(builders.LABEL_FTJ)
                if parent:
                    self.enqueue(namespace, parent, urgent=False)

    # ------------------------------------------------------------------------------------- workers & resync

    def start(self) -> None:
        """Start handing out passes, and the periodic resync, on the running loop (kopf's)."""
        self.loop = asyncio.get_running_loop()
        self._tasks = [self.loop.create_task(self._work_forever(), name="kubetune-workers"),
                       self.loop.create_task(self._resync_forever(), name="kubetune-resync")]

    async def stop(self) -> None:
        self.queue.shutdown()
        tasks = self._tasks + list(self._passes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        await self.kube.close()

    async def _work_forever(self) -> None:
        """A task per pass, as many at once as the queue has slots."""
        while (key := await self.queue.get()) is not None:
            task = self.loop.create_task(self._process(key))
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            try:
                await self.resync()
            except Exception:  # a bug here must not end the resync for the operator's lifetime
                log.exception("resync pass failed")

    async def resync(self) -> None:
        """Queue every FineTuneJob that is unfinished or waits for its TTL, as background work: status
        never drifts, even after a missed event.

        Except those whose last pass failed: their retry is due after a backoff of up to 5 min, and a
        resync every minute would undo it."""
        known = self._written | self.metrics.recorded()
        listed: set[Key] = set()
        complete = True
        for namespace in self.config.namespaces or (None,):
            try:
                items = await self.kube.list(KIND, namespace)
            except Exception as err:
                log.warning("resync: cannot list FineTuneJobs: %s", err)
                complete = False
                continue
            for ftj in items:
                key = (ftj["metadata"]["namespace"], ftj["metadata"]["name"])
                listed.add(key)
                if (((ftj.get("status") or {}).get("phase") not in status.FINISHED_PHASES
                     or ((ftj.get("spec") or {}).get("ttlSecondsAfterFinished") or 0) > 0)
                        and not self.queue.num_requeues(key)):
                    self.queue.add(key, urgent=False)
        if complete:
            # Known before the listing and not in it: deleted without a pass noticing (no child to tell of it).
            for namespace, name in known - listed:
                self._written.discard((namespace, name))
                self.metrics.set_phase(namespace, name, None)
