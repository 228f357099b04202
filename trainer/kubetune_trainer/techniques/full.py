"""full: every parameter of the model trains."""

from __future__ import annotations

PEFT = False
# Base weights train: under mixed precision they load in fp32 as master weights (kubetune_trainer.precision).
TRAINS_BASE_WEIGHTS = True


def apply(model, spec, task: str):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def plan_parameters(shape, spec, head: int) -> tuple[int, int]:
    """For the memory plan: (parameters that train, of which the technique adds beside the base)."""
    return shape.total_params, 0


def load_result(out_dir, base_dir, task: str, spec):
    """The saved result loaded the way a user loads it."""
    from kubetune_trainer.techniques import load_whole_result

    return load_whole_result(out_dir, task)
