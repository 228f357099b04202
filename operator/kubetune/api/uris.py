"""URIs by scheme: `hf://`, `s3://`, `file://`.

One parser shared by the schema (validation), the operator (credentials wiring) and the trainer
(which source module fetches what).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

DATA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

_HF_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_HF_REVISION = r"[A-Za-z0-9_.\-/]+"
_HF_MODEL = re.compile(rf"^hf://(?P<repo>{_HF_NAME}(/{_HF_NAME})?)(@(?P<rev>{_HF_REVISION}))?$")
_HF_DATASET = re.compile(rf"^hf://datasets/(?P<repo>{_HF_NAME}(/{_HF_NAME})?)(@(?P<rev>{_HF_REVISION}))?$")
# S3 bucket naming rules: 3-63 chars, lowercase letters, digits, dots and hyphens.
_S3 = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/(?P<key>.*))?$")
_FILE = re.compile(r"^file://(?P<path>/.*)$")

# Regexes for the CRD (Go RE2 syntax, a subset of Python's): they accept what the parsers below
# accept at the scheme level; the parsers give the precise message.
MODEL_URI_PATTERN = r"^(hf://[A-Za-z0-9][^@\s]*(@\S+)?|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?|file:///\S*)$"
# Data: hf://datasets/..., or an s3/file path that ends in a folder ("/" or a last name without a
# dot) or in a supported data file.
_S3_BUCKET = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_DATA_PATH = r"/(\S*/)?([^/.\s]*|[^/\s]*\.(?i:jsonl|json|csv|parquet))"
DATASET_URI_PATTERN = rf"^(hf://datasets/[A-Za-z0-9][^@\s]*(@\S+)?|{_S3_BUCKET}({_DATA_PATH})?|file://{_DATA_PATH})$"
OUTPUT_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?|file:///\S*)$"


@dataclass(frozen=True)
class ParsedUri:
    scheme: str  # "hf", "s3" or "file"
    location: str  # hf: "org/name"; s3: bucket; file: absolute path
    path: str = ""  # s3: key or prefix (no leading slash)
    revision: str | None = None  # hf only
    is_dataset_repo: bool = False  # hf://datasets/...

    @property
    def is_prefix(self) -> bool:
        """True when the URI names a folder/prefix rather than a single file."""
        last = self.path if self.scheme == "s3" else self.location
        return last == "" or last.endswith("/") or not PurePosixPath(last).suffix


class UriError(ValueError):
    """A URI the user wrote cannot be used; the message says why."""


def parse_uri(uri: str) -> ParsedUri:
    if not isinstance(uri, str) or not uri:
        raise UriError("must be a non-empty URI")
    if uri.startswith("hf://"):
        m = _HF_DATASET.fullmatch(uri)
        if m:
            return ParsedUri("hf", m["repo"], revision=m["rev"], is_dataset_repo=True)
        m = _HF_MODEL.fullmatch(uri)
        if not m:
            raise UriError(f"not a valid Hugging Face URI (expected hf://org/name[@revision]; got {uri!r})")
        return ParsedUri("hf", m["repo"], revision=m["rev"])
    if uri.startswith("s3://"):
        m = _S3.fullmatch(uri)
        if not m:
            raise UriError(
                f"not a valid S3 URI (expected s3://bucket/prefix with a 3-63 character lowercase bucket name; got {uri!r})"
            )
        return ParsedUri("s3", m["bucket"], path=m["key"] or "")
    if uri.startswith("file://"):
        m = _FILE.fullmatch(uri)
        if not m:
            raise UriError(f"not a valid file URI (expected file:///absolute/path; got {uri!r})")
        return ParsedUri("file", m["path"])
    scheme = uri.split("://", 1)[0] if "://" in uri else None
    if scheme:
        raise UriError(f"unsupported URI scheme {scheme + '://'!r} (use hf://, s3:// or file://; got {uri!r})")
    raise UriError(f"must be a URI with a scheme: hf://, s3:// or file:// (got {uri!r})")


def check_model_uri(uri: str) -> str:
    parsed = parse_uri(uri)
    if parsed.is_dataset_repo:
        raise UriError(f"names a Hugging Face dataset repository, not a model (got {uri!r})")
    return uri


def check_dataset_uri(uri: str) -> str:
    parsed = parse_uri(uri)
    if parsed.scheme == "hf" and not parsed.is_dataset_repo:
        raise UriError(f"Hugging Face datasets are written hf://datasets/org/name[@revision] (got {uri!r})")
    if parsed.scheme in ("s3", "file") and not parsed.is_prefix:
        name = parsed.path if parsed.scheme == "s3" else parsed.location
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in DATA_FILE_SUFFIXES:
            raise UriError(
                f"unsupported data file type {suffix!r} (use {', '.join(DATA_FILE_SUFFIXES)} "
                f"or a prefix ending in '/'; got {uri!r})"
            )
    return uri


def check_output_uri(uri: str) -> str:
    parsed = parse_uri(uri)
    if parsed.scheme not in ("s3", "file"):
        raise UriError(f"output must be s3://bucket/prefix/ or file:///path/ (got {uri!r})")
    return uri


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a URI with exactly one slash between them."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out
