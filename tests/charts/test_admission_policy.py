"""The chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml): the platform's policy as the API server
enforces it before a FineTuneJob is stored.

Its CEL is evaluated as the CRD's is (tests/api/crdcheck.py: cel-python), on objects the CRD's schema has already
defaulted and accepted (the API server validates a custom resource against its schema before validating admission
runs), and its verdicts must be the operator's own (controller/policy.py, with the settings the same values give the
operator's Deployment). What kube-apiserver checks of a policy, ported from kubernetes:
- pkg/apis/admissionregistration/validation/validation.go: a message has no line break; a variable name is a CEL
  identifier; at least one validation; a binding never combines Deny and Warn;
- staging/src/k8s.io/apiserver/pkg/admission/plugin/cel/compile.go: the variables object, oldObject, request and
  variables, an expression must be a bool;
- staging/src/k8s.io/apiserver/pkg/apis/cel/config.go (PerCallLimit, RuntimeCELCostBudget) and
  staging/src/k8s.io/apiserver/pkg/admission/plugin/cel/filter.go (ForInput): a VAP's CEL has no cost check when it
  is created (`object` is dyn); at admission each expression may cost at most 1,000,000 and all of one policy's
  together 10,000,000, or the request is refused. The bound here is cel-go's static estimate (tests/api/celcost.py),
  which the runtime cost never exceeds, with `object` typed by the CRD's schema (its bounds hold: the object passed
  it).
"""

from __future__ import annotations

import copy
import dataclasses
import re

import celpy
import kubernetes_validate
import pytest
import yaml
from celpy import celtypes

from kubetune.controller import builders, policy
from kubetune.controller.config import from_env
from tests.api import celcost, crdcheck

helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk (the embedded Helm SDK) is not installed")
from tests.charts.test_chart import CHART, by_kind, render  # noqa: E402 - it needs helm_python, checked above

PER_CALL_LIMIT = 1_000_000
RUNTIME_CEL_COST_BUDGET = 10_000_000
MAX_NAME_LENGTH = 253  # metadata.name, a DNS subdomain, checked before admission
MAX_NAMESPACE_LENGTH = 63

POLICY = {
    "allowedImagePrefixes": ["registry.example/ml/"],
    "requireQueue": True,
    "maxGpusPerJob": 8,
    "maxNodesPerJob": 2,
    "allowedPriorityClasses": ["training", "urgent"],
    "outputUriPrefix": "s3://ml-outputs/{namespace}",
    "allowAmbientCredentials": False,
    "allowedServiceAccounts": ["ml-identity"],
    "admissionPolicy": {"enabled": True},
}
VALUES = {
    "trainer": {"defaultOutputUri": "s3://ml-outputs/", "image": {"repository": "registry.example/kubetune/trainer"}},
    "policy": POLICY,
}
TRAINER_IMAGE = "registry.example/kubetune/trainer:"  # + the chart's appVersion

BASE = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "job-a", "namespace": "team-a", "uid": "3f0c6a52-8d4e-4f55-9d8e-1b6f0f6b1a11"},
    "spec": {
        "technique": "lora",
        "objective": "instruction",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "datasets": [
            {"name": "chat", "uri": "s3://data/chat/train.jsonl", "format": "messages", "credentialsSecret": "s3-creds"}
        ],
        "queueName": "team-a-gpus",
        "resources": {"gpus": 2},
    },
}

# (case, spec changes, the rules that refuse it)
CASES = [
    ("within every rule", {}, set()),
    ("the chart's trainer image", {"image": "CHART_TRAINER_IMAGE"}, set()),
    ("an allowed image", {"image": "registry.example/ml/trainer:2"}, set()),
    ("a look-alike repository", {"image": "registry.example/ml-evil/trainer:2"}, {"allowedImagePrefixes"}),
    ("no queue", {"queueName": ""}, {"requireQueue"}),
    ("8 GPUs on 1 node", {"resources": {"gpus": 8}}, set()),
    ("4 GPUs on each of 3 nodes", {"resources": {"gpus": 4}, "nodes": 3}, {"maxGpusPerJob", "maxNodesPerJob"}),
    ("16 GPUs on 2 nodes", {"resources": {"gpus": 8}, "nodes": 2}, {"maxGpusPerJob"}),
    ("an allowed priority", {"priorityClassName": "urgent"}, set()),
    ("another priority", {"priorityClassName": "system-node-critical"}, {"allowedPriorityClasses"}),
    ("the default output root", {"output": {"credentialsSecret": "s3-creds"}}, set()),
    ("the team's own folder", {"output": {"uri": "s3://ml-outputs/team-a/runs/"}}, set()),
    ("the bucket's root", {"output": {"uri": "s3://ml-outputs"}}, set()),
    ("another bucket", {"output": {"uri": "s3://elsewhere/runs/"}}, {"outputUriPrefix"}),
    ("another team's folder", {"output": {"uri": "s3://ml-outputs/team-b/"}}, {"outputUriPrefix"}),
    ("a look-alike team folder", {"output": {"uri": "s3://ml-outputs/team-a-x/"}}, {"outputUriPrefix"}),
    (
        "ambient model credentials",
        {"model": {"uri": "s3://models/base/", "ambientCredentials": True}},
        {"allowAmbientCredentials"},
    ),
    (
        "ambient dataset credentials",
        {
            "datasets": [
                {"name": "chat", "uri": "s3://data/chat.jsonl", "format": "messages", "ambientCredentials": True}
            ]
        },
        {"allowAmbientCredentials"},
    ),
    ("ambient output credentials", {"output": {"ambientCredentials": True}}, {"allowAmbientCredentials"}),
    ("an allowed ServiceAccount", {"pod": {"serviceAccountName": "ml-identity"}}, set()),
    ("another ServiceAccount", {"pod": {"serviceAccountName": "default"}}, {"allowedServiceAccounts"}),
    (
        "everything at once",
        {
            "image": "ghcr.io/x/y:1",
            "queueName": "",
            "nodes": 3,
            "priorityClassName": "p",
            "output": {"uri": "s3://elsewhere/"},
            "pod": {"serviceAccountName": "default"},
        },
        {
            "allowedImagePrefixes",
            "requireQueue",
            "maxNodesPerJob",
            "allowedPriorityClasses",
            "outputUriPrefix",
            "allowedServiceAccounts",
        },
    ),
]


def admission_objects(values: dict) -> tuple[dict, dict] | None:
    docs = render(values)
    policies, bindings = by_kind(docs, "ValidatingAdmissionPolicy"), by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert len(policies) == len(bindings) <= 1
    return (policies[0], bindings[0]) if policies else None


def manifest(changes: dict, namespace: str = "team-a") -> dict:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(copy.deepcopy(changes))
    if doc["spec"].get("image") == "CHART_TRAINER_IMAGE":
        doc["spec"]["image"] = TRAINER_IMAGE + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return doc


# ------------------------------------------------------------------------------------------ the API server's part


def _matches(binding: dict, namespace: str) -> bool:
    """The binding's namespaceSelector (matchExpressions, In only: what the chart writes) against a namespace's
    kubernetes.io/metadata.name label, which the API server sets on every namespace."""
    selector = (binding["spec"].get("matchResources") or {}).get("namespaceSelector") or {}
    labels = {"kubernetes.io/metadata.name": namespace}
    for expression in selector.get("matchExpressions") or []:
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def admit(objects: tuple[dict, dict], doc: dict, operation: str = "CREATE") -> list[str]:
    """The messages the API server answers a request with; [] = admitted. The object passed the CRD first."""
    vap, binding = objects
    assert crdcheck.api_server_errors(doc) == [], "not a FineTuneJob the CRD accepts"
    obj = crdcheck.apply_defaults(crdcheck.schema(), copy.deepcopy(doc))
    rule = vap["spec"]["matchConstraints"]["resourceRules"][0]
    if operation not in rule["operations"] or not _matches(binding, doc["metadata"]["namespace"]):
        return []
    assert (rule["apiGroups"], rule["apiVersions"], rule["resources"]) == (
        ["kubetune.dev"],
        ["v1alpha1"],
        ["finetunejobs"],
    )
    activation = {
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(None),
        "request": celpy.json_to_cel(
            {"namespace": doc["metadata"]["namespace"], "operation": operation, "name": doc["metadata"]["name"]}
        ),
    }
    # Variables in order (the API server evaluates them lazily, on first use: the same values).
    variables = celtypes.MapType({})
    for variable in vap["spec"].get("variables") or []:
        activation["variables"] = variables
        value = crdcheck._program(variable["expression"]).evaluate(activation)
        assert not isinstance(value, Exception), (variable, value)
        variables = celtypes.MapType({**variables, celtypes.StringType(variable["name"]): value})
    activation["variables"] = variables
    denied = []
    for validation in vap["spec"]["validations"]:
        result = crdcheck._program(validation["expression"]).evaluate(activation)
        assert not isinstance(result, Exception), (validation["expression"], result)  # failurePolicy Fail would deny
        if not result:
            denied.append(validation["message"])
    return denied


def _rules(messages: list[str]) -> set[str]:
    return {re.match(r"PolicyDenied \((\w+)\)", m)[1] for m in messages}


def _operator_verdict(values: dict, doc: dict) -> set[str]:
    """What the operator makes of the same job, with the settings the same values give its Deployment."""
    (deploy,) = by_kind(render(values), "Deployment")
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    config = from_env(env)
    spec = builders.resolve_spec(doc["spec"], config, doc["metadata"]["name"])
    return {v.rule for v in policy.check(config, doc, spec)}


@pytest.fixture(scope="module")
def objects():
    found = admission_objects(VALUES)
    assert found is not None
    return found


@pytest.mark.parametrize("changes, refused", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_admission_policy_and_the_operator_refuse_the_same_jobs(objects, changes, refused):
    doc = manifest(changes)
    messages = admit(objects, doc)
    assert _rules(messages) == refused, messages
    assert _operator_verdict(VALUES, doc) == refused


def test_a_default_queue_satisfies_require_queue_in_both():
    values = VALUES | {"policy": POLICY | {"defaultQueue": "team-gpus"}}
    doc = manifest({"queueName": ""})
    assert admit(admission_objects(values), doc) == [] and _operator_verdict(values, doc) == set()


def test_only_creates_are_checked_and_only_in_the_watched_namespaces():
    values = VALUES | {"watchNamespaces": ["team-a"]}
    objects = admission_objects(values)
    refused = {"queueName": ""}
    assert admit(objects, manifest(refused)) and admit(objects, manifest(refused), "UPDATE") == []
    assert admit(objects, manifest(refused, namespace="team-b")) == []  # the operator does not run it either
    assert "matchResources" not in admission_objects(VALUES)[1]["spec"]


def test_rendered_only_when_enabled_and_there_is_a_rule():
    assert admission_objects({"policy": POLICY | {"admissionPolicy": {"enabled": False}}}) is None
    assert admission_objects({}) is None
    # everything allowed: no rule, no policy (the API server refuses one without validations)
    permissive = {
        "allowAmbientCredentials": True,
        "allowedServiceAccounts": ["*"],
        "admissionPolicy": {"enabled": True},
    }
    assert admission_objects({"policy": permissive}) is None
    only_ambient = admission_objects({"policy": permissive | {"allowAmbientCredentials": False}})
    assert [v["message"].split(")")[0] for v in only_ambient[0]["spec"]["validations"]] == [
        "PolicyDenied (allowAmbientCredentials"
    ]


def test_values_with_quotes_reach_cel_as_literals(objects):
    """Values become CEL literals through toJson: a quote in a value stays inside its string."""
    values = VALUES | {"policy": POLICY | {"allowedImagePrefixes": ['registry.example/"ml"/', "r.example/a'b/"]}}
    tricky = admission_objects(values)
    assert _rules(admit(tricky, manifest({"image": 'registry.example/"ml"/t:1'}))) == set()
    assert _rules(admit(tricky, manifest({"image": "r.example/a'b/t:1"}))) == set()
    assert _rules(admit(tricky, manifest({"image": "registry.example/ml/t:1"}))) == {"allowedImagePrefixes"}


# ------------------------------------------------------------------------------------------ what the API server checks


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_the_objects_are_valid_kubernetes(objects, version):
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    vap, binding = objects
    assert vap["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"  # GA in 1.30
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert vap["spec"]["failurePolicy"] == "Fail"
    assert vap["spec"]["validations"]
    for validation in vap["spec"]["validations"]:
        assert "\n" not in validation["message"] and "\r" not in validation["message"]
        assert validation["reason"] in ("Unauthorized", "Forbidden", "Invalid", "RequestEntityTooLarge")
    for variable in vap["spec"].get("variables") or []:
        assert re.fullmatch(r"[_a-zA-Z][_a-zA-Z0-9]*", variable["name"])
    actions = binding["spec"]["validationActions"]
    assert actions and not {"Deny", "Warn"} <= set(actions)


def test_deny_and_warn_together_are_refused_by_the_values_schema():
    with pytest.raises(Exception, match="validationActions"):
        helm.Chart.load(CHART).render(
            {"policy": {"admissionPolicy": {"enabled": True, "validationActions": ["Deny", "Warn"]}}},
            name="kubetune",
            namespace="kubetune-system",
        )
    assert admission_objects(
        {"policy": POLICY | {"admissionPolicy": {"enabled": True, "validationActions": ["Warn", "Audit"]}}}
    )[1]["spec"]["validationActions"] == ["Warn", "Audit"]


class _Roots(celcost._SizeEstimator):
    """compilation.go's sizeEstimator, for several root variables (object, request, variables)."""

    def __init__(self, roots: dict[str, celcost.DeclType]):
        self.roots = roots

    def estimate_size(self, path):
        if not path or path[0] not in self.roots:
            return None
        self.root = self.roots[path[0]]
        return super().estimate_size(path)


def _cost(expression: str, roots: dict[str, celcost.DeclType], expect: str) -> int:
    tree = celcost.parse(expression)
    checker = celcost.Checker(roots)
    assert checker.check(tree).kind == expect, expression
    return celcost.Coster(checker, _Roots(roots)).cost(tree).max


def test_every_expression_stays_within_the_api_servers_runtime_cost_limits(objects):
    vap = objects[0]
    obj = celcost.schema_decl_type(crdcheck.schema(), is_resource_root=True)
    obj.fields["metadata"].fields["name"] = celcost.DeclType("string", MAX_NAME_LENGTH, celcost.MIN_STRING_SIZE)
    request = celcost.DeclType(
        "object",
        fields={
            "namespace": celcost.DeclType("string", MAX_NAMESPACE_LENGTH, celcost.MIN_STRING_SIZE),
            "name": celcost.DeclType("string", MAX_NAME_LENGTH, celcost.MIN_STRING_SIZE),
            "operation": celcost.DeclType("string", 7, celcost.MIN_STRING_SIZE),
        },
    )
    roots = {"object": obj, "oldObject": obj, "request": request}
    # Variables are typed (and sized) from their own expressions, and a use of one costs its evaluation.
    declared, variable_cost = celcost.DeclType("object"), {}
    for variable in vap["spec"].get("variables") or []:
        tree = celcost.parse(variable["expression"])
        checker = celcost.Checker(roots | {"variables": declared})
        kind = checker.check(tree).kind
        coster = celcost.Coster(checker, _Roots(roots | {"variables": declared}))
        cost = coster.cost(tree).max
        size = coster.compute_size(tree)
        uses = [name for name in variable_cost if f"variables.{name}" in variable["expression"]]
        variable_cost[variable["name"]] = cost + sum(variable_cost[n] for n in uses)
        declared.fields[variable["name"]] = celcost.DeclType(kind, size.max if size else 0, celcost.MIN_STRING_SIZE)
    total = 0
    for validation in vap["spec"]["validations"]:
        cost = _cost(validation["expression"], roots | {"variables": declared}, "bool")
        cost += sum(c for name, c in variable_cost.items() if f"variables.{name}" in validation["expression"])
        assert cost <= PER_CALL_LIMIT, (validation["expression"], cost)
        total += cost
    assert total <= RUNTIME_CEL_COST_BUDGET
    assert total > 0 and variable_cost  # the estimate saw the expressions and the variables


def test_the_cost_bound_is_live():
    """The same estimate catches an expression the API server would stop: a quadratic walk over every dataset pair
    of an unbounded list would be refused at runtime."""
    unbounded = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "datasets": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"uri": {"type": "string"}}},
                    }
                },
            }
        },
    }
    obj = celcost.schema_decl_type(unbounded, is_resource_root=True)
    cost = _cost(
        "object.spec.datasets.all(a, object.spec.datasets.all(b, a.uri == b.uri || a.uri.startsWith(b.uri)))",
        {"object": obj},
        "bool",
    )
    assert cost > PER_CALL_LIMIT


def test_operator_settings_are_the_policy_values():
    (deploy,) = by_kind(render(VALUES), "Deployment")
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    config = from_env(env)
    assert config.policy == dataclasses.replace(
        config.policy,
        allowed_image_prefixes=("registry.example/ml/",),
        require_queue=True,
        max_gpus_per_job=8,
        max_nodes_per_job=2,
        allowed_priority_classes=("training", "urgent"),
        output_uri_prefix="s3://ml-outputs/{namespace}",
        allowed_service_accounts=("ml-identity",),
    )
    assert config.trainer_image.startswith(TRAINER_IMAGE)


def test_the_documented_values_example_is_what_the_chart_takes():
    """docs/shared-cluster.md's complete example: the schema and lint accept it, it renders the admission policy,
    and the operator reads every rule of it."""
    text = (CHART.parents[1] / "docs" / "shared-cluster.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("# values-shared.yaml"))
    values = yaml.safe_load(block)
    report = helm.lint(str(CHART), values, strict=True)
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []
    vap, _ = admission_objects(values)
    documented = set(POLICY) - {"admissionPolicy"} | {"defaultQueue"}
    (deploy,) = by_kind(render(values), "Deployment")
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert set(values["policy"]) - {"admissionPolicy"} == documented  # every rule is shown
    config = from_env(env)
    assert config.policy.max_gpus_per_job == 16 and config.policy.default_queue == "team-gpus"
    assert config.trainer_image_pull_secrets == ("regcred",)
    # requireQueue is satisfied by defaultQueue: the API server leaves that to the operator
    assert not any("requireQueue" in v["message"] for v in vap["spec"]["validations"])
    refused = manifest({"resources": {"gpus": 8}, "nodes": 3, "output": {"uri": "s3://ml-outputs/"}})
    assert _rules(admit((vap, _), refused)) == _operator_verdict(values, refused) == {"maxGpusPerJob"}
