"""Is the memory plan honest? (kubetune_trainer.plan, what `kubetune plan` prints and the trainer checks first.)

    python bench/memory_plan.py --cpu [--processes 2]      # exact parts against allocated tensors, on the CPU
    python bench/memory_plan.py --gpu build/bench-out/throughput.json   # plan against peaks measured on a GPU

--cpu: for full fine-tuning and LoRA on a tiny Llama, with strategy ddp in one process and fsdp over
--processes processes (torchrun, gloo), the weights, gradients and AdamW state each rank holds after one optimizer
step (its local shards under FSDP), against the plan's exact parts. Summed over the ranks they must be equal (the
"sum" columns); per rank FSDP pads dim 0 to a multiple of the ranks, so a rank may hold a few rows more.
--gpu: every row of bench/trainer_throughput.py's JSON (peak GPU memory measured from the start of training)
against the plan of the same run; target: within 15 % of the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "operator", ROOT / "trainer", ROOT / "bench"):
    sys.path.insert(0, str(path))

GiB = 1024**3


def _spec(model_dir: Path, technique: str, strategy: str, **hp):
    from kubetune.api.v1alpha1 import Spec

    raw = {
        "technique": technique,
        "model": {"uri": model_dir.as_uri()},
        "datasets": [{"uri": "file:///unused.jsonl", "format": "text"}],
        "hyperparameters": {"precision": "fp32", **hp},
        "distributed": {"strategy": strategy},
    }
    if technique == "lora":
        raw["lora"] = {"rank": 8, "dropout": 0.0}
    return Spec.model_validate(raw).resolved()


def _worker(model_dir: Path, technique: str, strategy: str) -> None:
    """One rank: load as the trainer does, one AdamW step, print what this rank holds as JSON."""
    import torch
    from torch.distributed.tensor import DTensor
    from transformers import Trainer, TrainingArguments

    from kubetune.api.constants import Precision
    from kubetune_trainer import plan, sharding
    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.trainer_setup import prepare_trainer

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from accelerate import PartialState

        PartialState(backend="gloo")
    spec = _spec(model_dir, technique, strategy)
    strategy_ = sharding.choose(spec, None, world)
    model = load_for_training(spec, model_dir, "causal-lm", strategy=strategy_).model
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        ddp_backend="gloo" if world > 1 else None,
    )
    trainer = prepare_trainer(Trainer(model=model, args=args), spec)
    trainer.create_optimizer()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    trainer.optimizer.step()

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    def size(tensors):
        return sum(local(t).numel() * local(t).element_size() for t in tensors)

    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    held = {
        "weights": size(model.parameters()),
        "gradients": size(p.grad for p in model.parameters() if p.grad is not None),
        "optimizer": size(state),
    }
    config = json.loads((model_dir / "config.json").read_text())
    estimate = plan.estimate(
        plan.ModelShape.from_config(config), spec, strategy_.name, world, None, precision=Precision.FP32, liger=False
    )
    shape = plan.ModelShape.from_config(config)
    gathered = 2 * (shape.block_linear_params + shape.block_other_params) * 4 if strategy_.sharded else 0
    planned = {"weights": estimate.weights - gathered, "gradients": estimate.gradients, "optimizer": estimate.optimizer}
    rank = int(os.environ.get("RANK", "0"))
    # One file per rank: torchrun interleaves the ranks' stdout.
    (Path(os.environ["MEMORY_PLAN_OUT"]) / f"rank-{rank}.json").write_text(
        json.dumps({"rank": rank, "held": held, "planned": planned})
    )


def cpu(processes: int) -> int:
    from kubetune_trainer.tiny import build_tiny_llama

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "model")
        print(
            f"{'technique':<11}{'strategy':<10}{'part':<11}{'planned/rank':>14}"
            f"{'held (ranks)':>30}{'sum held':>12}{'sum planned':>13}"
        )
        for technique in ("full", "lora"):
            for strategy, world in (("ddp", 1), ("fsdp", processes)):
                command = [sys.executable, __file__, "--worker", str(model_dir), technique, strategy]
                if world > 1:
                    command = [
                        sys.executable,
                        "-m",
                        "torch.distributed.run",
                        "--standalone",
                        "--nproc-per-node",
                        str(world),
                        *command[1:],
                    ]
                out = Path(tmp) / f"{technique}-{strategy}"
                out.mkdir()
                env = dict(os.environ, OMP_NUM_THREADS="1", MEMORY_PLAN_OUT=str(out))
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
                rows = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
                if done.returncode != 0 or len(rows) != world:
                    print(done.stdout[-2000:], done.stderr[-2000:])
                    return 1
                for part in ("weights", "gradients", "optimizer"):
                    held = [r["held"][part] for r in sorted(rows, key=lambda r: r["rank"])]
                    planned = rows[0]["planned"][part]
                    ratio = sum(held) / (planned * world) if planned else 1.0
                    worst = max(worst, abs(ratio - 1))
                    print(
                        f"{technique:<11}{strategy:<10}{part:<11}{planned:>14,.0f}"
                        f"{str(held):>30}{sum(held):>12,}{planned * world:>13,.0f}"
                    )
    print(f"\nlargest difference of a sum: {worst:.2%}")
    return 0 if worst < 1e-9 else 1


def gpu(results: Path) -> int:
    from kubetune.api.constants import Precision
    from kubetune.api.v1alpha1 import Spec
    from kubetune_trainer import plan
    from trainer_throughput import SHAPES

    rows = json.loads(results.read_text())["rows"]
    print(f"{'row':<34}{'measured GiB':>13}{'plan GiB':>10}{'plan/measured':>15}")
    worst = 0.0
    for row in rows:
        name = row["name"]
        if not row.get("peak_gib") or row["peak_gib"] != row["peak_gib"]:
            continue
        technique = next(t for t in ("qlora", "lora", "full") if t in name)
        kubetune = name.startswith("kubetune")
        raw = {
            "technique": technique,
            "model": {"uri": "file:///m"},
            "datasets": [{"uri": "file:///d.jsonl", "format": "text"}],
            "hyperparameters": {
                "batchSize": int(row["batch"]),
                "maxSeqLength": int(row.get("max_len") or 2048),
                "ligerKernel": kubetune,
                "packing": kubetune,
            },
        }
        if technique in ("lora", "qlora"):
            raw["lora"] = {"rank": 16, "alpha": 32, "dropout": 0.05}
        spec = Spec.model_validate(raw)
        config = dict(SHAPES[row["shape"]], model_type="llama")
        # The baseline trains full fine-tuning in pure bf16 (weights, gradients, AdamW in bf16).
        precision = Precision.BF16 if kubetune or technique != "full" else Precision.BF16_PURE
        estimate = plan.plan(spec, config, precision=precision, liger=kubetune).estimates[0]
        ratio = estimate.total / GiB / row["peak_gib"]
        worst = max(worst, abs(ratio - 1))
        print(f"{name:<34}{row['peak_gib']:>13.1f}{estimate.total / GiB:>10.1f}{ratio:>15.2f}")
    print(f"\nlargest difference: {worst:.1%} (target <= 15 %)")
    return 0 if worst <= 0.15 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--gpu", type=Path, metavar="THROUGHPUT_JSON")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(Path(args.worker[0]), args.worker[1], args.worker[2])
        return 0
    if args.gpu:
        return gpu(args.gpu)
    return cpu(args.processes)


if __name__ == "__main__":
    sys.exit(main())
