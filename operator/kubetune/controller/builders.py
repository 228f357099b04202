"""Pure functions: a FineTuneJob (its body and parsed spec) -> the Kubernetes objects that run it.

No API calls here; the reconciler (reconciler.py) creates what these return and tests compare them
field by field.
All objects are plain dicts in the wire form (camelCase), as `kubectl get -o json` shows them.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes.utils import parse_quantity

from kubetune.api.constants import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SCRATCH_MOUNT,
    SERVICE_ACCOUNT_TOKEN_MOUNT,
    SHARED_MEMORY_MOUNT,
    SPEC_MOUNT,
    TERMINATION_LOG,
    ExitCode,
)
from kubetune.api.credentials import AMBIENT_ROLES_ENV, ambient_roles, credential_bindings, env_name
from kubetune.api.uris import join_uri, parse_uri
from kubetune.api.v1alpha1 import Spec, Volume
from kubetune.api.validation import Problem, SpecError, parse_spec
from kubetune.controller.config import OperatorConfig
from kubetune.controller.permissions import REPORTER_VERBS

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetune"
LABEL_FTJ = "kubetune.dev/finetunejob"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# What earlier Jobs of the same FineTuneJob used (a Job per attempt for several nodes, a Job re-made after a deletion
# or for a re-opened job): the attempts they started, those of them that failed (spec.backoffLimit counts these), and
# the seconds they were active (spec.activeDeadlineSeconds counts these). See Tally.
ANNOTATION_PREVIOUS_ATTEMPTS = "kubetune.dev/previous-attempts"
ANNOTATION_PREVIOUS_FAILURES = "kubetune.dev/previous-failures"
ANNOTATION_PREVIOUS_SECONDS = "kubetune.dev/previous-active-seconds"
# On the pod template: the resolved spec the trainer reads, as a file of a downward API volume (SPEC_PATH). The pod
# carries its own spec, so a job needs no ConfigMap to start: one object and one API call fewer per job.
ANNOTATION_SPEC = "kubetune.dev/spec"
# The job's ConfigMap (configmap_name) is its record between Jobs, made only when there is something to carry over:
# ANNOTATION_NEXT_ATTEMPT, the tally the next Job starts from, written before the operator deletes a Job to start the
# next attempt (the Job and its annotations are gone by the time the next one is made); ANNOTATION_RESUME_FROM,
# spec.resumeFrom's FineTuneJob resolved to its output root when the job's first Job was made, so that later attempts
# start from the same place even when that job is gone by then.
ANNOTATION_NEXT_ATTEMPT = "kubetune.dev/next-attempt"
ANNOTATION_RESUME_FROM = "kubetune.dev/resume-from"
# On a Job the namespace cap holds: "<FineTuneJob creationTimestamp>/<when the operator held it, in microseconds>".
# Held Jobs are released in this order, the FineTuneJobs' creation order (the second part orders those created within
# the same second of the API server's clock).
ANNOTATION_QUEUE_ORDER = "kubetune.dev/queue-order"
# Set while the operator holds the Job suspended because of the per-namespace cap.
ANNOTATION_HELD = "kubetune.dev/held-by-namespace-limit"
# Set while the operator holds the Job suspended because spec.suspend says so. The operator unsuspends only a Job
# it suspended itself (one of these two), never one that Kueue's webhook or another controller suspended.
ANNOTATION_SUSPENDED_BY_USER = "kubetune.dev/suspended-by-user"

TRAINER_CONTAINER = "trainer"
# The node label NVIDIA's GPU feature discovery puts on GPU nodes (e.g. NVIDIA-H100-80GB-HBM3); a job whose
# resources.nodeSelector names one gets that GPU's memory from the operator's table (KUBETUNE_GPU_MEMORY_TABLE).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
SPEC_FILE = "finetunejob.yaml"
SPEC_PATH = f"{SPEC_MOUNT}/{SPEC_FILE}"
MASTER_PORT = 29500
RUN_AS_USER = 1000
TOKEN_EXPIRATION_SECONDS = 3600
# A Secret of this type, naming a ServiceAccount in this annotation, gets a token of that account from the cluster's
# token controller (kube-controller-manager), valid while the Secret and the account both exist.
SERVICE_ACCOUNT_TOKEN_TYPE = "kubernetes.io/service-account-token"
SERVICE_ACCOUNT_NAME_ANNOTATION = "kubernetes.io/service-account.name"
# A pod that asked for no GPU must see none of the node's: CUDA base images set NVIDIA_VISIBLE_DEVICES=all, and
# where the NVIDIA container runtime is the node's default it then mounts every GPU of the node, other tenants'
# included; "void" makes it inject nothing. The AMD container runtime reads AMD_VISIBLE_DEVICES alike (a value
# without a device index adds no device).
NO_GPU_ENV = {"NVIDIA_VISIBLE_DEVICES": "void", "AMD_VISIBLE_DEVICES": "void"}
# Pod annotations that would take the pod out of the restricted Pod Security Standard: AppArmor profiles other
# than the runtime's default or a node-local one (pod-security-admission's check_appArmorProfile), and the legacy
# seccomp annotations (the pod's seccomp profile is the operator's: RuntimeDefault).
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_ANNOTATION_PREFIXES = (
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)


# ----------------------------------------------------------------------------------------- names


def job_name(name: str) -> str:
    return name


def configmap_name(name: str) -> str:
    return f"{name}-spec"


def service_name(name: str) -> str:
    return f"{name}-workers"


def reporter_name(name: str) -> str:
    return f"{name}-reporter"


def reporter_token_name(ftj: dict) -> str:
    """The Secret that holds the reporter's token. The operator may create Secrets but never read one, so an existing
    Secret of this name cannot be checked for its owner: the name carries the FineTuneJob's uid, and one left by an
    earlier FineTuneJob of the same name never stands in for this one's."""
    return f"{reporter_name(ftj['metadata']['name'])}-{ftj['metadata']['uid'][:8]}"


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


def _meta(
    ftj: dict,
    name: str,
    extra_labels: dict[str, str] | None = None,
    annotations: dict | None = None,
    owned: bool = True,
) -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ftj["metadata"]["namespace"],
        "labels": labels(ftj["metadata"]["name"]) | (extra_labels or {}),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(ftj)]
    if annotations:
        meta["annotations"] = annotations
    return meta


# ----------------------------------------------------------------------------------------- attempts


@dataclass(frozen=True)
class Tally:
    """What the earlier attempts of a FineTuneJob used, carried from one Job to the next: attempts started,
    attempts that failed (preemptions are not failures), seconds active. A Job carries the tally of the Jobs before
    it in its annotations; the job's ConfigMap carries the one for the next Job while the operator replaces a Job
    (with the reason and words of the change, for the status in between)."""

    attempts: int = 0
    failures: int = 0
    seconds: int = 0
    reason: str = ""
    message: str = ""

    @staticmethod
    def _int(annotations: dict, key: str) -> int:
        try:
            return max(0, int(annotations.get(key) or 0))
        except ValueError:  # hand-edited: count from zero rather than stop the job
            return 0

    @classmethod
    def of_job(cls, job: dict) -> Tally:
        annotations = job.get("metadata", {}).get("annotations") or {}
        return cls(
            *(
                cls._int(annotations, key)
                for key in (ANNOTATION_PREVIOUS_ATTEMPTS, ANNOTATION_PREVIOUS_FAILURES, ANNOTATION_PREVIOUS_SECONDS)
            )
        )

    def job_annotations(self) -> dict[str, str]:
        pairs = (
            (ANNOTATION_PREVIOUS_ATTEMPTS, self.attempts),
            (ANNOTATION_PREVIOUS_FAILURES, self.failures),
            (ANNOTATION_PREVIOUS_SECONDS, self.seconds),
        )
        return {key: str(value) for key, value in pairs if value}

    @classmethod
    def of_configmap(cls, configmap: dict | None) -> Tally | None:
        """The next attempt's tally the ConfigMap holds; None when it holds none (or one that cannot be read)."""
        raw = ((configmap or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_NEXT_ATTEMPT)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(
                int(data.get("attempts", 0)),
                int(data.get("failures", 0)),
                int(data.get("seconds", 0)),
                str(data.get("reason", "")),
                str(data.get("message", "")),
            )
        except (ValueError, TypeError, AttributeError):
            return None

    def configmap_annotation(self) -> dict[str, str]:
        return {
            ANNOTATION_NEXT_ATTEMPT: json.dumps(
                {
                    "attempts": self.attempts,
                    "failures": self.failures,
                    "seconds": self.seconds,
                    "reason": self.reason,
                    "message": self.message,
                },
                separators=(",", ":"),
            )
        }


def job_backoff_limit(spec: Spec, earlier: Tally) -> int:
    """The Job's backoffLimit. Several nodes: 0, so that the first failed pod fails the Job and the Job controller
    ends the attempt's other pods at once (the operator then starts the next attempt, every node, in a new Job).
    One node: the retries spec.backoffLimit has left after the earlier Jobs' failures (each retry of the Job's pod
    is a whole attempt)."""
    if spec.nodes > 1:
        return 0
    return max(0, spec.backoff_limit - earlier.failures)


def job_deadline(spec: Spec, earlier: Tally) -> int | None:
    """The Job's activeDeadlineSeconds: what spec.activeDeadlineSeconds leaves after the earlier Jobs' active time
    (at least 1 s); None without a deadline."""
    if spec.active_deadline_seconds <= 0:
        return None
    return max(1, spec.active_deadline_seconds - earlier.seconds)


# ----------------------------------------------------------------------------------------- spec


def resolve_spec(raw_spec: Any, config: OperatorConfig, name: str | None = None) -> Spec:
    """Validate a FineTuneJob's spec (with its name, the rules between the two) for this cluster, and fill what
    the operator defaults (output.uri; the policy's default queue)."""
    return resolve_written(parse_spec(raw_spec, name=name), config)


def resolve_written(written: Spec, config: OperatorConfig) -> Spec:
    """resolve_spec of a spec already parsed as the user wrote it (parse_spec)."""
    spec = written.resolved()
    if not spec.output.uri:
        if not config.default_output_uri:
            raise SpecError(
                [Problem("spec.output.uri", "required: this operator has no default output URI configured")]
            )
        spec = spec.model_copy(update={"output": spec.output.model_copy(update={"uri": config.default_output_uri})})
    problems = _local_output_problems(spec) + _pod_security_problems(spec)
    if problems:
        raise SpecError(problems)
    return config.policy.apply_defaults(spec)


def _local_output_problems(spec: Spec) -> list[Problem]:
    """A file:// output in a cluster must lie on a writable volume of spec.pod.volumes: anywhere else it is the
    pod's own filesystem (read-only, or /scratch, which is gone with the pod, and the model with it)."""
    assert spec.output.uri
    parsed = parse_uri(spec.output.uri)
    if parsed.scheme != "file":
        return []
    path = posixpath.normpath(parsed.location)
    volumes = spec.pod.volumes if spec.pod is not None else []
    holder = next(
        (v for v in volumes if path == v.mount_path.rstrip("/") or path.startswith(v.mount_path.rstrip("/") + "/")),
        None,
    )
    if holder is None:
        return [
            Problem(
                "spec.output.uri",
                f"{spec.output.uri} is not on a volume of spec.pod.volumes: in a cluster a "
                "file:// output is lost with the pod; write to s3://, or mount a PersistentVolumeClaim "
                "(readOnly: false) at or above that path",
            )
        ]
    if holder.read_only or holder.persistent_volume_claim is None:
        return [
            Problem(
                "spec.output.uri",
                f"{spec.output.uri} lies on volume {holder.name!r}, which the trainer "
                "cannot write: give a PersistentVolumeClaim volume readOnly: false",
            )
        ]
    return []


def _pod_security_problems(spec: Spec) -> list[Problem]:
    annotations = spec.pod.annotations if spec.pod is not None else {}
    problems = []
    for key, value in annotations.items():
        if (
            key.startswith(APPARMOR_ANNOTATION_PREFIX)
            and value
            and value != "runtime/default"
            and not value.startswith("localhost/")
        ):
            problems.append(
                Problem(
                    f"spec.pod.annotations[{key}]",
                    f"AppArmor profile {value!r} is outside the "
                    "restricted Pod Security Standard (use runtime/default or localhost/<profile>)",
                )
            )
        elif key.startswith(SECCOMP_ANNOTATION_PREFIXES):
            problems.append(
                Problem(
                    f"spec.pod.annotations[{key}]",
                    "the training pods' seccomp profile is the "
                    "operator's (RuntimeDefault), as the restricted Pod Security Standard asks",
                )
            )
    return problems


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
    # JSON is YAML (the trainer reads it with its YAML loader like any manifest), and far cheaper to write than with
    # PyYAML; orjson's, a tenth of the standard library's time (3.6 % of the operator's CPU in a burst of new jobs).
    return orjson.dumps(doc).decode() + "\n"


# ----------------------------------------------------------------------------------------- objects


def build_configmap(ftj: dict, resume_from: str = "") -> dict:
    """The job's record between its Jobs (ANNOTATION_NEXT_ATTEMPT, ANNOTATION_RESUME_FROM): annotations only. Its name
    is the one under which earlier releases kept the spec there, so that their jobs' tallies are still found."""
    name = ftj["metadata"]["name"]
    annotations = {ANNOTATION_RESUME_FROM: resume_from} if resume_from else None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ftj, configmap_name(name), annotations=annotations),
    }


def build_service_account(ftj: dict) -> dict:
    """The reporter's identity. No pod runs as it: its token reaches the trainer through reporter_token's Secret."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ftj, reporter_name(ftj["metadata"]["name"])),
        "automountServiceAccountToken": False,
    }


def build_reporter_token(ftj: dict) -> dict:
    """A Secret the cluster's token controller fills with a token of the reporter's account (data.token), valid while
    this Secret and that account exist. The token controller deletes the Secret when the account is missing (so the
    account is made first) or goes: with the FineTuneJob (the garbage collector deletes the account) or at
    ttlSecondsAfterFinished. So it needs no ownerReference, and the operator no right to delete Secrets (the
    OwnerReferencesPermissionEnforcement admission plugin lets a create set ownerReferences only for a user who may
    delete the object)."""
    annotations = {SERVICE_ACCOUNT_NAME_ANNOTATION: reporter_name(ftj["metadata"]["name"])}
    meta = _meta(ftj, reporter_token_name(ftj), annotations=annotations, owned=False)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": SERVICE_ACCOUNT_TOKEN_TYPE}


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


def pod_service_account(spec: Spec) -> str:
    """The training pods' ServiceAccount: the one the spec chose (a cloud identity, where the policy allows it), else
    the namespace's `default`, which every namespace has, so the Job is the first object a new job needs (the pods
    mount no token of it)."""
    return spec.chosen_service_account or "default"


def reporter_account(ftj: dict, spec: Spec) -> str:
    """Whose token the trainer reports with: the account the user chose for the pods (its projected token), else the
    job's own reporter account (its token Secret)."""
    return spec.chosen_service_account or reporter_name(ftj["metadata"]["name"])


def build_role_binding(ftj: dict, spec: Spec) -> dict:
    """The reporter's grant, to reporter_account."""
    name = ftj["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ftj, reporter_name(name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reporter_name(name)},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": reporter_account(ftj, spec),
                "namespace": ftj["metadata"]["namespace"],
            }
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
        return [
            *launch,
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(procs),
            "-m",
            "kubetune_trainer",
            SPEC_PATH,
        ]
    return [
        *launch,
        "--nnodes",
        str(spec.nodes),
        "--nproc-per-node",
        str(procs),
        "--node-rank",
        "$(KUBETUNE_NODE_RANK)",
        "--master-addr",
        f"{job_name(name)}-0.{service_name(name)}",
        "--master-port",
        str(MASTER_PORT),
        "-m",
        "kubetune_trainer",
        SPEC_PATH,
    ]


def gpu_memory(spec: Spec, config: OperatorConfig) -> str:
    """The memory of the job's GPU from the operator's table, for the trainer's memory plan: only when the spec leaves
    resources.gpuMemory unset and its nodeSelector names a GPU product the table knows; "" otherwise."""
    if spec.resources.gpu_memory is not None:
        return ""
    product = spec.resources.node_selector.get(GPU_PRODUCT_LABEL, "")
    return config.gpu_memory_table.get(product, "") if product else ""


def trainer_env(ftj: dict, spec: Spec, config: OperatorConfig, resume_from: str = "") -> list[dict]:
    """`resume_from`: the output root of the FineTuneJob spec.resumeFrom names (the reconciler resolves it)."""
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
        # Present on every pod: a role without a Secret reads with the pod's cloud identity only if listed here.
        {"name": AMBIENT_ROLES_ENV, "value": ",".join(ambient_roles(spec))},
    ]
    if spec.resources.gpus == 0:
        env += [{"name": key, "value": value} for key, value in NO_GPU_ENV.items()]
    if memory := gpu_memory(spec, config):
        env.append({"name": "KUBETUNE_GPU_MEMORY", "value": memory})
    if resume_from:
        env.append({"name": "KUBETUNE_RESUME_FROM", "value": resume_from})
    if spec.nodes * max(spec.resources.gpus, 1) > 1:
        # A rank whose peer is lost gives up on its collective after this long and exits (20: the attempt is retried).
        env.append({"name": "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS", "value": str(config.collective_timeout_seconds)})
    if spec.nodes > 1:
        env.append(
            {
                "name": "KUBETUNE_NODE_RANK",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            }
        )
    # Secrets are referenced, never read: the kubelet injects the values. A missing Secret, or one without a
    # required key, keeps the pod from starting (CreateContainerConfigError, which the status reports as
    # SecretNotFound) rather than letting it run without credentials.
    for binding in credential_bindings(spec):
        for key in binding.keys:
            env.append(
                {
                    "name": env_name(binding.role, key),
                    "valueFrom": {
                        "secretKeyRef": {"name": binding.secret, "key": key, "optional": key not in binding.required}
                    },
                }
            )
    # The user's plain values last; the API refuses the operator's names, and the kubelet would let a later
    # duplicate win, so any that got here anyway are dropped.
    own = {e["name"] for e in env}
    if spec.pod is not None:
        env += [{"name": e.name, "value": e.value} for e in spec.pod.env if e.name not in own]
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


def reporter_token_sources(ftj: dict, spec: Spec) -> list[dict]:
    """The trainer's in-cluster credentials, where the Kubernetes client looks for them (token, ca.crt, namespace).
    The token: with an account the user chose, the pod's own projected one; else the reporter's, from its Secret.
    That source is optional: the pods start before the operator makes the Secret (build_reporter_grant), and the
    kubelet adds the file once the Secret is there (it writes a pod's projected volumes again at each sync of the pod,
    about every minute); the trainer retries its reports until then."""
    if spec.chosen_service_account:
        token: dict = {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}}
    else:
        items = [{"key": "token", "path": "token"}]
        token = {"secret": {"name": reporter_token_name(ftj), "items": items, "optional": True}}
    return [
        token,
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]


def pod_template(ftj: dict, spec: Spec, config: OperatorConfig, resume_from: str = "") -> dict:
    name = ftj["metadata"]["name"]
    container = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or config.trainer_image,
        "command": trainer_command(ftj, spec),
        "env": trainer_env(ftj, spec, config, resume_from),
        "resources": trainer_resources(spec),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_MOUNT},
            {"name": "dshm", "mountPath": SHARED_MEMORY_MOUNT},
            {"name": "reporter-token", "mountPath": SERVICE_ACCOUNT_TOKEN_MOUNT, "readOnly": True},
            *(_user_mount(v) for v in (spec.pod.volumes if spec.pod is not None else [])),
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
        "serviceAccountName": pod_service_account(spec),
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
            {
                "name": "spec",
                "downwardAPI": {
                    "items": [
                        {"path": SPEC_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_SPEC}']"}}
                    ]
                },
            },
            {"name": "scratch", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shared_memory_size(spec)}},
            {"name": "reporter-token", "projected": {"sources": reporter_token_sources(ftj, spec)}},
            *(_user_volume(v) for v in (spec.pod.volumes if spec.pod is not None else [])),
        ],
    }
    pull_secrets = dict.fromkeys(
        [*config.trainer_image_pull_secrets, *(spec.pod.image_pull_secrets if spec.pod is not None else [])]
    )
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in pull_secrets]
    if spec.pod is not None and spec.pod.affinity is not None:
        pod_spec["affinity"] = spec.pod.affinity.to_wire()
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.resources.tolerations]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.nodes > 1:
        pod_spec["subdomain"] = service_name(name)
    # The operator's labels last: its watches and the workers' Service select on them.
    metadata: dict[str, Any] = {"labels": (dict(spec.pod.labels) if spec.pod is not None else {}) | labels(name)}
    user_annotations = dict(spec.pod.annotations) if spec.pod is not None else {}
    metadata["annotations"] = user_annotations | {ANNOTATION_SPEC: manifest_yaml(ftj, spec)}
    return {"metadata": metadata, "spec": pod_spec}


def _user_volume(volume: Volume) -> dict:
    """A spec.pod.volumes entry as a pod volume: only PVCs, ConfigMaps and Secrets, the volume types the restricted
    Pod Security Standard allows."""
    if volume.persistent_volume_claim is not None:
        return {
            "name": volume.name,
            "persistentVolumeClaim": {
                "claimName": volume.persistent_volume_claim.claim_name,
                "readOnly": volume.read_only,
            },
        }
    if volume.config_map is not None:
        return {"name": volume.name, "configMap": {"name": volume.config_map.name}}
    return {"name": volume.name, "secret": {"secretName": volume.secret.secret_name}}


def _user_mount(volume: Volume) -> dict:
    # The kubelet mounts ConfigMaps and Secrets read-only whatever the mount says; say so.
    writable = volume.persistent_volume_claim is not None and not volume.read_only
    return {"name": volume.name, "mountPath": volume.mount_path, "readOnly": not writable}


def pod_failure_policy(nodes: int = 1) -> dict:
    """How the Job controller treats a failed pod (pkg/controller/job/pod_failure_policy.go: the first rule that
    matches wins; no rule: the failure counts against backoffLimit).

    A user error (exit 10) fails the Job: retrying cannot help. A disrupted pod (preemption, eviction, node drain or
    loss: the DisruptionTarget condition) is not the job's fault: with one node the Job controller replaces it
    without counting it; with several, a lone replacement would wait for peers that are still in the old attempt's
    collectives, so the Job fails (the controller ends the other pods at once) and the operator starts the next
    attempt, every node, without counting it. Any other failure of a several-node Job fails it through
    backoffLimit 0 rather than a FailJob rule: the controller applies FailJob rules to every failed pod it sees,
    also those it deleted itself when the Job was suspended (Kueue's preemption), which would fail a suspended Job."""
    disrupted = {"onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In", "values": [ExitCode.USER_ERROR]},
            },
            {"action": "FailJob" if nodes > 1 else "Ignore", **disrupted},
        ]
    }


def build_job(
    ftj: dict,
    spec: Spec,
    config: OperatorConfig,
    *,
    suspend: bool,
    held_by_namespace_limit: bool = False,
    queue_order: str = "",
    earlier: Tally = Tally(),
    resume_from: str = "",
) -> dict:
    """`earlier`: what the FineTuneJob's earlier Jobs used; `queue_order`: the held Job's place in the namespace cap's
    queue (ANNOTATION_QUEUE_ORDER); `resume_from`: spec.resumeFrom's FineTuneJob resolved to its output root."""
    name = ftj["metadata"]["name"]
    extra_labels = {LABEL_KUEUE_QUEUE: spec.queue_name} if spec.queue_name else {}
    annotations = earlier.job_annotations()
    if held_by_namespace_limit:
        annotations[ANNOTATION_HELD] = "true"
        if queue_order:
            annotations[ANNOTATION_QUEUE_ORDER] = queue_order
    if suspend and spec.suspend and not spec.queue_name:  # a queued Job's suspension is Kueue's (kueue.py)
        annotations[ANNOTATION_SUSPENDED_BY_USER] = "true"
    job_spec: dict[str, Any] = {
        "backoffLimit": job_backoff_limit(spec, earlier),
        "suspend": suspend,
        "podFailurePolicy": pod_failure_policy(spec.nodes),
        "template": pod_template(ftj, spec, config, resume_from),
    }
    deadline = job_deadline(spec, earlier)
    if deadline is not None:
        job_spec["activeDeadlineSeconds"] = deadline
    if spec.nodes > 1:
        job_spec |= {"completionMode": "Indexed", "completions": spec.nodes, "parallelism": spec.nodes}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(ftj, job_name(name), extra_labels, annotations),
        "spec": job_spec,
    }


def build_prerequisites(ftj: dict, spec: Spec, resume_from: str = "") -> list[dict]:
    """What the Job's pods need before they are created: for several nodes, the workers' Service; and the job's
    ConfigMap when there is a resolved spec.resumeFrom to keep for later attempts."""
    objects = []
    if resume_from:
        objects.append(build_configmap(ftj, resume_from))
    if spec.nodes > 1:
        objects.append(build_service(ftj))
    return objects


def build_reporter_grant(ftj: dict, spec: Spec) -> list[dict]:
    """The reporter's identity and grant, in creation order: the job's account and its token Secret (unless the
    pods run as an account the user chose), its Role and RoleBinding. Only a running trainer needs them (it reports
    after its model is loaded, and retries a report that has no token yet or is refused), so they are made once the
    job's pods exist: none for a job that waits in a queue, and none of them in the way of a new job's Job."""
    identity = [] if spec.chosen_service_account else [build_service_account(ftj), build_reporter_token(ftj)]
    return [*identity, build_role(ftj), build_role_binding(ftj, spec)]


def build_support_objects(ftj: dict, spec: Spec) -> list[dict]:
    """Every object but the Job that the operator may make for a job, in creation order."""
    return [build_configmap(ftj), *build_prerequisites(ftj, spec), *build_reporter_grant(ftj, spec)]


def initial_suspend(spec: Spec) -> bool:
    """Queued jobs start suspended (Kueue unsuspends them on admission); so do suspended ones."""
    return spec.suspend or bool(spec.queue_name)


def job_spec_updates(spec: Spec, job: dict) -> dict:
    """The Job fields the operator propagates from a (mutable) FineTuneJob spec edit; {} = in sync.

    suspend is not handled here (see Reconciler._propagate: it depends on Kueue and the namespace cap)."""
    current = job.get("spec", {})
    earlier = Tally.of_job(job)
    updates: dict[str, Any] = {}
    if current.get("backoffLimit") != (limit := job_backoff_limit(spec, earlier)):
        updates["backoffLimit"] = limit
    deadline = job_deadline(spec, earlier)
    if current.get("activeDeadlineSeconds") != deadline:
        updates["activeDeadlineSeconds"] = deadline  # None removes it in a merge patch
    return updates
