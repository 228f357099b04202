"""watches.py: the operator's watches of its FineTuneJobs (whole) and of its Jobs and pods (metadata only), against the
test API server."""

from __future__ import annotations

import asyncio

import pytest

from kubetune.controller import builders, watches
from kubetune.controller.kube import METADATA, Kube
from kubetune.testing.emulator import ADMIN_TOKEN, Fault
from kubetune.testing.harness import start_emulator


def job(name: str, parent: str | None) -> dict:
    labels = builders.labels(parent) if parent else {"app": "someone-elses"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "team", "labels": labels},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "img"}]}}},
    }


@pytest.fixture
def own_emulator():
    """An API server of the test's own: these tests cut its watches and forget its history."""
    emulator = start_emulator()
    yield emulator
    emulator.stop()


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def until(predicate, what: str, seen: list, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {seen}")
        await asyncio.sleep(0.02)


def test_a_child_watch_gets_metadata_only_of_its_own_children_and_outlives_lost_watches(own_emulator):
    emulator = own_emulator
    seen: list[tuple[str, str]] = []
    relisted: list[int] = []

    async def scenario():
        kube = Kube(emulator.client_configuration(ADMIN_TOKEN))
        try:
            await kube.create(job("before", "a"))  # listed at the start: calls for nothing
            # What the API server sends for a metadata-only watch: no spec, no status.
            events = kube.watch("Job", "team", {"resourceVersion": "0", "timeoutSeconds": "1"}, METADATA)
            first = await anext(events)
            await events.aclose()
            assert first["object"]["kind"] == "PartialObjectMetadata" and set(first["object"]) == {
                "apiVersion",
                "kind",
                "metadata",
            }, first

            def on_change(kind_of_event: str, obj: dict) -> None:
                assert set(obj) == {"apiVersion", "kind", "metadata"}, obj  # metadata only
                seen.append((kind_of_event, obj["metadata"]["labels"].get(builders.LABEL_FTJ, "")))

            relisting = {"on_relisted": lambda: relisted.append(1)}
            task = asyncio.create_task(
                watches.watch_forever(kube, "Job", "team", builders.MANAGED_SELECTOR, on_change, **relisting)
            )
            await asyncio.sleep(0.3)
            mine = job("mine", "b")
            mine["metadata"]["annotations"] = {"kubetune.dev/spec": "x" * 200_000}  # a long line: a spec of 200 KB
            await kube.create(mine)
            await kube.create(job("other", None))  # not the operator's: the API server never sends it
            await until(lambda: ("ADDED", "b") in seen, "the new Job's event", seen)
            # The watch ends (the server's timeout, a lost connection): watched again from where it was.
            emulator.cut_watches()
            await kube.patch("Job", "team", "mine", {"metadata": {"annotations": {"x": "1"}}})
            await until(lambda: ("MODIFIED", "b") in seen, "the change made while the watch was re-opened", seen)
            # Too old a version (410): listed again, then watched.
            emulator.forget_history()
            await kube.create(job("meanwhile", "c"))  # lost with the history: the resync's to catch, not the watch's
            emulator.cut_watches()
            await asyncio.sleep(0.5)
            await kube.delete("Job", "team", "before")
            await until(lambda: ("DELETED", "a") in seen, "the deletion after the re-list", seen)
            # Whether the history went before the watch had its last event depends on timing: the next watch
            # request answered 410 for certain, the watch lists again, and says so (its events in between are lost).
            relisted.clear()
            emulator.inject(Fault(lambda call: call.verb == "watch" and call.resource == "jobs", 410, reason="Expired"))
            emulator.cut_watches()
            await until(lambda: relisted == [1], "the listing after a 410", seen)
            await stop(task)
        finally:
            await kube.close()

    asyncio.run(scenario())
    assert ("ADDED", "a") not in seen  # the listing calls for nothing
    assert all(parent in ("a", "b", "c") for _, parent in seen), seen


def test_the_finetunejob_watch_hands_over_every_listed_job_in_chunks_then_whole_events(monkeypatch, own_emulator):
    """The FineTuneJobs' watch: the listing (at the start, and again after a 410) hands over every job, whole, with
    its kind and apiVersion (a list's items carry none), read a chunk at a time; then each watch event, whole."""
    from kubetune.api.constants import API_VERSION, KIND

    monkeypatch.setattr(watches, "LIST_CHUNK", 2)
    emulator = own_emulator
    seen: list[tuple[str, str, str, bool]] = []

    def ftj(name: str) -> dict:
        spec = {"technique": "lora", "model": {"uri": "hf://o/m"}, "datasets": [{"uri": "s3://b/d.jsonl"}]}
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": "team"}, "spec": spec}

    def on_change(kind_of_event: str, obj: dict) -> None:
        seen.append((kind_of_event, obj["metadata"]["name"], obj.get("kind"), "spec" in obj))

    async def scenario():
        kube = Kube(emulator.client_configuration(ADMIN_TOKEN))
        lists = []
        request = kube.request

        async def counting(method, path, **kwargs):
            if method == "GET" and path.endswith("finetunejobs"):
                lists.append(dict(kwargs.get("query") or {}))
            return await request(method, path, **kwargs)

        kube.request = counting
        try:
            for name in ("a", "b", "c", "d", "e"):
                await kube.create(ftj(name))
            task = asyncio.create_task(
                watches.watch_forever(kube, KIND, "team", "", on_change, metadata_only=False, on_listed=on_change)
            )
            await until(lambda: len(seen) == 5, "the five listed jobs", seen)
            assert seen == [(watches.LISTED, name, KIND, True) for name in "abcde"]
            assert len(lists) == 3 and all(q["limit"] == "2" for q in lists)  # 2 + 2 + 1
            await kube.create(ftj("f"))
            await until(lambda: ("ADDED", "f", KIND, True) in seen, "the new job's event, whole", seen)
            emulator.forget_history()
            emulator.cut_watches()
            await until(lambda: len(seen) >= 12, "the jobs listed again after the 410", seen)
            assert seen[6:12] == [(watches.LISTED, name, KIND, True) for name in "abcdef"]
            await stop(task)
        finally:
            await kube.close()

    asyncio.run(scenario())


def test_the_watches_leave_every_connection_of_the_passes_to_them(own_emulator):
    """The watches hold their connections for as long as they run: on the passes' connections, one pass at a time
    (KUBETUNE_CONCURRENT_RECONCILES=1) would wait forever behind them. They have connections of their own."""
    from kubetune.api.constants import API_VERSION, KIND
    from kubetune.controller.config import OperatorConfig
    from kubetune.controller.reconciler import Reconciler
    from kubetune.testing.emulator import OPERATOR_TOKEN

    emulator = own_emulator
    settings = OperatorConfig(
        trainer_image="registry.example/kubetune-trainer:test",
        default_output_uri="s3://out/runs/",
        concurrent_reconciles=1,
        resync_seconds=3600,
        metrics_port=0,
    )
    spec = {
        "technique": "lora",
        "objective": "instruction",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "datasets": [{"uri": "s3://data/support/train.jsonl", "format": "messages"}],
    }

    async def scenario() -> list[str]:
        admin = Kube(emulator.client_configuration(ADMIN_TOKEN))
        reconciler = Reconciler(Kube(emulator.client_configuration(OPERATOR_TOKEN), connections=1), settings)
        reconciler.start(watch=True)
        try:
            await asyncio.sleep(0.3)  # every watch open
            for name in ("a", "b"):
                meta = {"name": name, "namespace": "team"}
                await admin.create({"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec})
            deadline = asyncio.get_running_loop().time() + 15
            while asyncio.get_running_loop().time() < deadline:
                jobs = [j["metadata"]["name"] for j in await admin.list("Job", "team")]
                if len(jobs) == 2:
                    break
                await asyncio.sleep(0.1)
            return sorted(jobs)
        finally:
            await reconciler.stop()
            await admin.close()

    assert asyncio.run(scenario()) == ["a", "b"]
