"""charts/kubetune/values.schema.json: Helm (lint, template, install, upgrade) refuses values that would
render a broken operator, naming the value, and accepts every value the chart and its docs use."""

from __future__ import annotations

import re

import pytest
import yaml
from kubernetes.utils import parse_quantity

from kubetune.controller.config import from_env

helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk (the embedded Helm SDK) is not installed")
from tests.charts.test_chart import CHART, REPO, VALUE_SETS, by_kind, render  # noqa: E402

SCHEMA = yaml.safe_load((CHART / "values.schema.json").read_text())
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# value -> the path Helm's error names
BAD = [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"concurrentReconciles": -5}, "/concurrentReconciles"),
    ({"concurrentReconciles": 0}, "/concurrentReconciles"),
    ({"maxRunningPerNamespace": -1}, "/maxRunningPerNamespace"),
    ({"replicacount": 2}, "replicacount"),  # a typo is not silently ignored
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
    ({"image": {"pullPolicy": "always"}}, "/image/pullPolicy"),
    ({"image": {"tag": "v1 beta"}}, "/image/tag"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "/metrics/serviceMonitor/interval"),
    ({"resources": {"limits": {"memory": "512MB"}}}, "/resources/limits/memory"),
    ({"trainer": {"defaultOutputUri": "my-bucket/kubetune"}}, "/trainer/defaultOutputUri"),
    ({"trainer": {"reportIntervalSeconds": 0}}, "/trainer/reportIntervalSeconds"),
    ({"serviceAccount": {"create": "yes"}}, "/serviceAccount/create"),
    ({"nodeSelector": {"gpu": True}}, "/nodeSelector/gpu"),
    ({"trainer": {"imagePullSecrets": ["regcred"]}}, "/trainer/imagePullSecrets/0"),
    ({"policy": {"maxGpusPerJob": -1}}, "/policy/maxGpusPerJob"),
    ({"policy": {"maxGpus": 8}}, "maxGpus"),
    ({"policy": {"allowedImagePrefixes": ["ghcr.io/acme"]}}, "/policy/allowedImagePrefixes/0"),
    ({"policy": {"outputUriPrefix": "s3://out/{team}/"}}, "/policy/outputUriPrefix"),
    ({"policy": {"allowedServiceAccounts": ["Admin"]}}, "/policy/allowedServiceAccounts/0"),
    ({"policy": {"requireQueue": "yes"}}, "/policy/requireQueue"),
    (
        {"policy": {"admissionPolicy": {"validationActions": ["Deny", "Warn"]}}},
        "/policy/admissionPolicy/validationActions",
    ),
]


def lint_errors(values: dict) -> list[str]:
    report = helm.lint(str(CHART), values, strict=True)
    return [m["error"] for m in report["messages"] if m["severity"] >= 2] + report["errors"]


@pytest.mark.parametrize("values, path", BAD, ids=[p for _, p in BAD])
def test_lint_and_render_refuse_bad_values(values, path):
    errors = lint_errors(values)
    assert errors and any(path in e for e in errors), errors
    with pytest.raises(Exception, match=re.escape(path)) as refused:
        helm.Chart.load(CHART).render(values, name="kubetune", namespace="kubetune-system")
    assert type(refused.value).__name__ == "HelmValuesError"


# ------------------------------------------------------------------------------------- accepted values


def helm_set(expression: str) -> dict:
    """`--set a.b=c,d={x,y}` as Helm reads it (helm pkg/strvals/parser.go: dotted keys, {..} lists, and
    typedVal: true/false/null, integers not starting with 0, else a string). The forms the docs use."""
    values: dict = {}
    for assignment in re.findall(r"(?:[^,{]|\{[^}]*\})+", expression):
        key, _, raw = assignment.partition("=")

        def typed(text: str):
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            if text.lower() == "null":
                return None
            if text == "0" or (text[:1] != "0" and re.fullmatch(r"[+-]?[0-9]+", text)):
                return int(text)
            return text

        value = [typed(v) for v in raw[1:-1].split(",")] if raw.startswith("{") else typed(raw)
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return values


def documented_values() -> dict[str, dict]:
    """Every `--set` of the docs' helm commands, and every `key: value` the docs tell to set on the chart."""
    found = {}
    for doc in DOCS:
        text = doc.read_text()
        for expression in re.findall(r"--set '?([^' \n`]+)'?", text):
            found[f"{doc.name}: --set {expression}"] = helm_set(expression)
        for key, value in re.findall(r"chart value `([A-Za-z.]+): ([^`]+)`", text):
            found[f"{doc.name}: {key}"] = helm_set(f"{key}={'4' if value == 'N' else value}")
    return found


def test_the_docs_examples_are_found():
    found = documented_values()
    assert {"trainer", "watchNamespaces", "maxRunningPerNamespace"} <= {k for v in found.values() for k in v}, found


def test_every_value_the_chart_and_docs_use_is_accepted():
    cases = {"values.yaml": {}} | {f"test_chart: {k}": v for k, v in VALUE_SETS.items()} | documented_values()
    cases["values.yaml, explicitly"] = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, values in cases.items():
        assert lint_errors(values) == [], name
        helm.Chart.load(CHART).render(values, name="kubetune", namespace="kubetune-system")


def test_integer_image_tags_from_set_are_accepted():
    assert helm_set("image.tag=123") == {"image": {"tag": 123}}
    assert lint_errors(helm_set("image.tag=123,trainer.image.tag=2026.11")) == []


def test_the_schemas_bounds_are_the_operators():
    """The smallest numbers the schema lets through start the operator; one less is refused by both."""

    def operator_env(values: dict) -> dict:
        (deploy,) = by_kind(render(values), "Deployment")
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    for key, variable in (
        ("concurrentReconciles", "KUBETUNE_CONCURRENT_RECONCILES"),
        ("maxRunningPerNamespace", "KUBETUNE_MAX_RUNNING_PER_NAMESPACE"),
    ):
        minimum = SCHEMA["properties"][key]["minimum"]
        from_env(operator_env({key: minimum}))
        assert lint_errors({key: minimum - 1})
        with pytest.raises(ValueError, match=variable):
            from_env(operator_env({}) | {variable: str(minimum - 1)})


@pytest.mark.parametrize(
    "quantity, valid",
    [
        ("100m", True),
        ("192Mi", True),
        ("1", True),
        ("0.5", True),
        ("1e3", True),
        ("2Gi", True),
        ("512MB", False),
        ("1.5.2", False),
        ("Mi", False),
    ],
)
def test_the_quantity_pattern_agrees_with_kubernetes(quantity, valid):
    pattern = SCHEMA["definitions"]["quantity"]["anyOf"][0]["pattern"]
    assert bool(re.fullmatch(pattern, quantity)) == valid
    if valid:
        parse_quantity(quantity)
    else:
        with pytest.raises(ValueError):
            parse_quantity(quantity)


def test_docs_list_the_crd_upgrade():
    """Helm installs crds/ once and never upgrades it: the docs say how to upgrade the CRD."""
    text = (REPO / "docs" / "quickstart.md").read_text()
    assert "kubectl apply --server-side --force-conflicts -f charts/kubetune/crds/" in text
