"""The technique registry: every spec.technique value has its module, with its facts and hooks declared."""

from __future__ import annotations

import pytest

from kubetune.api.constants import Technique
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


def test_facts_tell_the_techniques_apart():
    peft = {t for t in Technique if module_for(t).PEFT}
    assert peft == {Technique.LORA, Technique.QLORA, Technique.PROMPT_TUNING, Technique.PREFIX_TUNING}
    assert {t for t in Technique if module_for(t).TRAINS_BASE_WEIGHTS} == {Technique.FULL, Technique.FEATURE_EXTRACTION}


def test_unknown_technique_is_refused():
    with pytest.raises(ValueError):
        module_for("bitfit")
