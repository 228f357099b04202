"""The Reconciler's retry backoff, with an API that fails on demand (no operator, no emulator)."""

from __future__ import annotations

import asyncio

import pytest

from kubetune.controller.config import OperatorConfig
from kubetune.controller.reconciler import RETRY_MAX_SECONDS, RETRY_SECONDS, Reconciler


class FlakyKube:
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

        gets = kube.gets
        await reconciler.resync()  # in backoff: the periodic resync leaves it to its scheduled retry
        assert kube.gets == gets

        kube.failing = False
        assert await reconciler.reconcile("team", "bot") is None
        await reconciler.resync()  # healthy again: visited like every unfinished job
        assert kube.gets == gets + 2
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


class RecordingKube:
    """An API that accepts every write and records its order (each call yields to the loop, as I/O does)."""

    def __init__(self):
        self.calls = []

    async def create(self, obj):
        await asyncio.sleep(0)
        self.calls.append((obj["kind"], obj["metadata"].get("name") or obj["involvedObject"]["name"]))
        return obj | {"metadata": obj["metadata"] | {"uid": "uid-" + obj["metadata"].get("name", "")}}

    async def patch(self, kind, namespace, name, patch, subresource=None):
        await asyncio.sleep(0)
        self.calls.append((f"{kind}/{subresource}" if subresource else kind, name))
        return {}


def new_finetunejob(name):
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "generation": 1},
            "spec": {"technique": "lora", "objective": "causal-lm", "model": {"uri": "hf://org/model"},
                     "datasets": [{"uri": "s3://bucket-a/train.jsonl", "format": "text"}],
                     "output": {"uri": "s3://bucket-a/out/"}}}


def test_a_burst_gets_every_job_created_before_the_work_that_can_wait():
    async def scenario():
        kube = RecordingKube()
        reconciler = Reconciler(kube, OperatorConfig(concurrent_reconciles=2))
        names = [f"job-{i}" for i in range(6)]
        phases = await asyncio.gather(*(reconciler.reconcile("team", n, body=new_finetunejob(n)) for n in names))
        return kube.calls, phases

    calls, phases = asyncio.run(scenario())
    assert phases == ["Pending"] * 6
    last_job = max(i for i, (kind, _) in enumerate(calls) if kind == "Job")
    after_job = ("Role", "RoleBinding", "FineTuneJob/status", "Event")
    deferred = [i for i, (kind, _) in enumerate(calls) if kind in after_job]
    assert len(deferred) == 6 * 4
    # Two at a time: only the last pair's grant/status may come before the last Job.
    assert sum(i < last_job for i in deferred) <= 2 * 4, calls
    for name in (f"job-{i}" for i in range(6)):  # and each job still gets everything, in a valid order
        mine = [kind for kind, n in calls if n in (name, f"{name}-spec", f"{name}-reporter")]
        assert mine == ["ServiceAccount", "ConfigMap", "Job", *after_job], mine
