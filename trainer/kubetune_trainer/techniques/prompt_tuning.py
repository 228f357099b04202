"""prompt-tuning: trainable soft-prompt embeddings prepended to the input; the model is unchanged
(PEFT PromptTuningConfig from spec.promptTuning). initText initialises the prompt from the token
embeddings of that text (tokenized with the model's own tokenizer)."""

from __future__ import annotations

from kubetune_trainer.techniques import peft_task_type

PEFT = True
TRAINS_BASE_WEIGHTS = False


def padding_side(task: str) -> str | None:
    """PEFT feeds soft prompts as inputs_embeds, so a classification head cannot find the last non-pad token
    from input_ids and reads the last position: left padding makes that the last real token."""
    return "left" if task == "sequence-classification" else None


def prompt_tuning_config(spec, task: str, tokenizer_dir: str | None):
    from peft import PromptTuningConfig, PromptTuningInit

    settings = spec.prompt_tuning
    kwargs = {}
    if settings.init_text:
        kwargs = dict(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=settings.init_text,
            tokenizer_name_or_path=tokenizer_dir,
        )
    return PromptTuningConfig(
        task_type=peft_task_type(task),
        num_virtual_tokens=settings.virtual_tokens,
        **kwargs,
    )


def apply(model, spec, task: str):
    from peft import get_peft_model

    # The model was loaded from a local folder that also holds its tokenizer.
    tokenizer_dir = getattr(model, "kubetune_base_dir", None) or model.name_or_path
    return get_peft_model(model, prompt_tuning_config(spec, task, tokenizer_dir))


def prepare_trainer(trainer) -> None:
    """Make the Trainer average a causal-LM loss over the tokens PEFT actually predicts.

    transformers counts the targets of a causal-LM batch over `labels[..., 1:]` (a row's first token
    has nothing before it). With a soft prompt in front, the first token is predicted from the last
    virtual token, so every label is a target; counting one fewer per row made the loss too large
    (by 1/(row length - 1): about 10 % on 10-token rows)."""
    if hasattr(trainer, "_loss_shifts_labels"):  # transformers' private flag; absent elsewhere = no harm
        trainer._loss_shifts_labels = False


def plan_parameters(shape, spec, head: int) -> tuple[int, int]:
    """For the memory plan: (parameters that train, of which the technique adds beside the base)."""
    added = spec.prompt_tuning.virtual_tokens * shape.hidden
    return added + head, added + head


def load_result(out_dir, base_dir, task: str, spec):
    """The saved result loaded the way a user loads it (the adapter names its base)."""
    from kubetune_trainer.techniques import load_peft_result

    return load_peft_result(out_dir, task)
