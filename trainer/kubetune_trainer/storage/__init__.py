"""Storage behind a URI scheme (kubetune_trainer.schemes): file:// (local disk or a mounted volume) and s3://
(any S3-compatible store). Every method takes full URIs, so callers pass OutputLayout's URIs as they are.

Errors: a URI the user got wrong (no such bucket, access denied) raises UserError naming it; a store
that cannot be reached after bounded retries raises InfraError; a missing object raises
FileNotFoundError (callers decide whether that is fine).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.uris import join_uri
from kubetune_trainer.errors import UserError

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec


class Storage(ABC):
    """One scheme's objects. Subclasses implement the single-object operations; folders are built on them."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """URIs of every object (file) under `prefix`, recursively, sorted."""

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def download_file(self, uri: str, local_path: str | Path) -> Path: ...

    @abstractmethod
    def upload_file(self, local_path: str | Path, uri: str) -> None: ...

    @abstractmethod
    def write_text(self, uri: str, text: str) -> None: ...

    @abstractmethod
    def read_text(self, uri: str) -> str:
        """Raises FileNotFoundError when there is no such object."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    def download_prefix(self, prefix: str, local_dir: str | Path) -> list[Path]:
        """Copy every object under `prefix` into `local_dir`, keeping relative paths."""
        base = prefix if prefix.endswith("/") else prefix + "/"
        copied = []
        for uri in self.list(prefix):
            relative = uri[len(base) :] if uri.startswith(base) else ""
            if not relative or relative.endswith("/"):  # the prefix itself, or a "folder" placeholder object
                continue
            copied.append(self.download_file(uri, Path(local_dir) / relative))
        return copied

    def upload_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Copy every file under `local_dir` to `prefix`, keeping relative paths; returns the URIs."""
        base = Path(local_dir)
        uris = []
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            uri = join_uri(prefix, path.relative_to(base).as_posix())
            self.upload_file(path, uri)
            uris.append(uri)
        return uris


def get_storage(uri: str, *, credentials_role: str = "output", spec: Spec | None = None) -> Storage:
    """The storage for `uri`'s scheme, with the credentials and endpoint of `credentials_role`."""
    from kubetune_trainer.schemes import resolve, scheme_of

    parsed, scheme = scheme_of(uri, "output" if credentials_role == "output" else credentials_role)
    if scheme.storage is None:
        raise UserError(f"{uri}: {parsed.scheme}:// cannot hold outputs or checkpoints (use s3:// or file://)")
    return resolve(scheme.storage)(credentials_role, spec)
