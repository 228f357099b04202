"""A Hugging Face Hub double: a local HTTP server that serves model and dataset repositories the way the Hub
does for `huggingface_hub` and `datasets`, so the trainer's real hf:// code (snapshot_download, hf_hub_download,
datasets.load_dataset) runs against something that speaks the protocol.

What it answers, as huggingface_hub 2.4 reads it (hf_api.py `repo_info`/`list_repo_tree`/`get_paths_info`,
file_download.py `get_hf_file_metadata`/`http_get`, utils/_http.py `hf_raise_for_status` and
`_httpx2_follow_hub_redirects_with_backoff`):

- `GET /api/{models,datasets}/{repo}[/revision/{rev}]`: the repo's info with `sha`, the commit `rev` resolves to
  (a branch, a tag or a full commit sha).
- `GET /api/{models,datasets}/{repo}/tree/{rev}[/{path}]?recursive=`: files with `size`, `oid` (git blob sha1)
  and, for LFS files, `lfs: {oid: sha256, size, pointerSize}`; folders.
- `POST /api/{models,datasets}/{repo}/paths-info/{rev}` (form `paths=...`): the same entries for given paths.
- `HEAD|GET /{repo}/resolve/{rev}/{path}` (`/datasets/{repo}/resolve/...` for datasets): `X-Repo-Commit`, an
  `ETag` (the git blob sha1; an LFS file's sha256) and `Content-Length`. An LFS file answers as the Hub does: a
  302 to a signed URL on another origin (the "CDN", a second port here) carrying `X-Linked-Etag` and
  `X-Linked-Size`; the client downloads from there without its token. GET honours `Range: bytes=a-[b]` (206).
- Errors with the Hub's `X-Error-Code`: `RepoNotFound` (401 without a token, 404 with one), `GatedRepo` (401
  without a token, 403 with a token not granted), `RevisionNotFound`, `EntryNotFound`.

Faults: `cut(path, after_bytes, times)` drops the connection mid-file (the client sees a truncated body);
`corrupt(path)` sends the right size with one byte changed; `delay(path, seconds)` starts a download late;
`hold(path)` pauses a download mid-file until released (to kill its client there); `down = True` answers 503 to
everything; `close()` makes the Hub unreachable. Every request is recorded before it is answered: `gets(path)`,
`bytes_served(path)`, `heads(path)`, `downloads()`, `requests`.

`CountingProxy` counts, the same way, what an HTTP object store (moto's S3) serves through it.

Tests reach it through `HF_ENDPOINT`; `online(monkeypatch, hf_home)` also re-points the libraries' import-time
copies of it (huggingface_hub.constants, datasets.config) and turns the test suite's offline mode off.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

# The suffixes the Hub's default .gitattributes stores with LFS (the ones the tests' repositories use).
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".parquet",
    ".arrow",
    ".pt",
    ".pth",
    ".pkl",
    ".model",
    ".gguf",
    ".npz",
    ".h5",
    ".onnx",
    ".msgpack",
    ".zip",
    ".gz",
)


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's content (what the Hub serves as a regular file's ETag and tree oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.path.lower().endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        return git_blob_sha1(self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid

    @property
    def lfs_pointer(self) -> bytes:
        """What git holds for an LFS file: a pointer to its content."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    def tree_entry(self) -> dict:
        if not self.lfs:
            return {"type": "file", "oid": self.oid, "size": len(self.data), "path": self.path}
        # As on the Hub: an LFS file's oid is its pointer's blob id; its size, and under `lfs` its sha256, are the
        # content's.
        pointer = self.lfs_pointer
        return {
            "type": "file",
            "oid": git_blob_sha1(pointer),
            "size": len(self.data),
            "path": self.path,
            "lfs": {"oid": self.sha256, "size": len(self.data), "pointerSize": len(pointer)},
        }


@dataclass
class Repo:
    repo_type: str  # "model" or "dataset"
    repo_id: str
    gated: bool = False
    private: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens that may read it (gated: granted; private: members)
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)  # sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class Hold:
    """A download paused mid-file: `reached` once the double waits, `release()` to let it end (cut short)."""

    def __init__(self, after_bytes: int):
        self.after_bytes = after_bytes
        self.reached = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class HubDouble:
    """Start with `HubDouble()` (or as a context manager); `url` is what HF_ENDPOINT gets."""

    def __init__(self):
        self._lock = threading.Lock()
        self._salt = uuid.uuid4().hex
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int, str | None]] = []  # (method, path, status, Range header)
        self._gets: Counter = Counter()  # (repo_type, repo_id, path) -> complete-or-not GETs of the file's bytes
        self._heads: Counter = Counter()
        self._bytes: Counter = Counter()
        self._cuts: dict[str, list[int]] = defaultdict(list)  # path -> [after_bytes, ...] (one per cut to come)
        self._corrupt: Counter = Counter()  # path -> downloads to come with one byte changed
        self._holds: dict[str, Hold] = {}
        self._delays: dict[str, list[float]] = defaultdict(list)  # path -> [seconds, ...] (one per slow download)
        self.down = False
        self.closed = False
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=cdn)) for cdn in (False, True)]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    # ------------------------------------------------------------------ set-up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def close(self) -> None:
        """Stop listening, and drop the connections clients keep alive: from now on the Hub is unreachable."""
        self.closed = True
        for held in list(self._holds.values()):
            held.release()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | Path,
        *,
        repo_type: str = "model",
        gated: bool = False,
        private: bool = False,
        tokens: tuple[str, ...] = (),
        branch: str = "main",
    ) -> str:
        """Commit `files` (a {path: bytes} map or a folder) onto `branch` of the repository (created on first use,
        later calls make a new commit and move the branch). Returns the new commit's sha."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        with self._lock:
            repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_type, repo_id))
            repo.gated, repo.private = gated or repo.gated, private or repo.private
            repo.tokens |= set(tokens)
            sha = hashlib.sha1(f"{self._salt}/{repo_type}/{repo_id}/{len(repo.commits)}".encode()).hexdigest()
            repo.commits[sha] = {path: HubFile(path, data) for path, data in files.items()}
            repo.refs[branch] = sha
            return sha

    def tag(self, repo_id: str, name: str, sha: str, *, repo_type: str = "model") -> None:
        with self._lock:
            self.repos[(repo_type, repo_id)].refs[name] = sha

    def cut(self, path: str, after_bytes: int, times: int = 1) -> None:
        """The next `times` downloads of a file named `path` (any repo) stop after `after_bytes` bytes: the
        connection is closed with the body unfinished."""
        with self._lock:
            self._cuts[path].extend([after_bytes] * times)

    def corrupt(self, path: str, times: int = 1) -> None:
        """The next `times` downloads of a file named `path` arrive whole but with one byte changed (the size is
        right: only a hash can tell)."""
        with self._lock:
            self._corrupt[path] += times

    def delay(self, path: str, seconds: float, times: int = 1) -> None:
        """The next `times` downloads of a file named `path` start `seconds` late (a slow Hub, a large file)."""
        with self._lock:
            self._delays[path].extend([seconds] * times)

    def hold(self, path: str, after_bytes: int = 0) -> Hold:
        """The next download of a file named `path` sends `after_bytes` bytes, then waits until the returned hold is
        released (`hold.reached` is set once it waits): a process can be killed mid-download."""
        with self._lock:
            self._holds[path] = Hold(after_bytes)
            return self._holds[path]

    # ------------------------------------------------------------------ what was served

    def gets(self, path: str, repo_id: str | None = None) -> int:
        """Downloads (GETs of the bytes, whole or in part) of files named `path`."""
        with self._lock:
            return sum(n for (_, rid, p), n in self._gets.items() if p == path and repo_id in (None, rid))

    def heads(self, path: str) -> int:
        with self._lock:
            return sum(n for (_, _, p), n in self._heads.items() if p == path)

    def bytes_served(self, path: str | None = None) -> int:
        with self._lock:
            return sum(n for (_, _, p), n in self._bytes.items() if path in (None, p))

    def downloads(self) -> dict[str, int]:
        """{file path: GETs} of everything downloaded so far."""
        with self._lock:
            out: Counter = Counter()
            for (_, _, path), n in self._gets.items():
                out[path] += n
            return dict(out)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self._gets.clear()
            self._heads.clear()
            self._bytes.clear()

    # ------------------------------------------------------------------ the environment

    def env(self, hf_home: Path) -> dict[str, str]:
        """Variables for a process (a subprocess, a "pod") that talks to this double."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_XET": "1",
        }

    def online(self, monkeypatch, hf_home: Path) -> None:
        """Point this process's huggingface_hub and datasets at the double, online, with caches under `hf_home`.

        Both libraries copy HF_ENDPOINT, HF_HUB_OFFLINE and the cache folders into module constants at import time
        (huggingface_hub/constants.py, datasets/config.py), so setting the variables alone reaches only new
        processes: the constants are patched too."""
        import datasets.config
        import huggingface_hub.constants as hub_constants
        import huggingface_hub.file_download as hub_download
        import huggingface_hub.utils._http as hub_http

        for key, value in self.env(hf_home).items():
            monkeypatch.setenv(key, value)
        hub_cache = str(hf_home / "hub")
        monkeypatch.setattr(hub_constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", hub_cache)
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(hub_http, "_HUB_ORIGINS", frozenset({hub_http._url_origin(self.url)}))
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", self.url)
        monkeypatch.setattr(
            datasets.config, "HUB_DATASETS_URL", self.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        datasets_cache = hf_home / "datasets"
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
        monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", datasets_cache / "downloads")
        monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", datasets_cache / "downloads" / "extracted")
        monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", hf_home / "modules")
        # huggingface_hub retries a failing Hub 5 times over ~23 s (1, 2, 4, 8, 8 s): the retries still happen here,
        # without the waits.
        no_waits = _WithoutSleep()
        monkeypatch.setattr(hub_http, "time", no_waits)
        monkeypatch.setattr(hub_download, "time", no_waits)

    # ------------------------------------------------------------------ the protocol

    def _repo_and_auth(self, repo_type: str, repo_id: str, token: str | None, *, files: bool) -> Repo | Reply:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and token not in repo.tokens):
            # The Hub does not say whether a repository it will not show exists: 401 to the anonymous, 404 else.
            return _error(404 if token else 401, "RepoNotFound", "Repository not found")
        if repo.gated and files and token not in repo.tokens:
            kind = "model" if repo_type == "model" else "dataset"
            message = (
                f"Access to {kind} {repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in."
                if not token
                else f"Access to {kind} {repo_id} is restricted and you are not in the authorized list."
            )
            return _error(403 if token else 401, "GatedRepo", message)
        return repo

    def _commit(self, repo: Repo, revision: str) -> tuple[str, dict[str, HubFile]] | Reply:
        sha = repo.resolve(unquote(revision))
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha, repo.commits[sha]

    def answer(self, method: str, raw_path: str, headers, body: bytes, *, cdn: bool) -> Reply | tuple:
        if self.down:
            return Reply(503, {"Content-Type": "text/plain"}, b"Service Unavailable")
        split = urlsplit(raw_path)
        path, query = split.path, parse_qs(split.query)
        token = _bearer(headers)
        if cdn:
            return self._cdn(method, path, query, headers)
        if m := re.fullmatch(r"/api/(models|datasets)/(.+?)/(tree|paths-info)/([^/]+)(/.*)?", path):
            kind, repo_id, what, revision, sub = m.groups()
            return self._listing(
                kind[:-1],
                repo_id,
                what,
                revision,
                (sub or "").lstrip("/"),
                query,
                parse_qs(body.decode()) if body else {},
                token,
            )
        if m := re.fullmatch(r"/api/(models|datasets)/(.+?)(?:/revision/([^/]+))?", path):
            kind, repo_id, revision = m.groups()
            return self._info(kind[:-1], unquote(repo_id), revision or "main", token)
        if m := re.fullmatch(r"/(datasets/)?(.+?)/resolve/([^/]+)/(.+)", path):
            is_dataset, repo_id, revision, file_path = m.groups()
            return self._resolve(
                method, "dataset" if is_dataset else "model", repo_id, revision, unquote(file_path), headers, token
            )
        return Reply(404, {"Content-Type": "text/plain"}, b"Not Found")

    def _info(self, repo_type: str, repo_id: str, revision: str, token: str | None) -> Reply:
        repo = self._repo_and_auth(repo_type, repo_id, token, files=False)
        if isinstance(repo, Reply):
            return repo
        found = self._commit(repo, revision)
        if isinstance(found, Reply):
            return found
        sha, files = found
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "sha": sha,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        return _json(info, {"X-Repo-Commit": sha})

    def _listing(self, repo_type, repo_id, what, revision, sub, query, form, token) -> Reply:
        repo = self._repo_and_auth(repo_type, unquote(repo_id), token, files=False)
        if isinstance(repo, Reply):
            return repo
        found = self._commit(repo, revision)
        if isinstance(found, Reply):
            return found
        sha, files = found
        if what == "paths-info":
            wanted = [p.strip("/") for p in form.get("paths", [])]
            return _json([e for p in wanted for e in _entry(files, p)], {"X-Repo-Commit": sha})
        sub = unquote(sub).strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = sub + "/" if sub else ""
        if sub and sub not in _folders(files) and sub not in files:
            return _error(404, "EntryNotFound", f"{sub} does not exist on {revision}")
        entries, seen = [], set()
        for file_path, hub_file in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):  # the folders on the way
                folder = prefix + "/".join(rest[:depth])
                if folder not in seen and (recursive or depth == 1):
                    seen.add(folder)
                    entries.append(_folder_entry(folder))
            if recursive or len(rest) == 1:
                entries.append(hub_file.tree_entry())
        return _json(entries, {"X-Repo-Commit": sha})

    def _resolve(self, method, repo_type, repo_id, revision, file_path, headers, token) -> Reply | tuple:
        repo = self._repo_and_auth(repo_type, repo_id, token, files=True)
        if isinstance(repo, Reply):
            return repo
        found = self._commit(repo, revision)
        if isinstance(found, Reply):
            return found
        sha, files = found
        hub_file = files.get(file_path)
        if hub_file is None:
            reply = _error(404, "EntryNotFound", f"{file_path} does not exist on {revision}")
            reply.headers["X-Repo-Commit"] = sha
            return reply
        common = {"X-Repo-Commit": sha, "ETag": f'"{hub_file.etag}"', "Accept-Ranges": "bytes"}
        if hub_file.lfs:
            # The Hub's answer for an LFS file: a redirect to a signed URL elsewhere, with the file's metadata on it.
            signature = hashlib.sha256(f"{self._salt}{hub_file.sha256}".encode()).hexdigest()[:32]
            location = (
                f"{self.cdn_url}/{repo_type}/{quote(repo_id)}/{hub_file.sha256}/{quote(file_path)}"
                f"?X-Signature={signature}"
            )
            return Reply(
                302,
                {
                    **common,
                    "Location": location,
                    "X-Linked-Etag": f'"{hub_file.sha256}"',
                    "X-Linked-Size": str(len(hub_file.data)),
                    "Content-Length": "0",
                },
            )
        key = (repo_type, repo_id, file_path)
        return self._file_bytes(method, key, hub_file, headers, common)

    def _cdn(self, method, path, query, headers) -> Reply | tuple:
        m = re.fullmatch(r"/(model|dataset)/(.+)/([0-9a-f]{64})/(.+)", path)
        if not m:
            return Reply(404, {}, b"")
        repo_type, repo_id, digest, file_path = m[1], unquote(m[2]), m[3], unquote(m[4])
        signature = hashlib.sha256(f"{self._salt}{digest}".encode()).hexdigest()[:32]
        if query.get("X-Signature", [""])[0] != signature:
            return Reply(403, {"Content-Type": "text/plain"}, b"signature does not match")
        if headers.get("Authorization"):
            # The Hub's CDN never sees the user's token: huggingface_hub drops it for another origin.
            return Reply(400, {"Content-Type": "text/plain"}, b"the Authorization header must not reach the CDN")
        repo = self.repos.get((repo_type, repo_id))
        hub_file = next(
            (
                f
                for files in (repo.commits.values() if repo else ())
                for f in files.values()
                if f.sha256 == digest and f.path == file_path
            ),
            None,
        )
        if hub_file is None:
            return Reply(404, {}, b"")
        return self._file_bytes(
            method,
            (repo_type, repo_id, file_path),
            hub_file,
            headers,
            {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"},
        )

    def _file_bytes(self, method, key, hub_file: HubFile, headers, common) -> Reply | tuple:
        data, start, end = hub_file.data, 0, len(hub_file.data) - 1
        status, extra = 200, {}
        if method == "GET" and (rng := headers.get("Range")):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m:
                return Reply(416, {"Content-Range": f"bytes */{len(data)}"})
            start = int(m[1])
            end = min(int(m[2]), len(data) - 1) if m[2] else len(data) - 1
            if start >= len(data):
                return Reply(416, {"Content-Range": f"bytes */{len(data)}"})
            status, extra = 206, {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        body = data[start : end + 1]
        reply_headers = {
            **common,
            **extra,
            "Content-Length": str(len(body)),
            "Content-Type": "application/octet-stream",
        }
        if method == "HEAD":
            with self._lock:
                self._heads[key] += 1
            return Reply(status, reply_headers)
        with self._lock:
            self._gets[key] += 1
            cuts = self._cuts.get(key[2])
            cut_after = cuts.pop(0) if cuts else None
            held = self._holds.pop(key[2], None)
            delays = self._delays.get(key[2])
            late = delays.pop(0) if delays else 0.0
            if self._corrupt[key[2]] > 0 and body:
                self._corrupt[key[2]] -= 1
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
        if late:
            time.sleep(late)
        if held is not None:
            return ("hold", Reply(status, reply_headers, body), held, key)
        if cut_after is not None and cut_after < len(body):
            return ("cut", Reply(status, reply_headers, body), cut_after, key)
        with self._lock:
            self._bytes[key] += len(body)
        return Reply(status, reply_headers, body)

    def _record(self, method: str, path: str, status: int, rng: str | None, key=None, sent: int | None = None) -> None:
        with self._lock:
            self.requests.append((method, path, status, rng))
            if key is not None and sent is not None:
                self._bytes[key] += sent


class _WithoutSleep:
    """The time module, but sleep() returns at once (and counts)."""

    def __init__(self):
        import time

        self._time = time
        self.sleeps = 0

    def sleep(self, _seconds: float) -> None:
        self.sleeps += 1

    def __getattr__(self, name: str):
        return getattr(self._time, name)


def _bearer(headers) -> str | None:
    value = headers.get("Authorization") or ""
    return value[7:].strip() or None if value.lower().startswith("bearer ") else None


def _folders(files: dict[str, HubFile]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


def _folder_entry(path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def _entry(files: dict[str, HubFile], path: str) -> list[dict]:
    if path in files:
        return [files[path].tree_entry()]
    if path in _folders(files):
        return [_folder_entry(path)]
    return []


def _error(status: int, code: str, message: str) -> Reply:
    body = json.dumps({"error": message}).encode()
    return Reply(status, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, body)


def _json(value, headers: dict[str, str] | None = None) -> Reply:
    return Reply(200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode())


def _handler(hub: HubDouble, *, cdn: bool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: httpx reuses connections

        def log_message(self, *_args) -> None:
            pass

        def _serve(self, method: str) -> None:
            if hub.closed:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            outcome = hub.answer(method, self.path, self.headers, body, cdn=cdn)
            # Each request is recorded before its answer is sent: a client that has its answer finds it recorded.
            if isinstance(outcome, tuple) and outcome[0] == "hold":
                _, reply, held, key = outcome
                hub._record(method, self.path, reply.status, self.headers.get("Range"), key, held.after_bytes)
                self._head(reply)
                self.wfile.write(reply.body[: held.after_bytes])
                self.wfile.flush()
                held.reached.set()
                held.released.wait()
                self.close_connection = True
                return
            if isinstance(outcome, tuple):  # a download to cut short
                _, reply, after, key = outcome
                hub._record(method, self.path, reply.status, self.headers.get("Range"), key, after)
                self._head(reply)
                self.wfile.write(reply.body[:after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the peer sees the connection end before Content-Length bytes
                return
            reply = outcome
            hub._record(method, self.path, reply.status, self.headers.get("Range"))
            self._head(reply)
            if method != "HEAD" and reply.body:
                self.wfile.write(reply.body)

        def _head(self, reply: Reply) -> None:
            self.send_response(reply.status)
            headers = dict(reply.headers)
            headers.setdefault("Content-Length", str(len(reply.body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


class CountingProxy:
    """A reverse proxy in front of an HTTP store (moto's S3 here) that counts the objects it serves: `gets(key)` and
    `bytes_served(key)` by path, for checks such as "the cache served each file once". `hold(fragment)` pauses the
    next request whose path contains `fragment` (an upload, say) until released, so a writer can be killed
    mid-way."""

    def __init__(self, target: str):
        self.target = urlsplit(target)
        self._lock = threading.Lock()
        self._gets: Counter = Counter()
        self._bytes: Counter = Counter()
        self.requests: list[tuple[str, str, int]] = []
        self._holds: dict[str, Hold] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def hold(self, fragment: str) -> Hold:
        with self._lock:
            self._holds[fragment] = Hold(0)
            return self._holds[fragment]

    def gets(self, key_suffix: str) -> int:
        """GETs of objects whose path ends with `key_suffix`."""
        with self._lock:
            return sum(n for path, n in self._gets.items() if path.endswith(key_suffix))

    def downloads(self, prefix: str = "") -> dict[str, int]:
        """{object path: GETs} of the objects under `prefix` (a path: /bucket/key...)."""
        with self._lock:
            return {path: n for path, n in self._gets.items() if path.startswith(prefix)}

    def bytes_served(self, prefix: str = "") -> int:
        with self._lock:
            return sum(n for path, n in self._bytes.items() if path.startswith(prefix))

    def close(self) -> None:
        for held in list(self._holds.values()):
            held.release()
        self._server.shutdown()
        self._server.server_close()


def _proxy_handler(proxy: CountingProxy):
    import http.client

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, method: str) -> None:
            body = self._read_body()
            path = urlsplit(self.path).path
            with proxy._lock:
                held = next((h for fragment, h in proxy._holds.items() if fragment in path), None)
                if held is not None:
                    proxy._holds = {f: h for f, h in proxy._holds.items() if h is not held}
            if held is not None:
                held.reached.set()
                held.released.wait()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            if body or method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=120)
            try:
                conn.request(method, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            with proxy._lock:  # recorded before the answer goes out, as the Hub double does
                proxy.requests.append((method, self.path, response.status))
                if method == "GET" and response.status in (200, 206):
                    proxy._gets[path] += 1
                    proxy._bytes[path] += len(data)
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._forward("GET")

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def do_PUT(self) -> None:
            self._forward("PUT")

        def do_POST(self) -> None:
            self._forward("POST")

        def do_DELETE(self) -> None:
            self._forward("DELETE")

    return Handler


@contextmanager
def running(monkeypatch, hf_home: Path) -> Iterator[HubDouble]:
    """A HubDouble this process talks to (online, HF_HOME `hf_home`) for the block; closed after it."""
    double = HubDouble()
    try:
        double.online(monkeypatch, hf_home)
        yield double
    finally:
        double.close()


# --------------------------------------------------------------------------- sample repositories

# The tiny Llama's files (tests/conftest.py tiny_llama_dir): what the trainer fetches of its repository by default.
SAFE_FILES = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


def model_repo_files(tiny_llama_dir: Path) -> dict[str, bytes]:
    """The tiny Llama as a Hub repository holds it, with what real repositories add beside the model: pickled weights
    and code (fetched only when allowed) and a card."""
    files = {p.name: p.read_bytes() for p in tiny_llama_dir.iterdir() if p.is_file()}
    assert sorted(files) == SAFE_FILES, "the tiny Llama's files changed: update SAFE_FILES"
    files["pytorch_model.bin"] = b"\x80\x04pickled weights"
    files["modeling_tiny.py"] = b"raise SystemExit('remote code ran')\n"
    files["README.md"] = b"# tiny llama\n"
    return files


DATASET_CARD = b"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.jsonl
  - split: test
    path: data/test.jsonl
- config_name: short
  data_files:
  - split: train
    path: short/train.jsonl
---
# a tiny dataset
"""


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def dataset_repo_files(version: int = 1) -> dict[str, bytes]:
    """A dataset repository: two configs (default: train and test; short: train, its text in `body`) declared in the
    card, rows that name `version`, and a loading script nothing may run."""
    return {
        "README.md": DATASET_CARD,
        "data/train.jsonl": _jsonl([{"text": f"v{version} train row {i}", "id": i} for i in range(6)]),
        "data/test.jsonl": _jsonl([{"text": f"v{version} test row {i}", "id": i} for i in range(2)]),
        "short/train.jsonl": _jsonl([{"body": f"v{version} short {i}"} for i in range(3)]),
        "loader.py": b"raise SystemExit('dataset code ran')\n",
    }


def fetched_files(folder: Path, *skip: str) -> list[str]:
    """The files a fetch left in `folder` (relative paths), without huggingface_hub's bookkeeping or `skip` names."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.parts and p.name not in skip
    )
