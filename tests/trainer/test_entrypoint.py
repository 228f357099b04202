"""The trainer entrypoint end to end on a tiny Llama: real training, moto S3 over HTTP, exit codes,
resume after SIGKILL, SIGTERM, torchrun with 2 processes (gloo)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from kubetune.api.constants import ExitCode
from kubetune_trainer.entrypoint import main

STEPS = 12


def _s3():
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def _keys(bucket, prefix=""):
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _read(bucket, key) -> bytes:
    return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def _metrics(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _weights(data: bytes):
    from safetensors.torch import load

    return load(data)


def _same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= atol


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from kubetune_trainer.tiny import sample_corpus

    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(96, seed=5)))
    return path


def _causal_job(write_job, model_dir, text_file, **extra):
    sections = {"hyperparameters": {"maxSteps": STEPS}, "evaluation": {"everySteps": 6}}
    for key, value in extra.items():
        sections[key] = {**sections.get(key, {}), **value}
    return write_job(
        model_dir, [{"name": "corpus", "uri": f"file://{text_file}", "format": "text", "evalFraction": 0.1}], **sections
    )


def _tensorboard(bucket: str, prefix: str, local: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files under s3://bucket/prefix, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for key in _keys(bucket, prefix):
        target = local / key[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_read(bucket, key))
    events = EventAccumulator(str(local), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _assert_tensorboard_matches_metrics(bucket: str, prefix: str, local: Path) -> list[dict]:
    """Point by point: train/loss and eval/loss in TensorBoard are metrics.jsonl's loss and eval_loss."""
    records = _metrics(_read(bucket, f"{prefix}metrics.jsonl").decode())
    scalars = _tensorboard(bucket, f"{prefix}tensorboard/", local)
    for key, tag in (("loss", "train/loss"), ("eval_loss", "eval/loss")):
        expected = [(r["step"], r[key]) for r in records if key in r]
        got = scalars[tag]
        assert [step for step, _ in got] == [step for step, _ in expected], (tag, got, expected)
        assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(got, expected, strict=True)), tag
    return records


def _subprocess_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", "")]))
    return env


# --------------------------------------------------------------------------- success paths


@pytest.fixture(scope="module")
def causal_run(s3_endpoint, tiny_llama_dir, text_file, tmp_path_factory):
    """One uninterrupted causal-lm run to S3; the reference for the resume tests."""
    import yaml

    bucket = "causal-reference"
    _s3().create_bucket(Bucket=bucket)
    job_dir = tmp_path_factory.mktemp("causal-job")
    job = job_dir / "job.yaml"
    job.write_text(yaml.safe_dump(_causal_manifest(tiny_llama_dir, text_file), sort_keys=False))
    rc = main([str(job), "--output", f"s3://{bucket}/run/"])
    assert rc == 0
    return bucket, job


def _causal_manifest(model_dir, text_file):
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "causal"},
        "spec": {
            "technique": "full",
            "model": {"uri": f"file://{model_dir}"},
            "datasets": [{"name": "corpus", "uri": f"file://{text_file}", "format": "text", "evalFraction": 0.1}],
            "hyperparameters": {
                "maxSteps": STEPS,
                "batchSize": 4,
                "learningRate": 3.0e-3,
                "maxSeqLength": 64,
                "precision": "fp32",
                "warmupRatio": 0.0,
                "lrScheduler": "constant",
                "packing": True,
                "seed": 7,
            },
            "evaluation": {"everySteps": 6},
            "output": {"checkpointEverySteps": 4, "keepCheckpoints": 2},
        },
    }


def test_causal_lm_end_to_end_on_s3(causal_run):
    bucket, _ = causal_run
    keys = _keys(bucket, "run/")
    assert "run/spec.resolved.yaml" in keys and "run/metrics.jsonl" in keys
    assert any(k.startswith("run/tensorboard/events.out.tfevents") for k in keys)
    assert "run/final/model.safetensors" in keys and "run/final/tokenizer.json" in keys
    # keepCheckpoints 2 of steps 4, 8, 12; each with its marker, written with the file list.
    steps = sorted({int(k.split("/")[2].split("-")[1]) for k in keys if k.startswith("run/checkpoints/")})
    assert steps == [8, 12]
    for step in steps:
        marker = json.loads(_read(bucket, f"run/checkpoints/step-{step}/_COMPLETE"))
        assert marker["step"] == step and "model.safetensors" in marker["files"]
    records = _metrics(_read(bucket, "run/metrics.jsonl").decode())
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    print(
        f"\ncausal-lm loss: first {losses[0]:.3f} -> last {losses[-1]:.3f}; eval_loss {evals[0]:.3f} -> {evals[-1]:.3f}"
    )
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.5
    assert evals[-1] < evals[0]
    assert all(r.get("tokens_per_second", 1) > 0 for r in records) and any("tokens_per_second" in r for r in records)
    assert any("learning_rate" in r and "grad_norm" in r for r in records)


def test_instruction_end_to_end_with_s3_data(s3_endpoint, s3_bucket, tiny_llama_dir, write_job):
    rng = random.Random(3)
    colors = ["red", "blue", "green", "gold"]
    animals = ["cat", "dog", "fox", "owl"]
    rows = []
    for _ in range(64):
        animal, color = rng.choice(animals), rng.choice(colors)
        rows.append(
            {
                "conversation": [
                    {"role": "user", "content": f"what color is the {animal} ?"},
                    {"role": "assistant", "content": f"the {animal} is {color} ."},
                ]
            }
        )
    _s3().put_object(Bucket=s3_bucket, Key="data/chat.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    job = write_job(
        tiny_llama_dir,
        [
            {
                "name": "chat",
                "uri": f"s3://{s3_bucket}/data/chat.jsonl",
                "format": "messages",
                "columns": {"messages": "conversation"},
            }
        ],
        objective="instruction",
        hyperparameters={"maxSteps": 10, "learningRate": 5.0e-3},
        output={"checkpointEverySteps": 5},
    )
    assert main([str(job), "--output", f"s3://{s3_bucket}/out/"]) == 0
    records = _metrics(_read(s3_bucket, "out/metrics.jsonl").decode())
    losses = [r["loss"] for r in records if "loss" in r]
    print(f"\ninstruction loss: first {losses[0]:.3f} -> last {losses[-1]:.3f}")
    assert losses[-1] < losses[0] - 0.5
    keys = _keys(s3_bucket, "out/")
    assert "out/final/model.safetensors" in keys and "out/checkpoints/step-10/_COMPLETE" in keys


# --------------------------------------------------------------------------- resume, SIGTERM, torchrun


def _wait_for_key(bucket, key, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if key in _keys(bucket, key.rsplit("/", 1)[0]):
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {key} appeared")
        time.sleep(0.2)
    raise AssertionError(f"{key} did not appear")


def _start(job, output, tmp_path, **env):
    log = open(tmp_path / "run.log", "w")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubetune_trainer",
            str(job),
            "--output",
            output,
            "--termination-log",
            str(tmp_path / "termination-log"),
        ],
        env=_subprocess_env(KUBETUNE_DEBUG_STEP_SLEEP="0.4", **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_killed_run_resumes_to_the_same_weights_skipping_a_half_written_checkpoint(causal_run, s3_bucket, tmp_path):
    ref_bucket, job = causal_run
    output = f"s3://{s3_bucket}/run/"
    proc = _start(job, output, tmp_path)
    try:
        _wait_for_key(s3_bucket, "run/checkpoints/step-4/_COMPLETE", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    keys = _keys(s3_bucket, "run/")
    assert "run/final/model.safetensors" not in keys, "killed too late: the run had finished"
    # A checkpoint cut off mid-upload: files but no marker, newer than any complete one.
    _s3().put_object(Bucket=s3_bucket, Key="run/checkpoints/step-10/model.safetensors", Body=b"garbage")

    assert main([str(job), "--output", output]) == 0

    resumed = _weights(_read(s3_bucket, "run/final/model.safetensors"))
    reference = _weights(_read(ref_bucket, "run/final/model.safetensors"))
    assert _same_weights(resumed, reference, atol=1e-5)
    keys = _keys(s3_bucket, "run/checkpoints/")
    assert not any(k.startswith("run/checkpoints/step-10/") for k in keys)  # pruned once step-12 completed
    steps = [r["step"] for r in _metrics(_read(s3_bucket, "run/metrics.jsonl").decode()) if "loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == STEPS  # no duplicate steps after the resume
    # TensorBoard holds the same points: the resumed step's own events (and its eval at step 6 when the kill came
    # after it) are kept, what the killed attempt logged after its checkpoint is gone.
    records = _assert_tensorboard_matches_metrics(s3_bucket, "run/", tmp_path / "tb")
    assert [r["step"] for r in records if "eval_loss" in r] == [6, 12]


def test_sigterm_saves_a_usable_checkpoint_and_exits_143(causal_run, s3_bucket, tmp_path):
    _, job = causal_run
    proc = _start(job, f"s3://{s3_bucket}/run/", tmp_path, KUBETUNE_GRACE_SECONDS="20")
    try:
        _wait_for_key(s3_bucket, "run/checkpoints/step-4/_COMPLETE", proc)
        proc.send_signal(signal.SIGTERM)
        started = time.time()
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == ExitCode.PREEMPTED, (tmp_path / "run.log").read_text()[-3000:]
    assert time.time() - started < 20
    markers = [k for k in _keys(s3_bucket, "run/checkpoints/") if k.endswith("/_COMPLETE")]
    newest = max(int(k.split("/")[2].split("-")[1]) for k in markers)
    assert 4 < newest < STEPS  # saved on the way out, not only the regular step-4 one
    state = json.loads(_read(s3_bucket, f"run/checkpoints/step-{newest}/trainer_state.json"))
    assert state["global_step"] == newest
    assert _weights(_read(s3_bucket, f"run/checkpoints/step-{newest}/model.safetensors"))
    assert (tmp_path / "termination-log").read_text().startswith("Preempted: checkpoint step-")


def test_torchrun_two_processes_write_one_set_of_checkpoints(tiny_llama_dir, text_file, write_job, tmp_path):
    job = _causal_job(write_job, tiny_llama_dir, text_file, hyperparameters={"maxSteps": 8, "batchSize": 2})
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "kubetune_trainer",
            str(job),
            "--output",
            f"file://{out}/",
        ],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    step_dirs = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert step_dirs == ["step-4", "step-8"]
    for d in step_dirs:
        files = {p.name for p in (out / "checkpoints" / d).iterdir()}
        assert {"_COMPLETE", "model.safetensors", "rng_state_0.pth", "rng_state_1.pth"} <= files
    records = [r for r in _metrics((out / "metrics.jsonl").read_text()) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 9))  # rank 0 alone writes metrics
    assert (out / "final" / "model.safetensors").is_file()
    assert proc.stdout.count("final model:") == 1  # one reporter


def test_two_nodes_each_rank_rng_state_reaches_the_checkpoint(tiny_llama_dir, text_file, write_job, tmp_path):
    """Two torchrun launchers as two nodes (one process each, each its own work dir as on its own disk):
    node 1's RNG state is in every checkpoint, so a resume continues every rank's random stream."""
    job = _causal_job(write_job, tiny_llama_dir, text_file, hyperparameters={"maxSteps": 8, "batchSize": 2})
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "kubetune_trainer",
                str(job),
                "--output",
                f"file://{out}/",
            ],
            env=_subprocess_env() | {"KUBETUNE_WORK_DIR": str(tmp_path / f"node-{node}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for step in ("step-4", "step-8"):
        folder = out / "checkpoints" / step
        files = {p.name for p in folder.iterdir()}
        assert {"_COMPLETE", "model.safetensors", "rng_state_0.pth", "rng_state_1.pth"} <= files, files
        # Written by node 1 itself, before rank 0 marked the checkpoint complete.
        assert (folder / "rng_state_1.pth").stat().st_mtime <= (folder / "_COMPLETE").stat().st_mtime


def test_a_frozen_node_is_noticed_within_the_collective_timeout(tiny_llama_dir, text_file, write_job, tmp_path):
    """A peer that stops answering (its node frozen or cut off, its pod not yet gone) makes the other node's ranks
    fail in their next collective after KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS, not after torch's 30 minutes: the
    attempt ends and the next one can start every node again."""
    job = _causal_job(write_job, tiny_llama_dir, text_file, hyperparameters={"maxSteps": 200, "batchSize": 2})
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _subprocess_env(KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS="15", KUBETUNE_DEBUG_STEP_SLEEP="0.2")
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "kubetune_trainer",
                str(job),
                "--output",
                f"file://{out}/",
            ],
            env=env | {"KUBETUNE_WORK_DIR": str(tmp_path / f"node-{node}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for node in (0, 1)
    ]
    workers: list[str] = []
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints" / "step-4" / "_COMPLETE").exists():
            assert time.time() < deadline and all(n.poll() is None for n in nodes), "training did not start"
            time.sleep(0.2)
        # Node 1 freezes (its launcher and its worker): no crash, no closed socket.
        workers = subprocess.run(["pgrep", "-P", str(nodes[1].pid)], capture_output=True, text=True).stdout.split()
        for pid in [nodes[1].pid, *map(int, workers)]:
            os.kill(pid, signal.SIGSTOP)
        frozen = time.time()
        nodes[0].wait(timeout=15 + 90)
        noticed = time.time() - frozen
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        # The launcher starts its workers in sessions of their own: killing its group leaves them, stopped.
        for pid in map(int, workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert nodes[0].returncode != 0
    assert noticed < 15 + 90, noticed
    log = nodes[0].stdout.read()
    assert "InfraError: a peer process of this run was lost" in log, log[-3000:]  # exit 20: the attempt is retried
    assert not (out / "final" / "_COMPLETE").exists()


# --------------------------------------------------------------------------- failures -> exit codes


def _run_failing(job, tmp_path, output):
    log = tmp_path / "termination-log"
    rc = main([str(job), "--output", output, "--termination-log", str(log)])
    return rc, log.read_text() if log.exists() else ""


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([{"text": "fine"}, {"body": "no text column"}], "line 2: missing column 'text'"),
        ([{"text": "fine"}, '{"text": "cut'], "line 2: not valid JSON"),
        ([], "no rows (empty dataset)"),
        ([{"text": ["not", "a", "string"]}], "line 1: column 'text': must be a string (got a list)"),
    ],
)
def test_bad_data_exits_10_with_a_clear_reason(rows, expected, tiny_llama_dir, write_job, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    job = write_job(tiny_llama_dir, [{"uri": f"file://{data}", "format": "text"}])
    rc, reason = _run_failing(job, tmp_path, f"file://{tmp_path}/out/")
    assert rc == ExitCode.USER_ERROR
    assert reason.startswith("UserError:") and expected in reason and str(data) in reason
    assert reason.count("\n") == 1


def test_bad_uris_exit_10(s3_endpoint, tiny_llama_dir, write_job, tmp_path):
    job = write_job(tiny_llama_dir, [{"uri": f"file://{tmp_path}/missing.jsonl", "format": "text"}])
    rc, reason = _run_failing(job, tmp_path, f"file://{tmp_path}/out/")
    assert rc == ExitCode.USER_ERROR and "missing.jsonl does not exist" in reason

    data = tmp_path / "ok.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    job = write_job(tiny_llama_dir, [{"uri": f"file://{data}", "format": "text"}])
    rc, reason = _run_failing(job, tmp_path, "s3://no-such-bucket-anywhere/run/")
    assert rc == ExitCode.USER_ERROR and "the bucket does not exist" in reason
    assert "testing-secret" not in reason

    job = write_job(tiny_llama_dir, [{"uri": "s3://no-such-data-bucket/train.jsonl", "format": "text"}])
    rc, reason = _run_failing(job, tmp_path, f"file://{tmp_path}/out2/")
    assert rc == ExitCode.USER_ERROR and "s3://no-such-data-bucket/train.jsonl" in reason

    job = write_job(Path("/no/such/model"), [{"uri": f"file://{data}", "format": "text"}])
    rc, reason = _run_failing(job, tmp_path, f"file://{tmp_path}/out3/")
    assert rc == ExitCode.USER_ERROR and "model.uri" in reason


def test_invalid_manifest_exits_10(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\nspec: {technique: nope}\n"
    )
    rc, reason = _run_failing(job, tmp_path, f"file://{tmp_path}/out/")
    assert rc == ExitCode.USER_ERROR and "spec.technique" in reason


def test_s3_unreachable_exits_20(tiny_llama_dir, write_job, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KUBETUNE_S3_MAX_ATTEMPTS", "2")
    data = tmp_path / "ok.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    job = write_job(tiny_llama_dir, [{"uri": f"file://{data}", "format": "text"}])
    rc, reason = _run_failing(job, tmp_path, "s3://some-bucket/run/")
    assert rc == ExitCode.INFRA_ERROR and reason.startswith("InfraError:") and "cannot reach S3" in reason


def test_output_of_a_different_spec_is_refused(tiny_llama_dir, write_job, tmp_path):
    data = tmp_path / "ok.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    other = write_job(
        tiny_llama_dir,
        [{"uri": f"file://{data}", "format": "text"}],
        hyperparameters={"learningRate": 0.1},
        filename="other.yaml",
    )
    import yaml

    from kubetune.manifests import load_job
    from kubetune_trainer.entrypoint import resolved_manifest

    other_job = load_job(other)
    (out / "spec.resolved.yaml").write_text(yaml.safe_dump(resolved_manifest(other_job, other_job.spec.resolved())))
    job = write_job(tiny_llama_dir, [{"uri": f"file://{data}", "format": "text"}])
    rc, reason = _run_failing(job, tmp_path, f"file://{out}/")
    assert rc == ExitCode.USER_ERROR and "different spec" in reason and "hyperparameters.learningRate" in reason


def test_running_a_finished_job_again_changes_no_metric(causal_run, tmp_path):
    """A pod restarted after training ended (or `kubetune run` again) resumes at the last step, trains nothing,
    and leaves metrics.jsonl, TensorBoard and the final model as they were (no fake summary record)."""
    bucket, job = causal_run
    metrics_before = _read(bucket, "run/metrics.jsonl")
    final_before = _read(bucket, "run/final/model.safetensors")
    tensorboard_before = _tensorboard(bucket, "run/tensorboard/", tmp_path / "before")

    assert main([str(job), "--output", f"s3://{bucket}/run/"]) == 0

    after = _read(bucket, "run/metrics.jsonl")
    assert after.decode().splitlines() == metrics_before.decode().splitlines(), (
        after.decode()[-600:],
        metrics_before.decode()[-600:],
    )
    assert _same_weights(_weights(_read(bucket, "run/final/model.safetensors")), _weights(final_before), atol=0.0)
    assert _tensorboard(bucket, "run/tensorboard/", tmp_path / "after") == tensorboard_before
    _assert_tensorboard_matches_metrics(bucket, "run/", tmp_path / "check")


def test_a_run_cut_off_after_its_last_checkpoint_trains_no_step_more(causal_run, s3_bucket, tmp_path):
    """Killed while uploading the final model: the next attempt resumes the checkpoint of the last step and gives
    its model without training one step more (transformers 5.24 alone would train step 13 of 12)."""
    ref_bucket, job = causal_run
    output = f"s3://{s3_bucket}/run/"
    assert main([str(job), "--output", output]) == 0
    metrics_before = _read(s3_bucket, "run/metrics.jsonl")
    _s3().delete_object(Bucket=s3_bucket, Key="run/final/_COMPLETE")
    _s3().delete_object(Bucket=s3_bucket, Key="run/final/model.safetensors")

    assert main([str(job), "--output", output]) == 0

    assert _read(s3_bucket, "run/metrics.jsonl").decode().splitlines() == metrics_before.decode().splitlines()
    assert not any("/step-13/" in k for k in _keys(s3_bucket, "run/checkpoints/"))
    reference = _weights(_read(ref_bucket, "run/final/model.safetensors"))
    assert _same_weights(_weights(_read(s3_bucket, "run/final/model.safetensors")), reference, atol=1e-5)
    assert "run/final/_COMPLETE" in _keys(s3_bucket, "run/final/")
