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
    for hook in ("load_kwargs", "padding_side", "prepare_trainer", "save"):
        assert not hasattr(module, hook) or callable(getattr(module, hook))


def test_facts_tell_the_techniques_apart():
    peft = {t for t in Technique if module_for(t).PEFT}
    assert peft == {Technique.LORA, Technique.QLORA, Technique.PROMPT_TUNING, Technique.PREFIX_TUNING}
    assert {t for t in Technique if module_for(t).TRAINS_BASE_WEIGHTS} == {Technique.FULL, Technique.FEATURE_EXTRACTION}


def test_unknown_technique_is_refused():
    with pytest.raises(ValueError):
        module_for("bitfit")
