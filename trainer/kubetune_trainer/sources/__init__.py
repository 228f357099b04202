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

        return check_remote_code(model_folder(parsed.location, uri), uri, trust_remote_code)
    if (dest / COMPLETE_MARKER).exists():  # another local rank (or an earlier attempt) fetched it
        return check_remote_code(dest, uri, trust_remote_code)
    if parsed.scheme == "s3":
        from kubetune_trainer.sources.s3 import fetch_model_prefix

        fetch_model_prefix(uri, dest, role=role, spec=spec, allow_pickle=allow_pickle)
    else:
        from kubetune_trainer.sources.huggingface import fetch_model_snapshot

        fetch_model_snapshot(parsed, dest, role=role, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    (dest / COMPLETE_MARKER).touch()
    return check_remote_code(dest, uri, trust_remote_code)


def check_remote_code(model_dir: Path, uri: str, trust_remote_code: bool) -> Path:
    """A model whose architecture transformers does not know loads only by running the repository's
    own Python code (config.json `auto_map`): refuse that, naming the field, unless it is trusted.
    Models transformers knows load with its own classes and any `auto_map` is ignored."""
    import json

    if trust_remote_code:
        return model_dir
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return model_dir  # the loader reports a missing or broken config with its own message
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if config.get("auto_map") and model_type not in CONFIG_MAPPING:
        classes = ", ".join(sorted(str(v) for v in config["auto_map"].values())[:3])
        raise UserError(
            f"spec.model.trustRemoteCode: {uri} (model_type {model_type!r}) needs its own Python code to load "
            f"({classes}); kubetune does not run code from a model repository unless spec.model.trustRemoteCode "
            "is true, and only when you trust its authors"
        )
    return model_dir


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
