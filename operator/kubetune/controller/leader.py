"""Leader election through a coordination.k8s.io/v1 Lease: with several operator replicas, one reconciles and the
others wait on standby until its Lease runs out or is given up.

The rules are client-go's (tools/leaderelection/leaderelection.go with resourcelock/leaselock.go), which
controller-runtime uses too, so the operator behaves as other controllers do:
- a candidate never trusts the timestamps in the Lease (another machine's clock wrote them): it only notes, on its
  own monotonic clock, when it last saw the Lease's spec change, and takes the Lease over once it has seen no change
  for the holder's leaseDurationSeconds;
- every write is a PUT carrying the resourceVersion that was read, so of two candidates racing for an expired Lease
  one wins and the other gets 409 Conflict;
- the leader renews every retry period and stops leading when no renewal succeeded within the renew deadline, which
  is shorter than the lease: it stops before a standby may start;
- on an orderly shutdown the leader gives the Lease up (ReleaseOnCancel): an empty holderIdentity, which a standby
  takes at its next try instead of waiting out the lease.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.client import ApiException

from kubetune.controller.kube import Kube, api_path, collection_path

log = logging.getLogger("kubetune.operator")

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# A try that did not get an answer: no connection, a timeout, a garbled body (orjson's error is a ValueError).
UNANSWERED = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)
# client-go's JitterFactor: a candidate waits retry * (1 + up to 1.2) between tries, so standbys spread out.
JITTER_FACTOR = 1.2


def lease_namespace() -> str:
    """Where the operator's Lease lives: its own namespace (the chart passes POD_NAMESPACE from the downward API;
    in a pod without it, the service account's namespace file), else "default"."""
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if namespace:
        return namespace
    try:
        namespace = IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
    except OSError:
        namespace = ""
    return namespace or "default"


def _micro_time() -> str:
    # metav1.MicroTime's wire form (RFC 3339 with microseconds, UTC).
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds one Lease for `identity`. acquire() waits until it leads, keep() renews until leadership is lost,
    release() gives the Lease up. Create it inside the event loop that uses `kube`."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: float = 15.0,
        renew_deadline_seconds: float = 10.0,
        retry_seconds: float = 2.0,
    ):
        # client-go's NewLeaderElector checks: the leader must give up (renew deadline) before a standby may take
        # over (lease), and must get more than one try (retry period, jittered) within the deadline.
        if not retry_seconds > 0:
            raise ValueError("leader election: retry_seconds must be greater than zero")
        if renew_deadline_seconds <= JITTER_FACTOR * retry_seconds:
            raise ValueError("leader election: renew_deadline_seconds must be greater than retry_seconds * 1.2")
        if lease_seconds <= renew_deadline_seconds:
            raise ValueError("leader election: lease_seconds must be greater than renew_deadline_seconds")
        if not identity:
            raise ValueError("leader election: identity must not be empty")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self.is_leader = False
        self._lease: dict | None = None  # the Lease as last read or written (its resourceVersion is the precondition)
        self._observed: dict | None = None  # its spec then
        self._observed_at = float("-inf")  # local monotonic time the spec was last seen to change
        self._reported_holder: str | None = None
        # When the last successful try started: the write may have reached the API server (and a standby's clock
        # started) any time after that, so the renew deadline counts from here.
        self._renewed_at = float("-inf")
        self._writing = asyncio.Lock()  # a renewal and a release never overlap

    @property
    def description(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    # ------------------------------------------------------------------ the record

    def _holder(self) -> str:
        return (self._observed or {}).get("holderIdentity") or ""

    def _observe(self, lease: dict) -> None:
        """client-go setObservedRecord: note the spec, and restart the local clock only when it changed."""
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed = spec
            self._observed_at = time.monotonic()
        self._lease = lease

    def _lease_valid(self, now: float) -> bool:
        """client-go isLeaseValid: the holder's own leaseDurationSeconds, counted from when the spec was last seen
        to change here (a Lease without a duration counts as ours: lease_seconds)."""
        duration = (self._observed or {}).get("leaseDurationSeconds") or self.lease_seconds
        return self._observed_at + duration > now

    def _record(self, holder: str, duration: int, transitions: int, acquired: str | None = None) -> dict:
        now = _micro_time()
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _next_record(self, duration: int) -> dict:
        """This identity's record over the one last seen: a renewal of ours keeps acquireTime and the transitions,
        taking it over from another holder (or none) counts one transition more."""
        old = self._observed or {}
        transitions = old.get("leaseTransitions", 0)
        if self._holder() == self.identity:
            return self._record(self.identity, duration, transitions, old.get("acquireTime"))
        return self._record(self.identity, duration, transitions + 1)

    def _report_holder(self) -> None:
        """client-go maybeReportTransition: say once whenever another holder is seen."""
        holder = self._holder()
        if holder != self._reported_holder:
            self._reported_holder = holder
            if holder and holder != self.identity:
                log.info(
                    "leader election: %s is held by %s; %s waits on standby", self.description, holder, self.identity
                )

    # ------------------------------------------------------------------ one try

    async def _put(self, spec: dict) -> dict:
        assert self._lease is not None
        body = {**self._lease, "spec": spec}
        return await self.kube.request("PUT", api_path("Lease", self.namespace, self.name), body=body)

    async def _try_acquire_or_renew(self) -> bool:
        """client-go tryAcquireOrRenew. True when this identity holds the Lease afterwards."""
        # Always published rounded up: a standby then waits at least our lease_seconds, never less.
        duration = max(1, math.ceil(self.lease_seconds))
        leading = self._holder() == self.identity
        # 1. The leader's fast path: write over the Lease it last saw, with that resourceVersion; any failure
        #    (409: someone wrote it since) falls back to reading it.
        if leading and self._lease_valid(time.monotonic()):
            try:
                self._observe(await self._put(self._next_record(duration)))
                return True
            except ApiException as err:
                log.debug("leader election: optimistic renewal of %s failed (%s)", self.description, err.status)

        # 2. Read the Lease, or create it held by us when there is none (409 on create: another was faster).
        try:
            lease = await self.kube.request("GET", api_path("Lease", self.namespace, self.name))
        except ApiException as err:
            if err.status != 404:
                log.warning("leader election: cannot read %s: %s %s", self.description, err.status, err.reason)
                return False
            new = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._record(self.identity, duration, 0),
            }
            try:
                created = await self.kube.request("POST", collection_path("Lease", self.namespace), body=new)
            except ApiException as err:
                if err.status != 409:
                    log.warning("leader election: cannot create %s: %s %s", self.description, err.status, err.reason)
                return False
            self._observe(created)
            return True

        # 3. Another holder whose lease has not run out (on our clock) keeps it.
        self._observe(lease)
        if self._holder() and self._holder() != self.identity and self._lease_valid(time.monotonic()):
            return False

        # 4. Take it over (one more transition) or renew it (ours: acquireTime and transitions stay), on the
        #    resourceVersion just read: a 409 means another candidate won this round.
        try:
            self._observe(await self._put(self._next_record(duration)))
        except ApiException as err:
            if err.status != 409:
                log.warning("leader election: cannot update %s: %s %s", self.description, err.status, err.reason)
            return False
        return True

    # ------------------------------------------------------------------ the interface

    async def acquire(self) -> None:
        """Return once this identity holds the Lease; tries every retry_seconds (jittered, as client-go)."""
        log.info("leader election: %s tries to acquire %s", self.identity, self.description)
        while True:
            async with self._writing:
                started = time.monotonic()
                try:
                    acquired = await asyncio.wait_for(self._try_acquire_or_renew(), self.renew_deadline_seconds)
                except UNANSWERED as err:
                    log.warning("leader election: trying %s failed: %r", self.description, err)
                    acquired = False
                if acquired:
                    self.is_leader = True
                    self._renewed_at = started
                    self._reported_holder = self.identity
                    log.info(
                        "leader election: %s acquired %s (leaseTransitions %s)",
                        self.identity,
                        self.description,
                        (self._observed or {}).get("leaseTransitions", 0),
                    )
                    return
                self._report_holder()
            await asyncio.sleep(self.retry_seconds * (1 + random.random() * JITTER_FACTOR))

    async def keep(self) -> None:
        """Renew every retry_seconds while leading; return when leadership is lost: another identity holds the
        Lease, or no renewal succeeded within renew_deadline_seconds (client-go renew), counted from acquire():
        start it right after acquire() returns, beside the work the Lease guards. Returns at once when not leading
        (or once release() ran)."""
        pause = max(0.0, self._renewed_at + self.retry_seconds - time.monotonic())
        while self.is_leader:
            await asyncio.sleep(pause)
            pause = self.retry_seconds
            async with self._writing:
                if not self.is_leader:  # released meanwhile
                    return
                started = time.monotonic()
                left = self._renewed_at + self.renew_deadline_seconds - started
                renewed = False
                if left > 0:
                    try:
                        renewed = await asyncio.wait_for(self._try_acquire_or_renew(), left)
                    except UNANSWERED as err:
                        log.warning("leader election: renewing %s failed: %r", self.description, err)
                if renewed:
                    self._renewed_at = started
                    continue
                holder = self._holder()
                if holder and holder != self.identity:
                    # Stricter than client-go, which retries until the deadline: another holder is final.
                    self._lose(f"it is held by {holder} now")
                    return
                if time.monotonic() - self._renewed_at >= self.renew_deadline_seconds:
                    self._lose(f"no renewal succeeded within {self.renew_deadline_seconds:g} s")
                    return

    def _lose(self, why: str) -> None:
        self.is_leader = False
        self._reported_holder = self._holder()
        log.warning("leader election: %s lost %s: %s", self.identity, self.description, why)

    async def release(self) -> None:
        """If leading, give the Lease up at once (client-go ReleaseOnCancel): holderIdentity empty, so a standby
        takes it at its next try. Call it once the work the Lease guards has stopped. Errors are logged."""
        if not self.is_leader:
            return
        self.is_leader = False  # keep() stops before its next renewal
        try:
            async with self._writing:
                await asyncio.wait_for(self._release(), self.renew_deadline_seconds)
        except (ApiException, *UNANSWERED) as err:
            log.warning("leader election: %s could not release %s: %r", self.identity, self.description, err)

    async def _release(self) -> None:
        """client-go tryRelease: read the Lease; if it is still ours, write it unheld with a 1 s duration (the
        transitions kept), again on a 409 (a renewal that was in flight bumped the resourceVersion)."""
        path = api_path("Lease", self.namespace, self.name)
        while True:
            lease: dict[str, Any] = await self.kube.request("GET", path)
            self._observe(lease)
            if self._holder() != self.identity:
                log.info("leader election: %s is held by %s: nothing to release", self.description, self._holder())
                return
            spec = self._record("", 1, (self._observed or {}).get("leaseTransitions", 0))
            try:
                self._observe(await self._put(spec))
            except ApiException as err:
                if err.status == 409:
                    continue
                raise
            log.info("leader election: %s released %s", self.identity, self.description)
            return
