"""`kubetune operator`: run the kopf operator with settings from the environment and the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import sys
from collections.abc import Iterator

from kubetune.controller import config

log = logging.getLogger("kubetune.operator")

# How long kopf may take to stop (finish handlers, close watches) before the process ends anyway.
STOP_GRACE_SECONDS = 10.0


@contextlib.contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """uvloop when installed (the `kopf[uvloop]` extra, in the operator image), as `kopf run` does: the
    operator spends most of its time in the event loop (docs/operator.md, "Design")."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.get_loop()


def operator_identity() -> str:
    """Who this operator is to its peers: the pod's name, else host and process id.

    kopf's own default asks `getpass.getuser()`, which raises for a uid without a passwd entry: the image
    runs as 65532, which a Debian slim base does not list, so every start crash-looped. The chart passes
    the pod name (downward API), which also tells the replicas of a Deployment apart.
    """
    pod = os.environ.get("POD_NAME") or os.environ.get("POD_ID")
    if pod:
        return pod
    return f"{socket.gethostname()}/{os.getpid()}"


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    try:
        settings = config.from_args(args)
    except ValueError as err:  # a bad KUBETUNE_* setting: one line that names it, no traceback
        print(f"kubetune operator: {err}", file=sys.stderr)
        return 2
    config.set_current(settings)
    from kubetune.controller import logs

    logs.configure(settings.log_format)  # kopf's formatters, so its own lines and ours read alike
    # kopf says "Handler ... succeeded" at INFO for every watch event it hands over (thousands a minute on
    # a busy cluster); the reconciler logs what matters, and kopf's warnings and errors still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from kubetune.controller import handlers  # registers the handlers

    handlers.runtime.exit_after_stop_seconds = STOP_GRACE_SECONDS
    # Everything loaded so far lives as long as the process: keep the collector from scanning it again and
    # again, and let it run less often (a burst makes short-lived dicts by the hundred thousand; docs/operator.md).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

    code = 0
    try:
        with event_loop() as loop:
            kopf.run(
                loop=loop,
                identity=operator_identity(),  # type: ignore[arg-type] - kopf.Identity is a NewType of str
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                # kopf watches no resources (handlers.py), so its peering would gate nothing: replicas take turns
                # through a Lease instead (leader.py), which the start-up handler waits for.
                standalone=True,
                liveness_endpoint=getattr(args, "liveness", None) or None,
            )
    except BaseException as err:  # noqa: BLE001 - whatever stopped kopf, the process must end
        if not isinstance(err, (KeyboardInterrupt, SystemExit)):
            log.exception("the operator stopped on an unrecoverable error; exiting so that it is restarted")
            code = 1
    # kopf has stopped (a signal, or an error it cannot recover from, such as 410 Gone on a watch
    # request). A thread still blocked somewhere (the metrics server, a stuck shutdown) would keep the
    # interpreter alive and leave a pod that looks healthy but watches nothing: end the process now instead.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
