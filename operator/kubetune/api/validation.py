"""Turn a manifest (a dict) into a FineTuneJob, or into problems a user can act on.

Every problem names the field path as users write it (`spec.datasets[1].columns.prompt`) and says
what is wrong and what was given. Used by `kubetune validate`, the operator and the trainer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from kubetune.api.constants import API_VERSION, KIND
from kubetune.api.rules import cross_field_findings, job_findings, notice_findings
from kubetune.api.v1alpha1 import FineTuneJob, Spec


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. "spec.lora.rank"; "" for the document as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A manifest that is not a valid FineTuneJob; `problems` lists every issue found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The camelCase field names of the model that `loc` points into (for 'did you mean')."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        current = _model_of(field.annotation)
        if current is None:
            return []
    return [f.alias or n for n, f in current.model_fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _message(error: dict, root: type[BaseModel]) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {}) or {}
    given = error.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        name = error["loc"][-1]
        close = difflib.get_close_matches(str(name), _known_fields(root, error["loc"]), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field{hint}"
    if kind in ("enum", "literal_error"):
        return f"must be one of: {ctx.get('expected', '').replace(chr(39), '')} (got {_fmt(given)})"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx.get(key)} (got {_fmt(given)})"
    if kind in ("too_short", "too_long"):
        unit = "characters" if isinstance(given, str) else "entries" if isinstance(given, dict) else "items"
        if kind == "too_short":
            return f"needs at least {ctx.get('min_length')} {unit} (got {len(given) if given is not None else 0})"
        return f"allows at most {ctx.get('max_length')} {unit} (got {ctx.get('actual_length') or len(given)})"
    if kind == "string_too_short":
        return (
            "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx.get('min_length')} characters"
        )
    if kind == "string_too_long":
        return f"allows at most {ctx.get('max_length')} characters (got {len(given)})"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]} (got {_fmt(given)})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def problems_from_validation_error(err: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> list[Problem]:
    problems = []
    for error in err.errors():
        loc = prefix + tuple(error["loc"])
        problems.append(Problem(_path(loc), _message(error, root)))
    return problems


def check_manifest(doc: Any) -> tuple[FineTuneJob | None, list[Problem]]:
    """Validate one manifest; returns the job (when valid) and the problems (empty when valid)."""
    if not isinstance(doc, dict):
        return None, [Problem("", f"not a Kubernetes object (a YAML mapping); got {_fmt(doc)}")]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind != KIND or api_version != API_VERSION:
        return None, [
            Problem(
                "",
                f"not a FineTuneJob (expected apiVersion: {API_VERSION}, kind: {KIND}; "
                f"got apiVersion: {api_version}, kind: {kind})",
            )
        ]
    try:
        job = FineTuneJob.model_validate(doc)
    except ValidationError as err:
        return None, problems_from_validation_error(err, FineTuneJob)
    problems = [Problem(f"spec.{path}", msg) for path, msg in cross_field_findings(job.spec)]
    problems += [Problem(path, msg) for path, msg in job_findings(job.metadata.name, job.spec)]
    return (None, problems) if problems else (job, [])


def parse_spec(spec: Any, name: str | None = None) -> Spec:
    """Validate a bare spec (as the operator and trainer see it), raising SpecError; with the job's
    name, also the rules between name and spec."""
    try:
        parsed = Spec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(problems_from_validation_error(err, Spec, prefix=("spec",))) from None
    problems = [Problem(f"spec.{path}", msg) for path, msg in cross_field_findings(parsed)]
    if name is not None:
        problems += [Problem(path, msg) for path, msg in job_findings(name, parsed)]
    if problems:
        raise SpecError(problems)
    return parsed


def notices(spec: Spec) -> list[Problem]:
    """Warnings about a valid spec: settings the user wrote that will not take effect (the job still runs).
    `kubetune validate` prints them; the operator can put them in the Validated condition's message. Give it
    the spec as the user wrote it (parse_spec of the object's spec): it tells written settings from defaults,
    which a re-serialised copy (spec.to_wire()) no longer can."""
    return [Problem(f"spec.{path}", message) for path, message in notice_findings(spec)]
