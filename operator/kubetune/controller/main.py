"""`kubetune operator`: run the kopf operator with settings from the environment and the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kubetune.controller import config

log = logging.getLogger("kubetune.operator")

# How long kopf may take to stop (finish handlers, close watches) before the process ends anyway.
STOP_GRACE_SECONDS = 10.0


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    settings = config.from_args(args)
    config.set_current(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubetune.controller import handlers  # registers the handlers

    handlers.runtime.exit_after_stop_seconds = STOP_GRACE_SECONDS

    code = 0
    try:
        kopf.run(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=getattr(args, "peering", None) is None or getattr(args, "standalone", False),
            peering_name=getattr(args, "peering", None),
            liveness_endpoint=getattr(args, "liveness", None) or None,
        )
    except BaseException as err:  # noqa: BLE001 - whatever stopped kopf, the process must end
        if not isinstance(err, (KeyboardInterrupt, SystemExit)):
            log.exception("the operator stopped on an unrecoverable error; exiting so that it is restarted")
            code = 1
    # kopf has stopped (a signal, or an error it cannot recover from, such as 410 Gone on a watch
    # request). A sync handler still blocked in an API call would keep the interpreter alive for a long
    # time and leave a pod that looks healthy but watches nothing: end the process now instead.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
