"""FineTuneJobs and operator settings that the pure-function tests (builders, status, permissions) share."""

from __future__ import annotations

from kubetune.controller.config import OperatorConfig

CONFIG = OperatorConfig(
    trainer_image="img:default", default_output_uri="s3://out/root/", report_interval_seconds=5, grace_seconds=60
)
# As the API server serves it: uid and generation set.
FTJ = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": 1},
}
SPEC = {
    "technique": "qlora",
    "objective": "instruction",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "credentialsSecret": "hf-token"},
    "datasets": [{"name": "support", "uri": "s3://data/support/train.jsonl", "format": "messages"}],
    "output": {"credentialsSecret": "s3-creds"},
    "resources": {
        "gpus": 1,
        "cpu": "8",
        "memory": "64Gi",
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "priorityClassName": "training",
    "backoffLimit": 2,
    "activeDeadlineSeconds": 3600,
}
