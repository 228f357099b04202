"""The kopf handlers' shape and their event filters."""

from __future__ import annotations

import inspect

import kopf
import pytest

from kubetune.controller import handlers


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
