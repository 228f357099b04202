"""Storage by URI scheme against moto's S3 over HTTP and the local disk, error mapping, and the
Hugging Face source's error mapping (offline: the hub cannot be reached from tests)."""

from __future__ import annotations

import socket

import pytest

from kubetune.api.uris import parse_uri
from kubetune_trainer.errors import InfraError, UserError
from kubetune_trainer.storage import get_storage


@pytest.fixture(params=["file", "s3"])
def root(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/out/"
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/one/"


def test_round_trip(root, tmp_path):
    storage = get_storage(root)
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("A")
    (local / "sub" / "b.bin").write_bytes(b"\x00" * 10)
    uris = storage.upload_dir(local, root + "dir/")
    assert sorted(uris) == [root + "dir/a.txt", root + "dir/sub/b.bin"]
    storage.write_text(root + "note.txt", "hello")
    assert storage.read_text(root + "note.txt") == "hello"
    assert storage.exists(root + "note.txt") and not storage.exists(root + "missing.txt")
    with pytest.raises(FileNotFoundError):
        storage.read_text(root + "missing.txt")
    # "dir" must not match a sibling "dir2/"
    storage.write_text(root + "dir2/x.txt", "x")
    assert storage.list(root + "dir") == sorted(uris)
    copied = storage.download_prefix(root + "dir/", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in copied) == ["a.txt", "sub/b.bin"]
    assert (tmp_path / "copy" / "sub" / "b.bin").read_bytes() == b"\x00" * 10
    storage.delete_prefix(root + "dir/")
    assert storage.list(root + "dir/") == []
    assert storage.list(root + "dir2/") == [root + "dir2/x.txt"]


def test_s3_missing_bucket_is_a_user_error(s3_endpoint):
    storage = get_storage("s3://no-such-bucket-here/x/")
    with pytest.raises(UserError, match="s3://no-such-bucket-here/x/spec.yaml: the bucket does not exist"):
        storage.write_text("s3://no-such-bucket-here/x/spec.yaml", "x")
    with pytest.raises(UserError, match="bucket does not exist"):
        storage.list("s3://no-such-bucket-here/x/")


def test_s3_unreachable_is_an_infra_error(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("KUBETUNE_S3_MAX_ATTEMPTS", "2")
    storage = get_storage("s3://some-bucket/x/")
    with pytest.raises(InfraError, match="cannot reach S3"):
        storage.read_text("s3://some-bucket/x/spec.resolved.yaml")


def test_s3_uses_role_credentials_first(s3_endpoint, s3_bucket, monkeypatch):
    # A wrong plain key but a right role key: the role's wins (moto accepts any key, so check the client).
    monkeypatch.setenv("KUBETUNE_OUTPUT_AWS_ACCESS_KEY_ID", "role-key")
    storage = get_storage(f"s3://{s3_bucket}/", credentials_role="output")
    assert storage._client._request_signer._credentials.access_key == "role-key"


def test_hf_model_source_offline_is_an_infra_error(tmp_path, monkeypatch):
    from kubetune_trainer.sources.huggingface import fetch_model_snapshot

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InfraError, match="cannot be reached"):
        fetch_model_snapshot(
            parse_uri("hf://someorg/somemodel@main"),
            tmp_path / "m",
            role="model",
            allow_pickle=False,
            trust_remote_code=False,
        )


def test_hf_error_mapping():
    import httpx2 as httpx
    from huggingface_hub import errors

    from kubetune_trainer.sources.huggingface import translate_hub_error

    def http_error(cls, status):
        response = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
        return cls(f"HTTP {status}", response=response)

    assert isinstance(translate_hub_error(http_error(errors.RepositoryNotFoundError, 404), "m"), UserError)
    assert isinstance(translate_hub_error(http_error(errors.HfHubHTTPError, 401), "m"), UserError)
    assert isinstance(translate_hub_error(http_error(errors.HfHubHTTPError, 503), "m"), InfraError)
    assert isinstance(translate_hub_error(ConnectionError("down"), "m"), InfraError)
