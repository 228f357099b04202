"""`kubetune operator`: run the kopf operator with settings from the environment and the command line."""

from __future__ import annotations

import argparse
import logging

from kubetune.controller import config


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    settings = config.from_args(args)
    config.set_current(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubetune.controller import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        standalone=getattr(args, "peering", None) is None or getattr(args, "standalone", False),
        peering_name=getattr(args, "peering", None),
        liveness_endpoint=getattr(args, "liveness", None) or None,
    )
    return 0
