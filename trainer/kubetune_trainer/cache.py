"""The cluster's shared model cache, trainer side: where an entry lives, how one is populated, how a pod reads it.

A platform turns the cache on with an object-store prefix, the cache root (`s3://kubetune-cache/`, any
S3-compatible store, or `file:///mnt/model-cache/` for a volume every pod mounts at that path). The operator decides
when to populate an entry and which entry a job reads; this module is what its pods run.

Entries
-------
An entry is one source at one resolved revision (a moving `@main` gives a new entry when it moves), as
`entry_uri(cache_root, uri, commit, namespace, private)` names it:

    <root>/hf/models--<org>--<name>/<commit>/                  public Hub model
    <root>/hf/datasets--<org>--<name>/<commit>/                public Hub dataset (the whole repository)
    <root>/namespaces/<ns>/hf/models--<org>--<name>/<commit>/  gated or private Hub model (a credentialsSecret)
    <root>/namespaces/<ns>/s3/<bucket>/<digest>/<fingerprint>/ an s3:// model (always per namespace)

A repository's `org/name` becomes `models--org--name` as in huggingface_hub's own cache: the Hub refuses `--` in
repository names, so no two repositories share a folder (plain `org/name` folders would let a one-part repository
`x` at commit C collide with a repository `x/C`). A model fetched with `allowPickle` is its own entry
(`<commit>.with-pickles`): the default entry holds only what a job without it may load. Whatever was fetched with
a tenant's credentials lives under `namespaces/<ns>/`, so one tenant never reads what another's credentials fetched;
the store's policy enforces that (docs/shared-cluster.md).

An entry holds the repository's files at their repository paths and, written LAST, `_COMPLETE`, a JSON document:

    {"format": 1, "source": "hf://org/name@main", "kind": "model", "repo": "org/name", "commit": "<sha>",
     "allowPickle": false, "bytes": 123, "files": {"config.json": {"size": 654, "sha256": "..."}, ...}}

An entry without `_COMPLETE` is being populated or was cut off: nothing ever reads it.

Population (what a population Job's pod runs)
---------------------------------------------
    python -m kubetune_trainer.cache populate --model URI --cache-root URI [--namespace NS] [--private]
        [--allow-pickle] [--role ROLE]

`--model` also takes `hf://datasets/...` (or use `--dataset`), and an `s3://` model folder (with `--private`: read
with the tenant's credentials, it is keyed by a digest of its listing, `s3_fingerprint`, and copied with each file's
size checked against the listing). For an hf:// source it resolves the revision to a commit, and if that
entry is complete exits 0 at once; otherwise it deletes whatever a cut population left there, downloads the
files the trainer would fetch (safetensors, configs, tokenizer, Python files; pickled weights only with
--allow-pickle; for a dataset everything but Python files) with huggingface_hub, a few at a time (each deleted
once uploaded: the pod's scratch never holds the whole model), checks each one's size and hash against the Hub's
own (sha256 for LFS files, the git blob id for the others), uploads it, and writes `_COMPLETE` last.
Credentials by role as the trainer reads them (`--role`, default `model`: KUBETUNE_MODEL_HF_TOKEN,
else HF_TOKEN outside a pod); the store with the `cache` role's (KUBETUNE_CACHE_AWS_ACCESS_KEY_ID, ...,
KUBETUNE_CACHE_AWS_ENDPOINT_URL). Exit codes as the trainer's: 0 done (or already there), 10 user error (no such
repository or revision, gated without a token), 20 infrastructure (Hub or store unreachable: retry). On success the
last line of stdout and the termination log hold one JSON object the operator reads from the pod's status:

    {"entry": "<uri>", "commit": "<sha>", "hit": false, "files": 7, "bytes": 536590}

(the operator cannot resolve a private model's revision itself, since it reads no Secret: the population pod,
which has the tenant's token, tells it which entry that is). On failure the termination log holds
"UserError: ..." or "InfraError: ...", as the trainer's.

Reading (the training pod)
--------------------------
The operator sets `KUBETUNE_<ROLE>_CACHE_URI` (`KUBETUNE_MODEL_CACHE_URI`, `KUBETUNE_REWARD_MODEL_CACHE_URI`,
`KUBETUNE_DATASET_0_CACHE_URI`, ...: `kubetune.api.credentials.env_name(role, "CACHE_URI")`) to a complete entry.
`sources.fetch_model`/`fetch_config` and the hf:// dataset loader then read that entry instead of the source and
never contact the Hub: an s3:// entry is downloaded into the pod's scratch, a file:// entry is linked in place. Every
file's size is checked against `_COMPLETE`; a missing or incomplete entry (evicted, store trouble) is an
infrastructure error (exit 20) so the Job retries, never a reason to fall back to the Hub behind the platform's back.

This module imports no torch: the operator may import `entry_uri` and the marker's name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kubetune.api.constants import ExitCode
from kubetune.api.credentials import ROLE_MODEL, env_name
from kubetune.api.uris import ParsedUri, UriError, check_output_uri, join_uri, parse_uri
from kubetune_trainer.errors import InfraError, TrainerError, UserError
from kubetune_trainer.layout import COMPLETE_MARKER

log = logging.getLogger("kubetune.cache")

# The credentials role of the cache store (KUBETUNE_CACHE_AWS_ACCESS_KEY_ID, ..., KUBETUNE_CACHE_AWS_ENDPOINT_URL).
CACHE_ROLE = "cache"
MARKER = COMPLETE_MARKER
MARKER_FORMAT = 1
# How a reader checks an entry's files: "size" (default) or "sha256".
VERIFY_ENV = "KUBETUNE_CACHE_VERIFY"
# Beside a pod's local copy of an entry: the entry's URI and marker, written before the first file is placed, so a
# later rank or attempt on the same disk reuses what is there only when it came from the same entry.
LOCAL_RECORD = ".kubetune-cache-entry.json"
PICKLE_VARIANT = ".with-pickles"
# Python files stay in a model's entry (small, and only ever run with trustRemoteCode); never in a dataset's.
MODEL_EXTRA_PATTERNS = ["*.py"]
DATASET_IGNORE_PATTERNS = ["*.py", ".gitattributes", "*/.gitattributes"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{16,64}$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


# --------------------------------------------------------------------------- the key


def entry_uri(
    cache_root: str,
    model_uri: str,
    revision_commit: str,
    namespace: str | None = None,
    private: bool = False,
    *,
    allow_pickle: bool = False,
) -> str:
    """The entry (a prefix ending in "/") of `model_uri` (a model or an hf://datasets URI) at `revision_commit`: the
    40-hex commit an hf:// revision resolves to, or for an s3:// source a hex digest of its listing (keys, sizes,
    ETags, `s3_fingerprint`) that changes when the source does.
    `private` (a gated or private repository read with a tenant's credentialsSecret; always for s3://) puts it
    under `namespaces/<namespace>/`. ValueError for anything that cannot be an entry."""
    try:
        check_output_uri(cache_root)
        parsed = parse_uri(model_uri)
    except UriError as err:
        raise ValueError(str(err)) from None
    if parsed.scheme == "hf":
        if not _COMMIT.fullmatch(revision_commit or ""):
            raise ValueError(f"an hf:// entry is keyed by a 40-hex commit sha (got {revision_commit!r})")
        if "--" in parsed.location or ".." in parsed.location:
            raise ValueError(f"not a Hugging Face repository name: {parsed.location!r} ('--' and '..' are refused)")
        kind = "datasets" if parsed.is_dataset_repo else "models"
        folder = f"hf/{kind}--{parsed.location.replace('/', '--')}/{revision_commit}"
        if allow_pickle and not parsed.is_dataset_repo:
            folder += PICKLE_VARIANT
    elif parsed.scheme == "s3":
        if not private:
            raise ValueError("an s3:// model is read with a tenant's credentials: its entry is always private")
        if not _FINGERPRINT.fullmatch(revision_commit or ""):
            raise ValueError(f"an s3:// entry is keyed by its listing fingerprint (got {revision_commit!r})")
        digest = hashlib.sha256(f"{parsed.location}/{parsed.path.strip('/')}".encode()).hexdigest()[:32]
        folder = f"s3/{parsed.location}/{digest}/{revision_commit}"
        if allow_pickle:
            folder += PICKLE_VARIANT
    else:
        raise ValueError(f"{parsed.scheme}:// sources are read where they are: nothing to cache")
    if private:
        if not namespace or not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"a private entry needs the job's namespace (got {namespace!r})")
        folder = f"namespaces/{namespace}/{folder}"
    return join_uri(cache_root, folder) + "/"


def marker_uri(entry: str) -> str:
    return join_uri(entry, MARKER)


def env_for(role: str) -> str:
    """The variable that holds the entry a role reads: KUBETUNE_MODEL_CACHE_URI, KUBETUNE_DATASET_0_CACHE_URI..."""
    return env_name(role, "CACHE_URI")


def entry_variables(env: list[dict]) -> dict[str, str]:
    """The env_for variables among a container's `env` (name -> entry): the entries its pod reads."""
    prefix, suffix = env_name("", "CACHE_URI").split("__")  # KUBETUNE_<ROLE>_CACHE_URI
    return {
        e["name"]: e["value"]
        for e in env
        if isinstance(e.get("name"), str)
        and e["name"].startswith(prefix + "_")
        and e["name"].endswith("_" + suffix)
        and isinstance(e.get("value"), str)
        and e["value"]
    }


def entry_for_role(role: str) -> str | None:
    return os.environ.get(env_for(role)) or None


# --------------------------------------------------------------------------- hashing


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, read once: the Hub gives an LFS file's sha256 and a regular file's blob id."""
    sha256, blob = hashlib.sha256(), hashlib.sha1()
    blob.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()


def sha256_of(path: Path) -> str:
    return file_digests(path)[0]


def _each(work, items: list, *, workers: int) -> list:
    """`work(item)` for every item on up to `workers` threads, in order; the first failure cancels what has not
    started and is raised."""
    with ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# --------------------------------------------------------------------------- the store


class _CacheStore:
    """The cache root's storage. What it refuses (access denied, no such bucket) is the platform's to fix, never the
    job's: its UserErrors become InfraErrors, so a job is retried rather than failed for a store it did not choose."""

    def __init__(self, uri: str):
        from kubetune_trainer.storage import get_storage

        try:
            self._storage = get_storage(uri, credentials_role=CACHE_ROLE)
        except UserError as err:
            raise InfraError(f"the model cache's store: {err}") from None

    def __getattr__(self, name: str):
        method = getattr(self._storage, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except UserError as err:
                raise InfraError(f"the model cache's store: {err}") from None

        return call


def _storage(uri: str) -> _CacheStore:
    return _CacheStore(uri)


def read_marker(storage, entry: str) -> dict | None:
    """The entry's `_COMPLETE` document; None when there is none (never populated, cut off, evicted)."""
    try:
        text = storage.read_text(marker_uri(entry))
    except FileNotFoundError:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return None
    return marker


# --------------------------------------------------------------------------- reading an entry


def _selected(path: str, *, kind: str, allow_pickle: bool, trust_remote_code: bool) -> bool:
    from kubetune_trainer.sources import is_pickled

    if kind == "model":
        if is_pickled(path) and not allow_pickle:
            return False
        if path.endswith(".py") and not trust_remote_code:
            return False
    return True


def _check_local(path: Path, meta: dict, entry: str, name: str, verify: str) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        raise InfraError(f"model cache entry {entry}: {name} is missing") from None
    if size != meta.get("size"):
        raise InfraError(f"model cache entry {entry}: {name} has {size} bytes, its marker says {meta.get('size')}")
    if verify == "sha256" and sha256_of(path) != meta.get("sha256"):
        raise InfraError(f"model cache entry {entry}: {name} does not match its sha256")


def _verify_mode() -> str:
    # Sizes by default, not hashes. The population checked every file's hash against the Hub's before it wrote the
    # marker, the store's own transfer checksums cover the copy, and the store's policy lets training pods only read;
    # what a reader must catch is an entry that is cut short or half evicted, which sizes do. Hashing on every start
    # would cost minutes per attempt on every node (140 GB at ~1 GB/s of sha256 per core, and a volume read twice):
    # a platform that wants it anyway sets KUBETUNE_CACHE_VERIFY=sha256.
    mode = os.environ.get(VERIFY_ENV, "size").strip().lower() or "size"
    if mode not in ("size", "sha256"):
        raise InfraError(f"{VERIFY_ENV}={mode!r}: expected 'size' or 'sha256'")
    return mode


def _local_record(dest: Path) -> dict | None:
    try:
        return json.loads((dest / LOCAL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _open_entry(entry: str, dest: Path, what: str) -> tuple[object, dict]:
    """(the store, the entry's marker) for a local copy at `dest`: the marker recorded there by an earlier read of
    the same entry (another local rank, fetch_config before fetch_model), else the store's, recorded there."""
    record = _local_record(dest)
    storage = _storage(entry)
    if record is not None and record.get("entry") == entry and isinstance(record.get("marker"), dict):
        return storage, record["marker"]
    if dest.exists() and any(dest.iterdir()):
        shutil.rmtree(dest)  # another entry's copy, or the source's: nothing there was checked against this entry
    marker = read_marker(storage, entry)
    if marker is None:
        raise InfraError(
            f"{what}: the model cache entry {entry} is not complete (no {MARKER}): it is being "
            "repopulated or was evicted; the job is retried"
        )
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f"{LOCAL_RECORD}.part"
    tmp.write_text(json.dumps({"entry": entry, "marker": marker}), encoding="utf-8")
    os.replace(tmp, dest / LOCAL_RECORD)
    return storage, marker


def _place(storage, entry: str, name: str, meta: dict, dest: Path, verify: str) -> Path:
    """One file of the entry at dest/name: linked (file://) or downloaded (to a temporary name, renamed once its
    size is right), unless an earlier read of the same entry already placed it."""
    target = dest / name
    if target.exists() or target.is_symlink():
        try:
            _check_local(target, meta, entry, name, "size")
            return target
        except InfraError:
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    source = join_uri(entry, name)
    parsed = parse_uri(source)
    if parsed.scheme == "file":
        _check_local(Path(parsed.location), meta, entry, name, verify)
        target.symlink_to(parsed.location)
        return target
    tmp = target.with_name(f".{target.name}.partial")
    try:
        storage.download_file(source, tmp)
    except FileNotFoundError:
        raise InfraError(f"model cache entry {entry}: {name} is missing from the store") from None
    _check_local(tmp, meta, entry, name, verify)
    os.replace(tmp, target)
    return target


def read_entry(
    entry: str, dest: Path, *, what: str, allow_pickle: bool = False, trust_remote_code: bool = False
) -> Path:
    """A local folder with the entry's files (those a job with these options may load) at `dest`; InfraError when
    the entry is not complete or a file is not what its marker says. Never contacts the source."""
    dest = Path(dest)
    storage, marker = _open_entry(entry, dest, what)
    kind = marker.get("kind", "model")
    verify = _verify_mode()
    names = [
        n
        for n in sorted(marker["files"])
        if _selected(n, kind=kind, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    ]
    for name in names:  # repository paths, relative: nothing lands outside `dest`
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise InfraError(f"model cache entry {entry}: its marker names {name!r}, not a repository path")
    _each(lambda n: _place(storage, entry, n, marker["files"][n], dest, verify), names, workers=8)
    log.info(
        "%s: read %d files (%d bytes) from the model cache entry %s",
        what,
        len(names),
        sum(int(marker["files"][n].get("size", 0)) for n in names),
        entry,
    )
    return dest


def read_file(entry: str, name: str, dest: Path, *, what: str, uri: str | None = None) -> Path:
    """One file of the entry (config.json, for the memory plan before the weights) at dest/name; `uri`: the source
    the entry must be of."""
    dest = Path(dest)
    storage, marker = _open_entry(entry, dest, what)
    if uri is not None:
        check_source(entry, marker, uri, what)
    meta = marker["files"].get(name)
    if meta is None:
        raise UserError(f"{what}: the model holds no {name}")
    return _place(storage, entry, name, meta, dest, _verify_mode())


def check_source(entry: str, marker: dict, uri: str, what: str) -> None:
    """The entry the platform gave is of the source the spec names: the same repository, and the same commit when
    the spec pins one."""
    parsed = parse_uri(uri)
    if parsed.scheme == "hf":
        same = marker.get("repo") == parsed.location and (marker.get("kind") == "dataset") == parsed.is_dataset_repo
        pinned = parsed.revision if parsed.revision and _COMMIT.fullmatch(parsed.revision) else None
        if same and pinned and marker.get("commit") != pinned:
            same = False
    else:
        same = marker.get("source", "").rstrip("/") == uri.rstrip("/")
    if not same:
        raise InfraError(
            f"{what}: the model cache entry {entry} holds {marker.get('source')}, not {uri}: "
            "the platform's cache gave this job the wrong entry"
        )


def fetch_cached(
    entry: str, uri: str, dest: Path, *, what: str, allow_pickle: bool = False, trust_remote_code: bool = False
) -> Path:
    """`read_entry` of the entry the platform set for a source, after checking it is that source's."""
    dest = Path(dest)
    _, marker = _open_entry(entry, dest, what)
    check_source(entry, marker, uri, what)
    return read_entry(entry, dest, what=what, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------- population


@dataclass
class Populated:
    entry: str
    commit: str
    hit: bool
    files: int
    bytes: int

    def to_json(self) -> str:
        return json.dumps(
            {"entry": self.entry, "commit": self.commit, "hit": self.hit, "files": self.files, "bytes": self.bytes}
        )


def _label(parsed: ParsedUri) -> str:
    kind = "datasets/" if parsed.is_dataset_repo else ""
    return f"hf://{kind}{parsed.location}" + (f"@{parsed.revision}" if parsed.revision else "")


def _hub_error(err: Exception, what: str) -> Exception:
    from kubetune_trainer.sources.huggingface import translate_hub_error

    translated = translate_hub_error(err, what)
    if isinstance(translated, TrainerError):
        return translated
    return InfraError(f"{what}: the Hugging Face Hub failed ({type(err).__name__})")


def hub_patterns(kind: str, allow_pickle: bool) -> tuple[list[str] | None, list[str] | None]:
    """(allow_patterns, ignore_patterns) of what an entry holds: a model's as the trainer's hf:// source fetches it
    (plus Python files, which only trustRemoteCode ever runs), a dataset's whole repository but its code."""
    from kubetune_trainer.sources import PICKLE_PATTERNS
    from kubetune_trainer.sources.huggingface import SAFE_PATTERNS

    if kind == "dataset":
        return None, DATASET_IGNORE_PATTERNS
    return SAFE_PATTERNS + MODEL_EXTRA_PATTERNS + (list(PICKLE_PATTERNS) if allow_pickle else []), None


def resolve_commit(uri: str, *, token: str | bool | None) -> str:
    """The commit an hf:// URI's revision (default: main) names on the Hub now."""
    from huggingface_hub import HfApi

    parsed = parse_uri(uri)
    try:
        info = HfApi(token=token).repo_info(
            parsed.location,
            repo_type="dataset" if parsed.is_dataset_repo else "model",
            revision=parsed.revision,
            token=token,
        )
    except Exception as err:  # noqa: BLE001 - translated
        raise _hub_error(err, _label(parsed)) from None
    return info.sha


def populate(
    uri: str,
    cache_root: str,
    *,
    namespace: str | None = None,
    private: bool = False,
    allow_pickle: bool = False,
    role: str = ROLE_MODEL,
    work_dir: Path | None = None,
    workers: int = 8,
) -> Populated:
    """Fill the entry of `uri` (hf:// model or dataset at the commit its revision names now, or an s3:// model at
    its current content: `populate_s3`); see the module's docstring. Returns what the entry is and whether it was
    already complete."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    from kubetune_trainer.sources.huggingface import hub_token

    try:
        parsed = parse_uri(uri)
    except UriError as err:
        raise UserError(f"--model: {err}") from None
    if parsed.scheme == "s3":
        return populate_s3(
            uri,
            cache_root,
            namespace=namespace,
            private=private,
            allow_pickle=allow_pickle,
            role=role,
            work_dir=work_dir,
            workers=workers,
        )
    if parsed.scheme != "hf":
        raise UserError(f"--model: {uri}: only hf:// models and datasets and s3:// models are cached")
    kind = "dataset" if parsed.is_dataset_repo else "model"
    repo_type = kind
    what = _label(parsed)
    token = hub_token(role)
    commit = resolve_commit(uri, token=token)
    entry, storage, complete = _entry_for_population(cache_root, uri, commit, namespace, private, allow_pickle, what)
    if complete is not None:
        return complete

    # What a cut population left (files, no marker) is deleted, not trusted: nothing in it was checked by this run.
    storage.delete_prefix(entry)
    api = HfApi(token=token)
    try:
        tree = {
            f.path: f
            for f in api.list_repo_tree(
                parsed.location, repo_type=repo_type, revision=commit, recursive=True, token=token
            )
            if isinstance(f, RepoFile)
        }
    except Exception as err:  # noqa: BLE001 - translated
        raise _hub_error(err, what) from None
    allow, ignore = hub_patterns(kind, allow_pickle)
    names = sorted(filter_repo_objects(tree, allow_patterns=allow, ignore_patterns=ignore))
    names = [n for n in names if n.rsplit("/", 1)[-1] != MARKER]
    if kind == "model" and "config.json" not in names:
        raise UserError(f"{what}: the repository holds no config.json (not a transformers model?)")
    if not names:
        raise UserError(f"{what}: the repository holds no files")

    staging = (
        Path(work_dir or tempfile.gettempdir()) / "kubetune-cache" / hashlib.sha256(entry.encode()).hexdigest()[:16]
    )
    staging.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> tuple[str, dict]:
        expected = tree[name]
        size = expected.lfs.size if expected.lfs is not None else expected.size
        try:
            local = Path(
                hf_hub_download(
                    parsed.location, name, repo_type=repo_type, revision=commit, token=token, local_dir=str(staging)
                )
            )
        except Exception as err:  # noqa: BLE001 - translated
            raise _hub_error(err, f"{what}: {name}") from None
        actual_size = local.stat().st_size
        sha256, blob = file_digests(local)
        wrong = (actual_size != size) or (
            sha256 != expected.lfs.sha256 if expected.lfs is not None else blob != expected.blob_id
        )
        if wrong:
            local.unlink(missing_ok=True)
            raise InfraError(
                f"{what}: {name} arrived different from the Hub's record of it (size or hash); "
                "the population is retried"
            )
        storage.upload_file(local, join_uri(entry, name))
        local.unlink()  # a few files at a time on local disk: a population's scratch need not hold the whole model
        return name, {"size": actual_size, "sha256": sha256}

    started = time.monotonic()
    files = dict(_each(one, names, workers=workers))
    marker = {"source": uri, "kind": kind, "repo": parsed.location, "commit": commit, "allowPickle": allow_pickle}
    return _complete(storage, entry, files, marker, staging, what, started)


def _entry_for_population(
    cache_root: str, uri: str, key: str, namespace: str, private: bool, allow_pickle: bool, what: str
) -> tuple[str, object, Populated | None]:
    """The entry of `uri` at `key` (a commit, or an s3:// listing's digest), its store, and, when its marker says it is
    complete at that key, what it holds (nothing to populate)."""
    try:
        entry = entry_uri(cache_root, uri, key, namespace, private, allow_pickle=allow_pickle)
    except ValueError as err:
        raise UserError(f"{what}: {err}") from None
    storage = _storage(entry)
    marker = read_marker(storage, entry)
    if marker is not None and marker.get("commit") == key:
        log.info("%s: the cache entry %s is complete", what, entry)
        return entry, storage, Populated(entry, key, True, len(marker["files"]), int(marker.get("bytes", 0)))
    return entry, storage, None


def _complete(storage, entry: str, files: dict, marker: dict, staging: Path, what: str, started: float) -> Populated:
    """Write the entry's marker, last and only once every file is in the store (a listing, not this process's word
    for it): from then on the entry is complete."""
    stored = set(storage.list(entry))
    missing = [name for name in files if join_uri(entry, name) not in stored]
    if missing:
        raise InfraError(
            f"{what}: {len(missing)} file(s) vanished from the cache entry {entry} while it was "
            f"populated ({', '.join(missing[:3])}); the population is retried"
        )
    total = sum(f["size"] for f in files.values())
    marker = {
        "format": MARKER_FORMAT,
        **marker,
        "bytes": total,
        "files": files,
        "populatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_text(marker_uri(entry), json.dumps(marker, indent=1, sort_keys=True))
    shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "%s: cached %d files (%d bytes) in %s in %.1f s", what, len(files), total, entry, time.monotonic() - started
    )
    return Populated(entry, marker["commit"], False, len(files), total)


def s3_fingerprint(objects: list[tuple[str, int, str]]) -> str:
    """The key of an s3:// model's content: a digest of its listing (each selected object's path, size and ETag).

    An object store has no commit to resolve, but its listing describes the content exactly enough: S3 (and MinIO)
    give every object a new ETag whenever it is written (the MD5 of a single-part upload, a digest of the parts' MD5s
    for a multipart one), so a rewritten, added or removed file changes the digest and the next job gets a new entry,
    while an unchanged model keeps its entry without a byte of it being read. One LIST per 1,000 objects, no GET."""
    digest = hashlib.sha256()
    for path, size, etag in sorted(objects):
        digest.update(f"{path}\0{size}\0{etag.strip(chr(34))}\n".encode())
    return digest.hexdigest()[:32]


def _s3_listing(storage, prefix: str, what: str, allow_pickle: bool) -> list[tuple[str, int, str]]:
    """(path under the prefix, size, ETag) of what an entry of the model holds: what the trainer's s3:// source
    fetches (everything but pickled weights, unless allowed)."""
    from kubetune_trainer.sources import is_pickled

    listed = []
    for uri, size, etag in storage.list_objects(prefix):
        path = uri[len(prefix) :]
        if not path or path.endswith("/") or path.rsplit("/", 1)[-1] == MARKER:
            continue  # the prefix itself, a "folder" placeholder, or a marker of the bucket's own
        if is_pickled(path) and not allow_pickle:
            continue
        listed.append((path, size, etag))
    if not any(path == "config.json" for path, _, _ in listed):
        raise UserError(f"{what} holds no config.json (expected a Hugging Face model folder)")
    return listed


def populate_s3(
    uri: str,
    cache_root: str,
    *,
    namespace: str | None,
    private: bool,
    allow_pickle: bool = False,
    role: str = ROLE_MODEL,
    work_dir: Path | None = None,
    workers: int = 8,
) -> Populated:
    """Fill the entry of an s3:// model folder, read with the role's credentials (a tenant's: the entry is always
    under namespaces/<namespace>/), keyed by `s3_fingerprint` of its listing. Like an hf:// population: a complete
    entry is a hit; otherwise what is there is deleted, each file copied and its size checked, and the marker
    written last. The listing is taken again once every file is copied: a model rewritten meanwhile would leave an
    entry whose files are not what its key says, so that population fails (20) and its retry keys the new content."""
    from kubetune_trainer.storage import get_storage

    prefix = uri if uri.endswith("/") else uri + "/"
    what = f"--model: {uri}"
    if not private:
        raise UserError(f"{what}: an s3:// model is read with a tenant's credentials; populate it with --private")
    source = get_storage(uri, credentials_role=role)
    listed = _s3_listing(source, prefix, what, allow_pickle)
    fingerprint = s3_fingerprint(listed)
    entry, storage, complete = _entry_for_population(cache_root, uri, fingerprint, namespace, True, allow_pickle, what)
    if complete is not None:
        return complete

    storage.delete_prefix(entry)  # a cut population's files: nothing in them was checked by this run
    staging = (
        Path(work_dir or tempfile.gettempdir()) / "kubetune-cache" / hashlib.sha256(entry.encode()).hexdigest()[:16]
    )
    staging.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, int, str]) -> tuple[str, dict]:
        path, size, _ = item
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise UserError(f"{what}: {path!r} is not a path an entry can hold")
        local = staging / path
        try:
            source.download_file(prefix + path, local)
        except FileNotFoundError:
            raise InfraError(f"{what}: {path} vanished while it was copied; the population is retried") from None
        if local.stat().st_size != size:
            local.unlink(missing_ok=True)
            raise InfraError(f"{what}: {path} arrived with another size than listed; the population is retried")
        sha256 = sha256_of(local)
        storage.upload_file(local, join_uri(entry, path))
        local.unlink()
        return path, {"size": size, "sha256": sha256}

    started = time.monotonic()
    files = dict(_each(one, listed, workers=workers))
    if s3_fingerprint(_s3_listing(source, prefix, what, allow_pickle)) != fingerprint:
        raise InfraError(f"{what}: the model changed while it was copied into the cache; the population is retried")
    marker = {"source": uri, "kind": "model", "commit": fingerprint, "allowPickle": allow_pickle}
    return _complete(storage, entry, files, marker, staging, what, started)


# --------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kubetune_trainer.cache",
        description="The shared model cache: populate an entry (a population Job's pod).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pop = sub.add_parser("populate", help="fill the entry of a model or dataset at its current revision")
    source = pop.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="URI", help="hf://org/name[@revision] (or hf://datasets/...)")
    source.add_argument("--dataset", metavar="URI", help="hf://datasets/org/name[@revision]")
    pop.add_argument("--cache-root", metavar="URI", required=True, help="s3://bucket/prefix/ or file:///path/")
    pop.add_argument("--namespace", help="the job's namespace (with --private)")
    pop.add_argument(
        "--private", action="store_true", help="fetched with a tenant's credentials: a per-namespace entry"
    )
    pop.add_argument("--allow-pickle", action="store_true", help="also pickled weights (spec.model.allowPickle)")
    pop.add_argument("--role", default=ROLE_MODEL, help="whose credentials to read the source with (default: model)")
    pop.add_argument("--termination-log", metavar="PATH", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kubetune_trainer.entrypoint import _fail, _setup_logging, termination_log_path, write_termination_log

    args = build_parser().parse_args(argv)
    _setup_logging()
    logging.getLogger("kubetune.cache").setLevel(logging.INFO)
    termination_log = termination_log_path(args.termination_log)
    uri = args.model or args.dataset
    try:
        if args.dataset and not parse_uri(args.dataset).is_dataset_repo:
            raise UserError(f"--dataset: {args.dataset} is not an hf://datasets/... URI")
        result = populate(
            uri,
            args.cache_root,
            namespace=args.namespace,
            private=args.private,
            allow_pickle=args.allow_pickle,
            role=args.role,
            work_dir=Path(os.environ["KUBETUNE_WORK_DIR"]) if os.environ.get("KUBETUNE_WORK_DIR") else None,
        )
    except UriError as err:
        return _fail(termination_log, ExitCode.USER_ERROR, f"UserError: {err}")
    except UserError as err:
        return _fail(termination_log, ExitCode.USER_ERROR, f"UserError: {err}")
    except InfraError as err:
        return _fail(termination_log, ExitCode.INFRA_ERROR, f"InfraError: {err}")
    except KeyboardInterrupt:
        return _fail(termination_log, ExitCode.INFRA_ERROR, "InfraError: interrupted; the population is retried")
    except Exception as err:  # noqa: BLE001 - a bug: details to stderr, one line to the log
        import traceback

        traceback.print_exc(file=sys.stderr)
        return _fail(termination_log, ExitCode.INTERNAL_ERROR, f"InternalError: {type(err).__name__}: {err}")
    print(result.to_json(), flush=True)
    write_termination_log(termination_log, result.to_json())
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
