"""config.py: operator settings from the environment, with the command line's overrides."""

from __future__ import annotations

import pytest

from kubetune.cli import build_parser
from kubetune.controller.config import from_args, from_env


def test_config_from_env():
    cfg = from_env({"KUBETUNE_NAMESPACES": "a, b", "KUBETUNE_MAX_RUNNING_PER_NAMESPACE": "2",
                    "KUBETUNE_TRAINER_IMAGE": "x:1"})
    assert cfg.namespaces == ("a", "b") and cfg.max_running_per_namespace == 2 and cfg.trainer_image == "x:1"
    with pytest.raises(ValueError, match="KUBETUNE_GRACE_SECONDS"):
        from_env({"KUBETUNE_GRACE_SECONDS": "soon"})
    with pytest.raises(ValueError, match=r"KUBETUNE_CONCURRENT_RECONCILES must be >= 1 \(got 0\)"):
        from_env({"KUBETUNE_CONCURRENT_RECONCILES": "0"})  # no slot at all would reconcile nothing


def test_cli_operator_options_reach_the_config():
    args = build_parser().parse_args(["operator", "-n", "team-a", "--max-running-per-namespace", "3",
                                      "--default-output-uri", "s3://b/p/"])
    cfg = from_args(args, env={})
    assert cfg.namespaces == ("team-a",) and cfg.max_running_per_namespace == 3
    assert cfg.default_output_uri == "s3://b/p/" and cfg.metrics_port == 9090
