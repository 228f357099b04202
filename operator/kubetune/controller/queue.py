"""The operator's work queue: which FineTuneJob gets a reconcile pass next, how many run at once, and
when a failed one is tried again. In client-go's workqueue terms (k8s.io/client-go util/workqueue:
queue.go, delaying_queue.go, rate_limiting_queue.go, default_rate_limiters.go), on one asyncio loop:

- `add(key)`: the key needs a pass. A key already waiting is not queued twice; a key being processed
  is marked dirty and queued again when its pass is `done`: one pass per key at a time, and a change
  seen during a pass is never lost.
- `get()` hands out the next key together with one of `workers` slots; `done(key)` gives both back.
- `add_after(key, delay)`: add it later (a TTL deadline, a retry); a key waiting twice keeps the sooner time.
- `add_rate_limited(key)`: add it after its own backoff (`ItemExponentialBackoff`); `forget(key)` ends
  the backoff after a success; `num_requeues(key)` counts the failures in a row.
- `shutdown()`: `get()` returns None from then on, and adds are ignored.

Two lanes, as in controller-runtime's priority queue (pkg/controller/priorityqueue): keys added by watch
events are handed out first; background work (the periodic resync, retries, TTL wake-ups) waits behind
them. A burst of new FineTuneJobs (a pipeline submitting a thousand at once) thus gets its Jobs created
before a thousand unfinished jobs are resynced. Each entry keeps the time it joined its lane. Background work goes
ahead of every watch event that came more than `urgent_lead` seconds after it, so a stream of watch events that
never ends cannot starve it; the background lane itself is in order of that time.

One addition: `defer()`. A pass of a new job, once its Job exists, gives its slot to the next key from a
watch event and goes on as background work: the Job is what lets pods, Kueue and the GPUs start, while
the rest of that pass (the reporter's Role, the status write, the Event) can wait a moment. It keeps the time its
key joined the queue, so the rule above makes it earliest-deadline-first: with the operator's targets (a Job within
5 s of a job's creation, its first status within 10 s) 5 s apart, as `urgent_lead` is, a job's status write goes
ahead of the Jobs of jobs created more than 5 s after it, and behind the others. A burst that outruns the operator
thus delays both by about as much, instead of stalling the Jobs once the first statuses are due. Its Events wait
longer (`defer(behind_deferred=True)`): behind the other deferred passes too, so that in a burst the Jobs come
first, then the statuses users and GitOps tools read, then the Events (client-go's recorders post theirs
asynchronously, behind the controller's work, for the same reason).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Hashable

Key = Hashable


class ItemExponentialBackoff:
    """Per-key exponential backoff (client-go's ItemExponentialFailureRateLimiter): base * 2^failures,
    at most `cap`; `forget` starts the count again."""

    def __init__(self, base: float, cap: float):
        self.base, self.cap = base, cap
        self._failures: dict[Key, int] = {}

    def when(self, key: Key, cap: float | None = None) -> float:
        """The next delay of the key (one failure more); `cap`: a lower cap for this one."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return min(self.base * 2 ** min(failures, 62), self.cap if cap is None else min(cap, self.cap))

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: Key) -> int:
        return self._failures.get(key, 0)


class WorkQueue:
    def __init__(self, workers: int, rate_limiter: ItemExponentialBackoff, urgent_lead: float = 5.0):
        self.rate_limiter = rate_limiter
        self.urgent_lead = urgent_lead
        self._free = workers  # slots not held by a pass
        # Keys that need a pass -> whether a watch event asked for it (the urgent lane). Each one is waiting in
        # a lane, or is being processed and goes back into its lane when done.
        self._dirty: dict[Key, bool] = {}
        # Keys being processed -> when they joined the lane they were handed out from (a deferred pass keeps it).
        self._processing: dict[Key, float] = {}
        # Each lane holds its entries with the time they joined it: keys from watch events, in order; background
        # keys and deferred passes waiting to resume, a heap by that time (a deferred pass keeps an earlier one).
        self._urgent: deque[tuple[float, Key]] = deque()
        self._background: list[tuple[float, int, Key | asyncio.Future]] = []
        # Lane entries are not removed when a key moves up to the urgent lane: `_head` skips the stale ones.
        self._getters: deque[asyncio.Future] = deque()
        # add_after: key -> when (loop time), and the same as a heap; heap entries that disagree are stale.
        self._waiting: dict[Key, float] = {}
        self._timeline: list[tuple[float, int, Key]] = []
        self._deferred = 0  # deferred passes waiting in the background lane
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._shutting_down = False

    def __len__(self) -> int:
        """Keys waiting for a pass (not those being processed)."""
        return sum(1 for key in self._dirty if key not in self._processing)

    @property
    def processing(self) -> int:
        """Keys being processed."""
        return len(self._processing)

    @property
    def free_slots(self) -> int:
        return self._free

    # ------------------------------------------------------------------------------------- add

    def add(self, key: Key, urgent: bool = True) -> None:
        """Mark the key as needing a pass; `urgent=False` for background work."""
        if self._shutting_down:
            return
        queued = self._dirty.get(key)
        if queued is not None:
            if urgent and not queued:  # background work that a watch event now asks for: move it up
                self._dirty[key] = True
                if key not in self._processing:
                    self._urgent.append((time.monotonic(), key))
                    self._dispatch()
            return
        self._dirty[key] = urgent
        if key not in self._processing:  # else it is queued again when done
            self._enqueue(key, urgent)
            self._dispatch()

    def add_after(self, key: Key, delay: float) -> None:
        """Add the key as background work once `delay` seconds have passed."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key, urgent=False)
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._waiting.get(key, float("inf")) <= at:
            return
        self._waiting[key] = at
        heapq.heappush(self._timeline, (at, next(self._order), key))
        self._arm(loop)

    def add_rate_limited(self, key: Key, cap: float | None = None) -> float:
        """Add the key after its backoff (at most `cap` seconds, when given); returns the delay in seconds."""
        delay = self.rate_limiter.when(key, cap)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Key) -> None:
        self.rate_limiter.forget(key)

    def num_requeues(self, key: Key) -> int:
        return self.rate_limiter.num_requeues(key)

    def waiting_for(self, key: Key) -> float | None:
        """Seconds until an add_after of the key is due; None when none is pending."""
        at = self._waiting.get(key)
        return None if at is None else max(0.0, at - asyncio.get_running_loop().time())

    # ------------------------------------------------------------------------------------- get / done

    async def get(self) -> Key | None:
        """The next key to process, with a slot; None once the queue shuts down. Call done(key) after."""
        if self._shutting_down:
            return None
        getter = asyncio.get_running_loop().create_future()
        self._getters.append(getter)
        self._dispatch()
        try:
            return await getter
        except asyncio.CancelledError:
            if getter.done() and not getter.cancelled() and getter.result() is not None:
                key = getter.result()  # handed a key just as the caller was cancelled: put it back
                self._dirty.setdefault(key, True)
                self.done(key)
            raise

    def done(self, key: Key) -> None:
        """The pass of the key is over: free its slot, and queue the key again if it was added meanwhile."""
        self._processing.pop(key, None)
        self._free += 1
        urgent = self._dirty.get(key)
        if urgent is not None:
            self._enqueue(key, urgent)
        self._dispatch()

    async def defer(self, key: Key, behind_deferred: bool = False) -> None:
        """Inside the pass of `key`: let the keys that watch events added go first, then go on as background work.
        The pass keeps the time its key joined the queue: it goes ahead of every watch event that came more than
        `urgent_lead` seconds after that, and of background work that joined later. Free when no such key waits.
        `behind_deferred`: the passes deferred before this one go first too (a pass's Events wait behind other jobs'
        status writes); it counts from now."""
        if not self._urgent and not (behind_deferred and self._deferred):
            return  # the urgent lane may hold a stale entry: then deferring costs one hand-over, no more
        waiter = asyncio.get_running_loop().create_future()
        # Events are due after the status they tell of, which is now: behind every status deferred before them.
        joined = time.monotonic() if behind_deferred else self._processing[key]
        heapq.heappush(self._background, (joined, next(self._order), waiter))
        self._deferred += 1
        self._free += 1
        self._dispatch()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # never got its slot back; done() still gives one back
                self._free -= 1
                self._deferred -= 1
            raise

    def shutdown(self) -> None:
        self._shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    # ------------------------------------------------------------------------------------- internals

    def _enqueue(self, key: Key, urgent: bool) -> None:
        if urgent:
            self._urgent.append((time.monotonic(), key))
        else:
            heapq.heappush(self._background, (time.monotonic(), next(self._order), key))

    def _head(self) -> tuple[float, Key | asyncio.Future, bool] | None:
        """The entry that goes next (when it joined, the key or deferred pass, whether it is the urgent lane's),
        after dropping stale entries; None when both lanes are empty."""
        urgent, background, dirty, processing = self._urgent, self._background, self._dirty, self._processing
        while urgent and (dirty.get(urgent[0][1]) is not True or urgent[0][1] in processing):
            urgent.popleft()
        while background:
            item = background[0][2]
            if isinstance(item, asyncio.Future):
                if not item.done():
                    break
            elif dirty.get(item) is False and item not in processing:
                break
            heapq.heappop(background)
        if background and (not urgent or background[0][0] + self.urgent_lead < urgent[0][0]):
            return background[0][0], background[0][2], False
        return (*urgent[0], True) if urgent else None

    def _pop(self, urgent: bool) -> None:
        if urgent:
            self._urgent.popleft()
        else:
            heapq.heappop(self._background)

    def _dispatch(self) -> None:
        """Hand free slots out: to deferred passes, and with keys to callers waiting in get()."""
        while self._free > 0:
            head = self._head()
            if head is None:
                return
            joined, item, urgent = head
            if isinstance(item, asyncio.Future):
                self._pop(urgent)
                self._free -= 1
                self._deferred -= 1
                item.set_result(None)
                continue
            while self._getters and self._getters[0].done():  # cancelled
                self._getters.popleft()
            if not self._getters:
                return
            self._pop(urgent)
            self._free -= 1
            del self._dirty[item]
            self._processing[item] = joined
            self._getters.popleft().set_result(item)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        timeline, waiting = self._timeline, self._waiting
        while timeline and waiting.get(timeline[0][2]) != timeline[0][0]:
            heapq.heappop(timeline)
        if not timeline:
            return
        at = timeline[0][0]
        if self._timer is None or at < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(at, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._timeline and self._timeline[0][0] <= now:
            at, _, key = heapq.heappop(self._timeline)
            if self._waiting.get(key) == at:
                del self._waiting[key]
                self.add(key, urgent=False)
        self._arm(loop)
