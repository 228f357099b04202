"""Pure functions: a FineTuneJob (its body and parsed spec) -> the Kubernetes objects that run it.

No API calls here; the reconciler (reconciler.py) creates what these return and tests compare them
field by field.
All objects are plain dicts in the wire form (camelCase), as `kubectl get -o json` shows them.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.utils import parse_quantity

from kubetune.api.constants import API_VERSION, GROUP, KIND, PLURAL, TERMINATION_LOG, ExitCode
from kubetune.api.credentials import credential_bindings, env_name
from kubetune.api.uris import join_uri
from kubetune.api.v1alpha1 import Spec
from kubetune.api.validation import Problem, SpecError, parse_spec
from kubetune.controller.config import OperatorConfig
from kubetune.controller.permissions import REPORTER_VERBS

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetune"
LABEL_FTJ = "kubetune.dev/finetunejob"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Attempts made by earlier Jobs of the same FineTuneJob (a Job deleted by hand and recreated).
ANNOTATION_PREVIOUS_ATTEMPTS = "kubetune.dev/previous-attempts"
# Set while the operator holds the Job suspended because of the per-namespace cap.
ANNOTATION_HELD = "kubetune.dev/held-by-namespace-limit"

TRAINER_CONTAINER = "trainer"
SPEC_FILE = "finetunejob.yaml"
SPEC_MOUNT = "/etc/kubetune"
SPEC_PATH = f"{SPEC_MOUNT}/{SPEC_FILE}"
SCRATCH_MOUNT = "/scratch"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"  # where in-cluster config looks
MASTER_PORT = 29500
RUN_AS_USER = 1000
TOKEN_EXPIRATION_SECONDS = 3600


# ----------------------------------------------------------------------------------------- names


def job_name(name: str) -> str:
    return name


def configmap_name(name: str) -> str:
    return f"{name}-spec"


def service_name(name: str) -> str:
    return f"{name}-workers"


def reporter_name(name: str) -> str:
    return f"{name}-reporter"


def labels(name: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_FTJ: name}


# Every child of every FineTuneJob (the operator's Job and pod watches, its per-namespace Job counts).
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


def selector(name: str) -> str:
    """The children of one FineTuneJob."""
    return f"{MANAGED_SELECTOR},{LABEL_FTJ}={name}"


def owner_reference(ftj: dict) -> dict:
    meta = ftj["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(ftj: dict, name: str, extra_labels: dict[str, str] | None = None, annotations: dict | None = None) -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ftj["metadata"]["namespace"],
        "labels": labels(ftj["metadata"]["name"]) | (extra_labels or {}),
        "ownerReferences": [owner_reference(ftj)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


# ----------------------------------------------------------------------------------------- spec


def resolve_spec(raw_spec: Any, config: OperatorConfig, name: str | None = None) -> Spec:
    """Validate a FineTuneJob's spec (with its name, the rules between the two) and fill what the operator
    defaults (output.uri)."""
    spec = parse_spec(raw_spec, name=name).resolved()
    if not spec.output.uri:
        if not config.default_output_uri:
            raise SpecError([Problem("spec.output.uri", "required: this operator has no default output URI configured")])
        spec = spec.model_copy(update={"output": spec.output.model_copy(update={"uri": config.default_output_uri})})
    return spec


def output_root(spec: Spec, namespace: str, name: str, uid: str) -> str:
    """<output.uri>/<namespace>/<name>/<uid>/: a re-created job with the same name never mixes runs."""
    assert spec.output.uri
    return join_uri(spec.output.uri, namespace, name, uid) + "/"


def manifest_yaml(ftj: dict, spec: Spec) -> str:
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": ftj["metadata"]["name"], "namespace": ftj["metadata"]["namespace"]},
        "spec": spec.to_wire(),
    }
    # JSON is YAML (the trainer reads it with its YAML loader like any manifest), and far cheaper to write
    # than with PyYAML; on one line, since an indent switches json to its pure-Python encoder (docs/operator.md).
    return json.dumps(doc) + "\n"


# ----------------------------------------------------------------------------------------- objects


def build_configmap(ftj: dict, spec: Spec) -> dict:
    name = ftj["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ftj, configmap_name(name)),
        "data": {SPEC_FILE: manifest_yaml(ftj, spec)},
    }


def build_service_account(ftj: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ftj, reporter_name(ftj["metadata"]["name"])),
        # The token reaches only the trainer container, through a projected volume.
        "automountServiceAccountToken": False,
    }


def build_role(ftj: dict) -> dict:
    name = ftj["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(ftj, reporter_name(name)),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [name],
                "verbs": list(REPORTER_VERBS),
            }
        ],
    }


def build_role_binding(ftj: dict) -> dict:
    name = ftj["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ftj, reporter_name(name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reporter_name(name)},
        "subjects": [
            {"kind": "ServiceAccount", "name": reporter_name(name), "namespace": ftj["metadata"]["namespace"]}
        ],
    }


def build_service(ftj: dict) -> dict:
    """Headless Service that gives indexed pods stable DNS names (<name>-0.<name>-workers)."""
    name = ftj["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ftj, service_name(name)),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_FTJ: name},
            # torchrun rendezvous happens before any pod is Ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def shared_memory_size(spec: Spec) -> str:
    """spec.resources.sharedMemory, else half of the memory limit (in the largest binary unit that divides
    it), else 1Gi."""
    if spec.resources.shared_memory:
        return str(spec.resources.shared_memory)
    try:
        total = int(parse_quantity(spec.resources.memory)) if spec.resources.memory else 0
    except ValueError:  # the schema admits only quantities; never fail a Job over /dev/shm
        total = 0
    if not total:
        return "1Gi"
    half = total // 2
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if half % size == 0:
            return f"{half // size}{unit}"
    return str(half)


def trainer_command(ftj: dict, spec: Spec) -> list[str]:
    name = ftj["metadata"]["name"]
    procs = max(spec.resources.gpus, 1)
    if spec.nodes == 1 and procs == 1:
        return ["python", "-m", "kubetune_trainer", SPEC_PATH]
    # Several processes: torchrun behind kubetune_trainer.launch, which keeps the workers' exit code
    # (torchrun itself exits 1 for any failure, which would turn a user error into retries).
    launch = ["python", "-m", "kubetune_trainer.launch"]
    if spec.nodes == 1:
        return [*launch, "--standalone", "--nnodes", "1", "--nproc-per-node", str(procs),
                "-m", "kubetune_trainer", SPEC_PATH]
    return [
        *launch,
        "--nnodes", str(spec.nodes),
        "--nproc-per-node", str(procs),
        "--node-rank", "$(KUBETUNE_NODE_RANK)",
        "--master-addr", f"{job_name(name)}-0.{service_name(name)}",
        "--master-port", str(MASTER_PORT),
        "-m", "kubetune_trainer", SPEC_PATH,
    ]


def trainer_env(ftj: dict, spec: Spec, config: OperatorConfig) -> list[dict]:
    meta = ftj["metadata"]
    env: list[dict] = [
        {"name": "KUBETUNE_OUTPUT_URI", "value": output_root(spec, meta["namespace"], meta["name"], meta["uid"])},
        {"name": "KUBETUNE_FTJ_NAME", "value": meta["name"]},
        {"name": "KUBETUNE_FTJ_NAMESPACE", "value": meta["namespace"]},
        {"name": "KUBETUNE_FTJ_UID", "value": meta["uid"]},
        {"name": "KUBETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "KUBETUNE_REPORT_INTERVAL_SECONDS", "value": str(config.report_interval_seconds)},
        {"name": "KUBETUNE_GRACE_SECONDS", "value": str(config.grace_seconds)},
        {"name": "HOME", "value": SCRATCH_MOUNT},
        {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
        {"name": "TMPDIR", "value": SCRATCH_MOUNT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.nodes > 1:
        env.append({
            "name": "KUBETUNE_NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}},
        })
    # Secrets are referenced, never read: the kubelet injects the values.
    for binding in credential_bindings(spec):
        for key in binding.keys:
            env.append({
                "name": env_name(binding.role, key),
                "valueFrom": {"secretKeyRef": {"name": binding.secret, "key": key, "optional": True}},
            })
    return env


def trainer_resources(spec: Spec) -> dict:
    limits: dict[str, str] = {}
    if spec.resources.gpus > 0:
        limits[spec.resources.gpu_resource_name] = str(spec.resources.gpus)  # the client wants strings
    if spec.resources.cpu is not None:
        limits["cpu"] = str(spec.resources.cpu)
    if spec.resources.memory is not None:
        limits["memory"] = str(spec.resources.memory)
    requests = {k: v for k, v in limits.items() if k in ("cpu", "memory")}
    out: dict[str, dict] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def pod_template(ftj: dict, spec: Spec, config: OperatorConfig) -> dict:
    name = ftj["metadata"]["name"]
    container = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or config.trainer_image,
        "command": trainer_command(ftj, spec),
        "env": trainer_env(ftj, spec, config),
        "resources": trainer_resources(spec),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_MOUNT},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "reporter-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are the Job's, so podFailurePolicy sees every exit code
        "serviceAccountName": reporter_name(name),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": configmap_name(name)}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shared_memory_size(spec)}},
            {
                "name": "reporter-token",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]}},
                    ]
                },
            },
        ],
    }
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.resources.tolerations]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.nodes > 1:
        pod_spec["subdomain"] = service_name(name)
    return {"metadata": {"labels": labels(name)}, "spec": pod_spec}


def pod_failure_policy() -> dict:
    return {
        "rules": [
            # Bad spec or data: retrying cannot help.
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In", "values": [ExitCode.USER_ERROR]},
            },
            # Preemption, eviction, node drain: not the job's fault, not a retry.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_job(
    ftj: dict,
    spec: Spec,
    config: OperatorConfig,
    *,
    suspend: bool,
    held_by_namespace_limit: bool = False,
    previous_attempts: int = 0,
) -> dict:
    name = ftj["metadata"]["name"]
    extra_labels = {LABEL_KUEUE_QUEUE: spec.queue_name} if spec.queue_name else {}
    annotations = {}
    if previous_attempts:
        annotations[ANNOTATION_PREVIOUS_ATTEMPTS] = str(previous_attempts)
    if held_by_namespace_limit:
        annotations[ANNOTATION_HELD] = "true"
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "suspend": suspend,
        "podFailurePolicy": pod_failure_policy(),
        "template": pod_template(ftj, spec, config),
    }
    if spec.active_deadline_seconds > 0:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.nodes > 1:
        job_spec |= {"completionMode": "Indexed", "completions": spec.nodes, "parallelism": spec.nodes}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(ftj, job_name(name), extra_labels, annotations),
        "spec": job_spec,
    }


def build_prerequisites(ftj: dict, spec: Spec) -> list[dict]:
    """What the Job's pods need before they are created: their ServiceAccount (admission refuses a pod
    whose account is missing), the spec ConfigMap they mount and, for several nodes, the workers' Service."""
    objects = [build_service_account(ftj), build_configmap(ftj, spec)]
    if spec.nodes > 1:
        objects.append(build_service(ftj))
    return objects


def build_reporter_grant(ftj: dict) -> list[dict]:
    """The reporter's Role and RoleBinding: only the running trainer needs them (it reports after its model
    is loaded, and retries a refused report), so they may follow the Job."""
    return [build_role(ftj), build_role_binding(ftj)]


def build_support_objects(ftj: dict, spec: Spec) -> list[dict]:
    """Everything but the Job, in creation order."""
    return build_prerequisites(ftj, spec) + build_reporter_grant(ftj)


def initial_suspend(spec: Spec) -> bool:
    """Queued jobs start suspended (Kueue unsuspends them on admission); so do suspended ones."""
    return spec.suspend or bool(spec.queue_name)


def job_spec_updates(spec: Spec, job: dict) -> dict:
    """The Job fields the operator propagates from a (mutable) FineTuneJob spec edit; {} = in sync.

    suspend is not handled here (see Reconciler._propagate: it depends on Kueue and the namespace cap)."""
    current = job.get("spec", {})
    updates: dict[str, Any] = {}
    if current.get("backoffLimit") != spec.backoff_limit:
        updates["backoffLimit"] = spec.backoff_limit
    deadline = spec.active_deadline_seconds or None
    if current.get("activeDeadlineSeconds") != deadline:
        updates["activeDeadlineSeconds"] = deadline  # None removes it in a merge patch
    return updates
