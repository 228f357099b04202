"""objective: causal-lm — continued pre-training / domain adaptation on `text` rows.

Every token is a target. Each text is tokenized with the model's special tokens (BOS where the
tokenizer adds one) and ends with EOS; longer texts are cut at maxSeqLength. With
hyperparameters.packing, examples are packed into rows of maxSeqLength tokens without attention
across examples (kubetune_trainer.packing); prompt/prefix tuning cannot take the packed mask and
train padded. Trainer: transformers' Trainer (the data is already tokenized; TRL's SFTTrainer would
add nothing but its packing, which is not isolated without flash-attention).
"""

from __future__ import annotations

import logging

from kubetune.api.constants import DatasetFormat

from kubetune_trainer.context import RunContext, TaskData, TrainResult
from kubetune_trainer.data import eval_dataset, mixed_train
from kubetune_trainer.errors import UserError
from kubetune_trainer.packing import PaddingCollator, install_block_diagonal_attention, pack_dataset, supports_packing

log = logging.getLogger(__name__)

FORMATS = (DatasetFormat.TEXT,)


def tokenize(dataset, tokenizer, max_length: int, what: str):
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


def prepare(tasks: list[TaskData], tokenizer, max_length: int, packing: bool, seed: int):
    """Tokenized (and packed) train set mixed by weight, and the eval set(s)."""
    tokenized = []
    for task in tasks:
        train = tokenize(task.train, tokenizer, max_length, f"dataset {task.name}")
        evaluation = tokenize(task.eval, tokenizer, max_length, f"eval data of {task.name}") if task.eval is not None else None
        if packing:
            train = pack_dataset(train, max_length, f"packing {task.name}")
            if evaluation is not None:
                evaluation = pack_dataset(evaluation, max_length, f"packing eval {task.name}")
        tokenized.append(TaskData(task.name, task.format, task.weight, train, evaluation))
    return mixed_train(tokenized, seed), eval_dataset(tokenized)


def run(ctx: RunContext) -> TrainResult:
    from transformers import Trainer, set_seed

    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer

    spec, hp = ctx.spec, ctx.spec.hyperparameters
    packing = hp.packing and supports_packing(spec.technique.value)
    # New adapters, prompts and prefixes are initialised here, before the Trainer seeds: seed first so a
    # run (and its retry) starts from the same weights.
    set_seed(spec.hyperparameters.seed)
    loaded = load_for_training(spec, ctx.model_dir, "causal-lm", packed=packing)
    model, tokenizer = loaded.model, loaded.tokenizer
    if hp.packing and not packing:
        log.info("packing is off for %s (its virtual tokens need a 2D attention mask)", spec.technique.value)
    tasks = [t for t in ctx.tasks if t.format in FORMATS]
    train, evaluation = prepare(tasks, tokenizer, hp.max_seq_length, packing, hp.seed)
    if packing:
        install_block_diagonal_attention(model)

    args = ctx.training_args(has_eval=evaluation is not None)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=list(ctx.callbacks),
    )
    prepare_trainer(trainer, spec)
    output = trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    return TrainResult(model=trainer.model, tokenizer=tokenizer, metrics=dict(output.metrics))
