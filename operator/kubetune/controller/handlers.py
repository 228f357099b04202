"""kopf handlers: thin. Each FineTuneJob watch event that calls for it queues a pass over one FineTuneJob
(reconciler.py) and returns; the start-up and clean-up handlers start and stop the reconciler, which also watches the
operator's Jobs and pods, for their metadata only (childwatch.py).

Only event handlers: kopf keeps no state of its own on FineTuneJobs (docs/operator.md, "Design"). All
of them are coroutines on kopf's event loop, as is the Reconciler: no thread pool.

Run with `kubetune operator`, or `kopf run -m kubetune.controller.handlers --all-namespaces`
(settings then come from the environment, see config.py).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import kopf
import kubernetes

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.controller import config
from kubetune.controller.kube import Kube
from kubetune.controller.metrics import Metrics
from kubetune.controller.reconciler import Reconciler
from kubetune.controller.status import FINISHED_PHASES

FTJ = dict(group=GROUP, version=VERSION, plural=PLURAL)
PREFIX = "kubetune.dev"


class Runtime:
    """What the handlers share while the operator runs (set up at startup, torn down at cleanup)."""

    client_configuration: kubernetes.client.Configuration | None = None  # tests set one; else in-cluster/kubeconfig
    reconciler: Reconciler | None = None
    metrics_server: Any = None
    # Set by `kubetune operator` (its own process), never in-process: once kopf starts stopping, the
    # process must end within this many seconds even if kopf's shutdown hangs (seen after a 410 Gone on
    # a list request), so that Kubernetes restarts it instead of keeping a pod that watches nothing.
    exit_after_stop_seconds: float | None = None


runtime = Runtime()


def _client_configuration() -> kubernetes.client.Configuration:
    if runtime.client_configuration is not None:
        return runtime.client_configuration
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return configuration


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """Event handlers compare nothing: spare kopf a deep copy of every watched object (docs/operator.md)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        pass


class NoProgressStorage(kopf.ProgressStorage):
    """Event handlers keep no progress: spare kopf another deep copy of every watched object."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        pass

    def clear(self, *, essence: Any) -> Any:
        return essence


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    cfg = config.current()
    # Only event handlers below, so kopf needs neither a diff base nor progress records (a change handler
    # would need both back: tests/controller/test_handlers.py fails if one is registered).
    settings.persistence.progress_storage = NoProgressStorage()
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf posts only problems
    if cfg.namespaces:
        # Namespaced mode: no cluster-wide watching of namespaces/CRDs (the chart grants none).
        settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    # kopf keeps a worker (and the last event it handled) per object for this long after its last event (5 s by
    # default): in a burst of thousands of new jobs, that was a hundred MiB of events nobody would read again.
    settings.batching.idle_timeout = 0.5
    settings.networking.request_timeout = 60
    metrics = Metrics()
    kube = Kube(_client_configuration(), connections=cfg.concurrent_reconciles)
    runtime.reconciler = Reconciler(kube, cfg, metrics)
    runtime.reconciler.start(watch_children=True)  # the Jobs' and pods' watches, metadata only (childwatch.py)
    if cfg.metrics_port:
        runtime.metrics_server = metrics.serve(cfg.metrics_port)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if runtime.exit_after_stop_seconds is not None:
        watchdog = threading.Timer(runtime.exit_after_stop_seconds, _exit_stalled_operator)
        watchdog.daemon = True
        watchdog.start()
    if runtime.reconciler is not None:
        reconciler, runtime.reconciler = runtime.reconciler, None
        await reconciler.stop()
    if runtime.metrics_server is not None:
        runtime.metrics_server.shutdown()
        runtime.metrics_server = None


def _exit_stalled_operator() -> None:
    logging.getLogger("kubetune.operator").error(
        "the operator is stopping but kopf has not finished after %ss; exiting", runtime.exit_after_stop_seconds
    )
    logging.shutdown()
    os._exit(1)


@kopf.on.login()
def login(logger: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    if runtime.client_configuration is None:
        return kopf.login_via_client(logger=logger, **kwargs)
    cfg = runtime.client_configuration
    token = (cfg.api_key or {}).get("authorization", "").removeprefix("Bearer ").strip() or None
    return kopf.ConnectionInfo(
        server=cfg.host,
        token=token,
        scheme="Bearer" if token else None,
        insecure=not cfg.verify_ssl,
        ca_path=cfg.ssl_ca_cert,
    )


def lean(body: kopf.Body) -> dict:
    """The watched FineTuneJob as a pass reads it, kept until its pass: without metadata.managedFields (often the
    larger half of an object, and never read), so that a burst's queue holds less."""
    metadata = {key: value for key, value in (body.get("metadata") or {}).items() if key != "managedFields"}
    return {**dict(body), "metadata": metadata}


def needs_reconcile(type: str | None, body: kopf.Body, **_: Any) -> bool:
    """Which FineTuneJob watch events call for a reconcile (level-based: the reconciler reads the rest).

    The listing (type None: at startup, or after the watch was lost) for a job this process has had no pass over, or
    one still unfinished; and anything the operator has not answered yet: a new object (no phase) or a spec change
    (generation ahead of status.observedGeneration). A finished job it knows, listed again, calls for nothing: a
    history of finished jobs costs no pass.
    Status-only changes (the operator's own writes, the trainer's progress reports) do not, unless they
    touched the operator's keys or reported a result outside the job's output root (anyone with the trainer's
    token can patch the whole status: the pass puts it right), or brought a memory plan (status.plan) the operator
    has not told as an Event yet.
    """
    metadata = body.get("metadata") or {}
    if type == "DELETED" or metadata.get("deletionTimestamp"):
        return False
    reconciler = runtime.reconciler
    if type is None and (reconciler is None or not reconciler.knows(body)):
        return True
    status = body.get("status") or {}
    if not status.get("phase") or metadata.get("generation") != status.get("observedGeneration"):
        return True
    if type is None and status.get("phase") not in FINISHED_PHASES:
        return True
    return reconciler is not None and (reconciler.status_disagrees(body) or reconciler.plan_unannounced(body))


# Coroutines, though they never wait: kopf runs a plain function in a thread pool. One handler per resource: kopf's
# cost per event grows with the handlers it matches and runs.
@kopf.on.event(**FTJ)
async def finetunejob_event(type: str | None, body: kopf.Body, name: str, namespace: str, **_: Any) -> None:
    """Every watch event updates the job's metrics (the trainer's progress reports included: they call for no pass);
    one that calls for a pass (needs_reconcile) queues it; a deletion queues the pass that forgets the job (the resync
    lists nothing that would notice)."""
    reconciler = runtime.reconciler
    if reconciler is None:
        return  # kopf watches only once the startup handler has made it
    if type == "DELETED":
        reconciler.metrics.observe(namespace, name, None)
        reconciler.enqueue(namespace, name, urgent=False)
        return
    reconciler.metrics.observe(namespace, name, body)
    if needs_reconcile(type, body):
        reconciler.enqueue(namespace, name, body=lean(body))


@kopf.on.probe(id="finetunejobs")
def phases(**_: Any) -> dict[str, int]:
    return runtime.reconciler.metrics.phase_counts() if runtime.reconciler else {}
