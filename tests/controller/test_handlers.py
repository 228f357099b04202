"""handlers.py: which kopf handlers there are (no resource handler: the reconciler watches for itself)."""

from __future__ import annotations

import importlib.util
import inspect

import kopf

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


def test_kopf_runs_the_process_and_watches_nothing(monkeypatch):
    """No resource handler: kopf would spend a task and a per-object worker on each watch event, and keep state on
    the objects (a change handler's diff base and progress). The start-up and clean-up handlers are coroutines: a
    plain function would run in kopf's thread pool, off the loop the reconciler lives on."""
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

    assert set(registered) == {"startup", "cleanup", "login", "probe"}
    assert all(inspect.iscoroutinefunction(fn) for fn in registered["startup"] + registered["cleanup"])
