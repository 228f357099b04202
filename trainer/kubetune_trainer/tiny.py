"""A tiny Llama-shaped model and tokenizer built offline, for the demo and every trainer test.

No hub access: the tokenizer is trained with `tokenizers` on synthetic text, the model is a randomly
initialised `LlamaConfig` model, both saved in Hugging Face format (safetensors) so the rest of the
trainer loads them exactly like a real model folder (Auto* classes).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
# Every printable ASCII character (and tab and newline; the space is Metaspace's "▁") is a token of its own, whatever
# the training text holds: any English a user types encodes without <unk> and decodes back as typed.
ALPHABET = list(string.ascii_letters + string.digits + string.punctuation + "\t\n")
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# `{% generation %}` ... `{% endgeneration %}` marks assistant content: TRL's assistant_only_loss
# builds its loss mask from these markers (return_assistant_tokens_mask).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|> ' }}{% generation %}{{ message['content'] }}{{ ' <|end|>' }}{% endgeneration %}{{ ' ' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' <|end|> ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)

_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
_ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "pig", "hen", "elk", "yak"]
_COLORS = ["red", "blue", "green", "black", "white", "pink", "gray", "gold"]
_PLACES = ["park", "garden", "forest", "river", "market", "school", "beach", "hill"]
_VERBS = ["sees", "likes", "feeds", "chases", "paints", "finds"]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def sample_corpus(n: int, seed: int = 0, *, cased: bool = False) -> list[str]:
    """`n` short templated sentences: a small vocabulary and fixed structure, so a tiny model's loss
    falls within a few dozen steps. `cased`: written as prose ("Alice sees the red fox in the park."), as the
    demo trains on; else lower case with spaced punctuation, as the tests have always used."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        kind = rng.randrange(3)
        name, animal = rng.choice(_NAMES), rng.choice(_ANIMALS)
        color, place = rng.choice(_COLORS), rng.choice(_PLACES)
        if kind == 0:
            text = f"{name} {rng.choice(_VERBS)} the {color} {animal} in the {place} ."
        elif kind == 1:
            i = rng.randrange(len(_NUMBERS) - 1)
            text = f"after {_NUMBERS[i]} comes {_NUMBERS[i + 1]} , said {name} ."
        else:
            text = f"the {animal} is {color} and lives near the {place} ."
        texts.append(as_prose(text) if cased else text)
    return texts


def as_prose(text: str) -> str:
    """Sentence case, names capitalised, no space before punctuation: "after one comes two , said bob ." reads
    "After one comes two, said Bob."."""
    words = [w.capitalize() if w in _NAMES else w for w in text.split()]
    prose = " ".join(words).replace(" ,", ",").replace(" .", ".")
    return prose[:1].upper() + prose[1:]


def _vocabulary_texts() -> list[str]:
    """Every word the synthetic generators use, so the tokenizer never needs <unk> on them."""
    words = _NAMES + _ANIMALS + _COLORS + _PLACES + _VERBS + _NUMBERS
    extra = "the in and is near lives after comes said , . ? ! : yes no positive negative good bad"
    extra += " question answer what which who where color animal place number great terrible"
    extra += " system user assistant you are a helpful"
    return [" ".join(words), extra]


def build_tokenizer(vocab_texts: Iterable[str] | None = None, *, vocab_size: int = 512):
    """A word-level-ish BPE tokenizer (whitespace pre-tokenizer) wrapped as PreTrainedTokenizerFast."""
    return _build_tokenizer(vocab_texts, vocab_size)[0]


def _build_tokenizer(vocab_texts: Iterable[str] | None, vocab_size: int):
    """(the tokenizer, how many of its ids the training made): the characters of ALPHABET the texts lack come
    after those, so a text of the training's characters gets the ids it would get without them."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(vocab_texts) if vocab_texts is not None else sample_corpus(2000, seed=1234)
    texts += _vocabulary_texts()
    tok = Tokenizer(models.BPE(unk_token=UNK))
    # Metaspace keeps word boundaries so decode(encode(x)) round-trips the text (with ALPHABET: any ASCII text).
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, *ROLE_TOKENS],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    trained = tok.get_vocab_size()
    # The missing characters join the BPE vocabulary as symbols of their own (no merges use them): never <unk>.
    serialized = json.loads(tok.to_str())
    vocab = serialized["model"]["vocab"]
    for char in ALPHABET:
        if char not in vocab and len(vocab) < vocab_size:
            vocab[char] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(serialized))
    bos_id = tok.token_to_id(BOS)
    # BOS is prepended on plain encodes like Llama; the chat template writes its own bos_token and
    # callers encoding chat text pass add_special_tokens=False.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast, trained


def build_tiny_llama(
    out_dir: str | Path,
    *,
    vocab_texts: Iterable[str] | None = None,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised tiny Llama model + tokenizer (safetensors) to `out_dir`.

    Reload with `AutoModelForCausalLM.from_pretrained(out_dir)` / `AutoTokenizer.from_pretrained(out_dir)`
    (or AutoModelForSequenceClassification: the head is then freshly initialised).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, trained = _build_tokenizer(vocab_texts, 512)
    config = LlamaConfig(
        vocab_size=trained,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # The rows of the characters appended to the vocabulary come after the model's own initialisation: every other
    # initial weight is what it is for a vocabulary without them (a tiny model's training depends on its start).
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
