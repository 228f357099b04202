"""FineTuneJobs and operator settings the tests share: the pure-function tests' (builders, status, permissions) full
SPEC, and the smallest valid jobs the operator, metrics, model-cache and chart tests start from."""

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


# The smallest valid job of each dataset format the tests use: LoRA of a public model, one GPU.
LORA_INSTRUCTION_SPEC = {
    "technique": "lora",
    "objective": "instruction",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "datasets": [{"uri": "s3://data/support/train.jsonl", "format": "messages"}],
    "resources": {"gpus": 1},
}
LORA_TEXT_SPEC = {
    "technique": "lora",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "text"}],
}
