"""full: every parameter of the model trains."""

from __future__ import annotations


def apply(model, spec, task: str):
    for param in model.parameters():
        param.requires_grad_(True)
    return model
