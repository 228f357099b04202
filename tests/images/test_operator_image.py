"""The operator image as the chart runs it: read-only root, non-root, no capabilities, no network.
Its CLI answers like the project's own (`--help`, `validate` on every example, `crd` equal to crds/); it
adds less than 250 MB to its Python base. `kubetune operator` itself runs in test_pod_in_containers.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from imageset import MB, REPO

OPERATOR_USER = "65532:65532"  # the image's USER and the chart's runAsUser/runAsGroup
LOCKED_DOWN = [
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt",
    "no-new-privileges",
    "--network",
    "none",
    "--user",
    OPERATOR_USER,
]


def run_operator(images, *args: str, volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    mounts = [part for volume in volumes for part in ("--volume", volume)]
    return images.engine.cli("run", "--rm", *LOCKED_DOWN, *mounts, images.operator, *args, check=False, timeout=120)


def test_operator_image_adds_less_than_250_mb_to_its_base(images):
    added = images.engine.size(images.operator) - images.engine.size(images.python_base)
    assert 0 < added < 250 * MB, f"the operator image adds {added / MB:.0f} MB to {images.python_base}"


def test_operator_image_runs_as_its_non_root_user_by_default(images):
    info = images.engine.inspect(images.operator)
    assert info["Config"]["User"] == OPERATOR_USER
    assert info["Config"]["Entrypoint"] == ["kubetune"] and info["Config"]["Cmd"] == ["operator"]
    result = images.engine.cli(
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--entrypoint",
        "python",
        images.operator,
        "-c",
        "import os; print(os.getuid(), os.getgid())",
        timeout=60,
    )
    assert result.stdout.decode().split() == ["65532", "65532"]


def test_operator_image_leaves_the_test_cluster_out(images):
    # kubetune.testing lives in operator/ but is the tests' (it needs kmock): .dockerignore keeps it out of the build.
    probe = "import importlib.util; print(importlib.util.find_spec('kubetune.testing'))"
    result = images.engine.cli(
        "run", "--rm", *LOCKED_DOWN, "--entrypoint", "python", images.operator, "-c", probe, timeout=60
    )
    assert result.stdout.decode().strip() == "None"


def test_help_answers_with_every_command(images):
    result = run_operator(images, "--help")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    for command in ("validate", "crd", "run", "operator"):
        assert command in out


def test_validate_accepts_every_example_and_names_the_field_of_a_bad_one(images, tmp_path):
    examples = sorted(p.name for p in (REPO / "examples").glob("*.yaml"))
    assert examples
    result = run_operator(
        images, "validate", *[f"/examples/{name}" for name in examples], volumes=(f"{REPO / 'examples'}:/examples:ro",)
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert f"{len(examples)} file(s) valid" in result.stdout.decode()

    bad = Path(tmp_path) / "bad.yaml"
    bad.write_text((REPO / "examples" / examples[0]).read_text().replace("technique:", "technique: sideways #", 1))
    bad.chmod(0o644)
    Path(tmp_path).chmod(0o755)
    result = run_operator(images, "validate", "/in/bad.yaml", volumes=(f"{tmp_path}:/in:ro",))
    lines = (result.stdout + result.stderr).decode().strip().splitlines()
    assert result.returncode == 1
    assert any(line.startswith("/in/bad.yaml: ") and "spec.technique" in line for line in lines), lines
    assert "Traceback" not in "\n".join(lines)


def test_crd_prints_exactly_what_crds_holds(images):
    result = run_operator(images, "crd")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == (REPO / "crds" / "finetunejobs.kubetune.dev.yaml").read_text()
