"""qlora: LoRA on a frozen base quantized to 4 or 8 bits by bitsandbytes (spec.quantization).

CPU caveat (bitsandbytes 0.50): on CPUs with AVX512-BF16, a no-grad forward in eval mode (an
evaluation pass) repacks each Linear4bit's weights into an inference layout, after which backward
passes silently drop the input gradient (40-60% error in the LoRA gradients). We switch that repacking
off on every Linear4bit; the test in tests/trainer/techniques compares gradients before and after
an evaluation pass.

Under FSDP (distributed.strategy fsdp, FSDP-QLoRA as Answer.AI and bitsandbytes do it): FSDP shards only floating
point tensors, so the 4-bit weights are packed into a float storage (bnb_4bit_quant_storage) of the compute dtype,
bf16 on a GPU, the dtype the rest of the frozen base is in; bitsandbytes keeps each layer's quantization state on the
module, where its forward finds it again after FSDP has gathered the packed weight. transformers' load-time sharding
cannot hold such weights (it records each weight's unquantized shape before the 4-bit packing replaces it, and FSDP's
first forward fails: "start (0) + length (1024) exceeds dimension size (32)"), and PEFT cannot wrap a layer whose
weight is already sharded (it reads bitsandbytes attributes off the weight). So the base loads whole on every process,
quantized on that process's device, LoRA is added as without FSDP (prepare_model_for_kbit_training included), and
kubetune_trainer.sharding shards the whole (SHARD_AFTER_APPLY): the packed base, the norms and embeddings, and the
adapter. Each process briefly holds the whole 4-bit model while it loads. 8-bit weights (int8 storage) cannot be
sharded.
"""

from __future__ import annotations

import os

from kubetune_trainer.techniques import lora

PEFT = True
TRAINS_BASE_WEIGHTS = False
# Sharded once LoRA is added, not as the model loads (see the docstring).
SHARD_AFTER_APPLY = True


def quantization_config(spec, sharded: bool = False):
    from transformers import BitsAndBytesConfig

    from kubetune_trainer.errors import UserError
    from kubetune_trainer.modeling import compute_dtype

    quant = spec.resolved().quantization
    # Heads stay unquantized: lm_head is the output layer, score/classifier are new and train.
    keep = ["lm_head", "score", "classifier"]
    if quant.bits == 8:
        if sharded:
            raise UserError(
                "spec.quantization.bits: 8-bit weights are held as int8, which FSDP cannot shard; use bits 4 "
                "with distributed.strategy fsdp, or distributed.strategy ddp"
            )
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    # Sharded: the packed 4-bit weights in a float storage FSDP can shard, the compute dtype the other frozen
    # parameters are in. Otherwise bitsandbytes' own uint8.
    storage = {"bnb_4bit_quant_storage": compute_dtype(spec)} if sharded else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=getattr(quant.type, "value", quant.type),
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(spec),
        llm_int8_skip_modules=keep,
        **storage,
    )


def load_kwargs(spec, strategy=None) -> dict:
    import torch

    # Quantized weights are created on the device they will train on: each process's own GPU. Under FSDP too: the
    # model loads whole on every process and is sharded afterwards (SHARD_AFTER_APPLY).
    if torch.cuda.is_available():
        device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    else:
        device_map = {"": "cpu"}
    sharded = strategy is not None and strategy.sharded
    return {"quantization_config": quantization_config(spec, sharded=sharded), "device_map": device_map}


def disable_cpu_weight_repacking(model) -> int:
    """Turn off bitsandbytes' CPU inference repacking (drops input gradients afterwards); undo it where
    it already happened. Returns how many layers were touched."""
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            quant_state = getattr(module.weight, "quant_state", None)
            if quant_state is not None and getattr(quant_state, "packing_format_for_cpu", False):
                from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, quant_state
                )
            count += 1
    return count


def apply(model, spec, task: str):
    from peft import prepare_model_for_kbit_training

    disable_cpu_weight_repacking(model)
    # Casts norms/embeddings to fp32 and freezes the base; gradient checkpointing only if asked for
    # (PEFT's default turns it on).
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=spec.hyperparameters.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    return lora.apply(model, spec, task)


# The memory plan's activations beyond LoRA's (x hidden bytes per token per layer, fitted to an H200's peaks): the
# fp32 norms prepare_model_for_kbit_training keeps and the dequantisation buffers.
PLAN_ACTIVATION = 16


def plan_parameters(shape, spec, head: int) -> tuple[int, int]:
    return lora.plan_parameters(shape, spec, head)


def plan_activation(spec) -> int:
    return lora.plan_activation(spec) + PLAN_ACTIVATION


def plan_quantized_bits(spec) -> int | None:
    """Bits the frozen base's linear layers are held in."""
    return spec.quantization.bits if spec.quantization else None


def load_result(out_dir, base_dir, task: str, spec):
    """The saved result loaded the way a user loads it (the adapter names its base; the base quantized as the
    spec says)."""
    from kubetune_trainer.techniques import load_peft_result

    model = load_peft_result(out_dir, task, **load_kwargs(spec))
    # an evaluation forward would otherwise repack the 4-bit weights on AVX512-BF16 CPUs (see the docstring)
    disable_cpu_weight_repacking(model)
    return model
