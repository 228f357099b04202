"""The restricted Pod Security Standard, as the API server's PodSecurity admission checks a pod, ported for tests.

Each check is a port of one file of kubernetes staging/src/k8s.io/pod-security-admission/policy/ (named in its
docstring); `restricted_violations` runs them all (restricted = the baseline checks plus the restricted ones) on a
pod's metadata and spec in wire form and returns "check: detail" for each that forbids the pod, [] when the
restricted level admits it. The pod template of a Job is checked the same way (PodSecurity checks the templates of
workload objects too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

Check = Callable[[dict, dict], str | None]


def _containers(spec: dict) -> Iterator[dict]:
    """policy/visitor.go visitContainers: init, regular and ephemeral containers."""
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _security(container: dict) -> dict:
    return container.get("securityContext") or {}


def host_namespaces(meta: dict, spec: dict) -> str | None:
    """check_hostNamespaces.go: hostNetwork, hostPID and hostIPC must be unset or false."""
    used = [key for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    return ", ".join(used) or None


def privileged(meta: dict, spec: dict) -> str | None:
    """check_privileged.go: securityContext.privileged must be unset or false."""
    bad = [c["name"] for c in _containers(spec) if _security(c).get("privileged")]
    return f"privileged containers {bad}" if bad else None


CAPABILITIES_ALLOWED_BASELINE = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}


def capabilities_baseline(meta: dict, spec: dict) -> str | None:
    """check_capabilities_baseline.go: only the default capabilities may be added."""
    added = {cap for c in _containers(spec) for cap in (_security(c).get("capabilities") or {}).get("add") or []}
    bad = sorted(added - CAPABILITIES_ALLOWED_BASELINE)
    return f"non-default capabilities {bad}" if bad else None


def host_path_volumes(meta: dict, spec: dict) -> str | None:
    """check_hostPathVolumes.go: no hostPath volumes."""
    bad = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    return f"hostPath volumes {bad}" if bad else None


def host_ports(meta: dict, spec: dict) -> str | None:
    """check_hostPorts.go: containers[*].ports[*].hostPort must be unset or 0."""
    bad = [p["hostPort"] for c in _containers(spec) for p in c.get("ports") or [] if p.get("hostPort")]
    return f"hostPorts {bad}" if bad else None


APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def apparmor_profile(meta: dict, spec: dict) -> str | None:
    """check_appArmorProfile.go: the AppArmor annotations may name runtime/default or localhost/* only, and the
    appArmorProfile fields RuntimeDefault or Localhost only."""
    bad = [
        f"{k}={v}"
        for k, v in (meta.get("annotations") or {}).items()
        if k.startswith(APPARMOR_ANNOTATION_PREFIX) and v and v != "runtime/default" and not v.startswith("localhost/")
    ]
    contexts = [spec.get("securityContext") or {}, *(_security(c) for c in _containers(spec))]
    bad += [
        p["type"]
        for ctx in contexts
        if (p := ctx.get("appArmorProfile")) and p.get("type") not in ("RuntimeDefault", "Localhost")
    ]
    return f"forbidden AppArmor profiles {bad}" if bad else None


SELINUX_ALLOWED_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}


def selinux_options(meta: dict, spec: dict) -> str | None:
    """check_seLinuxOptions.go: type in the allowed set; user and role unset."""
    contexts = [spec.get("securityContext") or {}, *(_security(c) for c in _containers(spec))]
    for ctx in contexts:
        opts = ctx.get("seLinuxOptions") or {}
        if opts.get("type", "") not in SELINUX_ALLOWED_TYPES or opts.get("user") or opts.get("role"):
            return f"forbidden seLinuxOptions {opts}"
    return None


def proc_mount(meta: dict, spec: dict) -> str | None:
    """check_procMount.go: procMount unset or Default."""
    bad = [c["name"] for c in _containers(spec) if _security(c).get("procMount", "Default") != "Default"]
    return f"procMount of {bad}" if bad else None


def seccomp_baseline(meta: dict, spec: dict) -> str | None:
    """check_seccompProfile_baseline.go: no Unconfined profile anywhere."""
    contexts = [spec.get("securityContext") or {}, *(_security(c) for c in _containers(spec))]
    if any((ctx.get("seccompProfile") or {}).get("type") == "Unconfined" for ctx in contexts):
        return "seccompProfile Unconfined"
    return None


SYSCTLS_ALLOWED = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
}


def sysctls(meta: dict, spec: dict) -> str | None:
    """check_sysctls.go: only the namespaced, safe sysctls."""
    bad = [
        s["name"] for s in (spec.get("securityContext") or {}).get("sysctls") or [] if s["name"] not in SYSCTLS_ALLOWED
    ]
    return f"forbidden sysctls {bad}" if bad else None


def windows_host_process(meta: dict, spec: dict) -> str | None:
    """check_windowsHostProcess.go: windowsOptions.hostProcess unset or false."""
    contexts = [spec.get("securityContext") or {}, *(_security(c) for c in _containers(spec))]
    if any((ctx.get("windowsOptions") or {}).get("hostProcess") for ctx in contexts):
        return "hostProcess"
    return None


def host_probes_and_lifecycle(meta: dict, spec: dict) -> str | None:
    """check_hostProbesAndhostLifecycle.go: probes and lifecycle handlers may not name a host."""
    for c in _containers(spec):
        handlers = [c.get(p) or {} for p in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += list((c.get("lifecycle") or {}).values())
        for handler in handlers:
            if any((handler.get(kind) or {}).get("host") for kind in ("httpGet", "tcpSocket")):
                return f"container {c['name']} probes or lifecycle handlers name a host"
    return None


RESTRICTED_VOLUME_SOURCES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_volumes(meta: dict, spec: dict) -> str | None:
    """check_restrictedVolumes.go: only these volume types (no hostPath, nfs, iscsi, ...)."""
    bad = [v["name"] for v in spec.get("volumes") or [] if not set(v) - {"name"} <= RESTRICTED_VOLUME_SOURCES]
    return f"volumes {bad} have restricted types" if bad else None


def allow_privilege_escalation(meta: dict, spec: dict) -> str | None:
    """check_allowPrivilegeEscalation.go: every container sets allowPrivilegeEscalation=false (skipped for
    Windows pods)."""
    if (spec.get("os") or {}).get("name") == "windows":
        return None
    bad = [c["name"] for c in _containers(spec) if _security(c).get("allowPrivilegeEscalation") is not False]
    return f"containers {bad} must set allowPrivilegeEscalation=false" if bad else None


def run_as_non_root(meta: dict, spec: dict) -> str | None:
    """check_runAsNonRoot.go: runAsNonRoot=true on the pod, or on every container; never false anywhere."""
    pod = (spec.get("securityContext") or {}).get("runAsNonRoot")
    if pod is False or any(_security(c).get("runAsNonRoot") is False for c in _containers(spec)):
        return "runAsNonRoot=false"
    bad = [c["name"] for c in _containers(spec) if _security(c).get("runAsNonRoot") is None and pod is not True]
    return f"pod or containers {bad} must set runAsNonRoot=true" if bad else None


def run_as_user(meta: dict, spec: dict) -> str | None:
    """check_runAsUser.go: runAsUser never 0."""
    contexts = [spec.get("securityContext") or {}, *(_security(c) for c in _containers(spec))]
    return "runAsUser=0" if any(ctx.get("runAsUser") == 0 for ctx in contexts) else None


def seccomp_restricted(meta: dict, spec: dict) -> str | None:
    """check_seccompProfile_restricted.go: RuntimeDefault or Localhost on the pod, or on every container."""
    allowed = ("RuntimeDefault", "Localhost")
    pod = (spec.get("securityContext") or {}).get("seccompProfile")
    if pod is not None and pod.get("type") not in allowed:
        return f"pod seccompProfile {pod.get('type')}"
    for c in _containers(spec):
        own = _security(c).get("seccompProfile")
        if own is not None and own.get("type") not in allowed:
            return f"container {c['name']} seccompProfile {own.get('type')}"
        if own is None and pod is None:
            return f"container {c['name']} has no seccompProfile"
    return None


def capabilities_restricted(meta: dict, spec: dict) -> str | None:
    """check_capabilities_restricted.go: every container drops ALL and adds nothing but NET_BIND_SERVICE."""
    for c in _containers(spec):
        caps = _security(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            return f'container {c["name"]} must set capabilities.drop=["ALL"]'
        extra = [cap for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
        if extra:
            return f"container {c['name']} adds capabilities {extra}"
    return None


BASELINE: tuple[Check, ...] = (
    host_namespaces,
    privileged,
    capabilities_baseline,
    host_path_volumes,
    host_ports,
    apparmor_profile,
    selinux_options,
    proc_mount,
    seccomp_baseline,
    sysctls,
    windows_host_process,
    host_probes_and_lifecycle,
)
RESTRICTED: tuple[Check, ...] = BASELINE + (
    restricted_volumes,
    allow_privilege_escalation,
    run_as_non_root,
    run_as_user,
    seccomp_restricted,
    capabilities_restricted,
)


def restricted_violations(pod_metadata: dict, pod_spec: dict) -> list[str]:
    """What the restricted level forbids about this pod; [] = admitted."""
    return [f"{check.__name__}: {detail}" for check in RESTRICTED if (detail := check(pod_metadata, pod_spec))]
