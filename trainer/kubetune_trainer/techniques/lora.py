"""lora: low-rank update matrices beside the frozen weights (PEFT LoraConfig from spec.lora).

For sequence classification PEFT's SEQ_CLS task also trains the new head (`score`/`classifier`,
modules_to_save), which starts random and must learn.
"""

from __future__ import annotations

from kubetune_trainer.techniques import peft_task_type

PEFT = True
TRAINS_BASE_WEIGHTS = False


def target_modules(spec) -> str | list[str]:
    """ "all-linear" (PEFT's shorthand: every linear layer except the output head) or a list of names."""
    value = spec.lora.target_modules.strip()
    if value == "all-linear":
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


def lora_config(spec, task: str):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.lora.rank,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=target_modules(spec),
        use_dora=spec.lora.use_dora,
        use_rslora=spec.lora.use_rslora,
        bias="none",
        task_type=peft_task_type(task),
    )


def apply(model, spec, task: str):
    from peft import get_peft_model

    from kubetune_trainer.errors import UserError

    try:
        return get_peft_model(model, lora_config(spec, task))
    except ValueError as exc:
        # e.g. a targetModules name the model does not have
        raise UserError(f"spec.lora.targetModules: {exc}") from exc


# The memory plan's activations (kubetune_trainer.plan), x hidden bytes per token per layer beyond a plain layer's,
# fitted to peaks measured on an H200: with dropout PEFT keeps a dropped-out copy of every adapted layer's input;
# without it only the rank-r intermediates.
PLAN_DROPOUT_ACTIVATION = 30
PLAN_ACTIVATION = 4


def plan_targets(shape, spec) -> list[tuple[str, int, int]]:
    """The adapted linear layers of one block, (name, in, out), from the model's shape."""
    linears = shape.block_linears()
    targets = target_modules(spec)
    if targets == "all-linear":
        return linears
    names = {name.rsplit(".", 1)[-1] for name in targets}
    return [linear for linear in linears if linear[0] in names]


def plan_parameters(shape, spec, head: int) -> tuple[int, int]:
    """For the memory plan: (parameters that train, of which the technique adds beside the base)."""
    # A (in x r) and B (r x out) per adapted layer
    added = shape.layers * sum(spec.lora.rank * (a + b) for _, a, b in plan_targets(shape, spec))
    return added + head, added + head


def plan_activation(spec) -> int:
    return PLAN_DROPOUT_ACTIVATION if spec.lora.dropout > 0 else PLAN_ACTIVATION


def load_result(out_dir, base_dir, task: str, spec):
    """The saved result loaded the way a user loads it (the adapter names its base)."""
    from kubetune_trainer.techniques import load_peft_result

    return load_peft_result(out_dir, task)
