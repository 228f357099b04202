"""file:// sources: used in place, nothing is copied."""

from __future__ import annotations

from pathlib import Path

from kubetune.api.uris import DATA_FILE_SUFFIXES

from kubetune_trainer.errors import UserError


def model_folder(location: str, uri: str) -> Path:
    path = Path(location)
    if not path.is_dir():
        raise UserError(f"model.uri: {uri} is not an existing folder")
    if not (path / "config.json").is_file():
        raise UserError(f"model.uri: {uri} holds no config.json (expected a Hugging Face model folder)")
    return path


def data_files(location: str, uri: str, what: str) -> list[Path]:
    path = Path(location)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_FILE_SUFFIXES)
        if not files:
            raise UserError(f"{what}: {uri} holds no {', '.join(DATA_FILE_SUFFIXES)} files")
        return files
    raise UserError(f"{what}: {uri} does not exist")
