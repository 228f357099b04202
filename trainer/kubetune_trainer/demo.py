"""`python -m kubetune_trainer.demo [--out DIR]`: a complete fine-tuning run on this machine, offline.

Builds the tiny Llama model and a small text dataset, writes a real FineTuneJob manifest (file://
URIs) to DIR, runs it through the same entrypoint as `kubetune run` (progress, checkpoints with
completion markers, metrics.jsonl, TensorBoard, final model), then plots the loss curve to
DIR/loss.png from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml


def write_demo_job(out: Path, steps: int = 60) -> Path:
    from kubetune_trainer.tiny import build_tiny_llama, sample_corpus

    model_dir = build_tiny_llama(out / "model")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(400, seed=11)))
    (data / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(40, seed=12)))
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "technique": "lora",
            "objective": "causal-lm",
            "model": {"uri": f"file://{model_dir.resolve()}"},
            "datasets": [
                {
                    "name": "stories",
                    "uri": f"file://{(data / 'train.jsonl').resolve()}",
                    "format": "text",
                    "evalUri": f"file://{(data / 'eval.jsonl').resolve()}",
                }
            ],
            "hyperparameters": {
                "maxSteps": steps,
                "batchSize": 8,
                "learningRate": 2.0e-2,
                "maxSeqLength": 128,
                "warmupRatio": 0.05,
                "precision": "bf16",  # falls back to fp32 on CPU
                "packing": True,
                "seed": 42,
            },
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "evaluation": {"everySteps": 20},
            "output": {"uri": f"file://{(out / 'output').resolve()}/", "checkpointEverySteps": 20, "keepCheckpoints": 2},
            "resources": {"gpus": 0},
        },
    }
    path = out / "finetunejob.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def plot_loss(metrics_file: Path, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("kubetune demo: tiny Llama, LoRA, causal-lm")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output", help="folder for the model, data, manifest and results")
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out).resolve()
    if (out / "output").exists():
        import shutil

        shutil.rmtree(out / "output")  # a fresh run each time (the demo's spec never changes)
    job = write_demo_job(out, args.steps)
    print(f"[demo] manifest: {job}  (same as: kubetune run {job})", flush=True)

    from kubetune_trainer.entrypoint import main as run

    rc = run([str(job)])
    if rc != 0:
        return rc
    png = plot_loss(out / "output" / "metrics.jsonl", out / "loss.png")
    records = [json.loads(line) for line in (out / "output" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    print(f"[demo] loss {losses[0]:.3f} -> {losses[-1]:.3f}; loss curve: {png}")
    print(f"[demo] results: {out / 'output'} (final/, checkpoints/, metrics.jsonl, tensorboard/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
