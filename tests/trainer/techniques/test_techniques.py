"""Every technique x task on the tiny Llama: loading, what trains, that it learns, save and reload.

Each case trains 30 AdamW steps on synthetic text, then checks: the loss fell; exactly the
technique's parameters changed (the frozen ones are bit-identical); save_final's output reloads with
the Auto*/AutoPeft* classes (or the adapter loader) and gives the same logits; mergeAdapter's merged
weights load with AutoModelFor* and give the adapter's logits.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from tests.fixtures import TECHNIQUE_SECTIONS, TECHNIQUE_TRAINS

from kubetune.api.constants import TECHNIQUES, Technique
from kubetune.api.v1alpha1 import Spec
from kubetune_trainer.errors import UserError
from kubetune_trainer.modeling import head_kwargs, load_for_training, save_final
from kubetune_trainer.techniques import module_for
from kubetune_trainer.tiny import sample_corpus

TASKS = ["causal-lm", "sequence-classification"]
# A new technique is tested at once (and fails until tests/fixtures.py knows it).
ALL_TECHNIQUES = [t.value for t in Technique]
STEPS = 30
LEARNING_RATES = {"full": 3e-3, "adapter": 3e-2, "prefix-tuning": 3e-2}
# Next-token loss on a randomly initialised, frozen base: techniques that only steer it (bottlenecks
# on tiny activations, soft prompts, prefixes) move it less in 30 steps (measured: 4-6%) than ones that
# change linear weights or the head (15-90%). A technique that trained nothing would move it 0%.
REQUIRED_FALL = {"adapter": 0.97, "prompt-tuning": 0.97, "prefix-tuning": 0.97}

HEAD = r".*(modules_to_save\.default\.weight|^score\.weight)$"

LOSSES: dict[tuple[str, str], tuple[float, float]] = {}


def make_spec(technique: str, **sections) -> Spec:
    spec = {
        "technique": technique,
        "model": {"uri": "file:///models/tiny"},
        "datasets": [{"uri": "file:///data/train.jsonl", "format": "text"}],
        "hyperparameters": {"precision": "fp32", "seed": 0},
        **TECHNIQUE_SECTIONS[technique],
        "output": {"mergeAdapter": True} if TECHNIQUES[Technique(technique)].mergeable else {},
    }
    spec.update(sections)
    return Spec.model_validate(spec)


def make_batch(tokenizer, task: str, seed: int = 0):
    texts = sample_corpus(16, seed)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    if task == "causal-lm":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    else:
        # Learnable label: the template the sentence came from ("the <animal> is ..." or not).
        batch["labels"] = torch.tensor([int(text.startswith("the ")) for text in texts])
    return dict(batch)


def bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Compare bytes, not values: packed 4-bit weights viewed as floats can hold NaN patterns."""
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def train(model, batch, steps: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def logits_of(model, batch):
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits.float()


def reload(technique: str, task: str, out, base_dir, spec):
    return module_for(technique).load_result(out, base_dir, task, spec)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("technique", ALL_TECHNIQUES)
def test_technique_trains_saves_and_reloads(technique, task, tiny_llama_dir, tmp_path):
    spec = make_spec(technique)
    torch.manual_seed(0)
    loaded = load_for_training(
        spec, tiny_llama_dir, task, label_names=["other", "the"] if task != "causal-lm" else None
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.task == task

    names = {name for name, _ in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    intended = {n for n in names if re.match(TECHNIQUE_TRAINS[technique], n)}
    if task == "sequence-classification":
        intended |= {n for n in names if re.match(HEAD, n)}
    if technique == "full":
        assert trainable == names
    else:
        assert trainable == intended, f"unexpected trainable set: {sorted(trainable ^ intended)[:6]}"
        assert len(trainable) < len(names)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = make_batch(tokenizer, task)
    losses = train(model, batch, STEPS, LEARNING_RATES.get(technique, 1e-2))
    LOSSES[(technique, task)] = (losses[0], losses[-1])
    print(f"\nLOSS {technique:18s} {task:24s} {losses[0]:.3f} -> {losses[-1]:.3f}")
    required = REQUIRED_FALL.get(technique, 0.9) if task == "causal-lm" else 0.5
    assert sum(losses[-5:]) / 5 < required * losses[0], losses

    changed = {name for name, p in model.named_parameters() if not bit_identical(p.detach(), before[name])}
    assert changed == trainable, (
        f"trained but unchanged: {sorted(trainable - changed)[:4]}; "
        f"changed but frozen: {sorted(changed - trainable)[:4]}"
    )

    expected = logits_of(model, batch)
    out = tmp_path / "final"
    save_final(model, tokenizer, spec, out)
    files = {p.name for p in out.iterdir()}
    assert "tokenizer.json" in files
    if module_for(technique).PEFT:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    elif technique == "adapter":
        assert {"bottleneck_adapter.safetensors", "bottleneck_adapter_config.json"} <= files
    else:
        assert "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt")) for name in files)

    reloaded = reload(technique, task, out, tiny_llama_dir, spec)
    torch.testing.assert_close(logits_of(reloaded, batch), expected, rtol=1e-4, atol=1e-4)

    if TECHNIQUES[Technique(technique)].mergeable:
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        causal = task == "causal-lm"
        merged = (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_pretrained(
            out / "merged"
        )
        assert not any(re.match(TECHNIQUE_TRAINS[technique], name) for name, _ in merged.named_parameters())
        if technique != "qlora":
            reference = expected
        else:
            # qlora merges into the unquantized base: compare with the adapter on that same base.
            auto = AutoPeftModelForCausalLM if causal else AutoPeftModelForSequenceClassification
            reference = logits_of(auto.from_pretrained(out, **({} if causal else head_kwargs(out))), batch)
        torch.testing.assert_close(logits_of(merged, batch), reference, rtol=1e-4, atol=1e-4)


def test_adapter_starts_as_the_base_model(tiny_llama_dir):
    """Zero-initialised up-projections: before training the adapted model computes the base's logits."""
    from transformers import AutoModelForCausalLM

    loaded = load_for_training(make_spec("adapter"), tiny_llama_dir, "causal-lm")
    batch = make_batch(loaded.tokenizer, "causal-lm")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.testing.assert_close(logits_of(loaded.model, batch), logits_of(base, batch))


def test_adapter_survives_deepcopy(tiny_llama_dir):
    """TRL copies models for reference policies: the copy's hooks must use the copy's bottlenecks."""
    import copy

    loaded = load_for_training(make_spec("adapter"), tiny_llama_dir, "causal-lm")
    batch = make_batch(loaded.tokenizer, "causal-lm")
    clone = copy.deepcopy(loaded.model)
    train(loaded.model, batch, 3, 1e-2)
    assert not torch.allclose(logits_of(clone, batch), logits_of(loaded.model, batch))


def qlora_lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def grads_around_eval_pass(model, batch):
    first = qlora_lora_grads(model, batch)
    logits_of(model, batch)  # what Trainer.evaluate does: eval mode, no grad
    second = qlora_lora_grads(model, batch)
    return first, second


def test_qlora_gradients_unchanged_by_an_evaluation_pass(tiny_llama_dir):
    """bitsandbytes 0.50 on AVX512-BF16 CPUs repacks 4-bit weights during a no-grad eval forward and
    then drops input gradients; the qlora technique switches that off."""
    loaded = load_for_training(make_spec("qlora"), tiny_llama_dir, "causal-lm")
    batch = make_batch(loaded.tokenizer, "causal-lm")
    first, second = grads_around_eval_pass(loaded.model, batch)
    assert any(g.abs().sum() > 0 for g in first.values())
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-5, atol=1e-7, msg=name)


def test_qlora_gradient_check_detects_the_cpu_repacking_bug(tiny_llama_dir):
    """The check above must be able to fail: with repacking left on, the gradients differ."""
    import bitsandbytes as bnb

    loaded = load_for_training(make_spec("qlora"), tiny_llama_dir, "causal-lm")
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(not m.support_avx512bf16_for_cpu for m in layers)
    from bitsandbytes.nn.modules import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here, nothing to detect")
    for m in layers:
        m.support_avx512bf16_for_cpu = True
    batch = make_batch(loaded.tokenizer, "causal-lm")
    first, second = grads_around_eval_pass(loaded.model, batch)
    worst = max(((second[n] - first[n]).norm() / first[n].norm().clamp_min(1e-12)).item() for n in first)
    print(f"\nqlora gradients after an eval pass with repacking on: worst relative error {worst:.2f}")
    assert worst > 1e-3, f"repacking left on but gradients matched (relative error {worst:.2e})"


def test_pickled_weights_refused_unless_allowed(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for source in tiny_llama_dir.iterdir():
        if source.suffix != ".safetensors":
            (pickled / source.name).write_bytes(source.read_bytes())
    torch.save(load_file(tiny_llama_dir / "model.safetensors"), pickled / "pytorch_model.bin")

    with pytest.raises(UserError, match=r"spec\.model\.allowPickle"):
        load_for_training(make_spec("lora"), pickled, "causal-lm")

    spec = make_spec("lora", model={"uri": "file:///models/tiny", "allowPickle": True})
    loaded = load_for_training(spec, pickled, "causal-lm")
    assert any(p.requires_grad for p in loaded.model.parameters())


def test_folder_without_weights_is_a_user_error(tiny_llama_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    with pytest.raises(UserError, match="no weights"):
        load_for_training(make_spec("full"), tmp_path, "causal-lm")


def test_unknown_lora_target_is_a_user_error(tiny_llama_dir):
    spec = make_spec("lora", lora={"targetModules": "no_such_proj"})
    with pytest.raises(UserError, match=r"spec\.lora\.targetModules"):
        load_for_training(spec, tiny_llama_dir, "causal-lm")


def test_reward_model_has_one_output(tiny_llama_dir):
    loaded = load_for_training(make_spec("lora"), tiny_llama_dir, "sequence-classification", num_labels=1)
    batch = make_batch(loaded.tokenizer, "sequence-classification")
    assert logits_of(loaded.model, batch).shape == (16, 1)


def test_lora_options_dora_rslora_and_module_list(tiny_llama_dir):
    spec = make_spec(
        "lora",
        lora={
            "rank": 4,
            "alpha": 8.0,
            "dropout": 0.0,
            "targetModules": "q_proj,v_proj",
            "useDora": True,
            "useRslora": True,
        },
    )
    model = load_for_training(spec, tiny_llama_dir, "causal-lm").model
    config = model.peft_config["default"]
    assert config.use_dora and config.use_rslora and set(config.target_modules) == {"q_proj", "v_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)


def test_prompt_tuning_initialised_from_text(tiny_llama_dir):
    """initText: the soft prompt starts as the embeddings of that text's tokens (as PEFT tokenizes
    it: with the tokenizer's special tokens, here a leading BOS)."""
    spec = make_spec("prompt-tuning", promptTuning={"virtualTokens": 4, "initText": "the cat is red"})
    loaded = load_for_training(spec, tiny_llama_dir, "causal-lm")
    ids = loaded.tokenizer("the cat is red")["input_ids"]
    assert len(ids) >= 4
    prompt = loaded.model.prompt_encoder["default"].embedding.weight.detach()
    embeddings = loaded.model.get_input_embeddings().weight.detach()
    expected = embeddings[torch.tensor((ids * 4)[:4])]
    torch.testing.assert_close(prompt, expected)


def test_saved_adapter_names_the_hub_model_as_its_base(tiny_llama_dir, tmp_path):
    """The pod's temporary model folder means nothing later: an hf:// base is named by repo id."""
    spec = make_spec("lora", model={"uri": "hf://org/tiny-model@v1"}, output={})
    loaded = load_for_training(spec, tiny_llama_dir, "causal-lm")
    save_final(loaded.model, loaded.tokenizer, spec, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-model"
    assert config["revision"] == "v1"
    assert not (tmp_path / "merged").exists()


def test_saved_adapter_names_the_s3_model_as_its_base(tiny_llama_dir, tmp_path):
    """An s3:// base was fetched to a temporary folder: the adapter names the URI it came from."""
    spec = make_spec("lora", model={"uri": "s3://models/tiny-model/"}, output={})
    loaded = load_for_training(spec, tiny_llama_dir, "causal-lm")
    save_final(loaded.model, loaded.tokenizer, spec, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "s3://models/tiny-model/"
    assert str(tiny_llama_dir) not in (tmp_path / "adapter_config.json").read_text()


def test_qlora_quantization_under_fsdp_packs_4bit_weights_in_a_shardable_storage():
    """Under FSDP the 4-bit weights are packed in the compute dtype (FSDP shards only floating-point tensors); one
    process and ddp keep bitsandbytes' uint8. 8-bit weights (int8) cannot be sharded: a user error naming the field."""
    from kubetune_trainer.sharding import Strategy

    qlora = module_for("qlora")
    spec = make_spec("qlora")
    sharded = qlora.load_kwargs(spec, Strategy("fsdp", 2))["quantization_config"]
    assert sharded.bnb_4bit_quant_storage == torch.float32  # fp32 here: the compute dtype without a GPU
    for whole in (Strategy("ddp", 2), Strategy("fsdp", 1), None):
        assert qlora.load_kwargs(spec, whole)["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    eight_bits = make_spec("qlora", quantization={"bits": 8})
    assert qlora.load_kwargs(eight_bits, Strategy("ddp", 2))["quantization_config"].load_in_8bit
    with pytest.raises(UserError, match=r"spec\.quantization\.bits: 8-bit .* FSDP cannot shard"):
        qlora.load_kwargs(eight_bits, Strategy("fsdp", 2))
