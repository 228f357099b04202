"""URIs by scheme: `hf://`, object stores (`s3://`), `file://`.

One parser shared by the schema (validation), the operator (credentials wiring) and the trainer
(which source module fetches what). An object store's URIs are `<scheme>://bucket/key`: a new one (gs://) is an
entry in OBJECT_STORES here, its storage in the trainer's scheme registry (kubetune_trainer.schemes) and its keys in
kubetune.api.credentials.
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
# Object stores whose URIs are <scheme>://bucket/key.
OBJECT_STORES = ("s3",)
# Bucket naming rules (S3's, which GCS's include): 3-63 chars, lowercase letters, digits, dots and hyphens.
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_STORES = "|".join(OBJECT_STORES)
_OBJECT = re.compile(rf"^(?P<scheme>{_STORES})://(?P<bucket>{_BUCKET})(/(?P<key>.*))?$")
_FILE = re.compile(r"^file://(?P<path>/.*)$")

# Regexes for the CRD (Go RE2 syntax, a subset of Python's): they accept what the parsers below
# accept at the scheme level; the parsers give the precise message.
MODEL_URI_PATTERN = rf"^(hf://[A-Za-z0-9][^@\s]*(@\S+)?|({_STORES})://{_BUCKET}(/\S*)?|file:///\S*)$"
# Data: hf://datasets/..., or an s3/file path that ends in a folder ("/" or a last name without a
# dot) or in a supported data file.
_S3_BUCKET = rf"({_STORES})://{_BUCKET}"
_DATA_PATH = r"/(\S*/)?([^/.\s]*|[^/\s]*\.(?i:jsonl|json|csv|parquet))"
DATASET_URI_PATTERN = rf"^(hf://datasets/[A-Za-z0-9][^@\s]*(@\S+)?|{_S3_BUCKET}({_DATA_PATH})?|file://{_DATA_PATH})$"
OUTPUT_URI_PATTERN = rf"^(({_STORES})://{_BUCKET}(/\S*)?|file:///\S*)$"


@dataclass(frozen=True)
class ParsedUri:
    scheme: str  # "hf", an object store ("s3") or "file"
    location: str  # hf: "org/name"; an object store: the bucket; file: absolute path
    path: str = ""  # an object store: key or prefix (no leading slash)
    revision: str | None = None  # hf only
    is_dataset_repo: bool = False  # hf://datasets/...

    @property
    def is_object_store(self) -> bool:
        return self.scheme in OBJECT_STORES

    @property
    def is_prefix(self) -> bool:
        """True when the URI names a folder/prefix rather than a single file."""
        last = self.path if self.is_object_store else self.location
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
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in OBJECT_STORES:
        m = _OBJECT.fullmatch(uri)
        if not m:
            raise UriError(
                f"not a valid {scheme.upper()} URI (expected {scheme}://bucket/prefix with a 3-63 character lowercase "
                f"bucket name; got {uri!r})"
            )
        return ParsedUri(scheme, m["bucket"], path=m["key"] or "")
    if uri.startswith("file://"):
        m = _FILE.fullmatch(uri)
        if not m:
            raise UriError(f"not a valid file URI (expected file:///absolute/path; got {uri!r})")
        return ParsedUri("file", m["path"])
    schemes = ", ".join(f"{s}://" for s in ("hf", *OBJECT_STORES)) + " or file://"
    if scheme:
        raise UriError(f"unsupported URI scheme {scheme + '://'!r} (use {schemes}; got {uri!r})")
    raise UriError(f"must be a URI with a scheme: {schemes} (got {uri!r})")


def check_model_uri(uri: str) -> str:
    parsed = parse_uri(uri)
    if parsed.is_dataset_repo:
        raise UriError(f"names a Hugging Face dataset repository, not a model (got {uri!r})")
    return uri


def check_dataset_uri(uri: str) -> str:
    parsed = parse_uri(uri)
    if parsed.scheme == "hf" and not parsed.is_dataset_repo:
        raise UriError(f"Hugging Face datasets are written hf://datasets/org/name[@revision] (got {uri!r})")
    if (parsed.is_object_store or parsed.scheme == "file") and not parsed.is_prefix:
        name = parsed.path if parsed.is_object_store else parsed.location
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in DATA_FILE_SUFFIXES:
            raise UriError(
                f"unsupported data file type {suffix!r} (use {', '.join(DATA_FILE_SUFFIXES)} "
                f"or a prefix ending in '/'; got {uri!r})"
            )
    return uri


def check_output_uri(uri: str) -> str:
    parsed = parse_uri(uri)
    if not (parsed.is_object_store or parsed.scheme == "file"):
        stores = " or ".join(f"{s}://bucket/prefix/" for s in OBJECT_STORES)
        raise UriError(f"output must be {stores} or file:///path/ (got {uri!r})")
    return uri


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a URI with exactly one slash between them."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out
