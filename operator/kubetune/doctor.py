"""`kubetune doctor FILE [-n NS]`: before you apply a FineTuneJob, check that everything it needs is there.

Everything is checked with the user's own kubeconfig and the user's own storage credentials (AWS_* or a profile
for s3://, HF_TOKEN for hf://), so the doctor sees what the user may see, and says so where it may not look:

- the manifest is valid (the same checks as `kubetune validate`);
- the FineTuneJob CRD is installed and serves the schema this kubetune generates (from the CRD itself, else from
  the API server's OpenAPI document, which every authenticated user may read);
- the operator's Deployment runs and watches the job's namespace; its arguments and KUBETUNE_* settings are read
  through `kubetune operator`'s own parser and settings code, so a value the operator would refuse shows here;
- the platform's policy (the operator's KUBETUNE_POLICY) allows the job;
- every Secret, ConfigMap and PersistentVolumeClaim the spec names exists in the namespace (Secrets by name
  only: a metadata-only read, their data never leaves the API server);
- the Kueue LocalQueue of spec.queueName (or the policy's default queue) and the PriorityClass exist;
- the output store is writable (a small probe object is written and deleted), the datasets and the model exist
  (listed or looked up, nothing downloaded);
- the trainer image is set (spec.image or the operator's default).

One line per finding, `<level>: <subject>: <what was found>[: what to do]`; exit status 1 when any finding is an
error. Warnings are what the doctor could not check from here, or what may go wrong without being certain to.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from kubetune import __version__
from kubetune.api.constants import GROUP, KIND, VERSION

OK, SKIPPED, WARNING, ERROR = "ok", "skipped", "warning", "error"

# What the chart labels the operator's Deployment with (charts/kubetune/templates/_helpers.tpl selectorLabels).
OPERATOR_SELECTOR = "app.kubernetes.io/name=kubetune,app.kubernetes.io/component=operator"
# Where the quickstart installs the chart; looked in when the user may not list Deployments cluster-wide.
DEFAULT_OPERATOR_NAMESPACE = "kubetune-system"
OPERATOR_CONTAINER = "operator"
# A read that returns an object's metadata only (k8s.io/apiserver handlers/response.go): a Secret's data never
# reaches this machine.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"
CRD_UPGRADE = "kubectl apply --server-side --force-conflicts -f charts/kubetune/crds/ (docs/quickstart.md, Upgrading)"
PROBE_PREFIX = ".kubetune-doctor-"
REQUEST_TIMEOUT = 20


@dataclass(frozen=True)
class Finding:
    level: str  # ok | skipped | warning | error
    subject: str
    message: str

    def line(self) -> str:
        return f"{self.level}: {self.subject}: {self.message}"


# ----------------------------------------------------------------------------------------------- the API server


@dataclass
class Answer:
    """One read: `status` 200 with `body`, or the API server's refusal (0: not reached at all)."""

    status: int
    body: dict = field(default_factory=dict)
    message: str = ""

    @property
    def missing_type(self) -> bool:
        """A 404 for a resource type the server does not serve carries no details.name (a missing object does)."""
        return self.status == 404 and not (self.body.get("details") or {}).get("name")


class Unreachable(Exception):
    """The API server did not answer: every further cluster check is skipped."""


class Api:
    """GETs with the user's kubeconfig, each answered as an `Answer` (never an exception, but Unreachable)."""

    def __init__(self, cluster: Any):
        import kubernetes
        import urllib3

        self.cluster = cluster
        self.client = cluster.api_client
        self._kubernetes = kubernetes
        self._urllib3 = urllib3

    def get(self, path: str, accept: str = "application/json") -> Answer:
        client = self.client
        try:
            method, url, headers, _, _ = client.param_serialize(
                "GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
            )
            response = client.call_api(method, url, header_params=headers, _request_timeout=REQUEST_TIMEOUT)
            data = response.read()
        except self._kubernetes.client.ApiException as err:
            return self._refusal(err.status or 0, err.body, err.reason)
        except (self._urllib3.exceptions.HTTPError, OSError) as err:
            raise Unreachable(self.cluster.unreachable(err)) from None
        if response.status >= 400:
            return self._refusal(response.status, data, response.reason)
        return Answer(response.status, json.loads(data or b"{}"))

    @staticmethod
    def _refusal(status: int, raw: Any, reason: str | None) -> Answer:
        try:
            body = json.loads(raw or b"{}")
        except (TypeError, ValueError):
            body = {}
        body = body if isinstance(body, dict) else {}
        return Answer(status, body, " ".join(str(body.get("message") or reason or "").split()))


def _no_access(answer: Answer, what: str) -> str:
    if answer.status == 401:
        return "the API server refused your credentials (401): check the user of your kubeconfig context"
    if answer.status == 403:
        return f"you may not read {what} ({answer.message or 'forbidden'})"
    return f"reading {what} failed: the API server answered {answer.status}: {answer.message}"


# ----------------------------------------------------------------------------------------------- the CRD


def _field_paths(schema: dict, path: str = "") -> set[str]:
    """Every field a structural schema declares, as dotted paths (lists as `[]`, maps as `{}`)."""
    paths = set()
    for name, child in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        paths |= {here} | _field_paths(child, here)
    if isinstance(schema.get("items"), dict):
        paths |= _field_paths(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        paths |= _field_paths(schema["additionalProperties"], f"{path}{{}}")
    return paths


def _set_paths(value: Any, path: str = "") -> set[str]:
    """The field paths a manifest sets, in the same notation."""
    paths = set()
    if isinstance(value, dict):
        for name, child in value.items():
            here = f"{path}.{name}" if path else name
            paths |= {here} | _set_paths(child, here)
    elif isinstance(value, list):
        for item in value:
            paths |= _set_paths(item, f"{path}[]")
    return paths


def _spec_fields(fields: set[str]) -> set[str]:
    return {f for f in fields if f == "spec" or f.startswith("spec.")}


def _served_schema_from_openapi(api: Api) -> tuple[dict | None, Answer]:
    answer = api.get(f"/openapi/v3/apis/{GROUP}/{VERSION}")
    if answer.status != 200:
        return None, answer
    for schema in (answer.body.get("components") or {}).get("schemas", {}).values():
        kinds = schema.get("x-kubernetes-group-version-kind") or []
        if any(k.get("group") == GROUP and k.get("version") == VERSION and k.get("kind") == KIND for k in kinds):
            return schema, answer
    return None, Answer(404, message=f"no {KIND} schema in the OpenAPI document of {GROUP}/{VERSION}")


def check_crd(api: Api, manifests: list[dict]) -> Iterator[Finding]:
    from kubetune.api.crd import crd

    ours = crd()
    name = ours["metadata"]["name"]
    subject = f"CRD {name}"
    our_schema = ours["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    answer = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    served: dict | None = None
    if answer.status == 200:
        versions = {v.get("name"): v for v in answer.body.get("spec", {}).get("versions") or []}
        version = versions.get(VERSION)
        if version is None or not version.get("served"):
            yield Finding(
                ERROR,
                subject,
                f"installed, but it does not serve {VERSION} (it serves "
                f"{', '.join(n for n, v in versions.items() if v.get('served')) or 'nothing'}): this "
                f"kubetune {__version__} writes {GROUP}/{VERSION}; upgrade the CRD: {CRD_UPGRADE}",
            )
            return
        served = (version.get("schema") or {}).get("openAPIV3Schema") or {}
        if served == our_schema:
            yield Finding(OK, subject, f"installed, with the schema of this kubetune ({__version__})")
            return
    elif answer.status == 404:
        yield Finding(
            ERROR,
            subject,
            "not installed (the cluster does not know FineTuneJobs): install the chart, "
            "helm install kubetune charts/kubetune -n kubetune-system --create-namespace (docs/quickstart.md)",
        )
        return
    else:  # most users may not read CRDs; the OpenAPI document of the group is open to every authenticated user
        served, openapi = _served_schema_from_openapi(api)
        if served is None:
            if openapi.missing_type or openapi.status == 404:
                yield Finding(
                    ERROR,
                    subject,
                    f"the cluster does not serve {GROUP}/{VERSION} FineTuneJobs: install "
                    "the chart (docs/quickstart.md), or ask your platform team",
                )
            else:
                yield Finding(
                    WARNING,
                    subject,
                    f"not checked: {_no_access(answer, 'CustomResourceDefinitions')}, "
                    f"and {_no_access(openapi, 'the OpenAPI document')}",
                )
            return
    ours_fields, served_fields = _spec_fields(_field_paths(our_schema)), _spec_fields(_field_paths(served))
    missing = sorted(ours_fields - served_fields)
    unknown = sorted(served_fields - ours_fields)
    used = set().union(*(_set_paths({"spec": m.get("spec") or {}}) for m in manifests)) if manifests else set()
    if missing:
        dropped = [p for p in missing if p in used]
        consequence = (
            f"the API server would drop {', '.join(dropped)} of this manifest"
            if dropped
            else f"it lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
        yield Finding(
            ERROR if dropped else WARNING,
            subject,
            f"older than this kubetune ({__version__}): {consequence}; upgrade the CRD: {CRD_UPGRADE}",
        )
    if unknown:
        yield Finding(
            WARNING,
            subject,
            f"newer than this kubetune ({__version__}): it has "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}, unknown here; upgrade this "
            "CLI (pip install -U 'kubetune[cli]') so that its checks match the cluster's",
        )
    if not missing and not unknown:
        yield Finding(
            WARNING if answer.status == 200 else OK,
            subject,
            f"installed, with the fields of this kubetune ({__version__})"
            + (
                ", but other descriptions or rules: the cluster runs another version; upgrade whichever is older"
                if answer.status == 200
                else ""
            ),
        )


# ----------------------------------------------------------------------------------------------- the operator


@dataclass
class Operator:
    """The operator as its Deployment runs it; `settings` is None where they could not be read."""

    where: str  # namespace/name of its Deployment
    settings: Any = None  # kubetune.controller.config.OperatorConfig
    env: dict[str, str] = field(default_factory=dict)
    image: str = ""


def _operator_args(container: dict) -> list[str]:
    command, args = container.get("command") or [], container.get("args") or []
    # The image's entrypoint is `kubetune`; a command that is `kubetune ...` names it too.
    if command and os.path.basename(command[0]) == "kubetune":
        return [*command[1:], *args]
    return list(args)


def operator_settings(container: dict) -> tuple[Any, str]:
    """(the OperatorConfig `kubetune operator` would run with, "") or (None, why it would refuse to start)."""
    from kubetune.cli import build_parser
    from kubetune.controller import config

    args = _operator_args(container)
    refused = io.StringIO()
    try:
        with contextlib.redirect_stderr(refused):
            parsed = build_parser().parse_args(args)
    except SystemExit:
        why = refused.getvalue().strip().splitlines()
        return None, f"`kubetune {shlex.join(args)}` is refused: {why[-1] if why else 'bad arguments'}"
    if getattr(parsed, "command", None) != "operator":
        return None, f"its container runs `kubetune {shlex.join(args)}`, not `kubetune operator`"
    env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
    try:
        return config.from_args(parsed, env), ""
    except ValueError as err:
        return None, f"its settings are refused: {err}"


def _pod_trouble(api: Api, namespace: str, selector: dict[str, str]) -> str:
    """Why the operator's pods are not ready, from their container states; "" when that cannot be read."""
    from urllib.parse import quote

    labels = ",".join(f"{k}={v}" for k, v in selector.items())
    answer = api.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={quote(labels)}")
    reasons = []
    for pod in answer.body.get("items") or [] if answer.status == 200 else []:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                reasons.append(
                    f"{pod['metadata']['name']}: {waiting['reason']}"
                    + (f" ({' '.join(waiting['message'].split())[:200]})" if waiting.get("message") else "")
                )
    return "; ".join(reasons)


def find_operator(api: Api, operator_namespace: str | None) -> tuple[list[Operator], list[Finding]]:
    from urllib.parse import quote

    subject = "operator"
    query = f"labelSelector={quote(OPERATOR_SELECTOR)}"
    looked = ""
    if operator_namespace:
        answer, looked = (
            api.get(f"/apis/apps/v1/namespaces/{operator_namespace}/deployments?{query}"),
            f"namespace {operator_namespace}",
        )
    else:
        answer, looked = api.get(f"/apis/apps/v1/deployments?{query}"), "any namespace"
        if answer.status in (401, 403):
            answer, looked = (
                api.get(f"/apis/apps/v1/namespaces/{DEFAULT_OPERATOR_NAMESPACE}/deployments?{query}"),
                f"namespace {DEFAULT_OPERATOR_NAMESPACE}",
            )
    if answer.status != 200:
        return [], [
            Finding(
                WARNING,
                subject,
                f"not checked: {_no_access(answer, f'Deployments in {looked}')}; "
                "pass --operator-namespace NS where you may, or ask your platform team whether the "
                "kubetune operator runs and watches your namespace",
            )
        ]
    deployments = answer.body.get("items") or []
    if not deployments:
        return [], [
            Finding(
                ERROR,
                subject,
                f"no kubetune operator Deployment in {looked} (label {OPERATOR_SELECTOR}): "
                "install the chart (docs/quickstart.md)"
                + (
                    ""
                    if operator_namespace or looked == "any namespace"
                    else ", or pass --operator-namespace NS where it runs"
                ),
            )
        ]
    operators, findings = [], []
    for deployment in deployments:
        meta, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
        where = f"{meta['namespace']}/{meta['name']}"
        containers = (spec.get("template") or {}).get("spec", {}).get("containers") or []
        container = next(
            (c for c in containers if c.get("name") == OPERATOR_CONTAINER), containers[0] if containers else {}
        )
        settings, refusal = operator_settings(container)
        operator = Operator(
            where,
            settings,
            {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e},
            container.get("image") or "",
        )
        desired, available = spec.get("replicas", 1), status.get("availableReplicas") or 0
        if refusal:
            findings.append(
                Finding(
                    ERROR,
                    f"operator {where}",
                    f"cannot start: {refusal} (fix the chart's values, e.g. extraArgs, and helm upgrade)",
                )
            )
        elif available < 1:
            trouble = _pod_trouble(api, meta["namespace"], (spec.get("selector") or {}).get("matchLabels") or {})
            findings.append(
                Finding(
                    ERROR,
                    f"operator {where}",
                    f"not running ({available}/{desired} available"
                    + (f"; {trouble}" if trouble else "")
                    + f"): kubectl -n {meta['namespace']} "
                    f"describe deployment {meta['name']}; kubectl -n {meta['namespace']} logs "
                    f"deployment/{meta['name']}",
                )
            )
        else:
            tag = operator.image.rpartition(":")[2] if ":" in operator.image.rpartition("/")[2] else ""
            findings.append(
                Finding(
                    WARNING if tag and tag != __version__ else OK,
                    f"operator {where}",
                    f"running ({available}/{desired} available, image {operator.image or '?'})"
                    + (
                        f"; this CLI is kubetune {__version__}: their checks may differ"
                        if tag and tag != __version__
                        else ""
                    ),
                )
            )
        operators.append(operator)
    return operators, findings


# ----------------------------------------------------------------------------------------------- one job


@dataclass
class Job:
    name: str
    namespace: str
    spec: Any  # kubetune.api.v1alpha1.Spec, resolved
    manifest: dict

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


def _watching(operators: list[Operator], namespace: str) -> list[Operator]:
    return [
        o
        for o in operators
        if o.settings is not None and (not o.settings.namespaces or namespace in o.settings.namespaces)
    ]


def check_watch(job: Job, operators: list[Operator]) -> Iterator[Finding]:
    running = [o for o in operators if o.settings is not None]
    if not running:
        return
    watching = _watching(running, job.namespace)
    if watching:
        o = watching[0]
        scope = "every namespace" if not o.settings.namespaces else ", ".join(o.settings.namespaces)
        yield Finding(OK, job.label, f"the operator {o.where} watches {scope}")
        return
    o = running[0]
    wanted = ",".join([*o.settings.namespaces, job.namespace])
    yield Finding(
        ERROR,
        job.label,
        f"the operator {o.where} watches only {', '.join(o.settings.namespaces)}, not "
        f"{job.namespace}: the job would get no status at all; add the namespace: helm upgrade <release> "
        f"charts/kubetune -n {o.where.split('/')[0]} --reuse-values --set 'watchNamespaces={{{wanted}}}'",
    )


def check_policy(job: Job, operator: Operator | None) -> Iterator[Finding]:
    if operator is None or operator.settings is None:
        return
    from kubetune.controller import policy

    settings = operator.settings
    spec = job.spec
    if not spec.output.uri and settings.default_output_uri:
        spec = spec.model_copy(update={"output": spec.output.model_copy(update={"uri": settings.default_output_uri})})
    if not spec.output.uri:  # reported with the output; the prefix rule has nothing to compare
        settings = replace(settings, policy=replace(settings.policy, output_uri_prefix=""))
    ftj = {"metadata": {"name": job.name, "namespace": job.namespace, "uid": "<uid>"}}
    violations = policy.check(settings, ftj, settings.policy.apply_defaults(spec))
    for violation in violations:
        yield Finding(
            ERROR, job.label, f"the cluster's policy refuses it (the job would fail with PolicyDenied): {violation}"
        )
    if not violations and settings.policy != policy.Policy():
        yield Finding(OK, job.label, "the cluster's policy allows it")


def _secret_uses(job: Job, operator: Operator | None) -> dict[str, tuple[list[str], set[str], str]]:
    """Secret name -> (what needs it, the keys it must hold, level when missing)."""
    from kubetune.api.credentials import credential_bindings

    uses: dict[str, tuple[list[str], set[str], str]] = {}

    def need(secret: str, why: str, keys: tuple[str, ...] = (), level: str = ERROR) -> None:
        whys, required, worst = uses.setdefault(secret, ([], set(), level))
        whys.append(why)
        required.update(keys)
        uses[secret] = (whys, required, ERROR if ERROR in (worst, level) else level)

    for binding in credential_bindings(job.spec):
        need(binding.secret, f"{binding.role} credentials", binding.required)
    pod = job.spec.pod
    for volume in pod.volumes if pod is not None else []:
        if volume.secret is not None:
            need(volume.secret.secret_name, f"volume {volume.name}")
    # A missing pull Secret does not stop the kubelet (it pulls without it): a private registry then refuses.
    for secret in pod.image_pull_secrets if pod is not None else []:
        need(secret, "spec.pod.imagePullSecrets", level=WARNING)
    if operator is not None and operator.settings is not None:
        for secret in operator.settings.trainer_image_pull_secrets:
            need(secret, "the chart's trainer.imagePullSecrets", level=WARNING)
    return uses


def check_namespace_objects(api: Api, job: Job, operator: Operator | None) -> Iterator[Finding]:
    ns = job.namespace
    answer = api.get(f"/api/v1/namespaces/{ns}", METADATA_ONLY)
    if answer.status == 404:
        yield Finding(ERROR, job.label, f"namespace {ns} does not exist: kubectl create namespace {ns}")
        return
    for secret, (whys, keys, level) in sorted(_secret_uses(job, operator).items()):
        subject = f'{job.label}: Secret "{secret}"'
        answer = api.get(f"/api/v1/namespaces/{ns}/secrets/{secret}", METADATA_ONLY)
        answer.body = {"metadata": answer.body.get("metadata") or {}}  # whatever the server sent, no data is kept
        for_what = ", ".join(whys)
        if answer.status == 200:
            yield Finding(
                OK,
                subject,
                f"exists ({for_what})"
                + (f"; it must hold {', '.join(sorted(keys))}, which the doctor does not read" if keys else ""),
            )
        elif answer.status == 404:
            example = " ".join(f"--from-literal={k}=..." for k in sorted(keys)) or "--from-file=..."
            yield Finding(
                level,
                subject,
                f"does not exist in namespace {ns} ({for_what})"
                + (": the pod would wait for it (SecretNotFound)" if level == ERROR else "")
                + f"; kubectl -n {ns} create secret generic {secret} {example}",
            )
        else:
            yield Finding(WARNING, subject, f"not checked ({for_what}): {_no_access(answer, f'Secrets in {ns}')}")
    pod = job.spec.pod
    for volume in pod.volumes if pod is not None else []:
        if volume.persistent_volume_claim is not None:
            kind, plural, name = (
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
                volume.persistent_volume_claim.claim_name,
            )
        elif volume.config_map is not None:
            kind, plural, name = "ConfigMap", "configmaps", volume.config_map.name
        else:
            continue
        subject = f'{job.label}: {kind} "{name}"'
        answer = api.get(f"/api/v1/namespaces/{ns}/{plural}/{name}", METADATA_ONLY)
        if answer.status == 200:
            yield Finding(OK, subject, f"exists (volume {volume.name})")
        elif answer.status == 404:
            yield Finding(
                ERROR,
                subject,
                f"does not exist in namespace {ns} (volume {volume.name}): the pod could "
                "not start; create it, or fix spec.pod.volumes",
            )
        else:
            yield Finding(WARNING, subject, f"not checked: {_no_access(answer, f'{plural} in {ns}')}")


def check_queue(api: Api, job: Job, operator: Operator | None) -> Iterator[Finding]:
    from kubetune.controller.kueue import GROUP as KUEUE_GROUP
    from kubetune.controller.kueue import VERSIONS as KUEUE_VERSIONS

    queue, how = job.spec.queue_name, "spec.queueName"
    if not queue and operator is not None and operator.settings is not None and operator.settings.policy.default_queue:
        queue, how = operator.settings.policy.default_queue, "the policy's defaultQueue"
    if not queue:
        return
    subject = f'{job.label}: LocalQueue "{queue}"'
    answer = Answer(404)
    for version in KUEUE_VERSIONS:
        answer = api.get(f"/apis/{KUEUE_GROUP}/{version}/namespaces/{job.namespace}/localqueues/{queue}")
        if not answer.missing_type:
            break
    if answer.status == 200:
        inactive = [
            c
            for c in (answer.body.get("status") or {}).get("conditions") or []
            if c.get("type") == "Active" and c.get("status") == "False"
        ]
        if inactive:
            yield Finding(
                WARNING,
                subject,
                f"exists ({how}) but is not active: {inactive[0].get('reason', '')} "
                f"{' '.join(str(inactive[0].get('message', '')).split())}: the job would stay Queued",
            )
        else:
            yield Finding(OK, subject, f"exists ({how})")
    elif answer.missing_type:
        yield Finding(
            ERROR,
            subject,
            f"Kueue is not installed (the cluster serves no {KUEUE_GROUP} LocalQueues), but "
            f"{how} names a queue: the job would stay Queued (QueueNotFound); install Kueue, or leave "
            "spec.queueName empty",
        )
    elif answer.status == 404:
        yield Finding(
            ERROR,
            subject,
            f"does not exist in namespace {job.namespace} ({how}): the job would stay "
            "Queued (QueueNotFound); create it (docs/shared-cluster.md) or name an existing one "
            f"(kubectl -n {job.namespace} get localqueues)",
        )
    else:
        yield Finding(WARNING, subject, f"not checked: {_no_access(answer, f'LocalQueues in {job.namespace}')}")


def check_priority_class(api: Api, job: Job) -> Iterator[Finding]:
    name = job.spec.priority_class_name
    if not name:
        return
    subject = f'{job.label}: PriorityClass "{name}"'
    answer = api.get(f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}", METADATA_ONLY)
    if answer.status == 200:
        yield Finding(OK, subject, "exists")
    elif answer.status == 404:
        yield Finding(
            ERROR,
            subject,
            "does not exist: the API server would refuse the training pods; name an existing "
            "one (kubectl get priorityclasses) or leave spec.priorityClassName empty",
        )
    else:
        yield Finding(WARNING, subject, f"not checked: {_no_access(answer, 'PriorityClasses')}")


def check_image(job: Job, operators: list[Operator]) -> Iterator[Finding]:
    from kubetune.controller.config import DEFAULT_TRAINER_IMAGE

    if job.spec.image:
        yield Finding(OK, job.label, f"trainer image {job.spec.image} (spec.image)")
        return
    watching = _watching(operators, job.namespace)
    if not watching:
        yield Finding(
            WARNING,
            job.label,
            "spec.image is empty and the operator's default trainer image could not be "
            "read: it must be one your nodes can pull (the chart's trainer.image.repository)",
        )
        return
    operator = watching[0]
    image = operator.settings.trainer_image
    if not operator.env.get("KUBETUNE_TRAINER_IMAGE", "").strip() or image == DEFAULT_TRAINER_IMAGE:
        yield Finding(
            WARNING,
            job.label,
            f"spec.image is empty, so the pods run the operator's default {image}, the "
            "public image of this release: if your nodes pull from your own registry, install with --set "
            "trainer.image.repository=$REGISTRY/trainer (docs/quickstart.md), or set spec.image",
        )
    else:
        yield Finding(OK, job.label, f"trainer image {image} (the operator's default)")


# ----------------------------------------------------------------------------------------------- storage


def _store_endpoint_override(spec: Any, endpoint: str | None) -> Any:
    """The spec with every S3 endpoint replaced by the one this machine reaches (`--s3-endpoint`)."""
    if not endpoint:
        return spec
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"endpoint": None}),
            "datasets": [d.model_copy(update={"endpoint": None}) for d in spec.datasets],
            "output": spec.output.model_copy(update={"endpoint": endpoint}),
        }
    )


def _storage_finding(err: Exception, subject: str, what: str, endpoint_hint: bool) -> Finding:
    from kubetune_trainer.errors import InfraError, TrainerError

    text = err.message if isinstance(err, TrainerError) else f"{type(err).__name__}: {' '.join(str(err).split())}"
    text = text.replace("check the credentialsSecret", "checked with your own credentials")
    if "no S3 credentials found" in text:
        return Finding(
            WARNING,
            subject,
            f"{what} not checked: you have no S3 credentials here (set AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)",
        )
    if isinstance(err, InfraError) or not isinstance(err, TrainerError):
        return Finding(
            WARNING,
            subject,
            f"{what} not checked: {text}"
            + (
                "; the pods may reach it where this machine does not (give the address this machine "
                "reaches with --s3-endpoint URL)"
                if endpoint_hint
                else ""
            ),
        )
    return Finding(ERROR, subject, f"{text} (with your credentials; the pods use the spec's)")


def check_output(job: Job, operators: list[Operator], s3_endpoint: str | None) -> Iterator[Finding]:
    from kubetune.api.uris import join_uri, parse_uri

    spec, subject = job.spec, f"{job.label}: output"
    uri, how = spec.output.uri, "spec.output.uri"
    if not uri:
        watching = _watching(operators, job.namespace)
        if watching and watching[0].settings.default_output_uri:
            uri, how = watching[0].settings.default_output_uri, "the operator's default output URI"
        elif watching:
            yield Finding(
                ERROR,
                subject,
                "spec.output.uri is empty and the operator has no default "
                "(trainer.defaultOutputUri): the job would fail as SpecInvalid; set spec.output.uri",
            )
            return
        else:
            yield Finding(
                WARNING,
                subject,
                "spec.output.uri is empty: the operator's default output URI applies, which could not be read",
            )
            return
    root = join_uri(uri, job.namespace, job.name) + "/"
    if parse_uri(uri).scheme != "s3":
        yield Finding(SKIPPED, subject, f"{root} ({how}) lies on a volume of the pods: not checked from here")
        return
    spec = _store_endpoint_override(
        spec.model_copy(update={"output": spec.output.model_copy(update={"uri": uri})}), s3_endpoint
    )
    probe = f"{root}{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        from kubetune_trainer.storage import get_storage

        storage = get_storage(probe, credentials_role="output", spec=spec)
        storage.write_text(probe, f"written by kubetune doctor {__version__}; safe to delete\n")
        storage.delete_prefix(probe)
    except ImportError as err:
        yield Finding(SKIPPED, subject, f"{root}: not checked: needs {err.name} (pip install 'kubetune[cli]')")
        return
    except Exception as err:  # noqa: BLE001 - the storage code's errors name the URI
        yield _storage_finding(err, subject, f"{root} ({how})", endpoint_hint=bool(spec.output.endpoint))
        return
    yield Finding(
        OK,
        subject,
        f"{root} ({how}) is writable with your credentials (a probe object was written and "
        "deleted); runs land under <uid>/ there",
    )


def _check_uri(uri: str, role: str, what: str, spec: Any, is_model: bool) -> Finding:
    from kubetune.api.credentials import lookup
    from kubetune.api.uris import join_uri, parse_uri

    subject = what
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return Finding(
            SKIPPED, subject, f"{uri} lies on a volume of the pods (spec.pod.volumes): not checked from here"
        )
    if parsed.scheme == "hf":
        try:
            from huggingface_hub import HfApi
            from huggingface_hub.errors import OfflineModeIsEnabled

            from kubetune_trainer.sources.huggingface import translate_hub_error
        except ImportError:
            return Finding(SKIPPED, subject, f"{uri}: not checked (pip install huggingface_hub to check hub URIs)")
        hub = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=lookup(role, "HF_TOKEN") or False)
        try:
            hub.repo_info(
                parsed.location,
                repo_type="dataset" if parsed.is_dataset_repo else "model",
                revision=parsed.revision,
                timeout=REQUEST_TIMEOUT,
            )
        except OfflineModeIsEnabled:
            return Finding(SKIPPED, subject, f"{uri}: not checked (HF_HUB_OFFLINE is set)")
        except Exception as err:  # noqa: BLE001 - translated as the trainer translates it
            return _storage_finding(translate_hub_error(err, uri), subject, uri, endpoint_hint=False)
        return Finding(OK, subject, f"{uri} exists on the Hugging Face Hub (looked up with your token, if any)")
    try:
        from kubetune_trainer.storage import get_storage

        storage = get_storage(uri, credentials_role=role, spec=spec)
        if is_model:
            config = join_uri(uri, "config.json")
            found = storage.exists(config)
            missing = f"{config} does not exist: not a Hugging Face model folder"
        else:
            found = bool(storage.list(uri))
            missing = f"nothing at {uri}"
    except ImportError as err:
        return Finding(SKIPPED, subject, f"{uri}: not checked: needs {err.name} (pip install 'kubetune[cli]')")
    except Exception as err:  # noqa: BLE001 - the storage code's errors name the URI
        return _storage_finding(err, subject, uri, endpoint_hint=True)
    if not found:
        return Finding(ERROR, subject, f"{missing} (looked up with your credentials): fix the URI, or upload it")
    return Finding(OK, subject, f"{uri} exists (looked up with your credentials)")


def check_sources(job: Job, s3_endpoint: str | None) -> Iterator[Finding]:
    from kubetune.api.credentials import ROLE_MODEL, dataset_role, eval_dataset_role

    spec = _store_endpoint_override(job.spec, s3_endpoint)
    yield _check_uri(spec.model.uri, ROLE_MODEL, f"{job.label}: model", spec, is_model=True)
    for i, dataset in enumerate(spec.datasets):
        yield _check_uri(dataset.uri, dataset_role(i), f"{job.label}: dataset {dataset.name}", spec, is_model=False)
        if dataset.eval_uri:
            yield _check_uri(
                dataset.eval_uri,
                eval_dataset_role(i),
                f"{job.label}: dataset {dataset.name} (eval)",
                spec,
                is_model=False,
            )


# ----------------------------------------------------------------------------------------------- the command


def _jobs(path: str, namespace: str | None, default_namespace: str, out: list[Finding]) -> list[Job]:
    from kubetune.manifests import ManifestFileError, check_file

    try:
        checked = check_file(path)
    except ManifestFileError as err:
        out.append(Finding(ERROR, path, str(err)))
        return []
    jobs = []
    for doc in checked:
        for problem in doc.problems:
            out.append(Finding(ERROR, f"{path}: {doc.name}", f"{problem} (kubetune validate {path})"))
        if doc.job is None or doc.problems:
            continue
        manifest = doc.job.model_dump(by_alias=True, exclude_unset=True, mode="json")
        own = doc.job.metadata.namespace
        if own and namespace and own != namespace:
            out.append(
                Finding(
                    ERROR,
                    f"{path}: {doc.name}",
                    f"metadata.namespace is {own} but -n says {namespace}: kubectl apply would refuse it",
                )
            )
            continue
        job = Job(doc.job.metadata.name, own or namespace or default_namespace, doc.job.spec.resolved(), manifest)
        out.append(
            Finding(OK, f"{path}: {doc.name}", f"a valid FineTuneJob, to be created in namespace {job.namespace}")
        )
        jobs.append(job)
    return jobs


def diagnose(args: argparse.Namespace) -> list[Finding]:
    """Every finding, in the order they are printed."""
    findings: list[Finding] = []
    cluster, api = None, None
    try:
        from kubetune.usercli import CliError
        from kubetune.usercli.cluster import Cluster

        cluster = Cluster(kubeconfig=args.kubeconfig, context=args.context, namespace=None)
        api = Api(cluster)
    except ImportError as err:
        findings.append(Finding(ERROR, "cluster", f"not checked: needs {err.name} (pip install 'kubetune[cli]')"))
    except CliError as err:
        findings.append(Finding(ERROR, "cluster", str(err)))
    default_namespace = cluster.namespace if cluster is not None else "default"
    jobs = _jobs(args.file, args.namespace, default_namespace, findings)
    operators: list[Operator] = []
    if api is not None and jobs:
        try:
            findings += check_crd(api, [j.manifest for j in jobs])
            operators, found = find_operator(api, args.operator_namespace)
            findings += found
            for job in jobs:
                watching = _watching(operators, job.namespace)
                operator = watching[0] if watching else None
                findings += check_watch(job, operators)
                findings += check_policy(job, operator)
                findings += check_namespace_objects(api, job, operator)
                findings += check_queue(api, job, operator)
                findings += check_priority_class(api, job)
        except Unreachable as err:
            findings.append(Finding(ERROR, "cluster", f"{err}: the cluster's part was not checked"))
            operators = []
    from kubetune.usercli.outputs import limit_store_retries

    limit_store_retries()
    for job in jobs:
        findings += check_image(job, operators)
        findings += check_output(job, operators, args.s3_endpoint)
        findings += check_sources(job, args.s3_endpoint)
    return findings


def cmd_doctor(args: argparse.Namespace) -> int:
    findings = diagnose(args)
    for finding in findings:
        print(finding.line(), flush=True)
    errors = sum(f.level == ERROR for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    print(f"{errors} error(s), {warnings} warning(s)" + ("" if errors else ": ready to apply"), file=sys.stderr)
    return 1 if errors else 0


def add_doctor_command(sub: Any) -> None:
    p = sub.add_parser("doctor", help="before applying: check that what a FineTuneJob needs is there")
    p.add_argument("file", metavar="FILE", help="FineTuneJob manifest (multi-document YAML)")
    p.add_argument(
        "-n", "--namespace", help="the namespace of a manifest that names none (default: the kubeconfig context's)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument(
        "--operator-namespace",
        metavar="NS",
        help="where the operator runs (default: found by its "
        f"labels in every namespace you may list, else {DEFAULT_OPERATOR_NAMESPACE})",
    )
    p.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3 endpoint this machine reaches (default: the spec's, else $AWS_ENDPOINT_URL)",
    )
    p.set_defaults(func=cmd_doctor)
