"""The platform's policy: what a FineTuneJob may ask for on this cluster.

The platform team sets it in the Helm values (`policy:`); it reaches the operator as one JSON setting
(KUBETUNE_POLICY, config.py). The operator enforces it before it creates anything for a job: a job that breaks a
rule ends in phase Failed with reason PolicyDenied and a message naming the rule. Where the chart enables it, the
same rules also run as a ValidatingAdmissionPolicy (charts/kubetune/templates/admission-policy.yaml), so the API
server refuses such a job before it is stored; the operator's check stays, for clusters without it.

Every rule is off by default (an empty list or 0 allows anything), except the two that hand out identities:
ambient cloud credentials and a ServiceAccount of the user's choosing are refused unless the policy allows them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune.api import k8s_validation as k8s
from kubetune.api.v1alpha1 import Spec

if TYPE_CHECKING:
    from kubetune.controller.config import OperatorConfig

# The placeholder of outputUriPrefix, replaced by the job's namespace.
NAMESPACE_PLACEHOLDER = "{namespace}"
# A prefix must end where a name part ends, or "ghcr.io/acme" would also allow "ghcr.io/acme-evil/...".
IMAGE_PREFIX_ENDINGS = ("/", ":", "@")
ANY_SERVICE_ACCOUNT = "*"


@dataclass(frozen=True)
class Violation:
    rule: str  # the policy value that refuses it (its name in the Helm values' `policy:`)
    field: str  # the spec field at fault
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (policy rule {self.rule})"


@dataclass(frozen=True)
class Policy:
    """The Helm values' `policy:` (camelCase there, one attribute each here)."""

    allowed_image_prefixes: tuple[str, ...] = ()  # spec.image must start with one of them; () = any image
    require_queue: bool = False  # every job goes through Kueue (spec.queueName, or defaultQueue)
    default_queue: str = ""  # the LocalQueue of a job that names none
    max_gpus_per_job: int = 0  # resources.gpus x nodes; 0 = no limit
    max_nodes_per_job: int = 0  # 0 = no limit
    allowed_priority_classes: tuple[str, ...] = ()  # () = any
    output_uri_prefix: str = ""  # where a namespace's runs must land, e.g. s3://ml-outputs/{namespace}/
    allow_ambient_credentials: bool = False  # ambientCredentials: true on the model, datasets or output
    allowed_service_accounts: tuple[str, ...] = ()  # spec.pod.serviceAccountName values; "*" = any; () = none

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str = "policy") -> Policy:
        """From the Helm values' camelCase mapping; a ValueError names the value at fault."""
        if not isinstance(values, Mapping):
            raise ValueError(  # noqa: TRY004 - the operator reports a bad setting (a ValueError) in one line
                f"{where}: must be a mapping of policy rules (got {type(values).__name__})"
            )
        known = {_camel(name): name for name in cls.__dataclass_fields__}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown rule(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        fields: dict[str, Any] = {}
        for key, value in values.items():
            name = known[key]
            default = cls.__dataclass_fields__[name].default
            fields[name] = _typed(f"{where}.{key}", value, default)
        policy = cls(**fields)
        policy._check(where)
        return policy

    @classmethod
    def from_json(cls, text: str, where: str) -> Policy:
        try:
            values = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{where} is not valid JSON: {err}") from None
        return cls.from_values(values, where)

    def _check(self, where: str) -> None:
        for prefix in self.allowed_image_prefixes:
            if not prefix.endswith(IMAGE_PREFIX_ENDINGS):
                raise ValueError(
                    f"{where}.allowedImagePrefixes: {prefix!r} must end with '/', ':' or '@' "
                    "(else it also allows every repository whose name merely starts alike)"
                )
        if self.default_queue and k8s.is_dns1123_subdomain(self.default_queue):
            raise ValueError(f"{where}.defaultQueue: {self.default_queue!r} is not a LocalQueue name")
        for name in self.allowed_priority_classes:
            if k8s.is_dns1123_subdomain(name):
                raise ValueError(f"{where}.allowedPriorityClasses: {name!r} is not a PriorityClass name")
        for name in self.allowed_service_accounts:
            if name != ANY_SERVICE_ACCOUNT and k8s.is_dns1123_subdomain(name):
                raise ValueError(f"{where}.allowedServiceAccounts: {name!r} is not a ServiceAccount name (or '*')")
        if self.output_uri_prefix:
            rest = self.output_uri_prefix.replace(NAMESPACE_PLACEHOLDER, "")
            if "{" in rest or "}" in rest:
                raise ValueError(
                    f"{where}.outputUriPrefix: only {NAMESPACE_PLACEHOLDER} may stand in braces "
                    f"(got {self.output_uri_prefix!r})"
                )
            if not re.match(r"^[a-z][a-z0-9+.-]*://", self.output_uri_prefix):
                raise ValueError(
                    f"{where}.outputUriPrefix: {self.output_uri_prefix!r} is not a URI prefix such as "
                    "s3://ml-outputs/{namespace}/"
                )

    def output_prefix(self, namespace: str) -> str:
        """outputUriPrefix for one namespace, ending in '/' (so team-a's never covers team-ab's)."""
        prefix = self.output_uri_prefix.replace(NAMESPACE_PLACEHOLDER, namespace)
        return prefix if prefix.endswith("/") else prefix + "/"

    def apply_defaults(self, spec: Spec) -> Spec:
        """The spec with what the policy fills in: the default queue of a job that names none."""
        if self.default_queue and not spec.queue_name:
            return spec.model_copy(update={"queue_name": self.default_queue})
        return spec


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _typed(where: str, value: Any, default: Any) -> Any:
    """A policy value of its default's type (bool, int >= 0, str or list of strings), else a ValueError naming it."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = type(value) is int and value >= 0, "an integer >= 0 (0 = no limit)"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    else:
        value = [] if value is None else value
        ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
        expected = "a list of non-empty strings"
    if not ok:
        raise ValueError(f"{where}: must be {expected} (got {value!r})")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return tuple(v.strip() for v in value)
    return value


def check(config: OperatorConfig, ftj: dict, spec: Spec) -> list[Violation]:
    """Every rule of the operator's policy that this job breaks; [] = allowed. `spec` is resolved (the operator's
    default output URI and the policy's default queue filled in)."""
    from kubetune.controller.builders import output_root  # builders imports config, which imports this module

    policy: Policy = config.policy
    meta = ftj["metadata"]
    namespace = meta["namespace"]
    found: list[Violation] = []
    if (
        policy.allowed_image_prefixes
        and spec.image
        and spec.image != config.trainer_image
        and not spec.image.startswith(policy.allowed_image_prefixes)
    ):
        found.append(
            Violation(
                "allowedImagePrefixes",
                "spec.image",
                f"{spec.image!r} is not an allowed trainer image on this cluster (allowed: images starting with "
                f"{', '.join(policy.allowed_image_prefixes)}); leave spec.image empty for the default trainer image",
            )
        )
    if policy.require_queue and not spec.queue_name:
        found.append(
            Violation(
                "requireQueue",
                "spec.queueName",
                "every job on this cluster goes through Kueue: set spec.queueName to a LocalQueue of namespace "
                f"{namespace}",
            )
        )
    gpus = spec.resources.gpus * spec.nodes
    if policy.max_gpus_per_job and gpus > policy.max_gpus_per_job:
        found.append(
            Violation(
                "maxGpusPerJob",
                "spec.resources.gpus",
                f"the job asks for {gpus} GPUs (resources.gpus {spec.resources.gpus} x nodes {spec.nodes}); "
                f"this cluster allows at most {policy.max_gpus_per_job} per job",
            )
        )
    if policy.max_nodes_per_job and spec.nodes > policy.max_nodes_per_job:
        found.append(
            Violation(
                "maxNodesPerJob",
                "spec.nodes",
                f"the job asks for {spec.nodes} nodes; this cluster allows at most {policy.max_nodes_per_job} per job",
            )
        )
    if (
        policy.allowed_priority_classes
        and spec.priority_class_name
        and spec.priority_class_name not in policy.allowed_priority_classes
    ):
        found.append(
            Violation(
                "allowedPriorityClasses",
                "spec.priorityClassName",
                f"{spec.priority_class_name!r} is not allowed on this cluster (allowed: "
                f"{', '.join(policy.allowed_priority_classes)}; or leave it empty)",
            )
        )
    if policy.output_uri_prefix:
        prefix = policy.output_prefix(namespace)
        root = output_root(spec, namespace, meta["name"], meta["uid"])
        if not root.startswith(prefix):
            found.append(
                Violation(
                    "outputUriPrefix",
                    "spec.output.uri",
                    f"the runs of namespace {namespace} must be written under {prefix} (this one would go to {root})",
                )
            )
    if not policy.allow_ambient_credentials:
        for field in _ambient_fields(spec):
            found.append(
                Violation(
                    "allowAmbientCredentials",
                    field,
                    "this cluster does not let jobs use the pod's cloud identity: name a Secret in credentialsSecret",
                )
            )
    account = spec.chosen_service_account
    allowed = policy.allowed_service_accounts
    if account and ANY_SERVICE_ACCOUNT not in allowed and account not in allowed:
        found.append(
            Violation(
                "allowedServiceAccounts",
                "spec.pod.serviceAccountName",
                f"{account!r} is not allowed on this cluster "
                + (f"(allowed: {', '.join(allowed)})" if allowed else "(no ServiceAccount may be chosen here)"),
            )
        )
    return found


def _ambient_fields(spec: Spec) -> list[str]:
    fields = ["spec.model.ambientCredentials"] if spec.model.ambient_credentials else []
    fields += [f"spec.datasets[{i}].ambientCredentials" for i, d in enumerate(spec.datasets) if d.ambient_credentials]
    if spec.output.ambient_credentials:
        fields.append("spec.output.ambientCredentials")
    return fields
