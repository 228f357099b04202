"""The "which strategy and how many GPUs" table of docs/techniques.md, computed with the memory plan `kubetune plan`
uses (kubetune_trainer.plan) for Llama-3-shaped 1B, 8B and 70B models and every technique: for 1, 2, 4 and 8 GPUs
of 80 GiB on one node, the strategy `auto` picks and the GiB per GPU, or "-" where nothing fits.

    python bench/plan_table.py [--batch 4] [--seq 2048] [--gpu-memory 80Gi] [--checkpointing]
"""

from __future__ import annotations

import argparse

from kubetune.api.constants import Technique
from kubetune.api.v1alpha1 import Spec
from kubetune_trainer import plan

SHAPES = {
    "1B": dict(
        model_type="llama",
        hidden_size=2048,
        num_hidden_layers=16,
        vocab_size=128256,
        intermediate_size=8192,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "8B": dict(
        model_type="llama",
        hidden_size=4096,
        num_hidden_layers=32,
        vocab_size=128256,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "70B": dict(
        model_type="llama",
        hidden_size=8192,
        num_hidden_layers=80,
        vocab_size=128256,
        intermediate_size=28672,
        num_attention_heads=64,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
}
GPUS = (1, 2, 4, 8)


def spec_for(technique: Technique, gpus: int, args) -> Spec:
    raw = {
        "technique": technique.value,
        "model": {"uri": "hf://meta-llama/Llama-3.1-8B"},
        "datasets": [{"uri": "s3://data/train.jsonl", "format": "text"}],
        "hyperparameters": {
            "batchSize": args.batch,
            "maxSeqLength": args.seq,
            "gradientCheckpointing": args.checkpointing,
        },
        "resources": {"gpus": gpus},
        "distributed": {"strategy": "auto", "cpuOffload": args.offload},
    }
    return Spec.model_validate(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--gpu-memory", default="80Gi")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--offload", action="store_true", help="let auto use FSDP with CPU offload")
    args = parser.parse_args()
    memory = plan.bytes_of(args.gpu_memory)
    print(
        f"batchSize {args.batch} x maxSeqLength {args.seq}, precision bf16, Liger kernels, "
        f"gradientCheckpointing {str(args.checkpointing).lower()}, cpuOffload {str(args.offload).lower()}, "
        f"GPUs of {args.gpu_memory}\n"
    )
    print("| model | technique | " + " | ".join(f"{g} GPU{'s' if g > 1 else ''}" for g in GPUS) + " |")
    print("|---|---|" + "---|" * len(GPUS))
    for name, config in SHAPES.items():
        for technique in Technique:
            cells = []
            for gpus in GPUS:
                result = plan.plan(spec_for(technique, gpus, args), config, gpu_memory=memory)
                chosen = result.chosen
                cells.append(f"{chosen.strategy} {chosen.gib(chosen.total)}" if chosen.fits else "-")
            print(f"| {name} | {technique.value} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
