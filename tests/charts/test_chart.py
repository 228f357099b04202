"""The Helm chart: renders and lints with default and non-default values, every manifest is a valid
Kubernetes object, RBAC is exactly what the operator code uses (from permissions.py), no Secret access,
Pod Security `restricted`, image tags follow the chart's appVersion, several replicas elect a leader through a Lease."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import kubetune
from kubetune import generate

helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk (the embedded Helm SDK) is not installed")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
KUBE_VERSION = "1.33.0"

VALUE_SETS = {
    "defaults": {},
    "namespaced-ha": {
        "watchNamespaces": ["team-a", "team-b"],
        "replicaCount": 2,
        "maxRunningPerNamespace": 4,
        "concurrentReconciles": 64,
    },
    "cluster-ha-monitoring": {
        "replicaCount": 3,
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "trainer": {"defaultOutputUri": "s3://ml/kubetune/", "image": {"tag": "custom"}},
        "image": {"tag": "dev"},
        "nodeSelector": {"role": "system"},
        "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    },
    "no-metrics-existing-sa": {"metrics": {"enabled": False}, "serviceAccount": {"create": False, "name": "ops"}},
    "shared-cluster-policy": {
        "watchNamespaces": ["team-a"],
        "trainer": {"defaultOutputUri": "s3://ml-outputs/", "imagePullSecrets": [{"name": "regcred"}]},
        "policy": {
            "allowedImagePrefixes": ["registry.example/ml/"],
            "requireQueue": True,
            "defaultQueue": "gpus",
            "maxGpusPerJob": 16,
            "maxNodesPerJob": 2,
            "allowedPriorityClasses": ["training"],
            "outputUriPrefix": "s3://ml-outputs/{namespace}/",
            "allowAmbientCredentials": True,
            "allowedServiceAccounts": ["ml-identity"],
            "admissionPolicy": {"enabled": True},
        },
    },
}
# Kinds kubernetes-validate has no schema for (CRD-defined); checked by shape below instead.
CUSTOM_KINDS = {"ServiceMonitor"}


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name="kubetune", namespace="kubetune-system")
    docs = []
    for name, text in rendered.items():
        if name.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    for crd in chart.crds:
        docs += [d for d in yaml.safe_load_all(crd["data"]) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def rendered(request):
    return request.param, render(VALUE_SETS[request.param])


def test_chart_lints_strict_with_every_value_set():
    for name, values in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True)
        errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        # Only the missing-icon note is tolerated (severity 1 = info, filtered above).
        assert errors == [], (name, errors)


def test_every_manifest_is_valid_kubernetes(rendered):
    name, docs = rendered
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_generated_files_are_current():
    assert generate.stale(REPO) == [], "run `kubetune generate`"


def test_rbac_is_exactly_the_operators_permissions(rendered):
    name, docs = rendered
    expected = generate.operator_rules()
    values = VALUE_SETS[name]
    # With several replicas: the Lease's Role and RoleBinding, in the release's namespace only, in both modes.
    lease_roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    lease_bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("-leader-election")]
    if values.get("replicaCount", 1) > 1:
        (lease_role,) = lease_roles
        (lease_binding,) = lease_bindings
        assert lease_role["metadata"]["namespace"] == lease_binding["metadata"]["namespace"] == "kubetune-system"
        assert lease_role["rules"] == expected["leaderElection"]
        assert lease_binding["roleRef"]["name"] == lease_role["metadata"]["name"]
        assert lease_binding["subjects"][0]["namespace"] == "kubetune-system"
    else:
        assert lease_roles == [] and lease_bindings == []
    roles = [r for r in by_kind(docs, "Role") if r not in lease_roles]
    bindings = [b for b in by_kind(docs, "RoleBinding") if b not in lease_bindings]
    if values.get("watchNamespaces"):
        assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(values["watchNamespaces"])
        for role in roles:
            assert role["rules"] == expected["namespaced"]
        assert {b["metadata"]["namespace"] for b in bindings} == set(values["watchNamespaces"])
    else:
        assert roles == [] and bindings == []
        (role,) = by_kind(docs, "ClusterRole")
        assert role["rules"] == expected["namespaced"] + expected["cluster"]
        (binding,) = by_kind(docs, "ClusterRoleBinding")
        assert binding["subjects"][0]["namespace"] == "kubetune-system"
    # Leases are granted nowhere else.
    for doc in by_kind(docs, "ClusterRole") + roles:
        assert all("coordination.k8s.io" not in rule["apiGroups"] for rule in doc["rules"])


def test_the_chart_holds_no_kopf_peering_resources(rendered):
    _, docs = rendered
    assert [d["kind"] for d in docs if d["apiVersion"].startswith("kopf.dev/")] == []
    assert [d for d in by_kind(docs, "CustomResourceDefinition") if d["spec"]["group"] == "kopf.dev"] == []
    for doc in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        assert all("kopf.dev" not in rule["apiGroups"] for rule in doc["rules"])


def test_no_role_can_read_secrets_or_use_wildcards(rendered):
    _, docs = rendered
    for doc in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in doc["rules"]:
            # The reporter's token Secret is created; no Secret is ever read.
            assert "secrets" not in rule["resources"] or rule["verbs"] == ["create"], rule
            assert "*" not in rule["resources"] and "*" not in rule["verbs"] and "*" not in rule["apiGroups"]


def test_operator_pod_meets_pod_security_restricted(rendered):
    _, docs = rendered
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True
        assert "privileged" not in sc or sc["privileged"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    assert all("hostPath" not in v for v in pod.get("volumes", []))


def test_images_follow_app_version_unless_overridden():
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_meta["appVersion"] == kubetune.__version__
    (deploy,) = by_kind(render({}), "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/kubetune/operator:{kubetune.__version__}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_TRAINER_IMAGE"] == f"ghcr.io/kubetune/trainer:{kubetune.__version__}"
    # kopf's identity comes from the pod name: its own default needs a passwd entry for the uid.
    pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    (deploy,) = by_kind(render(VALUE_SETS["cluster-ha-monitoring"]), "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"].endswith(":dev") and env["KUBETUNE_TRAINER_IMAGE"].endswith(":custom")
    assert env["KUBETUNE_DEFAULT_OUTPUT_URI"] == "s3://ml/kubetune/"


def test_one_replica_is_replaced_and_elected_replicas_roll():
    """One replica runs no election: an upgrade must never run two at once (Recreate). Elected replicas roll: the
    new pod stands by until the old leader gives its Lease up."""
    (single,) = by_kind(render({}), "Deployment")
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    (ha,) = by_kind(render(VALUE_SETS["namespaced-ha"]), "Deployment")
    assert ha["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_operator_arguments_match_the_mode():
    def args(values):
        (deploy,) = by_kind(render(values), "Deployment")
        return deploy["spec"]["template"]["spec"]["containers"][0]["args"]

    single = args({})
    assert "--standalone" in single and not any(a.startswith(("--namespace", "--leader-election")) for a in single)
    ha = args(VALUE_SETS["namespaced-ha"])
    assert "--leader-election=kubetune-operator" in ha and "--standalone" not in ha
    assert "--namespace=team-a" in ha and "--namespace=team-b" in ha
    # the CLI accepts what the chart passes, and the settings carry the Lease's name (none for one replica)
    from kubetune.cli import build_parser
    from kubetune.controller.config import from_args

    parsed = build_parser().parse_args(ha)
    assert parsed.namespace == ["team-a", "team-b"] and parsed.leader_election == "kubetune-operator"
    assert from_args(parsed, env={}).leader_election == "kubetune-operator"
    assert from_args(build_parser().parse_args(single), env={}).leader_election == ""


def test_the_lease_namespace_comes_from_the_downward_api(rendered):
    """Every replica count: the Lease's namespace (leader.lease_namespace reads POD_NAMESPACE) is the pod's own."""
    _, docs = rendered
    (deploy,) = by_kind(docs, "Deployment")
    env = deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    (pod_namespace,) = [e for e in env if e["name"] == "POD_NAMESPACE"]
    assert pod_namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_operator_settings_reach_its_environment():
    from kubetune.controller.config import from_env

    def config(values):
        (deploy,) = by_kind(render(values), "Deployment")
        return from_env(
            {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
        )

    assert config({}).concurrent_reconciles == 32 and config({}).max_running_per_namespace == 0
    tuned = config(VALUE_SETS["namespaced-ha"])
    assert tuned.concurrent_reconciles == 64 and tuned.max_running_per_namespace == 4
    assert tuned.leader_election_lease_seconds == 15
    ha_lease = VALUE_SETS["namespaced-ha"] | {"leaderElectionLeaseSeconds": 30}
    assert config(ha_lease).leader_election_lease_seconds == 30
    # Training pods' pull secrets and the platform's policy; the operator's own pull secrets stay its own.
    assert (
        config({}).trainer_image_pull_secrets == ()
        and config({"imagePullSecrets": [{"name": "op"}]}).trainer_image_pull_secrets == ()
    )
    shared = config(VALUE_SETS["shared-cluster-policy"])
    assert shared.trainer_image_pull_secrets == ("regcred",)
    assert shared.policy.max_gpus_per_job == 16 and shared.policy.default_queue == "gpus"
    assert shared.policy.output_prefix("team-a") == "s3://ml-outputs/team-a/"
    assert config({}).policy == type(shared.policy)()  # the chart's defaults are the operator's


def test_metrics_service_and_service_monitor():
    docs = render(VALUE_SETS["cluster-ha-monitoring"])
    (svc,) = by_kind(docs, "Service")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert by_kind(render(VALUE_SETS["no-metrics-existing-sa"]), "Service") == []
    assert by_kind(render(VALUE_SETS["no-metrics-existing-sa"]), "ServiceAccount") == []


def test_chart_installs_the_generated_crd():
    crds = by_kind(render({}), "CustomResourceDefinition")
    names = {c["metadata"]["name"] for c in crds}
    assert "finetunejobs.kubetune.dev" in names
    assert (CHART / "crds" / "finetunejobs.kubetune.dev.yaml").read_text() == (
        REPO / "crds" / "finetunejobs.kubetune.dev.yaml"
    ).read_text()
