"""The chart's monitoring: the Grafana dashboard ConfigMap (found by kube-prometheus-stack's Grafana sidecar) and the
PrometheusRule. Every PromQL expression of both parses (promql-parser), and every metric it names is one the operator
exports (read from the operator's own registry, not from a list kept here)."""

from __future__ import annotations

import json
import re

import jsonschema
import kubernetes_validate
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.controller.metrics import JOB_GAUGES, Metrics
from kubetune.testing.emulator import match_labels  # the test API server's label selector rules

promql = pytest.importorskip("promql_parser", reason="promql-parser (the dev extra) is not installed")
helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk (the embedded Helm SDK) is not installed")
from tests.charts.test_chart import CHART, KUBE_VERSION, REPO, by_kind, render  # noqa: E402
from tests.charts.test_values_schema import lint_errors  # noqa: E402

MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "alertLabels": {"team": "ml-platform"},
            "progressStalledMinutes": 20,
            "queueWaitMinutes": 45,
        },
        "grafanaDashboard": {"enabled": True},
    }
}
DASHBOARD_FILE = CHART / "files" / "grafana-dashboard.json"
# Metrics Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}

# kube-prometheus-stack's Grafana sidecar (prometheus-community/helm-charts,
# charts/kube-prometheus-stack/values.yaml, grafana.sidecar.dashboards): label grafana_dashboard, labelValue "1",
# searchNamespace ALL.
SIDECAR_LABEL, SIDECAR_LABEL_VALUE, SIDECAR_SEARCH_NAMESPACE = "grafana_dashboard", "1", "ALL"


def sidecar_loads(configmap: dict, label: str, label_value: str, search_namespace: str) -> bool:
    """Whether the Grafana sidecar lists this ConfigMap, ported from kiwigrid/k8s-sidecar src/resources.py
    (list_resources / _watch_resource_iterator): label selector "label=value" (or just "label" when the value is
    empty), all namespaces for ALL else that namespace; Grafana's provider then loads its *.json keys as dashboards."""
    selector = f"{label}={label_value}" if label_value else label
    meta = configmap["metadata"]
    return (search_namespace == "ALL" or meta["namespace"] == search_namespace) and match_labels(
        selector, meta.get("labels") or {}
    )


def exported_names() -> set[str]:
    """Every sample name the operator's registry exposes, with one job in every field so no family is empty."""
    metrics = Metrics()
    metrics.set_phase("team-a", "bot", "Running")
    metrics.observe(
        "team-a",
        "bot",
        {
            "spec": {"technique": "lora", "objective": "rlhf"},
            "status": {
                "phase": "Running",
                "attempts": 1,
                "conditions": [
                    {
                        "type": "Running",
                        "status": "True",
                        "reason": "PodsRunning",
                        "lastTransitionTime": "2026-11-28T10:00:00Z",
                    }
                ],
                "progress": {"step": 5, "totalSteps": 10, "etaSeconds": 60},
                "metrics": {"loss": 1.0, "evalLoss": 1.1, "reward": 0.3, "tokensPerSecond": 100.0},
            },
        },
    )
    metrics.reconcile_seconds.observe(0.01)
    metrics.reconcile_errors.labels(reason="ApiException").inc()
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    assert all(family.samples for family in families), [f.name for f in families if not f.samples]
    return {sample.name for family in families for sample in family.samples}


EXPORTED = exported_names()


def grafana_to_promql(expr: str) -> str:
    """A Grafana query as Prometheus receives it: its interval variables become durations and the dashboard's
    template variables become a value (inside a regex matcher)."""
    expr = re.sub(r"\$(__rate_interval|__interval|__range)\b", "5m", expr)
    return re.sub(r"\$\{?(\w+)\}?", "kubetune", expr)


def metric_names(expr: str) -> set[str]:
    """Parse one PromQL expression (raising on a syntax error or an unknown function) and return the metric names
    of its selectors."""
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql.VectorSelector):
            names.add(node.name)

    promql.walk(promql.parse(expr), visit)
    assert names, f"no metric in {expr!r}"
    return names


def unknown_metrics(expr: str) -> set[str]:
    return metric_names(expr) - EXPORTED - PROMETHEUS_OWN


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every panel target's expression and every query variable's selector (label_values(selector, label))."""
    queries = []
    for panel in dashboard["panels"]:
        queries += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            text = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
            assert match, text
            queries.append(match.group(1))
    return queries


def rendered_monitoring(values: dict = MONITORING) -> dict[str, dict]:
    docs = render(values)
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    return {
        "docs": docs,
        "rule": by_kind(docs, "PrometheusRule"),
        "dashboard": dashboards,
        "service": [d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-metrics")],
        "monitor": by_kind(docs, "ServiceMonitor"),
    }


# ------------------------------------------------------------------------------------- the checks themselves


def test_the_checks_catch_a_typo_and_a_broken_expression():
    assert unknown_metrics('max by (namespace) (kubetune_finetunejob_los{job="x"})') == {"kubetune_finetunejob_los"}
    assert unknown_metrics("sum(rate(kubetune_reconcile_duration_seconds_count[5m]))") == set()
    with pytest.raises(ValueError):
        metric_names("sum(kubetune_finetunejob_loss")
    with pytest.raises(ValueError):
        metric_names("rate(kubetune_finetunejob_loss[$__rate_interval])")  # Grafana's variable, unreplaced
    assert {g.name for g in JOB_GAUGES} <= EXPORTED and "kubetune_finetunejob_phase" in EXPORTED


# ------------------------------------------------------------------------------------- the dashboard


def test_dashboard_is_off_unless_enabled():
    assert rendered_monitoring({})["dashboard"] == []
    off = {"metrics": {"enabled": False, "grafanaDashboard": {"enabled": True}}}
    assert rendered_monitoring(off)["dashboard"] == []


def test_kube_prometheus_stacks_sidecar_loads_the_dashboard_in_the_release_namespace_or_grafanas():
    (configmap,) = rendered_monitoring()["dashboard"]
    kubernetes_validate.validate(configmap, KUBE_VERSION, strict=True)
    assert configmap["metadata"]["namespace"] == "kubetune-system"
    assert sidecar_loads(configmap, SIDECAR_LABEL, SIDECAR_LABEL_VALUE, SIDECAR_SEARCH_NAMESPACE)
    assert not sidecar_loads(configmap, SIDECAR_LABEL, SIDECAR_LABEL_VALUE, "monitoring")
    # A sidecar that watches only Grafana's namespace: the ConfigMap goes there; a folder annotation rides along.
    (elsewhere,) = rendered_monitoring(
        {
            "metrics": {
                "grafanaDashboard": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "annotations": {"grafana_folder": "ML"},
                }
            }
        }
    )["dashboard"]
    assert sidecar_loads(elsewhere, SIDECAR_LABEL, SIDECAR_LABEL_VALUE, "monitoring")
    assert elsewhere["metadata"]["annotations"] == {"grafana_folder": "ML"}
    # Another sidecar's label, e.g. one with an empty labelValue (any value); Helm merges it with the default's, which
    # null removes.
    (relabelled,) = rendered_monitoring(
        {"metrics": {"grafanaDashboard": {"enabled": True, "labels": {"dashboards": "kubetune", SIDECAR_LABEL: None}}}}
    )["dashboard"]
    assert sidecar_loads(relabelled, "dashboards", "", "ALL")
    assert not sidecar_loads(relabelled, SIDECAR_LABEL, SIDECAR_LABEL_VALUE, "ALL")
    (key,) = configmap["data"]
    assert key.endswith(".json")  # the provider loads *.json files
    assert json.loads(configmap["data"][key]) == json.loads(DASHBOARD_FILE.read_text())
    assert len(json.dumps(configmap)) < 1024 * 1024  # a ConfigMap holds at most 1 MiB


def test_every_dashboard_query_parses_and_names_only_exported_metrics():
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    used: set[str] = set()
    for query in queries:
        assert unknown_metrics(grafana_to_promql(query)) == set(), query
        used |= metric_names(grafana_to_promql(query))
    # Every per-job gauge is on the dashboard.
    assert {g.name for g in JOB_GAUGES} <= used, {g.name for g in JOB_GAUGES} - used
    # Panels ask the data source variable, so the dashboard works with any Prometheus data source's name.
    datasources = [p["datasource"] for p in dashboard["panels"] if "datasource" in p]
    datasources += [t["datasource"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert datasources and all(d == {"type": "prometheus", "uid": "${datasource}"} for d in datasources)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "kubetune-finetunejobs"


def test_per_job_panels_drop_the_scrape_targets_labels():
    """Series of one job from two operator pods (a restart, a standby taking over) are one line: every per-job query
    aggregates by namespace and name."""
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if "kubetune_finetunejob_" in target["expr"]:
                assert re.search(r"\b(max|count|sum) by \(namespace, name", target["expr"]) or target[
                    "expr"
                ].startswith(("sum(max by (namespace, name)", "count(max by (namespace, name)")), target["expr"]


# ------------------------------------------------------------------------------------- the alerts

# The part of prometheus-operator's PrometheusRule CRD that the chart fills (prometheus-operator/prometheus-operator,
# example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml): groups need a name, rules an expr;
# labels and annotations are string maps; `for` is a Duration.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string"},
                                "record": {"type": "string"},
                                "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                                "for": {"type": "string", "pattern": DURATION},
                                "keep_firing_for": {"type": "string", "minLength": 1, "pattern": DURATION},
                                "labels": STRING_MAP,
                                "annotations": STRING_MAP,
                            },
                        },
                    },
                },
            },
        }
    },
}
ALERTS = {
    "FineTuneJobFailed",
    "FineTuneJobProgressStalled",
    "FineTuneJobQueuedTooLong",
    "KubetuneOperatorDown",
    "KubetuneOperatorNotReconciling",
    "KubetuneReconcileErrors",
}


def alerts(rule: dict) -> dict[str, dict]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_rules_are_off_unless_enabled():
    assert rendered_monitoring({})["rule"] == []
    assert rendered_monitoring({"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}})["rule"] == []


def test_the_prometheus_rule_fits_the_crd_and_kube_prometheus_stacks_rule_selector():
    (rule,) = rendered_monitoring()["rule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == "kubetune-system"
    jsonschema.validate(rule["spec"], PROMETHEUS_RULE_SPEC)
    # kube-prometheus-stack's Prometheus selects rules labelled release: <its release> (ruleSelectorNilUsesHelmValues).
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(alerts(rule)) == ALERTS
    for name, alert in alerts(rule).items():
        assert alert["labels"]["severity"] in ("warning", "critical") and alert["labels"]["team"] == "ml-platform"
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        if name.startswith("FineTuneJob"):  # Alertmanager's templates reach Prometheus unrendered by Helm
            assert "{{ $labels.namespace }}/{{ $labels.name }}" in alert["annotations"]["description"], name


def test_every_rule_parses_names_only_exported_metrics_and_takes_its_minutes_from_values():
    (rule,) = rendered_monitoring()["rule"]
    for name, alert in alerts(rule).items():
        assert unknown_metrics(alert["expr"]) == set(), (name, alert["expr"])
    by_name = alerts(rule)
    stalled, queued = by_name["FineTuneJobProgressStalled"]["expr"], by_name["FineTuneJobQueuedTooLong"]["expr"]
    assert "[20m]" in stalled and "offset 20m" in stalled and "> 1200" in stalled
    assert "> 2700" in queued
    (defaults,) = rendered_monitoring({"metrics": {"prometheusRule": {"enabled": True}}})["rule"]
    assert "[30m]" in alerts(defaults)["FineTuneJobProgressStalled"]["expr"]
    assert "> 3600" in alerts(defaults)["FineTuneJobQueuedTooLong"]["expr"]


def test_rules_select_the_scrape_job_the_service_monitor_makes():
    """prometheus-operator names a ServiceMonitor's scrape job after the Service (pkg/prometheus/promcfg.go: the
    relabeling of __meta_kubernetes_service_name to job, when the ServiceMonitor sets no jobLabel). The per-job series
    keep the FineTuneJob's namespace only with honorLabels (else Prometheus renames it exported_namespace)."""
    rendered = rendered_monitoring()
    (rule,), (service,), (monitor,) = rendered["rule"], rendered["service"], rendered["monitor"]
    assert "jobLabel" not in monitor["spec"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True and endpoint["port"] == service["spec"]["ports"][0]["name"]
    job = f'job="{service["metadata"]["name"]}"'
    for name, alert in alerts(rule).items():
        selectors = re.findall(r"\b[a-z_]+\{([^}]*)\}", alert["expr"])
        assert selectors and all(job in s for s in selectors), (name, alert["expr"])
        if name.startswith("Kubetune"):  # the operator's own series: the target's namespace
            assert all('namespace="kubetune-system"' in s for s in selectors), (name, alert["expr"])
        else:  # per-job series: the job's namespace, so no namespace matcher
            assert not any("namespace=" in s for s in selectors), (name, alert["expr"])


# ------------------------------------------------------------------------------------- values and docs


@pytest.mark.parametrize(
    "values, path",
    [
        (
            {"metrics": {"prometheusRule": {"progressStalledMinutes": 0}}},
            "/metrics/prometheusRule/progressStalledMinutes",
        ),
        ({"metrics": {"prometheusRule": {"queueWaitMinutes": "1h"}}}, "/metrics/prometheusRule/queueWaitMinutes"),
        ({"metrics": {"prometheusRule": {"alertLabels": {"team-name": "ml"}}}}, "team-name"),  # not a label name
        ({"metrics": {"prometheusRule": {"labels": {"release": 1}}}}, "/metrics/prometheusRule/labels/release"),
        ({"metrics": {"grafanaDashboard": {"namespace": "Monitoring"}}}, "/metrics/grafanaDashboard/namespace"),
        ({"metrics": {"grafanaDashboard": {"label": "grafana_dashboard"}}}, "label"),
    ],
)
def test_bad_monitoring_values_are_refused_naming_the_value(values, path):
    errors = lint_errors(values)
    assert errors and any(path in e for e in errors), errors


def test_monitoring_values_lint_strict():
    assert lint_errors(MONITORING) == []


def test_docs_list_every_metric_and_alert():
    text = (REPO / "docs" / "operator.md").read_text()
    families = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in EXPORTED}
    for name in sorted(families | ALERTS):
        assert f"`{name}" in text, name
    for value in (
        "metrics.prometheusRule.progressStalledMinutes",
        "metrics.prometheusRule.queueWaitMinutes",
        "metrics.grafanaDashboard.enabled",
    ):
        assert value in text, value
