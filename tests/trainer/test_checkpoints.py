"""checkpoints.py on its own (a file:// store): the completion marker, which checkpoint a resume picks,
pruning, and the check of a downloaded checkpoint against its marker."""

from __future__ import annotations

import json

import pytest

from kubetune_trainer.checkpoints import (
    CheckpointManager,
    complete_checkpoints,
    download_checkpoint,
    find_latest_complete,
    scan,
)
from kubetune_trainer.errors import InfraError
from kubetune_trainer.layout import COMPLETE_MARKER, OutputLayout
from kubetune_trainer.storage import get_storage


class Reporter:
    def __init__(self):
        self.reported = []

    def checkpoints(self, complete):
        self.reported.append([c.step for c in complete])


@pytest.fixture
def store(tmp_path):
    layout = OutputLayout((tmp_path / "run").as_uri() + "/")
    return get_storage(layout.root), layout


def _local_checkpoint(tmp_path, step: int, size: int = 10):
    folder = tmp_path / "local" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * size)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def _cut_off(storage, layout, step: int) -> None:
    """An upload that died before its marker: files, no COMPLETE_MARKER."""
    storage.write_text(layout.checkpoint_uri(step) + "model.safetensors", "partial")


def test_marker_is_written_last_and_lists_every_file(tmp_path, store):
    storage, layout = store
    manager = CheckpointManager(storage, layout, keep=3, reporter=Reporter())
    manager.submit(_local_checkpoint(tmp_path, 4, size=7), 4, eval_loss=1.5)
    manager.wait()
    marker = json.loads(storage.read_text(layout.checkpoint_uri(4) + COMPLETE_MARKER))
    assert marker["step"] == 4 and marker["evalLoss"] == 1.5
    assert marker["files"] == {"model.safetensors": 7, "trainer_state.json": len(json.dumps({"global_step": 4}))}
    marker_time = (tmp_path / "run" / "checkpoints" / "step-4" / COMPLETE_MARKER).stat().st_mtime_ns
    for name in marker["files"]:
        assert (tmp_path / "run" / "checkpoints" / "step-4" / name).stat().st_mtime_ns <= marker_time
    assert manager.last_complete_step == 4


def test_resume_picks_the_newest_complete_checkpoint(tmp_path, store):
    storage, layout = store
    manager = CheckpointManager(storage, layout, keep=5, reporter=Reporter())
    for step in (2, 4):
        manager.submit(_local_checkpoint(tmp_path, step), step)
    manager.wait()
    _cut_off(storage, layout, 6)  # newer, but never completed
    assert {s: c.complete for s, c in scan(storage, layout).items()} == {2: True, 4: True, 6: False}
    latest = find_latest_complete(storage, layout)
    assert latest.step == 4 and latest.marker["step"] == 4
    assert (
        find_latest_complete(
            get_storage((tmp_path / "empty").as_uri() + "/"), OutputLayout((tmp_path / "empty").as_uri() + "/")
        )
        is None
    )


def test_prune_keeps_the_newest_and_drops_older_cut_offs(tmp_path, store):
    storage, layout = store
    reporter = Reporter()
    manager = CheckpointManager(storage, layout, keep=2, reporter=reporter)
    _cut_off(storage, layout, 1)
    for step in (2, 4, 6):
        manager.submit(_local_checkpoint(tmp_path, step), step)
        manager.wait()
    _cut_off(storage, layout, 8)  # a newer cut-off stays: its upload may still be running
    manager.prune_and_report()
    assert [c.step for c in complete_checkpoints(storage, layout)] == [4, 6]
    assert sorted(scan(storage, layout)) == [4, 6, 8]
    assert reporter.reported[-1] == [4, 6]
    assert not (tmp_path / "local" / "checkpoint-6").exists()  # the local copy goes once uploaded


def test_download_checks_the_files_against_the_marker(tmp_path, store):
    storage, layout = store
    manager = CheckpointManager(storage, layout, keep=2, reporter=Reporter())
    manager.submit(_local_checkpoint(tmp_path, 3), 3)
    manager.wait()
    local = download_checkpoint(storage, find_latest_complete(storage, layout), tmp_path / "resume")
    assert (local / "model.safetensors").read_bytes() == b"w" * 10

    storage.write_text(layout.checkpoint_uri(3) + "model.safetensors", "changed under us")
    with pytest.raises(InfraError, match="model.safetensors is missing or has the wrong size"):
        download_checkpoint(storage, find_latest_complete(storage, layout), tmp_path / "resume-again")
