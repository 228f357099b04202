"""spec.pod -> the training pods: every option lands where Kubernetes reads it, the Job stays valid for the API
server (kubernetes-validate, the published OpenAPI schemas of built-in kinds) and the pods stay within the restricted
Pod Security Standard (kubetune.testing.pss, ported from pod-security-admission); a job with no GPU sees none;
file:// outputs only on a writable volume."""

from __future__ import annotations

import dataclasses

import kubernetes_validate
import pytest

from kubetune.api.constants import OPERATOR_ENV, TRAINER_VOLUMES
from kubetune.api.validation import SpecError
from kubetune.controller import builders
from kubetune.testing import pss
from tests.controller.samples import CONFIG, FTJ, SPEC

# The oldest Kubernetes the chart supports (ValidatingAdmissionPolicy v1) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.30.0", "1.37.0")

APPARMOR = "container.apparmor.security.beta.kubernetes.io/trainer"
POD = {
    "imagePullSecrets": ["regcred"],
    "labels": {"cost-center": "ml-42", "team": "nlp"},
    "annotations": {"example.com/owner": "nlp-team", APPARMOR: "runtime/default"},
    "env": [{"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"}, {"name": "EMPTY"}],
    "volumes": [
        {"name": "corpus", "mountPath": "/data", "persistentVolumeClaim": {"claimName": "corpus"}},
        {"name": "outputs", "mountPath": "/outputs", "readOnly": False, "persistentVolumeClaim": {"claimName": "out"}},
        {"name": "certs", "mountPath": "/etc/ca", "configMap": {"name": "corp-ca"}},
        {"name": "netrc", "mountPath": "/etc/netrc.d", "readOnly": False, "secret": {"secretName": "netrc"}},
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H100"]}]}
                ]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"team": "nlp"}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        },
    },
    "serviceAccountName": "ml-identity",
}


def _spec(**changes):
    return builders.resolve_spec(SPEC | changes, CONFIG)


def _job(spec, config=CONFIG):
    return builders.build_job(FTJ, spec, config, suspend=False)


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_every_pod_option_reaches_the_pod_template():
    config = dataclasses.replace(CONFIG, trainer_image_pull_secrets=("platform-registry", "regcred"))
    spec = _spec(pod=POD)
    template = _job(spec, config)["spec"]["template"]
    pod = template["spec"]
    [container] = pod["containers"]
    # The chart's pull secrets first, then the job's, each once.
    assert pod["imagePullSecrets"] == [{"name": "platform-registry"}, {"name": "regcred"}]
    assert template["metadata"]["labels"] == {
        "cost-center": "ml-42",
        "team": "nlp",
        "app.kubernetes.io/managed-by": "kubetune",
        "kubetune.dev/finetunejob": "bot",
    }
    assert template["metadata"]["annotations"] == POD["annotations"] | {
        "kubetune.dev/spec": builders.manifest_yaml(FTJ, spec)
    }
    env = _env(container)
    assert env["HF_HUB_ENABLE_HF_TRANSFER"] == "1" and env["EMPTY"] == ""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["corpus"] == {"name": "corpus", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}}
    assert mounts["corpus"] == {"name": "corpus", "mountPath": "/data", "readOnly": True}  # read-only by default
    assert volumes["outputs"]["persistentVolumeClaim"] == {"claimName": "out", "readOnly": False}
    assert mounts["outputs"]["readOnly"] is False  # as the spec asked
    assert volumes["certs"] == {"name": "certs", "configMap": {"name": "corp-ca"}}
    assert volumes["netrc"] == {"name": "netrc", "secret": {"secretName": "netrc"}}
    # The kubelet mounts ConfigMaps and Secrets read-only whatever the mount says; the mount says so too.
    assert mounts["netrc"]["readOnly"] is True and mounts["certs"]["readOnly"] is True
    assert pod["affinity"] == POD["affinity"]
    assert pod["serviceAccountName"] == "ml-identity"
    # The pods run as the chosen account, whose projected token is the one the reporter presents: the reporter's
    # grant goes to it, and the job's own account and its token Secret are not made.
    binding = builders.build_role_binding(FTJ, spec)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ml-identity", "namespace": "team-a"}]
    kinds = [o["kind"] for o in builders.build_support_objects(FTJ, spec)]
    assert "ServiceAccount" not in kinds and "Secret" not in kinds
    token = {v["name"]: v for v in pod["volumes"]}["reporter-token"]["projected"]["sources"][0]
    assert token["serviceAccountToken"]["path"] == "token"


def test_without_spec_pod_the_pod_is_as_before():
    spec = _spec()
    template = _job(spec)["spec"]["template"]
    assert "imagePullSecrets" not in template["spec"] and "affinity" not in template["spec"]
    assert list(template["metadata"]["annotations"]) == ["kubetune.dev/spec"]  # the pod's own spec, nothing else
    assert template["spec"]["serviceAccountName"] == "default"
    assert [s["name"] for s in builders.build_role_binding(FTJ, spec)["subjects"]] == ["bot-reporter"]
    assert builders.build_prerequisites(FTJ, spec) == []
    # The operator's own volumes are exactly those the API keeps spec.pod away from.
    [container] = template["spec"]["containers"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == TRAINER_VOLUMES


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", ["plain", "every-option", "multi-node-no-gpu"])
def test_the_job_and_its_pods_are_valid_kubernetes_and_restricted(case, version):
    spec = {
        "plain": _spec(),
        "every-option": _spec(pod=POD),
        "multi-node-no-gpu": _spec(pod=POD, nodes=2, resources={"gpus": 0}),
    }[case]
    objects = [_job(spec), *builders.build_support_objects(FTJ, spec)]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    template = objects[0]["spec"]["template"]
    assert pss.restricted_violations(template["metadata"], template["spec"]) == []


@pytest.mark.parametrize(
    "change, check",
    [
        (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "host_path_volumes"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "capabilities_baseline",
        ),
        (lambda p: p.update(hostNetwork=True), "host_namespaces"),
        (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccomp_baseline"),
        (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "allow_privilege_escalation"),
        (lambda p: p["volumes"].append({"name": "share", "nfs": {"server": "nfs", "path": "/"}}), "restricted_volumes"),
        (lambda p: p["securityContext"].update(runAsUser=0), "run_as_user"),
    ],
)
def test_the_pss_port_refuses_what_the_restricted_level_forbids(change, check):
    """The port is live: each thing the operator never does is refused by the check it belongs to."""
    template = _job(_spec(pod=POD))["spec"]["template"]
    change(template["spec"])
    assert any(v.startswith(check + ":") for v in pss.restricted_violations(template["metadata"], template["spec"]))


def test_annotations_that_would_leave_the_restricted_level_are_refused():
    for key, value in (
        (APPARMOR, "unconfined"),
        ("seccomp.security.alpha.kubernetes.io/pod", "unconfined"),
        ("container.seccomp.security.alpha.kubernetes.io/trainer", "runtime/default"),
    ):
        with pytest.raises(SpecError) as refused:
            _spec(pod={"annotations": {key: value}})
        assert f"spec.pod.annotations[{key}]" in str(refused.value)
    # and the restricted level would indeed refuse the first
    template = _job(_spec())["spec"]["template"]
    assert pss.restricted_violations({"annotations": {APPARMOR: "unconfined"}}, template["spec"])
    _spec(pod={"annotations": {APPARMOR: "localhost/k8s-train"}})  # a node-local profile is fine


def test_user_env_never_overrides_the_operators():
    spec = _spec(pod={"env": [{"name": "WANDB_MODE", "value": "offline"}]})
    # What the API refuses could still arrive in a spec built in code: the operator's value is kept.
    smuggled = spec.model_copy(
        update={
            "pod": spec.pod.model_copy(
                update={
                    "env": [
                        *spec.pod.env,
                        type(spec.pod.env[0]).model_construct(name="HOME", value="/root"),
                        type(spec.pod.env[0]).model_construct(name="KUBETUNE_AMBIENT_CREDENTIALS", value="output"),
                    ]
                }
            )
        }
    )
    env = _job(smuggled)["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names.count("HOME") == 1 and names.count("KUBETUNE_AMBIENT_CREDENTIALS") == 1
    values = {e["name"]: e.get("value") for e in env}
    assert values["HOME"] == "/scratch" and values["KUBETUNE_AMBIENT_CREDENTIALS"] == ""
    assert values["WANDB_MODE"] == "offline"


# ------------------------------------------------------------------------------------------ GPU isolation


def test_a_job_without_gpus_sees_none_of_the_nodes_gpus():
    env = _env(_job(_spec(resources={"gpus": 0}))["spec"]["template"]["spec"]["containers"][0])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and env["AMD_VISIBLE_DEVICES"] == "void"
    assert builders.NO_GPU_ENV == {"NVIDIA_VISIBLE_DEVICES": "void", "AMD_VISIBLE_DEVICES": "void"}
    # No GPU resource is asked for either, and a job cannot undo the isolation through spec.pod.env: the names are
    # the operator's (the API refuses them).
    resources = _job(_spec(resources={"gpus": 0}))["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert set(builders.NO_GPU_ENV) <= set(OPERATOR_ENV)
    for name in builders.NO_GPU_ENV:
        with pytest.raises(SpecError, match="set by the operator"):
            _spec(resources={"gpus": 0}, pod={"env": [{"name": name, "value": "all"}]})


def test_a_job_with_gpus_leaves_the_device_selection_to_the_device_plugin():
    env = _env(_job(_spec(resources={"gpus": 2}))["spec"]["template"]["spec"]["containers"][0])
    assert not set(builders.NO_GPU_ENV) & set(env)


# ------------------------------------------------------------------------------------------ file:// outputs


@pytest.mark.parametrize(
    "uri, volumes, message",
    [
        ("file:///scratch/out/", [], "is lost with the pod"),
        ("file:///data/out/", [], "is not on a volume of spec.pod.volumes"),
        (
            "file:///data/out/",
            [{"name": "d", "mountPath": "/data", "persistentVolumeClaim": {"claimName": "d"}}],
            "cannot write",
        ),
        (
            "file:///data/out/",
            [{"name": "d", "mountPath": "/data", "readOnly": False, "configMap": {"name": "d"}}],
            "cannot write",
        ),
        (
            "file:///dataset/out/",
            [{"name": "d", "mountPath": "/data", "readOnly": False, "persistentVolumeClaim": {"claimName": "d"}}],
            "is not on a volume",
        ),
        (
            "file:///data/../etc/out/",
            [{"name": "d", "mountPath": "/data", "readOnly": False, "persistentVolumeClaim": {"claimName": "d"}}],
            "is not on a volume",
        ),
    ],
)
def test_file_outputs_in_a_cluster_need_a_writable_volume(uri, volumes, message):
    with pytest.raises(SpecError) as refused:
        _spec(output={"uri": uri}, pod={"volumes": volumes})
    assert "spec.output.uri" in str(refused.value) and message in str(refused.value)


def test_a_file_output_on_a_writable_claim_is_accepted():
    volume = {"name": "d", "mountPath": "/data", "readOnly": False, "persistentVolumeClaim": {"claimName": "d"}}
    for uri in ("file:///data/", "file:///data/runs/"):
        spec = _spec(output={"uri": uri}, pod={"volumes": [volume]})
        env = _env(_job(spec)["spec"]["template"]["spec"]["containers"][0])
        assert env["KUBETUNE_OUTPUT_URI"].startswith(uri.rstrip("/") + "/team-a/bot/u-1")
