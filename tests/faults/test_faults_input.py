"""Hostile and broken input through the trainer's entrypoint: broken data files end with the
user-error exit (10) and a one-line reason naming the file, the line and the column; a model that
needs its own code or has only pickled weights is refused, naming the spec field that allows it."""

from __future__ import annotations

import json
import shutil

import pytest
from trainerlib import manifest, write_manifest

from kubetune.api.constants import ExitCode

GOOD = json.dumps({"text": "the cat sees the dog ."}) + "\n"

# (file name, bytes, what the reason must contain besides the file's path)
BROKEN = [
    ("malformed.jsonl", (GOOD + '{"text": "cut off\n' + GOOD).encode(), ["line 2", "not valid JSON", "column"]),
    (
        "latin1.jsonl",
        (GOOD + GOOD).encode() + '{"text": "café"}\n'.encode("latin-1"),
        ["line 3", "column 14", "not UTF-8"],
    ),
    ("utf16.jsonl", (GOOD + GOOD).encode("utf-16"), ["line 1", "column 1", "not UTF-8", "UTF-16"]),
    ("utf16.json", json.dumps([{"text": "a"}]).encode("utf-16"), ["line 1", "column 1", "not UTF-8"]),
    ("empty.jsonl", b"", ["no rows (empty dataset)"]),
    ("blank.jsonl", b"\n\n  \n", ["no rows (empty dataset)"]),
    (
        "enormous.jsonl",
        GOOD.encode() + b'{"text": "' + b"x" * (16 * 2**20) + b"\n",
        ["line 2", "not valid JSON", "column"],
    ),
    (
        "number.jsonl",
        (GOOD + json.dumps({"text": 42}) + "\n").encode(),
        ["line 2", "column 'text'", "must be a string (got a number)"],
    ),
    ("object.jsonl", (json.dumps({"text": {"a": 1}}) + "\n").encode(), ["line 1", "column 'text'", "got an object"]),
    ("array.jsonl", b'["not", "an", "object"]\n', ["line 1", "a row must be a JSON object"]),
    ("missing.csv", b"body,label\nhello,1\n", ["missing column 'text'", "columns found: 'body', 'label'"]),
    ("nulls.csv", b"text,label\nhello,1\n,2\n", ["line 3", "column 'text'", "got null"]),
    ("corrupt.parquet", b"PAR1" + b"\x00garbage" * 64 + b"PAR1", ["cannot be read as PARQUET"]),
    ("wrong.json", b'{"rows": [{"text": "a"}], "more": [1]}', ["expected a JSON list of rows"]),
]


@pytest.fixture(scope="module")
def run_trainer():
    from kubetune_trainer.entrypoint import main

    def run(job, tmp_path):
        log = tmp_path / "termination-log"
        rc = main([str(job), "--output", f"file://{tmp_path}/out/", "--termination-log", str(log)])
        return rc, log.read_text() if log.exists() else ""

    return run


@pytest.mark.parametrize("name, data, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_data_is_a_user_error_naming_file_line_and_column(
    name, data, expected, tiny_model, tmp_path, run_trainer, ledger
):
    path = tmp_path / name
    path.write_bytes(data)
    job = write_manifest(tmp_path / "job.yaml", manifest(tiny_model, path))
    rc, reason = run_trainer(job, tmp_path)
    assert rc == ExitCode.USER_ERROR, reason
    assert reason.startswith("UserError: ") and str(path) in reason, reason
    for part in expected:
        assert part in reason, f"{part!r} not in {reason!r}"
    assert reason.count("\n") == 1 and len(reason) < 1000  # one short line, even for a 16 MiB line
    ledger.record(f"bad data: {name}", faults=1, runs=1, note=reason.split(str(path))[-1].strip(": \n")[:70])


def _model_copy(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


def test_model_needing_its_own_code_is_refused_unless_trusted(tiny_model, corpus, tmp_path, run_trainer, ledger):
    folder = _model_copy(tiny_model, tmp_path)
    ran = tmp_path / "remote-code-ran"
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="kubetune-evil",
        architectures=["EvilForCausalLM"],
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(ran)!r}, 'w').write('pwned')\n")
    job = write_manifest(tmp_path / "job.yaml", manifest(folder, corpus))
    rc, reason = run_trainer(job, tmp_path)
    assert rc == ExitCode.USER_ERROR, reason
    assert "spec.model.trustRemoteCode" in reason and "kubetune-evil" in reason
    assert not ran.exists(), "the model repository's code ran"
    ledger.record("model: remote code without trustRemoteCode", faults=1, runs=1, note="exit 10, code never ran")


def test_pickled_weights_are_refused_unless_allow_pickle(tiny_model, corpus, tmp_path, run_trainer, ledger):
    import torch
    from safetensors.torch import load_file

    folder = _model_copy(tiny_model, tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    job = write_manifest(tmp_path / "job.yaml", manifest(folder, corpus))
    rc, reason = run_trainer(job, tmp_path)
    assert rc == ExitCode.USER_ERROR, reason
    assert "spec.model.allowPickle" in reason and "pytorch_model.bin" in reason
    ledger.record("model: pickled weights without allowPickle", faults=1, runs=1, note="exit 10")
