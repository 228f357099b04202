"""A local Kubernetes API server for operator tests: kmock 0.8 plus the API-server semantics it lacks.

kmock gives the HTTP server, API discovery (/api, /apis, /apis/<group>/<version>), the bundled
resource catalogue and Kubernetes-style error bodies. This layer adds what kopf and the official
client need (see /work/shared/notes/facts.md): a parser that handles /api/v1/namespaces, uid /
resourceVersion / creationTimestamp / generation, 201 on create, AlreadyExists and Conflict, the
/status subresource, label and field selectors, watches that resume from a resourceVersion (410 when
too old), PUT, merge / strategic-merge (as merge) / JSON patches (including the `test` op), finalizers,
and garbage collection by ownerReferences. No schema validation, defaulting or controllers: tests
play the Job controller and the kubelet themselves.

Also for tests:
- every call is recorded as (user, verb, apiGroup, resource[/subresource], namespace, name);
- RBAC for service-account tokens ("sa:<namespace>:<name>"), evaluated from the Roles and
  RoleBindings stored in the emulator, so a per-job Role built by the operator is really enforced;
- fault injection (`inject`: answer matching calls with 409/500/410...) and `cut_watches()`, for
  robustness tests.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import dataclasses
import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp.web
import attrs
import kmock

ADMIN_TOKEN = "admin"
OPERATOR_TOKEN = "operator"
MAX_HISTORY = 20000


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
    """Answer calls that match with `status` (at most `times` times; None = forever)."""

    match: Callable[[Call], bool]
    status: int
    times: int | None = 1
    reason: str = "InjectedFault"


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
            self._line = json.dumps({"type": self.kind, "object": self.obj}).encode() + b"\n"
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


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    for requirement in _split_selector(selector or ""):
        if requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
            continue
        m = _REQ.match(requirement)
        if not m:
            if requirement not in labels:
                return False
            continue
        key, op, value = m["key"], m["op"].strip(), m["value"]
        if op in ("=", "=="):
            if labels.get(key) != value:
                return False
        elif op == "!=":
            if labels.get(key) == value:
                return False
        else:
            values = {v.strip() for v in value.strip("()").split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and labels.get(key) in values:
                return False
    return True


def match_fields(selector: str | None, obj: dict) -> bool:
    for requirement in _split_selector(selector or ""):
        negate = "!=" in requirement
        key, value = re.split(r"!=|==|=", requirement, maxsplit=1)
        actual: Any = obj
        for part in key.strip().split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if (str(actual) == value.strip()) == negate:
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


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesScaffold):
    """The stateful API server. Runs in its own thread and event loop (see `Emulator`)."""

    store: dict[tuple[str, str], dict[tuple[str | None, str], dict]] = attrs.field(factory=dict, init=False)
    calls: list[Call] = attrs.field(factory=list, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    tokens: dict[str, str] = attrs.field(factory=dict, init=False)  # token -> user
    superusers: set[str] = attrs.field(factory=set, init=False)
    history: list[Change] = attrs.field(factory=list, init=False)
    max_history: int = attrs.field(default=MAX_HISTORY, init=False)
    uids: set[str] = attrs.field(factory=set, init=False)  # of every stored object (the garbage collector's view)
    oldest_rv: int = attrs.field(default=0, init=False)
    rv: int = attrs.field(default=1, init=False)
    watch_epoch: int = attrs.field(default=0, init=False)
    # Set (and replaced by a fresh one) on every change: a watcher holds the one current before it reads the
    # history, so no change between its read and its wait goes unnoticed.
    changed: asyncio.Event | None = attrs.field(default=None, init=False)
    _infos: dict[tuple[str, str, str], kmock.ResourceInfo] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.tokens.update({ADMIN_TOKEN: "admin", OPERATOR_TOKEN: "operator"})
        self.superusers.update({"admin", "operator"})

    # --------------------------------------------------------------------------- entry point

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        target = parse_path(raw_request.path)
        if target is None:
            return await super().__call__(raw_request)  # discovery: kmock serves it
        try:
            return await self._serve(raw_request, target)
        except ApiError as err:
            return self._status_response(err.status, err.reason, err.message, err.details)
        except Exception as err:  # a bug here must show up in the client, not hang it
            return self._status_response(500, "InternalError", repr(err))

    @staticmethod
    def _status_response(code: int, reason: str, message: str, details: dict | None = None) -> aiohttp.web.Response:
        body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
                "reason": reason, "message": message, "details": details or {}}
        return aiohttp.web.json_response(body, status=code)

    def _info(self, target: Target) -> kmock.ResourceInfo:
        key = (target.group, target.version, target.plural)
        if key in self._infos:
            return self._infos[key]
        for resource in self.resources:  # resources are only ever added (CRDs): a hit can be kept
            if resource.group == target.group and resource.plural == target.plural and resource.version == target.version:
                self._infos[key] = self.resources[resource]
                return self._infos[key]
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({target.plural})")

    def _user(self, raw_request: aiohttp.web.BaseRequest) -> str:
        header = raw_request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip()
        if token in self.tokens:
            return self.tokens[token]
        if token.startswith("sa:"):
            return token
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def _authorize(self, user: str, call: Call) -> None:
        if user in self.superusers:
            return
        if user.startswith("sa:"):
            _, namespace, sa = user.split(":", 2)
            for binding in self.store.get(("rbac.authorization.k8s.io", "rolebindings"), {}).values():
                if binding["metadata"]["namespace"] != namespace:
                    continue
                if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                           and s.get("namespace", namespace) == namespace for s in binding.get("subjects", [])):
                    continue
                ref = binding.get("roleRef", {})
                role = self.store.get(("rbac.authorization.k8s.io", "roles"), {}).get((namespace, ref.get("name")))
                if ref.get("kind") != "Role" or role is None or call.namespace != namespace:
                    continue
                if any(_rule_allows(r, call.verb, call.api_group, call.resource, call.name) for r in role.get("rules", [])):
                    return
        raise ApiError(403, "Forbidden", f"{user} cannot {call.verb} {call.resource} in {call.namespace}")

    @staticmethod
    def _verb(method: str, target: Target, params: dict) -> str:
        if method == "GET":
            if params.get("watch") in ("true", "1"):
                return "watch"
            return "get" if target.name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method) or (
            "delete" if target.name else "deletecollection")

    async def _serve(self, raw: aiohttp.web.BaseRequest, target: Target) -> aiohttp.web.StreamResponse:
        if self.changed is None:
            self.changed = asyncio.Event()
        params = dict(raw.query)
        user = self._user(raw)
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
                raise ApiError(fault.status, fault.reason, f"injected fault {fault.status} for {verb} {resource}")
        info = self._info(target)
        key = (target.group, target.plural)
        body = await raw.read()
        data = json.loads(body) if body else None
        if verb == "watch":
            return await self._watch(raw, key, target, params)
        if verb == "list":
            return aiohttp.web.json_response(self._list(key, target, info, params))
        if verb == "get":
            return aiohttp.web.json_response(self._get(key, target))
        if verb == "create":
            return aiohttp.web.json_response(await self._create(key, target, info, data), status=201)
        if verb == "update":
            return aiohttp.web.json_response(await self._update(key, target, info, data))
        if verb == "patch":
            return aiohttp.web.json_response(await self._patch(key, target, info, data, raw.content_type))
        if verb == "delete":
            return aiohttp.web.json_response(await self._delete(key, target.namespace, target.name, data, params))
        raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported here")

    # --------------------------------------------------------------------------- storage

    def _objects(self, key: tuple[str, str]) -> dict[tuple[str | None, str], dict]:
        return self.store.setdefault(key, {})

    def _get(self, key, target: Target) -> dict:
        obj = self._objects(key).get((target.namespace, target.name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{target.plural} "{target.name}" not found',
                           {"name": target.name, "kind": target.plural})
        return obj

    def _list(self, key, target: Target, info, params: dict) -> dict:
        items = [obj for (ns, _), obj in sorted(self._objects(key).items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
                 if (target.namespace is None or ns == target.namespace)
                 and match_labels(params.get("labelSelector"), obj["metadata"].get("labels") or {})
                 and match_fields(params.get("fieldSelector"), obj)]
        api_version = f"{target.group}/{target.version}" if target.group else target.version
        return {"apiVersion": api_version, "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    async def _record(self, key, kind: str, obj: dict) -> None:
        self.history.append(Change(self.rv, key, kind, obj))
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

    async def _create(self, key, target: Target, info, data: Any) -> dict:
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
            raise ApiError(409, "AlreadyExists", f'{target.plural} "{meta["name"]}" already exists',
                           {"name": meta["name"], "kind": target.plural})
        if info.namespaced and meta["namespace"] not in {n for _, n in self._objects(("", "namespaces"))}:
            await self._create(("", "namespaces"), Target("", "v1", "namespaces", None, None, None),
                               self._info(Target("", "v1", "namespaces", None, None, None)),
                               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": meta["namespace"]}})
        obj["apiVersion"] = obj.get("apiVersion") or (f"{target.group}/{target.version}" if target.group else target.version)
        obj["kind"] = obj.get("kind") or info.kind
        if "status" in info.subresources:
            obj.pop("status", None)  # status is written through /status only
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1,
                    resourceVersion=self._next_rv())
        self._objects(key)[ident] = obj
        await self._record(key, "ADDED", obj)
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if owners and not owners & self.uids:
            # The garbage collector deletes dependents whose owners are all gone (a late create).
            asyncio.get_running_loop().call_later(
                0.05, lambda: asyncio.ensure_future(self._delete_quietly(key, ident[0], ident[1])))
        return obj

    async def _delete_quietly(self, key, namespace, name) -> None:
        try:
            await self._delete(key, namespace, name, None, {})
        except ApiError:
            pass

    def _check_precondition(self, old: dict, new_meta: dict | None) -> None:
        wanted = (new_meta or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please apply your changes to the latest "
                           "version and try again")

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
        if new == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        payload = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}
        if payload(new) != payload(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        ident = (old["metadata"].get("namespace"), old["metadata"]["name"])
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self._objects(key)[ident]
            await self._record(key, "DELETED", new)
            await self._collect_garbage(new)
            return new
        self._objects(key)[ident] = new
        await self._record(key, "MODIFIED", new)
        return new

    async def _update(self, key, target: Target, info, data: Any) -> dict:
        old = self._get(key, target)
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        self._check_precondition(old, data.get("metadata"))
        new = data  # freshly parsed from the request
        new.setdefault("metadata", {})
        return await self._store_changed(key, info, target, old, new)

    async def _patch(self, key, target: Target, info, data: Any, content_type: str) -> dict:
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
        return await self._store_changed(key, info, target, old, new)

    async def _delete(self, key, namespace: str | None, name: str, data: Any, params: dict) -> dict:
        objects = self._objects(key)
        obj = objects.get((namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{key[1]} "{name}" not found', {"name": name, "kind": key[1]})
        policy = (data or {}).get("propagationPolicy") or params.get("propagationPolicy") or "Background"
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
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {},
                "details": {"name": name, "kind": key[1], "uid": obj["metadata"]["uid"]}}

    async def _collect_garbage(self, owner: dict) -> None:
        """Delete the dependents of a deleted owner (the garbage collector's background propagation)."""
        uid = owner["metadata"]["uid"]
        for key, objects in list(self.store.items()):
            for (namespace, name), obj in list(objects.items()):
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or []):
                    if (namespace, name) in objects:
                        await self._delete(key, namespace, name, None, {})

    # --------------------------------------------------------------------------- watch

    async def _watch(self, raw, key, target: Target, params: dict) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        timeout = float(params.get("timeoutSeconds") or 1800)
        deadline = asyncio.get_running_loop().time() + timeout
        epoch = self.watch_epoch

        def wanted(obj: dict) -> bool:
            meta = obj["metadata"]
            return ((target.namespace is None or meta.get("namespace") == target.namespace)
                    and (target.name is None or meta.get("name") == target.name)
                    and match_labels(params.get("labelSelector"), meta.get("labels") or {})
                    and match_fields(params.get("fieldSelector"), obj))

        async def send(kind: str, obj: dict) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

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
                    await send("ERROR", {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
                                         "reason": "Expired", "message": f"too old resource version: {since}",
                                         "metadata": {}})
                    return response
            while epoch == self.watch_epoch:
                changed = self.changed
                start = bisect.bisect_right(self.history, cursor, key=lambda h: h.rv)
                for change in self.history[start:]:
                    cursor = change.rv
                    if change.key == key and wanted(change.obj):
                        await response.write(change.line())
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


class Emulator:
    """Runs an ApiServer on 127.0.0.1 in a background thread; the rest of the test stays synchronous."""

    def __init__(self) -> None:
        self.server = ApiServer()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api-emulator", daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.server.changed = asyncio.Event()
        async with kmock.Server(self.server, host="127.0.0.1") as srv:
            self.url = str(srv.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def start(self) -> Emulator:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the API emulator did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (for consistent snapshots and for mutating emulator state)."""
        async def wrapper():
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    # --------------------------------------------------------------------------- test helpers

    def register_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
            self.server.resources[resource] = kmock.ResourceInfo(
                kind=spec["names"]["kind"], singular=spec["names"]["singular"],
                namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
                shortnames=set(spec["names"].get("shortNames", [])),
                subresources=set(version.get("subresources", {})),
            )

    def objects(self, group: str, plural: str, namespace: str | None = None) -> list[dict]:
        def snapshot():
            return [copy.deepcopy(o) for (ns, _), o in self.server.store.get((group, plural), {}).items()
                    if namespace is None or ns == namespace]
        return self.call(snapshot)

    def calls(self, user: str | None = None) -> list[Call]:
        return self.call(lambda: [c for c in self.server.calls if user is None or c.user == user])

    def inject(self, fault: Fault) -> None:
        self.call(lambda: self.server.faults.append(fault))

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
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "user"}}],
            "current-context": "emulator",
        }

    def client_configuration(self, token: str):
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": f"Bearer {token}"}
        configuration.connection_pool_maxsize = 16
        return configuration
