"""Reading FineTuneJob manifests from YAML files: multi-document, duplicate keys caught, and every
problem reported as `FILE: <doc name>: <field path>: <message>`, never as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.validation import Problem, SpecError, check_manifest
from kubetune.api.v1alpha1 import FineTuneJob


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class ManifestFileError(ValueError):
    """A file that cannot be read or parsed as YAML."""


def load_documents(path: str | Path) -> list[Any]:
    """All YAML documents of a file (empty documents dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestFileError("no such file") from None
    except IsADirectoryError:
        raise ManifestFileError("is a directory, not a file") from None
    except UnicodeDecodeError as err:
        raise ManifestFileError(f"not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ManifestFileError(f"cannot be read: {err.strerror}") from None
    try:
        return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ManifestFileError(f"not valid YAML: {where}{problem}") from None


def document_name(doc: Any, index: int) -> str:
    if isinstance(doc, dict):
        meta = doc.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"]:
            return meta["name"]
    return f"document {index + 1}"


@dataclass
class CheckedDocument:
    name: str
    job: FineTuneJob | None
    problems: list[Problem]


def check_file(path: str | Path) -> list[CheckedDocument]:
    """Validate every document of a file; raises ManifestFileError for unreadable/non-YAML files."""
    docs = load_documents(path)
    if not docs:
        raise ManifestFileError("contains no YAML documents")
    checked = []
    for i, doc in enumerate(docs):
        job, problems = check_manifest(doc)
        checked.append(CheckedDocument(document_name(doc, i), job, problems))
    return checked


def validate_files(paths: list[str]) -> list[str]:
    """One line per problem across all files; empty when every document is a valid FineTuneJob."""
    lines = []
    for path in paths:
        try:
            checked = check_file(path)
        except ManifestFileError as err:
            lines.append(f"{path}: {err}")
            continue
        for doc in checked:
            lines.extend(f"{path}: {doc.name}: {problem}" for problem in doc.problems)
    return lines


def load_job(path: str | Path, name: str | None = None) -> FineTuneJob:
    """The one FineTuneJob of a file (or the one called `name`); raises SpecError/ManifestFileError."""
    checked = check_file(path)
    if name is not None:
        checked = [c for c in checked if c.name == name]
        if not checked:
            raise ManifestFileError(f"has no FineTuneJob named {name!r}")
    if len(checked) > 1:
        raise ManifestFileError(f"holds {len(checked)} documents; choose one with --name")
    doc = checked[0]
    if doc.problems:
        raise SpecError(doc.problems)
    assert doc.job is not None
    return doc.job
