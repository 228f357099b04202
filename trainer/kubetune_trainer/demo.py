"""`python -m kubetune_trainer.demo [--out DIR]`: a complete fine-tuning run on this machine, offline.

Builds the tiny Llama model and a small dataset of short English sentences, writes a real FineTuneJob manifest
(file:// URIs) to DIR, runs it through the same entrypoint as `kubetune run` (progress, checkpoints with
completion markers, metrics.jsonl, TensorBoard, final model, all under DIR/output/), plots the loss curves to
DIR/loss.png from metrics.jsonl, and lets the trained model write a sentence.

The tiny model starts from random weights, so the demo fine-tunes all of them (technique `full`): an adapter
(lora) on a random base has nothing to adapt and stays near chance in a demo's minute. With a real base model
(hf://...), `lora` is the usual choice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from kubetune.usercli.outputs import parse_metrics


def write_demo_job(out: Path, steps: int = 60) -> Path:
    from kubetune_trainer.tiny import build_tiny_llama, sample_corpus

    # Prose (capitals, punctuation), and a tokenizer trained on it: what the model writes reads as text.
    train, evaluation = sample_corpus(400, seed=11, cased=True), sample_corpus(40, seed=12, cased=True)
    model_dir = build_tiny_llama(out / "model", vocab_texts=train)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    (data / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in evaluation))
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "technique": "full",
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
                "learningRate": 5.0e-3,
                "maxSeqLength": 128,
                "warmupRatio": 0.05,
                "precision": "bf16",  # falls back to fp32 on CPU
                "packing": True,
                "seed": 42,
            },
            "evaluation": {"everySteps": 20},
            "output": {
                "uri": f"file://{(out / 'output').resolve()}/",
                "checkpointEverySteps": 20,
                "keepCheckpoints": 2,
            },
            "resources": {"gpus": 0},
        },
    }
    path = out / "finetunejob.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def plot_loss(metrics_file: Path, png: Path) -> Path:
    from kubetune.usercli.plots import plot_runs

    records = parse_metrics(metrics_file.read_text())
    return plot_runs({"demo": records}, png, title="kubetune demo: tiny Llama, full fine-tuning, causal-lm")


PROMPT = "Alice"


def sample(final_dir: Path, prompt: str = PROMPT, max_new_tokens: int = 16) -> str:
    """What the trained model writes after `prompt` (greedy: the same every run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final_dir)
    model = AutoModelForCausalLM.from_pretrained(final_dir)
    inputs = tokenizer(prompt, return_tensors="pt")
    generated = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(generated[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output", help="folder for the model, data, manifest and results")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument(
        "--prompt", metavar="TEXT", help="no training: let the model of an earlier demo run in --out continue TEXT"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = Path(args.out).resolve()
    if args.prompt is not None:
        if not (out / "output" / "final" / "config.json").exists():
            print(f"[demo] no trained model in {out / 'output' / 'final'}: run the demo first", file=sys.stderr)
            return 1
        print(sample(out / "output" / "final", args.prompt))
        return 0
    if (out / "output").exists():
        import shutil

        shutil.rmtree(out / "output")  # a fresh run each time (the demo's spec never changes)
    job = write_demo_job(out, args.steps)
    print(f"[demo] manifest: {job}  (same as: kubetune run {job})", flush=True)

    from kubetune_trainer.entrypoint import main as run

    rc = run([str(job)])
    if rc != 0:
        return rc
    results = out / "output"
    png = plot_loss(results / "metrics.jsonl", out / "loss.png")
    records = parse_metrics((results / "metrics.jsonl").read_text())
    losses = [r["loss"] for r in records if "loss" in r]
    print(f"[demo] loss {losses[0]:.3f} -> {losses[-1]:.3f}; loss curves: {png}")
    print(f"[demo] results: {results} (final/, checkpoints/, metrics.jsonl, tensorboard/)")
    print(f"[demo] the fine-tuned model writes: {sample(results / 'final')!r}")
    print(f"[demo] your own prompt: {sys.executable} -m kubetune_trainer.demo --out {args.out} --prompt 'The fox'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
