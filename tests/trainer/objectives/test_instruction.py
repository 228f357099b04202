"""objective instruction: prompt-completion rows are tokenized as TRL's SFTTrainer tokenizes them (the joined
text). Checked with the tiny model's tokenizer and with a legacy SentencePiece-style one built here (Llama-2 /
Mistral: the normalizer prepends "\u2581" to every string and turns spaces into "\u2581", so a completion
tokenized on its own starts with a stray "\u2581" token)."""

from __future__ import annotations

import pytest

from kubetune_trainer.objectives.instruction import encode_prompt_completion
from kubetune_trainer.tiny import sample_corpus

WORD_START = "\u2581"
PROMPT = "what color is the cat ?"


def legacy_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(WORD_START), normalizers.Replace(" ", WORD_START)])
    tok.decoder = decoders.Sequence([decoders.Replace(WORD_START, " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    corpus = sample_corpus(500, seed=2) + [PROMPT, "the cat is red ."]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module", params=["tiny", "legacy"])
def tokenizer(request, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir) if request.param == "tiny" else legacy_tokenizer()


@pytest.mark.parametrize("completion", [" the cat is red .", "the cat is red ."])
def test_prompt_completion_is_the_joined_text(tokenizer, completion):
    ids, mask = encode_prompt_completion(tokenizer, PROMPT, completion)
    assert ids == tokenizer(PROMPT + completion)["input_ids"] + [tokenizer.eos_token_id]
    assert len(mask) == len(ids) and mask[0] == 0 and mask[-1] == 1
    prompt_part = [t for t, m in zip(ids, mask, strict=True) if not m]
    assert tokenizer.decode(prompt_part, skip_special_tokens=True).strip() == PROMPT
    answer = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.convert_ids_to_tokens(answer[0]) != WORD_START  # no token the text does not have
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == completion.strip()


def test_the_legacy_hazard_is_real():
    """Tokenized apart, the legacy tokenizer starts a completion with a lone word-start token, and "?the"
    differs from "? the": what the joined tokenization above avoids (if this stopped holding, that test
    would no longer cover the hazard)."""
    tok = legacy_tokenizer()
    apart = tok.convert_ids_to_tokens(tok(" the cat", add_special_tokens=False)["input_ids"])
    assert apart[0] == WORD_START
    glued = tok(PROMPT + "the", add_special_tokens=False)["input_ids"]
    separate = tok(PROMPT, add_special_tokens=False)["input_ids"] + tok("the", add_special_tokens=False)["input_ids"]
    assert glued != separate
