"""kopf handlers: thin. kopf runs the process (its event loop, signals, the liveness probe, the login): the start-up
and clean-up handlers start and stop the reconciler (reconciler.py), which watches the FineTuneJobs, and the
operator's Jobs and pods for their metadata only, itself (watches.py).

No resource handlers: kopf keeps no state of its own on FineTuneJobs, and spends nothing per watch event
(docs/operator.md, "Design"). The handlers are coroutines on kopf's event loop, as is the Reconciler: no thread pool.

Run with `kubetune operator`, or `kopf run -m kubetune.controller.handlers --all-namespaces`
(settings then come from the environment, see config.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import kopf
import kubernetes

from kubetune.controller import config
from kubetune.controller.kube import Kube
from kubetune.controller.leader import LeaderElector, lease_namespace
from kubetune.controller.main import operator_identity
from kubetune.controller.metrics import Metrics
from kubetune.controller.reconciler import Reconciler

log = logging.getLogger("kubetune.operator")


class Runtime:
    """What the handlers share while the operator runs (set up at startup, torn down at cleanup)."""

    client_configuration: kubernetes.client.Configuration | None = None  # tests set one; else in-cluster/kubeconfig
    reconciler: Reconciler | None = None
    metrics_server: Any = None
    elector: LeaderElector | None = None  # with several replicas (settings' leader_election)
    leading: asyncio.Task | None = None  # reconciles while this replica holds the Lease
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


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    cfg = config.current()
    # kopf watches nothing (no resource handlers): no scanning of namespaces and CRDs for resources to serve either,
    # which the chart's RBAC does not grant in namespaced mode.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf posts only problems
    settings.networking.request_timeout = 60
    metrics = Metrics()
    if cfg.metrics_port:
        runtime.metrics_server = metrics.serve(cfg.metrics_port)
    if not cfg.leader_election:
        runtime.reconciler = _start_reconciler(cfg, metrics)
        return
    # Several replicas: the one holding the Lease reconciles, the others wait (in the background: kopf runs the
    # probes and the clean-up meanwhile).
    lease = cfg.leader_election_lease_seconds
    elector = LeaderElector(
        Kube(_client_configuration(), connections=2),
        lease_namespace(),
        cfg.leader_election,
        operator_identity(),
        lease_seconds=lease,
        renew_deadline_seconds=lease * 2 / 3,
        retry_seconds=lease * 2 / 15,
    )
    runtime.elector = elector
    runtime.leading = asyncio.create_task(_lead_while_elected(elector, cfg, metrics), name="kubetune-leader-election")


def _start_reconciler(cfg: config.OperatorConfig, metrics: Metrics) -> Reconciler:
    reconciler = Reconciler(Kube(_client_configuration(), connections=cfg.concurrent_reconciles), cfg, metrics)
    reconciler.start(watch=True)  # the FineTuneJobs', Jobs' and pods' watches (watches.py)
    return reconciler


async def _lead_while_elected(elector: LeaderElector, cfg: config.OperatorConfig, metrics: Metrics) -> None:
    """Reconcile for as long as this replica holds the Lease; when it loses it (renewals failed past the deadline,
    or another replica holds it), stop every pass and watch before a standby may start, and stand by again. Each
    term starts from nothing, as a restart does: the listing gives every unfinished job a pass."""
    while True:
        await elector.acquire()
        runtime.reconciler = _start_reconciler(cfg, metrics)
        try:
            await elector.keep()
        finally:
            reconciler, runtime.reconciler = runtime.reconciler, None
            await reconciler.stop(post_events=elector.is_leader)  # still leading: a rollout's stop, not a lost Lease
            for namespace, name in metrics.recorded():  # a standby's series would count its jobs twice
                metrics.set_phase(namespace, name, None)
        log.warning("leadership lost: the reconciler stopped; this replica stands by")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if runtime.exit_after_stop_seconds is not None:
        watchdog = threading.Timer(runtime.exit_after_stop_seconds, _exit_stalled_operator)
        watchdog.daemon = True
        watchdog.start()
    if runtime.leading is not None:
        runtime.leading.cancel()  # stops the reconciler of this term (its finally)
        await asyncio.gather(runtime.leading, return_exceptions=True)
        runtime.leading = None
    if runtime.reconciler is not None:
        reconciler, runtime.reconciler = runtime.reconciler, None
        await reconciler.stop(post_events=True)
    if runtime.elector is not None:
        elector, runtime.elector = runtime.elector, None
        await elector.release()  # after the reconciler stopped: a standby takes over at once, and alone
        await elector.kube.close()
    if runtime.metrics_server is not None:
        runtime.metrics_server.shutdown()
        runtime.metrics_server = None


def _exit_stalled_operator() -> None:
    log.error("the operator is stopping but kopf has not finished after %ss; exiting", runtime.exit_after_stop_seconds)
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


@kopf.on.probe(id="finetunejobs")
def phases(**_: Any) -> dict[str, int]:
    return runtime.reconciler.metrics.phase_counts() if runtime.reconciler else {}
