"""spec.hyperparameters.precision, checked in bf16 on the CPU (the device is declared bf16-capable; torch's
CPU autocast and bf16 tensors behave as on a GPU for what is checked here):

- bf16 (mixed) keeps fp32 master weights: one AdamW step at a small learning rate changes every trained
  tensor, where pure bf16 with plain AdamW leaves most entries unchanged (the control shows the check bites);
- bf16-pure accumulates small updates through optimi's Kahan summation, close to fp32;
- the bytes the precision table promises per trained and frozen parameter are the bytes allocated.
"""

from __future__ import annotations

import json

import pytest
import torch

from kubetune.api.constants import Precision
from kubetune.api.v1alpha1 import Spec
from kubetune_trainer import precision
from kubetune_trainer.errors import UserError

SMALL_LR = 2e-5
BF16_GPU = precision.Device(accelerator=True, bf16=True)


def _spec(model_dir, technique="full", **hp) -> Spec:
    return Spec.model_validate(
        {
            "technique": technique,
            "model": {"uri": model_dir.as_uri()},
            "datasets": [{"uri": "file:///data/train.jsonl", "format": "text"}],
            "hyperparameters": {"learningRate": SMALL_LR, "warmupRatio": 0.0, "lrScheduler": "constant", **hp},
        }
    ).resolved()


@pytest.fixture
def bf16_device(monkeypatch):
    monkeypatch.setattr(precision, "detect_device", lambda: BF16_GPU)


def test_plan_per_machine(tiny_llama_dir):
    cpu = precision.Device(accelerator=False, bf16=False)
    old_gpu = precision.Device(accelerator=True, bf16=False)
    assert precision.plan(_spec(tiny_llama_dir), cpu).effective == Precision.FP32
    assert precision.plan(_spec(tiny_llama_dir), old_gpu).effective == Precision.FP32
    mixed = precision.plan(_spec(tiny_llama_dir), BF16_GPU)
    assert mixed.effective == Precision.BF16 and mixed.mixed
    assert mixed.master_dtype == torch.float32 and mixed.compute_dtype == torch.bfloat16
    assert mixed.load_dtype(trains_base_weights=True) == torch.float32
    assert mixed.load_dtype(trains_base_weights=False) == torch.bfloat16
    assert mixed.trainer_flags == {"bf16": True, "fp16": False}
    pure = precision.plan(_spec(tiny_llama_dir, precision="bf16-pure"), BF16_GPU)
    assert pure.master_dtype == torch.bfloat16 and pure.load_dtype(trains_base_weights=True) == torch.bfloat16
    fp16 = precision.plan(_spec(tiny_llama_dir, precision="fp16"), BF16_GPU)
    assert fp16.trainer_flags == {"bf16": False, "fp16": True} and fp16.master_dtype == torch.float32
    with pytest.raises(UserError, match="bf16-pure needs optimizer adamw"):
        precision.plan(_spec(tiny_llama_dir, precision="bf16-pure", optimizer="adamw8bit"), BF16_GPU)


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _unchanged_fraction(before: torch.Tensor, after: torch.Tensor) -> float:
    return (before.to(after.dtype) == after).float().mean().item()


def test_bf16_full_fine_tuning_keeps_every_update(tmp_path, tiny_llama_dir, write_job, bf16_device):
    """`kubetune run` in bf16: the final weights are fp32 masters and one small step moved every tensor."""
    from kubetune_trainer.entrypoint import main
    from kubetune_trainer.tiny import sample_corpus

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(16, seed=3)))
    job = write_job(
        tiny_llama_dir,
        [{"uri": data.as_uri(), "format": "text"}],
        hyperparameters={"maxSteps": 1, "learningRate": SMALL_LR, "precision": "bf16", "packing": False},
    )
    out = tmp_path / "out"
    assert main([str(job), "--output", out.as_uri() + "/"]) == 0
    before = _weights(tiny_llama_dir / "model.safetensors")
    after = _weights(out / "final" / "model.safetensors")
    assert {t.dtype for t in after.values()} == {torch.float32}
    stuck = {name: _unchanged_fraction(before[name], after[name]) for name in before}
    # Every trained tensor moved (an entry may keep its value only where its gradient is zero: rows of the
    # embedding for tokens the batch never used, so that tensor is judged by its used rows).
    assert max(v for k, v in stuck.items() if "embed_tokens" not in k) < 0.01, stuck
    assert stuck["model.embed_tokens.weight"] < 1.0

    # Control: pure bf16 with plain AdamW loses most of the same updates.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    batch = tokenizer(sample_corpus(8, seed=3), return_tensors="pt", padding=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SMALL_LR, weight_decay=0.0)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    head_before = before["lm_head.weight"]
    assert _unchanged_fraction(head_before, model.lm_head.weight.detach()) > 0.3


def _train_steps(model, batches, optimizer_factory, steps: int) -> None:
    optimizer = optimizer_factory(model.parameters())
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()


def test_bf16_pure_accumulates_small_updates(tiny_llama_dir):
    """optimi's Kahan-compensated AdamW in bf16 tracks fp32 AdamW far closer than torch's AdamW in bf16."""
    from optimi import AdamW as KahanAdamW
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.tiny import sample_corpus

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    batches = [tokenizer(sample_corpus(4, seed=s), return_tensors="pt", padding=True) for s in range(4)]
    steps, lr = 12, 1e-4

    def trained(dtype, factory):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=dtype)
        _train_steps(model, batches, factory, steps)
        return model.lm_head.weight.detach().float()

    adamw = dict(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    reference = trained(torch.float32, lambda p: torch.optim.AdamW(p, **adamw))
    start = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).lm_head.weight.detach()
    plain = trained(torch.bfloat16, lambda p: torch.optim.AdamW(p, **adamw))
    kahan = trained(torch.bfloat16, lambda p: KahanAdamW(p, kahan_sum=True, **adamw))

    moved = (reference - start).norm()
    plain_error = (plain - reference).norm() / moved
    kahan_error = (kahan - reference).norm() / moved
    assert kahan_error < 0.5 * plain_error, (kahan_error, plain_error)
    assert kahan_error < 0.2, kahan_error


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize(
    ("technique", "requested"),
    [("full", "bf16"), ("lora", "bf16"), ("full", "bf16-pure"), ("lora", "bf16-pure"), ("full", "fp32")],
)
def test_bytes_per_parameter_match_what_is_allocated(tiny_llama_dir, bf16_device, technique, requested):
    """The precision table's bytes (the memory plan's inputs) against the tensors after one optimizer step."""
    from transformers import Trainer, TrainingArguments

    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer

    spec = _spec(tiny_llama_dir, technique, precision=requested)
    plan = precision.plan(spec)
    model = load_for_training(spec, tiny_llama_dir, "causal-lm").model
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert {p.dtype for p in trained} == {plan.master_dtype}

    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none", **plan.trainer_flags)
    trainer = prepare_trainer(Trainer(model=model, args=args), spec)
    trainer.create_optimizer()
    optimizer = trainer.optimizer
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = [t for p in trained for t in optimizer.state[p].values() if torch.is_tensor(t) and t.dim() > 0]

    n_trained = sum(p.numel() for p in trained)
    assert _bytes(trained) + _bytes(p.grad for p in trained) + _bytes(state) == plan.trained_bytes * n_trained
    n_frozen = sum(p.numel() for p in frozen)
    assert _bytes(frozen) == plan.frozen_bytes * n_frozen
