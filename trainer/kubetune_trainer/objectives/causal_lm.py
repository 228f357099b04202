"""objective: causal-lm — continued pre-training / domain adaptation on `text` rows.

Every token is a target. Each text is tokenized with the model's special tokens (BOS where the
tokenizer adds one) and ends with EOS; longer texts are cut at maxSeqLength. With
hyperparameters.packing, examples are packed into rows of maxSeqLength tokens without attention
across examples (kubetune_trainer.packing); prompt/prefix tuning cannot take the packed mask and
train padded. Trainer: transformers' Trainer (the data is already tokenized; TRL's SFTTrainer would
add nothing but its packing, which is not isolated without flash-attention). The instruction objective
trains through the same `train_language_model`, with its own tokenization.
"""

from __future__ import annotations

import logging

from kubetune.api.constants import TECHNIQUES, DatasetFormat
from kubetune_trainer.context import RunContext, TaskData, TrainResult
from kubetune_trainer.data import eval_dataset, mixed_train
from kubetune_trainer.errors import UserError
from kubetune_trainer.packing import PaddingCollator, install_block_diagonal_attention, pack_dataset

log = logging.getLogger(__name__)

FORMATS = (DatasetFormat.TEXT,)


def tokenize(dataset, fmt: DatasetFormat, tokenizer, max_length: int, what: str):
    eos = tokenizer.eos_token_id

    def encode(batch):
        encoded = tokenizer(batch["text"], add_special_tokens=True, truncation=False)["input_ids"]
        ids = []
        for row in encoded:
            if eos is not None and (not row or row[-1] != eos):
                row = row + [eos]
            ids.append(row[:max_length])
        return {"input_ids": ids, "labels": [list(r) for r in ids]}

    out = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc=f"tokenizing {what}")
    out = out.filter(lambda row: len(row["input_ids"]) > 1, desc=f"dropping empty texts of {what}")
    if len(out) == 0:
        raise UserError(f"{what}: every text is empty after tokenization")
    return out


def prepare(tasks: list[TaskData], tokenizer, max_length: int, packing: bool, seed: int, tokenize_rows=tokenize):
    """Tokenized (and packed) train set mixed by weight, and the eval set(s). `tokenize_rows(rows, format,
    tokenizer, max_length, what)` gives input_ids and labels (IGNORE where a token is no target)."""
    tokenized = []
    for task in tasks:
        train = tokenize_rows(task.train, task.format, tokenizer, max_length, f"dataset {task.name}")
        evaluation = None
        if task.eval is not None:
            evaluation = tokenize_rows(task.eval, task.format, tokenizer, max_length, f"eval data of {task.name}")
        if packing:
            train = pack_dataset(train, max_length, f"packing {task.name}")
            if evaluation is not None:
                evaluation = pack_dataset(evaluation, max_length, f"packing eval {task.name}")
        tokenized.append(TaskData(task.name, task.format, task.weight, train, evaluation))
    return mixed_train(tokenized, seed), eval_dataset(tokenized)


def train_language_model(ctx: RunContext, formats, tokenize_rows, check=None) -> TrainResult:
    """Train a causal LM on tokenized rows with transformers' Trainer: what causal-lm and instruction share
    (they differ only in which tokens are targets: `tokenize_rows`). `check(tasks, tokenizer)` refuses data
    the model cannot take before anything is tokenized."""
    from transformers import Trainer, set_seed

    from kubetune_trainer.args import training_args
    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer, run_training

    spec, hp = ctx.spec, ctx.spec.hyperparameters
    packing = hp.packing and TECHNIQUES[spec.technique].supports_packing
    # New adapters, prompts and prefixes are initialised here, before the Trainer seeds: seed first so a
    # run (and its retry) starts from the same weights.
    set_seed(hp.seed)
    loaded = load_for_training(spec, ctx.model_dir, "causal-lm", packed=packing, strategy=ctx.strategy)
    model, tokenizer = loaded.model, loaded.tokenizer
    if hp.packing and not packing:
        log.info("packing is off for %s (its virtual tokens need a 2D attention mask)", spec.technique.value)
    tasks = [t for t in ctx.tasks if t.format in formats]
    if check is not None:
        check(tasks, tokenizer)
    train, evaluation = prepare(tasks, tokenizer, hp.max_seq_length, packing, hp.seed, tokenize_rows)
    if packing:
        install_block_diagonal_attention(model)

    trainer = Trainer(
        model=model,
        args=training_args(ctx, has_eval=evaluation is not None),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=list(ctx.callbacks),
    )
    prepare_trainer(trainer, spec)
    output = run_training(trainer, ctx.resume_from, ctx.warm_start)
    return TrainResult(model=trainer.model, tokenizer=tokenizer, metrics=dict(output.metrics))


def run(ctx: RunContext) -> TrainResult:
    return train_language_model(ctx, FORMATS, tokenize)
