"""What the objective tests share: a RunContext for a recipe's run(ctx), built by the entrypoint's own steps
(open_output, fetch_inputs, build_context)."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.constants import API_VERSION, KIND
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune_trainer.context import RunContext

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
) -> RunContext:
    """The RunContext the entrypoint's own steps build for this spec (output under tmp_path/out_name, inputs
    fetched, metrics and checkpoint callbacks in place), with a ListReporter and `callbacks` added."""
    from kubetune_trainer.entrypoint import build_context, fetch_inputs, open_output

    raw = {
        "technique": technique,
        "objective": objective,
        "model": {"uri": model_dir.as_uri()},
        "datasets": datasets,
        "hyperparameters": HYPERPARAMETERS | {"maxSteps": steps, "learningRate": lr},
        "output": {"uri": (tmp_path / out_name).as_uri() + "/", "checkpointEverySteps": 1000},
    }
    raw.update(spec_extra or {})
    job = FineTuneJob.model_validate(
        {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "test"}, "spec": raw}
    )
    spec = job.spec.resolved()
    out = open_output(job, spec, None)
    work = tmp_path / f"work-{out_name}"
    work.mkdir(exist_ok=True)
    inputs = fetch_inputs(spec, out, work)
    ctx, _session = build_context(spec, "test", out, inputs, work, reporter=ListReporter(), callbacks=callbacks)
    return ctx
