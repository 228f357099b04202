"""Reading FineTuneJob manifests from YAML files as kubectl reads them: multi-document, every problem
reported as `FILE: <doc name>: <field path>: <message>` (or `FILE: <message>`), never as a traceback.

kubectl turns each YAML document into JSON before it sends it (sigs.k8s.io/yaml YAMLToJSON over go-yaml
v2), and the API server decodes that JSON; a manifest means here exactly what it means to them:
- plain scalars resolve by go-yaml v2's rules (go.yaml.in/yaml/v2 resolve.go), not PyYAML's: `1e-4` and
  `1e3` are numbers, `010` is octal 8 and `0x1F` hex, `yes`/`no`/`on`/`off`/`y`/`n` are booleans,
  `~` is null; a date stays the string it was (decode.go scalar, for an untyped target);
- a merge key `<<` applies where it stands (decode.go mapping/merge): a key after it wins, a key before
  it is overwritten, and of a list of merged maps the earlier ones win;
- keys become strings as sigs.k8s.io/yaml convertToJSONableObject makes them (`1` -> "1", `true` ->
  "true"); a null, list or mapping key is refused, as kubectl refuses it;
- numbers then travel as JSON: a float without a fraction arrives as an integer (`8.0` is sent as 8);
  NaN and +-Infinity cannot be encoded (kubectl fails), and integers beyond int64 do not survive the API
  server's decoding: both are refused with the field's path.
Deliberately stricter than kubectl: a key given twice in one mapping is refused (kubectl silently keeps
the last one), and so is YAML nested more than MAX_DEPTH levels deep (no FineTuneJob needs ten).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.api.validation import Problem, SpecError, check_manifest

MAX_DEPTH = 100
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1


class ManifestFileError(ValueError):
    """A file that cannot be read or parsed as YAML."""


# --------------------------------------------------------------------------- go-yaml v2's scalars

_PLAIN = "!kubetune/plain"  # the tag of an untagged plain scalar, resolved below
_TAG = "tag:yaml.org,2002:"
_BOOLS = {s: True for s in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")}
_BOOLS |= {s: False for s in ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")}
_NULLS = ("", "~", "null", "Null", "NULL")
_SPECIAL_FLOATS = {".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan}
for _sign, _value in (("", math.inf), ("+", math.inf), ("-", -math.inf)):
    _SPECIAL_FLOATS |= {_sign + s: _value for s in (".inf", ".Inf", ".INF")}
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")
_DECIMAL_INTEGER = re.compile(r"[-+]?[0-9][0-9_]*")
_BASES = {"0x": 16, "0X": 16, "0o": 8, "0O": 8, "0b": 2, "0B": 2}
_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}
# resolve.go's first-character hints: only these may be anything but a string
_MAYBE_NOT_STRING = set("+-0123456789.yYnNtTfFoO~")


def _go_parse_uint(text: str, base: int = 0) -> int | None:
    """strconv.ParseUint(text, base, 64), without the underscores resolve.go already removed."""
    if base == 0:
        base = 10
        if text[:2] in _BASES:
            base, text = _BASES[text[:2]], text[2:]
        elif len(text) > 1 and text[0] == "0":
            base, text = 8, text[1:]
    if not text or any(c not in _DIGITS[base] for c in text):
        return None
    value = int(text, base)
    return value if value <= UINT64_MAX else None


def _go_parse_int(text: str, base: int = 0) -> int | None:
    """strconv.ParseInt(text, base, 64)."""
    sign = -1 if text[:1] == "-" else 1
    magnitude = _go_parse_uint(text[1:] if text[:1] in "+-" else text, base)
    if magnitude is None:
        return None
    value = sign * magnitude
    return value if INT64_MIN <= value <= INT64_MAX else None


def _is_timestamp(text: str) -> bool:
    # resolve.go parseTimestamp: starts with YYYY-; the value then stays its text (decode.go scalar)
    return bool(re.fullmatch(
        r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
        r"([Tt][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})"
        r"| [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]+)?)?", text))  # fmt: skip


def resolve_plain(text: str) -> Any:
    """go-yaml v2's resolve() for an untagged plain scalar."""
    if text in _NULLS:
        return None
    if not text or text[0] not in _MAYBE_NOT_STRING:
        return text
    if text in _BOOLS:
        return _BOOLS[text]
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if text[0] == ".":
        number = float(text) if _DOT_FLOAT.fullmatch(text) else math.inf
        return text if math.isinf(number) else number  # strconv.ParseFloat reports out of range
    if text[0] not in "+-0123456789" or _is_timestamp(text):
        return text
    plain = text.replace("_", "")
    for parse in (_go_parse_int, _go_parse_uint):
        number = parse(plain)
        if number is not None:
            return number
    if _YAML_STYLE_FLOAT.fullmatch(plain):
        number = float(plain)
        if not math.isinf(number):  # strconv.ParseFloat reports out of range
            return number
    if plain.startswith("0b"):
        for parse in (_go_parse_int, _go_parse_uint):
            number = parse(plain[2:], 2)
            if number is not None:
                return number
    elif plain.startswith("-0b"):
        number = _go_parse_int("-" + plain[3:], 2)
        if number is not None:
            return number
    return text


def _resolve_tagged(tag: str, text: str) -> Any:
    """resolve() for an explicitly tagged scalar: a standard tag must fit the value (an int may be a float)."""
    if tag == _TAG + "str" or not tag.startswith(_TAG):
        return text  # other tags are not resolved: the value stays its text
    if tag == _TAG + "binary":
        try:
            return base64.b64decode(text, validate=True).decode("utf-8", errors="replace")
        except binascii.Error:
            raise ValueError("!!binary value contains invalid base64 data") from None
    value = resolve_plain(text)
    kind = tag[len(_TAG) :]
    fits = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "null": value is None,
        "timestamp": _is_timestamp(text),
    }.get(kind, True)
    if not fits:
        raise ValueError(f"cannot decode `{text}` as a !!{kind}")
    return float(value) if kind == "float" else value


def _go_format_float32(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 32): how sigs.k8s.io/yaml spells a float map key."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    as32 = struct.unpack("f", struct.pack("f", value))[0]
    if as32 == 0:
        return "-0" if math.copysign(1, as32) < 0 else "0"
    for precision in range(9):  # the shortest digits that read back as the same float32
        text = f"{abs(as32):.{precision}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == abs(as32):
            break
    mantissa, exponent = text.split("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    exp = int(exponent)
    sign = "-" if as32 < 0 else ""
    if exp < -4 or exp >= 6:  # %e when the shortest form's exponent is < -4 or >= 6 ('g' with precision -1)
        frac = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{frac}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp >= 0:
        whole, frac = digits[: exp + 1].ljust(exp + 1, "0"), digits[exp + 1 :]
    else:
        whole, frac = "0", "0" * (-exp - 1) + digits
    return f"{sign}{whole}{'.' + frac if frac else ''}"


# --------------------------------------------------------------------------- documents


class _KubectlLoader(yaml.SafeLoader):
    """PyYAML composes the nodes; scalars are resolved afterwards by go-yaml v2's rules."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _DocumentBuilder:
    """One document as the JSON kubectl sends, with the values that cannot be sent as problems."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._decodes = 0
        self._alias_decodes = 0
        self._alias_depth = 0
        self._seen: set[int] = set()
        self._building: set[int] = set()

    def value(self, node: yaml.Node, path: str, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ManifestFileError(f"line {_line(node)}: nested more than {MAX_DEPTH} levels deep")
        if id(node) in self._building:
            raise ManifestFileError(f"line {_line(node)}: an anchor's value contains itself")
        alias = id(node) in self._seen  # PyYAML gives an alias the anchored node itself
        self._seen.add(id(node))
        self._count_decode(node, alias)
        self._alias_depth += alias
        self._building.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                out: dict[str, Any] = {}
                self._mapping_into(node, out, path, depth)
                return out
            if isinstance(node, yaml.SequenceNode):
                return [self.value(item, _child(path, i), depth + 1) for i, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._building.discard(id(node))
            self._alias_depth -= alias

    def _count_decode(self, node: yaml.Node, alias: bool) -> None:
        # go-yaml v2 decode.go unmarshal: refuse a document that is mostly alias expansions
        self._decodes += 1
        if self._alias_depth > 0 or alias:
            self._alias_decodes += 1
        low, high = 400_000, 4_000_000
        allowed = 0.99 if self._decodes <= low else 0.10 if self._decodes >= high else (
            0.99 - 0.89 * (self._decodes - low) / (high - low))  # fmt: skip
        if self._alias_decodes > 100 and self._decodes > 1000 and self._alias_decodes / self._decodes > allowed:
            raise ManifestFileError(f"line {_line(node)}: document contains excessive aliasing")

    def _scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        try:
            value = resolve_plain(node.value) if node.tag == _PLAIN else _resolve_tagged(node.tag, node.value)
        except ValueError as err:
            raise ManifestFileError(f"line {_line(node)}: {err}") from None
        if isinstance(value, float) and node.tag == _PLAIN and _DECIMAL_INTEGER.fullmatch(node.value):
            value = int(node.value.replace("_", ""))  # an integer past uint64, which go-yaml reads as a float
        if isinstance(value, float):
            if not math.isfinite(value):
                self.problems.append(Problem(path, (
                    f"{node.value} is not a number JSON can carry, so kubectl cannot send it and the API "
                    f"server cannot store it (line {_line(node)})")))  # fmt: skip
                return None
            # JSON has one kind of number: a float with no fraction is read back as an integer
            if value.is_integer() and INT64_MIN <= value <= INT64_MAX:
                return int(value)
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            self.problems.append(Problem(path, (
                f"{node.value} is beyond the 64-bit integers the API server stores (at most {INT64_MAX}; "
                f"line {_line(node)})")))  # fmt: skip
            return None
        return value

    def _key(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
            raise ManifestFileError(
                f"line {_line(node)}: a {kind} cannot be a mapping key (in {path or 'the document'}); "
                "keys are strings, numbers or true/false"
            )
        try:
            key = resolve_plain(node.value) if node.tag == _PLAIN else _resolve_tagged(node.tag, node.value)
        except ValueError as err:
            raise ManifestFileError(f"line {_line(node)}: {err}") from None
        if isinstance(key, bool):
            return "true" if key else "false"
        if isinstance(key, int) and INT64_MIN <= key <= INT64_MAX:
            return str(key)
        if isinstance(key, float):
            return _go_format_float32(key)
        if isinstance(key, str):
            return key
        where = path or "the document"
        raise ManifestFileError(f"line {_line(node)}: unsupported mapping key {node.value!r} (in {where})")

    def _mapping_into(self, node: yaml.MappingNode, out: dict[str, Any], path: str, depth: int) -> None:
        explicit: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == "<<" and key_node.tag in (
                _PLAIN, _TAG + "merge"):  # fmt: skip
                self._merge(value_node, out, path, depth)
                continue
            key = self._key(key_node, path)
            if key in explicit:
                raise ManifestFileError(
                    f"line {_line(key_node)}: duplicate key {key!r} (first at line {explicit[key]})"
                )
            explicit[key] = _line(key_node)
            out[key] = self.value(value_node, _child(path, key), depth + 1)

    def _merge(self, node: yaml.Node, out: dict[str, Any], path: str, depth: int) -> None:
        merged = list(reversed(node.value)) if isinstance(node, yaml.SequenceNode) else [node]
        for item in merged:  # earlier maps of a list take precedence: apply them last
            if not isinstance(item, yaml.MappingNode):
                raise ManifestFileError(f"line {_line(item)}: map merge requires map or sequence of maps as the value")
            if id(item) in self._building or depth > MAX_DEPTH:
                raise ManifestFileError(f"line {_line(item)}: an anchor's value contains itself")
            self._count_decode(item, True)
            self._building.add(id(item))
            try:
                self._mapping_into(item, out, path, depth + 1)
            finally:
                self._building.discard(id(item))


def _check_depth(text: str) -> None:
    """Refuse deep nesting before PyYAML's recursive composer meets it (its events come iteratively)."""
    depth = 0
    for event in yaml.parse(text, Loader=_KubectlLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ManifestFileError(
                    f"not valid YAML: line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep "
                    "(a FineTuneJob needs fewer than ten)"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


@dataclass
class LoadedDocument:
    doc: Any  # the JSON-shaped document (None where nothing could be sent)
    problems: list[Problem]  # values kubectl or the API server cannot carry


def load_manifests(path: str | Path) -> list[LoadedDocument]:
    """Every non-empty YAML document of a file, as kubectl would send it."""
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
        _check_depth(text)
        loaded = []
        for node in yaml.compose_all(text, Loader=_KubectlLoader):
            if node is None:
                continue
            builder = _DocumentBuilder()
            try:
                doc = builder.value(node, "")
            except ManifestFileError as err:
                raise ManifestFileError(f"not valid YAML: {err}") from None
            if doc is not None:
                loaded.append(LoadedDocument(doc, builder.problems))
        return loaded
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ManifestFileError(f"not valid YAML: {where}{problem}") from None
    except RecursionError:
        raise ManifestFileError(f"not valid YAML: nested more than {MAX_DEPTH} levels deep") from None


def load_documents(path: str | Path) -> list[Any]:
    """All YAML documents of a file (empty documents dropped), as kubectl would send them."""
    return [loaded.doc for loaded in load_manifests(path)]


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
    loaded = load_manifests(path)
    if not loaded:
        raise ManifestFileError("contains no YAML documents")
    checked = []
    for i, item in enumerate(loaded):
        # a value kubectl cannot send fails the whole document: report only that
        job, problems = (None, item.problems) if item.problems else check_manifest(item.doc)
        checked.append(CheckedDocument(document_name(item.doc, i), job, problems))
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
