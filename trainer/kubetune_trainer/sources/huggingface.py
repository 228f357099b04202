"""hf:// sources: a model snapshot from the Hugging Face Hub (or a mirror set by HF_ENDPOINT).

Only safetensors weights, configs and tokenizer files are fetched unless model.allowPickle is set;
Python files only with trustRemoteCode. Token: the role's HF_TOKEN (credentialsSecret); outside a pod the operator
made, else HF_TOKEN or a saved login; in one, none (`hub_token`).

The revision is resolved to a commit first and the snapshot downloaded at that commit, then every file the Hub
lists is checked to be there with its size: huggingface_hub, when the Hub cannot be reached, returns whatever a
local folder already holds (an earlier attempt's partial download) with only a warning, and that is never loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubetune.api.credentials import AMBIENT_ROLES_ENV, lookup
from kubetune.api.uris import ParsedUri
from kubetune_trainer.errors import InfraError, UserError

SAFE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "*.jinja"]


def hub_token(role: str) -> str | bool | None:
    """The role's HF_TOKEN. In a pod the operator made, a role without one reads anonymously (False): given None,
    huggingface_hub would use HF_TOKEN from the environment or a saved login, credentials the spec never named."""
    token = lookup(role, "HF_TOKEN")
    if token:
        return token
    return False if AMBIENT_ROLES_ENV in os.environ else None


def translate_hub_error(err: Exception, what: str) -> Exception:
    """huggingface_hub exceptions -> UserError (wrong name, revision, token) / InfraError (hub unreachable)."""
    from huggingface_hub import errors

    if isinstance(err, errors.GatedRepoError):
        return UserError(
            f"{what}: the repository is gated; accept its terms and set a token (credentialsSecret with HF_TOKEN)"
        )
    if isinstance(err, errors.RepositoryNotFoundError):
        return UserError(f"{what}: no such repository, or it is private and the token cannot read it")
    if isinstance(err, errors.RevisionNotFoundError):
        return UserError(f"{what}: no such revision")
    if isinstance(
        err,
        errors.RemoteEntryNotFoundError if hasattr(errors, "RemoteEntryNotFoundError") else errors.EntryNotFoundError,
    ):
        return UserError(f"{what}: a file is missing from the repository")
    if isinstance(err, errors.LocalEntryNotFoundError):
        return InfraError(f"{what}: the Hugging Face Hub cannot be reached and nothing is cached")
    if isinstance(err, errors.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return UserError(f"{what}: the Hub refused the token (HTTP {status}); check credentialsSecret HF_TOKEN")
        if status == 404:
            return UserError(f"{what}: not found on the Hub")
        return InfraError(f"{what}: the Hugging Face Hub failed (HTTP {status})")
    if _is_transport_error(err) or isinstance(err, (ConnectionError, TimeoutError, OSError)):
        return InfraError(f"{what}: the Hugging Face Hub cannot be reached ({type(err).__name__})")
    if isinstance(err, ValueError):  # e.g. HFValidationError: a malformed repo id
        return UserError(f"{what}: {err}")
    return err


def _is_transport_error(err: Exception) -> bool:
    """A connection refused, reset or cut short mid-body (huggingface_hub's HTTP client raises its own kinds)."""
    try:
        import httpx2
    except ImportError:  # pragma: no cover - huggingface_hub 2 depends on it
        return False
    return isinstance(err, httpx2.TransportError)


def fetch_model(
    parsed: ParsedUri, uri: str, dest: Path, *, role: str, allow_pickle: bool, trust_remote_code: bool, **_options
) -> Path:
    return fetch_model_snapshot(parsed, dest, role=role, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


def fetch_config(parsed: ParsedUri, uri: str, dest: Path, *, role: str, **_options) -> Path:
    from huggingface_hub import hf_hub_download

    label = f"model.uri: hf://{parsed.location}" + (f"@{parsed.revision}" if parsed.revision else "")
    try:
        return Path(
            hf_hub_download(
                repo_id=parsed.location,
                filename="config.json",
                revision=parsed.revision,
                token=hub_token(role),
                local_dir=str(dest),
            )
        )
    except Exception as err:  # noqa: BLE001 - translated
        raise translate_hub_error(err, label) from None


def fetch_model_snapshot(
    parsed: ParsedUri, dest: Path, *, role: str, allow_pickle: bool, trust_remote_code: bool, what: str = "model.uri"
) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    from kubetune_trainer.sources import PICKLE_PATTERNS

    patterns = SAFE_PATTERNS + (list(PICKLE_PATTERNS) if allow_pickle else []) + (["*.py"] if trust_remote_code else [])
    label = f"{what}: hf://{parsed.location}" + (f"@{parsed.revision}" if parsed.revision else "")
    token = hub_token(role)
    try:
        api = HfApi(token=token)
        commit = api.repo_info(parsed.location, revision=parsed.revision, token=token).sha
        listed = {
            f.path: (f.lfs.size if f.lfs is not None else f.size)
            for f in api.list_repo_tree(parsed.location, revision=commit, recursive=True, token=token)
            if isinstance(f, RepoFile)
        }
        snapshot_download(
            repo_id=parsed.location,
            revision=commit,
            token=token,
            local_dir=str(dest),
            allow_patterns=patterns,
        )
    except Exception as err:  # noqa: BLE001 - translated
        raise translate_hub_error(err, label) from None
    for name in filter_repo_objects(listed, allow_patterns=patterns):
        local = dest / name
        if not local.is_file() or local.stat().st_size != listed[name]:
            raise InfraError(f"{label}: {name} did not download completely (the Hub was cut off?); the job is retried")
    if not (dest / "config.json").is_file():
        raise UserError(f"{label}: the repository holds no config.json (not a transformers model?)")
    return dest
