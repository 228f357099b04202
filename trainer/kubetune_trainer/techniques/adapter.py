"""adapter: bottleneck modules (Houlsby et al. 2019, kubetune_trainer.bottleneck) around each layer's attention
output and MLP output; only they train (and the new head for sequence classification).

Saved as bottleneck_adapter.safetensors + bottleneck_adapter_config.json; `load_adapter` puts them back onto a
fresh base. The layers themselves import torch, so this module imports them only where it uses them.
"""

from __future__ import annotations

import json
from pathlib import Path

PEFT = False  # saved as bottleneck weights + config, reloaded with load_adapter_model
TRAINS_BASE_WEIGHTS = False

WEIGHTS_NAME = "bottleneck_adapter.safetensors"
CONFIG_NAME = "bottleneck_adapter_config.json"


def apply(model, spec, task: str):
    from kubetune_trainer.anatomy import classification_head
    from kubetune_trainer.bottleneck import add_adapters
    from kubetune_trainer.errors import UserError

    for param in model.parameters():
        param.requires_grad_(False)
    activation = getattr(spec.adapter.activation, "value", spec.adapter.activation)
    try:
        add_adapters(model, spec.adapter.bottleneck_size, activation)
    except ValueError as exc:
        raise UserError(f"spec.technique adapter: unsupported model architecture: {exc}") from exc
    # New modules default to requires_grad=True; the head of a classifier is new and must learn too.
    if task == "sequence-classification":
        head = classification_head(model)
        if head is not None:
            head.requires_grad_(True)
    model.kubetune_adapter_config = {
        "bottleneck_size": spec.adapter.bottleneck_size,
        "activation": activation,
        "task": task,
    }
    return model


def _saved_state(model) -> dict:
    """The adapter weights plus the trainable head: everything that differs from the base. A sharded head is
    gathered (every rank must call this then)."""
    from torch.distributed.tensor import DTensor

    from kubetune_trainer.anatomy import classification_head
    from kubetune_trainer.bottleneck import ADAPTERS_ATTR

    head = classification_head(model)
    head_names = set()
    if head is not None and any(p.requires_grad for p in head.parameters()):
        prefix = next(name for name, module in model.named_modules() if module is head)
        head_names = {f"{prefix}.{name}" for name, _ in head.named_parameters()}
    return {
        name: (param.full_tensor() if isinstance(param, DTensor) else param).detach().contiguous().cpu()
        for name, param in model.named_parameters()
        if f".{ADAPTERS_ATTR}." in name or name in head_names
    }


def save(model, out_dir, is_main: bool = True) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = _saved_state(model)
    if not is_main:
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    config = dict(model.kubetune_adapter_config)
    config["hidden_size"] = model.config.hidden_size
    # The base's config (architecture, labels) so the adapter can be reloaded onto the right base.
    model.config.save_pretrained(str(out))
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_adapter(model, adapter_dir):
    """Attach the saved bottlenecks (and head) to a freshly loaded base `model`."""
    from safetensors.torch import load_file

    from kubetune_trainer.bottleneck import add_adapters

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    add_adapters(model, config["bottleneck_size"], config["activation"])
    model.kubetune_adapter_config = {k: config[k] for k in ("bottleneck_size", "activation", "task")}
    state = load_file(str(adapter_dir / WEIGHTS_NAME))
    missing = [name for name in state if name not in dict(model.named_parameters())]
    if missing:
        raise ValueError(f"{adapter_dir / WEIGHTS_NAME} does not fit this model: unknown weights {missing[:3]}")
    model.load_state_dict(state, strict=False)
    return model


def load_adapter_model(adapter_dir, base_model_dir, **from_pretrained_kwargs):
    """Load the base from `base_model_dir` with the task's Auto class (head size and labels from the
    saved config) and attach the adapter saved in `adapter_dir`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    if config["task"] == "sequence-classification":
        saved = AutoConfig.from_pretrained(str(adapter_dir))
        from_pretrained_kwargs = {
            "num_labels": saved.num_labels,
            "id2label": saved.id2label,
            "label2id": saved.label2id,
            "pad_token_id": saved.pad_token_id,
            **from_pretrained_kwargs,
        }
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModelForCausalLM
    from_pretrained_kwargs.setdefault("use_safetensors", True)
    model = auto.from_pretrained(str(base_model_dir), **from_pretrained_kwargs)
    return load_adapter(model, adapter_dir)


def plan_parameters(shape, spec, head: int) -> tuple[int, int]:
    """For the memory plan: (parameters that train, of which the technique adds beside the base)."""
    b = spec.adapter.bottleneck_size
    # two bottlenecks per layer, each down (hidden x b + b) and up (b x hidden + hidden)
    added = shape.layers * 2 * (2 * shape.hidden * b + b + shape.hidden)
    return added + head, added + head


def load_result(out_dir, base_dir, task: str, spec):
    """The saved result loaded the way a user loads it (the bottlenecks onto the base in base_dir)."""
    return load_adapter_model(out_dir, base_dir)
