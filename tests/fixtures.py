"""What several test folders build alike: the small training job every end-to-end trainer test starts from, and what
the technique tests expect of each technique."""

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


# What the tests expect of each technique on the tiny Llama, in one place. The technique tests iterate over the
# Technique enum, so a new technique fails them until it has its entry in each of these.
# Its own spec sections, sized for the tiny Llama.
TECHNIQUE_SECTIONS: dict[str, dict] = {
    "full": {},
    "lora": {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
    "qlora": {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}, "quantization": {"bits": 4}},
    "feature-extraction": {"featureExtraction": {"trainableLayers": 1}},
    "adapter": {"adapter": {"bottleneckSize": 16}},
    # initialised from text: from a random start 30 steps move a frozen random model too little to measure
    "prompt-tuning": {"promptTuning": {"virtualTokens": 4, "initText": "the cat is red"}},
    "prefix-tuning": {"prefixTuning": {"virtualTokens": 4}},
}
# The parameters that train, by name in the model the technique builds (a classifier's new head trains too).
TECHNIQUE_TRAINS: dict[str, str] = {
    "full": r".*",
    "lora": r".*\.lora_[AB]\..*",
    "qlora": r".*\.lora_[AB]\..*",
    "feature-extraction": r"^(lm_head|score)\.weight$|^model\.layers\.1\..*|^model\.norm\.weight$",
    "adapter": r".*\.kubetune_adapters\..*",
    "prompt-tuning": r"^prompt_encoder\..*",
    "prefix-tuning": r"^prompt_encoder\..*",
}
# Of those, the ones that must have changed after a few steps: the tensors that start at zero, or one that all
# gradients reach.
TECHNIQUE_MUST_CHANGE: dict[str, str] = {
    "full": r"^model\.layers\.0\.self_attn\.q_proj\.weight$",
    "lora": r".*\.lora_B\..*",
    "qlora": r".*\.lora_B\..*",
    "feature-extraction": r"^(lm_head|score)\.weight$",
    "adapter": r".*\.kubetune_adapters\..*\.up\.weight$",
    "prompt-tuning": r"^prompt_encoder\..*",
    "prefix-tuning": r"^prompt_encoder\..*",
}
