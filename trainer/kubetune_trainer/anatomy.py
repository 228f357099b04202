"""Where the parts of a transformers model are, whatever its architecture: the stack of transformer blocks,
the head, the final norm, the decoder under PEFT and task wrappers. Techniques and packing find parts here."""

from __future__ import annotations

from torch import nn

CLASSIFICATION_HEAD_NAMES = ("score", "classifier")
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")


def decoder_layers(model) -> nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList in the model (model.layers for Llama,
    transformer.h for GPT-2, encoder.layer for BERT)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no transformer layers found")
    return max(lists, key=len)


def classification_head(model) -> nn.Module | None:
    for name in CLASSIFICATION_HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def head(model, task: str) -> nn.Module:
    """The output layer: the classification head for sequence classification, else lm_head."""
    if task == "sequence-classification":
        module = classification_head(model)
        if module is None:
            raise ValueError(f"{type(model).__name__} has no classification head named {CLASSIFICATION_HEAD_NAMES}")
        return module
    module = model.get_output_embeddings()
    if module is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head)")
    return module


def final_norm(model) -> nn.Module | None:
    base = getattr(model, model.base_model_prefix, model)
    for name in FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def decoder_of(model):
    """The transformer stack (e.g. LlamaModel) under PEFT / task-head wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base
