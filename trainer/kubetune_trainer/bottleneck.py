"""Bottleneck adapter layers (Houlsby et al. 2019), the layers of the `adapter` technique
(kubetune_trainer.techniques.adapter), as PEFT's tuners are the layers of its techniques. PEFT has no
bottleneck adapter and AdapterHub's `adapters` package does not import with transformers 5, hence this module.

Each bottleneck is h + up(act(down(h))) with `up` initialised to zero, so training starts from the base
model's exact outputs. The bottlenecks are registered as submodules of each decoder layer
(`<layer>.kubetune_adapters`) so optimizers, DDP, FSDP and Trainer checkpoints see them; forward hooks on the
attention and MLP modules apply them without renaming any base weight.
"""

from __future__ import annotations

import torch
from torch import nn

from kubetune_trainer.anatomy import decoder_layers

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
