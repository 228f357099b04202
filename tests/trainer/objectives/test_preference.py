"""objectives.preference through run(ctx): DPO-family training of a tiny Llama with TRL's DPOTrainer.

The synthetic preference: after any prompt, "yes , good" is chosen over "no , bad". Learning it
raises log p(chosen | prompt) - log p(rejected | prompt), measured directly on the model.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.trainer.objectives.recipes import WORDS, recipe_context, write_jsonl
from transformers import TrainerCallback

pytestmark = pytest.mark.slow

CHOSEN, REJECTED = " yes , good", " no , bad"


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))),
            "chosen": CHOSEN,
            "rejected": REJECTED,
        }
        for _ in range(n)
    ]


def make_ctx(tmp_path: Path, model_dir: Path, spec_extra: dict, datasets: list[dict], callbacks=(), lr=5e-3, steps=24):
    return recipe_context(
        tmp_path,
        model_dir,
        objective="preference",
        datasets=datasets,
        steps=steps,
        lr=lr,
        spec_extra=spec_extra,
        callbacks=callbacks,
    )


def logprob_gap(model, tokenizer, rows: list[dict]) -> float:
    """Mean over rows of log p(chosen | prompt) - log p(rejected | prompt), straight from the model."""
    import torch

    model.eval()

    def completion_logprob(prompt: str, completion: str) -> float:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        # Prompt-learning PEFT prepends virtual positions: keep the last len(ids) ones.
        logps = torch.log_softmax(logits[-len(ids) :].float(), -1)
        return sum(logps[i - 1, ids[i]].item() for i in range(len(prompt_ids), len(ids)))

    gaps = [completion_logprob(r["prompt"], r["chosen"]) - completion_logprob(r["prompt"], r["rejected"]) for r in rows]
    return sum(gaps) / len(gaps)


class Recorder(TrainerCallback):
    """The log-prob gap when training begins, and every logged training loss."""

    def __init__(self, rows):
        self.rows = rows
        self.gap_before = None
        self.losses = []

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.gap_before = logprob_gap(model, processing_class, self.rows)
        model.train()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


TECHNIQUE_SETTINGS = {
    "lora": ({"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}, 5e-3),
    "full": ({}, 1e-3),
    "qlora": ({"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}, "quantization": {"bits": 4}}, 5e-3),
    "feature-extraction": ({"featureExtraction": {"trainableLayers": 1}}, 5e-3),
    "adapter": ({"adapter": {"bottleneckSize": 16}}, 5e-3),
    "prompt-tuning": ({"promptTuning": {"virtualTokens": 4}}, 5e-2),
    "prefix-tuning": ({"prefixTuning": {"virtualTokens": 4}}, 5e-2),
}


def train_preference(tmp_path, model_dir, technique, algorithm, steps=24):
    from kubetune_trainer.objectives import preference

    extra, lr = TECHNIQUE_SETTINGS[technique]
    eval_rows = preference_rows(16, seed=2)
    recorder = Recorder(eval_rows)
    ctx = make_ctx(
        tmp_path,
        model_dir,
        {"technique": technique, "preference": {"algorithm": algorithm, "beta": 0.1}, **extra},
        [
            {
                "name": "pref",
                "uri": write_jsonl(tmp_path / "train.jsonl", preference_rows(64, seed=1)),
                "format": "preference",
                "evalUri": write_jsonl(tmp_path / "eval.jsonl", eval_rows),
            }
        ],
        callbacks=[recorder],
        lr=lr,
        steps=steps,
    )
    result = preference.run(ctx)
    gap_after = logprob_gap(result.model, result.tokenizer, eval_rows)
    print(
        f"{technique} x preference/{algorithm}: loss {recorder.losses[0]:.4f} -> {recorder.losses[-1]:.4f}, "
        f"chosen-rejected log-prob gap {recorder.gap_before:.3f} -> {gap_after:.3f}, "
        f"eval reward margin {result.metrics.get('eval_rewards/margins', float('nan')):.3f}"
    )
    return result, recorder, gap_after


@pytest.mark.parametrize("technique", ["lora", "full"])
@pytest.mark.parametrize("algorithm", ["dpo", "ipo"])
def test_preference_learns(tmp_path, tiny_llama_dir, technique, algorithm):
    result, recorder, gap_after = train_preference(tmp_path, tiny_llama_dir, technique, algorithm)
    assert gap_after > recorder.gap_before + 1.0
    assert recorder.losses[-1] < recorder.losses[0]
    assert result.metrics["eval_rewards/margins"] > 0.1
    assert "eval_loss" in result.metrics
    if technique == "lora":
        # The frozen reference copy of the adapter is not part of the result.
        assert list(result.model.peft_config) == ["default"]


@pytest.mark.parametrize("technique", ["qlora", "feature-extraction", "adapter", "prompt-tuning", "prefix-tuning"])
def test_every_technique_trains_with_dpo(tmp_path, tiny_llama_dir, technique):
    result, recorder, gap_after = train_preference(tmp_path, tiny_llama_dir, technique, "dpo", steps=16)
    assert gap_after > recorder.gap_before + 0.1
    assert recorder.losses[-1] < recorder.losses[0]


def test_multitask_preference_reports_eval_per_task(tmp_path, tiny_llama_dir):
    from kubetune_trainer.objectives import preference

    datasets = [
        {
            "name": name,
            "uri": write_jsonl(tmp_path / f"{name}.jsonl", preference_rows(32, seed)),
            "format": "preference",
            "weight": weight,
            "evalUri": write_jsonl(tmp_path / f"{name}-eval.jsonl", preference_rows(8, seed + 10)),
        }
        for name, seed, weight in (("first", 1, 2.0), ("second", 3, 1.0))
    ]
    ctx = make_ctx(tmp_path, tiny_llama_dir, {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}, datasets, steps=8)
    metrics = preference.run(ctx).metrics
    assert {"eval_first_loss", "eval_second_loss"} <= set(metrics)
    assert metrics["eval_first_loss"] < 0.6931 and metrics["eval_second_loss"] < 0.6931  # below log 2: learned
