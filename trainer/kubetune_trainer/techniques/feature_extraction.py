"""feature-extraction: the base is frozen; the head (lm_head, or score/classifier for classification)
trains, plus the last spec.featureExtraction.trainableLayers transformer layers and, when any layer
trains, the final norm that feeds the head."""

from __future__ import annotations

PEFT = False  # saved as a whole model
# Base weights train: under mixed precision they load in fp32 as master weights (kubetune_trainer.precision).
TRAINS_BASE_WEIGHTS = True


def apply(model, spec, task: str):
    from kubetune_trainer.anatomy import decoder_layers, final_norm, head
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


def plan_parameters(shape, spec, head: int) -> tuple[int, int]:
    """For the memory plan: (parameters that train, of which the technique adds beside the base)."""
    layers = spec.feature_extraction.trainable_layers
    block = shape.block_linear_params + shape.block_other_params
    own_head = head if head else shape.vocab * shape.hidden
    # the head, the last `layers` blocks and, when any block trains, the final norm
    return own_head + layers * block + (shape.hidden if layers else 0), 0


def load_result(out_dir, base_dir, task: str, spec):
    """The saved result loaded the way a user loads it."""
    from kubetune_trainer.techniques import load_whole_result

    return load_whole_result(out_dir, task)
