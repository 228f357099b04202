"""Experiment trackers (spec.tracking): a real MLflow tracking server started here (SQLite store, loopback) read
back with MlflowClient, and Weights & Biases in offline mode read back from the run files it writes; a tiny run
killed after its first checkpoint and resumed continues the same runs and sends no step twice."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from kubetune.api.credentials import ROLE_MLFLOW, ROLE_WANDB, credential_bindings, env_name
from kubetune.api.v1alpha1 import Spec

STEPS = 12
# Measurements of time: each attempt measures its own, so after a resume they are compared by step only.
TIMING = re.compile(r"(runtime|per_second)$")


def _spec(**extra) -> Spec:
    raw = {
        "technique": "full",
        "model": {"uri": "file:///models/tiny"},
        "datasets": [{"name": "corpus", "uri": "file:///data/train.jsonl", "format": "text"}],
        "tracking": {
            "mlflow": {"uri": "https://mlflow.example:5000", "experiment": "exp", "credentialsSecret": "mlflow-auth"},
            "wandb": {"project": "proj", "entity": "team-a", "credentialsSecret": "wandb-key"},
        },
    }
    raw.update(extra)
    return Spec.model_validate(raw)


# --------------------------------------------------------------------------- no training


def test_tracker_tokens_are_wired_by_role_like_every_other_credential():
    bindings = {b.role: b for b in credential_bindings(_spec())}
    assert bindings[ROLE_MLFLOW].secret == "mlflow-auth"
    assert bindings[ROLE_MLFLOW].keys == (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
    )
    assert bindings[ROLE_WANDB].secret == "wandb-key" and bindings[ROLE_WANDB].keys == ("WANDB_API_KEY",)
    assert env_name(ROLE_MLFLOW, "MLFLOW_TRACKING_TOKEN") == "KUBETUNE_MLFLOW_MLFLOW_TRACKING_TOKEN"
    # An MLflow server without authentication needs no Secret; a spec without tracking binds none.
    open_server = _spec(tracking={"mlflow": {"uri": "http://mlflow:5000"}})
    assert ROLE_MLFLOW not in {b.role for b in credential_bindings(open_server)}
    assert not {ROLE_MLFLOW, ROLE_WANDB} & {b.role for b in credential_bindings(_spec(tracking=None))}


def test_params_are_the_flattened_spec_bounded_without_the_pod_or_tracking():
    from kubetune_trainer.tracking import MAX_PARAM_VALUE, flatten_spec

    spec = _spec(
        pod={"env": [{"name": "NOTE", "value": "plain pod settings are not training parameters"}]},
        datasets=[{"name": f"d{i}", "uri": f"file:///data/{'x' * 600}-{i}.jsonl", "format": "text"} for i in range(3)],
    ).resolved()
    params = flatten_spec(spec)
    assert params["technique"] == "full"
    assert params["hyperparameters.learningRate"] == str(spec.hyperparameters.learning_rate)
    assert params["datasets.2.name"] == "d2"
    assert len(params["datasets.0.uri"]) == MAX_PARAM_VALUE and params["datasets.0.uri"].endswith("...")
    assert not [k for k in params if k.startswith(("pod", "tracking"))]
    assert all(isinstance(v, str) for v in params.values())


def test_record_names_are_metrics_jsonl_names_with_the_rlhf_stage_in_front():
    from kubetune_trainer.metrics import tensorboard_scalars
    from kubetune_trainer.tracking import record_metrics

    record = {"step": 3, "epoch": 0.5, "stage": "policy", "loss": 0.01, "reward": 1.25, "flag": True, "x": math.nan}
    assert record_metrics(record) == {"policy/epoch": 0.5, "policy/loss": 0.01, "policy/reward": 1.25}
    assert record_metrics({"step": 1, "loss": 2.0, "eval_loss": 2.5}) == {"loss": 2.0, "eval_loss": 2.5}
    # The same stage prefix as TensorBoard's tags.
    assert all(tag.startswith("policy/") for tag, _ in tensorboard_scalars(record))


def test_a_tracker_that_cannot_start_does_not_stop_training(tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow", reason="mlflow is not installed (it is in the dev extra)")
    from kubetune_trainer.layout import OutputLayout
    from kubetune_trainer.storage import get_storage
    from kubetune_trainer.tracking import open_trackers

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    root = f"file://{tmp_path}/out/"
    spec = _spec(tracking={"mlflow": {"uri": f"http://127.0.0.1:{_free_port()}"}})  # nothing listens there
    logger = logging.getLogger("kubetune.tracking")
    logger.addHandler(caplog.handler)  # directly: the entrypoint's logging setup keeps "kubetune" from propagating
    try:
        assert open_trackers(spec, "job", get_storage(root), OutputLayout(root), tmp_path) is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "mlflow: cannot start the run, training goes on without it" in caplog.text


# --------------------------------------------------------------------------- the servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite store) on a free loopback port; its URL."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (it is in the dev extra)")
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(folder / "server.log", "w")
    server = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    store = [
        "--backend-store-uri",
        f"sqlite:///{folder}/mlflow.db",
        "--default-artifact-root",
        str(folder / "artifacts"),
    ]
    proc = subprocess.Popen(
        [*server, *store, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the MLflow server did not answer in 120 s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started (its own session)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def wandb_offline():
    pytest.importorskip("wandb", reason="wandb is not installed (it is in the trainer extra)")


# --------------------------------------------------------------------------- W&B's offline run files


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (run-<id>.wandb): a LevelDB log (32 KiB blocks of records, each a
    7-byte header: CRC-32 of type and data, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte ":W&B" header.
    Ported from wandb/wandb, wandb/sdk/internal/datastore.py (scan_record, scan_data). A file cut off by a kill
    ends at its last complete record."""
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0)
    records, pending, index = [], b"", header
    while index + header <= len(data):
        if block - index % block < header:  # the rest of a block too short for a header is padding
            index += block - index % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[index : index + header])
        if kind == 0 and length == 0:  # zeros: the end of what was written
            break
        chunk = data[index + header : index + header + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            break
        index += header + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            records.append(record)
            pending = b""
        else:  # FIRST, MIDDLE
            pending += chunk
    return records


def wandb_run(folder: Path) -> dict:
    """The one offline run under `folder` (WANDB_DIR): its id, name, config, summary and history rows by _step."""
    [run_file] = list(folder.glob("wandb/offline-run-*/run-*.wandb"))
    out: dict = {"config": {}, "summary": {}, "rows": {}}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"], out["name"] = record.run.run_id, record.run.display_name
            out["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            out["summary"].update(
                {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update}
            )
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            out["rows"][row["_step"]] = row
    return out


def _row_metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_") and not k.endswith("global_step")}


# --------------------------------------------------------------------------- a run killed and resumed


def _manifest(model_dir: Path, data: Path, mlflow_url: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tracked", "namespace": "team-a"},
        "spec": {
            "technique": "full",
            "model": {"uri": f"file://{model_dir}"},
            "datasets": [{"name": "corpus", "uri": f"file://{data}", "format": "text", "evalFraction": 0.1}],
            "hyperparameters": {
                "maxSteps": STEPS, "batchSize": 4, "learningRate": 3.0e-3, "maxSeqLength": 64, "precision": "fp32",
                "warmupRatio": 0.0, "lrScheduler": "constant", "packing": True, "seed": 7,
            },
            "evaluation": {"everySteps": 6},
            "output": {"checkpointEverySteps": 4, "keepCheckpoints": 2},
            "tracking": {
                "mlflow": {"uri": mlflow_url, "experiment": "kubetune-tests"},
                "wandb": {"project": "kubetune-tests", "credentialsSecret": "wandb-key"},
            },
        },
    }  # fmt: skip


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline", **extra)
    for key in ("KUBETUNE_FTJ_NAME", "KUBETUNE_FTJ_NAMESPACE", "KUBETUNE_FTJ_UID", "WANDB_API_KEY"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def resumed_run(mlflow_server, wandb_offline, tiny_llama_dir, tmp_path_factory):
    """Attempt 1 is killed (SIGKILL, with every process it started) once its step-4 checkpoint is complete and
    MLflow holds a loss of a step after it; attempt 2 resumes and finishes. Returns the output folder, tracking.json
    as attempt 1 left it, the resumed checkpoint's step, the last loss step MLflow held at the kill and each
    attempt's WANDB_DIR."""
    import yaml
    from mlflow import MlflowClient

    from kubetune_trainer.tiny import sample_corpus

    folder = tmp_path_factory.mktemp("tracked")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(96, seed=5)))
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(_manifest(tiny_llama_dir, data, mlflow_server), sort_keys=False))
    output = folder / "out"
    wandb_dirs = [folder / "wandb-1", folder / "wandb-2"]
    for path in wandb_dirs:
        path.mkdir()

    log = open(folder / "attempt-1.log", "w")
    argv = [sys.executable, "-m", "kubetune_trainer", str(job), "--output", f"file://{output}/"]
    first = subprocess.Popen(
        argv,
        env=_env(KUBETUNE_DEBUG_STEP_SLEEP="0.6", WANDB_DIR=str(wandb_dirs[0])),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = MlflowClient(mlflow_server)

    def last_loss_step() -> int:
        if not (output / "tracking.json").exists():
            return 0
        run_id = json.loads((output / "tracking.json").read_text())["mlflow"]["run_id"]
        return max((m.step for m in client.get_metric_history(run_id, "loss")), default=0)

    try:
        deadline = time.monotonic() + 240
        # Past the checkpoint in MLflow too: the resumed attempt trains those steps again and must not send them.
        while not (output / "checkpoints" / "step-4" / "_COMPLETE").exists() or last_loss_step() <= 4:
            assert first.poll() is None, (folder / "attempt-1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint and step 5 in 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the pod dies: the trainer and W&B's process with it
        first.wait()
        log.close()
    assert not (output / "final" / "_COMPLETE").exists(), "killed too late: the run had finished"
    noted = json.loads((output / "tracking.json").read_text())
    sent_before_kill = last_loss_step()

    second = subprocess.run(
        argv, env=_env(WANDB_DIR=str(wandb_dirs[1])), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300
    )
    text = second.stdout.decode()
    assert second.returncode == 0, text[-4000:]
    resumed = int(re.search(r"resuming from checkpoint step-(\d+)", text).group(1))
    return output, noted, resumed, sent_before_kill, wandb_dirs


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def test_mlflow_holds_each_step_of_metrics_jsonl_once_after_a_resume(resumed_run, mlflow_server):
    from mlflow import MlflowClient

    output, noted, resumed, sent_before_kill, _ = resumed_run
    assert sent_before_kill > resumed  # the killed attempt had sent steps the resumed one trained again
    tracking = json.loads((output / "tracking.json").read_text())
    assert tracking["mlflow"]["run_id"] == noted["mlflow"]["run_id"]  # the resumed attempt continued the run
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracking["mlflow"]["run_id"])
    assert run.info.run_name == "team-a/tracked" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "kubetune-tests"
    assert run.data.params["technique"] == "full" and run.data.params["hyperparameters.maxSteps"] == str(STEPS)
    assert run.data.params["datasets.0.name"] == "corpus"
    assert not [k for k in run.data.params if k.startswith(("tracking", "pod"))]
    assert run.data.tags["kubetune.model_uri"] == f"file://{output}/final/"
    assert (
        run.data.tags["kubetune.namespace"] == "team-a" and run.data.tags["kubetune.output_uri"] == f"file://{output}/"
    )

    records = _records(output)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    names = {k for r in records for k in r if k not in ("step", "stage") and not isinstance(r[k], bool)}
    assert set(run.data.metrics) == names
    for name in sorted(names):
        # One point per metric and step: epoch and the token count repeat, equal, in a step's train, eval and
        # summary records.
        expected: dict[int, float] = {}
        for r in records:
            if name in r:
                expected.setdefault(r["step"], float(r[name]))
        history = client.get_metric_history(run.info.run_id, name)
        steps = [m.step for m in history]
        assert sorted(steps) == sorted(expected), (name, steps, expected)  # each step once, none missing
        for m in history:
            if TIMING.search(name) and m.step > resumed:
                continue  # measured by the killed attempt, which sent it first
            assert _close(m.value, expected[m.step]), (name, m.step, m.value, expected[m.step])


def test_wandb_offline_files_hold_metrics_jsonl_and_the_run_continues(resumed_run):
    """The resumed attempt's offline run file holds the run (same id), the parameters, a row per record of
    metrics.jsonl after the checkpoint and the final model's URI. (The killed attempt's file holds what W&B had
    flushed before the kill, often nothing: W&B writes it in 32 KiB blocks.)"""
    output, noted, resumed, _, wandb_dirs = resumed_run
    tracking = json.loads((output / "tracking.json").read_text())
    second = wandb_run(wandb_dirs[1])
    assert second["id"] == tracking["wandb"]["run_id"] == noted["wandb"]["run_id"]
    assert second["name"] == "team-a/tracked"
    assert second["config"]["hyperparameters.maxSteps"] == str(STEPS) and second["config"]["technique"] == "full"
    assert second["config"]["kubetune.output_uri"] == f"file://{output}/"
    assert not [k for k in second["config"] if k.startswith(("tracking", "pod"))]
    assert second["summary"]["kubetune/model_uri"] == f"file://{output}/final/"

    records = _records(output)
    restored = sum(1 for r in records if r["step"] <= resumed)  # metrics.jsonl up to the checkpoint
    # A row is a record of metrics.jsonl, numbered by its position there (the same in every attempt).
    assert sorted(second["rows"]) == list(range(restored, len(records)))
    for position, row in second["rows"].items():
        record = records[position]
        assert row["global_step"] == record["step"]
        assert _row_metrics(row) == {k: v for k, v in record.items() if k != "step"}


# --------------------------------------------------------------------------- rlhf's stages, straight to the trackers


def test_stages_are_tracked_apart_and_a_stage_started_again_sends_nothing_twice(
    mlflow_server, wandb_offline, tmp_path, monkeypatch
):
    """rlhf logs a reward-model stage then a policy stage, each from step 1; its reward-model stage keeps no
    checkpoints, so an attempt dying in it starts it again from step 1 (metrics.jsonl afresh)."""
    from mlflow import MlflowClient

    from kubetune_trainer.layout import OutputLayout
    from kubetune_trainer.storage import get_storage
    from kubetune_trainer.tracking import open_trackers

    monkeypatch.setenv("WANDB_MODE", "offline")
    root = f"file://{tmp_path}/out/"
    spec = _spec(
        tracking={
            "mlflow": {"uri": mlflow_server, "experiment": "stages"},
            "wandb": {"project": "stages", "credentialsSecret": "k"},
        }
    )
    records = [{"step": s, "epoch": s / 3, "stage": "reward-model", "loss": 1.0 / s} for s in (1, 2, 3)]
    records += [{"step": s, "epoch": s / 3, "stage": "policy", "loss": 0.0, "reward": 0.5 * s} for s in (1, 2, 3)]

    def attempt(wandb_dir: Path, upto: int):
        monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
        wandb_dir.mkdir()
        trackers = open_trackers(spec, "rl", get_storage(root), OutputLayout(root), tmp_path)
        for position, record in enumerate(records[:upto]):
            trackers.record(record, position)
        trackers.sync()
        trackers.close()

    attempt(tmp_path / "wandb-1", upto=2)  # stops in the reward-model stage
    attempt(tmp_path / "wandb-2", upto=len(records))  # starts over and finishes
    tracking = json.loads((tmp_path / "out" / "tracking.json").read_text())
    client = MlflowClient(mlflow_server)
    run_id = tracking["mlflow"]["run_id"]
    history = {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
               for name in ("reward-model/loss", "policy/loss", "policy/reward")}  # fmt: skip
    assert history == {
        "reward-model/loss": [(1, 1.0), (2, 0.5), (3, 1.0 / 3)],
        "policy/loss": [(1, 0.0), (2, 0.0), (3, 0.0)],
        "policy/reward": [(1, 0.5), (2, 1.0), (3, 1.5)],
    }
    first, second = wandb_run(tmp_path / "wandb-1"), wandb_run(tmp_path / "wandb-2")
    assert first["id"] == second["id"] == tracking["wandb"]["run_id"]
    assert sorted(first["rows"]) == [0, 1] and sorted(second["rows"]) == [0, 1, 2, 3, 4, 5]  # offline: from the start
    assert second["rows"][2]["reward-model/global_step"] == 3 and second["rows"][2]["reward-model/loss"] == 1.0 / 3
    assert second["rows"][3]["policy/global_step"] == 1 and second["rows"][3]["policy/reward"] == 0.5
    assert "reward-model/global_step" not in second["rows"][3]
