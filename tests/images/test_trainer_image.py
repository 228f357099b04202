"""The trainer image's own defaults: the environment the operator's pods set, a usable temporary directory
with or without /scratch mounted, no build leftovers, consistent packages, Liger only beside Triton, and
a model file its user cannot read reported as "permission denied" with the path. The operator's pod spec
runs in this image in test_pod_in_containers.py."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from imageset import REPO

from kubetune.api.constants import ExitCode
from kubetune.controller import builders
from kubetune.controller.config import OperatorConfig

TRAINER_USER = f"{builders.RUN_AS_USER}:{builders.RUN_AS_USER}"


def run_trainer(images, *args: str, entrypoint: str | None = None, options: tuple[str, ...] = (), check=True):
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    return images.engine.cli(
        "run", "--rm", "--network", "none", *options, *extra, images.trainer, *args, check=check, timeout=300
    )


def pod_env() -> dict[str, str]:
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
    return {e["name"]: e["value"] for e in builders.trainer_env(ftj, spec, OperatorConfig()) if "value" in e}


def test_image_environment_user_and_workdir_are_the_pods(images):
    config = images.engine.inspect(images.trainer)["Config"]
    image_env = dict(item.split("=", 1) for item in config["Env"])
    for name in ("HOME", "HF_HOME", "TMPDIR"):
        assert image_env[name] == pod_env()[name], name
    assert config["User"] == TRAINER_USER
    assert config["WorkingDir"] == builders.SCRATCH_MOUNT
    assert config["Entrypoint"] == ["python", "-m", "kubetune_trainer"]


@pytest.mark.parametrize(
    "options",
    [(), ("--read-only", "--tmpfs", f"{builders.SCRATCH_MOUNT}:mode=1777")],
    ids=["plain-docker-run", "read-only-root-with-scratch-mounted"],
)
def test_temporary_directory_and_home_are_writable(images, options):
    probe = (
        "import os, pathlib, tempfile\n"
        "with tempfile.NamedTemporaryFile() as f: print(f.name)\n"
        "pathlib.Path(os.environ['HF_HOME']).mkdir(parents=True, exist_ok=True)\n"
        "(pathlib.Path.home() / '.probe').write_text('ok'); print(pathlib.Path.home())\n"
    )
    result = run_trainer(images, "-c", probe, entrypoint="python", options=options)
    name, home = result.stdout.decode().split()
    assert name.startswith(builders.SCRATCH_MOUNT + "/") and home == builders.SCRATCH_MOUNT


def test_no_build_leftovers_and_consistent_packages(images):
    leftovers = run_trainer(
        images,
        "-c",
        "ls -d /opt/kubetune /tmp/kubetune 2>/dev/null;"
        " find / -xdev \\( -name '*.egg-info' -o -name build \\) -path '*kubetune*' 2>/dev/null; true",
        entrypoint="sh",
    )
    assert leftovers.stdout.decode().split() == []
    check = run_trainer(images, "-m", "pip", "check", entrypoint="python", check=False)
    assert check.returncode == 0, check.stdout.decode()


def test_liger_kernel_is_installed_exactly_where_triton_is(images):
    probe = (
        "import importlib.util as u, json; "
        "print(json.dumps([bool(u.find_spec(m)) for m in ('triton', 'liger_kernel')]))"
    )
    triton, liger = json.loads(run_trainer(images, "-c", probe, entrypoint="python").stdout)
    assert liger == triton
    base_triton = images.engine.cli(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python",
        images.pytorch_base,
        "-c",
        "import importlib.util as u; print(bool(u.find_spec('triton')))",
    )
    assert triton == (base_triton.stdout.decode().strip() == "True")  # the image adds no Triton of its own


def test_a_model_file_the_trainer_cannot_read_is_permission_denied(images):
    if os.geteuid() == builders.RUN_AS_USER:
        pytest.skip(f"this suite runs as uid {builders.RUN_AS_USER}, the trainer's: its files are the trainer's too")
    from kubetune_trainer.tiny import build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="kubetune-image-perm-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        model = build_tiny_llama(root / "model")
        for path in [model, *model.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (model / "model.safetensors").chmod(0o600)  # root's, as a volume written by another user leaves it
        (root / "train.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(8)))
        (root / "train.jsonl").chmod(0o644)
        manifest = {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "perm"},
            "spec": {
                "technique": "lora",
                "objective": "causal-lm",
                "model": {"uri": "file:///data/model"},
                "datasets": [{"name": "d", "uri": "file:///data/train.jsonl", "format": "text"}],
                "hyperparameters": {"maxSteps": 1},
                "output": {"uri": "file:///scratch/out/"},
                "resources": {"gpus": 0},
            },
        }
        (root / "job.yaml").write_text(yaml.safe_dump(manifest))
        (root / "job.yaml").chmod(0o644)
        result = run_trainer(
            images,
            "/data/job.yaml",
            check=False,
            options=("--read-only", "--tmpfs", f"{builders.SCRATCH_MOUNT}:mode=1777", "--volume", f"{root}:/data:ro"),
        )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == ExitCode.USER_ERROR, output
    assert "permission denied: /data/model/model.safetensors" in output, output
    assert "No such file or directory" not in output


def _user_step() -> str:
    """The trainer Dockerfile's RUN instruction that sets up uid 1000 and /scratch, as the shell runs it."""
    joined = re.sub(r"\\\n", " ", (REPO / "trainer" / "Dockerfile").read_text())
    return next(
        line.removeprefix("RUN ").strip()
        for line in joined.splitlines()
        if line.startswith("RUN ") and "useradd" in line
    )


@pytest.mark.parametrize(
    "existing",
    ["", "useradd --uid 1000 --user-group --create-home ubuntu && "],
    ids=["base-without-uid-1000", "base-with-ubuntu-as-uid-1000"],
)
def test_the_user_step_works_whether_or_not_the_base_has_uid_1000(images, existing):
    # On the Debian stand-in: an Ubuntu 24.04 base has `ubuntu` as uid 1000, as the second case makes it.
    script = f"{existing}{_user_step()} && getent passwd 1000 | cut -d: -f1 && stat -c '%u %a' /scratch"
    result = images.engine.cli(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        "0",
        "--entrypoint",
        "sh",
        images.python_base,
        "-c",
        script,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    user, mode = result.stdout.decode().split("\n", 1)
    assert user == ("ubuntu" if existing else "trainer")
    assert mode.split() == ["1000", "1777"]
