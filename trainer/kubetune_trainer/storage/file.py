"""file:// storage: a local folder (or a volume mounted into the pod)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kubetune.api.uris import parse_uri
from kubetune_trainer.errors import InfraError, UserError
from kubetune_trainer.storage import Storage


def _path(uri: str) -> Path:
    return Path(parse_uri(uri).location)


def _uri(path: Path) -> str:
    return f"file://{path}"


class FileStorage(Storage):
    @classmethod
    def for_role(cls, role: str, spec=None) -> FileStorage:
        return cls()  # a path needs no credentials

    def list(self, prefix: str) -> list[str]:
        root = _path(prefix)
        if root.is_file():
            return [_uri(root)]
        if not root.is_dir():
            return []
        return sorted(_uri(p) for p in root.rglob("*") if p.is_file())

    def exists(self, uri: str) -> bool:
        return _path(uri).exists()

    def download_file(self, uri: str, local_path: str | Path) -> Path:
        src, dst = _path(uri), Path(local_path)
        if not src.is_file():
            raise FileNotFoundError(uri)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    def upload_file(self, local_path: str | Path, uri: str) -> None:
        dst = _path(uri)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            # Copy then rename: a reader never sees a half-written file.
            tmp = dst.with_name(f".{dst.name}.part")
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, dst)
        except PermissionError:
            raise UserError(f"{uri}: permission denied writing the output") from None
        except OSError as err:
            raise InfraError(f"{uri}: cannot write ({err.strerror})") from None

    def write_text(self, uri: str, text: str) -> None:
        dst = _path(uri)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.part")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, dst)
        except PermissionError:
            raise UserError(f"{uri}: permission denied writing the output") from None
        except OSError as err:
            raise InfraError(f"{uri}: cannot write ({err.strerror})") from None

    def read_text(self, uri: str) -> str:
        path = _path(uri)
        if not path.is_file():
            raise FileNotFoundError(uri)
        return path.read_text(encoding="utf-8")

    def delete_prefix(self, prefix: str) -> None:
        path = _path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
