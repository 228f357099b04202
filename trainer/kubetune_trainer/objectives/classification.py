"""objective: classification — a sequence-classification head on the base model, trained on
(text, label) rows with the Hugging Face Trainer.

Labels: spec.classification.labels in index order, else the sorted distinct labels of the training
data (integers numerically, then strings). A row's label matches a class by name (its string form);
an integer that names no class is taken as a class index, so integer-labelled data (datasets'
ClassLabel) can be given names in the spec. Anything else is a UserError naming dataset, split, row
and value. The head has len(labels) outputs, or spec.featureExtraction.numLabels when that is set.

Evaluation reports eval_loss and eval_accuracy; with several classification datasets the eval sets
are a dict keyed by task name, so the Trainer reports eval_<task>_loss and eval_<task>_accuracy.
All tasks share one head and one label set.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kubetune.api.constants import DatasetFormat, Technique
from kubetune_trainer.context import RunContext, TaskData, TrainResult
from kubetune_trainer.errors import UserError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

FORMATS = (DatasetFormat.CLASSIFICATION,)


def _plain(value: Any) -> int | str:
    """A label as read (CSV/parquet may give 1.0 for 1): integers stay integers, the rest is a name."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _sort_key(value: int | str) -> tuple[int, int | str]:
    return (0, value) if isinstance(value, int) else (1, value)


def class_names(spec, tasks: list[TaskData]) -> list[str]:
    """The class names in index order."""
    if spec.classification is not None and spec.classification.labels:
        return [str(name) for name in spec.classification.labels]
    distinct = {_plain(v) for task in tasks for v in task.train["label"]}
    names = [str(v) for v in sorted(distinct, key=_sort_key)]
    if len(set(names)) != len(names):  # 1 and "1" in different datasets
        raise UserError(
            "spec.datasets: the training labels mix integers and strings that read the same "
            f"({', '.join(names)}); use one kind, or list the classes in spec.classification.labels"
        )
    if len(names) < 2:
        raise UserError(
            f"spec.datasets: the training data has {len(names)} distinct label(s) ({', '.join(names)}); "
            "classification needs at least 2 (or list them in spec.classification.labels)"
        )
    return names


def label_indexer(names: list[str]):
    """label value -> class index, or None when it is not a class."""
    index = {name: i for i, name in enumerate(names)}

    def to_index(value: Any) -> int | None:
        value = _plain(value)
        if str(value) in index:
            return index[str(value)]
        if isinstance(value, int) and 0 <= value < len(names):
            return value
        return None

    return to_index


def _dataset_index(spec, task: TaskData) -> int:
    for i, ds in enumerate(spec.datasets):
        if ds.name == task.name:
            return i
    return 0


def check_labels(spec, tasks: list[TaskData], names: list[str]) -> None:
    """Every train and eval label is a class; else a UserError naming dataset, split, row and value."""
    to_index = label_indexer(names)
    for task in tasks:
        i = _dataset_index(spec, task)
        column = spec.datasets[i].columns.get("label", "label")
        for split, rows in (("train", task.train), ("eval", task.eval)):
            if rows is None:
                continue
            for row, value in enumerate(rows["label"]):
                if to_index(value) is None:
                    raise UserError(
                        f"spec.datasets[{i}] ({task.name}) {split} row {row}: column {column!r}: label {value!r} "
                        f"is not one of the classes {names}"
                        + ("" if spec.classification and spec.classification.labels else " (the training labels)")
                    )


def head_size(spec, names: list[str]) -> int:
    """len(names), or spec.featureExtraction.numLabels for feature-extraction when set."""
    fe = spec.feature_extraction
    if spec.technique == Technique.FEATURE_EXTRACTION and fe is not None and fe.num_labels:
        if fe.num_labels < len(names):
            raise UserError(
                f"spec.featureExtraction.numLabels: {fe.num_labels} is fewer than the {len(names)} classes "
                f"of the data ({', '.join(names)})"
            )
        return fe.num_labels
    return len(names)


def tokenize(rows: datasets.Dataset, tokenizer, names: list[str], max_length: int) -> datasets.Dataset:
    to_index = label_indexer(names)

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["labels"] = [to_index(v) for v in batch["label"]]
        return enc

    return rows.map(encode, batched=True, remove_columns=rows.column_names, desc="tokenizing")


def accuracy(eval_pred) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def run(ctx: RunContext) -> TrainResult:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from kubetune_trainer.args import training_args
    from kubetune_trainer.data import eval_dataset, mixed_train, select
    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer, run_training

    spec = ctx.spec
    tasks = select(ctx.tasks, FORMATS)
    if not tasks:
        raise UserError(
            "spec.datasets: the classification objective needs at least one dataset of format classification"
        )
    names = class_names(spec, tasks)
    check_labels(spec, tasks, names)
    num_labels = head_size(spec, names)
    label_names = names + [f"LABEL_{i}" for i in range(len(names), num_labels)]
    log.info("classification: %d classes %s, head size %d", len(names), names, num_labels)

    # New heads and adapters are initialised here, before the Trainer seeds: seed first so a run
    # (and its retry) starts from the same weights.
    set_seed(spec.hyperparameters.seed)
    loaded = load_for_training(
        spec,
        ctx.model_dir,
        "sequence-classification",
        num_labels=num_labels,
        label_names=label_names,
        strategy=ctx.strategy,
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    max_length = spec.hyperparameters.max_seq_length

    train = tokenize(mixed_train(ctx.tasks, spec.hyperparameters.seed, FORMATS), tokenizer, names, max_length)
    evaluation = eval_dataset(ctx.tasks, FORMATS)
    if isinstance(evaluation, dict):
        evaluation = {name: tokenize(rows, tokenizer, names, max_length) for name, rows in evaluation.items()}
    elif evaluation is not None:
        evaluation = tokenize(evaluation, tokenizer, names, max_length)
    has_eval = evaluation is not None

    # The columns were prepared here; the collator only pads input_ids/attention_mask/labels.
    args = training_args(ctx, TrainingArguments, formats=FORMATS, has_eval=has_eval, remove_unused_columns=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        callbacks=list(ctx.callbacks),  # metrics, checkpoints, early stopping (entrypoint)
    )
    prepare_trainer(trainer, spec)
    output = run_training(trainer, ctx.resume_from, ctx.warm_start)
    metrics = dict(output.metrics)
    if has_eval:
        metrics |= trainer.evaluate()
    return TrainResult(model=trainer.model, tokenizer=tokenizer, metrics=metrics)
