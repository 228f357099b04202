"""Packing for the causal-lm and instruction objectives: several tokenized examples per row, with
NO attention across examples.

transformers 5.24 does not derive a block-diagonal mask from restarting position_ids (facts.md: a
packed document's logits differed by 0.4-0.5 from the document alone), and TRL's padding-free path
relies on flash-attention varlen kernels for the isolation. So: rows carry position_ids that restart
at every example plus a plain 2D padding mask (so the Trainer counts non-padding tokens exactly),
and a forward pre-hook on the decoder turns them into a 4D block-diagonal causal mask, which the
sdpa and eager attention paths honour exactly. The first token of each packed example gets label
-100: predicting it from the previous example would be a target the example alone never has.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def pack_examples(batch: dict[str, list], max_length: int) -> dict[str, list]:
    """datasets.map(batched=True) function: greedily fill rows of up to max_length tokens, in order."""
    rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []

    def flush() -> None:
        if ids:
            rows["input_ids"].append(list(ids))
            rows["labels"].append(list(labels))
            rows["position_ids"].append(list(positions))
            ids.clear(), labels.clear(), positions.clear()

    for example_ids, example_labels in zip(batch["input_ids"], batch["labels"]):
        example_ids, example_labels = example_ids[:max_length], list(example_labels[:max_length])
        if len(ids) + len(example_ids) > max_length:
            flush()
        if ids:
            example_labels[0] = IGNORE
        ids.extend(example_ids)
        labels.extend(example_labels)
        positions.extend(range(len(example_ids)))
    flush()
    return rows


class PaddingCollator:
    """Right-pads input_ids/labels (and position_ids when packed); attention_mask marks real tokens.
    Padding positions restart at 0 so the block-diagonal mask treats them as their own segment."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in features[0]
        out: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": []}
        if packed:
            out["position_ids"] = []
        for f in features:
            n = len(f["input_ids"])
            pad = longest - n
            out["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            out["labels"].append(list(f["labels"]) + [IGNORE] * pad)
            out["attention_mask"].append([1] * n + [0] * pad)
            if packed:
                out["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def block_diagonal_mask(position_ids):
    """(batch, 1, L, L) boolean mask: token i attends to j iff j <= i and both are in one segment
    (segments start where position_ids is 0)."""
    import torch

    segment = (position_ids == 0).cumsum(dim=-1)
    same = segment[:, :, None] == segment[:, None, :]
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[:, None]


def _to_block_diagonal(module, args, kwargs):
    mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
    if mask is not None and positions is not None and mask.dim() == 2:
        kwargs["attention_mask"] = block_diagonal_mask(positions)
    return args, kwargs


def decoder_of(model):
    """The transformer stack (e.g. LlamaModel) under PEFT / task-head wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base


def install_block_diagonal_attention(model):
    """Make packed rows attend within their own example only (see the module docstring)."""
    return decoder_of(model).register_forward_pre_hook(_to_block_diagonal, with_kwargs=True)


def supports_packing(technique: str) -> bool:
    # PEFT prompt/prefix tuning extend a 2D attention mask with virtual tokens: no 4D masks there.
    return technique not in ("prompt-tuning", "prefix-tuning")
