"""watchNamespaces in any order: `helm install` (and `upgrade`) create a watched namespace that does not exist yet,
keep creating one the release created before, and leave alone one that someone else made, which Helm would refuse
to take over ("invalid ownership metadata"). A namespace the chart creates is kept on uninstall.

The chart asks the cluster with Helm's `lookup`, which answers only when Helm talks to one: these tests run the
embedded Helm SDK's install with --dry-run=server against the project's test API server (kubetune.testing), which
serves the lookups and Helm's own reads as a kube-apiserver does. Rendered offline (`helm template`, Argo CD)
nothing can be looked up, and the chart renders no Namespace."""

from __future__ import annotations

import kubernetes
import pytest
import yaml

from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import start_emulator

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (the embedded Helm SDK) is not installed")
from tests.charts.test_chart import CHART, by_kind, render  # noqa: E402 - it needs helm_python, checked above

RELEASE, RELEASE_NAMESPACE = "kubetune", "kubetune-system"


@pytest.fixture
def cluster():
    emulator = start_emulator()
    core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN)))
    for namespace in ("kube-system", "default", RELEASE_NAMESPACE):  # what every cluster (and the install) has
        core.create_namespace({"metadata": {"name": namespace}})
    yield emulator, core
    emulator.stop()


def install_dry_run(emulator, values: dict) -> list[dict]:
    config = helm_python.Config(
        kubeconfig_content=yaml.safe_dump(emulator.kubeconfig(ADMIN_TOKEN)), namespace=RELEASE_NAMESPACE
    )
    release = config.install(str(CHART), RELEASE, values, namespace=RELEASE_NAMESPACE, dry_run="server", timeout=30)
    return [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]


def helm_owned(name: str) -> dict:
    """A namespace as Helm leaves it after creating it for this release (pkg/action/validate.go's ownership)."""
    return {
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": RELEASE_NAMESPACE},
        }
    }


def test_install_creates_only_the_missing_namespaces(cluster):
    emulator, core = cluster
    core.create_namespace({"metadata": {"name": "team-a"}})  # made by the user before the install
    core.create_namespace(helm_owned("team-c"))  # made by this release's earlier install
    other = helm_owned("team-d")
    other["metadata"]["annotations"]["meta.helm.sh/release-name"] = "another-release"
    core.create_namespace(other)
    docs = install_dry_run(emulator, {"watchNamespaces": ["team-a", "team-b", "team-c", "team-d", RELEASE_NAMESPACE]})

    namespaces = by_kind(docs, "Namespace")
    assert sorted(n["metadata"]["name"] for n in namespaces) == ["team-b", "team-c"]
    for namespace in namespaces:
        assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Helm creates Namespaces before anything else of the release (pkg/release/util/kind_sorter.go InstallOrder):
    # the Role and RoleBinding of team-b find their namespace.
    kinds = [doc["kind"] for doc in docs]
    assert kinds[: len(namespaces)] == ["Namespace"] * len(namespaces)
    roles = {(r["metadata"]["namespace"], r["kind"]) for r in by_kind(docs, "Role") + by_kind(docs, "RoleBinding")}
    assert {ns for ns, _ in roles} == {"team-a", "team-b", "team-c", "team-d", RELEASE_NAMESPACE}


def test_cluster_wide_mode_creates_no_namespace(cluster):
    emulator, _ = cluster
    docs = install_dry_run(emulator, {})
    assert by_kind(docs, "Namespace") == [] and by_kind(docs, "ClusterRole")


def test_offline_rendering_creates_no_namespace():
    """`helm template` cannot see the cluster: nothing is rendered that could collide with a namespace that exists."""
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    assert by_kind(docs, "Namespace") == []
    assert {r["metadata"]["namespace"] for r in by_kind(docs, "Role")} == {"team-a", "team-b"}
