"""spec.resumeFrom through `kubetune run`: a new run that continues another run's checkpoint ends where one
uninterrupted run ends; one whose optimisation differs takes the weights alone; one that cannot load them is a
user error naming what differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.constants import ExitCode
from kubetune_trainer.entrypoint import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from kubetune_trainer.tiny import sample_corpus

    path = tmp_path_factory.mktemp("resume-from-data") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(64, seed=21)))
    return path


def _job(write_job, model_dir, data, name, steps, **extra):
    sections = {
        "hyperparameters": {"maxSteps": steps, **extra.pop("hyperparameters", {})},
        "output": {"checkpointEverySteps": 4, "keepCheckpoints": 3},
    }
    sections.update(extra)
    return write_job(
        model_dir, [{"name": "corpus", "uri": data.as_uri(), "format": "text"}], filename=f"{name}.yaml", **sections
    )


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path):
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def _max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_a_longer_run_continues_where_the_first_stopped(tiny_llama_dir, data, write_job, tmp_path):
    first = tmp_path / "first"
    assert main([str(_job(write_job, tiny_llama_dir, data, "first", 8)), "--output", first.as_uri() + "/"]) == 0
    longer = _job(write_job, tiny_llama_dir, data, "longer", 12, resumeFrom=first.as_uri() + "/")
    assert main([str(longer), "--output", (tmp_path / "longer").as_uri() + "/"]) == 0
    straight = tmp_path / "straight"
    assert main([str(_job(write_job, tiny_llama_dir, data, "straight", 12)), "--output", straight.as_uri() + "/"]) == 0

    losses = lambda out: [(r["step"], r["loss"]) for r in _records(out) if "loss" in r]  # noqa: E731
    assert [s for s, _ in losses(tmp_path / "longer")] == list(range(1, 13))  # the first run's curve, then its own
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(losses(tmp_path / "longer"), losses(straight), strict=True))
    assert _max_diff(_weights(tmp_path / "longer"), _weights(straight)) < 1e-5
    assert not (tmp_path / "longer" / "checkpoints" / "step-4").exists()  # its own checkpoints start after step 8


def test_another_optimisation_takes_the_weights_alone(tiny_llama_dir, data, write_job, tmp_path):
    first = tmp_path / "first"
    assert main([str(_job(write_job, tiny_llama_dir, data, "first", 4)), "--output", first.as_uri() + "/"]) == 0
    # A learning rate too small to move a weight: the new run's final model is the checkpoint's weights.
    still = _job(
        write_job,
        tiny_llama_dir,
        data,
        "still",
        1,
        hyperparameters={"learningRate": 1e-12},
        resumeFrom=(first / "checkpoints" / "step-4").as_uri() + "/",
    )
    assert main([str(still), "--output", (tmp_path / "still").as_uri() + "/"]) == 0
    from safetensors.torch import load_file

    checkpoint = load_file(str(first / "checkpoints" / "step-4" / "model.safetensors"))
    assert _max_diff(_weights(tmp_path / "still"), checkpoint) < 1e-6
    assert [r["step"] for r in _records(tmp_path / "still") if "loss" in r] == [1]  # from step 0, its own curve


def test_weights_that_do_not_fit_are_a_user_error(tiny_llama_dir, data, write_job, tmp_path, capsys):
    first = tmp_path / "first"
    lora = {"technique": "lora", "lora": {"rank": 4}}
    assert main([str(_job(write_job, tiny_llama_dir, data, "first", 4, **lora)), "--output", first.as_uri() + "/"]) == 0
    other = _job(
        write_job, tiny_llama_dir, data, "other", 4, technique="lora", lora={"rank": 8}, resumeFrom=first.as_uri()
    )
    assert main([str(other), "--output", (tmp_path / "other").as_uri() + "/"]) == ExitCode.USER_ERROR
    assert "spec.resumeFrom: the checkpoint was trained with a different lora.rank" in capsys.readouterr().err

    by_name = _job(write_job, tiny_llama_dir, data, "by-name", 4, resumeFrom="first")
    assert main([str(by_name), "--output", (tmp_path / "by-name").as_uri() + "/"]) == ExitCode.USER_ERROR
    assert "names a FineTuneJob, which only the operator can find" in capsys.readouterr().err
