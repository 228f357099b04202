"""The technique registry: every spec.technique value has its module, with its facts and hooks declared."""

from __future__ import annotations

import pytest

from kubetune.api.constants import Technique
from kubetune.api.v1alpha1 import Spec
from kubetune_trainer.techniques import FACTS, module_for


@pytest.mark.parametrize("technique", list(Technique))
def test_every_technique_has_a_module_with_its_facts(technique):
    module = module_for(technique)
    assert module is module_for(technique.value)
    assert callable(module.apply)
    for fact in FACTS:
        assert isinstance(getattr(module, fact), bool), f"{module.__name__} does not declare {fact}"
    assert callable(module.plan_parameters), f"{module.__name__} has no part in the memory plan"
    assert callable(module.load_result), f"{module.__name__} does not say how its result loads"
    for hook in ("load_kwargs", "padding_side", "prepare_trainer", "save", "plan_activation", "plan_quantized_bits"):
        assert not hasattr(module, hook) or callable(getattr(module, hook))


def test_technique_modules_import_without_the_training_libraries():
    """`kubetune plan` and the operator plan in an image without torch: importing every technique module (as the
    plan does) must not import torch, peft or transformers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from kubetune.api.constants import Technique\n"
        "from kubetune_trainer.techniques import module_for\n"
        "import kubetune_trainer.plan\n"
        "for t in Technique: module_for(t)\n"
        "print(' '.join(m for m in ('torch', 'peft', 'transformers', 'bitsandbytes') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"importing the technique modules imported {out.strip()}"


@pytest.mark.parametrize("technique", list(Technique))
def test_facts_say_what_the_technique_does_to_a_model(technique, tiny_llama_dir):
    """PEFT: the technique makes a PeftModel (saved as an adapter); TRAINS_BASE_WEIGHTS: some of the base model's own
    weights require grad afterwards. Checked on the tiny Llama, so a new technique's facts are checked too."""
    from peft import PeftModel
    from tests.fixtures import TECHNIQUE_SECTIONS
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.modeling import load_for_training

    spec = Spec.model_validate(
        {
            "technique": technique.value,
            "model": {"uri": tiny_llama_dir.as_uri()},
            "datasets": [{"uri": "file:///d.jsonl", "format": "text"}],
            "hyperparameters": {"precision": "fp32"},
            **TECHNIQUE_SECTIONS[technique.value],
        }
    ).resolved()
    model = load_for_training(spec, tiny_llama_dir, "causal-lm").model
    module = module_for(technique)
    assert isinstance(model, PeftModel) == module.PEFT
    base_names = {name for name, _ in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).named_parameters()}
    trains_base = any(p.requires_grad for name, p in model.named_parameters() if name in base_names)
    assert trains_base == module.TRAINS_BASE_WEIGHTS


def test_unknown_technique_is_refused():
    with pytest.raises(ValueError):
        module_for("bitfit")
