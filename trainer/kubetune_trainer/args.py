"""spec.hyperparameters (+ evaluation, output) -> transformers.TrainingArguments or a TRL config.

Every value the spec fixes is set explicitly, also where the library default happens to agree:
TRL's configs default to bf16=True and gradient checkpointing on (trl 1.16), which must not leak
into a run whose spec says otherwise.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kubetune.api.constants import LRScheduler, Optimizer
from kubetune_trainer import precision, sharding
from kubetune_trainer.errors import UserError
from kubetune_trainer.speed import compile_args, fused_adamw, on_gpu

if TYPE_CHECKING:
    from kubetune_trainer.context import RunContext

SCHEDULERS = {
    LRScheduler.LINEAR: "linear",
    LRScheduler.COSINE: "cosine",
    LRScheduler.COSINE_WITH_RESTARTS: "cosine_with_restarts",
    LRScheduler.POLYNOMIAL: "polynomial",
    LRScheduler.CONSTANT: "constant",
    LRScheduler.CONSTANT_WITH_WARMUP: "constant_with_warmup",
    LRScheduler.INVERSE_SQRT: "inverse_sqrt",
}

OPTIMIZERS = {
    Optimizer.ADAMW: "adamw_torch",
    Optimizer.ADAMW_8BIT: "adamw_bnb_8bit",
    Optimizer.PAGED_ADAMW_8BIT: "paged_adamw_8bit",
    Optimizer.SGD: "sgd",
    Optimizer.ADAFACTOR: "adafactor",
}

_LOSS_METRIC = re.compile(r"^eval(_.+)?_loss$")


def eval_metric_names(ctx: RunContext, formats=None) -> list[str]:
    """The eval loss names a run reports: eval_loss for one task, eval_<task>_loss for several."""
    from kubetune_trainer.data import eval_dataset

    sets = eval_dataset(ctx.tasks, formats)
    if sets is None:
        return []
    if isinstance(sets, dict):
        return [f"eval_{name}_loss" for name in sets]
    return ["eval_loss"]


def training_args(
    ctx: RunContext, cls: type | None = None, *, formats=None, has_eval: bool | None = None, **overrides: Any
):
    """Arguments for a Trainer of class `cls` (TrainingArguments, SFTConfig, DPOConfig, ...).

    `formats`: the dataset formats this trainer reads (for rlhf stages), to know its eval sets.
    `has_eval`: override whether an eval dataset is passed (default: any task of `formats` has one).
    `overrides` win over everything (e.g. a stage's own output_dir or max_steps).
    """
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    spec = ctx.spec
    hp = spec.hyperparameters
    metrics = eval_metric_names(ctx, formats)
    has_eval = bool(metrics) if has_eval is None else has_eval

    kwargs: dict[str, Any] = dict(
        output_dir=str(ctx.work_dir / "trainer-output"),
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps if hp.max_steps > 0 else -1,
        learning_rate=hp.learning_rate,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=sharding.accumulation_for(spec, ctx.resume_from, ctx.world_size),
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps (transformers 5)
        weight_decay=hp.weight_decay,
        lr_scheduler_type=SCHEDULERS[LRScheduler(hp.lr_scheduler)],
        optim=fused_adamw(OPTIMIZERS[Optimizer(hp.optimizer)]),
        max_grad_norm=hp.max_grad_norm,
        seed=hp.seed,
        data_seed=hp.seed,
        activation_checkpointing=hp.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        logging_strategy="steps",
        logging_steps=1 if (hp.max_steps and hp.max_steps <= 200) else 10,
        logging_first_step=True,
        # A sharded model's checkpoints are asked for by checkpoints.CheckpointCallback: transformers refuses a
        # save strategy for a model sharded at load time (kubetune_trainer.sharding).
        save_strategy="no" if ctx.strategy.sharded else "steps",
        save_steps=spec.output.checkpoint_every_steps,
        save_total_limit=None,  # pruning happens in the output store, among complete checkpoints
        # metrics.jsonl, TensorBoard and the trackers of spec.tracking are written from MetricsCallback's records
        # (kubetune_trainer.tracking says why transformers' tracker callbacks are not used).
        report_to="none",
        # Progress is kubetune's console (one line per logged step, or one bar in a terminal): no tqdm bar here;
        # trainer_setup.prepare_trainer takes off the PrinterCallback transformers adds in its place.
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=False,
        remove_unused_columns=False,  # our collators need every column they prepared
        **precision.plan(spec).trainer_flags,
        use_cpu=not on_gpu(),  # also lets autocast run on a CPU when a test forces bf16 there
    )
    kwargs |= compile_args(spec)
    if hp.gradient_checkpointing:
        # Reentrant checkpointing breaks with frozen embeddings (PEFT); the non-reentrant one does not.
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if ctx.world_size > 1:
        import torch

        kwargs["ddp_backend"] = "nccl" if torch.cuda.is_available() else "gloo"
        kwargs["ddp_find_unused_parameters"] = False
        kwargs["ddp_timeout"] = sharding.collective_timeout_seconds()

    if has_eval:
        every = spec.evaluation.every_steps
        kwargs["eval_strategy"] = "steps" if every else "epoch"
        if every:
            kwargs["eval_steps"] = every
    else:
        kwargs["eval_strategy"] = "no"

    stopping = spec.evaluation.early_stopping
    if stopping is not None and has_eval:
        metric = stopping.metric
        if _LOSS_METRIC.match(metric) and metric not in metrics:
            raise UserError(
                f"evaluation.earlyStopping.metric: {metric!r} is not reported by this run; "
                f"it reports {', '.join(metrics)}"
            )
        kwargs["metric_for_best_model"] = metric
        kwargs["greater_is_better"] = not metric.endswith("loss")
        # transformers loads the best checkpoint at the end only when saving lines up with evaluating.
        every = spec.evaluation.every_steps
        # (Not for a sharded model: its checkpoints are kubetune's own, which the Trainer cannot load as "best".)
        kwargs["load_best_model_at_end"] = (
            bool(every) and spec.output.checkpoint_every_steps % every == 0 and not ctx.strategy.sharded
        )

    kwargs.update(overrides)
    return cls(**kwargs)
