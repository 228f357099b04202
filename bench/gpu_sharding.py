"""GPU check of CPU offload on one GPU (the CPU tests are tests/trainer/test_sharding.py; on a CPU torch refuses the
pinned offload policy, so these paths have only run unpinned there): each technique trained by `kubetune run` on the
same small Llama twice, plainly (ddp, one process) and with `distributed: {strategy: fsdp, cpuOffload: true}` (FSDP2
over a one-rank mesh, parameters, gradients and the optimizer step in pinned host memory). Prints, per technique,
whether both ran, the largest per-step loss difference and each run's peak GPU memory; an error is printed by name
(lora and adapter are sharded once applied under offload, so that FSDP brings their parameters to the GPU: on a CPU
only that FSDP manages them is tested).

qlora is in the list: on the GPU its 4-bit weights are packed in a bf16 storage for FSDP and matmul through the CUDA
kernels of bitsandbytes, which the CPU tests (fp32 storage, the CPU backend) have not run. This script runs one GPU
only; qlora over 2 GPUs (FSDP-QLoRA proper) is tests/trainer/test_sharding.py's 2-process qlora test, which on a
machine with 2 GPUs runs the same code under torchrun with NCCL.

    python bench/gpu_sharding.py [--steps 10] [--hidden 1024] [--layers 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TECHNIQUES = {
    "full": {},
    "lora": {"lora": {"rank": 16, "alpha": 32, "dropout": 0.0}},
    "qlora": {"lora": {"rank": 16, "alpha": 32, "dropout": 0.0}, "quantization": {"bits": 4}},
    "feature-extraction": {"featureExtraction": {"trainableLayers": 2}},
    "adapter": {"adapter": {"bottleneckSize": 32}},
}
# Runs one job in a process of its own (the one-rank process group is per process) and prints its peak GPU memory.
RUNNER = (
    "import sys, torch\n"
    "from kubetune_trainer.entrypoint import main\n"
    "code = main(sys.argv[1:])\n"
    "print(f'PEAK_BYTES {torch.cuda.max_memory_allocated()}', flush=True)\n"
    "sys.exit(code)\n"
)


def run(work: Path, model_dir: Path, technique: str, steps: int, offload: bool) -> dict:
    from kubetune_trainer.tiny import sample_corpus

    work.mkdir(parents=True)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(256, seed=4)))
    spec = {
        "technique": technique,
        "objective": "causal-lm",
        "model": {"uri": model_dir.as_uri()},
        "datasets": [{"uri": data.as_uri(), "format": "text"}],
        "hyperparameters": {
            "maxSteps": steps,
            "batchSize": 8,
            "learningRate": 1e-3,
            "maxSeqLength": 256,
            "precision": "bf16",
            "warmupRatio": 0.0,
            "lrScheduler": "constant",
            "seed": 5,
        },
        "output": {"checkpointEverySteps": max(2, steps // 2)},
        **TECHNIQUES[technique],
    }
    if offload:
        spec["distributed"] = {"strategy": "fsdp", "cpuOffload": True}
    job = work / "job.yaml"
    job.write_text(
        json.dumps(
            {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "g"}, "spec": spec}
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(job), "--output", (work / "out").as_uri() + "/"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    peak = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_BYTES ")]
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    metrics = (work / "out" / "metrics.jsonl").read_text().splitlines()
    return {"losses": [r["loss"] for r in map(json.loads, metrics) if "loss" in r], "peak_gib": peak[0] / 2**30}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    from kubetune_trainer.tiny import build_tiny_llama

    if not torch.cuda.is_available():
        print("gpu_sharding: no GPU; the CPU tests are tests/trainer/test_sharding.py")
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_llama(
            tmp / "model", hidden=args.hidden, layers=args.layers, heads=max(4, args.hidden // 128)
        )
        for technique in TECHNIQUES:
            plain = run(tmp / f"{technique}-plain", model_dir, technique, args.steps, offload=False)
            offload = run(tmp / f"{technique}-offload", model_dir, technique, args.steps, offload=True)
            results[technique] = {"plain": plain, "offload": offload}
            if "error" in plain or "error" in offload:
                print(
                    f"gpu_sharding {technique}: plain {plain.get('error', 'ok')}; offload {offload.get('error', 'ok')}"
                )
                continue
            diffs = [abs(a - b) / max(abs(b), 1e-9) for a, b in zip(offload["losses"], plain["losses"], strict=False)]
            print(
                f"gpu_sharding {technique}: loss max rel diff {max(diffs):.2e} over {len(diffs)} steps; peak GPU "
                f"{plain['peak_gib']:.2f} GiB plain, {offload['peak_gib']:.2f} GiB with offload"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
