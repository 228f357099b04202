"""What the objective tests share: a RunContext for a recipe's run(ctx), built the way the entrypoint
builds one (spec validated and resolved, datasets loaded and checked by data.load_tasks)."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.v1alpha1 import Spec
from kubetune_trainer.context import OutputLayout, RunContext

WORDS = "the cat dog fox owl red blue green park river is near and".split()

# Small, deterministic training: fp32 on CPU, constant learning rate, no checkpoints in between.
HYPERPARAMETERS = {
    "batchSize": 8,
    "warmupRatio": 0.0,
    "lrScheduler": "constant",
    "maxSeqLength": 32,
    "precision": "fp32",
    "seed": 0,
}


class ListReporter:
    """A Reporter that keeps the progress reports."""

    def __init__(self):
        self.reports = []

    def progress(self, report):
        self.reports.append(report)

    def checkpoints(self, complete):
        pass

    def output(self, report):
        pass

    def close(self):
        pass


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.as_uri()


def recipe_context(
    tmp_path: Path,
    model_dir: Path,
    *,
    objective: str,
    datasets: list[dict],
    steps: int,
    lr: float,
    technique: str = "lora",
    spec_extra: dict | None = None,
    callbacks=(),
    out_name: str = "out",
    reward_model_dir: Path | None = None,
) -> RunContext:
    from kubetune_trainer.data import load_tasks

    raw = {
        "technique": technique,
        "objective": objective,
        "model": {"uri": model_dir.as_uri()},
        "datasets": datasets,
        "hyperparameters": HYPERPARAMETERS | {"maxSteps": steps, "learningRate": lr},
        "output": {"uri": (tmp_path / out_name).as_uri() + "/", "checkpointEverySteps": 1000},
    }
    raw.update(spec_extra or {})
    spec = Spec.model_validate(raw).resolved()
    work = tmp_path / f"work-{out_name}"
    work.mkdir(exist_ok=True)
    return RunContext(
        spec=spec,
        name="test",
        work_dir=work,
        layout=OutputLayout(spec.output.uri),
        model_dir=model_dir,
        tasks=load_tasks(spec, work),
        resume_from=None,
        callbacks=list(callbacks),
        reporter=ListReporter(),
        reward_model_dir=Path(reward_model_dir) if reward_model_dir is not None else None,
    )
