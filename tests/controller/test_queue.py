"""queue.py: the work queue, with client-go's workqueue semantics (k8s.io/client-go util/workqueue: queue.go
for add/get/done with its dirty and processing sets, delaying_queue.go for add_after, rate_limiting_queue.go
and default_rate_limiters.go's ItemExponentialFailureRateLimiter for add_rate_limited/forget), plus the
operator's own order: watch events first, background work behind them but never starved, and `defer`."""

from __future__ import annotations

import asyncio
import time

import pytest

from kubetune.controller.queue import ItemExponentialBackoff, WorkQueue

pytestmark = pytest.mark.timeout(30)


def new_queue(workers: int = 1, urgent_lead: float = 5.0) -> WorkQueue:
    return WorkQueue(workers, ItemExponentialBackoff(5, 300), urgent_lead=urgent_lead)


async def run_workers(queue: WorkQueue, process) -> asyncio.Task:
    """What the reconciler does: a task per key the queue hands out, `done` after it."""

    async def work(key):
        try:
            await process(key)
        finally:
            queue.done(key)

    async def dispatch():
        tasks = set()
        while (key := await queue.get()) is not None:
            task = asyncio.create_task(work(key))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    return asyncio.create_task(dispatch())


async def until_idle(queue: WorkQueue) -> None:
    while len(queue) or queue.processing:
        await asyncio.sleep(0.001)


def test_a_key_added_twice_while_it_waits_gets_one_pass():
    async def scenario():
        queue, passes = new_queue(), []
        queue.add("a")
        queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        workers = await run_workers(queue, lambda key: asyncio.sleep(0, passes.append(key)))
        await until_idle(queue)
        queue.shutdown()
        await workers
        return passes

    assert asyncio.run(scenario()) == ["a", "b"]


def test_a_key_being_processed_is_not_handed_out_twice_and_an_add_meanwhile_is_not_lost():
    async def scenario():
        queue, passes, running, most = new_queue(workers=4), [], set(), 0
        release = asyncio.Event()

        async def process(key):
            nonlocal most
            assert key not in running, "handed out while its pass runs"
            running.add(key)
            most = max(most, len(running))
            passes.append(key)
            await release.wait()
            running.discard(key)

        workers = await run_workers(queue, process)
        queue.add("a")
        await asyncio.sleep(0.01)
        queue.add("a")  # a change seen during the pass: dirty, queued again when done
        queue.add("a")
        await asyncio.sleep(0.01)
        assert passes == ["a"] and queue.processing == 1 and len(queue) == 0  # held back until done
        release.set()
        await until_idle(queue)
        queue.shutdown()
        await workers
        return passes, most

    passes, most = asyncio.run(scenario())
    assert passes == ["a", "a"] and most == 1


def test_at_most_workers_passes_at_once():
    async def scenario():
        queue, running, most = new_queue(workers=3), 0, 0

        async def process(key):
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

        for i in range(20):
            queue.add(i)
        workers = await run_workers(queue, process)
        await until_idle(queue)
        queue.shutdown()
        await workers
        return most, queue.free_slots

    assert asyncio.run(scenario()) == (3, 3)


def test_background_work_waits_behind_watch_events():
    async def scenario():
        queue, order = new_queue(), []
        gate = asyncio.Event()

        async def process(key):
            order.append(key)
            await gate.wait()

        workers = await run_workers(queue, process)
        queue.add("first")
        await asyncio.sleep(0)
        queue.add("resync", urgent=False)
        queue.add("event")
        gate.set()
        await until_idle(queue)
        queue.shutdown()
        await workers
        return order

    assert asyncio.run(scenario()) == ["first", "event", "resync"]


def test_background_work_a_watch_event_asks_for_moves_up_and_runs_once():
    async def scenario():
        queue, order = new_queue(), []
        gate = asyncio.Event()

        async def process(key):
            order.append(key)
            await gate.wait()

        workers = await run_workers(queue, process)
        queue.add("first")
        await asyncio.sleep(0)
        queue.add("resynced", urgent=False)
        queue.add("other", urgent=False)
        queue.add("event")
        queue.add("resynced")  # its watch event came in while it waited in the background
        gate.set()
        await until_idle(queue)
        queue.shutdown()
        await workers
        return order

    assert asyncio.run(scenario()) == ["first", "event", "resynced", "other"]


async def stream_of_events(queue: WorkQueue, joined: dict, count: int, at_once: int) -> None:
    """`count` watch events, the first `at_once` together, then one every 10 ms; `joined`: when each was added."""
    for i in range(count):
        if i >= at_once:
            await asyncio.sleep(0.01)
        joined[f"event {i}"] = time.monotonic()
        queue.add(f"event {i}")


def assert_goes_ahead_of_later_events(order: list[str], joined: dict, name: str, lead: float) -> None:
    """`name` went behind every event that joined at most `lead` seconds after it, and ahead of every later one
    (events within a millisecond of the line are not judged: the queue stamps them a moment after `joined`)."""
    line = joined[name] + lead
    position = order.index(name)
    assert 0 < position < len(order) - 1, order  # neither first nor starved until the stream ended
    ahead, behind = order[:position], order[position + 1 :]
    assert all(joined[key] < line + 0.001 for key in ahead), (order, joined)
    assert all(joined[key] > line - 0.001 for key in behind), (order, joined)


def test_background_work_goes_ahead_of_the_events_that_came_urgent_lead_after_it():
    """Under a stream of watch events that outruns the workers (20 ms a pass, an event every 10 ms), background work
    is neither starved nor put ahead of the events of its own moment."""

    async def scenario():
        queue, order, joined = new_queue(urgent_lead=0.05), [], {}

        async def process(key):
            order.append(key)
            await asyncio.sleep(0.02)

        workers = await run_workers(queue, process)
        joined["background"] = time.monotonic()
        queue.add("background", urgent=False)
        await stream_of_events(queue, joined, count=30, at_once=5)
        await until_idle(queue)
        queue.shutdown()
        await workers
        return order, joined

    order, joined = asyncio.run(scenario())
    assert_goes_ahead_of_later_events(order, joined, "background", 0.05)


def test_a_deferred_pass_keeps_the_time_its_key_joined_the_queue():
    """A new job's pass, deferred after its Job, goes on ahead of the events that came more than urgent_lead after
    the job itself did, however long it waited for its slot: its status is not put behind every Job of a burst."""

    async def scenario():
        queue, order, joined = new_queue(urgent_lead=0.05), [], {}

        async def process(key):
            order.append(key)
            await asyncio.sleep(0.02)
            if key == "new job":
                await queue.defer(key)
                order.append("new job: status")

        workers = await run_workers(queue, process)
        stream = asyncio.create_task(stream_of_events(queue, joined, count=30, at_once=5))
        await asyncio.sleep(0)  # the first events are ahead of the new job
        joined["new job: status"] = joined["new job"] = time.monotonic()
        queue.add("new job")
        await stream
        await until_idle(queue)
        queue.shutdown()
        await workers
        return order, joined

    order, joined = asyncio.run(scenario())
    assert order.index("event 4") < order.index("new job") < order.index("new job: status"), order
    assert_goes_ahead_of_later_events(order, joined, "new job: status", 0.05)


def test_a_deferred_pass_goes_ahead_of_background_work_that_came_after_its_job():
    """The background lane is in order of time joined: a new job's deferred status write goes before a resync that
    came after the job, though the resync joined the lane first."""

    async def scenario():
        queue, order = new_queue(), []

        async def process(key):
            order.append(key)
            if key == "new job":
                await queue.defer(key)  # "event" waits: the rest of the pass joins the background lane
                order.append("new job: status")

        queue.add("new job")
        await asyncio.sleep(0.002)
        queue.add("resynced", urgent=False)
        queue.add("event")
        workers = await run_workers(queue, process)
        await until_idle(queue)
        queue.shutdown()
        await workers
        return order

    assert asyncio.run(scenario()) == ["new job", "event", "new job: status", "resynced"]


def burst_of_new_jobs(steps: list[str]) -> list[str]:
    """Three new jobs a, b, c, each pass doing `steps` in turn with a defer() before each step after the first (the
    Events' with behind_deferred=True); the order the steps happened in."""

    async def scenario():
        queue, order = new_queue(), []

        async def new_job(key):
            for step in steps:
                if step != steps[0]:
                    await queue.defer(key, behind_deferred=step == "Event")
                order.append(f"{key}: {step}")

        for key in ("a", "b", "c"):
            queue.add(key)
        workers = await run_workers(queue, new_job)
        await until_idle(queue)
        queue.shutdown()
        await workers
        return order

    return asyncio.run(scenario())


def test_a_deferred_pass_goes_on_after_every_waiting_watch_event():
    """A new job's pass creates its Job, then lets the other new jobs create theirs before it finishes."""
    order = burst_of_new_jobs(["Job", "status"])
    # All three Jobs first (a burst), then the deferred rest (c had nobody to wait for).
    assert order == ["a: Job", "b: Job", "c: Job", "c: status", "a: status", "b: status"], order


def test_a_pass_deferred_behind_deferred_ones_lets_their_statuses_go_first():
    """A new job's Events wait behind the other new jobs' Jobs and statuses: Jobs, then statuses, then Events."""
    order = burst_of_new_jobs(["Job", "status", "Event"])
    # c had no Job to wait for, but a's and b's statuses were deferred before its Events.
    assert order == [
        "a: Job", "b: Job", "c: Job", "c: status", "a: status", "b: status", "c: Event", "a: Event", "b: Event"
    ], order  # fmt: skip


def test_defer_is_free_when_nobody_waits():
    async def scenario():
        queue, seen = new_queue(workers=2), []

        async def process(key):
            await queue.defer(key)
            await queue.defer(key, behind_deferred=True)
            seen.append(queue.free_slots)  # still holding its slot: it never gave it up

        queue.add("a")
        workers = await run_workers(queue, process)
        await until_idle(queue)
        queue.shutdown()
        await workers
        return seen, queue.free_slots

    assert asyncio.run(scenario()) == ([1], 2)


def test_cancelled_passes_and_getters_give_their_slots_back():
    async def scenario():
        queue = new_queue(workers=1)
        gate = asyncio.Event()
        queue.add("holder")
        queue.add("waiting")
        holder = await queue.get()

        async def deferring(key):
            await queue.defer(key)  # "waiting" is there: it gives its slot up and waits
            await gate.wait()

        async def pass_of(key):
            try:
                await deferring(key)
            finally:
                queue.done(key)

        task = asyncio.create_task(pass_of(holder))
        await asyncio.sleep(0)
        waiting = await queue.get()
        assert waiting == "waiting" and queue.free_slots == 0
        task.cancel()  # cancelled while deferred: it held no slot then
        await asyncio.gather(task, return_exceptions=True)
        queue.done(waiting)
        assert queue.free_slots == 1

        getter = asyncio.create_task(queue.get())  # nothing to get: waits
        await asyncio.sleep(0)
        getter.cancel()
        await asyncio.gather(getter, return_exceptions=True)
        queue.add("next")
        assert await queue.get() == "next" and queue.free_slots == 0
        queue.done("next")
        return queue.free_slots

    assert asyncio.run(scenario()) == 1


def test_add_after_adds_as_background_work_and_a_key_waiting_twice_keeps_the_sooner_time():
    async def scenario():
        queue = new_queue(workers=2)
        queue.add_after("ttl", 0.05)
        queue.add_after("ttl", 10)  # later: ignored
        assert queue.waiting_for("ttl") <= 0.05 and len(queue) == 0
        queue.add_after("retry", 10)
        queue.add_after("retry", 0.02)  # sooner: wins
        await asyncio.sleep(0.1)
        assert len(queue) == 2 and queue.waiting_for("ttl") is None
        got = [await queue.get(), await queue.get()]
        queue.add_after("now", 0)  # no delay: at once
        return got, len(queue)

    assert asyncio.run(scenario()) == (["retry", "ttl"], 1)


def test_failures_back_off_exponentially_per_key_until_forgotten():
    async def scenario():
        queue = new_queue()
        delays = [queue.add_rate_limited("bot") for _ in range(9)]
        other = queue.add_rate_limited("other")
        failures = queue.num_requeues("bot")
        queue.forget("bot")
        return delays, other, failures, queue.num_requeues("bot"), queue.add_rate_limited("bot")

    delays, other, failures, after_forget, next_delay = asyncio.run(scenario())
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert other == 5 and failures == 9  # per key
    assert after_forget == 0 and next_delay == 5  # a success starts the count again


def test_after_shutdown_get_returns_none_and_adds_are_ignored():
    async def scenario():
        queue = new_queue()
        getter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.shutdown()
        queue.add("late")
        queue.add_after("later", 0.01)
        return await getter, await queue.get(), len(queue)

    assert asyncio.run(scenario()) == (None, None, 0)
