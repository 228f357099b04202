"""The Reconciler's retry backoff, with an API that fails on demand (no operator, no emulator)."""

from __future__ import annotations

import asyncio

import pytest

from kubetune.controller.config import OperatorConfig
from kubetune.controller.reconciler import RETRY_MAX_SECONDS, RETRY_SECONDS, Reconciler


class FlakyKube:
    """Answers every GET of the FineTuneJob with a failure while `failing`, else with 'not found'."""

    def __init__(self):
        self.failing = True

    async def get(self, kind, namespace, name):
        if self.failing:
            raise ConnectionError("the API server went away")
        return None  # deleted: nothing to do


def test_failed_passes_are_retried_with_a_doubling_delay_reset_by_a_success():
    async def scenario():
        kube = FlakyKube()
        reconciler = Reconciler(kube, OperatorConfig())
        delays = []
        for _ in range(9):
            with pytest.raises(ConnectionError):
                await reconciler.reconcile("team", "bot")
            delays.append(reconciler.retry_later("team", "bot"))
        assert delays[:4] == [RETRY_SECONDS, 2 * RETRY_SECONDS, 4 * RETRY_SECONDS, 8 * RETRY_SECONDS]
        assert max(delays) == RETRY_MAX_SECONDS and delays[-1] == RETRY_MAX_SECONDS
        assert len(reconciler._wakeups) == 9  # each failure scheduled its retry

        kube.failing = False
        assert await reconciler.reconcile("team", "bot") is None
        kube.failing = True
        with pytest.raises(ConnectionError):
            await reconciler.reconcile("team", "bot")
        assert reconciler.retry_later("team", "bot") == RETRY_SECONDS  # a success starts the count again

    asyncio.run(scenario())


class SlowKube:
    """GETs that take a while, counting how many are in flight at once."""

    def __init__(self):
        self.in_flight = self.most = 0

    async def get(self, kind, namespace, name):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return None


def test_a_burst_is_reconciled_a_bounded_number_at_a_time_and_one_object_never_twice_at_once():
    async def scenario():
        kube = SlowKube()
        reconciler = Reconciler(kube, OperatorConfig(concurrent_reconciles=4))
        await asyncio.gather(*(reconciler.reconcile("team", f"job-{i}") for i in range(40)))
        assert kube.most == 4
        kube.most = 0
        await asyncio.gather(*(reconciler.reconcile("team", "same") for _ in range(10)))
        assert kube.most == 1

    asyncio.run(scenario())
