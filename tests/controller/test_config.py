"""config.py: operator settings from the environment, with the command line's overrides."""

from __future__ import annotations

import pytest

from kubetune.cli import build_parser
from kubetune.controller.config import from_args, from_env


def test_config_from_env():
    cfg = from_env(
        {"KUBETUNE_NAMESPACES": "a, b", "KUBETUNE_MAX_RUNNING_PER_NAMESPACE": "2", "KUBETUNE_TRAINER_IMAGE": "x:1"}
    )
    assert cfg.namespaces == ("a", "b") and cfg.max_running_per_namespace == 2 and cfg.trainer_image == "x:1"
    with pytest.raises(ValueError, match="KUBETUNE_GRACE_SECONDS"):
        from_env({"KUBETUNE_GRACE_SECONDS": "soon"})
    with pytest.raises(ValueError, match=r"KUBETUNE_CONCURRENT_RECONCILES must be >= 1 \(got 0\)"):
        from_env({"KUBETUNE_CONCURRENT_RECONCILES": "0"})  # no slot at all would reconcile nothing


def test_cli_operator_options_reach_the_config():
    args = build_parser().parse_args(
        ["operator", "-n", "team-a", "--max-running-per-namespace", "3", "--default-output-uri", "s3://b/p/"]
    )
    cfg = from_args(args, env={})
    assert cfg.namespaces == ("team-a",) and cfg.max_running_per_namespace == 3
    assert cfg.default_output_uri == "s3://b/p/" and cfg.metrics_port == 9090


def test_gpu_memory_table_and_collective_timeout_from_env():
    cfg = from_env(
        {
            "KUBETUNE_GPU_MEMORY_TABLE": '{"NVIDIA-H100-80GB-HBM3": "80Gi", "NVIDIA-A10G": "24Gi"}',
            "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS": "120",
        }
    )
    assert cfg.gpu_memory_table == {"NVIDIA-H100-80GB-HBM3": "80Gi", "NVIDIA-A10G": "24Gi"}
    assert cfg.collective_timeout_seconds == 120
    assert from_env({}).gpu_memory_table == {} and from_env({}).collective_timeout_seconds == 300
    with pytest.raises(
        ValueError,
        match=r"KUBETUNE_GPU_MEMORY_TABLE\['NVIDIA-A10G'\] must be a memory quantity "
        r"such as 80Gi \(got 'lots'\)",
    ):
        from_env({"KUBETUNE_GPU_MEMORY_TABLE": '{"NVIDIA-A10G": "lots"}'})
    with pytest.raises(ValueError, match="KUBETUNE_GPU_MEMORY_TABLE must be a JSON object"):
        from_env({"KUBETUNE_GPU_MEMORY_TABLE": "[80]"})
    with pytest.raises(ValueError, match=r"KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS must be >= 1"):
        from_env({"KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS": "0"})


def test_leader_election_settings_and_a_bad_lease_name_named_at_start():
    """A Lease name the API server would refuse left the replica on standby for good: refused at start, naming the
    option; the lease's length has a floor (the renewals come every 2/15 of it)."""
    parse = build_parser().parse_args
    cfg = from_args(parse(["operator", "--leader-election", "kubetune-operator"]), env={})
    assert cfg.leader_election == "kubetune-operator" and cfg.leader_election_lease_seconds == 15
    assert from_args(parse(["operator", "--leader-election", "x", "--standalone"]), env={}).leader_election == ""
    with pytest.raises(ValueError, match=r"--leader-election 'Kubetune_Operator' is not a valid Lease name: .*lower"):
        from_args(parse(["operator", "--leader-election", "Kubetune_Operator"]), env={})
    with pytest.raises(ValueError, match=r"KUBETUNE_LEADER_ELECTION_LEASE_SECONDS must be >= 3 \(got 1\)"):
        from_env({"KUBETUNE_LEADER_ELECTION_LEASE_SECONDS": "1"})
