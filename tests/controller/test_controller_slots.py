"""Slots: a bounded number of reconciles at once, urgent ones first, deferred ones never starved."""

from __future__ import annotations

import asyncio

from kubetune.controller.slots import Slots


def test_deferred_work_waits_for_every_urgent_waiter_then_runs():
    async def scenario():
        slots, order = Slots(1), []

        async def new_job(name):
            async with slots.hold() as slot:
                order.append(f"{name}: Job")
                await asyncio.sleep(0)
                await slot.defer()
                order.append(f"{name}: status")

        await asyncio.gather(*(new_job(n) for n in ("a", "b", "c")))
        return order

    order = asyncio.run(scenario())
    # All three Jobs first (a burst), then the deferred rest (c had nobody to wait for).
    assert order[:3] == ["a: Job", "b: Job", "c: Job"], order
    assert order[3:] == ["c: status", "a: status", "b: status"], order


def test_defer_is_free_when_nobody_waits():
    async def scenario():
        slots = Slots(2)
        async with slots.hold() as slot:
            await slot.defer()
            assert slot.held and slots._free == 1

    asyncio.run(scenario())


def test_a_deferred_reconcile_is_served_once_it_waited_too_long():
    async def scenario():
        slots, order = Slots(1, max_wait=0.05), []

        go = asyncio.Event()

        async def deferred():
            async with slots.hold() as slot:
                await go.wait()
                await slot.defer()
                order.append("deferred")

        async def urgent(i):
            async with slots.hold():
                order.append(f"urgent {i}")
                await asyncio.sleep(0.02)

        first = asyncio.create_task(deferred())
        await asyncio.sleep(0)
        stream = [asyncio.create_task(urgent(i)) for i in range(10)]  # a stream of urgent work, all waiting
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(*stream, first)
        return order

    order = asyncio.run(scenario())
    assert 0 < order.index("deferred") < 10, order  # not starved until the stream ended


def test_cancelled_waiters_give_their_slot_back():
    async def scenario():
        slots = Slots(1)
        release = asyncio.Event()

        async def holder():
            async with slots.hold():
                await release.wait()

        async def waiter():
            async with slots.hold():
                pass

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(waiter()) for _ in range(3)]
        await asyncio.sleep(0)
        waiting[1].cancel()
        release.set()
        await held
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError) and results[0] is None and results[2] is None
        assert slots._free == 1 and not slots._urgent and not slots._deferred

    asyncio.run(scenario())


def test_a_background_pass_waits_behind_urgent_work():
    async def scenario():
        slots, order = Slots(1), []
        gate = asyncio.Event()

        async def work(name, urgent):
            async with slots.hold(urgent):
                order.append(name)
                await gate.wait()

        first = asyncio.create_task(work("first", True))
        await asyncio.sleep(0)
        queued = [asyncio.create_task(work("resync", False)), asyncio.create_task(work("event", True))]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *queued)
        return order

    assert asyncio.run(scenario()) == ["first", "event", "resync"]
