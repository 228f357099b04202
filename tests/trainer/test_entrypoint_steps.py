"""The entrypoint's steps on their own (file:// output, no training): what `open_output` accepts as the same run."""

from __future__ import annotations

import pytest

from kubetune.api.constants import API_VERSION, KIND
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune_trainer.entrypoint import open_output
from kubetune_trainer.errors import UserError


def _job(name="job", lr=1e-3) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name},
            "spec": {
                "technique": "full",
                "model": {"uri": "file:///models/m"},
                "datasets": [{"uri": "file:///data/d.jsonl", "format": "text"}],
                "hyperparameters": {"learningRate": lr},
            },
        }
    )


def test_a_new_run_writes_its_spec_and_a_second_attempt_resumes(tmp_path):
    root = (tmp_path / "out").as_uri() + "/"
    job = _job()
    first = open_output(job, job.spec.resolved(), root)
    assert not first.resuming and (tmp_path / "out" / "spec.resolved.yaml").is_file()
    assert open_output(job, job.spec.resolved(), root).resuming


def test_another_specs_output_is_refused(tmp_path):
    root = (tmp_path / "out").as_uri() + "/"
    open_output(_job(), _job().spec.resolved(), root)
    other = _job(lr=5e-4)
    with pytest.raises(UserError, match="differs in spec.hyperparameters.learningRate"):
        open_output(other, other.spec.resolved(), root)


def test_checkpoints_without_a_spec_are_never_resumed(tmp_path):
    step = tmp_path / "out" / "checkpoints" / "step-4"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"w")
    (step / "_COMPLETE").write_text("{}")
    job = _job()
    with pytest.raises(UserError, match="holds checkpoints but no spec.resolved.yaml"):
        open_output(job, job.spec.resolved(), (tmp_path / "out").as_uri() + "/")
    assert not (tmp_path / "out" / "spec.resolved.yaml").exists()


def test_the_plan_reaches_the_reporter(tmp_path, tiny_llama_dir):
    """build_context reports the memory plan (status.plan) in the API's spelling."""
    import json

    from kubetune.api.v1alpha1 import Plan as StatusPlan
    from kubetune_trainer.entrypoint import build_context, fetch_inputs

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "the cat is red ."}) + "\n")
    job = FineTuneJob.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "j"},
            "spec": {
                "technique": "full",
                "model": {"uri": tiny_llama_dir.as_uri()},
                "datasets": [{"uri": data.as_uri(), "format": "text"}],
            },
        }
    )
    spec = job.spec.resolved()
    out = open_output(job, spec, (tmp_path / "out").as_uri() + "/")
    inputs = fetch_inputs(spec, out, tmp_path / "work")

    class Plans:
        def __init__(self):
            self.plans = []

        def plan(self, plan):
            self.plans.append(plan)

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    reporter = Plans()
    build_context(spec, "j", out, inputs, tmp_path / "work", reporter=reporter)
    (plan,) = reporter.plans
    assert plan["strategy"] == "ddp" and plan["worldSize"] == 1 and plan["perGpuGiB"] > 0
    assert StatusPlan.model_validate(plan).per_gpu_gib == plan["perGpuGiB"]
    assert "fits" not in plan  # no GPU here: a plan without a verdict
