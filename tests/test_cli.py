"""`kubetune validate` and `kubetune crd` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from kubetune.api.crd import crd_yaml
from kubetune.cli import main
from tests.api.manifests import base

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_checked_in_crd_is_the_generated_one():
    checked_in = (REPO / "crds" / "finetunejobs.kubetune.dev.yaml").read_text()
    assert checked_in == crd_yaml(), "run: kubetune crd > crds/finetunejobs.kubetune.dev.yaml"


def test_kubetune_crd_command_prints_the_crd():
    out = subprocess.run([sys.executable, "-m", "kubetune.cli", "crd"], capture_output=True, text=True, check=True)
    assert out.stdout == crd_yaml()
    assert yaml.safe_load(out.stdout)["spec"]["names"]["shortNames"] == ["ftj"]


def test_validate_examples_exit_zero():
    files = sorted(str(p) for p in (REPO / "examples").glob("*.yaml"))
    out = subprocess.run([sys.executable, "-m", "kubetune.cli", "validate", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(files)} file(s) valid" in out.stdout


def test_validate_reports_every_problem_with_paths(tmp_path, capsys):
    doc = base()
    doc["spec"]["lora"]["rank"] = 0
    doc["spec"]["technique"] = "lora2"
    path = _write(tmp_path, "bad.yaml", yaml.safe_dump(doc))
    assert main(["validate", path]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{path}: job-a: spec.lora.rank: must be >= 1 (got 0)" in lines
    assert any(
        line.startswith(f"{path}: job-a: spec.technique: must be one of") and "'lora2'" in line for line in lines
    )
    assert len(lines) == 2


def test_validate_multi_document_names_each_document(tmp_path, capsys):
    good = base()
    bad = base()
    bad["metadata"]["name"] = "second"
    bad["spec"]["hyperparameters"] = {"learningrate": 0.1}
    path = _write(tmp_path, "multi.yaml", yaml.safe_dump_all([good, bad]))
    assert main(["validate", path]) == 1
    out = capsys.readouterr().out
    assert f"{path}: second: spec.hyperparameters.learningrate: unknown field (did you mean 'learningRate'?)" in out
    assert "job-a" not in out


def test_validate_files_that_are_not_manifests(tmp_path, capsys):
    not_yaml = _write(tmp_path, "broken.yaml", "spec: [unclosed\n")
    deployment = _write(tmp_path, "deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n")
    scalar = _write(tmp_path, "scalar.yaml", "just a string\n")
    empty = _write(tmp_path, "empty.yaml", "# nothing\n")
    dup = _write(tmp_path, "dup.yaml", yaml.safe_dump(base()) + "kind: FineTuneJob\n")
    missing = str(tmp_path / "nope.yaml")
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\xff\xfe\x00binary")
    rc = main(["validate", not_yaml, deployment, scalar, empty, dup, missing, str(binary)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert any(line.startswith(f"{not_yaml}: not valid YAML: line 2") for line in out), out
    assert (
        f"{deployment}: web: not a FineTuneJob (expected apiVersion: kubetune.dev/v1alpha1, kind: FineTuneJob; "
        "got apiVersion: apps/v1, kind: Deployment)" in out
    )
    assert any(line.startswith(f"{scalar}: document 1: not a Kubernetes object") for line in out)
    assert f"{empty}: contains no YAML documents" in out
    assert any(line.startswith(f"{dup}: not valid YAML:") and "duplicate key 'kind'" in line for line in out)
    assert f"{missing}: no such file" in out
    assert any(line.startswith(f"{binary}: not UTF-8 text") for line in out)
    assert len(out) == 7


def test_validate_never_prints_a_traceback(tmp_path):
    path = _write(
        tmp_path, "odd.yaml", "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: 7\nspec: [1, 2]\n"
    )
    out = subprocess.run([sys.executable, "-m", "kubetune.cli", "validate", path], capture_output=True, text=True)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert "metadata: must be a mapping" in out.stdout and "spec: must be a mapping" in out.stdout


def test_operator_refuses_a_bad_setting_in_one_line():
    env = dict(os.environ, KUBETUNE_CONCURRENT_RECONCILES="0")
    out = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "operator", "--standalone"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "kubetune operator: KUBETUNE_CONCURRENT_RECONCILES must be >= 1 (got 0)"


def test_validate_reads_yaml_as_kubectl_does(tmp_path, capsys):
    """`1e-4` is a number to kubectl (go-yaml), a string to PyYAML; merge keys work in kubectl."""
    merged = "spec:\n  hyperparameters:\n    <<: &tuned {learningRate: 1e-4, warmupRatio: 5e-2}\n    batchSize: 16\n"
    text = yaml.safe_dump(base()).replace("spec:\n", merged, 1)
    path = _write(tmp_path, "kubectl.yaml", text)
    assert main(["validate", path]) == 0, capsys.readouterr().out


def test_validate_and_run_refuse_what_kubectl_cannot_send_in_one_line(tmp_path):
    text = yaml.safe_dump(base()).replace("spec:\n", "spec:\n  hyperparameters: {learningRate: .inf}\n", 1)
    path = _write(tmp_path, "inf.yaml", text)
    for command in ("validate", "run"):
        out = subprocess.run([sys.executable, "-m", "kubetune.cli", command, path], capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)  # fmt: skip
        output = (out.stdout + out.stderr).strip()
        assert out.returncode != 0 and "Traceback" not in output, output
        assert len(output.splitlines()) == 1 and "spec.hyperparameters.learningRate: .inf is not a number" in output


def test_validate_deep_or_odd_yaml_is_one_line_never_a_traceback(tmp_path):
    deep = _write(tmp_path, "deep.yaml", "spec: " + "[" * 5000 + "]" * 5000 + "\n")
    keyed = _write(tmp_path, "keyed.yaml", "apiVersion: kubetune.dev/v1alpha1\n? [a, b]\n: x\n")
    command = [sys.executable, "-m", "kubetune.cli", "validate", deep, keyed]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        f"{deep}: not valid YAML: line 1: nested more than 100 levels deep (a FineTuneJob needs fewer than ten)",
        f"{keyed}: not valid YAML: line 2: a list cannot be a mapping key (in the document); keys are strings, "
        "numbers or true/false",
    ]


def test_validate_warns_about_settings_that_will_not_take_effect_and_still_exits_zero(tmp_path, capsys):
    from tests.api.manifests import PREF_DS

    noisy = base()
    noisy["metadata"]["name"] = "dpo"
    noisy["spec"] |= {"objective": "preference", "datasets": [PREF_DS], "lora": {"rank": 8, "dropout": 0.1}}
    noisy["spec"]["hyperparameters"] = {"packing": True}
    broken = base()
    broken["metadata"]["name"] = "broken"
    broken["spec"]["lora"]["rank"] = 0
    path = _write(tmp_path, "jobs.yaml", yaml.safe_dump_all([base(), noisy]))
    assert main(["validate", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path}: dpo: warning: spec.lora.dropout: 0.1 is not applied with objective preference")
    assert lines[1].startswith(f"{path}: dpo: warning: spec.hyperparameters.packing: has no effect with objective")
    assert lines[2:] == ["1 file(s) valid"]
    # problems first, then warnings; a problem still fails the run
    both = _write(tmp_path, "both.yaml", yaml.safe_dump_all([noisy, broken]))
    assert main(["validate", "-q", both]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{both}: broken: spec.lora.rank: must be >= 1 (got 0)"
    assert [line.split(": ")[1:3] for line in lines[1:]] == [["dpo", "warning"], ["dpo", "warning"]]
    # -q keeps the warnings: they are news, not chatter
    assert main(["validate", "-q", path]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
