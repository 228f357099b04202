"""A local Kubernetes API server for operator tests, over HTTPS, that kopf, the official client and kubectl use.

kmock 0.8 gives the catalogue of built-in resources (a real cluster's discovery documents); the rest is here:
uid / resourceVersion / creationTimestamp / generation, 201 on create, AlreadyExists and Conflict, the /status
subresource, label and field selectors, watches that resume from a resourceVersion (410 when too old), PUT,
merge / strategic-merge (as merge) / JSON patches (including the `test` op), finalizers, and garbage collection
by ownerReferences. For kubectl (apiviews.py has the ported rules): TLS with a test CA made at start (client-go
sends no bearer token over plain HTTP), legacy and aggregated discovery, OpenAPI v2 and v3 built from each
CRD, Table responses (a CRD's additionalPrinterColumns), CRDs created through the API becoming served, and
the pruning of fields a CRD's schema does not declare (fieldValidation Strict / Warn / Ignore). No value
validation or defaulting, and of the controllers only what the operator's objects rely on: the garbage collector,
every namespace's `default` ServiceAccount, the ServiceAccount admission plugin (a pod's account must exist) and the
token controller, which fills `kubernetes.io/service-account-token` Secrets and deletes them with their account; such
a token is taken as its account while its Secret and account exist. Tests play the Job controller and the kubelet
themselves.

What is written is validated in part (apivalidation.py has the ported rules): a custom resource against its
schema's bounds (maxLength, maxItems, maxProperties), every object's metadata (names, labels, annotations), and
a Job's pod template labels; a refusal is the API server's 422 Invalid. Admission plugins (`Emulator.admit`) play
admission webhooks: a mutating one may change an object before it is stored (Kueue's Job webhook does), a
validating one may refuse it.

Also for tests:
- every call is recorded as (user, verb, apiGroup, resource[/subresource], namespace, name);
- RBAC for service-account tokens ("sa:<namespace>:<name>", or a token the token controller put in a Secret),
  evaluated from the Roles and RoleBindings stored in the emulator, so a per-job Role built by the operator is really
  enforced;
- fault injection (`inject`: answer matching calls with 409/500/410...) and `cut_watches()`, for
  robustness tests.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextvars
import copy
import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import re
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import orjson
from multidict import CIMultiDict

from kubetune.testing import apivalidation, apiviews

ADMIN_TOKEN = "admin"
OPERATOR_TOKEN = "operator"
MAX_HISTORY = 20000
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES = ("", "namespaces")
PODS = ("", "pods")
SECRETS = ("", "secrets")
SERVICE_ACCOUNTS = ("", "serviceaccounts")
# A Secret the token controller fills with a long-lived token of the ServiceAccount it names (k8s.io/api core/v1
# types.go: SecretTypeServiceAccountToken, ServiceAccountNameKey, ServiceAccountUIDKey).
SERVICE_ACCOUNT_TOKEN_TYPE = "kubernetes.io/service-account-token"
SERVICE_ACCOUNT_NAME_KEY = "kubernetes.io/service-account.name"
SERVICE_ACCOUNT_UID_KEY = "kubernetes.io/service-account.uid"
# The emulator's tokens of that kind carry their claims in the clear: namespace, Secret, account, account uid, nonce.
SECRET_TOKEN_PREFIX = "secret-token:"
# What the emulated server reports as its version (its rules are ported from Kubernetes 1.32).
SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+kubetune.emulator", "platform": "linux/amd64"}


@dataclasses.dataclass(frozen=True)
class Call:
    user: str
    verb: str
    api_group: str
    resource: str  # "jobs" or "finetunejobs/status"
    namespace: str | None
    name: str | None
    label_selector: str | None = None  # of a list or watch


@dataclasses.dataclass
class Fault:
    """Answer calls that match with `status` (at most `times` times; None = forever), and `message` when given (the
    words of a real refusal, e.g. an admission webhook's)."""

    match: Callable[[Call], bool]
    status: int
    times: int | None = 1
    reason: str = "InjectedFault"
    message: str | None = None


@dataclasses.dataclass
class AdmissionRequest:
    """What an admission plugin sees of a write: `obj` is the object about to be stored (a mutating plugin changes
    it in place), `old` the stored one (None on create)."""

    operation: str  # CREATE | UPDATE
    user: str
    group: str
    resource: str  # the plural
    subresource: str | None
    namespace: str | None
    name: str
    obj: dict
    old: dict | None


# An admission plugin: called on the server's loop; refuses with ApiError, mutates `request.obj` in place.
AdmissionPlugin = Callable[["ApiServer", AdmissionRequest], None]
# Who sent the request being served (each request is its own task, with its own context).
_REQUEST_USER: contextvars.ContextVar[str] = contextvars.ContextVar("request_user", default="system:apiserver")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.details = status, reason, message, details or {}


class Change:
    """One entry of the watch history. Stored objects are never changed in place (every write stores a new
    dict), so the entry holds the object itself and serialises it once, for the first watcher that wants it."""

    __slots__ = ("rv", "key", "kind", "obj", "at", "_line")

    def __init__(self, rv: int, key: tuple[str, str], kind: str, obj: dict):
        self.rv, self.key, self.kind, self.obj, self._line = rv, key, kind, obj, None
        self.at = time.perf_counter()  # when the change was stored

    def line(self) -> bytes:
        if self._line is None:
            self._line = dump_json({"type": self.kind, "object": self.obj}) + b"\n"
        return self._line


@dataclasses.dataclass(frozen=True)
class Target:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))(?P<rest>(?:/[^/]+)*)/?$")


def parse_path(path: str) -> Target | None:
    """Resource paths only; discovery paths (/api/v1, /apis/g/v) give None."""
    m = _PATH.match(path)
    if not m:
        return None
    group, version = ("", "v1") if m["core"] else (m["group"], m["version"])
    parts = [p for p in (m["rest"] or "").split("/") if p]
    if not parts:
        return None
    namespace = None
    if parts[0] == "namespaces" and len(parts) >= 3:
        namespace, parts = parts[1], parts[2:]
    plural = parts[0]
    name = parts[1] if len(parts) > 1 else None
    sub = "/".join(parts[2:]) or None
    return Target(group, version, plural, namespace, name, sub)


@functools.lru_cache(maxsize=2)
def _rfc3339(second: int) -> str:
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    """Whole seconds, as the API server writes timestamps; formatted once a second (every write stamps one)."""
    return _rfc3339(int(time.time()))


# ------------------------------------------------------------------------------------------ patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. A new document: what the patch leaves alone is shared with `target`, not copied (stored
    objects are never changed in place, and the patch is freshly parsed from the request)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        else:
            doc = doc[part]
    return doc


def json_patch(doc: Any, ops: list[dict]) -> Any:
    """RFC 6902, including `test` (kopf uses it as a resourceVersion precondition)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        try:
            if kind == "test":
                if _resolve(doc, parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the test operation on {op['path']} failed")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(_resolve(doc, _pointer(op["from"])))
                if kind == "move":
                    doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
                kind, op = "add", {"path": op["path"], "value": value}
            if not parts:
                if kind in ("add", "replace"):
                    doc = copy.deepcopy(op["value"])
                    continue
                raise ApiError(422, "Invalid", "cannot remove the whole document")
            parent, last = _resolve(doc, parts[:-1]), parts[-1]
            if kind == "add":
                if isinstance(parent, list):
                    parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            else:
                raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, "Invalid", f"JSON patch path {op.get('path')!r} does not exist") from None
    return doc


# ------------------------------------------------------------------------------------------ JSON


def dump_json(value: Any) -> bytes:
    """orjson, a fifth of the standard library's time (encoding answers and watch events was a tenth of the emulator's
    CPU in a 10,000-job burst); the standard library for what orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def load_json(body: bytes) -> Any:
    """orjson, with the standard library's answer (and error) for what orjson refuses (an integer beyond 64 bits,
    malformed JSON): decoding request bodies was a twentieth of the emulator's CPU in a 10,000-job burst."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def json_response(value: Any, status: int = 200, headers: CIMultiDict | None = None) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=dump_json(value), status=status, headers=headers, content_type="application/json")


# ------------------------------------------------------------------------------------------ selectors


_REQ = re.compile(r"^\s*(?P<key>[^\s!=,()]+)\s*(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<value>.*?)\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


@functools.lru_cache(maxsize=1024)
def _label_requirements(selector: str) -> tuple[tuple[str, str, frozenset[str]], ...]:
    """A label selector parsed once (a list of 10,000 objects asks the same question of each): (op, key, values),
    op one of "exists", "!", "=", "!=", "in", "notin"."""
    parsed = []
    for requirement in _split_selector(selector):
        if requirement.startswith("!"):
            parsed.append(("!", requirement[1:].strip(), frozenset()))
            continue
        m = _REQ.match(requirement)
        if not m:
            parsed.append(("exists", requirement, frozenset()))
            continue
        op = m["op"].strip()
        values = frozenset(v.strip() for v in m["value"].strip("()").split(","))
        parsed.append(
            ("=" if op == "==" else op, m["key"], values if op in ("in", "notin") else frozenset([m["value"]]))
        )
    return tuple(parsed)


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    for op, key, values in _label_requirements(selector or ""):
        if op == "exists":
            if key not in labels:
                return False
        elif op == "!":
            if key in labels:
                return False
        elif op in ("=", "in"):
            if labels.get(key) not in values:
                return False
        elif labels.get(key) in values:  # != and notin
            return False
    return True


@functools.lru_cache(maxsize=1024)
def _field_requirements(selector: str) -> tuple[tuple[tuple[str, ...], str, bool], ...]:
    """A field selector parsed once: (the field's path, the value, whether negated)."""
    parsed = []
    for requirement in _split_selector(selector):
        key, value = re.split(r"!=|==|=", requirement, maxsplit=1)
        parsed.append((tuple(key.strip().split(".")), value.strip(), "!=" in requirement))
    return tuple(parsed)


def match_fields(selector: str | None, obj: dict) -> bool:
    for path, value, negate in _field_requirements(selector or ""):
        actual: Any = obj
        for part in path:
            actual = actual.get(part) if isinstance(actual, dict) else None
        if (str(actual) == value) == negate:
            return False
    return True


# ------------------------------------------------------------------------------------------ RBAC


def _rule_allows(rule: dict, verb: str, group: str, resource: str, name: str | None) -> bool:
    if group not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
        return False
    if resource not in rule.get("resources", []) and "*" not in rule.get("resources", []):
        return False
    if verb not in rule.get("verbs", []) and "*" not in rule.get("verbs", []):
        return False
    names = rule.get("resourceNames")
    return not names or name in names


# ------------------------------------------------------------------------------------------ server


def _resource_infos(resource_list: dict) -> dict[tuple[str, str, str], kmock.ResourceInfo]:
    """(group, version, plural) -> what the server knows of a resource, from one APIResourceList."""
    group, version = apiviews.split_group_version(resource_list["groupVersion"])
    entries = resource_list["resources"]
    return {
        (group, version, e["name"]): kmock.ResourceInfo(
            kind=e["kind"],
            singular=e.get("singularName") or None,
            namespaced=e["namespaced"],
            verbs=e["verbs"],
            shortnames=e.get("shortNames", []),
            categories=e.get("categories", []),
            subresources={s["name"].partition("/")[2] for s in entries if s["name"].startswith(e["name"] + "/")},
        )
        for e in entries
        if "/" not in e["name"]
    }


BUILTIN_INFOS = {
    key: info
    for resource_list in apiviews.builtin_resource_lists()
    for key, info in _resource_infos(resource_list).items()
}


def _media_types(accept: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for media in accept.split(","):
        base, *params = [part.strip() for part in media.split(";")]
        out.append((base.lower(), dict(p.split("=", 1) for p in params if "=" in p)))
    return out


def requested_view(accept: str) -> tuple[str, str] | None:
    """The meta.k8s.io form of a response a client asks for before plain JSON: (kind, group version), kind one of
    Table, PartialObjectMetadata(List); None for the object itself (k8s.io/apiserver
    pkg/endpoints/handlers/negotiation/negotiate.go: the first acceptable media type wins)."""
    if "as=" not in accept:
        return None
    for base, params in _media_types(accept):
        if base not in ("application/json", "application/*", "*/*"):
            continue
        kind, group_version = params.get("as"), f"{params.get('g')}/{params.get('v')}"
        if kind is None:
            return None
        if kind in ("Table", "PartialObjectMetadata", "PartialObjectMetadataList") and group_version in (
            "meta.k8s.io/v1",
            "meta.k8s.io/v1beta1",
        ):
            return kind, group_version
    return None


def wants_aggregated_discovery(accept: str) -> bool:
    """k8s.io/apiserver pkg/endpoints/discovery/aggregated/wrapper.go: /api and /apis answer with an
    apidiscovery.k8s.io/v2 APIGroupDiscoveryList when that comes before plain JSON in Accept."""
    for base, params in _media_types(accept):
        if base != "application/json":
            continue
        if (
            params.get("as") == "APIGroupDiscoveryList"
            and params.get("g") == "apidiscovery.k8s.io"
            and params.get("v") == "v2"
        ):
            return True
        if "as" not in params:
            return False
    return False


@attrs.define(kw_only=True)
class ApiServer:
    """The stateful API server. Runs in its own thread and event loop (see `Emulator`)."""

    store: dict[tuple[str, str], dict[tuple[str | None, str], dict]] = attrs.field(factory=dict, init=False)
    calls: list[Call] = attrs.field(factory=list, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    tokens: dict[str, str] = attrs.field(factory=dict, init=False)  # token -> user
    superusers: set[str] = attrs.field(factory=set, init=False)
    history: list[Change] = attrs.field(factory=list, init=False)
    max_history: int = attrs.field(default=MAX_HISTORY, init=False)
    uids: set[str] = attrs.field(factory=set, init=False)  # of every stored object (the garbage collector's view)
    # Objects being deleted in the foreground, by uid: (store key, namespace, name).
    foreground: dict[str, tuple] = attrs.field(factory=dict, init=False)
    oldest_rv: int = attrs.field(default=0, init=False)
    rv: int = attrs.field(default=1, init=False)
    watch_epoch: int = attrs.field(default=0, init=False)
    # Set (and replaced by a fresh one) on every change: a watcher holds the one current before it reads the
    # history, so no change between its read and its wait goes unnoticed.
    changed: asyncio.Event | None = attrs.field(default=None, init=False)
    address: str = attrs.field(default="", init=False)  # host:port, as /api reports it
    # The established CRDs, by (group, plural), and the resources they serve.
    crds: dict[tuple[str, str], apiviews.ServedCRD] = attrs.field(factory=dict, init=False)
    _crd_infos: dict[tuple[str, str, str], kmock.ResourceInfo] = attrs.field(factory=dict, init=False)
    # Discovery and OpenAPI answers, built once per set of CRDs: (path, form) -> (body, content type).
    _documents: dict[tuple[str, str], tuple[bytes, str]] = attrs.field(factory=dict, init=False)
    # Admission plugins, in the API server's order: mutating ones, then the schema and metadata validation, then
    # validating ones.
    mutating: list[AdmissionPlugin] = attrs.field(factory=list, init=False)
    validating: list[AdmissionPlugin] = attrs.field(factory=list, init=False)
    ca_pem: str = attrs.field(default="", init=False)  # what the token controller puts in a token Secret's ca.crt

    def __attrs_post_init__(self) -> None:
        self.tokens.update({ADMIN_TOKEN: "admin", OPERATOR_TOKEN: "operator"})
        self.superusers.update({"admin", "operator"})

    # --------------------------------------------------------------------------- entry point

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            target = parse_path(raw_request.path)
            if target is None:
                return self._serve_document(raw_request)
            return await self._serve(raw_request, target)
        except ApiError as err:
            return self._status_response(err.status, err.reason, err.message, err.details)
        except Exception as err:  # a bug here must show up in the client, not hang it
            return self._status_response(500, "InternalError", repr(err))

    @staticmethod
    def _status_response(code: int, reason: str, message: str, details: dict | None = None) -> aiohttp.web.Response:
        body = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
            "details": details or {},
        }
        return json_response(body, status=code)

    def _info(self, target: Target) -> kmock.ResourceInfo:
        key = (target.group, target.version, target.plural)
        info = self._crd_infos.get(key) or BUILTIN_INFOS.get(key)
        if info is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({target.plural})")
        return info

    # --------------------------------------------------------------------------- discovery and OpenAPI

    def _serve_document(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        path = raw.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if path == "/version":
            return aiohttp.web.json_response(SERVER_VERSION)
        self._user(raw)  # the rest is for authenticated users only
        accept = raw.headers.get("Accept", "")
        if path in ("/api", "/apis") and wants_aggregated_discovery(accept):
            form = "aggregated"
        elif path == "/openapi/v2" and "json" not in accept and "*/*" not in accept and accept:
            form = "protobuf"
        else:
            form = "json"
        key = (path, form)
        if key not in self._documents:
            self._documents[key] = self._document(path, form)
        body, content_type = self._documents[key]
        return aiohttp.web.Response(body=body, headers={"Content-Type": content_type})

    def _group_versions(self) -> dict[str, dict[str, list[dict]]]:
        """group -> version -> legacy APIResource entries: the built-in kinds, then the CRDs' groups."""
        groups: dict[str, dict[str, list[dict]]] = {}
        for resource_list in apiviews.builtin_resource_lists():
            group, version = apiviews.split_group_version(resource_list["groupVersion"])
            groups.setdefault(group, {})[version] = resource_list["resources"]
        for crd in sorted(self.crds.values(), key=lambda c: c.group):
            for version in crd.versions:
                groups.setdefault(crd.group, {}).setdefault(version, []).extend(crd.discovery_entries(version))
        return groups

    def _openapi_v3_documents(self) -> dict[str, dict]:
        """'api/v1' or 'apis/<group>/<version>' -> that group version's OpenAPI v3 document."""
        documents: dict[str, dict] = {}
        for group, versions in self._group_versions().items():
            for version, entries in versions.items():
                path = f"apis/{group}/{version}" if group else f"api/{version}"
                crds = [c for c in self.crds.values() if c.group == group and version in c.versions]
                if not crds:
                    documents[path] = apiviews.builtin_openapi_v3(group, version, entries)
                    continue
                merged: dict = {}
                for crd in crds:
                    document = crd.openapi(version, v2=False)
                    merged = merged or {k: v for k, v in document.items() if k not in ("paths", "components")}
                    merged.setdefault("paths", {}).update(document["paths"])
                    merged.setdefault("components", {"schemas": {}})["schemas"].update(
                        document["components"]["schemas"]
                    )
                documents[path] = merged
        return documents

    def _document(self, path: str, form: str) -> tuple[bytes, str]:
        """Discovery (k8s.io/apiserver pkg/endpoints/discovery: legacy and aggregated) and OpenAPI (k8s.io/kube-openapi
        pkg/handler and handler3: /openapi/v2, the /openapi/v3 index of group versions and their documents)."""
        groups = self._group_versions()
        core = groups.get("", {})
        document: Any
        content_type = "application/json"
        if form == "aggregated":
            items = [("", core)] if path == "/api" else [(g, v) for g, v in groups.items() if g]
            document, content_type = apiviews.aggregated_list(items), apiviews.AGGREGATED_V2
        elif path == "/api":
            document = {
                "kind": "APIVersions",
                "versions": sorted(core, key=apiviews.version_priority),
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.address}],
            }
        elif path.startswith("/api/") and path.count("/") == 2 and path[5:] in core:
            document = apiviews.legacy_resource_list(path[5:], core[path[5:]])
        elif path == "/apis":
            document = {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [apiviews.api_group(g, list(v)) for g, v in groups.items() if g],
            }
        elif path.startswith("/apis/") and path.count("/") == 2 and path[6:] in groups:
            document = {"kind": "APIGroup", "apiVersion": "v1", **apiviews.api_group(path[6:], list(groups[path[6:]]))}
        elif (
            path.startswith("/apis/")
            and path.count("/") == 3
            and apiviews.split_group_version(path[6:])[1] in groups.get(apiviews.split_group_version(path[6:])[0], {})
        ):
            group, version = apiviews.split_group_version(path[6:])
            document = apiviews.legacy_resource_list(path[6:], groups[group][version])
        elif path == "/openapi/v2":
            document = {
                "swagger": "2.0",
                "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
                "paths": {},
                "definitions": {},
            }
            for crd in self.crds.values():
                for version in crd.versions:
                    part = crd.openapi(version, v2=True)
                    document["paths"].update(part["paths"])
                    document["definitions"].update(part["definitions"])
            if form == "protobuf":
                return apiviews.openapi_v2_protobuf(document), apiviews.OPENAPI_V2_PROTOBUF_ANSWER
        elif path == "/openapi/v3":
            document = {
                "paths": {
                    name: {"serverRelativeURL": f"/openapi/v3/{name}?hash={apiviews.document_hash(doc)}"}
                    for name, doc in self._openapi_v3_documents().items()
                }
            }
        elif path.startswith("/openapi/v3/") and path[12:] in (documents := self._openapi_v3_documents()):
            document = documents[path[12:]]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return json.dumps(document).encode(), content_type

    # --------------------------------------------------------------------------- CRDs

    async def _serve_crd(self, name: str) -> None:
        """A stored CRD is served (what the apiextensions-apiserver's controllers lead to); a deleted one is not,
        and its objects go with it (its customresourcecleanup finalizer's work)."""
        for key in [k for k, served in self.crds.items() if served.name == name]:
            del self.crds[key]
            if (None, name) not in self._objects(CRDS):
                for namespace, object_name in list(self._objects(key)):
                    await self._delete(key, namespace, object_name, None, {})
        crd = self._objects(CRDS).get((None, name))
        if crd is not None and not crd["metadata"].get("deletionTimestamp"):
            served = apiviews.ServedCRD(crd)
            self.crds[(served.group, served.plural)] = served
        self._crd_infos = {
            (c.group, version, c.plural): kmock.ResourceInfo(
                kind=c.kind,
                singular=c.singular,
                namespaced=c.namespaced,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
                shortnames=c.names.get("shortNames", []),
                categories=c.names.get("categories", []),
                subresources=set(c.subresources(version)),
            )
            for c in self.crds.values()
            for version in c.versions
        }
        self._documents.clear()

    async def _establish(self, crd: dict) -> dict:
        """The status the naming and establishing controllers write: names accepted, Established
        (k8s.io/apiextensions-apiserver pkg/controller/status/naming_controller.go, pkg/controller/establish)."""
        names = {
            "listKind": crd["spec"]["names"]["kind"] + "List",
            "singular": crd["spec"]["names"]["kind"].lower(),
        } | crd["spec"]["names"]
        status = crd.get("status") or {}
        stored = set(status.get("storedVersions") or [])
        stored |= {v["name"] for v in crd["spec"]["versions"] if v.get("storage")}
        established = any(
            c.get("type") == "Established" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        if established and status.get("acceptedNames") == names and stored == set(status.get("storedVersions")):
            return crd
        now = now_rfc3339()
        status = {
            "acceptedNames": names,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
            "storedVersions": sorted(stored),
        }
        target = Target(CRDS[0], "v1", CRDS[1], None, crd["metadata"]["name"], "status")
        return await self._store_changed(
            CRDS, BUILTIN_INFOS[(CRDS[0], "v1", CRDS[1])], target, crd, {**crd, "status": status}
        )

    def _admit(self, operation: str, target: Target, key: tuple[str, str], obj: dict, old: dict | None) -> None:
        """Mutating admission, the API server's own validation, validating admission (in the API server's order)."""
        request = AdmissionRequest(
            operation,
            _REQUEST_USER.get(),
            key[0],
            key[1],
            target.subresource,
            obj["metadata"].get("namespace"),
            obj["metadata"]["name"],
            obj,
            old,
        )
        for plugin in list(self.mutating):
            plugin(self, request)
        causes = apivalidation.metadata_causes(key[0], key[1], obj)
        served = self._crd_for(target)
        if served is not None:
            causes += apivalidation.custom_resource_causes(
                obj, served.schema(target.version), status_only=target.subresource == "status"
            )
        if causes:
            kind = served.kind if served is not None else (obj.get("kind") or key[1])
            refusal = apivalidation.Invalid(kind, key[0], obj["metadata"]["name"], causes)
            raise ApiError(422, "Invalid", refusal.message, refusal.details)
        for plugin in list(self.validating):
            plugin(self, request)

    def _crd_for(self, target: Target) -> apiviews.ServedCRD | None:
        served = self.crds.get((target.group, target.plural))
        return served if served is not None and target.version in served.versions else None

    def _prune(self, target: Target, obj: dict, params: dict, warnings: list[str], patched: bool = False) -> dict:
        """Drop what the CRD's schema does not declare; fieldValidation decides what the client hears of it
        (k8s.io/apiserver pkg/endpoints/handlers/create.go, update.go, patch.go; the default is Warn)."""
        served = self._crd_for(target)
        if served is None:
            return obj
        obj, unknown = served.prune(obj, target.version)
        directive = params.get("fieldValidation") or "Warn"
        if not unknown or directive == "Ignore":
            return obj
        errors = ", ".join(f'unknown field "{path}"' for path in unknown)
        if directive == "Strict":
            if patched:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{served.kind}.{served.group} "{target.name}" is invalid: patch: '
                    f"Invalid value: {json.dumps(obj)!r}: strict decoding error: {errors}",
                )
            raise ApiError(
                400,
                "BadRequest",
                f'{served.kind} in version "{target.version}" cannot be handled as a '
                f"{served.kind}: strict decoding error: {errors}",
            )
        warnings.extend(f'unknown field "{path}"' for path in unknown)
        return obj

    def _user(self, raw_request: aiohttp.web.BaseRequest) -> str:
        # The scheme is case-insensitive, as kube-apiserver reads it (kubernetes/kubernetes, staging/src/k8s.io/
        # apiserver/pkg/authentication/request/bearertoken/bearertoken.go): the Python client's in-cluster loader
        # sends "bearer <token>".
        scheme, _, token = raw_request.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if token in self.tokens:
            return self.tokens[token]
        if token.startswith("sa:"):
            return token
        if token.startswith(SECRET_TOKEN_PREFIX) and (account := self._secret_token_account(token)):
            return account
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def _secret_token_account(self, token: str) -> str | None:
        """The user of a token the token controller put in a Secret, while it is valid: as kube-apiserver checks one
        (kubernetes pkg/serviceaccount/legacy.go, legacyValidator.Validate), the Secret still there and not being
        deleted, holding this very token, and the ServiceAccount it names there with the same uid."""
        claims = token.removeprefix(SECRET_TOKEN_PREFIX).split(":")
        if len(claims) != 5:
            return None
        namespace, secret_name, account_name, account_uid, _ = claims
        secret = self._objects(SECRETS).get((namespace, secret_name))
        if secret is None or secret["metadata"].get("deletionTimestamp"):
            return None
        if (secret.get("data") or {}).get("token") != base64.b64encode(token.encode()).decode():
            return None
        account = self._objects(SERVICE_ACCOUNTS).get((namespace, account_name))
        if account is None or account["metadata"].get("deletionTimestamp") or account["metadata"]["uid"] != account_uid:
            return None
        return f"sa:{namespace}:{account_name}"

    def _authorize(self, user: str, call: Call) -> None:
        if user in self.superusers:
            return
        if user.startswith("sa:"):
            _, namespace, sa = user.split(":", 2)
            for binding in self.store.get(("rbac.authorization.k8s.io", "rolebindings"), {}).values():
                if binding["metadata"]["namespace"] != namespace:
                    continue
                if not any(
                    s.get("kind") == "ServiceAccount"
                    and s.get("name") == sa
                    and s.get("namespace", namespace) == namespace
                    for s in binding.get("subjects", [])
                ):
                    continue
                ref = binding.get("roleRef", {})
                role = self.store.get(("rbac.authorization.k8s.io", "roles"), {}).get((namespace, ref.get("name")))
                if ref.get("kind") != "Role" or role is None or call.namespace != namespace:
                    continue
                if any(
                    _rule_allows(r, call.verb, call.api_group, call.resource, call.name) for r in role.get("rules", [])
                ):
                    return
        raise ApiError(403, "Forbidden", f"{user} cannot {call.verb} {call.resource} in {call.namespace}")

    @staticmethod
    def _verb(method: str, target: Target, params: dict) -> str:
        if method == "GET":
            if params.get("watch") in ("true", "1"):
                return "watch"
            return "get" if target.name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method) or (
            "delete" if target.name else "deletecollection"
        )

    async def _serve(self, raw: aiohttp.web.BaseRequest, target: Target) -> aiohttp.web.StreamResponse:
        if self.changed is None:
            self.changed = asyncio.Event()
        params = dict(raw.query)
        user = self._user(raw)
        _REQUEST_USER.set(user)
        verb = self._verb(raw.method, target, params)
        resource = f"{target.plural}/{target.subresource}" if target.subresource else target.plural
        call = Call(user, verb, target.group, resource, target.namespace, target.name, params.get("labelSelector"))
        self.calls.append(call)
        self._authorize(user, call)
        for fault in list(self.faults):
            if fault.match(call):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                raise ApiError(
                    fault.status, fault.reason, fault.message or f"injected fault {fault.status} for {verb} {resource}"
                )
        info = self._info(target)
        key = (target.group, target.plural)
        body = await raw.read()
        if raw.content_type == apiviews.PROTOBUF:
            try:
                data = apiviews.decode_protobuf_object(body)
            except ValueError as err:
                raise ApiError(415, "UnsupportedMediaType", str(err)) from None
        else:
            try:
                data = load_json(body) if body else None
            except ValueError as err:  # the API server's answer to a body that is not JSON
                raise ApiError(400, "BadRequest", f"couldn't get version/kind; json parse error: {err}") from None
        view = requested_view(raw.headers.get("Accept", ""))
        if verb == "watch":
            return await self._watch(raw, key, target, params, view)
        if verb == "list":
            listed = self._list(key, target, info, params)
            return json_response(self._render(target, listed["items"], listed, params, view, True))
        if verb == "get":
            obj = self._get(key, target)
            return json_response(self._render(target, [obj], obj, params, view, False))
        warnings: list[str] = []
        if verb == "create":
            result, status = await self._create(key, target, info, data, params, warnings), 201
        elif verb == "update":
            result, status = await self._update(key, target, info, data, params, warnings), 200
        elif verb == "patch":
            result, status = await self._patch(key, target, info, data, raw.content_type, params, warnings), 200
        elif verb == "delete":
            result, status = await self._delete(key, target.namespace, target.name, data, params), 200
        else:
            raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported here")
        if key == CRDS:
            await self._serve_crd(target.name or result["metadata"]["name"])
            if verb != "delete" and target.subresource is None:
                result = await self._establish(result)
        # The Warning header a real server sends for every unknown field it dropped (fieldValidation=Warn), its
        # text a quoted string (k8s.io/apimachinery pkg/util/net/http.go NewWarningHeader: 299 - "text").
        headers = CIMultiDict(("Warning", f"299 - {json.dumps(w, ensure_ascii=False)}") for w in warnings)
        return json_response(result, status=status, headers=headers)

    def _table_for(self, target: Target) -> tuple[list[dict], Callable[[dict], list]]:
        """The columns and the row function of a resource's Table: its CRD's printer columns, the ported printer
        of a built-in kind, or the generic default."""
        served = self._crd_for(target)
        if served is not None:
            columns = served.columns[target.version]
            return columns, lambda obj: apiviews.crd_row(columns, obj)
        return apiviews.BUILTIN_TABLES.get((target.group, target.plural), apiviews.DEFAULT_TABLE)

    def _render(
        self,
        target: Target,
        objects: list[dict],
        whole: dict,
        params: dict,
        view: tuple[str, str] | None,
        is_list: bool,
    ) -> dict:
        """The answer to a read in the form the client asked for (k8s.io/apiserver
        pkg/endpoints/handlers/response.go transformResponseObject)."""
        if view is None:
            return whole
        kind, group_version = view
        if kind == "Table":
            columns, row = self._table_for(target)
            resource_version = whole["metadata"].get("resourceVersion", "")
            return apiviews.table(columns, row, objects, resource_version, params, group_version=group_version)
        if kind == "PartialObjectMetadataList" and is_list:
            return {
                "apiVersion": group_version,
                "kind": "PartialObjectMetadataList",
                "metadata": whole["metadata"],
                "items": [apiviews.partial_metadata(o, group_version) for o in objects],
            }
        if kind == "PartialObjectMetadata" and not is_list:
            return apiviews.partial_metadata(whole, group_version)
        raise ApiError(
            406,
            "NotAcceptable",
            f"you requested {kind}, but the requested object is {'a list' if is_list else 'not a list'}",
        )

    # --------------------------------------------------------------------------- storage

    def _objects(self, key: tuple[str, str]) -> dict[tuple[str | None, str], dict]:
        return self.store.setdefault(key, {})

    def _get(self, key, target: Target) -> dict:
        obj = self._objects(key).get((target.namespace, target.name))
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{target.plural} "{target.name}" not found',
                {"name": target.name, "kind": target.plural},
            )
        return obj

    def _list(self, key, target: Target, info, params: dict) -> dict:
        # In key order (namespace, name), as etcd lists; what matches is sorted, not the whole collection.
        matched = [
            (where, obj)
            for where, obj in self._objects(key).items()
            if (target.namespace is None or where[0] == target.namespace)
            and match_labels(params.get("labelSelector"), obj["metadata"].get("labels") or {})
            and match_fields(params.get("fieldSelector"), obj)
        ]
        matched.sort(key=lambda item: (item[0][0] or "", item[0][1]))
        items = [obj for _, obj in matched]
        api_version = f"{target.group}/{target.version}" if target.group else target.version
        metadata = {"resourceVersion": str(self.rv)}
        # Chunks: `limit` items, and a `continue` token for the rest, which a list with that token picks up at the
        # first list's resourceVersion (k8s.io/apiserver pkg/storage/etcd3/store.go GetList; the token here is the
        # offset and that version, not etcd's key).
        limit = int(params.get("limit") or 0)
        if params.get("continue"):
            try:
                version, offset = (int(part) for part in params["continue"].split(":"))
            except ValueError:
                raise ApiError(400, "BadRequest", "continue key is not valid: malformed token") from None
            metadata["resourceVersion"] = str(version)
        else:
            offset = 0
        if limit > 0 and len(items) - offset > limit:
            metadata["continue"] = f"{metadata['resourceVersion']}:{offset + limit}"
            metadata["remainingItemCount"] = len(items) - offset - limit
        items = items[offset : offset + limit] if limit > 0 else items[offset:]
        return {"apiVersion": api_version, "kind": f"{info.kind}List", "metadata": metadata, "items": items}

    async def _record(self, key, kind: str, obj: dict) -> None:
        self.history.append(Change(self.rv, key, kind, obj))
        if key == SECRETS or key == SERVICE_ACCOUNTS:
            self._tokens_changed(key, kind, obj)
        if kind == "ADDED":
            self.uids.add(obj["metadata"]["uid"])
        elif kind == "DELETED":
            self.uids.discard(obj["metadata"]["uid"])
        if len(self.history) > self.max_history:
            cut = len(self.history) // 2
            self.oldest_rv = self.history[cut].rv
            del self.history[:cut]
        self.notify()

    def notify(self) -> None:
        """Wake every watcher (on the server's loop)."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    async def _create(
        self, key, target: Target, info, data: Any, params: dict | None = None, warnings: list[str] | None = None
    ) -> dict:
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        obj = data  # freshly parsed from the request: ours to keep
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            if meta.get("namespace") and target.namespace and meta["namespace"] != target.namespace:
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
            meta["namespace"] = target.namespace or meta.get("namespace")
            if not meta["namespace"]:
                raise ApiError(400, "BadRequest", "a namespace is required")
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        ident = (meta.get("namespace"), meta["name"])
        if ident in self._objects(key):
            raise ApiError(
                409,
                "AlreadyExists",
                f'{target.plural} "{meta["name"]}" already exists',
                {"name": meta["name"], "kind": target.plural},
            )
        if info.namespaced and (None, meta["namespace"]) not in self._objects(("", "namespaces")):
            await self._create(
                ("", "namespaces"),
                Target("", "v1", "namespaces", None, None, None),
                self._info(Target("", "v1", "namespaces", None, None, None)),
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": meta["namespace"]}},
            )
        obj["apiVersion"] = obj.get("apiVersion") or (
            f"{target.group}/{target.version}" if target.group else target.version
        )
        obj["kind"] = obj.get("kind") or info.kind
        if "status" in info.subresources:
            obj.pop("status", None)  # status is written through /status only
        obj = self._prune(target, obj, params or {}, warnings if warnings is not None else [])
        meta = obj["metadata"]
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        if key == PODS:
            self._admit_service_account(obj)
        self._admit("CREATE", target, key, obj, None)
        meta.update(
            uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1, resourceVersion=self._next_rv()
        )
        self._objects(key)[ident] = obj
        await self._record(key, "ADDED", obj)
        if key == NAMESPACES:
            await self._make_default_account(meta["name"])
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if owners and not owners & self.uids:
            # The garbage collector deletes dependents whose owners are all gone (a late create).
            asyncio.get_running_loop().call_later(
                0.05, lambda: asyncio.ensure_future(self._delete_quietly(key, ident[0], ident[1]))
            )
        return obj

    # ----------------------------------------------------------------- what the controller manager does for accounts

    def _admit_service_account(self, pod: dict) -> None:
        """The ServiceAccount admission plugin (kubernetes plugin/pkg/admission/serviceaccount/admission.go): a pod
        without an account gets `default`; one whose account does not exist is refused."""
        spec = pod.setdefault("spec", {})
        account = spec.setdefault("serviceAccountName", "default")
        namespace = pod["metadata"]["namespace"]
        if (namespace, account) not in self._objects(SERVICE_ACCOUNTS):
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{pod["metadata"]["name"]}" is forbidden: error looking up service account '
                f'{namespace}/{account}: serviceaccount "{account}" not found',
            )

    async def _make_default_account(self, namespace: str) -> None:
        """Every namespace gets its `default` ServiceAccount (kubernetes pkg/controller/serviceaccount/
        serviceaccounts_controller.go). Made with the namespace here, so a pod created right after finds it (the
        admission plugin looks the account up again for a while when it is `default`)."""
        target = Target("", "v1", "serviceaccounts", namespace, None, None)
        if (namespace, "default") not in self._objects(SERVICE_ACCOUNTS):
            await self._create(
                SERVICE_ACCOUNTS, target, self._info(target), {"metadata": {"name": "default", "namespace": namespace}}
            )

    def _tokens_changed(self, key, kind: str, obj: dict) -> None:
        """The token controller watches Secrets and ServiceAccounts; it acts a moment after a change."""
        if key == SECRETS and (kind == "DELETED" or obj.get("type") != SERVICE_ACCOUNT_TOKEN_TYPE):
            return  # a deleted Secret leaves nothing to do here (the real one drops it from its account's list)
        if key == SERVICE_ACCOUNTS and kind != "DELETED":
            return
        meta = obj["metadata"]
        sync = self._sync_token_secret if key == SECRETS else self._delete_account_tokens
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(sync(meta["namespace"], meta["name"], meta["uid"]))
        )

    async def _sync_token_secret(self, namespace: str, name: str, uid: str) -> None:
        """kubernetes pkg/controller/serviceaccount/tokens_controller.go (syncSecret, generateTokenIfNeeded): a token
        Secret whose ServiceAccount is missing (or another of its name, by uid) is deleted; otherwise its ca.crt,
        namespace and token are filled in once, with the account's name and uid as annotations."""
        _REQUEST_USER.set("system:serviceaccount:kube-system:tokens-controller")
        secret = self._objects(SECRETS).get((namespace, name))
        if secret is None or secret["metadata"]["uid"] != uid or secret["metadata"].get("deletionTimestamp"):
            return
        annotations = secret["metadata"].get("annotations") or {}
        account_name = annotations.get(SERVICE_ACCOUNT_NAME_KEY, "")
        account = self._objects(SERVICE_ACCOUNTS).get((namespace, account_name))
        wanted_uid = annotations.get(SERVICE_ACCOUNT_UID_KEY)
        if account is None or (wanted_uid and wanted_uid != account["metadata"]["uid"]):
            await self._delete_quietly(SECRETS, namespace, name)
            return
        data = dict(secret.get("data") or {})
        if data.get("token") and data.get("namespace") and data.get("ca.crt"):
            return

        def encoded(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        account_uid = account["metadata"]["uid"]
        token = f"{SECRET_TOKEN_PREFIX}{namespace}:{name}:{account_name}:{account_uid}:{uuid.uuid4().hex}"
        data = {"ca.crt": encoded(self.ca_pem), "namespace": encoded(namespace), "token": encoded(token)} | {
            k: v for k, v in data.items() if v
        }
        filled = copy.deepcopy(secret)
        filled["data"] = data
        filled["metadata"]["annotations"] = annotations | {
            SERVICE_ACCOUNT_NAME_KEY: account_name,
            SERVICE_ACCOUNT_UID_KEY: account_uid,
        }
        target = Target("", "v1", "secrets", namespace, name, None)
        await self._store_changed(SECRETS, self._info(target), target, secret, filled)

    async def _delete_account_tokens(self, namespace: str, name: str, uid: str) -> None:
        """A deleted ServiceAccount's token Secrets go with it (tokens_controller.go, syncServiceAccount)."""
        _REQUEST_USER.set("system:serviceaccount:kube-system:tokens-controller")
        for (secret_namespace, secret_name), secret in list(self._objects(SECRETS).items()):
            annotations = secret["metadata"].get("annotations") or {}
            if (
                secret_namespace == namespace
                and secret.get("type") == SERVICE_ACCOUNT_TOKEN_TYPE
                and annotations.get(SERVICE_ACCOUNT_NAME_KEY) == name
                and annotations.get(SERVICE_ACCOUNT_UID_KEY, uid) == uid
            ):
                await self._delete_quietly(SECRETS, namespace, secret_name)

    async def _delete_quietly(self, key, namespace, name) -> None:
        try:
            await self._delete(key, namespace, name, None, {})
        except ApiError:
            pass

    def _check_precondition(self, old: dict, new_meta: dict | None) -> None:
        wanted = (new_meta or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )

    async def _store_changed(self, key, info, target: Target, old: dict, new: dict) -> dict:
        """Apply the subresource rules, bump generation/resourceVersion, notify watchers."""
        has_status = "status" in info.subresources
        new["metadata"] = dict(new.get("metadata") or {})  # written below; may still be old's (a patch)
        if target.subresource == "status":
            merged = {**old, "metadata": dict(old["metadata"])}
            if new.get("status") is None:
                merged.pop("status", None)
            else:
                merged["status"] = new["status"]
            new = merged
        elif target.subresource:
            raise ApiError(404, "NotFound", f"subresource {target.subresource} is not served here")
        else:
            if has_status:
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = old["status"]
            # Immutable identity.
            for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
                if field in old["metadata"]:
                    new.setdefault("metadata", {})[field] = old["metadata"][field]
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if not new["metadata"].get("deletionTimestamp"):  # finalizers going: nothing left to admit
            self._admit("UPDATE", target, key, new, old)
        if new == old:
            return old  # a no-op write changes nothing, not even the resourceVersion

        def payload(o):
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if payload(new) != payload(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        ident = (old["metadata"].get("namespace"), old["metadata"]["name"])
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self._objects(key)[ident]
            await self._record(key, "DELETED", new)
            await self._collect_garbage(new)
            await self._release_foreground_owners(new)
            return new
        self._objects(key)[ident] = new
        await self._record(key, "MODIFIED", new)
        return new

    async def _update(self, key, target: Target, info, data: Any, params: dict, warnings: list[str]) -> dict:
        old = self._get(key, target)
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        self._check_precondition(old, data.get("metadata"))
        new = data  # freshly parsed from the request
        new.setdefault("metadata", {})
        new = self._prune(target, new, params, warnings)
        return await self._store_changed(key, info, target, old, new)

    async def _patch(
        self, key, target: Target, info, data: Any, content_type: str, params: dict, warnings: list[str]
    ) -> dict:
        old = self._get(key, target)
        if content_type == "application/json-patch+json":
            if not isinstance(data, list):
                raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
            new = json_patch(old, data)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "a merge patch is an object")
            self._check_precondition(old, data.get("metadata"))
            new = merge_patch(old, data)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")
        new.setdefault("metadata", {})
        new = self._prune(target, new, params, warnings, patched=True)
        return await self._store_changed(key, info, target, old, new)

    async def _delete(self, key, namespace: str | None, name: str, data: Any, params: dict) -> dict:
        objects = self._objects(key)
        obj = objects.get((namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{key[1]} "{name}" not found', {"name": name, "kind": key[1]})
        # DeleteOptions.preconditions (k8s.io/apiserver pkg/registry/rest/delete.go BeforeDelete): 409 when the object
        # of that name is not the one the caller meant.
        for field in ("uid", "resourceVersion"):
            wanted = ((data or {}).get("preconditions") or {}).get(field)
            if wanted and wanted != obj["metadata"].get(field):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {key[1]} "{name}": Precondition '
                    f"failed: {'UID' if field == 'uid' else 'ResourceVersion'} in precondition: {wanted}, "
                    f"{'UID' if field == 'uid' else 'ResourceVersion'} in object meta: "
                    f"{obj['metadata'].get(field)}",
                )
        policy = (data or {}).get("propagationPolicy") or params.get("propagationPolicy") or "Background"
        if policy == "Foreground" and not obj["metadata"].get("deletionTimestamp"):
            return await self._delete_foreground(key, namespace, name, obj)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = now_rfc3339()
                obj["metadata"]["resourceVersion"] = self._next_rv()
                objects[(namespace, name)] = obj
                await self._record(key, "MODIFIED", obj)
            return obj
        del objects[(namespace, name)]
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        await self._record(key, "DELETED", obj)
        if policy != "Orphan":
            await self._collect_garbage(obj)
        await self._release_foreground_owners(obj)
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Success",
            "metadata": {},
            "details": {"name": name, "kind": key[1], "uid": obj["metadata"]["uid"]},
        }

    # Foreground cascading deletion, as the API server and the garbage collector do it together: the API server sets
    # the owner's deletionTimestamp and adds the foregroundDeletion finalizer (k8s.io/apiserver
    # pkg/registry/generic/registry/store.go, deletionFinalizersForGarbageCollection); the garbage collector deletes
    # the dependents and removes that finalizer once no dependent with ownerReferences[].blockOwnerDeletion is left
    # (kubernetes pkg/controller/garbagecollector/garbagecollector.go, processDeletingDependentsItem). A dependent
    # that has finalizers of its own (a pod the kubelet is still stopping) keeps the owner until it is gone.
    FOREGROUND = "foregroundDeletion"

    async def _delete_foreground(self, key, namespace: str | None, name: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["deletionTimestamp"] = now_rfc3339()
        meta["finalizers"] = [*(meta.get("finalizers") or []), self.FOREGROUND]
        meta["resourceVersion"] = self._next_rv()
        self._objects(key)[(namespace, name)] = obj
        self.foreground[meta["uid"]] = (key, namespace, name)
        await self._record(key, "MODIFIED", obj)
        await self._collect_garbage(obj)
        await self._release_foreground_owner(key, obj)
        return self._objects(key).get((namespace, name), obj)

    def _blocking_dependents(self, uid: str) -> bool:
        return any(
            ref.get("uid") == uid and ref.get("blockOwnerDeletion")
            for objects in self.store.values()
            for dependent in objects.values()
            for ref in dependent["metadata"].get("ownerReferences") or []
        )

    async def _release_foreground_owner(self, key, owner: dict) -> None:
        meta = owner["metadata"]
        if self.FOREGROUND not in (meta.get("finalizers") or []) or self._blocking_dependents(meta["uid"]):
            return
        self.foreground.pop(meta["uid"], None)
        current = self._objects(key).get((meta.get("namespace"), meta["name"]))
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return
        new = copy.deepcopy(current)
        new["metadata"]["finalizers"] = [f for f in new["metadata"]["finalizers"] if f != self.FOREGROUND]
        new["metadata"]["resourceVersion"] = self._next_rv()
        ident = (meta.get("namespace"), meta["name"])
        if new["metadata"]["finalizers"]:
            self._objects(key)[ident] = new
            await self._record(key, "MODIFIED", new)
            return
        del self._objects(key)[ident]
        await self._record(key, "DELETED", new)
        await self._release_foreground_owners(new)

    async def _release_foreground_owners(self, dependent: dict) -> None:
        """A dependent is gone: an owner deleted in the foreground that waited only for it goes too."""
        for ref in dependent["metadata"].get("ownerReferences") or []:
            if ref.get("uid") in self.foreground:
                key, namespace, name = self.foreground[ref["uid"]]
                owner = self._objects(key).get((namespace, name))
                if owner is None or owner["metadata"]["uid"] != ref["uid"]:
                    self.foreground.pop(ref["uid"], None)
                    continue
                await self._release_foreground_owner(key, owner)

    async def _collect_garbage(self, owner: dict) -> None:
        """Delete the dependents of a deleted owner (the garbage collector's background propagation)."""
        uid = owner["metadata"]["uid"]
        for key, objects in list(self.store.items()):
            for (namespace, name), obj in list(objects.items()):
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or []):
                    if (namespace, name) in objects:
                        await self._delete(key, namespace, name, None, {})

    # --------------------------------------------------------------------------- watch

    async def _watch(
        self, raw, key, target: Target, params: dict, view: tuple[str, str] | None = None
    ) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        timeout = float(params.get("timeoutSeconds") or 1800)
        deadline = asyncio.get_running_loop().time() + timeout
        epoch = self.watch_epoch
        headers = [True]  # a Table watch sends the column definitions with its first event only

        def line(change_kind: str, obj: dict) -> bytes:
            if view is not None and view[0] == "PartialObjectMetadata" and change_kind != "ERROR":
                # A metadata-only watch: each event's object as PartialObjectMetadata (k8s.io/apiserver
                # pkg/endpoints/handlers/response.go transformObject -> asPartialObjectMetadata, which the watch
                # server applies to every event it sends: pkg/endpoints/handlers/watch.go).
                return dump_json({"type": change_kind, "object": apiviews.partial_metadata(obj, view[1])}) + b"\n"
            if view is None or view[0] != "Table" or change_kind == "ERROR":
                return dump_json({"type": change_kind, "object": obj}) + b"\n"
            columns, row = self._table_for(target)
            rendered = apiviews.table(
                columns,
                row,
                [obj],
                obj["metadata"].get("resourceVersion", ""),
                params,
                headers=headers[0],
                group_version=view[1],
            )
            headers[0] = False
            return dump_json({"type": change_kind, "object": rendered}) + b"\n"

        def wanted(obj: dict) -> bool:
            meta = obj["metadata"]
            return (
                (target.namespace is None or meta.get("namespace") == target.namespace)
                and (target.name is None or meta.get("name") == target.name)
                and match_labels(params.get("labelSelector"), meta.get("labels") or {})
                and match_fields(params.get("fieldSelector"), obj)
            )

        async def send(kind: str, obj: dict) -> None:
            await response.write(line(kind, obj))

        try:
            since = params.get("resourceVersion")
            if since in (None, "", "0"):
                cursor = self.rv
                for obj in list(self._objects(key).values()):
                    if wanted(obj):
                        await send("ADDED", obj)
            else:
                cursor = int(since)
                if cursor < self.oldest_rv:
                    await send(
                        "ERROR",
                        {
                            "apiVersion": "v1",
                            "kind": "Status",
                            "status": "Failure",
                            "code": 410,
                            "reason": "Expired",
                            "message": f"too old resource version: {since}",
                            "metadata": {},
                        },
                    )
                    return response
            while epoch == self.watch_epoch:
                changed = self.changed
                start = bisect.bisect_right(self.history, cursor, key=lambda h: h.rv)
                for change in self.history[start:]:
                    cursor = change.rv
                    if change.key == key and wanted(change.obj):
                        await response.write(change.line() if view is None else line(change.kind, change.obj))
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), timeout=min(remaining, 1.0))
                except asyncio.TimeoutError:
                    pass
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        try:
            await response.write_eof()
        except Exception:
            pass
        return response


def make_test_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA made for this run and a serving certificate for 127.0.0.1 / localhost signed by it: (CA certificate,
    server certificate, server key) as PEM files. ECDSA P-256 keys: made in a millisecond, cheap handshakes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key, issuer: x509.Name, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-test-ca")])
    ca = certificate("kubetune-test-ca", ca_key, ca_name, ca_key, ca=True)
    server = certificate("kube-apiserver", server_key, ca_name, ca_key, ca=False)
    paths = directory / "ca.crt", directory / "apiserver.crt", directory / "apiserver.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the operator's own loop, through kopf[uvloop]): its transports and TLS are C, where
    asyncio's are Python, and they were a third of the emulator's CPU in a 10,000-job burst."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Emulator:
    """Runs an ApiServer on https://127.0.0.1:<port> in a background thread; the rest of the test stays
    synchronous. Clients trust `ca_file` (the kubeconfig carries it as certificate-authority-data)."""

    def __init__(self) -> None:
        self.server = ApiServer()
        self._loop = _new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api-emulator", daemon=True)
        self._pki = Path(tempfile.mkdtemp(prefix="kubetune-emulator-"))
        ca_file, self._cert_file, self._key_file = make_test_pki(self._pki)
        self.ca_file = str(ca_file)
        self.server.ca_pem = Path(ca_file).read_text()
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.server.changed = asyncio.Event()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert_file, self._key_file)
        context.set_alpn_protocols(["http/1.1"])
        # Watches stay open until their client leaves: on stop they are cancelled, not waited for.
        runner = aiohttp.web.ServerRunner(
            aiohttp.web.Server(self.server, handler_cancellation=True), handle_signals=False, shutdown_timeout=0.5
        )
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"
        self.server.address = f"127.0.0.1:{port}"
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> Emulator:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the API emulator did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        shutil.rmtree(self._pki, ignore_errors=True)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (for consistent snapshots and for mutating emulator state)."""

        async def wrapper():
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    # --------------------------------------------------------------------------- test helpers

    def register_crd(self, crd: dict) -> dict:
        """Create (or replace) a CRD through the API, as a cluster admin would: it is stored and served."""

        async def apply() -> dict:
            server = self.server
            target = Target(CRDS[0], "v1", CRDS[1], None, crd["metadata"]["name"], None)
            info = server._info(target)
            old = server._objects(CRDS).get((None, crd["metadata"]["name"]))
            body = copy.deepcopy(crd)
            if old is None:
                stored = await server._create(CRDS, replace(target, name=None), info, body)
            else:
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                stored = await server._update(CRDS, target, info, body, {}, [])
            await server._serve_crd(stored["metadata"]["name"])
            return await server._establish(stored)

        return asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def objects(self, group: str, plural: str, namespace: str | None = None) -> list[dict]:
        def snapshot():
            return [
                copy.deepcopy(o)
                for (ns, _), o in self.server.store.get((group, plural), {}).items()
                if namespace is None or ns == namespace
            ]

        return self.call(snapshot)

    def calls(self, user: str | None = None) -> list[Call]:
        return self.call(lambda: [c for c in self.server.calls if user is None or c.user == user])

    def inject(self, fault: Fault) -> None:
        self.call(lambda: self.server.faults.append(fault))

    def admit(self, plugin: AdmissionPlugin, mutating: bool = False) -> Callable[[], None]:
        """Register an admission plugin (an admission webhook's part); returns what unregisters it."""
        plugins = self.server.mutating if mutating else self.server.validating
        self.call(lambda: plugins.append(plugin))
        return lambda: self.call(lambda: plugins.remove(plugin) if plugin in plugins else None)

    def delete_crd(self, name: str) -> None:
        """Delete a CRD as a cluster admin would: no longer served, its objects gone with it."""

        async def remove() -> None:
            server = self.server
            if (None, name) in server._objects(CRDS):
                await server._delete(CRDS, None, name, None, {})
            await server._serve_crd(name)

        asyncio.run_coroutine_threadsafe(remove(), self._loop).result(10)

    def cut_watches(self) -> None:
        """End every open watch stream (clients must re-list or resume from their resourceVersion)."""

        async def cut():
            self.server.watch_epoch += 1
            self.server.notify()

        asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)

    def forget_history(self) -> None:
        """Make every resourceVersion seen so far too old (the next resumed watch gets 410 Gone)."""

        def forget():
            self.server.oldest_rv = self.server.rv + 1
            self.server.history.clear()

        self.call(forget)

    def kubeconfig(self, token: str) -> dict:
        ca_data = base64.b64encode(Path(self.ca_file).read_bytes()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url, "certificate-authority-data": ca_data}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "user"}}],
            "current-context": "emulator",
        }

    def client_configuration(self, token: str):
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = self.ca_file
        configuration.api_key = {"authorization": f"Bearer {token}"}
        configuration.connection_pool_maxsize = 16
        return configuration
