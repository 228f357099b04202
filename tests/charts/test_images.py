"""The container images, read without a Docker engine: the trainer pins exactly versions the project's
requirement ranges admit and installs every requirement of the `trainer` extra; its environment is the one
the operator gives training pods; both images run as non-root with the entrypoints the operator and the
chart use. (`make test-images` builds and runs them.)"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kubetune.controller import builders
from kubetune.controller.config import OperatorConfig

REPO = Path(__file__).resolve().parents[2]
TRAINER = (REPO / "trainer" / "Dockerfile").read_text()
OPERATOR = (REPO / "operator" / "Dockerfile").read_text()


def _pins(dockerfile: str) -> dict[str, str]:
    return {
        canonicalize_name(name): version
        for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([0-9][^"]*)"', dockerfile)
    }


def _extra(name: str) -> list[Requirement]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [Requirement(r) for r in pyproject["project"]["optional-dependencies"][name]]


def _installed_closure(names: set[str]) -> set[str]:
    """`names` and everything they require, transitively, as the installed distributions' metadata says."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def _dockerfile_env(dockerfile: str) -> dict[str, str]:
    joined = re.sub(r"\\\n", " ", dockerfile)
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env |= dict(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def test_trainer_pins_satisfy_the_projects_ranges():
    ranges = {canonicalize_name(r.name): r for r in _extra("trainer") + _extra("gpu")}
    pins = _pins(TRAINER)
    for name in (
        "transformers",
        "peft",
        "trl",
        "bitsandbytes",
        "datasets",
        "accelerate",
        "torch-optimi",
        "liger-kernel",
        "kubernetes",
        "boto3",
    ):
        assert name in pins, f"{name} is not pinned in trainer/Dockerfile"
        assert pins[name] in ranges[name].specifier, f"{name}=={pins[name]} is outside {ranges[name]}"


def test_trainer_installs_every_requirement_of_the_trainer_extra():
    """A requirement added to the extra must reach the image: pinned there, or required by a pinned package
    (torch comes from the base image)."""
    pins = set(_pins(TRAINER))
    brought = _installed_closure(pins)
    missing = [
        str(r)
        for r in _extra("trainer")
        if canonicalize_name(r.name) not in brought and canonicalize_name(r.name) != "torch"
    ]
    assert missing == [], f"trainer/Dockerfile installs neither these nor a package that requires them: {missing}"


def test_trainer_image_environment_is_the_pods():
    ftj = {"metadata": {"name": "x", "namespace": "ns", "uid": "u"}}
    spec = builders.resolve_spec(
        {
            "technique": "lora",
            "model": {"uri": "hf://org/model"},
            "datasets": [{"name": "d", "uri": "s3://bucket/d.jsonl", "format": "text"}],
            "output": {"uri": "s3://bucket/out/"},
        },
        OperatorConfig(),
    )
    pod_env = {e["name"]: e["value"] for e in builders.trainer_env(ftj, spec, OperatorConfig()) if "value" in e}
    image_env = _dockerfile_env(TRAINER)
    for name in ("HOME", "HF_HOME", "TMPDIR"):
        assert image_env[name] == pod_env[name], name
    assert re.search(rf"^WORKDIR {builders.SCRATCH_MOUNT}$", TRAINER, re.M)


def test_images_run_as_non_root_with_the_expected_entrypoints():
    assert re.search(r"^USER 65532", OPERATOR, re.M) and 'ENTRYPOINT ["kubetune"]' in OPERATOR
    assert "torch" not in OPERATOR.lower().replace("no torch", "")
    assert re.search(rf"^USER {builders.RUN_AS_USER}:{builders.RUN_AS_USER}$", TRAINER, re.M)
    assert 'ENTRYPOINT ["python", "-m", "kubetune_trainer"]' in TRAINER
    assert ".venv" in (REPO / ".dockerignore").read_text()


def test_quickstart_builds_and_installs_the_images_as_the_makefile_and_the_chart_name_them():
    """docs/quickstart.md's image step: the build arguments it names are the Dockerfiles' base arguments, the
    Makefile passes them under those names, and the chart values it sets are the chart's image repositories
    (what `make test-images` gives the chart)."""
    import yaml

    quickstart = (REPO / "docs" / "quickstart.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for dockerfile, arg, make_variable in (
        (OPERATOR, "PYTHON_IMAGE", "OPERATOR_BASE"),
        (TRAINER, "BASE_IMAGE", "TRAINER_BASE"),
    ):
        assert re.search(rf"^ARG {arg}=", dockerfile, re.M) and re.search(rf"^FROM \$\{{{arg}\}}", dockerfile, re.M)
        assert f"--build-arg {arg}=$({make_variable})" in makefile
        assert f"`{arg}`" in quickstart
    default_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", TRAINER, re.M).group(1)
    assert f"`{default_base}` (default)" in quickstart
    for base in re.findall(r"TRAINER_BASE=(\S+)", quickstart):
        assert f"`{base}`" in quickstart, f"{base} is built in the quickstart but not in its table of bases"
    values = yaml.safe_load((REPO / "charts" / "kubetune" / "values.yaml").read_text())
    for key in re.findall(r"--set ((?:trainer\.)?image\.repository)=", quickstart):
        node = values
        for part in key.split("."):
            node = node[part]
        assert isinstance(node, str)
    assert "--set image.repository=" in quickstart and "--set trainer.image.repository=" in quickstart
