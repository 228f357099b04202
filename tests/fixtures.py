"""What several test folders build alike: the small training job every end-to-end trainer test starts from."""

from __future__ import annotations

from pathlib import Path


def tiny_training_job(
    model_dir: Path, datasets: list[dict], *, name: str, steps: int, checkpoint_every: int, **spec_sections
) -> dict:
    """A FineTuneJob that fully fine-tunes the tiny Llama (tests/conftest.py) for a few steps in fp32 on file://
    data. Keyword arguments are spec sections, merged over these (a dict into a dict section, else replacing it)."""
    spec = {
        "technique": "full",
        "objective": "causal-lm",
        "model": {"uri": f"file://{model_dir}"},
        "datasets": datasets,
        "hyperparameters": {
            "maxSteps": steps,
            "batchSize": 4,
            "learningRate": 3.0e-3,
            "maxSeqLength": 64,
            "precision": "fp32",
            "warmupRatio": 0.0,
            "lrScheduler": "constant",
            "packing": True,
            "seed": 7,
        },
        "output": {"checkpointEverySteps": checkpoint_every, "keepCheckpoints": 2},
    }
    for key, value in spec_sections.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
