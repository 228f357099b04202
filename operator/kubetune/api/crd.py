"""Generate the FineTuneJob CustomResourceDefinition from the pydantic schema.

The pydantic JSON schema is turned into a structural openAPIV3Schema: $refs inlined, optionals
unwrapped (Kubernetes omits unset fields rather than storing null), JSON-Schema-2020 bounds rewritten
in the OpenAPI v3.0 form, and the cross-field CEL rules and immutability rules attached.
`kubetune crd` prints it; `crds/finetunejobs.kubetune.dev.yaml` is its checked-in output.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune.api.constants import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from kubetune.api.rules import JOB_RULES, RULES
from kubetune.api.v1alpha1 import DNS_LABEL_PATTERN, MAX_NAME_LENGTH, FineTuneJob

# Spec fields a user may change after creation; everything else is immutable (a changed model,
# dataset or technique is a different run: create a new FineTuneJob).
MUTABLE_SPEC_FIELDS = ("suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")
IMMUTABLE_MESSAGE = "is immutable once the FineTuneJob exists; create a new FineTuneJob to change it"

# Sections that are always present (so CEL rules can read their defaulted fields).
DEFAULTED_SECTIONS = ("hyperparameters", "evaluation", "output", "resources")

# The longest name the API server accepts for any object (a DNS subdomain). Declaring it bounds what the
# CEL rule on metadata.name may cost; the rule itself keeps names to MAX_NAME_LENGTH.
MAX_OBJECT_NAME_LENGTH = 253

PRINTER_COLUMNS = [
    {"name": "Technique", "type": "string", "jsonPath": ".spec.technique"},
    {"name": "Objective", "type": "string", "jsonPath": ".spec.objective"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Percent of steps done",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.loss"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "priority": 1},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        if "description" in node:  # the field's description beats the type's docstring
            target.pop("description", None)
        target.update(node)
        node = target
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"not structural: a union of {options}")
        inner = _structural(options[0], defs)
        inner.update({k: v for k, v in node.items() if k not in ("default",) or v is not None})
        node = inner
    node.pop("title", None)
    if "const" in node:  # a one-value Literal; OpenAPI v3.0 (and so the API server) knows only enum
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        node.pop("default")
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[inclusive] = node.pop(bound)
            node[bound] = True
    if node.get("type") == "string" and "enum" in node and "maxLength" not in node:
        node["maxLength"] = max(len(str(v)) for v in node["enum"])  # what newer API servers assume anyway
    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
        node.pop("additionalProperties", None)  # unknown fields are pruned (and kubectl rejects them)
    elif node.get("type") == "object" and "additionalProperties" in node:
        node["additionalProperties"] = _structural(node["additionalProperties"], defs)
        node.pop("propertyNames", None)  # not in Kubernetes' schema dialect; the pydantic model checks keys
    if "items" in node:
        node["items"] = _structural(node["items"], defs)
    return _ordered(node)


_KEY_ORDER = ("type", "description", "default", "enum", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def _unbounded(node: dict[str, Any], path: str) -> list[str]:
    """Strings, lists and maps without a bound: the API server would assume each fills a 3 MiB request."""
    found = []
    kind = node.get("type")
    if kind == "string" and "maxLength" not in node:
        found.append(f"{path}: a string needs max_length")
    if kind == "array" and "maxItems" not in node:
        found.append(f"{path}: a list needs max_length")
    if kind == "object" and isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
        found.append(f"{path}: a map needs max_length")
    for name, prop in node.get("properties", {}).items():
        found += _unbounded(prop, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += _unbounded(node[key], f"{path}[]" if key == "items" else f"{path}{{}}")
    return found


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Stable, readable key order: type and description first, nested schemas last."""
    first = {k: node[k] for k in _KEY_ORDER if k in node}
    last = {k: node[k] for k in ("properties", "items", "additionalProperties", "required") if k in node}
    middle = {k: v for k, v in node.items() if k not in first and k not in last}
    return first | middle | last


def _spec_schema(raw: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    spec = _structural(raw, defs)
    props = spec["properties"]
    for name in DEFAULTED_SECTIONS:
        props[name]["default"] = {}
    required = set(spec.get("required", []))
    optional_immutable = []
    for name, prop in props.items():
        if name in MUTABLE_SPEC_FIELDS:
            continue
        prop.setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": IMMUTABLE_MESSAGE}
        )
        if name not in required and "default" not in prop:
            optional_immutable.append(name)
    rules = [{"rule": r.cel, "message": r.message, "fieldPath": r.field_path} for r in RULES]
    rules.append(
        {
            "rule": " && ".join(f"has(self.{n}) == has(oldSelf.{n})" for n in optional_immutable),
            "message": "sections cannot be added or removed once the FineTuneJob exists "
            f"({', '.join(optional_immutable)})",
        }
    )
    spec["x-kubernetes-validations"] = rules
    return spec


def openapi_schema() -> dict[str, Any]:
    raw = FineTuneJob.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    props = raw["properties"]
    spec = _spec_schema(defs["Spec"], defs)
    status = _structural({"$ref": "#/$defs/Status"}, defs)
    status["description"] = props["status"]["description"]
    # Applied when the object is read back from etcd (a create never stores a status), so a job the
    # operator has not answered yet reads observedGeneration 0 < generation: kstatus, Flux and Argo CD see
    # it in progress instead of taking a status-less object for a finished one.
    status["default"] = {"observedGeneration": 0}
    spec["description"] = props["spec"]["description"]
    unbounded = _unbounded(spec, "spec") + _unbounded(status, "status")
    if unbounded:
        raise ValueError("unbounded fields in the API model: " + "; ".join(unbounded))
    name = {"type": "string", "maxLength": MAX_OBJECT_NAME_LENGTH}
    return {
        "type": "object",
        "description": "A declarative LLM fine-tuning run: base model, datasets, technique and objective, "
        "and where the results go. The kubetune operator runs it as a GPU training Job and reports progress here.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubetune.dev/v1alpha1."},
            "kind": {"type": "string", "description": "FineTuneJob."},
            # The API server allows nothing on metadata but its type and the name and generateName
            # properties (not even a description); kubectl explain documents ObjectMeta itself.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": dict(name, description="Name of the job; its child objects are named after it."),
                    "generateName": dict(name, description="Prefix of a name the API server completes."),
                },
            },
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && "
                f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
                "message": f"metadata.name must be a DNS label of at most {MAX_NAME_LENGTH} characters "
                "(child Jobs, Services and pods are named after it)",
            },
            *[{"rule": r.cel, "message": r.message, "fieldPath": r.field_path} for r in JOB_RULES],
        ],
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "kubetune"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["kubetune"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `kubetune crd` from operator/kubetune/api/v1alpha1.py. Do not edit by hand.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)
