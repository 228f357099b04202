"""feature-extraction: the base is frozen; the head (lm_head, or score/classifier for classification)
trains, plus the last spec.featureExtraction.trainableLayers transformer layers and, when any layer
trains, the final norm that feeds the head."""

from __future__ import annotations

from torch import nn

# Base weights train: under mixed precision they load in fp32 as master weights (kubetune_trainer.precision).
TRAINS_BASE_WEIGHTS = True

HEAD_NAMES = ("score", "classifier")
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")


def head(model, task: str) -> nn.Module:
    if task == "sequence-classification":
        for name in HEAD_NAMES:
            module = getattr(model, name, None)
            if isinstance(module, nn.Module):
                return module
        raise ValueError(f"{type(model).__name__} has no classification head named {HEAD_NAMES}")
    module = model.get_output_embeddings()
    if module is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head)")
    return module


def decoder_layers(model) -> nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList in the model (model.layers for Llama,
    transformer.h for GPT-2, encoder.layer for BERT)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no transformer layers found")
    return max(lists, key=len)


def final_norm(model) -> nn.Module | None:
    base = getattr(model, model.base_model_prefix, model)
    for name in FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def apply(model, spec, task: str):
    from kubetune_trainer.errors import UserError

    trainable_layers = spec.feature_extraction.trainable_layers
    for param in model.parameters():
        param.requires_grad_(False)
    head(model, task).requires_grad_(True)
    if trainable_layers > 0:
        layers = decoder_layers(model)
        if trainable_layers > len(layers):
            raise UserError(
                f"spec.featureExtraction.trainableLayers: {trainable_layers} is more than the model's "
                f"{len(layers)} layers"
            )
        for layer in layers[len(layers) - trainable_layers :]:
            layer.requires_grad_(True)
        norm = final_norm(model)
        if norm is not None:
            norm.requires_grad_(True)
    return model
