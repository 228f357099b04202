"""hf:// sources against the Hub double (kubetune.testing): the trainer's real download code (huggingface_hub's
snapshot_download and hf_hub_download, datasets.load_dataset) fetching the tiny Llama and a small dataset over HTTP,
with revisions, gated and private repositories, a download cut in the middle and a Hub that is down."""

from __future__ import annotations

import hashlib
import json

import pytest

from kubetune.api.v1alpha1 import Spec
from kubetune.testing import hubdouble
from kubetune.testing.hubdouble import SAFE_FILES, dataset_repo_files, fetched_files, model_repo_files
from kubetune_trainer.errors import InfraError, UserError
from kubetune_trainer.layout import COMPLETE_MARKER
from kubetune_trainer.sources import fetch_config, fetch_model

MODEL = "org/tiny-llama"


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    """The Hub double, online for this test (kubetune.testing.hubdouble)."""
    with hubdouble.running(monkeypatch, tmp_path_factory.mktemp("hf-home")) as double:
        yield double


def _repo_files(tiny_llama_dir) -> dict[str, bytes]:
    return model_repo_files(tiny_llama_dir)


def _fetched(folder) -> list[str]:
    return fetched_files(folder, COMPLETE_MARKER)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_double_answers_as_the_hub_does_for_huggingface_hub(hub, tiny_llama_dir):
    """The double seen through huggingface_hub's own calls: revision resolution, file metadata (LFS files through a
    redirect to another origin, with X-Linked-Etag/X-Linked-Size), ranged reads, the Hub's error codes."""
    from huggingface_hub import HfApi, HfFileSystem, errors, get_hf_file_metadata, hf_hub_url

    from kubetune.testing.hubdouble import git_blob_sha1

    files = _repo_files(tiny_llama_dir)
    commit = hub.add_repo(MODEL, files)
    hub.add_repo("org/gated", files, gated=True, tokens=("hf_granted",))
    assert HfApi().repo_info(MODEL, revision="main").sha == commit
    weights = get_hf_file_metadata(hf_hub_url(MODEL, "model.safetensors", revision="main"))
    assert weights.commit_hash == commit and weights.size == len(files["model.safetensors"])
    assert weights.etag == hashlib.sha256(files["model.safetensors"]).hexdigest()  # LFS: the content's sha256
    assert weights.location.startswith(hub.cdn_url)  # downloaded from elsewhere, without the token
    config = get_hf_file_metadata(hf_hub_url(MODEL, "config.json"))
    assert config.etag == git_blob_sha1(files["config.json"]) and config.size == len(files["config.json"])
    with HfFileSystem().open(f"{MODEL}/model.safetensors", "rb", block_size=1024) as fh:  # ranged reads
        fh.seek(5000)
        assert fh.read(50) == files["model.safetensors"][5000:5050]
    # One ranged GET: redirected (LFS), then answered 206 where it was sent.
    assert [r[2] for r in hub.requests if r[3] and r[3].startswith("bytes=")] == [302, 206]
    with pytest.raises(errors.GatedRepoError):
        get_hf_file_metadata(hf_hub_url("org/gated", "config.json"))
    with pytest.raises(errors.RepositoryNotFoundError):
        HfApi().repo_info("org/absent")
    with pytest.raises(errors.RevisionNotFoundError):
        HfApi().repo_info(MODEL, revision="nope")
    with pytest.raises(errors.RemoteEntryNotFoundError):
        get_hf_file_metadata(hf_hub_url(MODEL, "absent.json"))


def test_model_snapshot_from_the_hub(hub, tiny_llama_dir, tmp_path):
    hub.add_repo(MODEL, _repo_files(tiny_llama_dir))
    dest = tmp_path / "model"
    config = fetch_config(f"hf://{MODEL}", dest, role="model", spec=None)
    assert config["model_type"] == "llama"
    got = fetch_model(f"hf://{MODEL}", dest, role="model", spec=None)
    assert _fetched(got) == SAFE_FILES  # no pickles, no code, no card
    for name in SAFE_FILES:
        assert _sha(got / name) == _sha(tiny_llama_dir / name)
    # Every file crossed the wire once, config.json too (the plan's copy is the snapshot's).
    assert hub.downloads() == {name: 1 for name in SAFE_FILES}
    # A second fetch into the same folder (another local rank) asks the Hub nothing.
    before = len(hub.requests)
    fetch_model(f"hf://{MODEL}", dest, role="model", spec=None)
    assert len(hub.requests) == before

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(got)
    assert model.config.model_type == "llama"


def test_pickles_and_code_only_when_allowed(hub, tiny_llama_dir, tmp_path):
    hub.add_repo(MODEL, _repo_files(tiny_llama_dir))
    got = fetch_model(
        f"hf://{MODEL}", tmp_path / "m", role="model", spec=None, allow_pickle=True, trust_remote_code=True
    )
    assert _fetched(got) == sorted([*SAFE_FILES, "modeling_tiny.py", "pytorch_model.bin"])


def test_revisions_branch_tag_and_commit(hub, tiny_llama_dir, tmp_path):
    files = _repo_files(tiny_llama_dir)
    first = hub.add_repo(MODEL, files)
    hub.tag(MODEL, "v1", first)
    changed = json.loads(files["config.json"])
    changed["rms_norm_eps"] = 1e-3
    hub.add_repo(MODEL, {**files, "config.json": json.dumps(changed).encode()})  # main moves on

    def eps(uri, folder):
        return fetch_config(uri, tmp_path / folder, role="model", spec=None)["rms_norm_eps"]

    assert eps(f"hf://{MODEL}", "main") == 1e-3
    assert eps(f"hf://{MODEL}@v1", "tag") == json.loads(files["config.json"])["rms_norm_eps"]
    assert eps(f"hf://{MODEL}@{first}", "sha") == json.loads(files["config.json"])["rms_norm_eps"]
    got = fetch_model(f"hf://{MODEL}@v1", tmp_path / "tagged", role="model", spec=None)
    assert (got / "config.json").read_bytes() == files["config.json"]
    with pytest.raises(UserError, match=r"hf://org/tiny-llama@nope: no such revision"):
        fetch_model(f"hf://{MODEL}@nope", tmp_path / "nope", role="model", spec=None)


def test_gated_repository_needs_the_roles_token(hub, tiny_llama_dir, tmp_path, monkeypatch):
    hub.add_repo("org/gated", _repo_files(tiny_llama_dir), gated=True, tokens=("hf_granted",))
    with pytest.raises(UserError, match="the repository is gated"):
        fetch_model("hf://org/gated", tmp_path / "anonymous", role="model", spec=None)
    assert not (tmp_path / "anonymous" / COMPLETE_MARKER).exists()

    # In a pod (the operator sets KUBETUNE_AMBIENT_CREDENTIALS), only the role's own token counts: a stray HF_TOKEN
    # in the environment is not used for the model.
    monkeypatch.setenv("KUBETUNE_AMBIENT_CREDENTIALS", "")
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    with pytest.raises(UserError, match="gated"):
        fetch_model("hf://org/gated", tmp_path / "stray", role="model", spec=None)
    monkeypatch.setenv("KUBETUNE_MODEL_HF_TOKEN", "hf_not_granted")
    with pytest.raises(UserError, match="gated"):
        fetch_model("hf://org/gated", tmp_path / "refused", role="model", spec=None)
    monkeypatch.setenv("KUBETUNE_MODEL_HF_TOKEN", "hf_granted")
    got = fetch_model("hf://org/gated", tmp_path / "granted", role="model", spec=None)
    assert _fetched(got) == SAFE_FILES


def test_missing_and_private_repositories(hub, tiny_llama_dir, tmp_path, monkeypatch):
    hub.add_repo("org/private", _repo_files(tiny_llama_dir), private=True, tokens=("hf_member",))
    with pytest.raises(UserError, match="no such repository, or it is private"):
        fetch_model("hf://org/absent", tmp_path / "a", role="model", spec=None)
    with pytest.raises(UserError, match="no such repository, or it is private"):
        fetch_config("hf://org/private", tmp_path / "b", role="model", spec=None)
    monkeypatch.setenv("HF_TOKEN", "hf_member")
    assert fetch_config("hf://org/private", tmp_path / "c", role="model", spec=None)["model_type"] == "llama"


def test_download_cut_in_the_middle_is_completed(hub, tiny_llama_dir, tmp_path):
    hub.add_repo(MODEL, _repo_files(tiny_llama_dir))
    hub.cut("model.safetensors", after_bytes=4096)
    got = fetch_model(f"hf://{MODEL}", tmp_path / "m", role="model", spec=None)
    assert _sha(got / "model.safetensors") == _sha(tiny_llama_dir / "model.safetensors")
    assert hub.gets("model.safetensors") == 2  # the cut one, and the one that finished it


def test_download_cut_every_time_fails_and_leaves_nothing_to_load(hub, tiny_llama_dir, tmp_path):
    hub.add_repo(MODEL, _repo_files(tiny_llama_dir))
    hub.cut("model.safetensors", after_bytes=4096, times=50)  # more than huggingface_hub's retries
    dest = tmp_path / "m"
    with pytest.raises(InfraError):
        fetch_model(f"hf://{MODEL}", dest, role="model", spec=None)
    assert not (dest / COMPLETE_MARKER).exists()
    assert not (dest / "model.safetensors").exists()  # no partial file where a loader would look
    # The Hub is down now: the folder holds a partial download, and it is still not used.
    hub.down = True
    with pytest.raises(InfraError, match="Hugging Face Hub"):
        fetch_model(f"hf://{MODEL}", dest, role="model", spec=None)
    assert not (dest / COMPLETE_MARKER).exists()
    # The next attempt, the Hub back and whole, completes it.
    hub.down = False
    hub._cuts.clear()
    got = fetch_model(f"hf://{MODEL}", dest, role="model", spec=None)
    assert _sha(got / "model.safetensors") == _sha(tiny_llama_dir / "model.safetensors")


def test_hub_down_is_an_infrastructure_error(hub, tiny_llama_dir, tmp_path):
    hub.add_repo(MODEL, _repo_files(tiny_llama_dir))
    hub.down = True
    with pytest.raises(InfraError, match="Hugging Face Hub"):
        fetch_config(f"hf://{MODEL}", tmp_path / "c", role="model", spec=None)
    with pytest.raises(InfraError):
        fetch_model(f"hf://{MODEL}", tmp_path / "m", role="model", spec=None)
    hub.close()  # unreachable, not just failing
    with pytest.raises(InfraError, match="cannot be reached"):
        fetch_model(f"hf://{MODEL}", tmp_path / "m2", role="model", spec=None)


# --------------------------------------------------------------------------- datasets


def load(uri: str, tmp_path, **entry):
    from kubetune_trainer.data import load_source

    spec = Spec.model_validate(
        {"technique": "full", "model": {"uri": "file:///m"}, "datasets": [{"uri": uri, "format": "text", **entry}]}
    )
    return load_source(
        uri, spec.datasets[0], 0, role="dataset-0", spec=spec, dest=tmp_path / "dataset-0", what="spec.datasets[0].uri"
    )


def test_hf_dataset_subset_split_and_revision(hub, tmp_path):
    first = hub.add_repo("org/data", dataset_repo_files(1), repo_type="dataset")
    hub.tag("org/data", "v1", first, repo_type="dataset")
    hub.add_repo("org/data", dataset_repo_files(2), repo_type="dataset")
    assert load("hf://datasets/org/data", tmp_path)["text"][0] == "v2 train row 0"
    assert load("hf://datasets/org/data", tmp_path, split="test")["text"] == ["v2 test row 0", "v2 test row 1"]
    assert load("hf://datasets/org/data@v1", tmp_path)["text"][0] == "v1 train row 0"
    short = load("hf://datasets/org/data", tmp_path, subset="short", columns={"text": "body"})
    assert short["text"] == ["v2 short 0", "v2 short 1", "v2 short 2"]
    assert hub.gets("loader.py") == 0


def test_hf_dataset_errors(hub, tmp_path, monkeypatch):
    hub.add_repo("org/data", dataset_repo_files(), repo_type="dataset")
    hub.add_repo("org/gated-data", dataset_repo_files(), repo_type="dataset", gated=True, tokens=("hf_granted",))
    with pytest.raises(UserError, match="no such dataset"):
        load("hf://datasets/org/absent", tmp_path)
    with pytest.raises(UserError, match="Unknown split|split"):
        load("hf://datasets/org/data", tmp_path, split="validation")
    with pytest.raises(UserError, match="gated"):
        load("hf://datasets/org/gated-data", tmp_path)
    monkeypatch.setenv("KUBETUNE_DATASET_0_HF_TOKEN", "hf_granted")
    assert len(load("hf://datasets/org/gated-data", tmp_path)) == 6
    hub.add_repo("org/never-read", dataset_repo_files(), repo_type="dataset")
    hub.down = True
    with pytest.raises(InfraError, match="cannot be reached|cannot be loaded|Hub"):
        load("hf://datasets/org/never-read", tmp_path / "down")
