"""childwatch.py: the operator's metadata-only watches of its Jobs and pods, against the test API server."""

from __future__ import annotations

import asyncio

from kubetune.controller import builders, childwatch
from kubetune.controller.kube import METADATA, Kube
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import start_emulator


def job(name: str, parent: str | None) -> dict:
    labels = builders.labels(parent) if parent else {"app": "someone-elses"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "team", "labels": labels},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "img"}]}}},
    }


async def until(predicate, what: str, seen: list, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {seen}")
        await asyncio.sleep(0.02)


def test_a_child_watch_gets_metadata_only_of_its_own_children_and_outlives_lost_watches():
    emulator = start_emulator()
    seen: list[tuple[str, str]] = []

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

            def on_change(kind_of_event: str, meta: dict) -> None:
                seen.append((kind_of_event, meta["labels"].get(builders.LABEL_FTJ, "")))

            task = asyncio.create_task(
                childwatch.watch_forever(kube, "Job", "team", builders.MANAGED_SELECTOR, on_change)
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
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await kube.close()

    try:
        asyncio.run(scenario())
    finally:
        emulator.stop()
    assert ("ADDED", "a") not in seen  # the listing calls for nothing
    assert all(parent in ("a", "b", "c") for _, parent in seen), seen
