"""file:// sources: used in place, nothing is copied.

A mounted folder the trainer's user cannot read (pods run as uid 1000; a volume written by root with
mode 0600 is common) is reported as "permission denied" with the path, checked here before loading:
otherwise the model loaders report such a file as "No such file or directory".
"""

from __future__ import annotations

import os
from pathlib import Path

from kubetune.api.uris import DATA_FILE_SUFFIXES, ParsedUri
from kubetune_trainer.errors import UserError


def _denied(what: str, err: PermissionError) -> UserError:
    return UserError(
        f"{what}: permission denied: {err.filename} (the trainer runs as uid {os.getuid()}, gid {os.getgid()})"
    )


def _open_each(paths: list[Path]) -> None:
    """Open (and close) every file: raises PermissionError for the first one this process cannot read."""
    for path in paths:
        with path.open("rb"):
            pass


def fetch_model(parsed: ParsedUri, uri: str, dest: Path, **_options) -> Path:
    """The folder itself (nothing is copied)."""
    return model_folder(parsed.location, uri)


def fetch_data(parsed: ParsedUri, uri: str, dest: Path, *, what: str, **_options) -> list[Path]:
    return data_files(parsed.location, uri, what)


def fetch_config(parsed: ParsedUri, uri: str, dest: Path, **_options) -> Path:
    return model_folder(parsed.location, uri) / "config.json"


def model_folder(location: str, uri: str) -> Path:
    path = Path(location)
    try:
        if not path.is_dir():
            raise UserError(f"model.uri: {uri} is not an existing folder")
        if not (path / "config.json").is_file():
            raise UserError(f"model.uri: {uri} holds no config.json (expected a Hugging Face model folder)")
        # Top level only: the loaders read config, tokenizer and weights from there.
        _open_each([p for p in path.iterdir() if p.is_file()])
    except PermissionError as err:
        raise _denied("spec.model.uri", err) from None
    return path


def data_files(location: str, uri: str, what: str) -> list[Path]:
    path = Path(location)
    try:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_FILE_SUFFIXES)
            if not files:
                raise UserError(f"{what}: {uri} holds no {', '.join(DATA_FILE_SUFFIXES)} files")
        else:
            raise UserError(f"{what}: {uri} does not exist")
        _open_each(files)
    except PermissionError as err:
        raise _denied(what, err) from None
    return files
