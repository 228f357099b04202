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
  KUBETUNE_LEADER_ELECTION_LEASE_SECONDS  with several replicas (--leader-election): how long the leader's Lease
                                    holds unrenewed before a standby takes over (default 15)
  KUBETUNE_CACHE_*                  the shared model cache (ModelCacheSettings, the chart's `cache:` values)

Command line only:
  --leader-election NAME            several replicas: reconcile only while holding the coordination.k8s.io Lease
                                    NAME in the operator's namespace (POD_NAMESPACE; controller/leader.py);
                                    unset or --standalone = no election, this replica always reconciles
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kubetune import __version__
from kubetune.api.k8s_validation import is_dns1123_subdomain
from kubetune.controller.policy import Policy

# The trainer image of this release (the chart passes the same tag: its appVersion).
DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{__version__}"


@dataclass(frozen=True)
class ModelCacheSettings:
    """The platform's shared model cache (controller/modelcache.py; the chart's `cache:` values)."""

    root: str = ""  # KUBETUNE_CACHE_ROOT, s3://bucket/prefix/; "" = no cache
    default: bool = True  # whether a job that leaves spec.model.cache unset uses it
    max_bytes: int = 0  # the size cap (least recently used entries are evicted past it); 0 = none
    namespace: str = ""  # the operator's namespace, where public models' population Jobs run
    populate_secret: str = ""  # Secret there whose AWS_* keys write the store; "" = the pods' cloud identity
    populate_service_account: str = ""  # the public population pods' ServiceAccount; "" = the namespace's default
    read_secret: str = ""  # Secret of this name in each job's namespace: its pods read the store with it
    read_ambient: bool = False  # training pods read the store with their cloud identity instead
    endpoint: str = ""  # the store's S3 endpoint; "" = AWS
    region: str = ""
    hub_endpoint: str = ""  # HF_ENDPOINT of the operator and the population pods (a Hub mirror)
    populate_resources: Mapping[str, Any] = field(default_factory=dict)  # the population container's resources
    poll_seconds: float = 2.0  # how often a population Job that jobs wait for is looked at
    evict_every_seconds: float = 300.0  # how often the size cap is enforced (and after each population)

    @property
    def enabled(self) -> bool:
        return bool(self.root)


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
    model_cache: ModelCacheSettings = field(default_factory=ModelCacheSettings)  # the shared model cache
    gpu_memory_table: Mapping[str, str] = field(default_factory=dict)  # GPU product label value -> memory quantity
    collective_timeout_seconds: int = 300  # passed to multi-GPU training pods
    leader_election: str = ""  # the Lease several replicas elect a leader through; "" = no election
    # How long a Lease nobody renews holds: a standby takes over this long after the leader stopped renewing (it
    # renews every 2/15 of it, and stops leading when renewals failed for 2/3 of it, client-go's 15/10/2 s).
    leader_election_lease_seconds: int = 15

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
        raise ValueError(
            f'{where} must be a JSON object of GPU product -> memory, e.g. {{"NVIDIA-H100-80GB-HBM3": "80Gi"}} ({err})'
        ) from None
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a JSON object of GPU product -> memory (got {type(table).__name__})")
    for product, memory in table.items():
        try:
            if not isinstance(memory, str) or parse_quantity(memory) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}[{product!r}] must be a memory quantity such as 80Gi (got {memory!r})") from None
    return dict(table)


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise ValueError(f"{key} must be true or false (got {raw!r})")
    return raw == "true"


def _model_cache(env: Mapping[str, str]) -> ModelCacheSettings:
    """The cache's settings; a bad one stops the operator with one line naming it."""
    from kubernetes.utils import parse_quantity

    from kubetune.api.uris import UriError, parse_uri

    root = env.get("KUBETUNE_CACHE_ROOT", "").strip()
    if not root:
        return ModelCacheSettings()
    try:
        if parse_uri(root).scheme != "s3":
            raise UriError("")
    except UriError:
        raise ValueError(
            f"KUBETUNE_CACHE_ROOT must be an s3:// prefix, e.g. s3://kubetune-cache/ (got {root!r})"
        ) from None
    namespace = env.get("KUBETUNE_CACHE_NAMESPACE", "").strip()
    if not namespace:
        raise ValueError(
            "KUBETUNE_CACHE_NAMESPACE must name the operator's namespace (public models' population Jobs run there)"
        )
    size = env.get("KUBETUNE_CACHE_MAX_SIZE", "").strip() or "0"
    try:
        max_bytes = int(parse_quantity(size))
        if max_bytes < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"KUBETUNE_CACHE_MAX_SIZE must be a size such as 2Ti, or 0 for none (got {size!r})") from None
    raw_resources = env.get("KUBETUNE_CACHE_POPULATE_RESOURCES", "").strip() or "{}"
    try:
        resources = json.loads(raw_resources)
    except ValueError:
        resources = None
    if not isinstance(resources, dict):
        raise ValueError(
            "KUBETUNE_CACHE_POPULATE_RESOURCES must be a JSON object of a container's resources "
            f"(got {raw_resources!r})"
        )
    return ModelCacheSettings(
        root=root,
        default=_bool(env, "KUBETUNE_CACHE_DEFAULT", True),
        max_bytes=max_bytes,
        namespace=namespace,
        populate_secret=env.get("KUBETUNE_CACHE_POPULATE_SECRET", "").strip(),
        populate_service_account=env.get("KUBETUNE_CACHE_POPULATE_SERVICE_ACCOUNT", "").strip(),
        read_secret=env.get("KUBETUNE_CACHE_READ_SECRET", "").strip(),
        read_ambient=_bool(env, "KUBETUNE_CACHE_READ_AMBIENT", False),
        # The operator's own store client reads the same two variables (the `cache` role's, credentials.lookup).
        endpoint=env.get("KUBETUNE_CACHE_AWS_ENDPOINT_URL", "").strip(),
        region=env.get("KUBETUNE_CACHE_AWS_REGION", "").strip(),
        hub_endpoint=env.get("HF_ENDPOINT", "").strip(),
        populate_resources=resources,
    )


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
        if env.get("KUBETUNE_POLICY", "").strip()
        else Policy(),
        model_cache=_model_cache(env),
        gpu_memory_table=_gpu_memory_table(env["KUBETUNE_GPU_MEMORY_TABLE"], "KUBETUNE_GPU_MEMORY_TABLE")
        if env.get("KUBETUNE_GPU_MEMORY_TABLE", "").strip()
        else {},
        collective_timeout_seconds=_int(env, "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS", 300, minimum=1),
        leader_election_lease_seconds=_int(env, "KUBETUNE_LEADER_ELECTION_LEASE_SECONDS", 15, minimum=3),
    )


def from_args(args: Any, env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Environment first, then whatever the command line set explicitly."""
    config = from_env(env)
    overrides: dict[str, Any] = {}
    if getattr(args, "namespace", None):
        overrides["namespaces"] = tuple(args.namespace)
    for attr in (
        "trainer_image",
        "default_output_uri",
        "max_running_per_namespace",
        "report_interval_seconds",
        "grace_seconds",
        "resync_seconds",
        "metrics_port",
    ):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[attr] = value
    if getattr(args, "leader_election", None) and not getattr(args, "standalone", False):
        # The Lease's name: refused by the API server otherwise, which left the replica on standby for good.
        problems = is_dns1123_subdomain(args.leader_election)
        if problems:
            raise ValueError(f"--leader-election {args.leader_election!r} is not a valid Lease name: {problems[0]}")
        overrides["leader_election"] = args.leader_election
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
