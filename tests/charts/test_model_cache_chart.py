"""The chart's `cache:` values: what they render (the operator's settings, the writer's keys passed in by the kubelet,
a Role in the release's namespace for the population Jobs when only other namespaces are watched), that the operator
starts with them (`kubetune operator`'s own settings code), that RBAC still grants no access to Secrets, and what the
schema refuses."""

from __future__ import annotations

import kubernetes_validate
import pytest

from kubetune.controller.permissions import is_granted
from kubetune.doctor import operator_settings

helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk (the embedded Helm SDK) is not installed")
from tests.charts.test_chart import KUBE_VERSION, by_kind, render  # noqa: E402
from tests.charts.test_values_schema import lint_errors  # noqa: E402

CACHE = {
    "root": "s3://kubetune-cache/models/",
    "endpoint": "http://minio.minio:9000",
    "region": "eu-west-1",
    "default": False,
    "maxSize": "2Ti",
    "populate": {
        "secretName": "model-cache-writer",
        "serviceAccountName": "model-cache",
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
    },
    "read": {"secretName": "model-cache"},
    "hubEndpoint": "https://hf-mirror.example.com",
}


def _operator(values: dict) -> dict:
    (deployment,) = by_kind(render(values), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["cluster-wide", "namespaced"])
def test_the_cache_values_reach_the_operator(watch):
    values = {"cache": CACHE, "watchNamespaces": watch}
    assert lint_errors(values) == []
    docs = render(values)
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    container = _operator(values)
    settings, refusal = operator_settings(container)
    assert refusal == ""
    cache = settings.model_cache
    assert (cache.root, cache.namespace, cache.default, cache.max_bytes) == (
        CACHE["root"],
        "kubetune-system",
        False,
        2 * 1024**4,
    )
    assert (cache.populate_secret, cache.populate_service_account, cache.read_secret, cache.read_ambient) == (
        "model-cache-writer",
        "model-cache",
        "model-cache",
        False,
    )
    assert (cache.endpoint, cache.region, cache.hub_endpoint) == (CACHE["endpoint"], "eu-west-1", CACHE["hubEndpoint"])
    assert cache.populate_resources == {"requests": {"cpu": "2", "memory": "4Gi"}}
    # The operator evicts with the writer's keys: the kubelet resolves them, the operator never reads the Secret.
    env = {e["name"]: e for e in container["env"]}
    for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True)):
        ref = env[f"KUBETUNE_CACHE_{key}"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "model-cache-writer" and ref["key"] == key and ref.get("optional", False) == optional
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"] or rule["verbs"] == ["create"], rule
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    if watch:
        # The release's namespace is not watched: a Role there for the population Jobs, within what permissions.py
        # lists (and bound to the operator's ServiceAccount).
        own = roles["kubetune-system"]
        assert own["metadata"]["name"].endswith("-model-cache")
        granted = [
            (verb, group, resource)
            for rule in own["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        ]
        assert sorted(granted) == [
            ("create", "batch", "jobs"),
            ("delete", "batch", "jobs"),
            ("get", "batch", "jobs"),
            ("list", "", "pods"),
        ]
        assert all(is_granted(*call) for call in granted)
        (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == "kubetune-system"]
        assert binding["roleRef"]["name"] == own["metadata"]["name"]
        assert sorted(roles) == ["kubetune-system", "team-a", "team-b"]
    else:
        assert roles == {}


def test_the_cache_is_off_by_default_and_with_ambient_identity_no_keys_are_passed():
    env = {e["name"] for e in _operator({})["env"]}
    assert not [name for name in env if name.startswith("KUBETUNE_CACHE_")]
    assert operator_settings(_operator({}))[0].model_cache.enabled is False
    ambient = {"root": "s3://kubetune-cache/", "read": {"ambientCredentials": True}}
    container = _operator({"cache": ambient})
    assert not [e for e in container["env"] if "valueFrom" in e and e["name"].startswith("KUBETUNE_CACHE_")]
    settings = operator_settings(container)[0].model_cache
    assert settings.read_ambient and settings.populate_secret == "" and settings.max_bytes == 0
    # A watched release namespace needs no Role of its own.
    docs = render({"cache": ambient, "watchNamespaces": ["kubetune-system", "team-a"]})
    assert sorted(r["metadata"]["name"] for r in by_kind(docs, "Role")) == ["kubetune", "kubetune"]


@pytest.mark.parametrize(
    "cache, path",
    [
        ({"root": "gs://kubetune-cache/"}, "/cache/root"),
        ({"root": "kubetune-cache"}, "/cache/root"),
        ({"maxSize": "lots"}, "/cache/maxSize"),
        ({"read": {"secretName": "Model_Cache"}}, "/cache/read/secretName"),
        ({"populate": {"secretName": "writer", "token": "x"}}, "token"),
        ({"endpoint": "minio:9000"}, "/cache/endpoint"),
        ({"default": "yes"}, "/cache/default"),
    ],
)
def test_the_schema_refuses_bad_cache_values(cache, path):
    errors = lint_errors({"cache": cache})
    assert errors and any(path in e for e in errors), errors
