"""One self-contained module per spec.technique value, named after it (`prompt-tuning` -> prompt_tuning.py).

A technique module declares its facts:
  PEFT                 saved as a PEFT adapter (AutoPeftModelFor* reloads it; the adapter names its base)
  TRAINS_BASE_WEIGHTS  some of the base model's own weights train (mixed precision loads them in fp32)
  SHARD_AFTER_APPLY    under FSDP: loaded whole, sharded once apply() ran, not as it loads (kubetune_trainer.sharding)
and its hooks:
  apply(model, spec, task) -> model     required: afterwards only the technique's parameters require grad
  load_kwargs(spec, strategy=None) -> dict
                                        extra `from_pretrained` arguments (quantization, device map) for the
                                        sharding.Strategy the run uses (None: a whole model, as a user loads it)
  padding_side(task) -> str | None      a tokenizer padding side the technique needs
  prepare_trainer(trainer)              a fix-up once the Trainer exists (kubetune_trainer.trainer_setup)
  save(model, out_dir, is_main)         when the result is not saved with `model.save_pretrained` (every rank
                                        calls it for a sharded model; rank 0, is_main, writes)
  load_result(out_dir, base_dir, task, spec)
                                        required: the saved result (final/) loaded the way a user loads it
and its part of the memory plan (kubetune_trainer.plan), from the model's shape alone:
  plan_parameters(shape, spec, head)    required: (parameters that train, of which it adds beside the base);
                                        `head` is a new classification head's parameters, 0 for a causal LM
  plan_activation(spec) -> int          bytes per token per layer, x hidden, it saves beyond a plain layer
  plan_quantized_bits(spec)             the bits the frozen base's linear layers are held in
A technique module imports torch and the training libraries only inside its hooks: `kubetune plan` and the
operator plan in images without them.
What the API needs to validate a spec (the technique's own spec section, whether mergeAdapter applies, whether packed
rows work, which objectives and strategies it cannot run) is its row in kubetune.api.constants.TECHNIQUES, which the
operator shares without the training libraries; the trainer reads it from there too.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FACTS = ("PEFT", "TRAINS_BASE_WEIGHTS")


def module_for(technique) -> ModuleType:
    """The module implementing `technique` (a Technique or its value)."""
    from kubetune.api.constants import Technique

    value = Technique(getattr(technique, "value", technique)).value
    return importlib.import_module(f"kubetune_trainer.techniques.{value.replace('-', '_')}")


def peft_task_type(task: str):
    """PEFT's task type for a model task ("causal-lm" or "sequence-classification")."""
    from peft import TaskType

    return TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS


def load_whole_result(out_dir, task: str, **kwargs):
    """A result saved as a whole model (AutoModelForCausalLM / AutoModelForSequenceClassification)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    return auto.from_pretrained(str(out_dir), **kwargs)


def load_peft_result(out_dir, task: str, **kwargs):
    """A PEFT adapter (AutoPeftModelFor*: adapter_config.json names its base); a classifier's head is rebuilt at the
    size and labels it was saved with."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

    from kubetune_trainer.modeling import head_kwargs

    if task == "causal-lm":
        return AutoPeftModelForCausalLM.from_pretrained(str(out_dir), **kwargs)
    return AutoPeftModelForSequenceClassification.from_pretrained(str(out_dir), **head_kwargs(out_dir), **kwargs)
