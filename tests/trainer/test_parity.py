"""Parity with the reference libraries: each objective trained with `kubetune run` and with code written here
directly against transformers / peft / TRL, as a user of those libraries would write it, on the same tiny
model, data, seed and hyperparameters (fp32, packing off, constant learning rate). Per-step losses must agree
(the first step exactly, or within a float32 ulp where the reference computes its loss by another formula;
the run within LOSS_TOLERANCE) and so must the final trained weights (within
WEIGHT_TOLERANCE). These guard every change to the recipes' plumbing: a change in tokenization, masking,
seeding, data order or optimizer settings shows up here first.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from kubetune_trainer.entrypoint import main
from kubetune_trainer.tiny import sample_corpus

pytestmark = pytest.mark.slow

STEPS = 6
SEED = 11
BATCH = 4
LR = 2e-3
MAX_LENGTH = 48
LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": "all-linear"}
# The steps after the first compound float-summation differences (none where both sides run the same kernels).
LOSS_TOLERANCE = 2e-4
WEIGHT_TOLERANCE = 1e-6
# Against a reference that computes the same loss by another formula (TRL's SFTTrainer): a float32 ulp at the
# first step, which Adam's normalised steps (each about LR) carry into the weights after STEPS steps.
ULP_LOSS_TOLERANCE = 1e-6
ULP_WEIGHT_TOLERANCE = 0.025 * LR


# --------------------------------------------------------------------------- the two sides


def _kubetune(tmp_path: Path, model_dir: Path, rows: list[dict], fmt: str, **spec) -> tuple[list[float], dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "parity"},
        "spec": {
            "model": {"uri": model_dir.as_uri()},
            "datasets": [{"name": "d", "uri": data.as_uri(), "format": fmt}],
            "hyperparameters": {
                "maxSteps": STEPS,
                "batchSize": BATCH,
                "learningRate": LR,
                "maxSeqLength": MAX_LENGTH,
                "precision": "fp32",
                "warmupRatio": 0.0,
                "lrScheduler": "constant",
                "packing": False,
                "seed": SEED,
            },
            "output": {"checkpointEverySteps": 1000},
            **spec,
        },
    }
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert main([str(job), "--output", out.as_uri() + "/"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return losses, _safetensors(out / "final")


def _safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (path,) = [p for p in folder.glob("*.safetensors")]
    return load_file(str(path))


def _reference_args(cls, out: Path, **extra):
    """What a user of transformers/TRL writes for the same run (CPU, fp32, no checkpoints)."""
    return cls(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        seed=SEED,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        **extra,
    )


def _reference_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _saved(model, out: Path) -> dict[str, torch.Tensor]:
    model.save_pretrained(str(out), safe_serialization=True)
    return _safetensors(out)


def _lora(task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type=task_type)


def _assert_same(
    ours: tuple[list[float], dict],
    theirs: tuple[list[float], dict],
    first_step_tolerance: float = 0.0,
    weight_tolerance: float = WEIGHT_TOLERANCE,
) -> None:
    our_losses, our_weights = ours
    ref_losses, ref_weights = theirs
    assert len(our_losses) == len(ref_losses) == STEPS, (our_losses, ref_losses)
    assert abs(our_losses[0] - ref_losses[0]) <= first_step_tolerance, (our_losses, ref_losses)
    largest_loss_gap = max(abs(a - b) for a, b in zip(our_losses, ref_losses, strict=True))
    assert largest_loss_gap <= LOSS_TOLERANCE, (our_losses, ref_losses)
    assert our_losses[-1] < our_losses[0]  # it trained
    assert our_weights.keys() == ref_weights.keys()
    worst = max((our_weights[k].float() - ref_weights[k].float()).abs().max().item() for k in our_weights)
    assert worst <= weight_tolerance, worst


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


# --------------------------------------------------------------------------- causal-lm


def test_causal_lm_full_matches_transformers_trainer(tmp_path, tiny_llama_dir, tokenizer):
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    rows = [{"text": t} for t in sample_corpus(40, seed=4)]
    ours = _kubetune(tmp_path / "ours", tiny_llama_dir, rows, "text", technique="full")

    # Reference: every token a target, each text ended with EOS (kubetune's documented choice, as TRL's
    # SFTTrainer does for language modelling).
    def encode(row):
        ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": ids[:MAX_LENGTH]}

    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    train = _dataset(rows).map(encode, remove_columns=["text"])
    trainer = Trainer(
        model=model,
        args=_reference_args(TrainingArguments, tmp_path / "ref"),
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    _assert_same(ours, (_reference_losses(trainer), _saved(model, tmp_path / "ref-final")))


# --------------------------------------------------------------------------- instruction (TRL SFTTrainer)


def _instruction_rows(kind: str) -> list[dict]:
    rows = []
    for i, text in enumerate(sample_corpus(40, seed=8)):
        question, answer = f"what comes after {i % 9} ?", text
        if kind == "messages":
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
        else:
            # Half the completions do not start with a space: TRL joins the strings, so neither must kubetune
            # tokenize them apart (that would train "? the" where the data says "?the").
            rows.append({"prompt": question, "completion": (" " if i % 2 else "") + answer})
    return rows


@pytest.mark.parametrize("kind", ["messages", "prompt-completion"])
def test_instruction_lora_matches_sft_trainer(tmp_path, tiny_llama_dir, tokenizer, kind):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    rows = _instruction_rows(kind)
    ours = _kubetune(
        tmp_path / "ours", tiny_llama_dir, rows, kind, technique="lora", objective="instruction", lora=LORA
    )

    set_seed(SEED)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _lora("CAUSAL_LM"))
    loss_on_answers = {"assistant_only_loss": True} if kind == "messages" else {"completion_only_loss": True}
    trainer = SFTTrainer(
        model=model,
        args=_reference_args(
            SFTConfig,
            tmp_path / "ref",
            max_length=MAX_LENGTH,
            packing=False,
            gradient_checkpointing=False,
            **loss_on_answers,
        ),
        train_dataset=_dataset(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    # SFTTrainer computes the loss from a fused lm-head log-softmax, not transformers' cross-entropy: the same
    # value up to the last bit of a float32 (one unit in the last place of 5.7 is 4.8e-7).
    reference = (_reference_losses(trainer), _saved(model, tmp_path / "ref-final"))
    _assert_same(ours, reference, first_step_tolerance=ULP_LOSS_TOLERANCE, weight_tolerance=ULP_WEIGHT_TOLERANCE)


# --------------------------------------------------------------------------- preference (TRL DPOTrainer)


def test_preference_lora_matches_dpo_trainer(tmp_path, tiny_llama_dir, tokenizer):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, set_seed
    from trl import DPOConfig, DPOTrainer

    rows = [
        {"prompt": f"is the {a} {c} ?", "chosen": f" yes the {a} is {c} .", "rejected": f" no , {b} ."}
        for a, b, c in zip(sample_corpus(32, seed=2), sample_corpus(32, seed=3), ["red", "blue"] * 16, strict=True)
    ]
    ours = _kubetune(
        tmp_path / "ours", tiny_llama_dir, rows, "preference", technique="lora", objective="preference", lora=LORA
    )

    set_seed(SEED)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _lora("CAUSAL_LM"))
    trainer = DPOTrainer(
        model=model,
        args=_reference_args(
            DPOConfig, tmp_path / "ref", beta=0.1, max_length=MAX_LENGTH, gradient_checkpointing=False
        ),
        train_dataset=_dataset(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    model.set_adapter("default")
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    _assert_same(ours, (_reference_losses(trainer), _saved(model, tmp_path / "ref-final")))


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("technique", ["full", "feature-extraction"])
def test_classification_matches_transformers_trainer(tmp_path, tiny_llama_dir, tokenizer, technique):
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    texts = sample_corpus(48, seed=6)
    rows = [{"text": t, "label": "animal" if " the " in t and "lives" in t else "other"} for t in texts]
    extra = {"featureExtraction": {"trainableLayers": 1}} if technique == "feature-extraction" else {}
    ours = _kubetune(
        tmp_path / "ours",
        tiny_llama_dir,
        rows,
        "classification",
        technique=technique,
        objective="classification",
        **extra,
    )

    names = sorted({r["label"] for r in rows})
    set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        pad_token_id=tokenizer.pad_token_id,
    )
    if technique == "feature-extraction":  # the head, the last layer and the final norm train
        model.requires_grad_(False)
        for module in (model.score, model.model.layers[-1], model.model.norm):
            module.requires_grad_(True)

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)
        enc["labels"] = [names.index(v) for v in batch["label"]]
        return enc

    train = _dataset(rows).map(encode, batched=True, remove_columns=["text", "label"])
    trainer = Trainer(
        model=model,
        args=_reference_args(TrainingArguments, tmp_path / "ref"),
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    _assert_same(ours, (_reference_losses(trainer), _saved(model, tmp_path / "ref-final")))


# --------------------------------------------------------------------------- packing on vs off


def _per_document_token_losses(model, rows: list[dict]) -> dict[tuple, list[float]]:
    """{document's token ids: the loss of each of its targets}, one row at a time, whatever the packing."""
    from kubetune_trainer.packing import IGNORE, PaddingCollator, install_block_diagonal_attention

    handle = install_block_diagonal_attention(model)
    out: dict[tuple, list[float]] = {}
    try:
        for row in rows:
            batch = PaddingCollator(pad_token_id=0)([row])
            labels = batch.pop("labels")
            with torch.no_grad():
                logits = model(**batch).logits[0]
            losses = torch.nn.functional.cross_entropy(
                logits[:-1], labels[0, 1:], ignore_index=IGNORE, reduction="none"
            )
            positions = row.get("position_ids", list(range(len(row["input_ids"]))))
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            for start, end in pairwise(starts):
                targets = [i for i in range(start, end - 1) if labels[0, i + 1] != IGNORE]
                out[tuple(row["input_ids"][start:end])] = [round(losses[i].item(), 5) for i in targets]
    finally:
        handle.remove()
    return out


@pytest.mark.parametrize("objective", ["causal_lm", "instruction"])
def test_packing_changes_no_token_loss(tiny_llama_dir, tokenizer, objective):
    """The recipes' own data preparation with packing on and off: every document's every target token gets
    the same loss (no attention across the documents of a packed row)."""
    import importlib

    from transformers import AutoModelForCausalLM

    from kubetune_trainer.context import TaskData

    recipe = importlib.import_module(f"kubetune_trainer.objectives.{objective}")
    if objective == "causal_lm":
        rows, fmt = [{"text": t} for t in sample_corpus(24, seed=9)], "text"
    else:
        rows, fmt = _instruction_rows("messages")[:24], "messages"
    task = TaskData(name="d", format=fmt, weight=1.0, train=_dataset(rows))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    packed, _ = recipe.prepare([task], tokenizer, 128, True, SEED)
    unpacked, _ = recipe.prepare([task], tokenizer, 128, False, SEED)
    assert len(packed) < len(unpacked)  # several documents per row
    with_packing = _per_document_token_losses(model, list(packed))
    without = _per_document_token_losses(model, list(unpacked))
    assert with_packing.keys() == without.keys()
    for document, losses in without.items():
        assert with_packing[document] == pytest.approx(losses, abs=1e-4), tokenizer.decode(document)
