"""adapter: bottleneck modules (Houlsby et al. 2019) around each layer's attention output and MLP
output; only they train (and the new head for sequence classification).

Each bottleneck is h + up(act(down(h))) with `up` initialised to zero, so training starts from the
base model's exact outputs. PEFT has no bottleneck adapter and AdapterHub's `adapters` package does
not import with transformers 5, hence this small module.

The bottlenecks are registered as submodules of each decoder layer (`<layer>.kubetune_adapters`) so
optimizers, DDP and Trainer checkpoints see them; forward hooks on the attention and MLP modules
apply them without renaming any base weight. Saved as bottleneck_adapter.safetensors +
bottleneck_adapter_config.json; `load_adapter` puts them back onto a fresh base.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kubetune_trainer.anatomy import classification_head, decoder_layers

PEFT = False  # saved as bottleneck weights + config, reloaded with load_adapter_model
TRAINS_BASE_WEIGHTS = False

WEIGHTS_NAME = "bottleneck_adapter.safetensors"
CONFIG_NAME = "bottleneck_adapter_config.json"
ADAPTERS_ATTR = "kubetune_adapters"
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        # Zero up-projection: the adapted model starts identical to the base.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class _ApplyBottleneck:
    """Forward hook: run the sub-block's output through its bottleneck. A callable object rather
    than a closure so deepcopy (TRL reference models) points the copy's hook at the copy's adapter."""

    def __init__(self, bottleneck: Bottleneck):
        self.bottleneck = bottleneck

    def __call__(self, module, args, output):
        if isinstance(output, tuple):
            return (self.bottleneck(output[0]), *output[1:])
        return self.bottleneck(output)


def _child(layer: nn.Module, names: tuple[str, ...]) -> nn.Module:
    for name in names:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{type(layer).__name__} has none of the sub-modules {names}")


def add_adapters(model, bottleneck_size: int, activation: str) -> nn.Module:
    """Insert the bottlenecks (in the dtype and device of each layer) and hook them in."""
    hidden = model.config.hidden_size
    for layer in decoder_layers(model):
        if hasattr(layer, ADAPTERS_ATTR):
            raise ValueError("the model already has bottleneck adapters")
        reference = next(layer.parameters())
        adapters = nn.ModuleDict(
            {
                "attention": Bottleneck(hidden, bottleneck_size, activation),
                "mlp": Bottleneck(hidden, bottleneck_size, activation),
            }
        ).to(device=reference.device, dtype=reference.dtype)
        layer.add_module(ADAPTERS_ATTR, adapters)
        _child(layer, ATTENTION_NAMES).register_forward_hook(_ApplyBottleneck(adapters["attention"]))
        _child(layer, MLP_NAMES).register_forward_hook(_ApplyBottleneck(adapters["mlp"]))
    return model


def apply(model, spec, task: str):
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


def _saved_state(model) -> dict[str, torch.Tensor]:
    """The adapter weights plus the trainable head: everything that differs from the base. A sharded head is
    gathered (every rank must call this then)."""
    from torch.distributed.tensor import DTensor

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


def load_adapter(model, adapter_dir) -> nn.Module:
    """Attach the saved bottlenecks (and head) to a freshly loaded base `model`."""
    from safetensors.torch import load_file

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


def load_adapter_model(adapter_dir, base_model_dir, **from_pretrained_kwargs) -> nn.Module:
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
