"""GPU correctness check of the optimised path (run by bench/gpu_run.sh; the CPU version is
tests/trainer/test_speed.py): the loss of one packed batch through kubetune's load path with the spec's
defaults (Liger kernels, attention auto = flex, bf16) against plain transformers (sdpa, no Liger) on
the same documents one per row. Both in train mode (Liger's fused loss runs only there), no grad.

    python bench/gpu_check.py        # prints one line per variant and OK / MISMATCH
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOLERANCE = 2e-2  # bf16 over a 4-layer model: relative


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from trainer_throughput import Plan, build_model_dir, kubetune_spec, make_documents

    if not torch.cuda.is_available():
        print("gpu_check: no GPU; the CPU check is tests/trainer/test_speed.py")
        return 0
    from kubetune_trainer.modeling import load_for_training
    from kubetune_trainer.packing import PaddingCollator, install_block_diagonal_attention, pack_examples

    plan = Plan.make(False, None, None)
    plan.min_len, plan.max_len = 64, 512
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", "tiny-8b", plan.max_len)  # small dims, real kernels
        docs = [d + [2] for d in make_documents(plan, 1024, 12, seed=3)]
        padded = PaddingCollator(0)([{"input_ids": d, "labels": d} for d in docs])
        padded = {k: v.cuda() for k, v in padded.items()}
        reference_model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
        reference_model = reference_model.cuda().train()
        with torch.no_grad():
            reference = float(reference_model(**padded).loss)
        del reference_model
        packed = pack_examples({"input_ids": docs, "labels": docs}, max_length=1024)
        rows = [dict(zip(packed, values, strict=True)) for values in zip(*packed.values(), strict=True)]
        batch = {k: v.cuda() for k, v in PaddingCollator(0)(rows).items()}
        for label, hp in (
            ("defaults (liger, attention auto)", {}),
            ("attention sdpa, liger", {"attention": "sdpa"}),
            ("attention flex, no liger", {"attention": "flex", "ligerKernel": False}),
        ):
            spec = kubetune_spec("full", model_dir, Path(tmp) / "unused.jsonl", 2, 1, 1024, 0, hp)
            model = load_for_training(spec, model_dir, "causal-lm", packed=True).model.cuda().train()
            install_block_diagonal_attention(model)
            with torch.no_grad():
                loss = float(model(**batch).loss)
            rel = abs(loss - reference) / reference
            good = rel < TOLERANCE
            ok &= good
            print(
                f"gpu_check {label}: kubetune {loss:.5f} vs plain {reference:.5f} (rel {rel:.2e}, "
                f"{model.config._attn_implementation}, liger={getattr(model, 'kubetune_liger', False)}) "
                f"{'OK' if good else 'MISMATCH'}"
            )
            del model
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
