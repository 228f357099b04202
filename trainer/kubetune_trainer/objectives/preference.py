"""objective: preference — direct preference optimisation on (prompt, chosen, rejected) rows with
TRL's DPOTrainer.

spec.preference.algorithm picks the loss: dpo -> sigmoid, ipo, hinge, robust (with
spec.preference.labelSmoothing as the assumed flip rate); beta is the pull towards the reference.

The reference model is the policy as training starts:
- PEFT techniques (lora, qlora, prompt-tuning, prefix-tuning): no second model. DPOTrainer keeps a
  frozen copy of the freshly initialised adapter (adapter "ref") and computes reference log-probs
  with it; for LoRA that is exactly the adapter-disabled base (B = 0), for soft prompts/prefixes it
  is the starting prompt, so the implicit rewards start at 0 as DPO assumes. The copy is dropped
  before the model is returned, so only the trained adapter is saved.
- full, feature-extraction, adapter: a frozen deep copy of the model as loaded (for adapter, its
  zero-initialised bottlenecks make it equal to the base).

Plain-text and conversational rows both work (TRL applies the tokenizer's chat template to message
lists). Several preference datasets mix by weight; eval is per task (eval_<task>_loss).
"""

from __future__ import annotations

import copy
import logging

from kubetune.api.constants import DatasetFormat, PreferenceAlgorithm
from kubetune_trainer.context import RunContext, TrainResult
from kubetune_trainer.errors import UserError

log = logging.getLogger(__name__)

FORMATS = (DatasetFormat.PREFERENCE,)

LOSS_TYPES = {
    PreferenceAlgorithm.DPO: "sigmoid",
    PreferenceAlgorithm.IPO: "ipo",
    PreferenceAlgorithm.HINGE: "hinge",
    PreferenceAlgorithm.ROBUST: "robust",
}


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def frozen_copy(model):
    """A reference model: the policy as it starts, never trained."""
    ref = copy.deepcopy(model)
    ref.eval()
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref


def dpo_config(ctx: RunContext, has_eval: bool):
    from trl import DPOConfig

    from kubetune_trainer.args import training_args

    pref = ctx.spec.preference
    return training_args(
        ctx,
        DPOConfig,
        formats=FORMATS,
        has_eval=has_eval,
        loss_type=[LOSS_TYPES[PreferenceAlgorithm(pref.algorithm)]],
        beta=pref.beta,
        label_smoothing=pref.label_smoothing if pref.algorithm == PreferenceAlgorithm.ROBUST else 0.0,
        max_length=ctx.spec.hyperparameters.max_seq_length,
        precompute_ref_log_probs=False,
    )


def drop_reference_adapter(model) -> None:
    """DPOTrainer's "ref" adapter is a frozen copy of the starting adapter: not part of the result."""
    if is_peft(model) and "ref" in model.peft_config:
        model.set_adapter("default")
        model.delete_adapter("ref")


def run(ctx: RunContext) -> TrainResult:
    from transformers import set_seed
    from trl import DPOTrainer

    from kubetune_trainer.data import eval_dataset, mixed_train, select
    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer, run_training, trainable_dtypes

    spec = ctx.spec
    if not select(ctx.tasks, FORMATS):
        raise UserError("spec.datasets: the preference objective needs at least one dataset of format preference")
    # New heads and adapters are initialised here, before the Trainer seeds: seed first so a run
    # (and its retry) starts from the same weights.
    set_seed(spec.hyperparameters.seed)
    loaded = load_for_training(spec, ctx.model_dir, "causal-lm", strategy=ctx.strategy)
    model, tokenizer = loaded.model, loaded.tokenizer
    ref_model = None if is_peft(model) else frozen_copy(model)

    train = mixed_train(ctx.tasks, spec.hyperparameters.seed, FORMATS)
    evaluation = eval_dataset(ctx.tasks, FORMATS)
    has_eval = evaluation is not None
    dtypes = trainable_dtypes(model)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=dpo_config(ctx, has_eval),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        callbacks=list(ctx.callbacks),  # metrics, checkpoints, early stopping (entrypoint)
    )
    prepare_trainer(trainer, spec, dtypes)  # undoes TRL's bf16 cast of a quantized model's trainable weights
    output = run_training(trainer, ctx.resume_from, ctx.warm_start)
    metrics = dict(output.metrics)
    if has_eval:
        metrics |= trainer.evaluate()
    model = trainer.model
    drop_reference_adapter(model)
    return TrainResult(model=model, tokenizer=tokenizer, metrics=metrics)
