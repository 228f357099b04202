"""The optimised training paths compute what the plain path computes (kubetune_trainer.speed, packing).

- A packed row through the trainer's load path (attention kernel from the spec, block mask from the
  packing hook) gives the same loss as the plain transformers model on the same examples padded one
  per row: for sdpa, eager and flex attention (flex run eagerly: its compiled kernel is the GPU path).
- ligerKernel on a CPU is a logged no-op: the model is the plain one, bit for bit. On a GPU the
  wiring (which modules Liger patches, the fused loss kept off when lm_head carries a LoRA) is checked
  here without running its Triton kernels; the kernels' numbers are checked by bench/gpu_run.sh.
- torchCompile through the Trainer gives the eager loss (graph capture with the aot_eager backend:
  inductor's code generation alone takes ~40 s for the tiny model on these CPUs).
"""

from __future__ import annotations

import logging

import pytest
import torch

from kubetune.api.v1alpha1 import Spec
from kubetune_trainer import speed
from kubetune_trainer.modeling import load_for_training
from kubetune_trainer.packing import (
    IGNORE,
    PaddingCollator,
    block_diagonal_mask,
    flex_block_mask,
    install_block_diagonal_attention,
    pack_examples,
)

TEXTS = [
    "alice sees the red cat in the park .",
    "after two comes three , said bob .",
    "the owl is gold and lives near the hill .",
    "carol likes the blue dog in the garden .",
    "the yak is pink and lives near the river .",
]


def make_spec(technique="full", **hyperparameters) -> Spec:
    hp = {"precision": "fp32", "seed": 0, **hyperparameters}
    spec = {
        "technique": technique,
        "model": {"uri": "file:///models/tiny"},
        "datasets": [{"uri": "file:///data/train.jsonl", "format": "text"}],
        "hyperparameters": hp,
    }
    if technique in ("lora", "qlora"):
        spec["lora"] = {"rank": 8, "alpha": 16.0, "dropout": 0.0}
    return Spec.model_validate(spec)


@pytest.fixture(scope="module")
def documents(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    docs = [tok(t)["input_ids"] + [tok.eos_token_id] for t in TEXTS]
    return tok, docs


def plain_loss(model_dir, docs, pad_id):
    """The reference: plain transformers (default kernel), one example per row, padded, causal-LM loss."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = PaddingCollator(pad_id)([{"input_ids": d, "labels": d} for d in docs])
    with torch.no_grad():
        return model(**batch).loss


def packed_batch(docs, pad_id, max_length=64):
    packed = pack_examples({"input_ids": docs, "labels": docs}, max_length=max_length)
    rows = [dict(zip(packed, values, strict=True)) for values in zip(*packed.values(), strict=True)]
    assert len(rows) >= 2, "the test wants several packed rows (and padding) in one batch"
    return PaddingCollator(pad_id)(rows)


@pytest.fixture
def eager_flex(monkeypatch):
    """Run transformers' flex attention without torch.compile (the kernel's math, minus the ~40 s CPU compile)."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "__call__", lambda self: flex_attention)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex"])
def test_packed_loss_equals_plain_loss(tiny_llama_dir, documents, attention, request):
    tok, docs = documents
    if attention == "flex":
        if not speed.flex_attention_available():
            pytest.skip("this torch has no flex attention")
        request.getfixturevalue("eager_flex")
    reference = plain_loss(tiny_llama_dir, docs, tok.pad_token_id)

    spec = make_spec(attention=attention)
    model = load_for_training(spec, tiny_llama_dir, "causal-lm", packed=True).model.eval()
    assert model.config._attn_implementation == speed.ATTENTION_KERNELS[attention]
    install_block_diagonal_attention(model)
    batch = packed_batch(docs, tok.pad_token_id, max_length=24)
    with torch.no_grad():
        loss = model(**batch).loss
    # Same targets (the first token of an example is never one), same mean.
    assert int((batch["labels"][:, 1:] != IGNORE).sum()) == sum(len(d) - 1 for d in docs)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)

    # Without the packing hook the examples see each other and the loss moves: the check can fail.
    model_without_hook = load_for_training(spec, tiny_llama_dir, "causal-lm", packed=True).model.eval()
    with torch.no_grad():
        leaky = model_without_hook(**{k: v for k, v in batch.items() if k != "attention_mask"}).loss
    assert abs(float(leaky) - float(reference)) > 1e-3


def test_flex_block_mask_is_the_block_diagonal_mask():
    """The BlockMask rule, run through torch's flex attention, equals sdpa with the dense mask."""
    if not speed.flex_attention_available():
        pytest.skip("this torch has no flex attention")
    from torch.nn.attention.flex_attention import flex_attention

    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1]])
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, positions.shape[1], 8) for _ in range(3))
    dense = block_diagonal_mask(positions)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    got = flex_attention(q, k, v, block_mask=flex_block_mask(positions))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the dense mask is what it claims: example 2 of row 0 (tokens 4-6) sees only tokens 4..i
    assert dense[0, 0, 6].nonzero().flatten().tolist() == [4, 5, 6]


@pytest.mark.parametrize("liger", [True, False])
def test_liger_switch_on_cpu_is_a_logged_noop(tiny_llama_dir, documents, liger, caplog):
    tok, docs = documents
    reference = plain_loss(tiny_llama_dir, docs, tok.pad_token_id)
    with caplog.at_level(logging.INFO, logger="kubetune_trainer"):
        model = load_for_training(make_spec(ligerKernel=liger), tiny_llama_dir, "causal-lm").model.eval()
    assert not getattr(model, "kubetune_liger", False)
    assert "forward" not in vars(model)  # the class's own forward, not Liger's fused-loss forward
    expected_reason = "no GPU" if liger else "ligerKernel: false"
    assert any("liger kernels" in r.getMessage() and expected_reason in r.getMessage() for r in caplog.records)
    batch = PaddingCollator(tok.pad_token_id)([{"input_ids": d, "labels": d} for d in docs])
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, reference, rtol=0, atol=0)


@pytest.fixture
def restore_llama_module(monkeypatch):
    """Liger patches transformers' llama module globals; put them back after the test."""
    from transformers.models.llama import modeling_llama

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    return modeling_llama


@pytest.mark.parametrize("technique,lm_head_lora", [("full", False), ("lora", True)])
def test_liger_wiring_as_on_a_gpu(tiny_llama_dir, restore_llama_module, technique, lm_head_lora):
    """What apply_liger patches when it decides to run (gpu=True); the kernels are not executed on CPU."""
    if not speed.liger_available():
        pytest.skip("liger-kernel is not installed")
    from liger_kernel.transformers.model.llama import lce_forward
    from transformers import AutoModelForCausalLM

    spec = make_spec(technique)
    if lm_head_lora:
        spec = Spec.model_validate({**spec.to_wire(), "lora": {"rank": 8, "targetModules": "q_proj,lm_head"}})
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert speed.apply_liger(model, spec, "causal-lm", gpu=True)
    assert model.kubetune_liger
    fused = "forward" in vars(model) and model.forward.__func__ is lce_forward
    assert fused is not lm_head_lora  # Liger's fused loss would skip a LoRA on lm_head
    assert restore_llama_module.apply_rotary_pos_emb.__module__.startswith("liger_kernel")
    layer = model.model.layers[0]
    assert layer.mlp.forward.__func__.__module__.startswith("liger_kernel")  # SwiGLU
    assert layer.input_layernorm.forward.__func__.__module__.startswith("liger_kernel")  # RMSNorm
    # never for other tasks, never when switched off
    assert not speed.liger_decision(spec, "llama", "sequence-classification", gpu=True)[0]
    assert not speed.liger_decision(make_spec(ligerKernel=False), "llama", "causal-lm", gpu=True)[0]
    assert not speed.liger_decision(spec, "no-such-architecture", "causal-lm", gpu=True)[0]


def test_attention_choice():
    auto = make_spec()
    assert speed.attention_implementation(auto, packed=True, gpu=True)[0] == "flex_attention"
    assert speed.attention_implementation(auto, packed=True, gpu=False)[0] == "sdpa"
    assert speed.attention_implementation(auto, packed=False, gpu=True)[0] is None  # the model's default
    assert speed.attention_implementation(make_spec(attention="eager"), packed=True, gpu=True)[0] == "eager"
    assert speed.attention_implementation(make_spec(attention="sdpa"), packed=True, gpu=True)[0] == "sdpa"


def test_torch_compile_through_the_trainer_gives_the_eager_loss(tiny_llama_dir, documents, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    tok, docs = documents
    packed = Dataset.from_dict(pack_examples({"input_ids": docs, "labels": docs}, max_length=24))
    spec = make_spec(torchCompile=True)
    compile_kwargs = speed.compile_args(spec)
    assert compile_kwargs == {"torch_compile": True}

    losses = {}
    for name, extra in {"eager": {}, "compiled": {**compile_kwargs, "torch_compile_backend": "aot_eager"}}.items():
        model = load_for_training(spec, tiny_llama_dir, "causal-lm", packed=True).model
        install_block_diagonal_attention(model)
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            max_steps=2,
            per_device_train_batch_size=len(packed),
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            seed=0,
            remove_unused_columns=False,
            dataloader_pin_memory=False,
            disable_tqdm=True,
            **extra,
        )
        trainer = Trainer(model=model, args=args, train_dataset=packed, data_collator=PaddingCollator(tok.pad_token_id))
        trainer.train()
        losses[name] = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        if name == "compiled":
            assert "_orig_mod" in dict(trainer.model_wrapped.named_children()) or hasattr(
                trainer.model_wrapped, "_orig_mod"
            )
    assert len(losses["eager"]) == 2
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)


def test_gradient_checkpointing_reaches_the_trainer_and_changes_no_loss(tiny_llama_dir, tmp_path):
    """gradientCheckpointing trades compute for memory: the Trainer turns it on (transformers 5's
    `activation_checkpointing`, non-reentrant so frozen embeddings work), and the losses stay the same."""
    from tests.trainer.objectives.recipes import HYPERPARAMETERS, recipe_context, write_jsonl
    from transformers import TrainerCallback

    from kubetune_trainer.args import training_args
    from kubetune_trainer.objectives import causal_lm

    class Seen(TrainerCallback):
        def __init__(self):
            self.losses, self.checkpointing = [], None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.checkpointing = model.is_activation_checkpointing

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                self.losses.append(logs["loss"])

    data = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in TEXTS * 4])
    seen = {}
    for flag in (False, True):
        seen[flag] = Seen()
        hyperparameters = HYPERPARAMETERS | {"maxSteps": 3, "learningRate": 1e-3, "gradientCheckpointing": flag}
        ctx = recipe_context(
            tmp_path,
            tiny_llama_dir,
            objective="causal-lm",
            technique="full",
            steps=3,
            lr=1e-3,
            datasets=[{"uri": data, "format": "text"}],
            callbacks=[seen[flag]],
            spec_extra={"hyperparameters": hyperparameters},
            out_name=f"gc-{flag}",
        )
        args = training_args(ctx)
        assert args.activation_checkpointing is flag
        assert args.activation_checkpointing_kwargs == ({"use_reentrant": False} if flag else None)
        causal_lm.run(ctx)
    assert seen[True].checkpointing is True and seen[False].checkpointing is False
    assert len(seen[True].losses) == 3
    assert seen[True].losses == pytest.approx(seen[False].losses, rel=1e-5)
