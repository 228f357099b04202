"""The URI-scheme registry: every scheme the API parses has an entry, and storage and sources ask it."""

from __future__ import annotations

import pytest

from kubetune.api.uris import parse_uri
from kubetune_trainer.errors import UserError
from kubetune_trainer.schemes import SCHEMES, resolve, scheme_of, source_module
from kubetune_trainer.storage import Storage, get_storage

EXAMPLES = {"file": "file:///tmp/x/", "s3": "s3://bucket/x/", "hf": "hf://org/model"}


def test_every_parsed_scheme_is_registered():
    assert set(EXAMPLES) == set(SCHEMES)
    for name, uri in EXAMPLES.items():
        parsed, scheme = scheme_of(uri, "model.uri")
        assert parsed.scheme == name and scheme is SCHEMES[name]
        source = source_module(scheme)
        assert callable(source.fetch_model)
        assert scheme.data_by_library or callable(source.fetch_data)
        if scheme.storage is not None:
            assert issubclass(resolve(scheme.storage).__self__, Storage)


def test_storage_only_where_outputs_can_live(tmp_path):
    assert type(get_storage(tmp_path.as_uri() + "/")).__name__ == "FileStorage"
    with pytest.raises(UserError, match="hf:// cannot hold outputs"):
        get_storage("hf://org/model")
    with pytest.raises(UserError, match="unsupported URI scheme 'gs://'"):
        get_storage("gs://bucket/x/")


def test_hf_datasets_are_left_to_the_datasets_library(tmp_path):
    from kubetune_trainer.sources import fetch_data_files

    assert parse_uri("hf://datasets/org/data").is_dataset_repo
    with pytest.raises(UserError, match="read with datasets.load_dataset"):
        fetch_data_files("hf://datasets/org/data", tmp_path, role="dataset-0", spec=None, what="spec.datasets[0].uri")


def test_folder_operations_are_shared_by_every_storage(tmp_path):
    """download_prefix and upload_dir come from the base class, built on each scheme's single-object calls."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "sub" / "b.txt").write_text("b")
    storage = get_storage(tmp_path.as_uri() + "/")
    uris = storage.upload_dir(source, (tmp_path / "store").as_uri() + "/")
    assert [u.rsplit("/store/", 1)[1] for u in uris] == ["a.txt", "sub/b.txt"]
    copied = storage.download_prefix((tmp_path / "store").as_uri(), tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in copied) == ["a.txt", "sub/b.txt"]
    assert (tmp_path / "back" / "sub" / "b.txt").read_text() == "b"
