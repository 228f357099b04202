"""Operator settings, from the environment with command-line overrides.

Environment variables (all optional):
  KUBETUNE_TRAINER_IMAGE            default trainer image when spec.image is empty
  KUBETUNE_DEFAULT_OUTPUT_URI       output root when spec.output.uri is empty
  KUBETUNE_NAMESPACES               comma-separated namespaces to watch; empty = all
  KUBETUNE_MAX_RUNNING_PER_NAMESPACE  cap on running (unsuspended) Jobs per namespace; 0 = none
  KUBETUNE_REPORT_INTERVAL_SECONDS  how often the trainer patches progress into status
  KUBETUNE_GRACE_SECONDS            time the trainer gets after SIGTERM to save a checkpoint
  KUBETUNE_RESYNC_SECONDS           how often every unfinished FineTuneJob is reconciled anyway
  KUBETUNE_METRICS_PORT             Prometheus port; 0 = off
  KUBETUNE_CONCURRENT_RECONCILES    FineTuneJobs reconciled at once (default 32)
  KUBETUNE_LOG_FORMAT               text (default) or json: one object per log line
  KUBETUNE_TRAINER_IMAGE_PULL_SECRETS  comma-separated Secrets (in each job's namespace) every training pod pulls
                                    its image with, beside spec.pod.imagePullSecrets
  KUBETUNE_POLICY                   the platform's policy as JSON, the Helm values' `policy:` (policy.py)
  KUBETUNE_GPU_MEMORY_TABLE         JSON: GPU product (the nvidia.com/gpu.product node label) -> memory of one GPU,
                                    e.g. {"NVIDIA-H100-80GB-HBM3": "80Gi"}, for the trainer's memory plan
  KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS  how long a rank of a multi-GPU job waits in a collective for a lost peer
                                    before its attempt ends (default 300)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kubetune import __version__
from kubetune.controller.policy import Policy

# The trainer image of this release (the chart passes the same tag: its appVersion).
DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{__version__}"


@dataclass(frozen=True)
class OperatorConfig:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    default_output_uri: str = ""
    namespaces: tuple[str, ...] = ()  # empty = all namespaces
    max_running_per_namespace: int = 0  # 0 = no cap
    report_interval_seconds: int = 10
    grace_seconds: int = 120
    resync_seconds: float = 60.0
    metrics_port: int = 9090
    concurrent_reconciles: int = 32  # FineTuneJobs reconciled at once (each holds an API connection)
    log_format: str = "text"  # text | json (logs.py)
    trainer_image_pull_secrets: tuple[str, ...] = ()  # added to every training pod's imagePullSecrets
    policy: Policy = field(default_factory=Policy)  # what the platform lets a FineTuneJob ask for
    gpu_memory_table: Mapping[str, str] = field(default_factory=dict)  # GPU product label value -> memory quantity
    collective_timeout_seconds: int = 300  # passed to multi-GPU training pods

    @property
    def termination_grace_seconds(self) -> int:
        # The kubelet's SIGKILL must come after the trainer's own grace period has run out.
        return self.grace_seconds + 30


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer (got {raw!r})") from None
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum} (got {value})")
    return value


def _log_format(value: str, where: str) -> str:
    from kubetune.controller.logs import LOG_FORMATS

    if value not in LOG_FORMATS:
        raise ValueError(f"{where} must be one of {', '.join(LOG_FORMATS)} (got {value!r})")
    return value


def _gpu_memory_table(raw: str, where: str) -> dict[str, str]:
    """{"<nvidia.com/gpu.product value>": "<quantity>"}; a bad entry stops the operator with one line naming it."""
    from kubernetes.utils import parse_quantity

    try:
        table = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{where} must be a JSON object of GPU product -> memory, e.g. "
                         f'{{"NVIDIA-H100-80GB-HBM3": "80Gi"}} ({err})') from None
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a JSON object of GPU product -> memory (got {type(table).__name__})")
    for product, memory in table.items():
        try:
            if not isinstance(memory, str) or parse_quantity(memory) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}[{product!r}] must be a memory quantity such as 80Gi (got {memory!r})") from None
    return dict(table)


def from_env(env: Mapping[str, str] | None = None) -> OperatorConfig:
    env = os.environ if env is None else env
    namespaces = tuple(ns.strip() for ns in env.get("KUBETUNE_NAMESPACES", "").split(",") if ns.strip())
    return OperatorConfig(
        trainer_image=env.get("KUBETUNE_TRAINER_IMAGE", "").strip() or DEFAULT_TRAINER_IMAGE,
        default_output_uri=env.get("KUBETUNE_DEFAULT_OUTPUT_URI", "").strip(),
        namespaces=namespaces,
        max_running_per_namespace=_int(env, "KUBETUNE_MAX_RUNNING_PER_NAMESPACE", 0),
        report_interval_seconds=_int(env, "KUBETUNE_REPORT_INTERVAL_SECONDS", 10),
        grace_seconds=_int(env, "KUBETUNE_GRACE_SECONDS", 120),
        resync_seconds=float(_int(env, "KUBETUNE_RESYNC_SECONDS", 60)),
        metrics_port=_int(env, "KUBETUNE_METRICS_PORT", 9090),
        concurrent_reconciles=_int(env, "KUBETUNE_CONCURRENT_RECONCILES", 32, minimum=1),
        log_format=_log_format(env.get("KUBETUNE_LOG_FORMAT", "").strip() or "text", "KUBETUNE_LOG_FORMAT"),
        trainer_image_pull_secrets=tuple(
            s.strip() for s in env.get("KUBETUNE_TRAINER_IMAGE_PULL_SECRETS", "").split(",") if s.strip()
        ),
        policy=Policy.from_json(env["KUBETUNE_POLICY"], "KUBETUNE_POLICY")
        if env.get("KUBETUNE_POLICY", "").strip() else Policy(),
        gpu_memory_table=_gpu_memory_table(env["KUBETUNE_GPU_MEMORY_TABLE"], "KUBETUNE_GPU_MEMORY_TABLE")
        if env.get("KUBETUNE_GPU_MEMORY_TABLE", "").strip() else {},
        collective_timeout_seconds=_int(env, "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS", 300, minimum=1),
    )


def from_args(args: Any, env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Environment first, then whatever the command line set explicitly."""
    config = from_env(env)
    overrides: dict[str, Any] = {}
    if getattr(args, "namespace", None):
        overrides["namespaces"] = tuple(args.namespace)
    for attr in ("trainer_image", "default_output_uri", "max_running_per_namespace", "report_interval_seconds",
                 "grace_seconds", "resync_seconds", "metrics_port"):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[attr] = value
    if getattr(args, "log_format", None):
        overrides["log_format"] = _log_format(args.log_format, "--log-format")
    return replace(config, **overrides)


# The running operator's settings; handlers read it (set by main.run_operator or by a test).
_current: OperatorConfig | None = None


def current() -> OperatorConfig:
    global _current
    if _current is None:
        _current = from_env()
    return _current


def set_current(config: OperatorConfig) -> None:
    global _current
    _current = config
