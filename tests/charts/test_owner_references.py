"""The operator's RBAC against the OwnerReferencesPermissionEnforcement admission plugin (enabled by
default in OpenShift): every child the operator creates carries an ownerReference to its FineTuneJob
with blockOwnerDeletion=true, and the plugin refuses such a create unless its author may

- `delete` the object it creates, and
- `update` the owner's `finalizers` subresource (`finetunejobs/finalizers`) in that namespace.

Ported from kubernetes plugin/pkg/admission/gc/gc_admission.go (Admit, isChangingOwnerReference,
newBlockingOwnerDeletionRefs, ownerRefToDeleteAttributeRecords: verb "update", subresource "finalizers"),
with the RBAC authorizer's rule matching from kubernetes pkg/apis/rbac/v1/evaluation_helpers.go
(VerbMatches, APIGroupMatches, ResourceMatches, ResourceNameMatches) and the RESTMapper's kind-to-resource
guess from apimachinery pkg/api/meta/restmapper.go (UnsafeGuessKindToResource). The rules checked are the
ones the chart installs (its Role/ClusterRole embed exactly `generate.operator_rules()`, see test_chart.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kubetune import generate
from kubetune.controller import builders
from kubetune.controller.config import OperatorConfig
from tests.controller.samples import LORA_TEXT_SPEC

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds" / "finetunejobs.kubetune.dev.yaml").read_text())

CONFIG = OperatorConfig(
    trainer_image="img:1", default_output_uri="s3://out/", report_interval_seconds=5, grace_seconds=60
)
FTJ = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": 1},
}
SPEC = LORA_TEXT_SPEC | {"nodes": 2}  # a multi-node job also gets its workers' Service


@dataclass(frozen=True)
class Request:
    """authorizer.AttributesRecord, the fields RBAC reads."""

    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str
    name: str


def _rule_allows(rule: dict, request: Request) -> bool:
    """rbac/v1 evaluation_helpers: verb, group, resource (with `*/subresource`) and resourceNames."""
    combined = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
    verb = any(v in ("*", request.verb) for v in rule.get("verbs", []))
    group = any(g in ("*", request.api_group) for g in rule.get("apiGroups", []))
    resource = any(
        r in ("*", combined) or (request.subresource and r == f"*/{request.subresource}")
        for r in rule.get("resources", [])
    )
    names = not rule.get("resourceNames") or request.name in rule["resourceNames"]
    return verb and group and resource and names


def authorize(rules: list[dict], request: Request) -> bool:
    return any(_rule_allows(rule, request) for rule in rules)


def guess_resource(kind: str) -> str:
    """meta.UnsafeGuessKindToResource: the lowercase plural the RESTMapper falls back on."""
    singular = kind.lower()
    if singular.endswith("s"):
        return singular + "es"
    if singular.endswith("y"):
        return singular[:-1] + "ies"
    return singular + "s"


def rest_mapping(api_version: str, kind: str) -> str:
    """The resource a kind is served as: the CRD's plural for FineTuneJob, else the built-in guess."""
    group = api_version.rpartition("/")[0]
    names = CRD["spec"]["names"]
    if group == CRD["spec"]["group"] and kind == names["kind"]:
        return names["plural"]
    return guess_resource(kind)


def admit_create(obj: dict, rules: list[dict]) -> str | None:
    """gcPermissionsEnforcement.Admit for a create (no old object): None if admitted, else the refusal."""
    meta = obj["metadata"]
    refs = meta.get("ownerReferences") or []
    if not refs:  # isChangingOwnerReference: nothing to check
        return None
    group = obj["apiVersion"].rpartition("/")[0]
    own = Request("delete", group, rest_mapping(obj["apiVersion"], obj["kind"]), "", meta["namespace"], meta["name"])
    if not authorize(rules, own):
        return f"cannot set an ownerRef on a resource you can't delete: {own}"
    for ref in refs:
        if ref.get("blockOwnerDeletion") is not True:
            continue
        owner_group = ref["apiVersion"].rpartition("/")[0]
        finalizers = Request(
            "update",
            owner_group,
            rest_mapping(ref["apiVersion"], ref["kind"]),
            "finalizers",
            meta["namespace"],
            ref["name"],
        )
        if not authorize(rules, finalizers):
            return (
                "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set "
                f"finalizers on: {finalizers}"
            )
    return None


def created_children() -> list[dict]:
    spec = builders.resolve_spec(SPEC, CONFIG)
    return builders.build_support_objects(FTJ, spec) + [builders.build_job(FTJ, spec, CONFIG, suspend=False)]


def owned_children() -> list[dict]:
    """All but the reporter's token Secret, which goes with its account (the token controller deletes it) and has no
    ownerReference: setting one would take a right to delete Secrets."""
    return [child for child in created_children() if child["kind"] != "Secret"]


def test_every_child_blocks_its_owners_deletion():
    children = owned_children()
    kinds = {c["kind"] for c in children}
    assert kinds == {"ServiceAccount", "ConfigMap", "Service", "Role", "RoleBinding", "Job"}
    for child in children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["blockOwnerDeletion"] is True and ref["kind"] == "FineTuneJob"
    [secret] = [child for child in created_children() if child["kind"] == "Secret"]
    assert "ownerReferences" not in secret["metadata"]


@pytest.mark.parametrize("mode", ["namespaced", "cluster"])
def test_the_admission_plugin_admits_every_child_the_operator_creates(mode):
    rules = generate.operator_rules()
    granted = rules["namespaced"] + (rules["cluster"] if mode == "cluster" else [])
    refused = {child["kind"]: admit_create(child, granted) for child in created_children()}
    assert {kind: why for kind, why in refused.items() if why} == {}


def test_without_the_finalizers_grant_every_create_is_refused():
    """The rule bites: the same rules minus `update finetunejobs/finalizers` (the chart before the grant)."""
    rules = [r for r in generate.operator_rules()["namespaced"] if r["resources"] != ["finetunejobs/finalizers"]]
    assert len(rules) == len(generate.operator_rules()["namespaced"]) - 1
    for child in owned_children():
        assert "can't set finalizers on" in admit_create(child, rules), child["kind"]


def test_rbac_rule_matching_follows_kubernetes():
    request = Request("update", "kubetune.dev", "finetunejobs", "finalizers", "team-a", "bot")
    assert authorize([{"apiGroups": ["kubetune.dev"], "resources": ["*/finalizers"], "verbs": ["update"]}], request)
    assert authorize([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], request)
    assert not authorize([{"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs"], "verbs": ["*"]}], request)
    assert not authorize(
        [
            {
                "apiGroups": ["kubetune.dev"],
                "resources": ["finetunejobs/finalizers"],
                "verbs": ["update"],
                "resourceNames": ["other"],
            }
        ],
        request,
    )
    assert guess_resource("NetworkPolicy") == "networkpolicies" and guess_resource("Ingress") == "ingresses"
