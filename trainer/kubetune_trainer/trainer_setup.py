"""What every recipe does to its Trainer (transformers' or TRL's) once it exists, before `train()` creates
the optimizer: undo TRL's dtype cast, run the technique's own fix-up, pick the optimizer the precision
needs and take transformers' console output off; and how it trains (`run_training`)."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_utils import TrainOutput

from kubetune_trainer import precision, sharding


class _AlreadyDone(Exception):
    pass


class StopWhenDone(TrainerCallback):
    """A checkpoint saved at the last step resumes into one step too many: transformers 5.24's loop starts an
    epoch and trains before it checks the step count (a rerun of a finished job logged step 13 of 12). Stop
    before that step, with the checkpoint's weights loaded."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise _AlreadyDone


def run_training(trainer, resume_from=None, warm_start=None) -> TrainOutput:
    """`trainer.train()`, resuming from the local checkpoint `resume_from`; a checkpoint of the last step gives
    its model without training (and without logging) anything. `warm_start`: a checkpoint whose weights alone the
    model starts from (spec.resumeFrom when the optimisation differs), loaded the way the Trainer loads a resume's."""
    from kubetune_trainer.preemption import PREEMPTION

    if warm_start is not None and resume_from is None:
        trainer._load_from_checkpoint(str(warm_start))
    try:
        return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except _AlreadyDone:
        PREEMPTION.training = False
        return TrainOutput(trainer.state.global_step, 0.0, {})


def trainable_dtypes(model) -> dict:
    """name -> dtype of each trainable parameter, taken before a TRL trainer is made (see `restore_dtypes`)."""
    return {name: param.dtype for name, param in model.named_parameters() if param.requires_grad}


def restore_dtypes(model, dtypes: dict) -> int:
    """Cast the parameters named in `dtypes` back; returns how many changed.

    A TRL workaround: TRL's DPO/Reward/GRPO/RLOO trainers (trl 1.16) cast every trainable parameter of a
    quantized model to bf16 whatever the precision (after the QLoRA paper). A classification or reward head
    then gets fp32 hidden states where precision is fp32 (a dtype error), and the adapters train without
    fp32 master weights."""
    count = 0
    for name, param in model.named_parameters():
        if name in dtypes and param.dtype != dtypes[name]:
            param.data = param.data.to(dtypes[name])
            count += 1
    return count


def prepare_trainer(trainer, spec, dtypes: dict | None = None):
    """Ready `trainer` for `spec`; `dtypes` from `trainable_dtypes` when the trainer is one of TRL's."""
    from kubetune_trainer.techniques import module_for

    if dtypes:
        restore_dtypes(trainer.model, dtypes)
    module = module_for(spec.technique)
    if hasattr(module, "prepare_trainer"):
        module.prepare_trainer(trainer)
    precision.configure_optimizer(trainer, precision.plan(spec))
    sharding.install_checkpointing(trainer, sharded=sharding.is_sharded(trainer.model))
    trainer.add_callback(StopWhenDone)
    remove_console_callbacks(trainer)
    return trainer


def remove_console_callbacks(trainer) -> None:
    """Take transformers' own progress output off `trainer`: the Trainer always adds one console callback,
    PrinterCallback (prints every log dict) with disable_tqdm, else ProgressCallback (a tqdm bar that also writes
    the dicts), or NotebookProgressCallback in a notebook (transformers 5.24, trainer.py). kubetune's console
    shows progress instead (kubetune_trainer.console)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    kinds: tuple[type, ...] = (PrinterCallback, ProgressCallback)
    try:
        from transformers.utils.notebook import NotebookProgressCallback

        kinds += (NotebookProgressCallback,)
    except ImportError:  # no IPython: no notebook callback either
        pass
    for callback in [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, kinds)]:
        trainer.remove_callback(callback)
