"""The API server's validation of what is written, in part, for the test API server (emulator.py): the rules
that decide whether an object the operator makes, or a status it writes, is stored or refused.

- Custom resources: the structural schema's bounds, as the apiextensions-apiserver enforces them on every write
  (kubernetes/apiextensions-apiserver pkg/apiserver/validation/validation.go kubeOpenAPIResultToFieldErrors, over
  kubernetes/kube-openapi pkg/validation/validate: maxLength counts characters (utf8.RuneCount), maxItems,
  maxProperties; list entries are named `[i]`). Not the rest of the schema (types, enums, patterns, CEL): tests
  that need those run them on their own (tests/api).
- Every object: ObjectMeta, as kubernetes/apimachinery pkg/api/validation/objectmeta.go ValidateObjectMeta has it
  (the name by the kind's rule, label keys and values, the total size of the annotations), and a Job's pod
  template labels (pkg/apis/batch/validation ValidateJob -> ValidatePodTemplateSpec). A Service's name is a
  DNS-1035 label (pkg/apis/core/validation ValidateServiceName), a Namespace's a DNS-1123 label, Role and
  RoleBinding names path segments, most others DNS-1123 subdomains.

Refusals are 422 Invalid with the causes and the message that k8s.io/apimachinery pkg/api/errors NewInvalid
builds from field errors (pkg/util/validation/field/errors.go: "Too long: may not be more than N bytes",
"Too many: M: must have at most N items", "Invalid value: ...").
"""

from __future__ import annotations

import json
from typing import Any

from kubetune.api import k8s_validation as k8s


class Invalid(Exception):
    """What NewInvalid makes of a list of field errors: (field, reason, message) causes."""

    def __init__(self, kind: str, group: str, name: str, causes: list[dict]):
        self.causes = causes
        qualified = f"{kind}.{group}" if group else kind
        errors = [f"{c['field']}: {c['message']}" for c in causes]
        unique = list(dict.fromkeys(errors))
        text = unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"
        self.message = f'{qualified} "{name}" is invalid: {text}'
        self.details = {"name": name, "group": group, "kind": kind, "causes": causes}
        super().__init__(self.message)


def _quoted(value: Any) -> str:
    # field.Error's ErrorBody: strings quoted as Go's %q, other values as JSON
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def too_long(field: str, limit: int) -> dict:
    unit = "byte" if limit == 1 else "bytes"
    return {"reason": "FieldValueTooLong", "field": field, "message": f"Too long: may not be more than {limit} {unit}"}


def too_many(field: str, actual: int, limit: int) -> dict:
    unit = "item" if limit == 1 else "items"
    return {
        "reason": "FieldValueTooMany",
        "field": field,
        "message": f"Too many: {actual}: must have at most {limit} {unit}",
    }


def invalid(field: str, value: Any, detail: str) -> dict:
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {_quoted(value)}: {detail}"}


# ------------------------------------------------------------------------------------------ custom resources


def bound_causes(value: Any, schema: dict | None, path: str) -> list[dict]:
    """Where `value` breaks its schema's maxLength, maxItems or maxProperties, as field errors."""
    if not schema:
        return []
    causes = []
    if isinstance(value, str):
        limit = schema.get("maxLength")
        if limit is not None and len(value) > limit:
            causes.append(too_long(path, limit))
    elif isinstance(value, list):
        limit = schema.get("maxItems")
        if limit is not None and len(value) > limit:
            causes.append(too_many(path, len(value), limit))
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                causes += bound_causes(item, items, f"{path}[{index}]")
    elif isinstance(value, dict):
        limit = schema.get("maxProperties")
        if limit is not None and len(value) > limit:
            causes.append(too_many(path, len(value), limit))
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            child = properties.get(key, extra if isinstance(extra, dict) else None)
            causes += bound_causes(item, child, f"{path}.{key}" if path else key)
    return causes


def custom_resource_causes(obj: dict, schema: dict | None, status_only: bool) -> list[dict]:
    """A write of a custom resource: of the status subresource (its status is what is written), or of the object
    (everything but the status, which such a write cannot change)."""
    if not schema:
        return []
    if status_only:
        return bound_causes(obj.get("status"), (schema.get("properties") or {}).get("status"), "status")
    return bound_causes({k: v for k, v in obj.items() if k != "status"}, schema, "")


# ------------------------------------------------------------------------------------------ object metadata

_NAME_RULES = {
    ("", "namespaces"): k8s.is_dns1123_label,
    ("", "services"): k8s.is_dns1035_label,
    ("", "events"): None,
    ("rbac.authorization.k8s.io", "roles"): None,  # path segment names, checked by the URL already
    ("rbac.authorization.k8s.io", "rolebindings"): None,
}


def _label_causes(labels: Any, path: str) -> list[dict]:
    causes = []
    for key, value in (labels or {}).items():
        for detail in k8s.is_qualified_name(key):
            causes.append(invalid(path, key, detail))
        for detail in k8s.is_label_value(value if isinstance(value, str) else ""):
            causes.append(invalid(path, value, detail))
    return causes


def metadata_causes(group: str, plural: str, obj: dict) -> list[dict]:
    """ValidateObjectMeta's findings for an object of the resource `plural` in `group`."""
    meta = obj.get("metadata") or {}
    causes = []
    rule = _NAME_RULES.get((group, plural), k8s.is_dns1123_subdomain)
    if rule is not None and meta.get("name"):
        causes += [invalid("metadata.name", meta["name"], detail) for detail in rule(meta["name"])]
    causes += _label_causes(meta.get("labels"), "metadata.labels")
    annotations = meta.get("annotations") or {}
    size = sum(len(k) + len(v) for k, v in annotations.items() if isinstance(v, str))
    if size > k8s.TOTAL_ANNOTATION_SIZE_LIMIT:
        causes.append(too_long("metadata.annotations", k8s.TOTAL_ANNOTATION_SIZE_LIMIT))
    if (group, plural) == ("batch", "jobs"):
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        causes += _label_causes(template.get("labels"), "spec.template.metadata.labels")
    return causes
