"""The tiny offline model used by the demo and every trainer test."""

from __future__ import annotations

import json

from kubetune_trainer.tiny import sample_corpus


def test_sample_corpus_is_deterministic_and_small_vocabulary():
    assert sample_corpus(50, seed=3) == sample_corpus(50, seed=3)
    assert sample_corpus(50, seed=3) != sample_corpus(50, seed=4)
    words = {word for text in sample_corpus(500, seed=0) for word in text.split()}
    assert len(words) < 120


def test_tiny_llama_reloads_with_auto_classes(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in tiny_llama_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2 and config["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert {"bos", "eos", "pad", "unk"} <= {k.removesuffix("_token") for k in tokenizer.special_tokens_map}
    text = sample_corpus(1, seed=0)[0]
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_chat_template_marks_assistant_tokens(tiny_tokenizer_dir):
    """TRL's assistant_only_loss needs {% generation %} markers: the mask covers the answer only."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    messages = [
        {"role": "user", "content": "what color is the cat ?"},
        {"role": "assistant", "content": "the cat is red ."},
    ]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == "the cat is red ."
    assert 0 < sum(out["assistant_masks"]) < len(out["input_ids"])


def test_tokenizer_round_trips_any_ascii_text():
    """Capitals, digits, punctuation, tabs and newlines: never <unk> ("Once" once decoded as "nce")."""
    from kubetune_trainer.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    for text in (
        "Once upon a time, Alice saw 3 cats!",
        'x = {"a": [1, 2]}  # ok?',
        "UPPER lower ~`|\\ 0123456789",
        "two\nlines\tand a tab",
    ):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) <= 512  # the tiny model's embedding stays tiny
