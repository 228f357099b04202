"""Fetch a model folder or data files named by a URI into a local folder, by scheme.

`fetch_model` returns a local Hugging Face model folder; `fetch_data_files` returns local data files
(one file, or every data file under a prefix). hf://datasets URIs are read by `data.py` through
`datasets.load_dataset` instead (the library already caches and streams them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.uris import UriError, parse_uri

from kubetune_trainer.errors import UserError

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec

COMPLETE_MARKER = ".kubetune-complete"


def _parse(uri: str, what: str):
    try:
        return parse_uri(uri)
    except UriError as err:
        raise UserError(f"{what}: {err}") from None


def fetch_model(
    uri: str, dest: Path, *, role: str, spec: Spec | None, allow_pickle: bool = False, trust_remote_code: bool = False
) -> Path:
    """A local model folder for `uri` (file:// is used in place, s3:// and hf:// are downloaded)."""
    parsed = _parse(uri, "model.uri")
    if parsed.scheme == "file":
        from kubetune_trainer.sources.file import model_folder

        return model_folder(parsed.location, uri)
    if (dest / COMPLETE_MARKER).exists():  # another local rank (or an earlier attempt) fetched it
        return dest
    if parsed.scheme == "s3":
        from kubetune_trainer.sources.s3 import fetch_model_prefix

        fetch_model_prefix(uri, dest, role=role, spec=spec, allow_pickle=allow_pickle)
    else:
        from kubetune_trainer.sources.huggingface import fetch_model_snapshot

        fetch_model_snapshot(parsed, dest, role=role, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    (dest / COMPLETE_MARKER).touch()
    return dest


def fetch_data_files(uri: str, dest: Path, *, role: str, spec: Spec | None, what: str) -> list[Path]:
    """Local copies of a data file or of every data file under a prefix (s3:// or file://)."""
    parsed = _parse(uri, what)
    if parsed.scheme == "file":
        from kubetune_trainer.sources.file import data_files

        return data_files(parsed.location, uri, what)
    if parsed.scheme == "s3":
        from kubetune_trainer.sources.s3 import fetch_data

        return fetch_data(uri, dest, role=role, spec=spec, what=what)
    raise UserError(f"{what}: {uri} is not a file or a prefix of files (hf:// datasets are read with datasets.load_dataset)")
