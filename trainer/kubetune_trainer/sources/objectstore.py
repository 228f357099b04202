"""Object-store sources (s3://, and any store with a Storage in kubetune_trainer.storage): a model folder is
a whole prefix, data is one file or every data file under a prefix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.uris import DATA_FILE_SUFFIXES, ParsedUri, join_uri, parse_uri
from kubetune_trainer.errors import UserError
from kubetune_trainer.sources import is_pickled
from kubetune_trainer.storage import get_storage

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec


def fetch_model(
    parsed: ParsedUri,
    uri: str,
    dest: Path,
    *,
    role: str,
    spec: Spec | None,
    allow_pickle: bool,
    trust_remote_code: bool,
) -> Path:
    storage = get_storage(uri, credentials_role=role, spec=spec)
    prefix = uri if uri.endswith("/") else uri + "/"
    uris = storage.list(prefix)
    if not allow_pickle:
        uris = [u for u in uris if not is_pickled(u)]
    if not any(u.endswith("/config.json") for u in uris):
        raise UserError(f"model.uri: {uri} holds no config.json (expected a Hugging Face model folder)")
    base_len = len(parse_uri(prefix).path)
    for u in uris:
        rel = parse_uri(u).path[base_len:]
        if rel:
            storage.download_file(u, dest / rel)
    return dest


def fetch_config(parsed: ParsedUri, uri: str, dest: Path, *, role: str, spec: Spec | None) -> Path:
    storage = get_storage(uri, credentials_role=role, spec=spec)
    try:
        return storage.download_file(join_uri(uri, "config.json"), Path(dest) / "config.json")
    except FileNotFoundError:
        raise UserError(f"model.uri: {uri} holds no config.json (expected a Hugging Face model folder)") from None


def fetch_data(parsed: ParsedUri, uri: str, dest: Path, *, role: str, spec: Spec | None, what: str) -> list[Path]:
    storage = get_storage(uri, credentials_role=role, spec=spec)
    if not parsed.is_prefix:
        try:
            return [storage.download_file(uri, dest / Path(parsed.path).name)]
        except FileNotFoundError:
            raise UserError(f"{what}: {uri} does not exist") from None
    files = [u for u in storage.list(uri) if u.lower().endswith(DATA_FILE_SUFFIXES)]
    if not files:
        raise UserError(f"{what}: {uri} holds no {', '.join(DATA_FILE_SUFFIXES)} files")
    base = parsed.path if parsed.path.endswith("/") or not parsed.path else parsed.path + "/"
    return [storage.download_file(u, dest / parse_uri(u).path[len(base) :]) for u in files]
