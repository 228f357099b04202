"""file:// sources a pod's user cannot read: "permission denied" and the path, not a loader's
"No such file or directory" (what transformers said for a model.safetensors of mode 0600 owned by root,
seen in the trainer image with the folder mounted read-only)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kubetune_trainer.errors import UserError
from kubetune_trainer.sources.file import data_files, model_folder

NOBODY = 65534


def as_unprivileged(action: Callable[[], object]) -> str:
    """Run `action` as a user that file modes apply to; its outcome as text ("ok" or "UserError: ...").

    Root reads every file whatever its mode, so as root the action runs in a forked child that drops to
    uid/gid 65534 first (everything it calls is imported before the fork)."""

    def outcome() -> str:
        try:
            action()
        except UserError as err:
            return f"UserError: {err}"
        except Exception as err:  # noqa: BLE001 - reported to the parent as text
            return f"{type(err).__name__}: {err}"
        return "ok"

    if os.geteuid() != 0:
        return outcome()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, outcome().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text


@pytest.fixture
def shared_dir():
    """A folder every user can traverse (pytest's tmp_path lies under a root-only 0700 folder)."""
    with tempfile.TemporaryDirectory(prefix="kubetune-perm-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def _model(folder: Path) -> Path:
    folder.mkdir(mode=0o755)
    for name, text in (("config.json", "{}"), ("tokenizer.json", "{}"), ("model.safetensors", "weights")):
        (folder / name).write_text(text)
        (folder / name).chmod(0o644)
    return folder


def test_a_readable_model_folder_passes(shared_dir):
    model = _model(shared_dir / "model")
    assert as_unprivileged(lambda: model_folder(str(model), f"file://{model}")) == "ok"


def test_an_unreadable_weight_file_is_permission_denied_with_its_path(shared_dir):
    model = _model(shared_dir / "model")
    (model / "model.safetensors").chmod(0o600)
    outcome = as_unprivileged(lambda: model_folder(str(model), f"file://{model}"))
    assert outcome.startswith("UserError: spec.model.uri: permission denied: "), outcome
    assert f"{model}/model.safetensors" in outcome and "uid " in outcome


def test_a_model_folder_behind_an_untraversable_parent_is_permission_denied(shared_dir):
    parent = shared_dir / "private"
    parent.mkdir(mode=0o700)
    model = _model(parent / "model")
    outcome = as_unprivileged(lambda: model_folder(str(model), f"file://{model}"))
    assert outcome.startswith("UserError: spec.model.uri: permission denied: "), outcome
    assert str(model) in outcome


def test_an_unreadable_data_file_is_permission_denied_with_its_path(shared_dir):
    data = shared_dir / "data"
    data.mkdir(mode=0o755)
    (data / "a.jsonl").write_text('{"text": "x"}\n')
    (data / "a.jsonl").chmod(0o644)
    (data / "b.jsonl").write_text('{"text": "y"}\n')
    (data / "b.jsonl").chmod(0o600)
    what = "spec.datasets[0].uri"
    assert as_unprivileged(lambda: data_files(str(data / "a.jsonl"), "file://a", what)) == "ok"
    outcome = as_unprivileged(lambda: data_files(str(data), f"file://{data}/", what))
    assert outcome.startswith(f"UserError: {what}: permission denied: {data}/b.jsonl"), outcome
