"""The kopf handlers' shape and filters, and the operator's API client (against the emulator)."""

from __future__ import annotations

import asyncio
import inspect

import kopf
import pytest
from kubernetes.client import ApiException

from emulator import ADMIN_TOKEN
from kubetune.controller import handlers
from kubetune.controller.kube import Kube


def test_only_coroutine_event_handlers_so_kopf_needs_no_diff_base_and_no_thread_pool():
    registry = kopf.get_default_registry()
    # The startup handler gives kopf no-op diff-base and progress storages: a change handler
    # (on.create/update/resume/delete) or a daemon would need the real ones back.
    assert not registry._changing._handlers and not registry._spawning._handlers
    watching = registry._watching._handlers
    assert {h.id for h in watching} == {"finetunejob_changed", "job_changed", "pod_changed"}
    assert all(inspect.iscoroutinefunction(h.fn) for h in watching)  # on the loop, never a worker thread
    assert all(inspect.iscoroutinefunction(h.fn) for h in registry._activities._handlers
               if h.id in ("startup", "cleanup"))


def ftj(generation: int = 1, **status) -> kopf.Body:
    return kopf.Body({"metadata": {"name": "x", "namespace": "n", "generation": generation}, "status": status})


@pytest.mark.parametrize(("event", "body", "wanted"), [
    (None, ftj(phase="Running", observedGeneration=1), True),  # the initial listing: every object
    ("ADDED", ftj(), True),  # new: no phase yet
    ("MODIFIED", ftj(2, phase="Running", observedGeneration=1), True),  # a spec edit
    ("MODIFIED", ftj(1, phase="Running", observedGeneration=1), False),  # the trainer's progress report
    ("DELETED", ftj(), False),
])
def test_which_finetunejob_events_call_for_a_reconcile(event, body, wanted):
    assert handlers.needs_reconcile(type=event, body=body) is wanted


def test_a_job_just_created_says_nothing_new_but_any_later_change_does():
    assert not handlers.job_tells_something(type="ADDED", status={})
    assert handlers.job_tells_something(type="ADDED", status={"active": 1})  # a re-list after a restart
    assert handlers.job_tells_something(type="MODIFIED", status={})
    assert handlers.job_tells_something(type="DELETED", status={})


def run(coro_fn):
    return asyncio.run(coro_fn())


def test_the_api_client_maps_answers_and_reads_rotated_credentials_again_after_a_401(emulator):
    configuration = emulator.client_configuration("expired-token")
    reads = []

    def refresh(config):  # what the in-cluster loader's hook does when the token file was rotated
        reads.append(1)
        if len(reads) > 1:
            config.api_key["authorization"] = f"Bearer {ADMIN_TOKEN}"

    configuration.refresh_api_key_hook = refresh

    async def scenario():
        kube = Kube(configuration)
        try:
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-client-test"}}
            await kube.request("POST", "/api/v1/namespaces", body=namespace)  # 401 once, then admitted
            assert len(reads) == 2
            config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "c", "namespace": "kube-client-test"}, "data": {"k": "v"}}
            created = await kube.create(config_map)
            assert created["metadata"]["uid"] and created["data"] == {"k": "v"}
            with pytest.raises(ApiException) as err:
                await kube.create(config_map)
            assert err.value.status == 409 and "AlreadyExists" in err.value.body
            patched = await kube.patch("ConfigMap", "kube-client-test", "c", {"data": {"k": "w"}})
            assert patched["data"] == {"k": "w"}
            assert [c["metadata"]["name"] for c in await kube.list("ConfigMap", "kube-client-test")] == ["c"]
            assert await kube.delete("ConfigMap", "kube-client-test", "c") is True
            assert await kube.get("ConfigMap", "kube-client-test", "c") is None
            assert await kube.delete("ConfigMap", "kube-client-test", "c") is False
        finally:
            await kube.close()
        assert len(reads) == 2  # credentials are not re-read on every call

    run(scenario)
