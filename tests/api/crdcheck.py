"""What the API server does with a FineTuneJob before storing it, done in Python for tests:
structural defaulting, strict field validation (as `kubectl apply` requests), the openAPIV3Schema
keywords (JSON Schema draft 4 semantics: boolean exclusiveMinimum), and the CEL rules, evaluated
with cel-python. Reusable by any test that needs "would the API server accept this?"."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "finetunejobs.kubetune.dev.yaml"


@functools.cache
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(node_schema: dict[str, Any], value: Any) -> Any:
    """Fill `default`s the way the API server does (recursively, into defaulted objects too)."""
    if isinstance(value, dict) and "properties" in node_schema:
        for name, prop in node_schema["properties"].items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(prop, value[name])
    elif isinstance(value, list) and "items" in node_schema:
        return [apply_defaults(node_schema["items"], item) for item in value]
    return value


def _strict(node: Any) -> Any:
    """Unknown fields become errors (kubectl's default --validate=strict)."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and node.get("type") == "object":
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(n) for n in node]
    return node


@functools.cache
def _validator() -> jsonschema.Draft4Validator:
    root = _strict(schema())
    root["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(root)


def schema_valid(obj: dict[str, Any]) -> bool:
    return _validator().is_valid(obj)


_ENV = celpy.Environment()


@functools.cache
def _program(rule: str):
    return _ENV.program(_ENV.compile(rule))


def cel_errors(node_schema: dict[str, Any], value: Any, old: Any = None, path: str = "") -> list[tuple[str, str]]:
    """(path, message) for every CEL rule that fails; transition rules only when `old` is given."""
    errors = []
    for rule in node_schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = _program(rule["rule"]).evaluate(activation)
        if isinstance(result, Exception) or not bool(result):
            errors.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict):
        for name, prop in node_schema.get("properties", {}).items():
            if name in value:
                child_old = old.get(name) if isinstance(old, dict) else None
                errors += cel_errors(prop, value[name], child_old, f"{path}.{name}")
    elif isinstance(value, list) and "items" in node_schema:
        for i, item in enumerate(value):
            errors += cel_errors(node_schema["items"], item, None, f"{path}[{i}]")
    return errors


def list_set_and_map_errors(node_schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Duplicates in x-kubernetes-list-type set and map lists, as the API server reports them (port of
    kubernetes staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype/validation.go)."""
    errors = []
    if isinstance(value, list):
        list_type = node_schema.get("x-kubernetes-list-type")
        if list_type in ("set", "map"):
            keys = node_schema.get("x-kubernetes-list-map-keys", [])
            seen = set()
            for i, item in enumerate(value):
                key = json.dumps(
                    {k: item[k] for k in keys if k in item} if list_type == "map" else item, sort_keys=True
                )
                if key in seen:
                    errors.append(f"{path}[{i}]: Duplicate value: {key}")
                seen.add(key)
        for i, item in enumerate(value):
            errors += list_set_and_map_errors(node_schema.get("items", {}), item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for name, item in value.items():
            child = node_schema.get("properties", {}).get(name, node_schema.get("additionalProperties"))
            if isinstance(child, dict):
                errors += list_set_and_map_errors(child, item, f"{path}.{name}" if path else name)
    return errors


def api_server_errors(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Everything the API server would refuse about this manifest (create, or update from `old`)."""
    obj = apply_defaults(schema(), copy.deepcopy(manifest))
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(obj)]
    duplicates = list_set_and_map_errors(schema(), obj)  # not a blocking error: CEL still runs
    if problems:  # CEL runs only on schema-valid objects
        return problems + duplicates
    old_obj = apply_defaults(schema(), copy.deepcopy(old)) if old is not None else None
    return duplicates + [f"{path.lstrip('.')}: {message}" for path, message in cel_errors(schema(), obj, old_obj)]
