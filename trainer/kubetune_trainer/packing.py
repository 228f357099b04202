"""Packing for the causal-lm and instruction objectives: several tokenized examples per row, with
NO attention across examples.

Rows carry position_ids that restart at every example plus a plain 2D padding mask (so the Trainer
counts non-padding tokens exactly). A forward pre-hook on the decoder replaces that 2D mask with one
that keeps examples apart, in the form the model's attention kernel wants:
- sdpa: a (batch, 1, L, L) boolean block-diagonal causal mask (sdpa's masked kernels honour it exactly);
- eager: the same as an additive float mask (0 / dtype min), which eager attention adds to its scores;
- flex_attention: a flex `BlockMask` from a same-example-and-causal rule; the kernel skips whole blocks
  that cross examples, so packed attention costs what the examples alone cost, and no L x L mask is kept.
transformers passes 4D masks and BlockMasks through unchanged. (It can also derive such a mask from
restarting position_ids, but only with no attention_mask and use_cache=False: its models turn the
cache on from the config, so a plain forward lets packed examples attend to each other: in transformers
5.24 the second example of a packed row got logits 0.4-0.5 away from the example alone, with sdpa, eager and
flex attention alike.)
The first token of each packed example gets label -100: predicting it from the previous example
would be a target the example alone never has.
"""

from __future__ import annotations

from typing import Any

from kubetune_trainer.anatomy import decoder_of

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

    for example_ids, example_labels in zip(batch["input_ids"], batch["labels"], strict=True):
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


def pack_dataset(dataset, max_length: int, desc: str):
    """A tokenized datasets.Dataset (input_ids, labels) packed into rows of up to max_length tokens."""
    return dataset.map(
        pack_examples,
        batched=True,
        batch_size=1000,
        fn_kwargs={"max_length": max_length},
        remove_columns=dataset.column_names,
        desc=desc,
    )


def example_ids(position_ids):
    """(batch, L) index of the packed example each token belongs to (examples start where position_ids is 0)."""
    return (position_ids == 0).cumsum(dim=-1)


def block_diagonal_mask(position_ids):
    """(batch, 1, L, L) boolean mask: token i attends to j iff j <= i and both are in one segment
    (segments start where position_ids is 0)."""
    import torch

    segment = example_ids(position_ids)
    same = segment[:, :, None] == segment[:, None, :]
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[:, None]


def additive_mask(bool_mask, dtype):
    """The boolean mask as eager attention wants it: 0 where attending, the dtype's minimum elsewhere."""
    import torch

    return torch.zeros(bool_mask.shape, dtype=dtype, device=bool_mask.device).masked_fill_(
        ~bool_mask, torch.finfo(dtype).min
    )


def flex_block_mask(position_ids):
    """A flex-attention BlockMask with the block-diagonal causal rule of `block_diagonal_mask`."""
    from torch.nn.attention.flex_attention import create_block_mask

    segment = example_ids(position_ids)
    batch, length = position_ids.shape

    def same_example_causal(b, h, q, kv):
        return (kv <= q) & (segment[b, q] == segment[b, kv])

    # _compile=False: built eagerly each step (cheap next to the forward); a compiled builder would
    # recompile for every new row length.
    return create_block_mask(
        same_example_causal, batch, None, length, length, device=position_ids.device, _compile=False
    )


def packed_attention_mask(position_ids, implementation: str | None, dtype):
    """The mask that keeps packed examples apart, for attention kernel `implementation`."""
    if implementation == "flex_attention":
        return flex_block_mask(position_ids)
    mask = block_diagonal_mask(position_ids)
    if implementation == "eager":
        return additive_mask(mask, dtype)
    return mask


def _attention_kernel(module) -> str | None:
    config = getattr(module, "config", None)
    return getattr(config, "_attn_implementation", None)


def _to_block_diagonal(module, args, kwargs):
    mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
    if mask is not None and positions is not None and mask.dim() == 2:
        embeddings = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
        dtype = embeddings.weight.dtype if embeddings is not None else None
        kwargs["attention_mask"] = packed_attention_mask(positions, _attention_kernel(module), dtype)
    return args, kwargs


def install_block_diagonal_attention(model):
    """Make packed rows attend within their own example only (see the module docstring), for whichever
    attention kernel the model was loaded with. Returns the hook handle (`.remove()` undoes it)."""
    return decoder_of(model).register_forward_pre_hook(_to_block_diagonal, with_kwargs=True)
