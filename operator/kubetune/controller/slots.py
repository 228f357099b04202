"""How many FineTuneJobs the operator works on at once, and in which order.

A burst of new FineTuneJobs (a pipeline submitting a thousand at once) should get every Job created
first: a Job is what lets pods, Kueue and the GPUs start. What follows its creation (the reporter's Role
and RoleBinding, which only the running trainer needs, the status write and the Event) can wait a
moment. So a reconcile holds a slot, urgent by default; once a new job's Job exists it `defer()`s: it
gives the slot to the next urgent reconcile and queues behind every urgent one. Background passes (the
periodic resync, scheduled retries) queue there from the start. A deferred reconcile never waits
longer than `max_wait` seconds, even under a stream of new jobs that never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator


class Slots:
    def __init__(self, size: int, max_wait: float = 5.0):
        self._free = size
        self._urgent: deque[asyncio.Future] = deque()
        self._deferred: deque[tuple[float, asyncio.Future]] = deque()
        self.max_wait = max_wait

    @contextlib.asynccontextmanager
    async def hold(self, urgent: bool = True) -> AsyncIterator[Slot]:
        """One slot for the body of the `async with`; a background pass (the periodic resync) asks for
        a non-urgent one, so that it never holds up what watch events ask for."""
        slot = Slot(self)
        await self._acquire(urgent=urgent)
        slot.held = True
        try:
            yield slot
        finally:
            if slot.held:
                self._release()

    def urgent_waiting(self) -> bool:
        # O(1): a waiter cancelled a moment ago may still be queued; deferring for it costs one hand-over.
        return bool(self._urgent)

    async def _acquire(self, urgent: bool) -> None:
        if self._free and not self._urgent and (urgent or not self._deferred):
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = waiter if urgent else (time.monotonic(), waiter)
        queue = self._urgent if urgent else self._deferred
        queue.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            elif entry in queue:
                queue.remove(entry)
            raise

    def _release(self) -> None:
        """Hand the slot to the next waiter (urgent first, unless a deferred one is overdue), or free it."""
        while self._urgent or self._deferred:
            overdue = self._deferred and time.monotonic() - self._deferred[0][0] > self.max_wait
            if self._deferred and (overdue or not self._urgent):
                waiter = self._deferred.popleft()[1]
            else:
                waiter = self._urgent.popleft()
            if not waiter.done():  # skip one cancelled a moment ago
                waiter.set_result(None)
                return
        self._free += 1


class Slot:
    def __init__(self, slots: Slots):
        self._slots = slots
        self.held = False

    async def defer(self) -> None:
        """Let every urgent reconcile that waits go first (a no-op when none waits)."""
        if not self._slots.urgent_waiting():
            return
        self.held = False
        self._slots._release()
        await self._slots._acquire(urgent=False)
        self.held = True
