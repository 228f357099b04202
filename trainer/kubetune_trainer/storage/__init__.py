"""Storage behind a URI scheme: file:// (local disk or a mounted volume) and s3:// (any S3-compatible
store). Every method takes full URIs, so callers pass OutputLayout's URIs as they are.

Errors: a URI the user got wrong (no such bucket, access denied) raises UserError naming it; a store
that cannot be reached after bounded retries raises InfraError; a missing object raises
FileNotFoundError (callers decide whether that is fine).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kubetune.api.uris import UriError, parse_uri

from kubetune_trainer.errors import UserError

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec


class Storage(Protocol):
    def list(self, prefix: str) -> list[str]:
        """URIs of every object (file) under `prefix`, recursively, sorted."""

    def exists(self, uri: str) -> bool: ...

    def download_file(self, uri: str, local_path: str | Path) -> Path: ...

    def download_prefix(self, prefix: str, local_dir: str | Path) -> list[Path]:
        """Copy every object under `prefix` into `local_dir`, keeping relative paths."""

    def upload_file(self, local_path: str | Path, uri: str) -> None: ...

    def upload_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Copy every file under `local_dir` to `prefix`, keeping relative paths; returns the URIs."""

    def write_text(self, uri: str, text: str) -> None: ...

    def read_text(self, uri: str) -> str:
        """Raises FileNotFoundError when there is no such object."""

    def delete_prefix(self, prefix: str) -> None: ...


def get_storage(uri: str, *, credentials_role: str = "output", spec: Spec | None = None) -> Storage:
    """The storage for `uri`'s scheme, with the credentials and endpoint of `credentials_role`."""
    try:
        parsed = parse_uri(uri)
    except UriError as err:
        raise UserError(str(err)) from None
    if parsed.scheme == "file":
        from kubetune_trainer.storage.file import FileStorage

        return FileStorage()
    if parsed.scheme == "s3":
        from kubetune_trainer.storage.s3 import S3Storage

        return S3Storage.for_role(credentials_role, spec)
    raise UserError(f"{uri}: storage supports s3:// and file:// URIs only")
