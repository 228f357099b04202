"""The memory plan (kubetune_trainer.plan): parameter counts from config.json equal the models transformers
builds, the exact parts equal the tensors a training step allocates, the activation model stays within 15 % of
peaks measured on a GPU, and the strategy `auto` picks follows from the numbers."""

from __future__ import annotations

import pytest
import torch
from tests.fixtures import TECHNIQUE_SECTIONS

from kubetune.api.constants import Precision, Technique
from kubetune.api.v1alpha1 import Spec
from kubetune_trainer import plan as P

LLAMA_1B = dict(
    model_type="llama",
    hidden_size=2048,
    num_hidden_layers=16,
    vocab_size=128256,
    intermediate_size=8192,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    tie_word_embeddings=True,
)
LLAMA_8B = dict(
    model_type="llama",
    hidden_size=4096,
    num_hidden_layers=32,
    vocab_size=128256,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)
LLAMA_70B = dict(
    model_type="llama",
    hidden_size=8192,
    num_hidden_layers=80,
    vocab_size=128256,
    intermediate_size=28672,
    num_attention_heads=64,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)
GiB = P.GiB


def _spec(technique="full", objective="causal-lm", **extra) -> Spec:
    raw = {
        "technique": technique,
        "objective": objective,
        "model": {"uri": "file:///m"},
        "datasets": [
            {"uri": "file:///d.jsonl", "format": "classification" if objective == "classification" else "text"}
        ],
    }
    raw.update(extra)
    return Spec.model_validate(raw).resolved()


def _meta_count(model_type: str, **config) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [
        dict(
            model_type="llama",
            hidden_size=64,
            num_hidden_layers=2,
            vocab_size=300,
            intermediate_size=176,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        ),
        LLAMA_1B,
        dict(
            model_type="mistral",
            hidden_size=256,
            num_hidden_layers=3,
            vocab_size=1000,
            intermediate_size=688,
            num_attention_heads=8,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        ),
        dict(
            model_type="qwen2",
            hidden_size=256,
            num_hidden_layers=3,
            vocab_size=1000,
            intermediate_size=688,
            num_attention_heads=8,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
        dict(
            model_type="llama",
            hidden_size=128,
            num_hidden_layers=2,
            vocab_size=500,
            intermediate_size=256,
            num_attention_heads=4,
            num_key_value_heads=4,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
        ),
    ],
    ids=["tiny-llama", "llama-1b", "mistral", "qwen2-biases", "llama-biases"],
)
def test_parameter_count_from_config_equals_the_model(config):
    params = dict(config)
    model_type = params.pop("model_type")
    assert P.ModelShape.from_config(config).total_params == _meta_count(model_type, **params)


def test_unknown_architectures_have_no_plan():
    with pytest.raises(P.PlanError, match="no hidden_size"):
        P.ModelShape.from_config({"model_type": "whisper", "d_model": 512})
    with pytest.raises(P.PlanError, match="mixture-of-experts"):
        P.ModelShape.from_config(LLAMA_8B | {"num_local_experts": 8})


@pytest.mark.parametrize(
    "technique, own_section",
    [(t.value, TECHNIQUE_SECTIONS[t.value]) for t in Technique if t != Technique.QLORA]
    # with the paper's reparameterisation MLP, which trains too
    + [("prefix-tuning", {"prefixTuning": {"virtualTokens": 5, "projection": True}})],
)
def test_trainable_parameters_equal_what_the_technique_trains(tiny_llama_dir, technique, own_section):
    import json

    from kubetune_trainer.modeling import load_for_training

    spec = Spec.model_validate(
        {
            "technique": technique,
            "model": {"uri": tiny_llama_dir.as_uri()},
            "datasets": [{"uri": "file:///d.jsonl", "format": "text"}],
            "hyperparameters": {"precision": "fp32"},
            **own_section,
        }
    ).resolved()
    model = load_for_training(spec, tiny_llama_dir, "causal-lm").model
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert P.trainable_params(P.ModelShape.from_config(config), spec)[0] == trained


@pytest.mark.parametrize("technique", ["full", "lora", "feature-extraction"])
def test_exact_parts_equal_the_tensors_of_a_training_step(tiny_llama_dir, technique):
    """fp32 on the CPU: weights + gradients + AdamW state after one step, byte for byte."""
    import json

    from transformers import Trainer, TrainingArguments

    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer

    extra = (
        {"lora": {"rank": 4}}
        if technique == "lora"
        else {"featureExtraction": {"trainableLayers": 1}}
        if technique == "feature-extraction"
        else {}
    )
    spec = Spec.model_validate(
        {
            "technique": technique,
            "model": {"uri": tiny_llama_dir.as_uri()},
            "datasets": [{"uri": "file:///d.jsonl", "format": "text"}],
            "hyperparameters": {"precision": "fp32"},
            **extra,
        }
    ).resolved()
    model = load_for_training(spec, tiny_llama_dir, "causal-lm").model
    trainer = prepare_trainer(
        Trainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none")), spec
    )
    trainer.create_optimizer()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    e = P.estimate(P.ModelShape.from_config(config), spec, "ddp", 1, None, precision=Precision.FP32, liger=False)

    def size(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    assert e.weights == size(model.parameters())
    assert e.gradients == size(p.grad for p in model.parameters() if p.grad is not None)
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    assert e.optimizer == size(state)


# Peaks measured on an H200 with plain transformers + PEFT (random weights, bf16, sdpa, AdamW; "padded" = batch 8
# of documents up to 2048 tokens, "packed" = 4 rows of 2048). Full fine-tuning was measured in pure bf16 (8 bytes
# per parameter: weights, gradients and AdamW moments in bf16), which `plain_bytes` accounts for.
MEASURED = [
    ("lora padded", LLAMA_1B, "lora", 8, False, 70.6),
    ("lora packed", LLAMA_1B, "lora", 4, False, 36.8),
    ("lora liger padded", LLAMA_1B, "lora", 8, True, 38.1),
    ("lora liger packed", LLAMA_1B, "lora", 4, True, 20.4),
    ("qlora padded", LLAMA_1B, "qlora", 8, False, 82.5),
    ("qlora liger packed", LLAMA_1B, "qlora", 4, True, 23.2),
    ("full padded", LLAMA_1B, "full", 8, False, 63.3),
    ("full packed", LLAMA_1B, "full", 4, False, 35.3),
    ("full liger packed", LLAMA_1B, "full", 4, True, 18.2),
    ("8b qlora padded batch 2", LLAMA_8B, "qlora", 2, False, 60.1),
    ("8b qlora liger packed 1 x 2048", LLAMA_8B, "qlora", 1, True, 27.1),
]


@pytest.mark.parametrize(
    ("name", "config", "technique", "batch", "liger", "measured"), MEASURED, ids=[m[0] for m in MEASURED]
)
def test_activation_model_within_15_percent_of_measured_peaks(name, config, technique, batch, liger, measured):
    extra = {"hyperparameters": {"batchSize": batch, "maxSeqLength": 2048, "ligerKernel": liger}}
    if technique in ("lora", "qlora"):
        extra["lora"] = {"rank": 16, "alpha": 32, "dropout": 0.05}
    spec = _spec(technique, **extra)
    estimate = P.plan(spec, config, gpu_memory=141 * GiB, precision=Precision.BF16, liger=liger).estimates[0]
    total = estimate.total
    if technique == "full":
        plain_bytes = P.ModelShape.from_config(config).total_params * 8
        total -= (estimate.weights + estimate.gradients + estimate.optimizer - plain_bytes) * (1 + P.FRAGMENTATION)
    assert abs(total / GiB / measured - 1) <= 0.15, (name, total / GiB, measured)


def test_auto_picks_ddp_fsdp_or_offload_from_the_numbers():
    lora = _spec("lora", resources={"gpus": 4}, hyperparameters={"batchSize": 1})
    assert P.plan(lora, LLAMA_8B, gpu_memory=80 * GiB).chosen.strategy == "ddp"
    full = _spec("full", resources={"gpus": 4}, hyperparameters={"batchSize": 2})
    chosen = P.plan(full, LLAMA_8B, gpu_memory=80 * GiB)
    assert chosen.chosen.strategy == "fsdp" and chosen.chosen.fits
    assert "sharded over 4" in chosen.why
    huge = _spec("full", resources={"gpus": 8}, hyperparameters={"batchSize": 1, "maxSeqLength": 512})
    assert P.plan(huge, LLAMA_70B, gpu_memory=80 * GiB).chosen.fits is False  # offload not allowed by the spec
    offload = _spec(
        "full",
        resources={"gpus": 8},
        hyperparameters={"batchSize": 1, "maxSeqLength": 512},
        distributed={"cpuOffload": True},
    )
    assert P.plan(offload, LLAMA_70B, gpu_memory=80 * GiB).chosen.strategy == "fsdp+offload"
    # One process has nothing to shard: a whole replica, or CPU offload over a one-rank mesh.
    one_gpu = _spec("full", resources={"gpus": 1}, distributed={"strategy": "auto", "cpuOffload": True})
    assert [e.strategy for e in P.plan(one_gpu, LLAMA_8B, gpu_memory=80 * GiB).estimates] == ["ddp", "fsdp+offload"]
    unknown = P.plan(full, LLAMA_8B)
    assert unknown.chosen.strategy == "ddp" and unknown.chosen.fits is None and "no GPU memory" in unknown.why


@pytest.mark.parametrize(
    "technique, sections",
    [("prompt-tuning", {}), ("prefix-tuning", {}), ("qlora", {"quantization": {"bits": 8}})],
)
def test_a_spec_that_cannot_be_sharded_is_planned_and_advised_without_fsdp(technique, sections):
    """The API refuses strategy fsdp (and cpuOffload) for these: the plan neither picks nor suggests them."""
    spec = _spec(technique, resources={"gpus": 4}, **sections)
    result = P.plan(spec, LLAMA_70B, gpu_memory=80 * GiB)
    assert [e.strategy for e in result.estimates] == ["ddp"]
    assert result.chosen.fits is False
    assert "fsdp" not in P.advice(result) and "cpuOffload" not in P.advice(result)


def test_one_gpu_takes_cpu_offload_when_a_replica_does_not_fit_and_the_spec_allows_it():
    """An 8B full fine-tune on one 80 GiB GPU: about 128 GiB with ddp (bf16 weights, fp32 masters, AdamW), a few GiB
    with CPU offload (FSDP2 over one rank keeps weights, gradients and the optimizer step in host memory)."""
    from kubetune_trainer import sharding

    hp = {"batchSize": 1, "gradientCheckpointing": True}
    resources = {"gpus": 1, "gpuMemory": "80Gi"}
    allowed = _spec("full", resources=resources, hyperparameters=hp, distributed={"cpuOffload": True})
    result = P.plan(allowed, LLAMA_8B, gpu_memory=80 * GiB)
    ddp, offload = result.estimates
    assert (ddp.strategy, offload.strategy) == ("ddp", "fsdp+offload") and ddp.world == offload.world == 1
    assert ddp.fits is False and offload.fits
    assert result.chosen is offload and "CPU offload" in result.why
    # The same rules as offload over several GPUs: nothing of a full fine-tune's state stays on the GPU but the
    # layers being computed, on one GPU as on two.
    hpr = allowed.hyperparameters
    two = P.estimate(
        P.ModelShape.from_config(LLAMA_8B),
        allowed,
        "fsdp+offload",
        2,
        None,
        precision=Precision(hpr.precision),
        liger=hpr.liger_kernel,
    )
    assert (offload.weights, offload.gradients, offload.optimizer) == (two.weights, two.gradients, two.optimizer)
    assert result.status()["cpuOffload"] is True and result.status()["worldSize"] == 1
    strategy = sharding.choose(allowed, result, world=1)
    assert (strategy.name, strategy.sharded, strategy.offload) == ("fsdp+offload", True, True)

    # strategy fsdp with cpuOffload on one process: offload whatever the plan; plain fsdp there shards nothing.
    explicit = _spec(
        "full", resources=resources, hyperparameters=hp, distributed={"strategy": "fsdp", "cpuOffload": True}
    )
    assert P.plan(explicit, LLAMA_8B, gpu_memory=80 * GiB).chosen.strategy == "fsdp+offload"
    assert sharding.choose(explicit, None, world=1).sharded
    plain_fsdp = _spec("full", resources=resources, hyperparameters=hp, distributed={"strategy": "fsdp"})
    assert P.plan(plain_fsdp, LLAMA_8B, gpu_memory=80 * GiB).chosen.strategy == "ddp"
    assert not sharding.choose(plain_fsdp, None, world=1).sharded

    # Without the spec's consent auto stays on ddp, which does not fit, and the advice names cpuOffload.
    refused = _spec("full", resources=resources, hyperparameters=hp)
    result = P.plan(refused, LLAMA_8B, gpu_memory=80 * GiB)
    assert result.chosen.strategy == "ddp" and result.chosen.fits is False
    text = P.advice(result)
    assert "`distributed.strategy: fsdp, distributed.cpuOffload: true` (about " in text and "on 1 GPU)" in text
    assert sharding.choose(refused, result, world=1).name == "ddp"


def test_a_plan_that_does_not_fit_says_what_to_do():
    full = _spec("full", resources={"gpus": 1}, hyperparameters={"batchSize": 8})
    result = P.plan(full, LLAMA_8B, gpu_memory=80 * GiB)
    assert result.chosen.fits is False
    text = P.advice(result)
    assert text.startswith("needs about ") and "80.0 available" in text and "technique: qlora" in text
    assert result.status()["fits"] is False and result.status()["gpuMemoryGiB"] == 80.0


def test_kubetune_plan_command(tmp_path, capsys):
    import json

    from kubetune.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA_8B))
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "big"},
                "spec": {
                    "technique": "full",
                    "model": {"uri": "hf://meta-llama/Llama-3.1-8B"},
                    "datasets": [{"uri": "s3://data/x.jsonl", "format": "text"}],
                    "hyperparameters": {"batchSize": 1, "gradientCheckpointing": True},
                },
            }
        )
    )
    assert main(["plan", str(job), "--config", str(config), "--gpus", "8", "--gpu-memory", "80Gi"]) == 0
    out = capsys.readouterr().out
    assert "8.03B parameters" in out and "* fsdp " in out and "fits" in out
    assert main(["plan", str(job), "--config", str(config), "--gpus", "1", "--gpu-memory", "80Gi"]) == 1
    out = capsys.readouterr().out
    assert "needs about" in out and "distributed.cpuOffload: true" in out and "  fsdp+offload  world 1 " in out
    assert main(["plan", str(job), "--config", str(config)]) == 0  # no GPU memory: a plan without a verdict
    config.write_text(json.dumps({"model_type": "whisper"}))
    assert main(["plan", str(job), "--config", str(config)]) == 2
    assert "not a decoder-only transformer" in capsys.readouterr().err


def test_qlora_under_fsdp_shards_its_adapter_with_the_quantized_base():
    """qlora is sharded once LoRA is added: the 4-bit base and the adapter (its gradients and optimizer state) are
    split over the ranks, and offloaded together. lora's adapter, added to a base sharded as it loads, stays whole."""
    shape = P.ModelShape.from_config(LLAMA_8B)
    one = dict(gpu_memory=None, precision=Precision.BF16, liger=False)
    qlora, lora = _spec("qlora"), _spec("lora")
    whole, sharded = P.estimate(shape, qlora, "ddp", 1, **one), P.estimate(shape, qlora, "fsdp", 4, **one)
    assert sharded.gradients == pytest.approx(whole.gradients / 4) and whole.gradients > 0
    assert sharded.optimizer == pytest.approx(whole.optimizer / 4)
    assert sharded.weights < whole.weights / 2  # the quantized base and the adapter, plus one gathered layer or two
    offloaded = P.estimate(shape, qlora, "fsdp+offload", 4, **one)
    assert offloaded.gradients == offloaded.optimizer == 0
    lora_whole, lora_sharded = P.estimate(shape, lora, "ddp", 1, **one), P.estimate(shape, lora, "fsdp", 4, **one)
    assert lora_sharded.gradients == pytest.approx(lora_whole.gradients)


def test_qlora_under_fsdp_counts_the_whole_model_each_gpu_holds_while_it_loads():
    """qlora under fsdp loads the whole 4-bit model onto every GPU before it is sharded (transformers cannot shard a
    weight whose shape the quantization changes): 70B on four 24 GiB GPUs trains in under 20 GiB each but cannot load.
    The plan says so instead of saying it fits."""
    spec = _spec(
        "qlora",
        resources={"gpus": 4},
        distributed={"strategy": "fsdp"},
        hyperparameters={"batchSize": 1, "maxSeqLength": 512, "gradientCheckpointing": True},
    )
    result = P.plan(spec, LLAMA_70B, gpu_memory=24 * GiB, liger=True)
    chosen = result.chosen
    assert chosen.strategy == "fsdp"
    assert chosen.training < 0.9 * 24 * GiB < chosen.loading  # it would train, but it cannot load
    assert 30 * GiB < chosen.loading < 45 * GiB  # 70B at about half a byte per weight, plus the runtime
    assert chosen.total == chosen.loading and chosen.fits is False
    assert "while the whole model loads" in "\n".join(P.describe(result))
    assert "technique: qlora" not in P.advice(result)  # it is qlora already
    # ddp and full fine-tuning load nothing whole beyond what they train with
    ddp = P.plan(_spec("qlora", resources={"gpus": 2}), LLAMA_70B, gpu_memory=80 * GiB).estimates[0]
    assert ddp.strategy == "ddp" and ddp.loading == 0
    full = P.plan(
        _spec("full", resources={"gpus": 2}, distributed={"strategy": "fsdp"}), LLAMA_70B, gpu_memory=80 * GiB
    )
    assert full.chosen.loading == 0
