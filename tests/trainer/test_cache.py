"""The shared model cache, trainer side (kubetune_trainer.cache): entries keyed by source and commit, populated from
the Hub double (kubetune.testing) into a file:// or an S3 (moto) cache root with every file checked and the marker
last, and read by training pods (KUBETUNE_<ROLE>_CACHE_URI) without the Hub. Faults: a population killed mid-way, a
transfer that arrives corrupted, the Hub down, an entry that is gone."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from kubetune.api.constants import ExitCode
from kubetune.testing import hubdouble
from kubetune.testing.hubdouble import SAFE_FILES, CountingProxy, dataset_repo_files, fetched_files, model_repo_files
from kubetune_trainer import cache
from kubetune_trainer.errors import InfraError
from kubetune_trainer.sources import fetch_config, fetch_model

MODEL = "org/tiny-llama"
SHA = "0123456789abcdef0123456789abcdef01234567"
ENTRY_FILES = sorted([*SAFE_FILES, "modeling_tiny.py"])  # no pickles by default, no card; code stays (never run)


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    """The Hub double, online for this test (kubetune.testing.hubdouble)."""
    with hubdouble.running(monkeypatch, tmp_path_factory.mktemp("hf-home")) as double:
        yield double


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _populate(*args: str, log: Path | None = None) -> int:
    argv = ["populate", *args] + (["--termination-log", str(log)] if log else [])
    return cache.main(argv)


def _result(log: Path) -> dict:
    return json.loads(log.read_text())


def _entry_dir(entry: str) -> Path:
    return Path(entry.removeprefix("file://"))


def load(uri: str, dest: Path, **entry):
    """spec.datasets[0] = {uri, format: text, **entry}, loaded as the trainer loads it."""
    from kubetune.api.v1alpha1 import Spec
    from kubetune_trainer.data import load_source

    spec = Spec.model_validate(
        {"technique": "full", "model": {"uri": "file:///m"}, "datasets": [{"uri": uri, "format": "text", **entry}]}
    )
    return load_source(uri, spec.datasets[0], 0, role="dataset-0", spec=spec, dest=dest, what="spec.datasets[0].uri")


# --------------------------------------------------------------------------- the key


def test_entry_uri_layout():
    root = "s3://kubetune-cache/"
    assert cache.entry_uri(root, "hf://org/name", SHA) == f"s3://kubetune-cache/hf/models--org--name/{SHA}/"
    assert cache.entry_uri(root, "hf://gpt2@main", SHA) == f"s3://kubetune-cache/hf/models--gpt2/{SHA}/"
    assert (
        cache.entry_uri("file:///mnt/cache", "hf://datasets/org/d@v1", SHA)
        == f"file:///mnt/cache/hf/datasets--org--d/{SHA}/"
    )
    assert cache.entry_uri(root, "hf://org/name", SHA, allow_pickle=True).endswith(f"/{SHA}.with-pickles/")
    private = cache.entry_uri(root, "hf://org/gated", SHA, "team-a", private=True)
    assert private == f"s3://kubetune-cache/namespaces/team-a/hf/models--org--gated/{SHA}/"
    s3_model = cache.entry_uri(root, "s3://models/llama/", "ab" * 16, "team-b", private=True)
    assert s3_model.startswith("s3://kubetune-cache/namespaces/team-b/s3/models/") and s3_model.endswith(
        "ab" * 16 + "/"
    )
    # One-part and two-part repositories never share a folder, nor are prefixes of each other.
    one, two = cache.entry_uri(root, "hf://x", SHA), cache.entry_uri(root, f"hf://x/{SHA}", SHA)
    assert not two.startswith(one) and not one.startswith(two)
    for bad in [
        lambda: cache.entry_uri(root, "hf://org/name", "main"),  # a branch is not a key: it moves
        lambda: cache.entry_uri(root, "hf://org/a--b", SHA),
        lambda: cache.entry_uri(root, "hf://org/gated", SHA, None, private=True),  # private needs its namespace
        lambda: cache.entry_uri(root, "hf://org/gated", SHA, "Team_A", private=True),
        lambda: cache.entry_uri(root, "s3://models/llama/", "ab" * 16),  # s3:// is a tenant's: never shared
        lambda: cache.entry_uri(root, "file:///models/x", SHA, "team-a", private=True),
        lambda: cache.entry_uri("hf://org/cache", "hf://org/name", SHA),
    ]:
        with pytest.raises(ValueError):
            bad()
    assert cache.env_for("model") == "KUBETUNE_MODEL_CACHE_URI"
    assert cache.env_for("dataset-0-eval") == "KUBETUNE_DATASET_0_EVAL_CACHE_URI"


# --------------------------------------------------------------------------- population


def test_population_checks_every_file_writes_the_marker_last_and_runs_once(hub, tiny_llama_dir, tmp_path):
    commit = hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    root, log = f"file://{tmp_path}/cache/", tmp_path / "termination-log"
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root, log=log) == ExitCode.OK
    result = _result(log)
    assert result["entry"] == cache.entry_uri(root, f"hf://{MODEL}", commit) and result["commit"] == commit
    assert result["hit"] is False and result["files"] == len(ENTRY_FILES)
    entry = _entry_dir(result["entry"])
    assert sorted(p.name for p in entry.iterdir()) == sorted([*ENTRY_FILES, cache.MARKER])
    marker = json.loads((entry / cache.MARKER).read_text())
    assert marker["source"] == f"hf://{MODEL}" and marker["commit"] == commit and marker["kind"] == "model"
    for name in SAFE_FILES:
        assert marker["files"][name] == {
            "size": (tiny_llama_dir / name).stat().st_size,
            "sha256": _sha(tiny_llama_dir / name),
        }
        assert _sha(entry / name) == _sha(tiny_llama_dir / name)
    assert marker["bytes"] == sum(f["size"] for f in marker["files"].values()) == result["bytes"]
    # The marker is the newest file: written after every other.
    assert max((entry / n).stat().st_mtime_ns for n in ENTRY_FILES) <= (entry / cache.MARKER).stat().st_mtime_ns
    assert hub.downloads() == {name: 1 for name in ENTRY_FILES}

    # Complete: the next population (another job, another namespace) resolves the revision and stops there.
    requests = len(hub.requests)
    assert _populate("--model", f"hf://{MODEL}@main", "--cache-root", root, log=log) == ExitCode.OK
    assert _result(log)["hit"] is True and _result(log)["entry"] == result["entry"]
    assert [r[1] for r in hub.requests[requests:]] == [f"/api/models/{MODEL}/revision/main"]


def test_a_moving_main_gives_a_new_entry_and_pickles_their_own(hub, tiny_llama_dir, tmp_path):
    files = model_repo_files(tiny_llama_dir)
    first = hub.add_repo(MODEL, files)
    root = f"file://{tmp_path}/cache/"
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root) == ExitCode.OK
    second = hub.add_repo(MODEL, {**files, "generation_config.json": b'{"do_sample": true}'})
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root) == ExitCode.OK
    for commit in (first, second):
        assert (_entry_dir(cache.entry_uri(root, f"hf://{MODEL}", commit)) / cache.MARKER).is_file()
    newer = _entry_dir(cache.entry_uri(root, f"hf://{MODEL}", second))
    assert (newer / "generation_config.json").read_bytes() == b'{"do_sample": true}'
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root, "--allow-pickle") == ExitCode.OK
    pickled = _entry_dir(cache.entry_uri(root, f"hf://{MODEL}", second, allow_pickle=True))
    assert (pickled / "pytorch_model.bin").is_file() and not (newer / "pytorch_model.bin").exists()


def test_gated_population_by_role_in_its_namespace(hub, tiny_llama_dir, tmp_path, monkeypatch):
    commit = hub.add_repo("org/gated", model_repo_files(tiny_llama_dir), gated=True, tokens=("hf_granted",))
    root, log = f"file://{tmp_path}/cache/", tmp_path / "log"
    args = ["--model", "hf://org/gated", "--cache-root", root]
    assert _populate(*args, "--private", "--namespace", "team-a", log=log) == ExitCode.USER_ERROR
    assert log.read_text().startswith("UserError: hf://org/gated: ") and "gated" in log.read_text()
    assert not list((tmp_path / "cache").rglob(cache.MARKER))
    monkeypatch.setenv("KUBETUNE_AMBIENT_CREDENTIALS", "")  # in a pod: the role's own token only
    monkeypatch.setenv("KUBETUNE_MODEL_HF_TOKEN", "hf_granted")
    assert _populate(*args, "--private", log=log) == ExitCode.USER_ERROR  # no namespace to keep it in
    assert "namespace" in log.read_text()
    assert _populate(*args, "--private", "--namespace", "team-a", log=log) == ExitCode.OK
    assert _result(log)["entry"] == f"{root}namespaces/team-a/hf/models--org--gated/{commit}/"
    assert "hf_granted" not in log.read_text()
    assert (
        tmp_path / "cache" / "namespaces" / "team-a" / "hf" / "models--org--gated" / commit / cache.MARKER
    ).is_file()


def test_population_failures_and_their_exit_codes(hub, tiny_llama_dir, tmp_path):
    hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    root, log = f"file://{tmp_path}/cache/", tmp_path / "log"
    assert _populate("--model", "hf://org/absent", "--cache-root", root, log=log) == ExitCode.USER_ERROR
    assert "no such repository" in log.read_text()
    assert _populate("--model", f"hf://{MODEL}@nope", "--cache-root", root, log=log) == ExitCode.USER_ERROR
    assert _populate("--dataset", f"hf://{MODEL}", "--cache-root", root, log=log) == ExitCode.USER_ERROR

    # A transfer that arrives with the right size but other bytes: only the hash can tell, and it does.
    hub.corrupt("model.safetensors")
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root, log=log) == ExitCode.INFRA_ERROR
    assert log.read_text().startswith("InfraError: ") and "model.safetensors" in log.read_text()
    assert not list((tmp_path / "cache").rglob(cache.MARKER))
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root, log=log) == ExitCode.OK  # the retry

    hub.down = True
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root, log=log) == ExitCode.INFRA_ERROR
    hub.close()
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root, log=log) == ExitCode.INFRA_ERROR
    assert "cannot be reached" in log.read_text()


def test_a_killed_population_is_never_read_and_the_next_one_redoes_it(hub, tiny_llama_dir, tmp_path, monkeypatch):
    commit = hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    root = f"file://{tmp_path}/cache/"
    entry = cache.entry_uri(root, f"hf://{MODEL}", commit)
    held = hub.hold("model.safetensors", after_bytes=1000)
    env = dict(os.environ, **hub.env(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.cache", "populate", "--model", f"hf://{MODEL}", "--cache-root", root],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert held.reached.wait(60), "the population never asked for the weights"
        # The small files finish and are uploaded while the weights hang (several at once, in any order: config.json is
        # waited for by name).
        deadline = time.monotonic() + 60
        while not (_entry_dir(entry) / "config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # the pod is killed: no handler, no clean-up
        proc.wait(30)
    finally:
        held.release()
        proc.kill()
    partial = sorted(p.name for p in _entry_dir(entry).iterdir())
    assert "config.json" in partial and "model.safetensors" not in partial and cache.MARKER not in partial

    # A training pod given that entry refuses it: an infrastructure error, so its Job is retried.
    with monkeypatch.context() as reader_pod:
        reader_pod.setenv(cache.env_for("model"), entry)
        with pytest.raises(InfraError, match="is not complete"):
            fetch_model(f"hf://{MODEL}", tmp_path / "reader", role="model", spec=None)
    assert not (tmp_path / "reader" / "model.safetensors").exists()

    (_entry_dir(entry) / "left-over.safetensors").write_bytes(b"from nowhere")
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root) == ExitCode.OK
    assert sorted(p.name for p in _entry_dir(entry).iterdir()) == sorted([*ENTRY_FILES, cache.MARKER])
    assert _sha(_entry_dir(entry) / "model.safetensors") == _sha(tiny_llama_dir / "model.safetensors")


# --------------------------------------------------------------------------- reading


def test_a_pod_reads_its_model_from_an_s3_entry_with_the_hub_down(
    hub, tiny_llama_dir, s3_bucket, tmp_path, monkeypatch
):
    hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    log = tmp_path / "log"
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", f"s3://{s3_bucket}/cache/", log=log) == ExitCode.OK
    entry = _result(log)["entry"]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted([*ENTRY_FILES, cache.MARKER])

    hub.down = True
    hub.reset_counts()
    monkeypatch.setenv(cache.env_for("model"), entry)
    dest = tmp_path / "work" / "model"
    assert fetch_config(f"hf://{MODEL}", dest, role="model", spec=None)["model_type"] == "llama"
    got = fetch_model(f"hf://{MODEL}", dest, role="model", spec=None)
    assert hub.requests == []  # the Hub was never asked
    assert (
        fetched_files(got, "_COMPLETE", cache.LOCAL_RECORD) == SAFE_FILES
    )  # the code stays in the entry: this job does not trust it
    for name in SAFE_FILES:
        assert _sha(got / name) == _sha(tiny_llama_dir / name)
    got = fetch_model(f"hf://{MODEL}", dest, role="model", spec=None, trust_remote_code=True)
    assert (got / "modeling_tiny.py").is_file()

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(got).config.model_type == "llama"


def test_reader_refuses_what_its_marker_does_not_vouch_for(hub, tiny_llama_dir, s3_bucket, tmp_path, monkeypatch):
    commit = hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    hub.add_repo("org/other", model_repo_files(tiny_llama_dir))
    root = f"s3://{s3_bucket}/cache/"
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", root) == ExitCode.OK
    assert _populate("--model", "hf://org/other", "--cache-root", root) == ExitCode.OK
    entry = cache.entry_uri(root, f"hf://{MODEL}", commit)
    s3 = boto3.client("s3")
    key = f"cache/hf/models--org--tiny-llama/{commit}/model.safetensors"
    weights = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()

    def read(folder, uri=f"hf://{MODEL}"):
        return fetch_model(uri, tmp_path / folder, role="model", spec=None)

    monkeypatch.setenv(cache.env_for("model"), entry)
    with pytest.raises(InfraError, match="holds hf://org/tiny-llama, not hf://org/other"):
        read("wrong", "hf://org/other")
    with pytest.raises(InfraError, match="holds hf://org/tiny-llama, not"):
        read("pinned", f"hf://{MODEL}@{'f' * 40}")  # the spec pins another commit

    s3.put_object(Bucket=s3_bucket, Key=key, Body=weights[:-10])  # cut short (evicted mid-way, a bad copy)
    with pytest.raises(InfraError, match="model.safetensors has .* bytes, its marker says"):
        read("short")
    assert not (tmp_path / "short" / "model.safetensors").exists()  # nothing partial where the loader looks

    s3.put_object(Bucket=s3_bucket, Key=key, Body=weights[:-1] + bytes([weights[-1] ^ 1]))  # same size, other bytes
    monkeypatch.setenv(cache.VERIFY_ENV, "sha256")
    with pytest.raises(InfraError, match="does not match its sha256"):
        read("flipped")

    monkeypatch.setenv(cache.env_for("model"), cache.entry_uri(root, f"hf://{MODEL}", "e" * 40))  # evicted / never
    with pytest.raises(InfraError, match="is not complete"):
        read("gone")


def test_a_file_entry_is_linked_in_place(hub, tiny_llama_dir, tmp_path, monkeypatch):
    hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    log = tmp_path / "log"
    assert _populate("--model", f"hf://{MODEL}", "--cache-root", f"file://{tmp_path}/cache/", log=log) == ExitCode.OK
    entry = _result(log)["entry"]
    monkeypatch.setenv(cache.env_for("model"), entry)
    got = fetch_model(f"hf://{MODEL}", tmp_path / "model", role="model", spec=None)
    weights = got / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (_entry_dir(entry) / "model.safetensors").resolve()


def test_missing_entry_fails_the_attempt_with_exit_20(hub, tiny_llama_dir, tmp_path, write_job, monkeypatch):
    from kubetune_trainer.entrypoint import build_parser, run_cli

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(8)))
    job = write_job(tiny_llama_dir, [{"uri": f"file://{data}", "format": "text"}], model={"uri": f"hf://{MODEL}"})
    monkeypatch.setenv(cache.env_for("model"), f"file://{tmp_path}/cache/hf/models--org--tiny-llama/{SHA}/")
    monkeypatch.setenv("KUBETUNE_WORK_DIR", str(tmp_path / "work"))
    hub.down = True  # and the Hub is no way round it
    log = tmp_path / "termination-log"
    args = build_parser().parse_args([str(job), "--output", f"file://{tmp_path}/out/", "--termination-log", str(log)])
    assert run_cli(args) == ExitCode.INFRA_ERROR
    assert (
        log.read_text().startswith("InfraError: spec.model.uri: the model cache entry") and "retried" in log.read_text()
    )
    assert hub.requests == []
    # Without the cache, a Hub that is down is an infrastructure error too: the attempt is retried, not failed.
    monkeypatch.delenv(cache.env_for("model"))
    assert run_cli(args) == ExitCode.INFRA_ERROR
    assert log.read_text().startswith("InfraError: ") and "Hugging Face Hub" in log.read_text()


def test_an_hf_dataset_is_read_from_its_entry(hub, tmp_path, monkeypatch):
    hub.add_repo("org/data", dataset_repo_files(1), repo_type="dataset")
    from_hub = load("hf://datasets/org/data", tmp_path / "hub", subset="short", columns={"text": "body"})
    log = tmp_path / "log"
    assert (
        _populate(
            "--dataset",
            "hf://datasets/org/data",
            "--cache-root",
            f"file://{tmp_path}/cache/",
            "--role",
            "dataset-0",
            log=log,
        )
        == ExitCode.OK
    )
    entry = _result(log)["entry"]
    assert "/hf/datasets--org--data/" in entry
    assert not (_entry_dir(entry) / "loader.py").exists()  # a dataset's code is never cached
    hub.down = True
    hub.reset_counts()
    monkeypatch.setenv(cache.env_for("dataset-0"), entry)
    from_cache = load("hf://datasets/org/data", tmp_path / "cached", subset="short", columns={"text": "body"})
    assert hub.requests == []
    assert from_cache["text"] == from_hub["text"] == ["v1 short 0", "v1 short 1", "v1 short 2"]
    assert len(load("hf://datasets/org/data", tmp_path / "cached-test", split="test")) == 2


def test_an_s3_model_is_cached_per_namespace_keyed_by_its_listing(tiny_llama_dir, s3_bucket, tmp_path, monkeypatch):
    """An s3:// model: populated with the role's own credentials under namespaces/<ns>/ only, a hit when its objects
    are unchanged, a new entry when one is rewritten (its ETag changes), and read by a pod without the source."""
    s3 = boto3.client("s3")
    for path in sorted(p for p in tiny_llama_dir.rglob("*") if p.is_file()):
        s3.put_object(Bucket=s3_bucket, Key=f"models/tiny/{path.relative_to(tiny_llama_dir)}", Body=path.read_bytes())
    s3.put_object(Bucket=s3_bucket, Key="models/tiny/pytorch_model.bin", Body=b"\x80\x04pickled")
    uri, root = f"s3://{s3_bucket}/models/tiny/", f"s3://{s3_bucket}/cache/"
    monkeypatch.setenv("KUBETUNE_AMBIENT_CREDENTIALS", "")  # as in a pod: each role reads with its own keys only
    monkeypatch.setenv("KUBETUNE_MODEL_AWS_ACCESS_KEY_ID", "tenant-key")
    monkeypatch.setenv("KUBETUNE_MODEL_AWS_SECRET_ACCESS_KEY", "tenant-secret")
    monkeypatch.setenv("KUBETUNE_CACHE_AWS_ACCESS_KEY_ID", "cache-key")
    monkeypatch.setenv("KUBETUNE_CACHE_AWS_SECRET_ACCESS_KEY", "cache-secret")
    args = ["--model", uri, "--cache-root", root]
    # Never a shared entry: what a tenant's keys fetched is the tenant's.
    assert _populate(*args, log=tmp_path / "public") == ExitCode.USER_ERROR
    assert "--private" in (tmp_path / "public").read_text()

    log = tmp_path / "log"
    assert _populate(*args, "--private", "--namespace", "team-a", log=log) == ExitCode.OK
    first = _result(log)
    assert first["hit"] is False and first["entry"].startswith(f"{root}namespaces/team-a/s3/{s3_bucket}/")
    assert first["entry"] == cache.entry_uri(root, uri, first["commit"], "team-a", private=True)
    stored = sorted(
        o["Key"].removeprefix(first["entry"].removeprefix(f"s3://{s3_bucket}/"))
        for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="cache/")["Contents"]
    )
    model_files = [p.relative_to(tiny_llama_dir).as_posix() for p in tiny_llama_dir.rglob("*") if p.is_file()]
    assert stored == sorted([*model_files, cache.MARKER])  # no pickles without allowPickle
    assert _populate(*args, "--private", "--namespace", "team-a", log=log) == ExitCode.OK
    assert _result(log) == {**first, "hit": True}
    # Another namespace gets an entry of its own, never team-a's.
    assert _populate(*args, "--private", "--namespace", "team-b", log=log) == ExitCode.OK
    assert _result(log)["hit"] is False and "/namespaces/team-b/" in _result(log)["entry"]

    # One object rewritten with other bytes of the same size: its ETag changes, and so does the key.
    weights = s3.get_object(Bucket=s3_bucket, Key="models/tiny/model.safetensors")["Body"].read()
    s3.put_object(Bucket=s3_bucket, Key="models/tiny/model.safetensors", Body=weights[:-1] + bytes([weights[-1] ^ 1]))
    assert _populate(*args, "--private", "--namespace", "team-a", log=log) == ExitCode.OK
    second = _result(log)
    assert second["hit"] is False and second["commit"] != first["commit"] and second["entry"] != first["entry"]

    # The pod reads the entry, not the bucket (its source keys are gone: the source is never contacted).
    monkeypatch.delenv("KUBETUNE_MODEL_AWS_ACCESS_KEY_ID")
    monkeypatch.setenv(cache.env_for("model"), second["entry"])
    got = fetch_model(uri, tmp_path / "model", role="model", spec=None)
    assert (got / "model.safetensors").read_bytes() == weights[:-1] + bytes([weights[-1] ^ 1])
    assert not (got / "pytorch_model.bin").exists()
    with pytest.raises(InfraError, match="not s3://other/"):
        fetch_model("s3://other/", tmp_path / "other", role="model", spec=None)


def test_a_cut_s3_population_is_never_read_and_a_changed_source_is_not_cached(
    tiny_llama_dir, s3_bucket, tmp_path, monkeypatch
):
    s3 = boto3.client("s3")
    for path in sorted(p for p in tiny_llama_dir.rglob("*") if p.is_file()):
        s3.put_object(Bucket=s3_bucket, Key=f"m/{path.relative_to(tiny_llama_dir)}", Body=path.read_bytes())
    uri, root = f"s3://{s3_bucket}/m/", f"file://{tmp_path}/cache/"
    from kubetune_trainer.storage.s3 import S3Storage

    # The model is rewritten while it is copied: the population fails (20, retried), and writes no marker.
    rewritten = (tiny_llama_dir / "config.json").read_bytes().replace(b"llama", b"LLAMA", 1)
    real = S3Storage.download_file
    calls = []

    def rewriting(self, source, local):
        calls.append(source)
        if len(calls) == 1:  # the same size: only its ETag tells
            s3.put_object(Bucket=s3_bucket, Key="m/config.json", Body=rewritten)
        return real(self, source, local)

    monkeypatch.setattr(S3Storage, "download_file", rewriting)
    args = ["--model", uri, "--cache-root", root, "--private", "--namespace", "team-a"]
    log = tmp_path / "log"
    assert _populate(*args, log=log) == ExitCode.INFRA_ERROR
    assert "changed while it was copied" in log.read_text()
    assert not list((tmp_path / "cache").rglob(cache.MARKER))
    monkeypatch.setattr(S3Storage, "download_file", real)
    assert _populate(*args, log=log) == ExitCode.OK
    assert (_entry_dir(_result(log)["entry"]) / "config.json").read_bytes() == rewritten


def test_the_cache_module_imports_no_torch():
    code = "import sys, kubetune_trainer.cache as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- several processes on a node


def _reasons(proc: subprocess.CompletedProcess) -> str:
    """The trainer's own lines (its one-line reasons), and the end of the output."""
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("[kubetune]")]
    return "\n".join(lines[-20:]) + "\n" + proc.stderr[-2000:]


def _torchrun(job: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune_trainer.launch",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "kubetune_trainer",
            str(job),
            "--output",
            f"file://{out}/",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def tiny_job(tiny_llama_dir, write_job, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"the cat sat on mat number {i}"}) + "\n" for i in range(16)))

    def make():
        return write_job(
            tiny_llama_dir,
            [{"uri": f"file://{data}", "format": "text"}],
            model={"uri": f"hf://{MODEL}"},
            hyperparameters={"maxSteps": 2, "batchSize": 2},
            output={"checkpointEverySteps": 100},
        )

    return make


def test_two_processes_on_a_node_fetch_each_hub_file_once(hub, tiny_llama_dir, tiny_job, tmp_path):
    hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    # The first download of the weights is slow: a second process that did not wait for the first would fetch its own.
    hub.delay("model.safetensors", seconds=5)
    env = dict(os.environ, **hub.env(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    proc = _torchrun(tiny_job(), tmp_path / "out", env)
    assert proc.returncode == 0, _reasons(proc)
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()
    assert hub.downloads() == {name: 1 for name in SAFE_FILES}


def test_two_processes_on_a_node_read_each_cached_file_once_without_the_hub(
    hub, tiny_llama_dir, tiny_job, s3_endpoint, s3_bucket, tmp_path
):
    hub.add_repo(MODEL, model_repo_files(tiny_llama_dir))
    store = CountingProxy(s3_endpoint)
    try:
        env = dict(
            os.environ, **hub.env(tmp_path / "hf-home"), OMP_NUM_THREADS="1", KUBETUNE_CACHE_AWS_ENDPOINT_URL=store.url
        )
        populated = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubetune_trainer.cache",
                "populate",
                "--model",
                f"hf://{MODEL}",
                "--cache-root",
                f"s3://{s3_bucket}/cache/",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert populated.returncode == 0, populated.stderr[-3000:]
        entry = json.loads(populated.stdout.strip().splitlines()[-1])["entry"]
        before = store.downloads()
        hub.close()  # the Hub is unreachable from now on
        proc = _torchrun(tiny_job(), tmp_path / "out", {**env, cache.env_for("model"): entry})
        assert proc.returncode == 0, _reasons(proc)
        prefix = f"/{s3_bucket}/cache/hf/models--org--tiny-llama/"
        read = {
            path.rsplit("/", 1)[1]: n - before.get(path, 0)
            for path, n in store.downloads(prefix).items()
            if n - before.get(path, 0)
        }
        assert read == {**{name: 1 for name in SAFE_FILES}, cache.MARKER: 1}  # one node, one read of each
        assert (tmp_path / "out" / "final" / "model.safetensors").is_file()
    finally:
        store.close()
