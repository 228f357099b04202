"""Packed rows must not attend across examples: each example's loss inside a packed row equals its
loss alone (transformers 5.24 does not isolate them from restarting position_ids by itself)."""

from __future__ import annotations

import torch

from kubetune_trainer.packing import IGNORE, PaddingCollator, install_block_diagonal_attention, pack_examples


def _token_losses(logits, labels):
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE, reduction="none"
    )
    return losses[0], shift_labels[0] != IGNORE


def test_packed_examples_match_examples_alone(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    texts = [
        "alice sees the red cat in the park .",
        "after two comes three , said bob .",
        "the owl is gold and lives near the hill .",
    ]
    docs = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    packed = pack_examples({"input_ids": docs, "labels": docs}, max_length=64)
    assert len(packed["input_ids"]) == 1  # all three fit one row
    batch = PaddingCollator(tok.pad_token_id, pad_to_multiple_of=64)([{k: v[0] for k, v in packed.items()}])

    with torch.no_grad():
        unmasked = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        handle = install_block_diagonal_attention(model)
        packed_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        handle.remove()
        alone = [model(input_ids=torch.tensor([d])).logits for d in docs]

    losses, used = _token_losses(packed_logits, batch["labels"])
    start = 0
    for doc, logits in zip(docs, alone, strict=True):
        n = len(doc)
        expected, _ = _token_losses(logits, torch.tensor([doc]))
        got = losses[start : start + n - 1]
        assert used[start : start + n - 1].all() and torch.allclose(got, expected, atol=1e-5), (got, expected)
        if start:  # the first token of a packed example is never a target (it would be predicted across examples)
            assert not used[start - 1]
        start += n
    # Without the block-diagonal mask the later examples do see the earlier ones.
    second = slice(len(docs[0]), len(docs[0]) + len(docs[1]))
    assert (unmasked[0, second] - alone[1][0]).abs().max() > 1e-3
    assert batch["attention_mask"].sum() == sum(len(d) for d in docs)  # the Trainer counts real tokens from this
