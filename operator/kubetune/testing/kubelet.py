"""Run one container of a Kubernetes pod spec with `docker run`, doing what the kubelet does for it.

The kubelet's part, reduced to what the operator's pods and the chart's Deployment use: env values with
$(VAR) expansion, secretKeyRef / configMapKeyRef / fieldRef; the pod's and the container's
securityContext (user, group, fsGroup, read-only root, no privilege escalation, dropped capabilities);
configMap, downwardAPI, emptyDir (on disk or in memory, sized) and projected (service-account token, configMap items,
downward API, Secret items) volumes; the default service-account token mount unless automount is off; the
termination message file; KUBERNETES_SERVICE_HOST/PORT. A field this module does not know raises
`Unsupported` naming it: a pod the operator starts building differently must show up here, not be
run as something else.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
# The pod and container fields this stand-in knows (the scheduling ones change nothing for one container
# on one host).
_POD = {
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "subdomain",
    "hostname",
    "serviceAccountName",
    "imagePullSecrets",
    "automountServiceAccountToken",
    "securityContext",
    "containers",
    "volumes",
}
_CONTAINER = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "resources",
    "volumeMounts",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "securityContext",
    "ports",
    "workingDir",
    "livenessProbe",
    "readinessProbe",
}


class Unsupported(Exception):
    """A pod field this kubelet stand-in does not implement."""


@dataclass
class Cluster:
    """What the kubelet reads from the API server, and what it is given by the node."""

    read: Callable[[str, str, str], dict | None]  # (kind, namespace, name) -> object
    token_for: Callable[[str, str], str]  # (namespace, service account) -> bearer token
    ca_pem: str  # the cluster CA (kube-root-ca.crt)
    api_host: str
    api_port: int


@dataclass
class Pod:
    """The pod object: its spec and the metadata fieldRefs read."""

    namespace: str
    name: str
    spec: dict
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = ""


@dataclass
class Run:
    """`docker run` arguments for one container, and the host files behind its volumes."""

    args: list[str]
    image: str
    command: list[str]
    termination_log: Path
    user: str


def quantity_bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    if not match:
        raise Unsupported(f"quantity {quantity!r}")
    unit = match.group(2) or ""
    return int(float(match.group(1)) * (_BINARY.get(unit) or _DECIMAL[unit]))


def _expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) from the container's earlier env; $$ escapes; unknown references stay as they are."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _field(pod: Pod, path: str) -> str:
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "spec.nodeName": "localhost",
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if match:
        return (pod.annotations if match.group(1) == "annotations" else pod.labels).get(match.group(2), "")
    raise Unsupported(f"fieldRef {path}")


def _key_ref(cluster: Cluster, kind: str, namespace: str, ref: dict) -> str | None:
    obj = cluster.read(kind, namespace, ref["name"])
    data = (obj or {}).get("data") or {}
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise LookupError(f"{kind} {namespace}/{ref['name']} has no key {ref['key']!r} (the pod would not start)")
    value = data[ref["key"]]
    return base64.b64decode(value).decode() if kind == "Secret" else value


def _env(container: dict, pod: Pod, cluster: Cluster) -> dict[str, str]:
    env = {  # what the kubelet adds for the cluster's `kubernetes` Service
        "KUBERNETES_SERVICE_HOST": cluster.api_host,
        "KUBERNETES_SERVICE_PORT": str(cluster.api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(cluster.api_port),
    }
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = _expand(item.get("value", ""), env)
            continue
        if "secretKeyRef" in source:
            value = _key_ref(cluster, "Secret", pod.namespace, source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _key_ref(cluster, "ConfigMap", pod.namespace, source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = _field(pod, source["fieldRef"]["fieldPath"])
        else:
            raise Unsupported(f"env[{item['name']}].valueFrom {sorted(source)}")
        if value is not None:
            env[item["name"]] = value
    return env


def _write(folder: Path, files: dict[str, str]) -> None:
    # World-readable: the kubelet gives projected and configMap files 0644 by default, and fsGroup access.
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o644)


def _object_files(cluster: Cluster, kind: str, namespace: str, source: dict) -> dict[str, str]:
    """The files of a ConfigMap or Secret source (a Secret's data is base64). One whose object is missing adds nothing
    when it is optional: a kubelet writes the volume again at each sync of the pod, so the files come once the object
    does; this stand-in writes it once, when the container starts."""
    data = (cluster.read(kind, namespace, source["name"]) or {}).get("data")
    if data is None:
        if source.get("optional"):
            return {}
        raise LookupError(f"{kind} {namespace}/{source['name']} does not exist (the pod would not start)")
    if kind == "Secret":
        data = {key: base64.b64decode(value).decode() for key, value in data.items()}
    if "items" not in source:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in source["items"]}


def _projected_files(cluster: Cluster, pod: Pod, sources: list[dict]) -> dict[str, str]:
    files: dict[str, str] = {}
    for source in sources:
        if "serviceAccountToken" in source:
            account = pod.spec.get("serviceAccountName", "default")
            files[source["serviceAccountToken"]["path"]] = cluster.token_for(pod.namespace, account)
        elif "configMap" in source:
            if source["configMap"]["name"] == "kube-root-ca.crt":
                files |= {item["path"]: cluster.ca_pem for item in source["configMap"].get("items", [])} or {
                    "ca.crt": cluster.ca_pem
                }
            else:
                files |= _object_files(cluster, "ConfigMap", pod.namespace, source["configMap"])
        elif "downwardAPI" in source:
            files |= {
                item["path"]: _field(pod, item["fieldRef"]["fieldPath"]) for item in source["downwardAPI"]["items"]
            }
        elif "secret" in source:
            files |= _object_files(cluster, "Secret", pod.namespace, source["secret"])
        else:
            raise Unsupported(f"projected source {sorted(source)}")
    return files


def _user(pod_context: dict, container_context: dict) -> tuple[int, int, list[int]]:
    context = pod_context | container_context
    if "runAsUser" not in context:
        raise Unsupported("a pod without runAsUser (the image's USER would apply; set it explicitly)")
    uid = int(context["runAsUser"])
    gid = int(context.get("runAsGroup", uid))
    if context.get("runAsNonRoot") and uid == 0:
        raise AssertionError("runAsNonRoot with runAsUser 0: the kubelet refuses to start this container")
    groups = [int(pod_context["fsGroup"])] if "fsGroup" in pod_context else []
    return uid, gid, groups


def docker_run(pod: Pod, container_name: str, cluster: Cluster, workdir: Path, *, name: str) -> Run:
    """The `docker run` arguments for `container_name` of `pod`; volumes are backed by files under `workdir`."""
    spec = pod.spec
    unknown = set(spec) - _POD
    if unknown:
        raise Unsupported(f"pod spec fields {sorted(unknown)}")
    container = next(c for c in spec["containers"] if c["name"] == container_name)
    unknown = set(container) - _CONTAINER
    if unknown:
        raise Unsupported(f"container fields {sorted(unknown)}")

    args = ["--name", name, "--network", "host"]  # pods reach the API server and storage through the host
    env = _env(container, pod, cluster)
    env_file = workdir / "env"
    if any("\n" in value for value in env.values()):
        raise Unsupported("an env value with a newline (docker's --env-file cannot carry it)")
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    env_file.chmod(0o600)
    args += ["--env-file", str(env_file)]

    pod_context = spec.get("securityContext") or {}
    context = container.get("securityContext") or {}
    uid, gid, groups = _user(pod_context, context)
    args += ["--user", f"{uid}:{gid}", *[f"--group-add={g}" for g in groups]]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    capabilities = context.get("capabilities") or {}
    args += [f"--cap-drop={c}" for c in capabilities.get("drop", [])]
    args += [f"--cap-add={c}" for c in capabilities.get("add", [])]
    if context.get("privileged"):
        raise Unsupported("privileged containers")

    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        args += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        args += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    if container.get("workingDir"):
        args += ["--workdir", container["workingDir"]]

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = list(container.get("volumeMounts") or [])
    if spec.get("automountServiceAccountToken", True) and not any(
        m["mountPath"] == SERVICE_ACCOUNT_MOUNT for m in mounts
    ):
        volumes["kube-api-access"] = {
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ]
            },
        }
        mounts.append({"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": True})
    for mount in mounts:
        volume = volumes[mount["name"]]
        kind = sorted(set(volume) - {"name"})
        target = mount["mountPath"]
        suffix = ":ro" if mount.get("readOnly") else ""
        if set(mount) - {"name", "mountPath", "readOnly"}:
            raise Unsupported(f"volumeMount fields {sorted(set(mount) - {'name', 'mountPath', 'readOnly'})}")
        host = workdir / "volumes" / mount["name"]
        if kind == ["emptyDir"]:
            empty = volume["emptyDir"] or {}
            if empty.get("medium") == "Memory":
                size = f",tmpfs-size={quantity_bytes(empty['sizeLimit'])}" if empty.get("sizeLimit") else ""
                args += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode=1777{size}"]
                continue
            host.mkdir(parents=True)
            host.chmod(0o777)  # the kubelet's emptyDir mode
        elif kind == ["configMap"]:
            _write(host, _object_files(cluster, "ConfigMap", pod.namespace, volume["configMap"]))
        elif kind == ["projected"]:
            _write(host, _projected_files(cluster, pod, volume["projected"]["sources"]))
        elif kind == ["downwardAPI"]:
            _write(host, _projected_files(cluster, pod, [volume]))
        else:
            raise Unsupported(f"volume {mount['name']}: {kind}")
        args += ["--volume", f"{host}:{target}{suffix}"]

    termination_log = workdir / "termination-log"
    termination_log.write_text("")
    termination_log.chmod(0o666)
    args += ["--volume", f"{termination_log}:{container.get('terminationMessagePath', '/dev/termination-log')}"]

    command = [_expand(part, env) for part in container.get("command") or []]
    rest = [_expand(part, env) for part in container.get("args") or []]
    if command:
        args += ["--entrypoint", command[0]]
    return Run(
        args=args,
        image=container["image"],
        command=command[1:] + rest if command else rest,
        termination_log=termination_log,
        user=f"{uid}:{gid}",
    )


def termination_message(run: Run, logs: str) -> str:
    """What the kubelet reports: the termination log, else (FallbackToLogsOnError) the last lines of the logs."""
    text = run.termination_log.read_text().strip()
    return text or "\n".join(logs.strip().splitlines()[-80:])[-2048:]


def pod_from(obj: dict) -> Pod:
    meta = obj["metadata"]
    return Pod(
        namespace=meta["namespace"],
        name=meta["name"],
        spec=obj["spec"],
        labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
        uid=meta.get("uid", ""),
    )


def template_pod(template: dict, namespace: str, name: str) -> Pod:
    meta = template.get("metadata") or {}
    return Pod(
        namespace=namespace,
        name=name,
        spec=template["spec"],
        labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
    )
