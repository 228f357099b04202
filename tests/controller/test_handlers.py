"""handlers.py: which kopf handlers there are, and which watch events call for a pass."""

from __future__ import annotations

import importlib.util
import inspect

import kopf
import pytest

from kubetune.controller import handlers

# Every decorator of kopf.on that registers a handler.
KOPF_DECORATORS = (
    "startup",
    "cleanup",
    "login",
    "probe",
    "event",
    "create",
    "update",
    "resume",
    "delete",
    "field",
    "daemon",
    "timer",
    "index",
    "validate",
    "mutate",
    "register",
    "subhandler",
)


def test_only_coroutine_event_handlers_so_kopf_needs_no_diff_base_and_no_thread_pool(monkeypatch):
    """The startup handler gives kopf no-op diff-base and progress storages: a change handler
    (on.create/update/resume/delete/field), a daemon or a timer would need the real ones back. A plain
    function would run in kopf's thread pool, off the loop the reconciler lives on."""
    registered: dict[str, list] = {}

    def recording(kind):
        def decorator_factory(*args, **kwargs):
            def decorator(fn):
                registered.setdefault(kind, []).append(fn)
                return fn

            return decorator

        return decorator_factory

    for kind in KOPF_DECORATORS:
        monkeypatch.setattr(kopf.on, kind, recording(kind))
    spec = importlib.util.spec_from_file_location("handlers_as_registered", handlers.__file__)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

    assert set(registered) == {"startup", "cleanup", "login", "probe", "event"}
    # The Jobs and pods are watched by the reconciler, metadata only (childwatch.py), not through kopf.
    assert {fn.__name__ for fn in registered["event"]} == {"finetunejob_event"}
    assert all(inspect.iscoroutinefunction(fn) for fn in registered["event"])
    assert all(inspect.iscoroutinefunction(fn) for fn in registered["startup"] + registered["cleanup"])


def ftj(generation: int = 1, status: dict | None = None, deleting: bool = False) -> kopf.Body:
    meta = {"name": "x", "namespace": "n", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return kopf.Body({"metadata": meta, "spec": {}, **({"status": status} if status is not None else {})})


@pytest.mark.parametrize(
    ("event", "body", "wanted"),
    [
        ("ADDED", ftj(), True),  # new: no phase yet
        (None, ftj(status={"phase": "Succeeded", "observedGeneration": 1}), True),  # the initial listing: every object
        (None, ftj(status={"phase": "Running", "observedGeneration": 1}), True),
        ("MODIFIED", ftj(2, {"phase": "Running", "observedGeneration": 1}), True),  # a spec edit
        ("MODIFIED", ftj(1, {"phase": "Running", "observedGeneration": 1, "progress": {"step": 3}}), False),  # a report
        ("MODIFIED", ftj(1, {"progress": {"step": 3}}), True),  # the reporter first, no phase yet
        ("DELETED", ftj(), False),
        ("MODIFIED", ftj(deleting=True), False),
    ],
)
def test_which_finetunejob_events_call_for_a_pass(event, body, wanted):
    assert handlers.needs_reconcile(type=event, body=body) is wanted


def test_a_listed_job_calls_for_a_pass_unless_it_is_finished_and_known(monkeypatch):
    """The listing at startup, or after a lost watch: a finished job the operator has had a pass over (its record
    agrees with the listed status) calls for nothing, so a history of finished jobs costs no pass."""
    from kubetune.controller import status
    from kubetune.controller.config import OperatorConfig
    from kubetune.controller.reconciler import Reconciler, Record

    reconciler = Reconciler(kube=None, config=OperatorConfig())
    monkeypatch.setattr(handlers.runtime, "reconciler", reconciler)
    done = {"phase": "Succeeded", "observedGeneration": 1}
    assert handlers.needs_reconcile(None, ftj(status=done)) is True  # not seen by this process yet
    reconciler._records[("n", "x")] = Record(status.canonical(done))
    assert handlers.needs_reconcile(None, ftj(status=done)) is False
    assert handlers.needs_reconcile(None, ftj(2, done)) is True  # edited while the watch was down
    assert handlers.needs_reconcile(None, ftj(status=done | {"phase": "Failed"})) is True  # someone else wrote it
    running = {"phase": "Running", "observedGeneration": 1}
    reconciler._records[("n", "x")] = Record(status.canonical(running))
    assert handlers.needs_reconcile(None, ftj(status=running)) is True  # unfinished: always looked at
