"""Checkpoint overhead: the same training run with checkpoints uploaded to S3 (moto over HTTP) at
spec.output.checkpointEverySteps, and with saving switched off; wall time of each, side by side.
moto runs in its own process, as a real store would.

    python bench/checkpoint_overhead.py                         # 600 steps, the spec's default interval (200)
    python bench/checkpoint_overhead.py --steps 40 --every 20   # quick

Both variants run `kubetune_trainer.entrypoint.main` on the same FineTuneJob (tiny Llama from
kubetune_trainer.tiny unless --model-dir; full fine-tuning; output s3://...), so both include model
load and the final upload. "without" vetoes every save (the real CheckpointCallback, plus
control.should_save = False after each step), so the difference is what checkpointing costs: writing
checkpoint-N locally, and the background upload the end of the run waits for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def default_interval() -> int:
    from kubetune.api.v1alpha1 import Output

    return Output.model_fields["checkpoint_every_steps"].default


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_server():
    """moto's S3 over HTTP in its own process (a real store is not in the trainer's process either: an
    in-process server would take the GIL from the training loop), with test credentials in the env."""
    import subprocess
    import urllib.request

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.2)
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(10)


def write_job(path: Path, model_dir: Path, data_file: Path, steps: int, every: int, max_len: int) -> Path:
    import yaml

    spec = {
        "technique": "full",
        "objective": "causal-lm",
        "model": {"uri": f"file://{model_dir}"},
        "datasets": [{"uri": f"file://{data_file}", "format": "text"}],
        "hyperparameters": {
            "maxSteps": steps,
            "batchSize": 4,
            "maxSeqLength": max_len,
            "learningRate": 1e-3,
            "precision": "bf16",
            "warmupRatio": 0.0,
            "lrScheduler": "constant",
            "seed": 0,
        },
        "output": {"checkpointEverySteps": every, "keepCheckpoints": 2},
    }
    doc = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "ckpt-bench"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def saving_disabled():
    """Every save vetoed after each step (the Trainer's interval and end-of-run saves alike)."""
    from kubetune_trainer import checkpoints

    original = checkpoints.CheckpointCallback

    class NoSave(original):
        def on_step_end(self, args, state, control, **kwargs):
            control = super().on_step_end(args, state, control, **kwargs) or control
            control.should_save = False
            return control

    checkpoints.CheckpointCallback = NoSave
    try:
        yield
    finally:
        checkpoints.CheckpointCallback = original


def uploaded_checkpoints(bucket: str, prefix: str) -> list[int]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return sorted(
        {int(k.split("/step-")[1].split("/")[0]) for k in keys if "/checkpoints/step-" in k and k.endswith("_COMPLETE")}
    )


def run_variant(job: Path, bucket: str, name: str, save: bool) -> dict:
    import logging

    from kubetune_trainer.entrypoint import main

    prefix = f"{name}-{uuid.uuid4().hex[:6]}/"
    started = time.perf_counter()
    with contextlib.nullcontext() if save else saving_disabled(), contextlib.redirect_stdout(sys.stderr):
        code = main([str(job), "--output", f"s3://{bucket}/{prefix}"])
    wall = time.perf_counter() - started
    logging.getLogger("kubetune").handlers.clear()  # the next run sets up its own
    if code != 0:
        raise RuntimeError(f"the {name} run exited with {code}")
    return {"variant": name, "wall_s": wall, "checkpoints": uploaded_checkpoints(bucket, prefix)}


def table(rows: list[dict], steps: int, every: int) -> str:
    base = next(r for r in rows if r["variant"] == "without")
    lines = [
        "| variant | steps | checkpointEverySteps | checkpoints uploaded | wall s | overhead s | overhead % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        over = r["wall_s"] - base["wall_s"]
        lines.append(
            f"| {r['variant']} | {steps} | {every if r['variant'] == 'with' else '-'} | "
            f"{len(r['checkpoints'])} | {r['wall_s']:.2f} | {over:+.2f} | {100 * over / base['wall_s']:+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=None, help="checkpointEverySteps (default: the spec's default)")
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--model-dir", default=None, help="a Hugging Face model folder (default: the tiny Llama)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant; the fastest counts")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    every = args.every or default_interval()

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from kubetune_trainer.tiny import build_tiny_llama, sample_corpus

    with tempfile.TemporaryDirectory(prefix="kt-ckpt-bench-") as tmp, s3_server() as endpoint:
        tmp_path = Path(tmp)
        os.environ["KUBETUNE_WORK_DIR"] = str(tmp_path / "work")
        model_dir = Path(args.model_dir) if args.model_dir else build_tiny_llama(tmp_path / "model")
        data = tmp_path / "train.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(2000, seed=0)))
        job = write_job(tmp_path / "job.yaml", model_dir, data, args.steps, every, args.max_seq_length)
        import boto3

        bucket = "bench-" + uuid.uuid4().hex[:8]
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        # An untimed run first: the first run in a process pays for imports and warm caches.
        warm_job = write_job(tmp_path / "warm.yaml", model_dir, data, 2, every, args.max_seq_length)
        run_variant(warm_job, bucket, "warm-up", save=False)
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name, save in (("without", False), ("with", True)):
                result = run_variant(job, bucket, name, save)
                print(f"[bench] {name}: {result['wall_s']:.2f} s, checkpoints {result['checkpoints']}", file=sys.stderr)
                if name not in best or result["wall_s"] < best[name]["wall_s"]:
                    best[name] = result
        rows = [best["without"], best["with"]]
        os.environ.pop("KUBETUNE_WORK_DIR", None)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"\ncheckpoint overhead on {device}: {args.steps} steps, full fine-tuning of "
        f"{'the tiny Llama' if not args.model_dir else args.model_dir}, checkpoints to S3 (moto over HTTP), "
        f"keepCheckpoints 2, fastest of {args.repeats} run(s) per variant after a warm-up run\n"
    )
    print(table(rows, args.steps, every))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": device, "steps": args.steps, "every": every, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
