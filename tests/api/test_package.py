"""kubetune.api is the contract both images share: cheap to import, and free of the training libraries (the
operator image has none of them) and of the operator's kopf (the trainer image need not load it)."""

from __future__ import annotations

import subprocess
import sys

from kubetune.api import constants, v1alpha1
from kubetune.api.constants import OBJECTIVES, TECHNIQUES, Objective, Technique

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate", "kopf", "kubetune_trainer")


def test_importing_the_whole_api_loads_no_training_library_and_no_kopf():
    code = (
        "import pkgutil, importlib, sys, kubetune.api as api\n"
        "for m in pkgutil.iter_modules(api.__path__): importlib.import_module(f'kubetune.api.{m.name}')\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_technique_and_objective_has_its_row_and_sections():
    assert set(TECHNIQUES) == set(Technique) and set(OBJECTIVES) == set(Objective)
    for info in TECHNIQUES.values():
        for section in info.sections:
            attribute, model = v1alpha1.SECTIONS[section]
            assert v1alpha1.Spec.model_fields[attribute].alias == section and issubclass(model, v1alpha1.ApiModel)
    # the derived views the trainer imports are the table's (checked on known rows: a new technique adds to them)
    assert {Technique.LORA, Technique.QLORA} <= set(constants.MERGEABLE_TECHNIQUES)
    assert not {Technique.FULL, Technique.ADAPTER, Technique.PROMPT_TUNING} & set(constants.MERGEABLE_TECHNIQUES)
    assert {(Technique.PROMPT_TUNING, Objective.RLHF), (Technique.PREFIX_TUNING, Objective.RLHF)} <= set(
        constants.UNSUPPORTED_COMBINATIONS
    )
    assert (Technique.LORA, Objective.RLHF) not in constants.UNSUPPORTED_COMBINATIONS
    assert constants.TECHNIQUE_SECTIONS["lora"][:2] == (Technique.LORA, Technique.QLORA)


def test_resolved_fills_exactly_the_sections_the_tables_name():
    from tests.api.manifests import base

    for technique in Technique:
        for objective in Objective:
            spec = base()["spec"] | {"technique": technique.value, "objective": objective.value}
            spec.pop("lora")
            resolved = v1alpha1.Spec.model_validate(spec).resolved()  # per-field only: every pair resolves
            wanted = {*TECHNIQUES[technique].sections, OBJECTIVES[objective].section} - {None}
            filled = {s for s, (attribute, _) in v1alpha1.SECTIONS.items() if getattr(resolved, attribute) is not None}
            assert filled == wanted, (technique, objective)
