"""Status values that fit the CRD.

The API server refuses a whole status write when one string in it is longer than its schema's maxLength, one
list holds more than its maxItems or one map more than its maxProperties (apiextensions-apiserver validates a
custom resource against its structural schema on every write; the bounds also cap what the CEL rules may
cost). A message or a report that breaks a bound would then freeze the status, phase and conditions included.
So everything the operator and the trainer's reporter write goes through `fit_status` first, which reads the
bounds from the CRD itself (kubetune.api.crd, the one `kubetune crd` prints), not from a copy of them.

And when the API server refuses a write anyway (a cluster whose CRD is of another release, with other
bounds), `refit` reads the bounds it names from its answer (a 422 Invalid whose causes say "Too long: may not
be more than N bytes" or "Too many: M: must have at most N items") and cuts those fields to them.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

# Ends a value that was cut to fit; it counts towards the bound.
TRUNCATED = "...[truncated]"


@functools.cache
def status_schema() -> dict[str, Any]:
    """The openAPIV3Schema of `status` in the CRD of this release (built once per process)."""
    from kubetune.api.constants import VERSION
    from kubetune.api.crd import crd

    version = next(v for v in crd()["spec"]["versions"] if v["name"] == VERSION)
    return version["schema"]["openAPIV3Schema"]["properties"]["status"]


def fit_text(text: str, max_length: int | None) -> str:
    """`text` cut to `max_length` characters (the API server counts characters, not bytes, whatever its message
    says), ending in the marker when cut."""
    if max_length is None or len(text) <= max_length:
        return text
    if max_length <= len(TRUNCATED):
        return text[:max_length]
    return text[: max_length - len(TRUNCATED)] + TRUNCATED


def fit(value: Any, schema: dict[str, Any] | None) -> Any:
    """`value` within the bounds of `schema`: strings cut with the marker, lists to their newest (last) maxItems
    entries, maps to their first maxProperties keys, recursively. Values the schema does not describe pass."""
    if not schema:
        return value
    if isinstance(value, str):
        return fit_text(value, schema.get("maxLength"))
    if isinstance(value, list):
        limit = schema.get("maxItems")
        if limit is not None and len(value) > limit:
            value = value[len(value) - limit :] if limit else []
        items = schema.get("items")
        return [fit(item, items) for item in value] if isinstance(items, dict) else value
    if isinstance(value, dict):
        limit = schema.get("maxProperties")
        if limit is not None and len(value) > limit:
            value = dict(list(value.items())[:limit])
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else None
        return {key: fit(item, properties.get(key, extra)) for key, item in value.items()}
    return value


def fit_status(status: dict[str, Any]) -> dict[str, Any]:
    """A status (or a merge patch of one) within the CRD's bounds."""
    return fit(status, status_schema())


def max_length(*path: str) -> int | None:
    """The maxLength of the status field at `path` ("message"; "conditions", "message" for a condition's)."""
    node: dict[str, Any] | None = status_schema()
    for part in path:
        node = node or {}
        node = (node.get("properties") or {}).get(part) or (node.get("items") or {}).get("properties", {}).get(part)
    return (node or {}).get("maxLength")


# --------------------------------------------------------------------------------------------- after a refusal

# field.TooLong's and field.TooMany's words (k8s.io/apimachinery pkg/util/validation/field/errors.go), as the
# apiextensions-apiserver reports a value beyond its schema's bound in the causes of a 422 Invalid.
_TOO_LONG = re.compile(r"may not be more than (\d+) bytes?")
_TOO_MANY = re.compile(r"must have at most (\d+) items?")


def refused_bounds(error_body: str | bytes | None) -> dict[tuple[str, ...], int]:
    """From the body of a 422 answer: each field path it names (("status", "message"); a list entry's index
    is left out) and the bound the server holds it to. {} when the answer names no such bound."""
    try:
        details = json.loads(error_body or b"{}").get("details") or {}
    except (ValueError, AttributeError):
        return {}
    bounds: dict[tuple[str, ...], int] = {}
    for cause in details.get("causes") or []:
        found = _TOO_LONG.search(cause.get("message") or "") or _TOO_MANY.search(cause.get("message") or "")
        if found and cause.get("field"):
            path = tuple(p for p in re.split(r"\.|\[\d+\]", cause["field"]) if p)
            bounds[path] = int(found.group(1))
    return bounds


def refit(status: dict[str, Any], bounds: dict[tuple[str, ...], int]) -> dict[str, Any]:
    """`status` with the fields of `bounds` (paths that start with "status") cut to them: strings to a length,
    lists and maps to a size."""

    def cut(value: Any, path: tuple[str, ...]) -> Any:
        limit = bounds.get(path)
        if isinstance(value, str) and limit is not None:
            return fit_text(value, limit)
        if isinstance(value, list):
            if limit is not None and len(value) > limit:
                value = value[len(value) - limit :] if limit else []
            return [cut(item, path) for item in value]
        if isinstance(value, dict):
            if limit is not None and len(value) > limit:
                value = dict(list(value.items())[:limit])
            return {key: cut(item, (*path, key)) for key, item in value.items()}
        return value

    return cut(status, ("status",))
