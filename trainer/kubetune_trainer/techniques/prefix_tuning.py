"""prefix-tuning: trainable key/value prefixes in every attention layer (PEFT PrefixTuningConfig from
spec.prefixTuning; projection = the paper's MLP reparameterisation).

transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old name still works
through **kwargs until 5.40, with a FutureWarning). peft 0.21.2's sequence-classification prefix path
looks for `past_key_values` in the model's forward signature and otherwise fails with "Model does not
support past key values which are required for prefix tuning". `accept_past_key_values` gives the
model instance a forward with that argument, handed on as `cache`. Call it on a freshly loaded
classification base before `PeftModel.from_pretrained` when reloading a saved prefix (see
`load_prefix_classifier`). AutoPeftModelForCausalLM reloads a causal-LM prefix as is (until 5.40).
"""

from __future__ import annotations

import inspect
import types

from kubetune_trainer.techniques import peft_task_type

PEFT = True
TRAINS_BASE_WEIGHTS = False


def prefix_tuning_config(spec, task: str, hidden_size: int):
    from peft import PrefixTuningConfig

    settings = spec.prefix_tuning
    return PrefixTuningConfig(
        task_type=peft_task_type(task),
        num_virtual_tokens=settings.virtual_tokens,
        prefix_projection=settings.projection,
        encoder_hidden_size=hidden_size,
    )


def _forward_with_past_key_values(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
    if past_key_values is not None:
        kwargs["cache"] = past_key_values
    return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def accept_past_key_values(model):
    """Let peft's prefix path find `past_key_values` in the forward signature of a model whose
    forward now calls it `cache`. A bound method (not a closure) so deepcopy rebinds it to the copy."""
    parameters = inspect.signature(type(model).forward).parameters
    if "past_key_values" not in parameters and "cache" in parameters:
        model.forward = types.MethodType(_forward_with_past_key_values, model)
    return model


def apply(model, spec, task: str):
    from peft import get_peft_model

    # Both tasks: the causal-LM path passes `past_key_values` through **kwargs, which transformers
    # announces it will drop in 5.40; handing it on as `cache` keeps working after that.
    accept_past_key_values(model)
    return get_peft_model(model, prefix_tuning_config(spec, task, model.config.hidden_size))


def load_prefix_classifier(adapter_dir, base_model_dir, **from_pretrained_kwargs):
    """Reload a saved sequence-classification prefix: base (head sized from kubetune_labels.json),
    the forward fix above, then the PEFT adapter."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from kubetune_trainer.modeling import head_kwargs

    kwargs = {**head_kwargs(adapter_dir), **from_pretrained_kwargs}
    base = AutoModelForSequenceClassification.from_pretrained(str(base_model_dir), **kwargs)
    return PeftModel.from_pretrained(accept_past_key_values(base), str(adapter_dir))


def plan_parameters(shape, spec, head: int) -> tuple[int, int]:
    """For the memory plan: (parameters that train, of which the technique adds beside the base)."""
    tokens, token_dim = spec.prefix_tuning.virtual_tokens, shape.kv_heads * shape.head_dim
    prefixes = shape.layers * 2 * token_dim  # a key and a value prefix per layer
    if not spec.prefix_tuning.projection:
        added = tokens * prefixes
    else:
        # PEFT's PrefixEncoder: token embeddings, then Linear(token_dim, hidden) -> tanh -> Linear(hidden, prefixes)
        added = tokens * token_dim + (token_dim + 1) * shape.hidden + (shape.hidden + 1) * prefixes
    return added + head, added + head


def load_result(out_dir, base_dir, task: str, spec):
    """The saved result loaded the way a user loads it (the adapter names its base)."""
    from kubetune_trainer.techniques import load_peft_result

    if task == "causal-lm":
        return load_peft_result(out_dir, task)
    return load_prefix_classifier(out_dir, base_dir)
