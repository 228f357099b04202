"""GPU parity of the fast path (run by bench/gpu_run.sh; the CPU parity tests are tests/trainer/test_parity.py):
each objective trained twice by `kubetune run` on the same tiny model, data and seed in bf16, packed: once
with the speed switches on (Liger kernels, attention auto = flex attention on packed rows) and once plain (no
Liger, sdpa with a block-diagonal mask). Prints the per-step loss differences and the largest final-weight difference.

    python bench/gpu_parity.py [--steps 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

PAIRS = {
    "causal-lm full": ("full", "causal-lm", "text"),
    "instruction lora (messages)": ("lora", "instruction", "messages"),
    "preference lora": ("lora", "preference", "preference"),
    "classification full": ("full", "classification", "classification"),
}


def rows_for(fmt: str, n: int) -> list[dict]:
    from kubetune_trainer.tiny import sample_corpus

    texts = sample_corpus(n, seed=4)
    if fmt == "text":
        return [{"text": t} for t in texts]
    if fmt == "messages":
        return [
            {"messages": [{"role": "user", "content": f"say {i % 7}"}, {"role": "assistant", "content": t}]}
            for i, t in enumerate(texts)
        ]
    if fmt == "preference":
        return [{"prompt": "describe :", "chosen": " " + t, "rejected": " no ."} for t in texts]
    return [{"text": t, "label": "long" if len(t) > 40 else "short"} for t in texts]


def run(tmp: Path, model_dir: Path, name: str, technique: str, objective: str, fmt: str, steps: int, fast: bool):
    from safetensors.torch import load_file

    from kubetune_trainer.entrypoint import main

    work = tmp / f"{technique}-{objective}-{fmt}-{'fast' if fast else 'plain'}"
    work.mkdir(parents=True)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows_for(fmt, 256)))
    # Both pack (the same batches); the plain path masks packed rows with a 4D mask through sdpa.
    speed = {"ligerKernel": True, "attention": "auto"} if fast else {"ligerKernel": False, "attention": "sdpa"}
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "gpu-parity"},
        "spec": {
            "technique": technique,
            "objective": objective,
            "model": {"uri": model_dir.as_uri()},
            "datasets": [{"name": "d", "uri": data.as_uri(), "format": fmt}],
            "hyperparameters": {
                "maxSteps": steps,
                "batchSize": 8,
                "learningRate": 1e-3,
                "maxSeqLength": 256,
                "precision": "bf16",
                "warmupRatio": 0.0,
                "lrScheduler": "constant",
                "seed": 5,
                **speed,
            },
            "output": {"checkpointEverySteps": 10_000},
        },
    }
    job = work / "job.yaml"
    job.write_text(json.dumps(manifest))
    if main([str(job), "--output", (work / "out").as_uri() + "/"]) != 0:
        raise RuntimeError(f"{name} ({'fast' if fast else 'plain'}) failed")
    losses = [
        r["loss"] for r in map(json.loads, (work / "out" / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    (weights,) = (work / "out" / "final").glob("*.safetensors")
    return losses, load_file(str(weights))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    from kubetune_trainer.tiny import build_tiny_llama

    if not torch.cuda.is_available():
        print("gpu_parity: no GPU; the CPU parity tests are tests/trainer/test_parity.py")
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_llama(tmp / "model")
        for name, (technique, objective, fmt) in PAIRS.items():
            try:
                fast_losses, fast_weights = run(tmp, model_dir, name, technique, objective, fmt, args.steps, True)
                plain_losses, plain_weights = run(tmp, model_dir, name, technique, objective, fmt, args.steps, False)
            except Exception as err:  # noqa: BLE001 - one pair failing must not hide the others
                results[name] = {"error": f"{type(err).__name__}: {err}"}
                print(f"gpu_parity {name}: ERROR {err}")
                continue
            diffs = [abs(a - b) / max(abs(b), 1e-9) for a, b in zip(fast_losses, plain_losses, strict=True)]
            weight = max((fast_weights[k].float() - plain_weights[k].float()).abs().max().item() for k in plain_weights)
            results[name] = {
                "first_step_rel": diffs[0],
                "max_step_rel": max(diffs),
                "max_weight_abs": weight,
                "fast_losses": fast_losses,
                "plain_losses": plain_losses,
            }
            print(
                f"gpu_parity {name}: first step rel {diffs[0]:.2e}, max over {len(diffs)} steps {max(diffs):.2e}, "
                f"final weights max |diff| {weight:.2e}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
