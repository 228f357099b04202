"""The container images: the trainer pins exactly versions the project's requirement ranges admit, and
both images run as non-root with the entrypoints the operator and the chart use."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _pins(dockerfile: str) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([0-9][^"]*)"', dockerfile)}


def test_trainer_pins_satisfy_the_projects_ranges():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ranges = {Requirement(r).name.lower(): Requirement(r) for r in pyproject["project"]["optional-dependencies"]["trainer"]}
    ranges |= {Requirement(r).name.lower(): Requirement(r) for r in pyproject["project"]["optional-dependencies"]["gpu"]}
    pins = _pins((REPO / "trainer" / "Dockerfile").read_text())
    for name in ("transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "liger-kernel"):
        assert name in pins, f"{name} is not pinned in trainer/Dockerfile"
        assert pins[name] in ranges[name].specifier, f"{name}=={pins[name]} is outside {ranges[name]}"


def test_images_run_as_non_root_with_the_expected_entrypoints():
    operator = (REPO / "operator" / "Dockerfile").read_text()
    trainer = (REPO / "trainer" / "Dockerfile").read_text()
    assert re.search(r"^USER 65532", operator, re.M) and 'ENTRYPOINT ["kubetune"]' in operator
    assert "torch" not in operator.lower().replace("no torch", "")
    assert re.search(r"^USER 1000", trainer, re.M)
    assert 'ENTRYPOINT ["python", "-m", "kubetune_trainer"]' in trainer
    assert ".venv" in (REPO / ".dockerignore").read_text()
