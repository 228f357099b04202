"""The CRD's CEL rules fit kube-apiserver's cost limits, by the API server's own estimate (ported in
celcost.py). The port is checked against the expected costs of kubernetes'
staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel/compilation_test.go
(TestCostEstimation: each rule on a schema without bounds, then with them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.api import celcost
from tests.api.crdcheck import crd

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = "crds/finetunejobs.kubetune.dev.yaml"


# -- schemas shaped like compilation_test.go's generators (genArrayWithRule, genMapWithRule, ...)


def _scalar(kind: str) -> dict:
    if kind == "int-or-string":
        return {"x-kubernetes-int-or-string": True}
    if kind in ("duration", "date", "date-time"):
        return {"type": "string", "format": kind}
    return {"type": kind}


def _bounded(schema: dict, key: str, bound: int | None) -> dict:
    return schema if bound is None else dict(schema, **{key: bound})


def array_of(kind: str):
    return lambda bound: _bounded({"type": "array", "items": _scalar(kind)}, "maxItems", bound)


def map_of(kind: str):
    return lambda bound: _bounded({"type": "object", "additionalProperties": _scalar(kind)}, "maxProperties", bound)


def string(bound):
    return _bounded({"type": "string"}, "maxLength", bound)


def enum_string(*values: str):
    return lambda bound: _bounded({"type": "string", "enum": list(values)}, "maxLength", bound)


OBJECT = {
    "type": "object",
    "properties": {"required": {"type": "string"}, "optional": {"type": "string"}},
    "required": ["required"],
}


def array_of_objects(bound):
    return _bounded({"type": "array", "items": OBJECT}, "maxItems", bound)


def array_of_arrays(bound):
    return _bounded({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, "maxItems", bound)


def array_of_number_maps(bound):
    number_map = {"type": "object", "additionalProperties": {"type": "number"}}
    return _bounded({"type": "array", "items": number_map}, "maxItems", bound)


def map_of_strings_sized(bound):  # genNestedSpecWithRule: the bound caps both the map and its strings
    return _bounded({"type": "object", "additionalProperties": string(bound)}, "maxProperties", bound)


def nested_all_bounded(bound):  # genAllMaxNestedSpecWithRootRule
    inner = _bounded(OBJECT, "maxProperties", bound)
    return _bounded(
        {"type": "array", "items": _bounded({"type": "object", "additionalProperties": inner}, "maxProperties", bound)},
        "maxItems",
        bound,
    )


def nested_one_bounded(bound):  # genOneMaxNestedSpecWithRootRule
    object_map = {"type": "object", "additionalProperties": OBJECT}
    return {"type": "array", "items": _bounded(object_map, "maxProperties", bound)}


def map_of_custom(item: dict):
    return lambda bound: _bounded({"type": "object", "additionalProperties": item}, "maxProperties", bound)


NUMBER_MAP = {"type": "object", "additionalProperties": {"type": "number"}}
NUMBER_ARRAY = {"type": "array", "items": {"type": "number"}}

# (name, schema generator, rule, cost without bounds, bound, cost with the bound); 0 = upstream checks nothing
UPSTREAM = [
    ("number array with all", array_of("number"), "self.all(x, true)", 4718591, 10, 32),
    ("string array with all", array_of("string"), "self.all(x, true)", 3145727, 20, 62),
    ("boolean array with all", array_of("boolean"), "self.all(x, true)", 1887437, 5, 17),
    ("array of number arrays with all", array_of_arrays, "self.all(x, true)", 3145727, 100, 302),
    ("array of objects with all", array_of_objects, "self.all(x, true)", 555128, 50, 152),
    ("map of numbers with all", map_of("number"), "self.all(x, true)", 1348169, 10, 32),
    ("map of strings with all", map_of("string"), "self.all(x, true)", 1179647, 3, 11),
    ("map of booleans with all", map_of("boolean"), "self.all(x, true)", 943718, 100, 302),
    ("string with contains", string, "self.contains('test')", 314574, 10, 5),
    ("string with startsWith", string, "self.startsWith('test')", 2, 15, 2),
    ("string with endsWith", string, "self.endsWith('test')", 2, 30, 2),
    ("concat string", string, 'size(self + "hello") > size("hello")', 314578, 4, 7),
    ("index of array with numbers", array_of("number"), "self[1] == 0.0", 2, 5000, 2),
    ("index of array with strings", array_of("string"), "self[1] == self[1]", 314577, 8, 314577),
    ("O(n^2) loop with numbers", array_of("number"), "self.all(x, self.all(y, true))", 0, 10, 352),
    ("O(n^3) loop with numbers", array_of("number"), "self.all(x, self.all(y, self.all(z, true)))", 0, 10, 3552),
    ("regex matches simple", string, 'self.matches("x")', 314574, 50, 22),
    ("regex matches empty string", string, '"".matches("(((((((((())))))))))[0-9]")', 7, 10, 7),
    ("regex matches empty regex", string, 'self.matches("")', 1, 100, 1),
    ("map of strings with value length", map_of_strings_sized, "self.all(x, x.contains(self[x]))", 2752507, 10, 72),
    ("set array maxLength to zero", array_of("number"), "self[3] == 0.0", 2, 0, 2),
    ("set map maxLength to zero", map_of("number"), 'self["x"] == 0.0', 2, 0, 2),
    ("set string maxLength to zero", string, 'self == "x"', 2, 0, 1),
    ("set maxLength greater than estimated maxLength", array_of("number"), "self.all(x, x == 0.0)",
     6291454, 3 * 1024 * 2048, 25165826),
    ("nested types with root rule with all supporting maxLength", nested_all_bounded,
     'self.all(x, x["y"].required == "z")', 7340027, 10, 72),
    ("nested types with root rule with one supporting maxLength", nested_one_bounded,
     'self.all(x, x["y"].required == "z")', 7340027, 10, 7340027),
    ("int-or-string array with all", array_of("int-or-string"), "self.all(x, true)", 4718591, 10, 32),
    ("index of array with int-or-strings", array_of("int-or-string"), "self[0] == 5", 3, 10, 3),
    ("index of array with booleans", array_of("boolean"), "self[0] == false", 2, 25, 2),
    ("index of array of objects", array_of_objects, "self[0] == null", 2, 422, 2),
    ("index of array of array of numnbers", array_of_arrays, "self[0][0] == -1.0", 3, 51, 3),
    ("array of number maps with all", array_of_number_maps, "self.all(x, x.y == 25.2)", 6291452, 12, 74),
    ("index of array of number maps", array_of_number_maps, "self[0].x > 2.0", 4, 3000, 4),
    ("duration array with all", array_of("duration"), "self.all(x, true)", 2359295, 5, 17),
    ("date array with all", array_of("date"), "self.all(x, true)", 725936, 15, 47),
    ("date-time array with all", array_of("date-time"), "self.all(x, true)", 428963, 25, 77),
    ("map of int-or-strings with all", map_of("int-or-string"), "self.all(x, true)", 1348169, 15, 47),
    ("map of objects with all", map_of_custom(OBJECT), "self.all(x, true)", 428963, 20, 62),
    ("map of number maps with all", map_of_custom(NUMBER_MAP), "self.all(x, true)", 1179647, 10, 32),
    ("map of number arrays with all", map_of_custom(NUMBER_ARRAY), "self.all(x, true)", 1179647, 25, 77),
    ("map of durations with all", map_of("duration"), "self.all(x, true)", 1048577, 5, 17),
    ("map of dates with all", map_of("date"), "self.all(x, true)", 524288, 10, 32),
    ("map of date-times with all", map_of("date-time"), "self.all(x, true)", 349526, 25, 77),
    ("check cost of size call", map_of("integer"), "oldSelf.size() == self.size()", 5, 10, 5),
    ("check cost of timestamp comparison", map_of("date-time"), 'self["a"] == self["b"]', 8, 7, 8),
    ("check cost of duration comparison", map_of("duration"), 'self["c"] == self["d"]', 8, 42, 8),
    ("enums with maxLength equals to the longest possible value", enum_string("A", "B", "C", "LongValue"),
     "self.contains('A')", 2, 1000, 401),
]  # fmt: skip


def _cost(schema: dict, rule: str) -> int:
    return celcost.estimate_cost(rule, celcost.schema_decl_type(schema)).max


@pytest.mark.parametrize(
    "name,generator,rule,unbounded_cost,bound,bounded_cost", UPSTREAM, ids=[c[0] for c in UPSTREAM]
)
def test_port_gives_the_api_servers_estimates(name, generator, rule, unbounded_cost, bound, bounded_cost):
    if unbounded_cost:
        assert _cost(generator(None), rule) == unbounded_cost
    else:  # upstream only asserts these are over the limit
        assert _cost(generator(None), rule) > celcost.STATIC_ESTIMATED_COST_LIMIT
    assert _cost(generator(bound), rule) == bounded_cost


def _crd_with(spec_schema: dict) -> dict:
    root = {"type": "object", "properties": {"spec": spec_schema}}
    return {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": root}}]}}


UNIQUE_LABELS = "self.labels.all(l, self.labels.exists_one(m, m == l))"


def test_an_unbounded_quadratic_rule_is_refused_and_bounds_make_it_fit():
    labels = {"type": "array", "items": {"type": "string", "maxLength": 63}}
    spec = {"type": "object", "properties": {"labels": labels}, "x-kubernetes-validations": [{"rule": UNIQUE_LABELS}]}
    errors = celcost.crd_cost_errors(_crd_with(spec))
    assert errors and errors[0].startswith(
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Forbidden: "
        "estimated rule cost exceeds budget by factor of more than 100x"
    ), errors
    labels["maxItems"] = 64
    assert celcost.crd_cost_errors(_crd_with(spec)) == []


def test_a_rule_under_a_list_runs_once_per_item():
    item = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"],
            "x-kubernetes-validations": [{"rule": "self.name.startsWith('a')"}]}  # fmt: skip
    spec = {"type": "object", "properties": {"items": {"type": "array", "items": item}}}
    (rule,) = celcost.schema_rule_costs(_crd_with(spec)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    # unbounded list: as many items as fit in a request; the API server counts an item as {} (2), the required
    # field's name (4), an empty string (2) and 4 bytes of quotes, colon and comma, then one more comma
    assert rule.cardinality == celcost.MAX_REQUEST_SIZE_BYTES // (2 + 4 + 2 + 4 + 1)
    assert rule.cost == rule.max_cost * rule.cardinality
    spec["properties"]["items"]["maxItems"] = 5
    (rule,) = celcost.schema_rule_costs(_crd_with(spec)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert rule.cardinality == 5


def test_unknown_cel_is_refused_rather_than_guessed():
    with pytest.raises(celcost.UnsupportedCel, match="not ported"):
        _cost({"type": "string"}, "self.lowerAscii() == 'a'")


def test_every_rule_of_the_crd_fits_the_api_servers_limits():
    costs = celcost.schema_rule_costs(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert len(costs) >= 40  # every rule was estimated, none skipped
    over = [f"{c.path}: {c.cost}" for c in costs if c.cost > celcost.STATIC_ESTIMATED_COST_LIMIT]
    assert over == []
    assert celcost.crd_cost_errors(crd()) == []
    total = sum(c.cost for c in costs)
    assert total < celcost.STATIC_ESTIMATED_CRD_COST_LIMIT / 10, "keep room for rules still to come"


def test_the_crd_as_it_was_before_the_bounds_is_refused():
    """The CRD of 4c2e054 carried a quadratic uniqueness rule over classification.labels without maxItems."""
    try:
        old = subprocess.run(
            ["git", "show", f"4c2e054:{CRD_PATH}"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"commit 4c2e054 is not in this checkout (shallow clone?): {err}")
    errors = celcost.crd_cost_errors(yaml.safe_load(old.stdout))
    assert any("x-kubernetes-validations" in e and "estimated rule cost exceeds budget" in e for e in errors), errors
    assert any(e.startswith("^: Forbidden: total CRD cost exceeds budget") for e in errors), errors


def test_every_string_list_and_map_of_the_crd_is_bounded():
    """Without a bound the API server assumes the largest value a 3 MiB request can hold."""
    unbounded = []

    def walk(node: dict, path: str) -> None:
        if node.get("x-kubernetes-int-or-string"):
            if "pattern" not in node and "maxLength" not in node:
                unbounded.append(f"{path}: int-or-string without a pattern or maxLength")
            return
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node:
            unbounded.append(f"{path}: string without maxLength")
        if kind == "array" and "maxItems" not in node:
            unbounded.append(f"{path}: array without maxItems")
        if kind == "object" and isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            unbounded.append(f"{path}: map without maxProperties")
        for name, prop in (node.get("properties") or {}).items():
            walk(prop, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}[]" if key == "items" else f"{path}{{}}")

    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    walk(root["properties"]["spec"], "spec")
    walk(root["properties"]["status"], "status")
    assert unbounded == []
