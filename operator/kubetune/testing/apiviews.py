"""What a Kubernetes API server says about its resources, for the test API emulator (emulator.py): discovery
documents (legacy and aggregated), OpenAPI v2 and v3 built from a CRD, Table views (kubectl's columns), and
the pruning of fields that a CRD's schema does not declare.

Ported from Kubernetes 1.32 (the kubectl release these tests run); each part names the upstream file it follows.
Built-in kinds have no schemas here (the emulator validates none): their group versions appear in OpenAPI v3
with their paths and operations only, which is what kubectl reads to choose server-side field validation.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import gzip
import hashlib
import importlib.resources
import json
import math
import re
import struct
from decimal import Decimal
from typing import Any

# ------------------------------------------------------------------------------------------ durations


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery pkg/util/duration/duration.go HumanDuration: the Age column's text."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return f"{minutes}m{whole % 60}s" if whole % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def age(timestamp: Any) -> str:
    """k8s.io/apimachinery pkg/api/meta/table/table.go ConvertToHumanReadableDateType."""
    when = parse_time(timestamp)
    if when is None:
        return "<unknown>" if not timestamp else "<invalid>"
    return human_duration((dt.datetime.now(dt.UTC) - when).total_seconds())


# ------------------------------------------------------------------------------------------ Tables

OBJECT_META_NAME = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically."
)
OBJECT_META_CREATED = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is represented in RFC3339 form and is in UTC."
)
NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": OBJECT_META_NAME, "priority": 0}


def _column(name: str, type_: str, description: str, priority: int = 0, format_: str = "") -> dict:
    return {"name": name, "type": type_, "format": format_, "description": description, "priority": priority}


def go_format(value: Any) -> str:
    """How Go's fmt prints a JSON value that client-go's jsonpath found (a string column's cell)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # %v of a float64: the shortest digits, in exponent form when the exponent is below -4 or from 21 on.
        if not math.isfinite(value):
            return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
        number = Decimal(repr(value)).normalize()
        sign, digits, exponent = number.as_tuple()
        scientific = len(digits) - 1 + exponent
        if -4 <= scientific < 21:
            return f"{number:f}"
        mantissa = "".join(map(str, digits[:1])) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        return f"{'-' if sign else ''}{mantissa}e{'-' if scientific < 0 else '+'}{abs(scientific):02d}"
    return json.dumps(value, separators=(",", ":"))


def json_path_value(obj: Any, path: str) -> tuple[bool, Any]:
    """A CRD printer column's simple JSONPath (`.status.progress.percent`, `.spec.items[0].name`)."""
    current = obj
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(current, list) or index >= len(current):
                return False, None
            current = current[index]
        else:
            if not isinstance(current, dict) or part not in current:
                return False, None
            current = current[part]
    return True, current


def _crd_cell(column: dict, obj: dict) -> Any:
    """k8s.io/apiextensions-apiserver pkg/registry/customresource/tableconvertor/tableconvertor.go: a missing
    value is null; string columns print what jsonpath prints; typed columns keep the JSON type (cellForJSONValue)."""
    found, value = json_path_value(obj, column["jsonPath"])
    if not found or value is None:
        return None
    kind = column.get("type")
    if kind == "string":
        return go_format(value)
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        return age(value) if parse_time(value) else "<invalid>"
    return None


def crd_columns(version: dict) -> list[dict]:
    """The served columns: Name, then additionalPrinterColumns, or an Age column when there are none
    (k8s.io/apiextensions-apiserver pkg/apiserver/helpers.go serveDefaultColumnsIfEmpty)."""
    columns = version.get("additionalPrinterColumns") or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": OBJECT_META_CREATED}
    ]
    return [NAME_COLUMN] + [
        _column(
            c["name"],
            c["type"],
            c.get("description") or f"Custom resource definition column (in JSONPath format): {c['jsonPath']}",
            c.get("priority", 0),
            c.get("format", ""),
        )
        | {"jsonPath": c["jsonPath"]}
        for c in columns
    ]


def crd_row(columns: list[dict], obj: dict) -> list:
    return [obj["metadata"].get("name", "")] + [_crd_cell(c, obj) for c in columns[1:]]


# Built-in kinds: kube-apiserver has a printer per kind (kubernetes pkg/printers/internalversion/printers.go);
# the ones the operator's objects are looked at with are ported, the rest get the generic server's default
# (k8s.io/apiserver pkg/registry/rest/table.go: Name and Created At).
def _job_row(job: dict) -> list:
    spec, status = job.get("spec") or {}, job.get("status") or {}
    succeeded = status.get("succeeded") or 0
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif (spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    started, finished = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    duration = ""
    if started:
        duration = human_duration(((finished or dt.datetime.now(dt.UTC)) - started).total_seconds())
    conditions = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions:
        state = "Complete"
    elif "Failed" in conditions:
        state = "Failed"
    elif job["metadata"].get("deletionTimestamp"):
        state = "Terminating"
    elif "Suspended" in conditions:
        state = "Suspended"
    elif "FailureTarget" in conditions:
        state = "FailureTarget"
    else:
        state = "Running"
    return [job["metadata"]["name"], state, completions, duration, age(job["metadata"].get("creationTimestamp"))]


def _event_row(event: dict) -> list:
    """printEvent, with the wide cells (a server always prints wide; kubectl hides priority columns)."""
    first = event.get("firstTimestamp") or event.get("eventTime")
    last = event.get("lastTimestamp") or first
    series = event.get("series") or {}
    if series:
        last = series.get("lastObservedTime") or last
    involved = event.get("involvedObject") or {}
    target = (
        f"{involved.get('kind', '').lower()}/{involved['name']}"
        if involved.get("name")
        else involved.get("kind", "").lower()
    )
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingComponent") or ""
    instance = source.get("host") or event.get("reportingInstance") or ""
    return [
        age(last),
        event.get("type", ""),
        event.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        f"{component}, {instance}" if instance else component,
        (event.get("message") or "").strip(),
        age(first),
        series.get("count") or event.get("count") or 1,
        event["metadata"]["name"],
    ]


BUILTIN_TABLES: dict[tuple[str, str], tuple[list[dict], Any]] = {
    ("", "events"): (
        [
            _column("Last Seen", "string", "Time when last event from this group was observed."),
            _column("Type", "string", "Type of this event."),
            _column("Reason", "string", "Reason why this event was generated."),
            _column("Object", "string", "The object that this event is about."),
            _column("Subobject", "string", "The subobject that this event is about.", 1),
            _column("Source", "string", "The component reporting this event.", 1),
            _column("Message", "string", "A human-readable description of the status of this operation."),
            _column("First Seen", "string", "Time when this event was first observed.", 1),
            _column("Count", "string", "The number of times this event has occurred.", 1),
            _column("Name", "string", OBJECT_META_NAME, 1, "name"),
        ],
        _event_row,
    ),
    ("", "namespaces"): (
        [
            NAME_COLUMN,
            _column("Status", "string", "The status of the namespace"),
            _column("Age", "string", OBJECT_META_CREATED),
        ],
        lambda o: [
            o["metadata"]["name"],
            (o.get("status") or {}).get("phase", "Active"),
            age(o["metadata"].get("creationTimestamp")),
        ],
    ),
    ("batch", "jobs"): (
        [
            NAME_COLUMN,
            _column("Status", "string", "Status of the job."),
            _column("Completions", "string", "The number of pods which reached phase Succeeded."),
            _column("Duration", "string", "Time required to complete the job."),
            _column("Age", "string", OBJECT_META_CREATED),
        ],
        _job_row,
    ),
}
DEFAULT_TABLE = (
    [NAME_COLUMN, _column("Created At", "date", OBJECT_META_CREATED)],
    lambda o: [o["metadata"]["name"], o["metadata"].get("creationTimestamp")],
)


def partial_metadata(obj: dict, group_version: str = "meta.k8s.io/v1") -> dict:
    return {"apiVersion": group_version, "kind": "PartialObjectMetadata", "metadata": obj.get("metadata") or {}}


def table(
    columns: list[dict],
    row: Any,
    objects: list[dict],
    resource_version: str,
    params: dict,
    headers: bool = True,
    group_version: str = "meta.k8s.io/v1",
) -> dict:
    """A meta.k8s.io Table, with each row's object as includeObject asks (k8s.io/apiserver
    pkg/endpoints/handlers/response.go asTable: PartialObjectMetadata unless Object or None is asked)."""
    include = params.get("includeObject") or "Metadata"
    rows = []
    for obj in objects:
        entry = {"cells": row(obj)}
        if include == "Object":
            entry["object"] = obj
        elif include == "Metadata":
            entry["object"] = partial_metadata(obj, group_version)
        rows.append(entry)
    out = {
        "kind": "Table",
        "apiVersion": group_version,
        "metadata": {"resourceVersion": resource_version},
        "rows": rows,
    }
    if headers and params.get("noHeaders") not in ("true", "1"):
        out["columnDefinitions"] = [{k: v for k, v in c.items() if k != "jsonPath"} for c in columns]
    return out


# ------------------------------------------------------------------------------------------ discovery

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"


@functools.cache
def builtin_resource_lists() -> tuple[dict, ...]:
    """The built-in kinds: the discovery documents of a real cluster that kmock bundles (the same file its
    `resources.load_bundled()` reads), one APIResourceList per group version."""
    data = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
    return tuple(json.loads(gzip.decompress(data)))


_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple:
    """k8s.io/apimachinery pkg/version/helpers.go CompareKubeAwareVersionStrings, as a sort key (highest
    first): GA before beta before alpha, higher numbers first, then other names alphabetically."""
    m = _VERSION.match(version)
    if not m:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[m[2]]
    return (stage, -int(m[1]), -int(m[3] or 0), "")


def split_group_version(group_version: str) -> tuple[str, str]:
    group, _, version = group_version.rpartition("/")
    return group, version


def legacy_resource_list(group_version: str, resources: list[dict]) -> dict:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def api_group(name: str, versions: list[str]) -> dict:
    """k8s.io/apiserver pkg/endpoints/discovery/group.go: versions in preference order, the first preferred."""
    ordered = sorted(versions, key=version_priority)
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in ordered]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def aggregated_resources(resources: list[dict], group: str, version: str) -> list[dict]:
    """Legacy APIResource entries (parents and their `parent/sub` entries) as apidiscovery.k8s.io/v2
    APIResourceDiscovery (k8s.io/apiserver pkg/endpoints/discovery/aggregated; client-go
    discovery/aggregated_discovery.go is the inverse)."""
    parents: dict[str, dict] = {}
    for entry in resources:
        if "/" in entry["name"]:
            continue
        parents[entry["name"]] = {
            "resource": entry["name"],
            "responseKind": {
                "group": entry.get("group", group),
                "version": entry.get("version", version),
                "kind": entry["kind"],
            },
            "scope": "Namespaced" if entry["namespaced"] else "Cluster",
            "singularResource": entry.get("singularName", ""),
            "verbs": entry["verbs"],
            **({"shortNames": entry["shortNames"]} if entry.get("shortNames") else {}),
            **({"categories": entry["categories"]} if entry.get("categories") else {}),
        }
    for entry in resources:
        parent, _, sub = entry["name"].partition("/")
        if sub and parent in parents:
            parents[parent].setdefault("subresources", []).append(
                {
                    "subresource": sub,
                    "responseKind": {
                        "group": entry.get("group", group),
                        "version": entry.get("version", version),
                        "kind": entry["kind"],
                    },
                    "verbs": entry["verbs"],
                }
            )
    return sorted(parents.values(), key=lambda r: r["resource"])


def aggregated_list(groups: list[tuple[str, dict[str, list[dict]]]]) -> dict:
    """An APIGroupDiscoveryList: per group, its versions (preferred first) with their resources."""
    items = []
    for name, versions in groups:
        items.append(
            {
                "metadata": {"name": name, "creationTimestamp": None} if name else {"creationTimestamp": None},
                "versions": [
                    {"version": v, "resources": aggregated_resources(versions[v], name, v), "freshness": "Current"}
                    for v in sorted(versions, key=version_priority)
                ],
            }
        )
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


# ------------------------------------------------------------------------------------------ CRDs


class ServedCRD:
    """A CRD as the API server serves it: names, scope, per-version schema and columns.

    k8s.io/apiextensions-apiserver pkg/apiserver/customresource_discovery_controller.go (discovery),
    pkg/controller/openapi/builder/builder.go (OpenAPI), pkg/registry/customresource/tableconvertor (Tables),
    pkg/apiserver/schema/pruning/algorithm.go (pruning).
    """

    def __init__(self, crd: dict):
        spec = crd["spec"]
        self.name = crd["metadata"]["name"]
        self.group = spec["group"]
        self.names = spec["names"]
        self.kind = self.names["kind"]
        self.list_kind = self.names.get("listKind") or f"{self.kind}List"
        self.plural = self.names["plural"]
        self.singular = self.names.get("singular") or self.kind.lower()
        self.namespaced = spec.get("scope", "Namespaced") == "Namespaced"
        self.preserve_unknown = bool(spec.get("preserveUnknownFields"))
        self.versions = {v["name"]: v for v in spec["versions"] if v.get("served", True)}
        self.columns = {name: crd_columns(v) for name, v in self.versions.items()}

    def schema(self, version: str) -> dict | None:
        return (self.versions[version].get("schema") or {}).get("openAPIV3Schema")

    def subresources(self, version: str) -> dict:
        return self.versions[version].get("subresources") or {}

    # --------------------------------------------------------------------------- discovery

    def discovery_entries(self, version: str) -> list[dict]:
        """Legacy APIResource entries: the resource (short names and categories on it only), then status/scale."""
        verbs = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]
        entries = [
            {
                "name": self.plural,
                "singularName": self.singular,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": verbs,
                **({"shortNames": self.names["shortNames"]} if self.names.get("shortNames") else {}),
                **({"categories": self.names["categories"]} if self.names.get("categories") else {}),
            }
        ]
        sub = self.subresources(version)
        if "status" in sub:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if "scale" in sub:
            entries.append(
                {
                    "name": f"{self.plural}/scale",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries

    # --------------------------------------------------------------------------- pruning

    def prune(self, obj: dict, version: str) -> tuple[dict, list[str]]:
        """`obj` without the fields the schema does not declare (a copy when there are any: stored objects
        share parts), and those fields' paths, sorted, as the server reports them."""
        schema = self.schema(version)
        if self.preserve_unknown or schema is None:
            return obj, []
        root = dict(schema, **{"x-kubernetes-embedded-resource": True})  # PruneWithOptions(isResourceRoot)
        unknown: list[str] = []
        _prune(obj, root, [], unknown, drop=False)
        if not unknown:
            return obj, []
        obj = copy.deepcopy(obj)
        _prune(obj, root, [], [], drop=True)
        return obj, sorted(unknown)

    # --------------------------------------------------------------------------- OpenAPI

    def definition_name(self, version: str, kind: str) -> str:
        """kube-openapi util.ToRESTFriendlyName of group/version/kind: the group's DNS labels reversed."""
        return ".".join(reversed(self.group.split("."))) + f".{version}.{kind}"

    def _kind_schema(self, version: str, v2: bool) -> dict:
        """builder.go buildKubeNative: the CRD's schema (v2: ToStructuralOpenAPIV2) with metadata as a
        reference to ObjectMeta, apiVersion and kind from TypeMeta, and the GVK extension."""
        schema = self.schema(version)
        gvk = [{"group": self.group, "version": version, "kind": self.kind}]
        if schema is None or (v2 and (schema.get("x-kubernetes-preserve-unknown-fields") or self.preserve_unknown)):
            return {"type": "object", "x-kubernetes-group-version-kind": gvk}
        out = _unfold(copy.deepcopy(schema))
        if v2:
            out = _to_openapi_v2(out)
        out.setdefault("properties", {})
        out["properties"]["metadata"] = {
            "$ref": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", v2),
            "description": METADATA_DESCRIPTION,
        }
        out["properties"]["apiVersion"] = {"type": "string", "description": API_VERSION_DESCRIPTION}
        out["properties"]["kind"] = {"type": "string", "description": KIND_DESCRIPTION}
        _add_embedded_properties(out, v2)
        out["x-kubernetes-group-version-kind"] = gvk
        return out

    def _list_schema(self, version: str, v2: bool) -> dict:
        """builder.go buildListSchema."""
        return {
            "type": "object",
            "description": f"{self.list_kind} is a list of {self.kind}",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string", "description": API_VERSION_DESCRIPTION},
                "kind": {"type": "string", "description": KIND_DESCRIPTION},
                "items": {
                    "type": "array",
                    "items": {"$ref": _ref(self.definition_name(version, self.kind), v2)},
                    "description": f"List of {self.plural}. More info: https://git.k8s.io/community/"
                    "contributors/devel/sig-architecture/api-conventions.md",
                },
                "metadata": {
                    "$ref": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta", v2),
                    "description": "Standard list metadata.",
                },
            },
            "x-kubernetes-group-version-kind": [{"group": self.group, "version": version, "kind": self.list_kind}],
        }

    def _routes(self, version: str) -> list[tuple[str, str, str, str, str | None]]:
        """builder.go generateBuilder: (path, HTTP method, action, operation verb, response kind) per route."""
        base = f"/apis/{self.group}/{version}"
        root = f"{base}/namespaces/{{namespace}}/{self.plural}" if self.namespaced else f"{base}/{self.plural}"
        routes = []
        if self.namespaced:
            routes.append((f"{base}/{self.plural}", "get", "list", "list", "list"))
        routes += [
            (root, "get", "list", "list", "list"),
            (root, "post", "post", "create", "kind"),
            (root, "delete", "deletecollection", "deletecollection", "status"),
            (root + "/{name}", "get", "get", "read", "kind"),
            (root + "/{name}", "put", "put", "replace", "kind"),
            (root + "/{name}", "delete", "delete", "delete", "status"),
            (root + "/{name}", "patch", "patch", "patch", "kind"),
        ]
        if "status" in self.subresources(version):
            routes += [
                (root + "/{name}/status", m, a, o, "kind")
                for m, a, o in (("get", "get", "read"), ("put", "put", "replace"), ("patch", "patch", "patch"))
            ]
        return routes

    def _operation_id(self, version: str, verb: str, path: str) -> str:
        """k8s.io/apiserver pkg/endpoints/openapi GetOperationIDAndTags: verb + Group + Version + kind."""
        group = "".join(part[:1].upper() + part[1:] for part in re.split(r"[.-]", self.group.removesuffix(".k8s.io")))
        namespaced = "Namespaced" if "{namespace}" in path else ""
        sub = "Status" if path.endswith("/status") else ""
        all_namespaces = "ForAllNamespaces" if self.namespaced and not namespaced else ""
        return f"{verb}{group}{version.capitalize()}{namespaced}{self.kind}{sub}{all_namespaces}"

    def _description(self, verb: str, path: str) -> str:
        """builder.go descriptionFor."""
        sub = " status of" if path.endswith("/status") else ""
        article = {
            "list": " objects of kind ",
            "read": " the specified ",
            "replace": " the specified ",
            "patch": " the specified ",
        }.get(verb, f" {'an' if self.kind[:1].lower() in 'aeiou' else 'a'} ")
        if verb == "patch":
            return f"partially update{sub}{article}{self.kind}"
        if verb == "deletecollection":
            return f"delete collection of {self.kind}"
        return f"{verb}{sub}{article}{self.kind}"

    def openapi(self, version: str, v2: bool) -> dict:
        """The OpenAPI document of one served version (builder.go BuildOpenAPIV3 / BuildOpenAPIV2)."""
        kind_name, list_name = self.definition_name(version, self.kind), self.definition_name(version, self.list_kind)
        gvk = {"group": self.group, "version": version, "kind": self.kind}
        tag = re.sub(r"[.-](.)", lambda m: m[1].upper(), self.group.removesuffix(".k8s.io")) + f"_{version}"
        paths: dict[str, dict] = {}
        for path, method, action, verb, response in self._routes(version):
            response_ref = {
                "kind": kind_name,
                "list": list_name,
                "status": "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            }[response]
            operation: dict[str, Any] = {
                "tags": [tag],
                "description": self._description(verb, path),
                "operationId": self._operation_id(version, verb, path),
                "parameters": [_parameter(p, v2) for p in ACTION_PARAMETERS[action]],
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            }
            codes = {
                "200": "OK",
                **{
                    "post": {"201": "Created", "202": "Accepted"},
                    "put": {"201": "Created"},
                    "delete": {"202": "Accepted"},
                }.get(action, {}),
            }
            consumes = (
                ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
                if action == "patch"
                else ["application/json", "application/yaml"]
            )
            body = {
                "post": kind_name,
                "put": kind_name,
                "patch": "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
                "delete": "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
            }.get(action)
            if v2:
                operation |= {
                    "consumes": consumes,
                    "produces": ["application/json", "application/yaml"],
                    "schemes": ["https"],
                }
                operation["responses"] = {
                    code: {"description": text, "schema": {"$ref": _ref(response_ref, True)}}
                    for code, text in codes.items()
                } | {"401": {"description": "Unauthorized"}}
                if body:
                    operation["parameters"].append(
                        {
                            "name": "body",
                            "in": "body",
                            "required": action != "delete",
                            "schema": {"$ref": _ref(body, True)},
                        }
                    )
            else:
                content = {
                    t: {"schema": {"$ref": _ref(response_ref, False)}} for t in ("application/json", "application/yaml")
                }
                operation["responses"] = {
                    code: {"description": text, "content": content} for code, text in codes.items()
                } | {"401": {"description": "Unauthorized"}}
                if body:
                    operation["requestBody"] = {
                        "content": {t: {"schema": {"$ref": _ref(body, False)}} for t in consumes},
                        "required": action != "delete",
                    }
            item = paths.setdefault(path, {"parameters": _path_parameters(path, self.kind, v2)})
            item[method] = operation
        definitions = {kind_name: self._kind_schema(version, v2), list_name: self._list_schema(version, v2)}
        definitions |= {name: _meta_schema(schema, v2) for name, schema in META_DEFINITIONS.items()}
        info = {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"}
        if v2:
            return {"swagger": "2.0", "info": info, "paths": paths, "definitions": definitions}
        return {"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": definitions}}


def _ref(name: str, v2: bool) -> str:
    return ("#/definitions/" if v2 else "#/components/schemas/") + name


def _prune(value: Any, schema: dict | None, path: list[str], unknown: list[str], drop: bool) -> None:
    """k8s.io/apiextensions-apiserver pkg/apiserver/schema/pruning/algorithm.go prune and skipPrune: records the
    undeclared fields, and drops them when `drop`."""
    preserve = schema is not None and schema.get("x-kubernetes-preserve-unknown-fields")
    if isinstance(value, dict):
        if schema is None:
            unknown.extend(_field_path(path, key) for key in value)
            if drop:
                value.clear()
            return
        embedded = schema.get("x-kubernetes-embedded-resource")
        properties, additional = schema.get("properties") or {}, schema.get("additionalProperties")
        for key in list(value):
            if embedded and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in properties:
                _prune(value[key], properties[key], path + [key], unknown, drop)
            elif isinstance(additional, dict):
                _prune(value[key], additional, path + [key], unknown, drop)
            elif additional is True:
                _prune(value[key], None, path + [key], unknown, drop)
            elif not preserve:
                if key not in ("apiVersion", "kind", "metadata") or path:
                    unknown.append(_field_path(path, key))
                if drop:
                    del value[key]
    elif isinstance(value, list):
        items = None if schema is None else schema.get("items")
        if preserve:  # skipPrune: the items keep what their schema does not declare
            if items is None:
                return
            items = dict(items, **{"x-kubernetes-preserve-unknown-fields": True})
        for index, item in enumerate(value):
            _prune(item, items, path + [f"[{index}]"], unknown, drop)


def _field_path(path: list[str], key: str) -> str:
    return "".join(p if p.startswith("[") else f".{p}" for p in path + [key]).lstrip(".")


def _walk(schema: Any, visit) -> None:
    if not isinstance(schema, dict):
        return
    visit(schema)
    for child in (schema.get("properties") or {}).values():
        _walk(child, visit)
    for key in ("items", "additionalProperties"):
        _walk(schema.get(key), visit)


def _unfold(schema: dict) -> dict:
    """k8s.io/apiextensions-apiserver pkg/apiserver/schema/unfold.go: x-kubernetes-int-or-string gets its
    anyOf [integer, string] unless it has one."""

    def visit(node: dict) -> None:
        if not node.get("x-kubernetes-int-or-string"):
            return
        pair = [{"type": "integer"}, {"type": "string"}]
        if node.get("anyOf") == pair or (node.get("allOf") and node["allOf"][0].get("anyOf") == pair):
            return
        if "anyOf" not in node:
            node["anyOf"] = pair
        else:
            node["allOf"] = [{"anyOf": pair}] + node.get("allOf", [])

    _walk(schema, visit)
    return schema


def _to_openapi_v2(node: Any) -> Any:
    """k8s.io/apiextensions-apiserver pkg/controller/openapi/v2/conversion.go ToStructuralOpenAPIV2 (parent before
    children, as its visitor walks), plus the v2 controller's PruneDefaults (v2 publishes no defaults)."""
    if not isinstance(node, dict):
        return node
    for key in ("allOf", "oneOf", "anyOf", "not", "default"):
        node.pop(key, None)
    if node.pop("nullable", False):
        for key in ("type", "items", "properties"):
            node.pop(key, None)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("items", None)
        node.pop("properties", None)
        if node.get("type") == "object":
            del node["type"]
    if "items" not in node and node.get("type") == "array":
        del node["type"]
    nullable = {k for k, v in (node.get("properties") or {}).items() if isinstance(v, dict) and v.get("nullable")}
    if isinstance(node.get("additionalProperties"), dict) and node["additionalProperties"].get("nullable"):
        node.pop("required", None)
    elif nullable and node.get("required"):
        node["required"] = [r for r in node["required"] if r not in nullable]
        if not node["required"]:
            del node["required"]
    for child in (node.get("properties") or {}).values():
        _to_openapi_v2(child)
    for key in ("items", "additionalProperties"):
        _to_openapi_v2(node.get(key))
    return node


def _add_embedded_properties(schema: dict, v2: bool) -> None:
    """builder.go addEmbeddedProperties: objects marked x-kubernetes-embedded-resource get TypeMeta and
    ObjectMeta properties (not under x-kubernetes-preserve-unknown-fields in v2)."""

    def visit(node: dict) -> None:
        if v2 and node.get("x-kubernetes-preserve-unknown-fields"):
            return
        if node.get("x-kubernetes-embedded-resource"):
            node.setdefault("properties", {})
            node["properties"]["apiVersion"] = {"type": "string", "description": API_VERSION_DESCRIPTION}
            node["properties"]["kind"] = {"type": "string", "description": KIND_DESCRIPTION}
            node["properties"]["metadata"] = {
                "$ref": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", v2),
                "description": METADATA_DESCRIPTION,
            }
            node["required"] = node.get("required", []) + [
                k for k in ("kind", "apiVersion") if k not in node.get("required", [])
            ]

    for child in (schema.get("properties") or {}).values():
        _walk(child, visit)


API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should convert "
    "recognized schemas to the latest internal value, and may reject unrecognized values. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
)
KIND_DESCRIPTION = (
    "Kind is a string value representing the REST resource this object represents. Servers may infer this from "
    "the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)
METADATA_DESCRIPTION = (
    "Standard object's metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)

# The meta.k8s.io types a CRD's document refers to, reduced to the fields a client reads (the real server
# serves the full generated definitions).
_STRING, _INT = {"type": "string"}, {"type": "integer", "format": "int64"}
_TIME = {"type": "string", "format": "date-time"}
META_DEFINITIONS = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects "
        "users must create.",
        "type": "object",
        "properties": {
            "name": _STRING | {"description": OBJECT_META_NAME},
            "generateName": _STRING
            | {
                "description": "An optional prefix, used by the server, to generate a unique "
                "name ONLY IF the Name field has not been provided."
            },
            "namespace": _STRING
            | {"description": "Namespace defines the space within which each name must be unique."},
            "uid": _STRING | {"description": "UID is the unique in time and space value for this object."},
            "resourceVersion": _STRING
            | {"description": "An opaque value that represents the internal version of this object."},
            "generation": _INT
            | {"description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": _TIME | {"description": OBJECT_META_CREATED},
            "deletionTimestamp": _TIME
            | {"description": "RFC 3339 date and time at which this resource will be deleted."},
            "labels": {
                "type": "object",
                "additionalProperties": _STRING,
                "description": "Map of string keys and values that can be used to organize and categorize "
                "(scope and select) objects.",
            },
            "annotations": {
                "type": "object",
                "additionalProperties": _STRING,
                "description": "Annotations is an unstructured key value map stored with a resource.",
            },
            "finalizers": {
                "type": "array",
                "items": _STRING,
                "x-kubernetes-list-type": "set",
                "description": "Must be empty before the object is deleted from the registry.",
            },
            "ownerReferences": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "apiVersion": _STRING,
                        "kind": _STRING,
                        "name": _STRING,
                        "uid": _STRING,
                        "controller": {"type": "boolean"},
                        "blockOwnerDeletion": {"type": "boolean"},
                    },
                    "required": ["apiVersion", "kind", "name", "uid"],
                },
                "description": "List of objects depended by this object.",
            },
        },
    },
    "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta": {
        "description": "ListMeta describes metadata that synthetic resources must have, including lists and various "
        "status objects.",
        "type": "object",
        "properties": {"resourceVersion": _STRING, "continue": _STRING, "remainingItemCount": _INT},
    },
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status": {
        "description": "Status is a return value for calls that don't return other objects.",
        "type": "object",
        "properties": {
            "apiVersion": _STRING,
            "kind": _STRING,
            "status": _STRING,
            "message": _STRING,
            "reason": _STRING,
            "code": {"type": "integer", "format": "int32"},
            "details": {"type": "object"},
        },
        "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
    },
    "io.k8s.apimachinery.pkg.apis.meta.v1.Patch": {
        "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
        "type": "object",
    },
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions": {
        "description": "DeleteOptions may be provided when deleting an API object.",
        "type": "object",
        "properties": {
            "propagationPolicy": _STRING,
            "gracePeriodSeconds": _INT,
            "dryRun": {"type": "array", "items": _STRING},
        },
    },
}


def _meta_schema(schema: dict, v2: bool) -> dict:
    return schema if not v2 else json.loads(json.dumps(schema).replace("#/components/schemas/", "#/definitions/"))


# The query parameters of each action (k8s.io/apiserver pkg/endpoints/installer.go AddObjectParams over
# metav1.GetOptions / ListOptions / CreateOptions / UpdateOptions / PatchOptions / DeleteOptions).
_DRY_RUN = ("dryRun", "string", "When present, indicates that modifications should not be persisted.")
_FIELD_MANAGER = ("fieldManager", "string", "A name associated with the actor or entity that makes these changes.")
_FIELD_VALIDATION = ("fieldValidation", "string", "How to handle unknown or duplicate fields: Ignore, Warn or Strict.")
_GRACE = ("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted.")
_LIST = [
    ("allowWatchBookmarks", "boolean", "Requests watch events with type BOOKMARK."),
    ("continue", "string", "Set when retrieving more results from the server."),
    ("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields."),
    ("labelSelector", "string", "A selector to restrict the list of returned objects by their labels."),
    ("limit", "integer", "A maximum number of responses to return for a list call."),
    ("resourceVersion", "string", "A constraint on what resource versions a request may be served from."),
    ("resourceVersionMatch", "string", "How resourceVersion is applied to list calls."),
    ("sendInitialEvents", "boolean", "Initial events of a watch, as a stream."),
    ("timeoutSeconds", "integer", "Timeout for the list/watch call."),
    ("watch", "boolean", "Watch for changes to the described resources."),
]
ACTION_PARAMETERS = {
    "get": [_LIST[5]],
    "list": _LIST,
    "deletecollection": [*_LIST[:4], _DRY_RUN, _GRACE, *_LIST[4:9]],
    "post": [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
    "put": [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
    "patch": [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION, ("force", "boolean", "Force Apply requests.")],
    "delete": [
        _DRY_RUN,
        _GRACE,
        ("orphanDependents", "boolean", "Deprecated: use propagationPolicy."),
        ("propagationPolicy", "string", "Whether and how garbage collection will be performed."),
    ],
}


def _parameter(param: tuple[str, str, str], v2: bool) -> dict:
    name, type_, description = param
    if v2:
        return {"name": name, "in": "query", "type": type_, "uniqueItems": True, "description": description}
    return {"name": name, "in": "query", "description": description, "schema": {"type": type_, "uniqueItems": True}}


def _path_parameters(path: str, kind: str, v2: bool) -> list[dict]:
    params = []
    for name, description in (
        ("name", f"name of the {kind}"),
        ("namespace", "object name and auth scope, such as for teams and projects"),
    ):
        if f"{{{name}}}" in path:
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": description,
                    "type": "string",
                    "uniqueItems": True,
                }
                if v2
                else {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": description,
                    "schema": {"type": "string", "uniqueItems": True},
                }
            )
    params.append(_parameter(("pretty", "string", "If 'true', then the output is pretty printed."), v2))
    return params


def builtin_openapi_v3(group: str, version: str, resources: list[dict]) -> dict:
    """A built-in group version's OpenAPI v3 without schemas: its paths and operations (with their query
    parameters and GVK), which clients read to learn e.g. that PATCH takes fieldValidation. Strategic merge
    patch is not listed: the emulator applies it as a merge patch, knowing no patch strategies."""
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    paths: dict[str, dict] = {}
    for entry in resources:
        if "/" in entry["name"]:
            continue
        gvk = {"group": group, "version": version, "kind": entry["kind"]}
        root = (
            f"{prefix}/namespaces/{{namespace}}/{entry['name']}" if entry["namespaced"] else f"{prefix}/{entry['name']}"
        )
        verbs = set(entry["verbs"])
        routes = [
            (root, "get", "list", "list"),
            (root, "post", "post", "create"),
            (root + "/{name}", "get", "get", "get"),
            (root + "/{name}", "put", "put", "update"),
            (root + "/{name}", "patch", "patch", "patch"),
            (root + "/{name}", "delete", "delete", "delete"),
        ]
        for path, method, action, verb in routes:
            if verb not in verbs:
                continue
            operation = {
                "operationId": f"{action}{entry['kind']}",
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [_parameter(p, False) for p in ACTION_PARAMETERS[action]],
                "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
            }
            if action == "patch":
                operation["requestBody"] = {
                    "content": {
                        t: {"schema": {"type": "object"}}
                        for t in (
                            "application/json-patch+json",
                            "application/merge-patch+json",
                            "application/apply-patch+yaml",
                        )
                    }
                }
            paths.setdefault(path, {"parameters": _path_parameters(path, entry["kind"], False)})[method] = operation
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def document_hash(document: dict) -> str:
    """The `hash` of a group version's URL in /openapi/v3 (clients cache documents by it)."""
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()[:128].upper()


# ------------------------------------------------------------------------------------------ OpenAPI v2 protobuf

# client-go asks /openapi/v2 for protobuf only (discovery_client.go OpenAPISchema): gnostic's openapi_v2.Document
# (github.com/google/gnostic-models openapiv2/OpenAPIv2.proto; field numbers below are that file's). Extension
# values travel as YAML text, of which JSON is a part.
OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
# What the server labels it with (k8s.io/kube-openapi pkg/handler/handler.go): Go's mime parser refuses the "@".
OPENAPI_V2_PROTOBUF_ANSWER = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _varint(number: int) -> bytes:
    number &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _message(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _string(field: int, value: Any) -> bytes:
    return _message(field, str(value).encode()) if value not in (None, "") else b""


def _strings(field: int, values: Any) -> bytes:
    return b"".join(_string(field, v) for v in ([values] if isinstance(values, str) else values or []))


def _flag(field: int, value: Any) -> bytes:
    return _varint(field << 3) + b"\x01" if value else b""


def _integer(field: int, value: Any) -> bytes:
    return _varint(field << 3) + _varint(int(value)) if value not in (None, 0) else b""


def _double(field: int, value: Any) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<d", float(value)) if value not in (None, 0) else b""


def _any(value: Any) -> bytes:
    return _string(2, json.dumps(value))  # Any.yaml


def _extensions(field: int, node: dict) -> bytes:
    return b"".join(
        _message(field, _string(1, k) + _message(2, _any(v))) for k, v in node.items() if k.startswith("x-")
    )


def _schema_pb(node: dict) -> bytes:
    out = [
        _string(1, node.get("$ref")),
        _string(2, node.get("format")),
        _string(3, node.get("title")),
        _string(4, node.get("description")),
    ]
    if "default" in node:
        out.append(_message(5, _any(node["default"])))
    out += [
        _double(6, node.get("multipleOf")),
        _double(7, node.get("maximum")),
        _flag(8, node.get("exclusiveMaximum")),
        _double(9, node.get("minimum")),
        _flag(10, node.get("exclusiveMinimum")),
        _integer(11, node.get("maxLength")),
        _integer(12, node.get("minLength")),
        _string(13, node.get("pattern")),
        _integer(14, node.get("maxItems")),
        _integer(15, node.get("minItems")),
        _flag(16, node.get("uniqueItems")),
        _integer(17, node.get("maxProperties")),
        _integer(18, node.get("minProperties")),
        _strings(19, node.get("required")),
    ]
    out += [_message(20, _any(v)) for v in node.get("enum") or []]
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out.append(_message(21, _message(1, _schema_pb(additional))))
    elif isinstance(additional, bool):
        out.append(_message(21, _varint(2 << 3) + _varint(int(additional))))
    if node.get("type"):
        out.append(_message(22, _strings(1, node["type"])))
    items = node.get("items")
    if items is not None:
        out.append(
            _message(23, b"".join(_message(1, _schema_pb(i)) for i in (items if isinstance(items, list) else [items])))
        )
    out += [_message(24, _schema_pb(s)) for s in node.get("allOf") or []]
    if node.get("properties") is not None:
        out.append(
            _message(
                25,
                b"".join(
                    _message(1, _string(1, k) + _message(2, _schema_pb(v))) for k, v in node["properties"].items()
                ),
            )
        )
    if "example" in node:
        out.append(_message(30, _any(node["example"])))
    out.append(_extensions(31, node))
    return b"".join(out)


def _parameter_pb(param: dict) -> bytes:
    if "$ref" in param:
        return _message(2, _string(1, param["$ref"]))
    if param["in"] == "body":
        body = (
            _string(1, param.get("description"))
            + _string(2, param["name"])
            + _string(3, "body")
            + _flag(4, param.get("required"))
            + _message(5, _schema_pb(param.get("schema") or {}))
        )
        return _message(1, _message(1, body))
    common = (
        _flag(1, param.get("required"))
        + _string(2, param["in"])
        + _string(3, param.get("description"))
        + _string(4, param["name"])
    )
    if param["in"] == "path":  # PathParameterSubSchema: type 5, uniqueItems 19
        sub = _message(4, common + _string(5, param.get("type")) + _flag(19, param.get("uniqueItems")))
    else:  # QueryParameterSubSchema: type 6, uniqueItems 20
        sub = _message(3, common + _string(6, param.get("type")) + _flag(20, param.get("uniqueItems")))
    return _message(1, _message(2, sub))


def _operation_pb(operation: dict) -> bytes:
    responses = b"".join(
        _message(
            1,
            _string(1, code)
            + _message(
                2,
                _message(
                    1,
                    _string(1, response.get("description"))
                    + (_message(2, _message(1, _schema_pb(response["schema"]))) if "schema" in response else b""),
                ),
            ),
        )
        for code, response in operation.get("responses", {}).items()
    )
    return b"".join(
        [
            _strings(1, operation.get("tags")),
            _string(3, operation.get("description")),
            _string(5, operation.get("operationId")),
            _strings(6, operation.get("produces")),
            _strings(7, operation.get("consumes")),
            *(_message(8, _parameter_pb(p)) for p in operation.get("parameters") or []),
            _message(9, responses),
            _strings(10, operation.get("schemes")),
            _extensions(13, operation),
        ]
    )


def openapi_v2_protobuf(document: dict) -> bytes:
    """An OpenAPI v2 document (as JSON) in gnostic's protobuf encoding."""
    methods = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}
    paths = b""
    for path, item in document.get("paths", {}).items():
        body = b"".join(_message(methods[m], _operation_pb(op)) for m, op in item.items() if m in methods)
        body += b"".join(_message(9, _parameter_pb(p)) for p in item.get("parameters") or [])
        paths += _message(2, _string(1, path) + _message(2, body))
    info = document.get("info") or {}
    definitions = b"".join(
        _message(1, _string(1, name) + _message(2, _schema_pb(schema)))
        for name, schema in document.get("definitions", {}).items()
    )
    return b"".join(
        [
            _string(1, document.get("swagger", "2.0")),
            _message(2, _string(1, info.get("title")) + _string(2, info.get("version"))),
            _message(8, paths),
            _message(9, definitions),
        ]
    )


# ------------------------------------------------------------------------------------------ protobuf bodies

# client-go's typed clients (kubectl create namespace / configmap / secret) send built-in objects as protobuf:
# the "k8s\x00" magic, then runtime.Unknown {typeMeta 1 {apiVersion 1, kind 2}, raw 2} holding the object
# (k8s.io/apimachinery pkg/runtime/serializer/protobuf/protobuf.go). The fields read below are those of
# k8s.io/api core/v1/generated.proto and k8s.io/apimachinery pkg/apis/meta/v1/generated.proto.
PROTOBUF = "application/vnd.kubernetes.protobuf"
_STRING_MAP, _BYTES_MAP = "string-map", "bytes-map"
_OBJECT_META = {
    1: ("name", str),
    2: ("generateName", str),
    3: ("namespace", str),
    11: ("labels", _STRING_MAP),
    12: ("annotations", _STRING_MAP),
    14: ("finalizers", list),
}
PROTOBUF_KINDS = {
    "Namespace": {1: ("metadata", _OBJECT_META), 2: ("spec", {1: ("finalizers", list)})},
    "ConfigMap": {
        1: ("metadata", _OBJECT_META),
        2: ("data", _STRING_MAP),
        3: ("binaryData", _BYTES_MAP),
        4: ("immutable", bool),
    },
    "Secret": {
        1: ("metadata", _OBJECT_META),
        2: ("data", _BYTES_MAP),
        3: ("type", str),
        4: ("stringData", _STRING_MAP),
        5: ("immutable", bool),
    },
}


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes):
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
        elif wire == 2:
            size, at = _read_varint(data, at)
            value, at = data[at : at + size], at + size
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not read here")
        yield number, value


def _decode(data: bytes, shape: dict) -> dict:
    out: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in shape:
            continue
        name, kind = shape[number]
        if kind is str:  # proto2 `optional` fields arrive even when empty; JSON omits them
            if value:
                out[name] = value.decode()
        elif kind is bool:
            if value:
                out[name] = True
        elif kind is list:
            out.setdefault(name, []).append(value.decode())
        elif kind in (_STRING_MAP, _BYTES_MAP):
            entry = dict(_fields(value))
            item = entry.get(2, b"")
            out.setdefault(name, {})[entry.get(1, b"").decode()] = (
                item.decode() if kind == _STRING_MAP else base64.b64encode(item).decode()
            )
        else:
            out[name] = _decode(value, kind)
    return out


def decode_protobuf_object(body: bytes) -> dict:
    """A built-in object sent as protobuf, as the JSON the rest of the server works with."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf envelope")
    envelope = dict(_fields(body[4:]))
    type_meta = {number: value.decode() for number, value in _fields(envelope.get(1, b""))}
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    if kind not in PROTOBUF_KINDS:
        raise ValueError(f"the emulator reads protobuf bodies of {', '.join(PROTOBUF_KINDS)} only, not {kind!r}")
    return {"apiVersion": api_version, "kind": kind, **_decode(envelope.get(2, b""), PROTOBUF_KINDS[kind])}
