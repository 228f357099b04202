"""The FineTuneJob schema: every bad manifest gets the exact field path and a useful message, from
`kubetune validate` (pydantic + rules) AND from the API server (CRD schema + CEL), and every valid
manifest round-trips through the model into a CRD-valid object."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from kubetune.api.rules import JOB_RULES, RULES
from kubetune.api.v1alpha1 import Affinity, FineTuneJob
from kubetune.api.validation import SpecError, check_manifest, notices, parse_spec
from tests.api import crdcheck
from tests.api.manifests import BAD, FULL_AFFINITY, GOOD, NOTICES, QUIET, base

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

# Checks the openAPI schema cannot express; `kubetune validate` and the operator still catch them.
PYTHON_ONLY = {
    "uri-model-hf-dataset": "RE2 has no look-ahead to exclude hf://datasets/ from model URIs",
    "memory-zero": "a quantity pattern cannot tell zero from positive",
    "pod-annotations-too-large": "CEL cannot sum over a map; only multi-byte text can pass the CRD's bounds and the "
    "256 KiB total (the operator refuses it before making a pod)",
}


def _unindexed(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


def _bad(mutation) -> dict:
    doc = base()
    mutation(doc)
    return doc


def test_base_manifest_is_valid():
    job, problems = check_manifest(base())
    assert problems == [] and job is not None
    assert crdcheck.api_server_errors(base()) == []


def test_there_are_at_least_40_distinct_bad_manifests():
    assert len({case[0] for case in BAD}) == len(BAD) >= 40


@pytest.mark.parametrize("case_id,mutation,path,fragment,cross", BAD, ids=[c[0] for c in BAD])
def test_bad_manifest_names_field_and_problem(case_id, mutation, path, fragment, cross):
    job, problems = check_manifest(_bad(mutation))
    assert job is None
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}; got {[str(p) for p in problems]}"
    assert any(fragment in p.message for p in matching), [str(p) for p in matching]


@pytest.mark.parametrize("case_id,mutation,path,fragment,cross", BAD, ids=[c[0] for c in BAD])
def test_api_server_rejects_bad_manifest(case_id, mutation, path, fragment, cross):
    errors = crdcheck.api_server_errors(_bad(mutation))
    if case_id in PYTHON_ONLY:
        assert errors == [], "now enforced by the CRD too: drop it from PYTHON_ONLY"
        return
    assert errors, "the CRD accepts a manifest kubetune validate rejects"
    if cross:  # a CEL rule with a fieldPath at (or above) the offending field
        assert any(_unindexed(path).startswith(_unindexed(e.split(":")[0])) for e in errors), errors


def test_every_cross_field_rule_is_exercised_by_a_bad_manifest():
    failing_rules = set()
    for _case_id, mutation, *_ in BAD:
        doc = crdcheck.apply_defaults(crdcheck.schema(), _bad(mutation))
        if not crdcheck.schema_valid(doc):  # the API server runs CEL on schema-valid objects only
            continue
        for node, value in ((crdcheck.schema(), doc), (crdcheck.schema()["properties"]["spec"], doc["spec"])):
            for rule in node["x-kubernetes-validations"]:
                if "oldSelf" in rule["rule"]:
                    continue
                if crdcheck.cel_errors({"x-kubernetes-validations": [rule]}, value):
                    failing_rules.add(rule["rule"])
    expected = {r.cel for r in RULES} | {r.cel for r in JOB_RULES}
    assert expected - failing_rules == set(), "rules no bad manifest triggers"


@pytest.mark.parametrize("case_id,mutation", GOOD, ids=[c[0] for c in GOOD])
def test_good_manifest_is_valid_for_kubetune_and_the_api_server(case_id, mutation):
    doc = _bad(mutation)
    job, problems = check_manifest(doc)
    assert problems == [], [str(p) for p in problems]
    assert crdcheck.api_server_errors(doc) == []
    # what the model writes back is the same job, and the API server takes it too
    wire = job.to_wire()
    assert crdcheck.api_server_errors(wire) == []
    assert FineTuneJob.model_validate(wire) == job


@pytest.mark.parametrize("case_id,mutation,path,fragment", NOTICES, ids=[c[0] for c in NOTICES])
def test_a_setting_that_will_not_take_effect_is_a_notice_not_a_problem(case_id, mutation, path, fragment):
    doc = _bad(mutation)
    job, problems = check_manifest(doc)
    assert problems == [] and crdcheck.api_server_errors(doc) == []
    found = [n for n in notices(job.spec) if n.path == path]
    assert any(fragment in n.message for n in found), [str(n) for n in notices(job.spec)]


@pytest.mark.parametrize("case_id,mutation", QUIET, ids=[c[0] for c in QUIET])
def test_settings_that_take_effect_and_unwritten_defaults_give_no_notice(case_id, mutation):
    job, problems = check_manifest(_bad(mutation))
    assert problems == []
    assert notices(job.spec) == []


def test_affinity_is_core_v1_affinity_field_for_field():
    """The typed affinity has exactly the fields of core/v1 Affinity (the kubernetes client's models, generated
    from the API server's OpenAPI), and what it writes the client reads as a V1Affinity, unknown fields refused."""
    from kubernetes import client

    wire = Affinity.model_validate(FULL_AFFINITY).to_wire()
    assert wire == FULL_AFFINITY
    client.V1Affinity.model_validate(wire)

    def fields(model) -> dict:  # wire name -> field (the client's models use snake_case names)
        return {f.alias or to_camel(name): f for name, f in model.model_fields.items()}

    def pairs(ours, theirs):
        yield ours, theirs
        for name, field in fields(ours).items():
            if (mine := _nested_model(field.annotation)) is not None:
                yield from pairs(mine, _nested_model(fields(theirs)[name].annotation))

    compared = 0
    for ours, theirs in pairs(Affinity, client.V1Affinity):
        assert set(fields(ours)) == set(fields(theirs)), (ours.__name__, theirs.__name__)
        compared += 1
    assert compared >= 12  # every nested type down to the selector requirements


def _nested_model(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid_for_kubetune_and_api_server(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs
    for doc in docs:
        job, problems = check_manifest(doc)
        assert problems == [], [str(p) for p in problems]
        assert crdcheck.api_server_errors(doc) == []


def test_examples_cover_every_technique_objective_and_multi_task():
    specs = [yaml.safe_load(p.read_text())["spec"] for p in EXAMPLES]
    techniques = {s["technique"] for s in specs}
    objectives = {s.get("objective", "causal-lm") for s in specs}
    from kubetune.api.constants import Objective, Technique

    assert techniques == {t.value for t in Technique}
    assert objectives == {o.value for o in Objective}
    assert any(len(s["datasets"]) > 1 and s.get("objective", "causal-lm") != "rlhf" for s in specs)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_round_trip_yaml_model_crd(path):
    doc = yaml.safe_load(path.read_text())
    job = FineTuneJob.model_validate(doc)
    wire = job.to_wire()
    # the model's output is a manifest the API server accepts and that parses back to the same job
    assert crdcheck.api_server_errors(wire) == []
    assert FineTuneJob.model_validate(yaml.safe_load(yaml.safe_dump(wire))) == job
    # Python defaults and CRD defaults agree: defaulting the user's manifest on the server gives the
    # same spec as the model's own defaults
    server_side = crdcheck.apply_defaults(crdcheck.schema(), copy.deepcopy(doc))
    assert FineTuneJob.model_validate(server_side).spec == job.spec
    assert _without_empty(server_side["spec"]) == _without_empty(wire["spec"])


def _without_empty(node):
    """Drop {} and [] values: the model writes empty defaults that the server leaves absent."""
    if isinstance(node, dict):
        return {k: _without_empty(v) for k, v in node.items() if v not in ({}, [])}
    if isinstance(node, list):
        return [_without_empty(v) for v in node]
    return node


def test_resolved_spec_fills_the_technique_and_objective_sections():
    doc = base()
    doc["spec"].pop("lora")
    spec = parse_spec(doc["spec"]).resolved()
    assert spec.lora is not None and spec.lora.rank == 16
    assert spec.quantization is None and spec.preference is None
    # resolving twice changes nothing, and the resolved spec is still valid
    assert spec.resolved() == spec
    assert parse_spec(spec.to_wire()) == spec


def test_parse_spec_raises_with_all_problems():
    doc = base()
    doc["spec"]["lora"]["rank"] = 0
    doc["spec"]["technique"] = "lora2"
    with pytest.raises(SpecError) as err:
        parse_spec(doc["spec"])
    paths = [p.path for p in err.value.problems]
    assert paths == ["spec.technique", "spec.lora.rank"]


def test_immutable_fields_are_rejected_on_update_and_suspend_is_editable():
    old = base()
    changed_model = copy.deepcopy(old)
    changed_model["spec"]["model"]["uri"] = "hf://other/model"
    errors = crdcheck.api_server_errors(changed_model, old=old)
    assert any(e.startswith("spec.model:") and "immutable" in e for e in errors), errors

    added_section = copy.deepcopy(old)
    added_section["spec"]["technique"] = "qlora"
    added_section["spec"]["quantization"] = {"bits": 8}
    errors = crdcheck.api_server_errors(added_section, old=old)
    assert any("cannot be added or removed" in e for e in errors) and any("spec.technique" in e for e in errors)

    for field, value in [
        ("suspend", True),
        ("backoffLimit", 7),
        ("activeDeadlineSeconds", 60),
        ("ttlSecondsAfterFinished", 5),
    ]:
        edited = copy.deepcopy(old)
        edited["spec"][field] = value
        assert crdcheck.api_server_errors(edited, old=old) == [], field

    assert crdcheck.api_server_errors(copy.deepcopy(old), old=old) == []  # re-apply: no-op


def test_every_crd_field_has_a_description_for_kubectl_explain():
    missing = []

    def walk(node: dict, path: str) -> None:
        for name, prop in node.get("properties", {}).items():
            # metadata may carry no description (see test_crd_metadata_specifies_only_name_and_generate_name)
            if not prop.get("description", "").strip() and f"{path}.{name}" != ".metadata":
                missing.append(f"{path}.{name}")
            walk(prop, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    root = crdcheck.schema()
    assert root.get("description")
    walk(root, "")
    assert missing == []


def test_crd_schema_is_structural():
    """The API server's structural-schema rules (apiextensions/v1): a type on every node (int-or-string is the
    one exception), no properties beside additionalProperties, junctors only in the int-or-string form,
    defaults and list-map keys consistent."""
    problems = []

    def walk(node: dict, path: str) -> None:
        if node.get("x-kubernetes-int-or-string"):
            if node.get("anyOf") != [{"type": "integer"}, {"type": "string"}] or "type" in node:
                problems.append(f"{path}: int-or-string must be anyOf integer|string without a type")
        elif "type" not in node:
            problems.append(f"{path}: no type")
        for junctor in ("allOf", "oneOf", "not"):
            if junctor in node:
                problems.append(f"{path}: {junctor} is not allowed here")
        if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: anyOf outside int-or-string")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                if key not in item.get("required", []) and "default" not in item["properties"][key]:
                    problems.append(f"{path}: list-map key {key} is neither required nor defaulted")
        for name, prop in node.get("properties", {}).items():
            walk(prop, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(crdcheck.schema(), "")
    assert problems == []


def test_crd_metadata_specifies_only_name_and_generate_name():
    """The API server's rule for metadata at a resource root (validateStructuralMetadataInvariants in kubernetes
    staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/validation.go): drop the name and
    generateName properties, type and default; anything left, a description included, is Forbidden:
    "must not specify anything other than name and generateName, but metadata is implicitly specified"."""
    metadata = dict(crdcheck.schema()["properties"]["metadata"])
    assert metadata.get("type") == "object"
    properties = metadata.pop("properties", {})
    assert set(properties) <= {"name", "generateName"}
    assert all(p.get("type") == "string" for p in properties.values())
    metadata.pop("type")
    metadata.pop("default", None)
    assert metadata == {}


def _early_stopping_cases():
    def ds(name, fmt, evaluated):
        return {"name": name, "uri": f"s3://data/{name}.jsonl", "format": fmt} | (
            {"evalFraction": 0.1} if evaluated else {}
        )

    for objective, fmt in (("instruction", "messages"), ("classification", "classification")):
        for evals in ((False,), (True,), (True, False), (True, True)):
            # "ab" names up to two datasets; a case here has one or two
            yield objective, [ds(n, fmt, e) for n, e in zip("ab", evals, strict=False)], None
    for reward_model in (None, "hf://org/rm"):
        for pref_evals in ((False,), (True,), (True, True)):
            for prompt_evals in ((False,), (True,), (False, True)):
                datasets = [ds(f"p{i}", "preference", e) for i, e in enumerate(pref_evals)]
                datasets += [ds(f"q{i}", "prompt", e) for i, e in enumerate(prompt_evals)]
                yield "rlhf", datasets, reward_model


EARLY_STOPPING_METRICS = [
    "eval_loss",
    "eval_accuracy",
    "eval_a_loss",
    "eval_b_accuracy",
    "eval_p0_loss",
    "eval_q1_loss",
]


def test_early_stopping_python_and_cel_agree_on_every_arrangement_of_evaluation_data():
    """Which metrics a run reports depends on the objective, how many datasets each trainer reads and which
    carry evaluation data: `kubetune validate` and the API server must draw the same line everywhere."""
    spec_rules = [
        rule for rule in crdcheck.schema()["properties"]["spec"]["x-kubernetes-validations"]
        if rule.get("fieldPath", "").startswith(".evaluation.earlyStopping")
    ]  # fmt: skip
    assert len(spec_rules) == 2
    refused = accepted = 0
    for objective, datasets, reward_model in _early_stopping_cases():
        for metric in EARLY_STOPPING_METRICS:
            doc = base()
            doc["spec"] |= {
                "objective": objective,
                "datasets": datasets,
                "evaluation": {"earlyStopping": {"metric": metric}},
            }
            if objective == "rlhf":
                doc["spec"]["rlhf"] = {"rewardModel": {"uri": reward_model}} if reward_model else {}
            if objective == "classification":
                doc["spec"]["classification"] = {}
            job, problems = check_manifest(doc)
            python = {p.path for p in problems}
            assert python <= {"spec.evaluation.earlyStopping", "spec.evaluation.earlyStopping.metric"}, problems
            server_side = crdcheck.apply_defaults(crdcheck.schema(), copy.deepcopy(doc))
            cel = {"spec" + path for path, _ in crdcheck.cel_errors({"x-kubernetes-validations": spec_rules},
                                                                    server_side["spec"])}  # fmt: skip
            assert python == cel, (doc["spec"], problems, cel)
            refused += bool(problems)
            accepted += not problems
    assert refused > 100 and accepted > 15  # both sides of the line are exercised
