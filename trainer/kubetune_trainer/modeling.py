"""Load the base model for training with the spec's technique applied, and save the final result.

`load_for_training` reads a local Hugging Face model folder (the sources layer has already fetched
it), refuses pickled weights unless spec.model.allowPickle, picks the dtype from
spec.hyperparameters.precision and hands the model to the technique module, which leaves exactly the
intended parameters trainable. `save_final` writes the result in Hugging Face format.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.constants import MERGEABLE_TECHNIQUES
from kubetune_trainer import sharding, techniques
from kubetune_trainer.errors import InfraError, UserError
from kubetune_trainer.sources import PICKLE_PATTERNS

log = logging.getLogger(__name__)

CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TASKS = (CAUSAL_LM, SEQUENCE_CLASSIFICATION)

SAFE_WEIGHTS = ("*.safetensors",)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    task: str


def compute_dtype(spec):
    """The dtype matmuls run in for this spec on this machine (kubetune_trainer.precision decides)."""
    from kubetune_trainer import precision

    return precision.plan(spec).compute_dtype


def check_weight_files(model_dir: Path, allow_pickle: bool) -> bool:
    """True when the folder has safetensors weights. Pickled-only weights are refused unless allowed:
    unpickling runs arbitrary code from the model repository."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InfraError(f"model folder {model_dir} is missing (the model download did not complete)")
    if not (model_dir / "config.json").is_file():
        raise UserError("spec.model.uri: the model folder has no config.json: is it a Hugging Face model folder?")
    # Top level only: transformers loads weights from there (subfolders such as original/ hold other formats).
    safe = [p for pattern in SAFE_WEIGHTS for p in model_dir.glob(pattern)]
    pickled = [p for pattern in PICKLE_PATTERNS for p in model_dir.glob(pattern)]
    if safe:
        return True
    if pickled and not allow_pickle:
        names = ", ".join(sorted(p.name for p in pickled)[:3])
        raise UserError(
            f"spec.model.uri: the model has only pickled weights ({names}), which can run code when loaded; "
            "convert them to safetensors, or set spec.model.allowPickle: true if you trust this repository"
        )
    if not pickled:
        raise UserError("spec.model.uri: the model folder has no weights (*.safetensors, or *.bin with allowPickle)")
    return False


def load_tokenizer(model_dir: Path, spec):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=spec.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"spec.model.uri: cannot load a tokenizer from the model folder: {exc}") from exc
    if tokenizer.pad_token is None:
        # Batches need a pad token; the eos token is the usual stand-in (its positions are masked out).
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError("spec.model.uri: the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
        log.info("tokenizer has no pad token: using %r", fallback)
    return tokenizer


def load_for_training(
    spec, model_dir, task: str, *, num_labels: int | None = None, label_names=None, packed: bool = False, strategy=None
) -> LoadedModel:
    """Load `model_dir` for `task` ("causal-lm" or "sequence-classification"; num_labels=1 is a reward
    model) with spec.technique applied: only the technique's parameters require grad.

    `packed`: the caller packs examples into rows (kubetune_trainer.packing), which decides the
    attention kernel for spec.hyperparameters.attention auto. Liger kernels (spec.hyperparameters.
    ligerKernel) are applied here, before the technique wraps the model (kubetune_trainer.speed). `strategy`
    (kubetune_trainer.sharding; default: the spec's own choice) shards the model over the processes as it loads."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from kubetune_trainer import speed

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    spec = spec.resolved()
    model_dir = Path(model_dir)
    technique = spec.technique.value
    module = techniques.module_for(technique)
    use_safetensors = check_weight_files(model_dir, spec.model.allow_pickle)
    tokenizer = load_tokenizer(model_dir, spec)

    from kubetune_trainer import precision

    dtypes = precision.plan(spec)
    trains_base_weights = getattr(module, "TRAINS_BASE_WEIGHTS", False)
    dtype = dtypes.load_dtype(trains_base_weights)
    log.info("loading %s for %s with %s: %s", model_dir.name, task, technique, dtypes.why)
    kwargs: dict[str, Any] = dict(
        trust_remote_code=spec.model.trust_remote_code,
        use_safetensors=use_safetensors,
        dtype=dtype,
    )
    strategy = strategy if strategy is not None else sharding.choose(spec)
    shard_after_apply = strategy.sharded and sharding.shards_after_apply(module, strategy.offload)
    if not shard_after_apply:
        kwargs |= sharding.load_kwargs(spec, strategy, trains_base_weights=trains_base_weights, precision=dtypes)
    if task == SEQUENCE_CLASSIFICATION:
        if label_names:
            label_names = [str(name) for name in label_names]
            num_labels = num_labels or len(label_names)
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        if not num_labels:
            raise ValueError("sequence-classification needs num_labels or label_names")
        kwargs["num_labels"] = num_labels
        # The head reads the last non-pad token: the config must know the pad id.
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    if hasattr(module, "load_kwargs"):
        kwargs |= module.load_kwargs(spec, strategy)
    attention, why_attention = speed.attention_implementation(spec, packed=packed)
    log.info(why_attention)
    if attention is not None:
        kwargs["attn_implementation"] = attention

    auto = AutoModelForCausalLM if task == CAUSAL_LM else AutoModelForSequenceClassification
    try:
        model = auto.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"spec.model.uri: cannot load the model as {task}: {exc}") from exc
    if not shard_after_apply:
        model = sharding.shard_one_process(model, strategy, trains_base_weights=trains_base_weights, precision=dtypes)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Remember where the base came from: save_final reloads it to merge an adapter. A plain attribute,
    # not a config key, so it never lands in a saved config.json.
    model.kubetune_base_dir = str(model_dir)

    if hasattr(module, "padding_side") and module.padding_side(task):
        tokenizer.padding_side = module.padding_side(task)

    speed.apply_liger(model, spec, task)
    model = module.apply(model, spec, task)
    if shard_after_apply:
        model = sharding.shard_loaded(model, strategy, trains_base_weights=trains_base_weights, precision=dtypes)

    # A sharded base keeps the dtypes it was sharded in (FSDP owns its parameters' storage).
    precision.place_weights(model, dtypes, trains_base_weights=trains_base_weights and not sharding.is_sharded(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if sharding.is_sharded(model):
        held = sharding.local_numel(model.parameters())
        log.info(
            "rank %s holds %d of the %d parameters (%.1f%%)",
            os.environ.get("RANK", "0"),
            held,
            total,
            100.0 * held / total,
        )
    log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    if trainable == 0:
        raise UserError(f"spec.technique {technique}: no parameter is trainable with these settings")
    return LoadedModel(model=model, tokenizer=tokenizer, task=task)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a trainer dependency
        return False
    return isinstance(model, PeftModel)


def _base_dir(model) -> str | None:
    base = model.get_base_model() if _is_peft(model) else model
    return getattr(base, "kubetune_base_dir", None)


def _hub_reference(spec) -> tuple[str, str | None] | None:
    """What a saved adapter should name as its base, by the model URI's scheme: a hub repository and revision
    (AutoPeftModel* works anywhere), an object-store URI (download it and pass the folder to
    PeftModel.from_pretrained), or None for a model used in place (its path is already right)."""
    from kubetune_trainer.schemes import scheme_of

    parsed, scheme = scheme_of(spec.model.uri, "spec.model.uri")
    if scheme.adapter_base == "repo":
        return parsed.location, parsed.revision
    if scheme.adapter_base == "uri":
        return spec.model.uri, None
    return None


def save_final(model, tokenizer, spec, out_dir, *, base_model_dir=None, is_main: bool = True) -> Path:
    """Write the trained model to `out_dir` in Hugging Face format. Rank 0 writes; the other ranks call it too
    for a sharded model whose full weights are saved (they hand in their shards), with is_main False.

    PEFT techniques: adapter_config.json + adapter_model.safetensors (AutoPeftModelFor*).
    full / feature-extraction: full weights (AutoModelFor*). adapter: the bottleneck weights and
    their config (techniques.adapter.load_adapter). spec.output.mergeAdapter (lora/qlora): also the
    merged full weights in out_dir/merged/, from the base reloaded in the compute precision.
    """
    spec = spec.resolved()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    technique = spec.technique.value
    module = techniques.module_for(technique)
    base_dir = base_model_dir or _base_dir(model)

    # A sharded model's ranks all take part in saving its weights (they gather the shards); rank 0 writes.
    if not (is_main or sharding.is_sharded(model)):
        return out
    if hasattr(module, "save"):
        module.save(model, out, is_main=is_main)
    else:
        model.save_pretrained(str(out), safe_serialization=True, is_main_process=is_main, **sharding.save_kwargs(model))
    if not is_main:
        return out
    if module.PEFT and _task_of(model) == SEQUENCE_CLASSIFICATION:
        _write_labels(model, out)
    tokenizer.save_pretrained(str(out))

    if spec.output.merge_adapter and spec.technique in MERGEABLE_TECHNIQUES:
        if base_dir is None:
            raise ValueError("save_final needs base_model_dir to merge the adapter")
        merge_into_base(out, base_dir, spec, task=_task_of(model), out_dir=out / "merged")
        tokenizer.save_pretrained(str(out / "merged"))
    if module.PEFT:
        _point_adapter_at_hub(out, spec)
    return out


def _task_of(model) -> str:
    base = model.get_base_model() if _is_peft(model) else model
    return SEQUENCE_CLASSIFICATION if "SequenceClassification" in type(base).__name__ else CAUSAL_LM


def _write_labels(model, out: Path) -> None:
    """A PEFT adapter does not carry the head's config: keep the labels next to it, so a reload (or the
    merge) builds a head of the right size: AutoPeftModelForSequenceClassification.from_pretrained(
    out, num_labels=..., id2label=...) with the values in kubetune_labels.json."""
    config = model.get_base_model().config
    labels = {
        "num_labels": config.num_labels,
        "id2label": {str(k): v for k, v in config.id2label.items()},
        "label2id": dict(config.label2id),
        "pad_token_id": config.pad_token_id,
    }
    (out / "kubetune_labels.json").write_text(json.dumps(labels, indent=2) + "\n")


def _point_adapter_at_hub(out: Path, spec) -> None:
    """A saved adapter names its base by the path it was loaded from, a temporary folder in the pod;
    name the hub repository (hf://: AutoPeftModel* works anywhere) or the s3:// URI instead."""
    reference = _hub_reference(spec)
    config_file = out / "adapter_config.json"
    if reference is None or not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"], revision = reference
    if revision:
        config["revision"] = revision
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def merge_into_base(adapter_dir, base_dir, spec, *, task: str, out_dir) -> Path:
    """Reload the base unquantized in the compute precision, apply the saved LoRA adapter, merge and
    save full weights. (A 4-bit base cannot take merged weights without losing the update.)"""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if task == CAUSAL_LM else AutoModelForSequenceClassification
    base = auto.from_pretrained(
        str(base_dir),
        dtype=compute_dtype(spec),
        trust_remote_code=spec.model.trust_remote_code,
        use_safetensors=check_weight_files(Path(base_dir), spec.model.allow_pickle),
        **head_kwargs(adapter_dir, task),
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    log.info("merged adapter written to %s", out_dir)
    return Path(out_dir)


def head_kwargs(adapter_dir, task: str = SEQUENCE_CLASSIFICATION) -> dict[str, Any]:
    """from_pretrained kwargs that rebuild a classification head of the saved size and labels."""
    labels_file = Path(adapter_dir) / "kubetune_labels.json"
    if task != SEQUENCE_CLASSIFICATION or not labels_file.is_file():
        return {}
    labels = json.loads(labels_file.read_text())
    return {
        "num_labels": labels["num_labels"],
        "id2label": {int(k): v for k, v in labels["id2label"].items()},
        "label2id": labels["label2id"],
        "pad_token_id": labels.get("pad_token_id"),
    }
