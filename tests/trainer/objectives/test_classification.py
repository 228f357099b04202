"""objectives.classification through run(ctx): real training of a tiny Llama with a classification head.

The synthetic task is learnable by a frozen random model: the label is decided by the last word
(great -> positive, terrible -> negative), and the head reads the last token's hidden state.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.trainer.objectives.recipes import WORDS, recipe_context, write_jsonl
from transformers import TrainerCallback

from kubetune.api.v1alpha1 import Spec
from kubetune_trainer.context import RunContext
from kubetune_trainer.errors import UserError

pytestmark = pytest.mark.slow


def sentiment_rows(n: int, seed: int, words=("great", "terrible"), labels=("positive", "negative")) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = i % 2
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        rows.append({"text": f"{body} {words[k]}", "label": labels[k]})
    return rows


def make_ctx(
    tmp_path: Path, model_dir: Path, spec_extra: dict, datasets: list[dict], callbacks=(), max_steps: int = 30
) -> RunContext:
    return recipe_context(
        tmp_path,
        model_dir,
        objective="classification",
        datasets=datasets,
        steps=max_steps,
        lr=1e-2,
        spec_extra=spec_extra,
        callbacks=callbacks,
    )


def measure(model, tokenizer, rows: list[dict], names: list[str]) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `rows`, computed directly (no Trainer)."""
    import torch

    model.eval()
    enc = tokenizer([r["text"] for r in rows], return_tensors="pt", padding=True)
    labels = torch.tensor([names.index(r["label"]) for r in rows])
    with torch.no_grad():
        logits = model(**enc).logits
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    acc = (logits.argmax(-1) == labels).float().mean().item()
    return loss, acc


class Snapshot(TrainerCallback):
    """Records every parameter and the model's loss/accuracy when training begins."""

    def __init__(self, rows, names):
        self.rows, self.names = rows, names
        self.params = None
        self.trainable = None
        self.before = None

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.before = measure(model, processing_class, self.rows, self.names)
        model.train()


def changed_params(snapshot, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not bool((p.detach() == snapshot.params[n]).all())}


NAMES = ["negative", "positive"]


@pytest.mark.parametrize(
    "technique, extra, intended",
    [
        ("lora", {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}, ("lora_", "score")),
        ("feature-extraction", {"featureExtraction": {"trainableLayers": 0}}, ("score",)),
    ],
)
def test_classification_learns_and_only_intended_params_change(tmp_path, tiny_llama_dir, technique, extra, intended):
    from kubetune_trainer.objectives import classification

    eval_rows = sentiment_rows(32, seed=2)
    snapshot = Snapshot(eval_rows, NAMES)
    ctx = make_ctx(
        tmp_path,
        tiny_llama_dir,
        {"technique": technique, **extra},
        [
            {
                "name": "sent",
                "uri": write_jsonl(tmp_path / "train.jsonl", sentiment_rows(96, seed=1)),
                "format": "classification",
                "evalUri": write_jsonl(tmp_path / "eval.jsonl", eval_rows),
            }
        ],
        callbacks=[snapshot],
    )
    result = classification.run(ctx)

    loss_before, acc_before = snapshot.before
    loss_after, acc_after = measure(result.model, result.tokenizer, eval_rows, NAMES)
    print(
        f"{technique} classification: eval loss {loss_before:.3f} -> {loss_after:.3f}, "
        f"accuracy {acc_before:.2f} -> {acc_after:.2f}"
    )
    assert loss_after < loss_before * 0.7
    assert acc_after >= 0.9 and acc_after > acc_before
    # The Trainer's own evaluation agrees with the direct measurement.
    assert result.metrics["eval_accuracy"] == pytest.approx(acc_after, abs=1e-6)
    assert result.metrics["eval_loss"] == pytest.approx(loss_after, rel=1e-3)
    assert result.model.config.id2label == {0: "negative", 1: "positive"}

    changed = changed_params(snapshot, result.model)
    assert changed, "training changed no parameter"
    assert changed <= snapshot.trainable, f"frozen parameters changed: {sorted(changed - snapshot.trainable)[:5]}"
    assert all(any(key in name for key in intended) for name in changed), sorted(changed)[:10]


def test_multitask_classification_reports_eval_per_task(tmp_path, tiny_llama_dir):
    from kubetune_trainer.objectives import classification

    tasks = []
    for name, words, labels, seed in (
        ("sentiment", ("great", "terrible"), ("positive", "negative"), 1),
        ("answer", ("yes", "no"), ("agree", "disagree"), 5),
    ):
        tasks.append(
            {
                "name": name,
                "uri": write_jsonl(tmp_path / f"{name}.jsonl", sentiment_rows(64, seed, words, labels)),
                "evalUri": write_jsonl(tmp_path / f"{name}-eval.jsonl", sentiment_rows(16, seed + 100, words, labels)),
                "format": "classification",
                "weight": 1.0,
            }
        )
    ctx = make_ctx(tmp_path, tiny_llama_dir, {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}, tasks, max_steps=60)
    result = classification.run(ctx)
    metrics = result.metrics
    print("multi-task classification:", {k: round(v, 3) for k, v in metrics.items() if k.startswith("eval_")})
    for task in ("sentiment", "answer"):
        assert f"eval_{task}_loss" in metrics and f"eval_{task}_accuracy" in metrics
        assert metrics[f"eval_{task}_accuracy"] >= 0.9
    # One head for the union of the labels, sorted.
    assert list(result.model.config.id2label.values()) == ["agree", "disagree", "negative", "positive"]


def test_label_outside_the_class_list_is_a_user_error(tmp_path, tiny_llama_dir):
    from kubetune_trainer.objectives import classification

    rows = sentiment_rows(8, seed=1)
    eval_rows = sentiment_rows(4, seed=2)
    eval_rows[3]["label"] = "neutral"
    ctx = make_ctx(
        tmp_path,
        tiny_llama_dir,
        {"classification": {"labels": ["negative", "positive"]}},
        [
            {
                "name": "sent",
                "uri": write_jsonl(tmp_path / "t.jsonl", rows),
                "format": "classification",
                "evalUri": write_jsonl(tmp_path / "e.jsonl", eval_rows),
            }
        ],
    )
    with pytest.raises(UserError) as err:
        classification.run(ctx)
    message = str(err.value)
    assert "spec.datasets[0] (sent) eval row 3" in message and "'neutral'" in message


def test_labels_and_head_size(tmp_path, tiny_llama_dir):
    """Integer labels sort numerically; spec names can label integer classes; numLabels sizes the head."""
    import datasets

    from kubetune_trainer.context import TaskData
    from kubetune_trainer.objectives import classification

    spec = Spec.model_validate(
        {
            "technique": "feature-extraction",
            "objective": "classification",
            "model": {"uri": tiny_llama_dir.as_uri()},
            "datasets": [{"uri": "file:///x.jsonl", "format": "classification"}],
            "featureExtraction": {"numLabels": 12},
        }
    ).resolved()
    task = TaskData(
        "default", "classification", 1.0, datasets.Dataset.from_list([{"text": "a", "label": v} for v in (10, 2, 0)])
    )
    names = classification.class_names(spec, [task])
    assert names == ["0", "2", "10"]
    assert classification.head_size(spec, names) == 12
    named = spec.model_copy(
        update={"classification": spec.classification.model_copy(update={"labels": ["neg", "pos"]})}
    )
    index = classification.label_indexer(classification.class_names(named, [task]))
    assert (index("pos"), index(1), index(0), index(7)) == (1, 1, 0, None)
