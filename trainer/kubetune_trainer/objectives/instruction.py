"""objective: instruction — instruction tuning with the loss on the answers only.

- `messages` rows: rendered with the model's chat template; only assistant tokens are targets. The
  mask comes from the template's `{% generation %}` markers (transformers' return_assistant_tokens_mask,
  what TRL's assistant_only_loss uses) when it has them; otherwise from rendering the conversation
  turn by turn (the tokens an assistant turn adds after the generation prompt), which works for any
  template that renders a conversation's prefix as a prefix.
- `prompt-completion` rows: only completion tokens are targets. Plain strings are joined as text,
  prompt + completion, tokenized once and ended with EOS, the way TRL's SFTTrainer does (the completion
  starts where the joined tokens stop agreeing with the prompt's); conversational ones (lists of
  messages) go through the chat template.

Packing and training are causal_lm's (`train_language_model`: transformers' Trainer on tokenized rows,
block-diagonal attention across packed examples); only the targets differ. Several tasks of either format
mix by weight after tokenization.
"""

from __future__ import annotations

import logging

from kubetune.api.constants import DatasetFormat
from kubetune_trainer.context import RunContext, TaskData, TrainResult
from kubetune_trainer.errors import UserError
from kubetune_trainer.objectives import causal_lm
from kubetune_trainer.packing import IGNORE

log = logging.getLogger(__name__)

FORMATS = (DatasetFormat.MESSAGES, DatasetFormat.PROMPT_COMPLETION)


def _chat_ids(tokenizer, messages, *, add_generation_prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def has_generation_markers(tokenizer) -> bool:
    template = tokenizer.chat_template or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def assistant_mask_from_markers(tokenizer, messages) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def assistant_mask_by_turns(tokenizer, messages) -> tuple[list[int], list[int]]:
    """Mask the tokens of the text each assistant turn adds after the generation prompt.

    Works on characters, then maps to tokens by offsets: a template's generation prompt often ends in
    whitespace that merges with the answer's first token, so token-level prefixes do not line up."""
    render = tokenizer.apply_chat_template
    text = render(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = render(messages[: i + 1], tokenize=False)
        if not text.startswith(upto) or not upto.startswith(before):
            raise UserError(
                "spec.model: the chat template does not render a conversation's beginning as a prefix of the whole, "
                "so the assistant tokens cannot be found; use a template with {% generation %} markers"
            )
        spans.append((len(before), len(upto)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    mask = [int(any(end > lo and start < hi for lo, hi in spans)) for start, end in encoded["offset_mapping"]]
    return ids, mask


def encode_messages(tokenizer, messages) -> tuple[list[int], list[int]]:
    if has_generation_markers(tokenizer):
        return assistant_mask_from_markers(tokenizer, messages)
    return assistant_mask_by_turns(tokenizer, messages)


def encode_prompt_completion(tokenizer, prompt, completion) -> tuple[list[int], list[int]]:
    if isinstance(prompt, list) or isinstance(completion, list):
        prompt_msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        completion_msgs = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        prompt_ids = _chat_ids(tokenizer, prompt_msgs, add_generation_prompt=True)
        ids = _chat_ids(tokenizer, prompt_msgs + completion_msgs)
        if ids[: len(prompt_ids)] != prompt_ids:
            raise UserError(
                "spec.model: the chat template renders the prompt differently inside the whole conversation"
            )
    else:
        # As TRL's SFTTrainer does: tokenize the joined text, and the completion starts where it stops
        # agreeing with the prompt tokenized alone. Tokenizing the two apart and concatenating ids would
        # train "? the" where the data says "?the", and put a stray "▁" token before every completion
        # with a legacy SentencePiece tokenizer.
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        ids = tokenizer(prompt + completion, add_special_tokens=True)["input_ids"]
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        prompt_ids = prompt_ids[: common_prefix_length(prompt_ids, ids)]
    return ids, [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # the common prefix ends where the shorter list does
        if x != y:
            break
        n += 1
    return n


def tokenize(dataset, fmt: DatasetFormat, tokenizer, max_length: int, what: str):
    def encode(row):
        if fmt == DatasetFormat.MESSAGES:
            ids, mask = encode_messages(tokenizer, row["messages"])
        else:
            ids, mask = encode_prompt_completion(tokenizer, row["prompt"], row["completion"])
        ids, mask = ids[:max_length], mask[:max_length]
        return {"input_ids": ids, "labels": [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]}

    out = dataset.map(encode, remove_columns=dataset.column_names, desc=f"tokenizing {what}")
    # Rows whose answer was cut off entirely teach nothing (and give a NaN loss in a batch of their own).
    out = out.filter(
        lambda row: any(label != IGNORE for label in row["labels"][1:]),
        desc=f"dropping rows of {what} without answer tokens",
    )
    if len(out) == 0:
        raise UserError(f"{what}: no row has answer tokens within maxSeqLength")
    return out


def prepare(tasks: list[TaskData], tokenizer, max_length: int, packing: bool, seed: int):
    return causal_lm.prepare(tasks, tokenizer, max_length, packing, seed, tokenize)


def check_chat_template(tasks: list[TaskData], tokenizer) -> None:
    if any(t.format == DatasetFormat.MESSAGES for t in tasks) and not tokenizer.chat_template:
        raise UserError("spec.datasets: messages data needs a model whose tokenizer has a chat template")


def run(ctx: RunContext) -> TrainResult:
    return causal_lm.train_language_model(ctx, FORMATS, tokenize, check=check_chat_template)
