"""objective: rlhf — a reward model from human preferences, then online RL of the policy against it.

Stage "reward-model" (skipped when spec.rlhf.rewardModel.uri is given: the entrypoint fetched it to
ctx.reward_model_dir): the base model with a 1-output sequence-classification head, spec.technique
applied, trained with TRL's RewardTrainer on the `preference` datasets (mixed by weight). It is
saved like a final model (modeling.save_final) to <output>/final/reward-model/ and a marker file is
written last; a retry that finds the marker loads it from there and skips the stage. The stage
keeps no checkpoints (they would share checkpoints/step-N with the policy's): an attempt that dies
inside it starts it again.

Stage "policy": GRPO or RLOO (spec.rlhf.algorithm, TRL's GRPOTrainer/RLOOTrainer) on the `prompt`
datasets with reward_funcs=<the reward model> and its tokenizer as reward_processing_classes;
numGenerations, maxCompletionLength, beta and temperature from spec.rlhf. Its loss is ~0 by
construction (group-normalised advantages): the number to watch is `reward` (mean reward of the
sampled completions), which the metrics callback reports. Checkpoints and resume are the policy's.

Both stages use spec.hyperparameters (maxSteps/epochs, learning rate, batch size, ...).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from kubetune.api.constants import DatasetFormat, RLAlgorithm
from kubetune.api.uris import join_uri
from kubetune_trainer.args import training_args
from kubetune_trainer.context import RunContext, TrainResult
from kubetune_trainer.errors import UserError
from kubetune_trainer.layout import COMPLETE_MARKER
from kubetune_trainer.metrics import set_stage
from kubetune_trainer.preemption import PREEMPTION

log = logging.getLogger(__name__)

REWARD_STAGE, POLICY_STAGE = "reward-model", "policy"
PREFERENCE_FORMATS = (DatasetFormat.PREFERENCE,)
PROMPT_FORMATS = (DatasetFormat.PROMPT,)


def reward_model_uri(ctx: RunContext) -> str:
    return join_uri(ctx.layout.final_uri, "reward-model") + "/"


def _storage(ctx: RunContext):
    from kubetune_trainer.storage import get_storage

    return get_storage(ctx.layout.root, spec=ctx.spec)


def _callbacks_without_checkpoints(ctx: RunContext) -> list:
    from kubetune_trainer.checkpoints import CheckpointCallback

    return [cb for cb in ctx.callbacks if not isinstance(cb, CheckpointCallback)]


# --------------------------------------------------------------------------- stage 1: reward model


def as_scored(rows, tokenizer, max_length: int):
    """Plain-text preference rows tokenized the way GRPO/RLOO will score completions.

    TRL's RewardTrainer appends EOS and the tokenizer's special tokens to plain-text rows, but
    GRPOTrainer/RLOOTrainer score `prompt + completion` with add_special_tokens=False and the EOS
    stripped. A reward model reads the last token, so training on one form and scoring the other
    measurably degrades it (tiny model: 0.81 vs 1.0 pairwise accuracy). Training on the scored form
    keeps the two consistent. Conversational rows go through the chat template in both trainers and
    are left to TRL. Long rows keep their end (the tokens the reward model reads).
    """
    if len(rows) == 0 or not isinstance(rows[0]["prompt"], str):
        return rows

    def encode(batch):
        out = {"chosen_ids": [], "rejected_ids": []}
        for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"], strict=True):
            for key, completion in (("chosen_ids", chosen), ("rejected_ids", rejected)):
                ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
                out[key].append(ids[-max_length:])
        return out

    return rows.map(encode, batched=True, remove_columns=rows.column_names, desc="tokenizing preferences")


def train_reward_model(ctx: RunContext):
    """Train the reward model on the preference datasets; returns (model, tokenizer, metrics)."""
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from kubetune_trainer.data import eval_dataset, mixed_train, select
    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer, run_training, trainable_dtypes

    spec = ctx.spec
    if not select(ctx.tasks, PREFERENCE_FORMATS):
        raise UserError(
            "spec.datasets: rlhf needs a dataset of format preference to train the reward model, "
            "or spec.rlhf.rewardModel.uri"
        )
    # New heads and adapters are initialised here, before the Trainer seeds: seed first so a run
    # (and its retry) starts from the same weights.
    set_seed(spec.hyperparameters.seed)
    loaded = load_for_training(spec, ctx.model_dir, "sequence-classification", num_labels=1, strategy=ctx.strategy)
    max_length = spec.hyperparameters.max_seq_length
    train = as_scored(
        mixed_train(ctx.tasks, spec.hyperparameters.seed, PREFERENCE_FORMATS), loaded.tokenizer, max_length
    )
    evaluation = eval_dataset(ctx.tasks, PREFERENCE_FORMATS)
    if isinstance(evaluation, dict):
        evaluation = {name: as_scored(rows, loaded.tokenizer, max_length) for name, rows in evaluation.items()}
    elif evaluation is not None:
        evaluation = as_scored(evaluation, loaded.tokenizer, max_length)
    args = training_args(
        ctx,
        RewardConfig,
        formats=PREFERENCE_FORMATS,
        has_eval=evaluation is not None,
        output_dir=str(ctx.work_dir / "reward-model-trainer"),
        save_strategy="no",
        load_best_model_at_end=False,
        max_length=max_length,
    )
    set_stage(ctx.callbacks, REWARD_STAGE)
    dtypes = trainable_dtypes(loaded.model)
    trainer = RewardTrainer(
        model=loaded.model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=loaded.tokenizer,
        callbacks=_callbacks_without_checkpoints(ctx),
    )
    prepare_trainer(trainer, spec, dtypes)  # undoes TRL's bf16 cast of a quantized model's trainable weights
    output = run_training(trainer)
    metrics = {f"reward_model/{k}": v for k, v in output.metrics.items()}
    if evaluation is not None:
        metrics |= {f"reward_model/{k}": v for k, v in trainer.evaluate().items()}
    return trainer.model, loaded.tokenizer, metrics


def publish_reward_model(ctx: RunContext, model, tokenizer) -> Path:
    """Save the reward model like a final model and upload it to final/reward-model/, marker last."""
    from kubetune_trainer.modeling import save_final

    local = ctx.work_dir / "reward-model"
    shutil.rmtree(local, ignore_errors=True)
    save_final(model, tokenizer, ctx.spec, local)
    if ctx.is_main:
        storage = _storage(ctx)
        uri = reward_model_uri(ctx)
        storage.delete_prefix(uri)
        storage.upload_dir(local, uri)
        storage.write_text(join_uri(uri, COMPLETE_MARKER), json.dumps({"stage": REWARD_STAGE}) + "\n")
        log.info("reward model written to %s", uri)
    return local


def completed_reward_model(ctx: RunContext) -> Path | None:
    """The reward model a previous attempt finished (marker present), downloaded; else None."""
    storage = _storage(ctx)
    uri = reward_model_uri(ctx)
    if not storage.exists(join_uri(uri, COMPLETE_MARKER)):
        return None
    local = ctx.work_dir / "reward-model"
    shutil.rmtree(local, ignore_errors=True)
    storage.download_prefix(uri, local)
    log.info("reward model stage already complete: using %s", uri)
    return local


def load_reward_model(ctx: RunContext, model_dir: Path):
    """A reward model folder: full weights (AutoModelForSequenceClassification), a PEFT adapter or a
    kubetune bottleneck adapter over spec.model (as stage 1 saves them). Returns (model, tokenizer)."""
    from transformers import AutoModelForSequenceClassification

    from kubetune_trainer.modeling import check_weight_files, compute_dtype, head_kwargs, load_tokenizer
    from kubetune_trainer.techniques import adapter

    spec = ctx.spec
    model_dir = Path(model_dir)
    what = "spec.rlhf.rewardModel.uri" if ctx.reward_model_dir else "the reward model"
    kwargs = dict(dtype=compute_dtype(spec), trust_remote_code=spec.model.trust_remote_code)
    try:
        if (model_dir / "adapter_config.json").is_file():
            from peft import PeftModel

            base = AutoModelForSequenceClassification.from_pretrained(
                str(ctx.model_dir),
                use_safetensors=check_weight_files(ctx.model_dir, spec.model.allow_pickle),
                **head_kwargs(model_dir),
                **kwargs,
            )
            model = PeftModel.from_pretrained(base, str(model_dir))
        elif (model_dir / adapter.CONFIG_NAME).is_file():
            model = adapter.load_adapter_model(model_dir, ctx.model_dir, **kwargs)
        else:
            use_safetensors = check_weight_files(model_dir, spec.model.allow_pickle)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), use_safetensors=use_safetensors, **kwargs
            )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{what}: cannot load a sequence-classification reward model: {exc}") from exc
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    if config.num_labels != 1:
        raise UserError(f"{what}: a reward model has 1 output (num_labels 1); this one has {config.num_labels}")
    tokenizer = load_tokenizer(model_dir if (model_dir / "tokenizer_config.json").is_file() else ctx.model_dir, spec)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _frozen(model):
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- stage 2: policy


def rl_trainer_classes(algorithm: RLAlgorithm):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    return (GRPOConfig, GRPOTrainer) if RLAlgorithm(algorithm) == RLAlgorithm.GRPO else (RLOOConfig, RLOOTrainer)


def check_generation_batch(ctx: RunContext) -> None:
    """Each optimizer step samples numGenerations completions for whole prompts."""
    hp, rl = ctx.spec.hyperparameters, ctx.spec.rlhf
    batch = hp.batch_size * hp.gradient_accumulation_steps * ctx.world_size
    if batch % rl.num_generations:
        raise UserError(
            f"spec.rlhf.numGenerations: {rl.num_generations} must divide the completions sampled per step, "
            f"hyperparameters.batchSize x gradientAccumulationSteps x processes = {batch}"
        )


def train_policy(ctx: RunContext, reward_model, reward_tokenizer):
    from transformers import set_seed

    from kubetune_trainer.data import eval_dataset, mixed_train, select
    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer, run_training, trainable_dtypes

    spec, rl = ctx.spec, ctx.spec.rlhf
    if not select(ctx.tasks, PROMPT_FORMATS):
        raise UserError("spec.datasets: rlhf needs at least one dataset of format prompt for the RL stage")
    check_generation_batch(ctx)
    config_cls, trainer_cls = rl_trainer_classes(rl.algorithm)
    # New heads and adapters are initialised here, before the Trainer seeds: seed first so a run
    # (and its retry) starts from the same weights.
    set_seed(spec.hyperparameters.seed)
    loaded = load_for_training(spec, ctx.model_dir, "causal-lm", strategy=ctx.strategy)
    train = mixed_train(ctx.tasks, spec.hyperparameters.seed, PROMPT_FORMATS)
    evaluation = eval_dataset(ctx.tasks, PROMPT_FORMATS)
    args = training_args(
        ctx,
        config_cls,
        formats=PROMPT_FORMATS,
        has_eval=evaluation is not None,
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        beta=rl.beta,
        temperature=rl.temperature,
    )
    set_stage(ctx.callbacks, POLICY_STAGE)
    dtypes = trainable_dtypes(loaded.model)
    trainer = trainer_cls(
        model=loaded.model,
        reward_funcs=reward_model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=loaded.tokenizer,
        reward_processing_classes=reward_tokenizer,
        callbacks=list(ctx.callbacks),
    )
    prepare_trainer(trainer, spec, dtypes)  # undoes TRL's bf16 cast of a quantized model's trainable weights
    output = run_training(trainer, ctx.resume_from, ctx.warm_start)
    metrics = dict(output.metrics)
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    if rewards:
        metrics["reward"] = rewards[-1]
    if evaluation is not None:
        metrics |= trainer.evaluate()
    return trainer.model, loaded.tokenizer, metrics


def run(ctx: RunContext) -> TrainResult:
    metrics: dict[str, float] = {}
    if ctx.reward_model_dir is not None:
        log.info("reward model given (spec.rlhf.rewardModel.uri): skipping the reward-model stage")
        reward_model, reward_tokenizer = load_reward_model(ctx, ctx.reward_model_dir)
    elif (done := completed_reward_model(ctx)) is not None:
        reward_model, reward_tokenizer = load_reward_model(ctx, done)
    else:
        reward_model, reward_tokenizer, metrics = train_reward_model(ctx)
        if PREEMPTION.requested:  # SIGTERM during the stage: the entrypoint reports it, the retry trains again
            return TrainResult(model=reward_model, tokenizer=reward_tokenizer, metrics=metrics)
        publish_reward_model(ctx, reward_model, reward_tokenizer)
    reward_model = _frozen(reward_model)
    policy, tokenizer, policy_metrics = train_policy(ctx, reward_model, reward_tokenizer)
    return TrainResult(model=policy, tokenizer=tokenizer, metrics=metrics | policy_metrics)
