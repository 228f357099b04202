"""sources/ on their own: a model folder and data files fetched from an object store (moto's S3 over HTTP),
pickled weights left behind unless allowed, the completion marker that lets a second fetch reuse the copy."""

from __future__ import annotations

import os

import boto3
import pytest

from kubetune_trainer.errors import UserError
from kubetune_trainer.layout import COMPLETE_MARKER
from kubetune_trainer.sources import fetch_data_files, fetch_model, is_pickled


def _put(bucket: str, key: str, body: bytes = b"x") -> None:
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).put_object(Bucket=bucket, Key=key, Body=body)


def test_pickle_suffixes():
    assert is_pickled("pytorch_model.BIN") and is_pickled("x/optimizer.pt") and not is_pickled("model.safetensors")


def test_model_prefix_without_pickles_and_reused_once_complete(s3_bucket, tmp_path):
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "sub/tokenizer.json"):
        _put(s3_bucket, f"models/m/{name}", b"{}")
    dest = tmp_path / "model"
    got = fetch_model(f"s3://{s3_bucket}/models/m", dest, role="model", spec=None)
    assert got == dest
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        COMPLETE_MARKER,
        "config.json",
        "model.safetensors",
        "sub/tokenizer.json",
    ]
    # Complete: a second fetch (another local rank) uses the copy, even once the store changed.
    _put(s3_bucket, "models/m/config.json", b'{"changed": true}')
    fetch_model(f"s3://{s3_bucket}/models/m/", dest, role="model", spec=None)
    assert (dest / "config.json").read_text() == "{}"

    with_pickles = fetch_model(
        f"s3://{s3_bucket}/models/m/", tmp_path / "m2", role="model", spec=None, allow_pickle=True
    )
    assert (with_pickles / "pytorch_model.bin").is_file()


def test_model_prefix_without_config_is_a_user_error(s3_bucket, tmp_path):
    _put(s3_bucket, "models/empty/model.safetensors")
    with pytest.raises(UserError, match="holds no config.json"):
        fetch_model(f"s3://{s3_bucket}/models/empty/", tmp_path / "m", role="model", spec=None)
    assert not (tmp_path / "m" / COMPLETE_MARKER).exists()


def test_data_file_and_prefix(s3_bucket, tmp_path):
    _put(s3_bucket, "data/a.jsonl")
    _put(s3_bucket, "data/part/b.csv")
    _put(s3_bucket, "data/readme.md")
    one = fetch_data_files(f"s3://{s3_bucket}/data/a.jsonl", tmp_path / "one", role="dataset-0", spec=None, what="d")
    assert [p.name for p in one] == ["a.jsonl"]
    every = fetch_data_files(f"s3://{s3_bucket}/data/", tmp_path / "all", role="dataset-0", spec=None, what="d")
    assert sorted(p.relative_to(tmp_path / "all").as_posix() for p in every) == ["a.jsonl", "part/b.csv"]
    with pytest.raises(UserError, match="spec.datasets\\[0\\].uri: .* does not exist"):
        fetch_data_files(
            f"s3://{s3_bucket}/data/missing.jsonl",
            tmp_path / "x",
            role="dataset-0",
            spec=None,
            what="spec.datasets[0].uri",
        )
    with pytest.raises(UserError, match="holds no .jsonl"):
        fetch_data_files(f"s3://{s3_bucket}/nothing/", tmp_path / "y", role="dataset-0", spec=None, what="d")


def test_file_sources_are_used_in_place(tiny_llama_dir, tmp_path):
    assert fetch_model(tiny_llama_dir.as_uri(), tmp_path / "unused", role="model", spec=None) == tiny_llama_dir
    assert not (tmp_path / "unused").exists()
