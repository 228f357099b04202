"""Training throughput: kubetune's trainer against plain transformers + PEFT, same run, device and data.

    python bench/trainer_throughput.py                 # GPU: Llama-3.2-1B shape + the 8B QLoRA row
    python bench/trainer_throughput.py --tiny          # anywhere (CPU): tiny shapes, seconds
    python bench/trainer_throughput.py --isolate --row-timeout 150 --json out.json

Data: random token documents of uniform length (256..2048 tokens on a GPU; 8..64 with --tiny), the
same documents for both paths. Models: random weights, no hub (a Llama-3.2-1B-shaped config; 8B =
Llama-3.1-8B shape), written once as a Hugging Face folder that both paths load.

- baseline: plain transformers + peft: AutoModelForCausalLM with sdpa, peft LoRA / QLoRA (nf4,
  prepare_model_for_kbit_training), padded batches (one document per row, padded to the longest),
  transformers' Trainer with AdamW.
- kubetune: the trainer's real code path from a FineTuneJob spec with its defaults (packing,
  ligerKernel, attention auto, fused AdamW on a GPU): data.load_tasks + objectives.causal_lm.run.

Measured per row after warm-up steps: non-padding tokens/s (the Trainer's non-padding token count over
the timed steps' wall time), peak GPU memory (max allocated from the start of training), and MFU =
tokens/s x (6N + 6 L d E[n^2]/E[n]) / the device's dense bf16 peak (N: parameters doing matmuls,
embedding lookup excluded, lm_head included; the second term is causal attention over documents of
length n; both paths get the same FLOPs per token, so MFU ratios equal throughput ratios). LoRA/QLoRA
MFU uses 6N too (frozen weights skip their weight gradients, so this overstates the useful work;
it compares like with like). On a CPU memory and MFU print as "-".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES = {
    # Llama-3.2-1B
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    # Llama-3.1-8B
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        tie_word_embeddings=True,
    ),
    "tiny-8b": dict(
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        tie_word_embeddings=False,
    ),
}
# Dense bf16 peak TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "B200": 2250.0,
}
TECHNIQUES = ("full", "lora", "qlora")
IGNORE = -100

log = logging.getLogger("bench")


@dataclass
class Plan:
    tiny: bool
    steps: int
    warmup: int
    baseline_batch: int
    kubetune_batch: int
    min_len: int
    max_len: int
    big_batch: int = 2  # the 8B rows: batch 2 at max_len
    big_steps: int = 3
    seed: int = 0

    @classmethod
    def make(cls, tiny: bool, steps: int | None, warmup: int | None) -> Plan:
        if tiny:
            return cls(tiny, steps or 4, warmup if warmup is not None else 1, 4, 2, 8, 64, big_steps=2)
        return cls(tiny, steps or 10, warmup if warmup is not None else 3, 4, 2, 256, 2048)


@dataclass
class Row:
    name: str
    technique: str
    path: str  # baseline | kubetune
    shape: str
    batch: str
    tokens_per_s: float = float("nan")
    peak_gib: float = float("nan")
    mfu: float = float("nan")
    loss: float = float("nan")
    notes: str = ""
    error: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def make_documents(plan: Plan, vocab: int, count: int, *, fixed: int | None = None, seed: int = 0) -> list[list[int]]:
    """Random token documents; ids 4.. (0-3 are pad/bos/eos/unk)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        n = fixed or rng.randint(plan.min_len, plan.max_len)
        docs.append([rng.randrange(4, vocab) for _ in range(n - 1)])  # + EOS = n tokens
    return docs


def build_tokenizer(vocab: int):
    """Word-level tokenizer: word "t<i>" is token i, so a document's text encodes back to its ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"t{i}": i for i in range(4, vocab)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=1 << 20,
    )


def build_model_dir(out: Path, shape: str, max_len: int, seed: int = 0) -> Path:
    """A randomly initialised Llama of `shape`, saved in safetensors (bf16 on a GPU) with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    dims = SHAPES[shape]
    config = LlamaConfig(
        **dims,
        max_position_embeddings=max(max_len, 2048),
        rope_theta=500000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    device = "cuda" if gpu() else "cpu"
    dtype = torch.bfloat16 if gpu() else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(dims["vocab_size"]).save_pretrained(out)
    del model
    free_memory()
    return out


def write_text_dataset(path: Path, docs: list[list[int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for doc in docs:
            fh.write(json.dumps({"text": " ".join(f"t{i}" for i in doc)}) + "\n")
    return path


def flops_per_token(shape: str, docs: list[list[int]]) -> float:
    d = SHAPES[shape]
    h, layers, inter, vocab = d["hidden_size"], d["num_hidden_layers"], d["intermediate_size"], d["vocab_size"]
    kv = h // d["num_attention_heads"] * d["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q,o + k,v + gate,up,down
    matmul_params = layers * per_layer + h * vocab  # + lm_head (tied or not, the matmul runs)
    lengths = [len(doc) + 1 for doc in docs]
    mean_sq_over_mean = sum(n * n for n in lengths) / sum(lengths)
    return 6 * matmul_params + 6 * layers * h * mean_sq_over_mean


def device_peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    if not gpu():
        return None
    import torch

    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def free_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- timing


def make_timer(warmup: int):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time and non-padding tokens (the Trainer's count) between the end of step `warmup` and
        the end of the last step; peak memory from the start of training."""

        def __init__(self):
            self.marks: list[tuple[int, float, int]] = []
            self.last_loss = float("nan")

        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((state.global_step, time.perf_counter(), int(state.num_input_tokens_seen)))
            control.should_save = False  # the Trainer's own end-of-run checkpoint is not what we measure
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])

        def result(self) -> tuple[float, float]:
            timed = [m for m in self.marks if m[0] >= warmup]
            if len(timed) < 2:
                raise RuntimeError(f"too few steps to time ({len(self.marks)} steps, warm-up {warmup})")
            (_, t0, n0), (_, t1, n1) = timed[0], timed[-1]
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
            return (n1 - n0) / (t1 - t0), peak

    return StepTimer()


def common_args(out_dir: Path, batch: int, steps: int, seed: int) -> dict:
    return dict(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        include_num_input_tokens_seen="non_padding",
    )


# --------------------------------------------------------------------------- the two paths


def run_baseline(
    technique: str, model_dir: Path, docs: list[list[int]], batch: int, steps: int, warmup: int, seed: int
):
    """Plain transformers + peft, padded batches, sdpa."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [" ".join(f"t{i}" for i in doc) for doc in docs]
    ids = [row + [tokenizer.eos_token_id] for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    dataset = Dataset.from_dict({"input_ids": ids})

    def collate(rows):
        longest = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), longest), tokenizer.pad_token_id)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            attention[i, : len(r["input_ids"])] = 1
        labels = input_ids.masked_fill(attention == 0, IGNORE)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    kwargs = dict(dtype=dtype, attn_implementation="sdpa")
    if technique == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": 0 if on_gpu else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if technique in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if technique == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(
            model,
            LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    timer = make_timer(warmup)
    args = TrainingArguments(
        **common_args(model_dir.parent / "out-baseline", batch, steps, seed), optim="adamw_torch", bf16=on_gpu
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[timer])
    trainer.train()
    tokens_per_s, peak = timer.result()
    del trainer, model
    free_memory()
    return tokens_per_s, peak, timer.last_loss, "padded, sdpa"


def kubetune_spec(
    technique: str,
    model_dir: Path,
    data_file: Path,
    batch: int,
    steps: int,
    max_len: int,
    seed: int,
    hyperparameters: dict | None = None,
):
    from kubetune.api.v1alpha1 import Spec

    spec = {
        "technique": technique,
        "objective": "causal-lm",
        "model": {"uri": f"file://{model_dir}"},
        "datasets": [{"uri": f"file://{data_file}", "format": "text"}],
        "hyperparameters": {
            "maxSteps": steps,
            "batchSize": batch,
            "maxSeqLength": max_len,
            "learningRate": 1e-4,
            "lrScheduler": "constant",
            "warmupRatio": 0.0,
            "seed": seed,
            **(hyperparameters or {}),
        },
        "output": {"checkpointEverySteps": steps + 1000},
    }
    if technique in ("lora", "qlora"):
        spec["lora"] = {"rank": 16, "alpha": 32, "dropout": 0.05, "targetModules": "all-linear"}
    return Spec.model_validate(spec).resolved()


def run_kubetune(
    technique: str,
    model_dir: Path,
    data_file: Path,
    batch: int,
    steps: int,
    warmup: int,
    max_len: int,
    seed: int,
    hyperparameters: dict | None = None,
):
    """kubetune_trainer's causal-lm recipe, from a spec (defaults: packing, Liger, attention auto)."""
    from kubetune_trainer import speed
    from kubetune_trainer.context import OutputLayout, RunContext
    from kubetune_trainer.data import load_tasks
    from kubetune_trainer.objectives import causal_lm
    from kubetune_trainer.reporting import NullReporter

    spec = kubetune_spec(technique, model_dir, data_file, batch, steps, max_len, seed, hyperparameters)
    work = Path(tempfile.mkdtemp(prefix="kt-bench-", dir=model_dir.parent))
    timer = make_timer(warmup)
    ctx = RunContext(
        spec=spec,
        name="bench",
        work_dir=work,
        layout=OutputLayout(f"file://{work}/output/"),
        model_dir=model_dir,
        tasks=load_tasks(spec, work / "data"),
        resume_from=None,
        callbacks=[timer],
        reporter=NullReporter(),
    )
    result = causal_lm.run(ctx)
    tokens_per_s, peak = timer.result()
    base = result.model.get_base_model() if hasattr(result.model, "get_base_model") else result.model
    attention = getattr(base.config, "_attn_implementation", "?")
    liger = "liger" if getattr(base, "kubetune_liger", False) else "no liger"
    notes = f"packed, {attention}, {liger}" + (", fused adamw" if speed.on_gpu() else "")
    del result, ctx
    free_memory()
    return tokens_per_s, peak, timer.last_loss, notes


# --------------------------------------------------------------------------- rows


def row_specs(plan: Plan, rows: list[str]) -> list[dict]:
    out = []
    shape = "tiny" if plan.tiny else "1b"
    for technique in TECHNIQUES:
        if technique in rows:
            for path in ("baseline", "kubetune"):
                batch = plan.baseline_batch if path == "baseline" else plan.kubetune_batch
                out.append(
                    dict(
                        name=f"{technique}/{path}",
                        technique=technique,
                        path=path,
                        shape=shape,
                        batch=batch,
                        steps=plan.warmup + plan.steps,
                        docs="var",
                    )
                )
    if "8b" in rows:
        shape = "tiny-8b" if plan.tiny else "8b"
        for path in ("baseline", "kubetune"):
            out.append(
                dict(
                    name=f"8b-qlora/{path}",
                    technique="qlora",
                    path=path,
                    shape=shape,
                    batch=plan.big_batch,
                    steps=plan.warmup + plan.big_steps,
                    docs="fixed",
                )
            )
    return out


def prepare_inputs(plan: Plan, work: Path, specs: list[dict]) -> dict:
    """Model folders and datasets for every shape the rows use (built once, shared by all rows)."""
    inputs = {}
    for shape in sorted({s["shape"] for s in specs}):
        vocab = SHAPES[shape]["vocab_size"]
        model_dir = build_model_dir(work / f"model-{shape}", shape, plan.max_len, plan.seed)
        kinds = {s["docs"] for s in specs if s["shape"] == shape}
        for kind in kinds:
            if kind == "var":
                need = (plan.warmup + plan.steps + 2) * max(plan.baseline_batch, plan.kubetune_batch) * 3
                docs = make_documents(plan, vocab, need, seed=plan.seed)
            else:
                docs = make_documents(
                    plan,
                    vocab,
                    (plan.warmup + plan.big_steps + 2) * plan.big_batch,
                    fixed=plan.max_len,
                    seed=plan.seed + 1,
                )
            data_file = write_text_dataset(work / f"data-{shape}-{kind}.jsonl", docs)
            inputs[(shape, kind)] = dict(
                model_dir=str(model_dir), data_file=str(data_file), docs=docs, flops=flops_per_token(shape, docs)
            )
    return inputs


def run_row(plan: Plan, spec: dict, inp: dict, peak_tflops: float | None, overrides: dict) -> Row:
    import torch

    torch.manual_seed(plan.seed)
    row = Row(spec["name"], spec["technique"], spec["path"], spec["shape"], str(spec["batch"]))
    model_dir, data_file = Path(inp["model_dir"]), Path(inp["data_file"])
    try:
        if spec["path"] == "baseline":
            result = run_baseline(
                spec["technique"], model_dir, inp["docs"], spec["batch"], spec["steps"], plan.warmup, plan.seed
            )
        else:
            result = run_kubetune(
                spec["technique"],
                model_dir,
                data_file,
                spec["batch"],
                spec["steps"],
                plan.warmup,
                plan.max_len,
                plan.seed,
                overrides,
            )
        row.tokens_per_s, row.peak_gib, row.loss, row.notes = result
        if peak_tflops:
            row.mfu = row.tokens_per_s * inp["flops"] / (peak_tflops * 1e12)
    except Exception as err:  # noqa: BLE001 - one failing row (OOM, missing package) must not lose the table
        row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        log.exception("row %s failed", spec["name"])
        free_memory()
    return row


def run_isolated(spec: dict, args, work: Path) -> Row:
    """One row in its own process (fresh GPU memory, no Liger patches left over), under a timeout."""
    cmd = [
        sys.executable,
        __file__,
        "--work",
        str(work),
        "--only",
        spec["name"],
        "--emit-json",
        "--steps",
        str(args.steps or 0),
        "--warmup",
        str(args.warmup if args.warmup is not None else -1),
    ]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    cmd += ["--attention", args.attention] if args.attention else []
    cmd += ["--no-liger"] if args.no_liger else []
    cmd += ["--rows", args.rows]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout)
    except subprocess.TimeoutExpired:
        return Row(
            spec["name"],
            spec["technique"],
            spec["path"],
            spec["shape"],
            str(spec["batch"]),
            error=f"timeout after {args.row_timeout}s",
        )
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return Row(**json.loads(line[4:]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return Row(
        spec["name"],
        spec["technique"],
        spec["path"],
        spec["shape"],
        str(spec["batch"]),
        error=f"exit {proc.returncode}: {tail[0][:200]}",
    )


# --------------------------------------------------------------------------- report


def _fmt(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


COLUMNS = [
    "row",
    "shape",
    "batch",
    "tokens/s",
    "peak GiB",
    "MFU %",
    "loss",
    "x baseline tok/s",
    "x baseline mem",
    "notes",
]


def ratios(rows: list[Row]) -> dict[str, tuple[float, float]]:
    by_name = {r.name: r for r in rows}
    out = {}
    for r in rows:
        if r.path != "kubetune":
            continue
        base = by_name.get(r.name.replace("/kubetune", "/baseline"))
        if base is None or r.error or base.error:
            continue
        speed = r.tokens_per_s / base.tokens_per_s if base.tokens_per_s > 0 else float("nan")
        mem = r.peak_gib / base.peak_gib if base.peak_gib and base.peak_gib > 0 else float("nan")
        out[r.name] = (speed, mem)
    return out


def table(rows: list[Row]) -> str:
    rel = ratios(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        speed, mem = rel.get(r.name, (float("nan"), float("nan")))
        cells = [
            r.name,
            r.shape,
            r.batch,
            _fmt(r.tokens_per_s, ",.0f"),
            _fmt(r.peak_gib, ".1f"),
            _fmt(r.mfu * 100 if not math.isnan(r.mfu) else float("nan"), ".1f"),
            _fmt(r.loss, ".3f"),
            _fmt(speed, ".2f"),
            _fmt(mem, ".2f"),
            r.error and f"FAILED {r.error}" or r.notes,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the default without a GPU)")
    parser.add_argument("--rows", default="full,lora,qlora,8b", help="comma list of full, lora, qlora, 8b")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per row (default 10 GPU / 4 tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 GPU / 1 tiny)")
    parser.add_argument("--isolate", action="store_true", help="each row in its own process (default on a GPU)")
    parser.add_argument("--in-process", action="store_true", help="all rows in this process (default on a CPU)")
    parser.add_argument("--row-timeout", type=int, default=240, help="seconds per isolated row")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device dense bf16 peak for MFU")
    parser.add_argument("--attention", default=None, help="kubetune spec.hyperparameters.attention override")
    parser.add_argument("--no-liger", action="store_true", help="kubetune with ligerKernel: false")
    parser.add_argument("--work", default=None, help="scratch folder (model folders are reused from here)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="[bench] %(message)s")
    with contextlib.suppress(Exception):
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    if not torch.cuda.is_available():
        args.tiny = True
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    plan = Plan.make(args.tiny, args.steps or None, None if args.warmup is None or args.warmup < 0 else args.warmup)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    specs = row_specs(plan, wanted)
    if args.only:
        specs = [s for s in specs if s["name"] == args.only]
    overrides = {}
    if args.attention:
        overrides["attention"] = args.attention
    if args.no_liger:
        overrides["ligerKernel"] = False

    work_ctx = contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="kt-bench-")
    with work_ctx as work_name:
        work = Path(work_name)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        inputs: dict = {}
        peak = device_peak_tflops(args.peak_tflops)
        isolate = args.isolate or (torch.cuda.is_available() and not args.in_process)
        rows = []
        for spec in specs:
            if (spec["shape"], spec["docs"]) not in inputs:  # built when first needed: 1B rows before the 8B build
                inputs |= prepare_inputs(plan, work, [s for s in specs if s["shape"] == spec["shape"]])
            if isolate and not args.only:
                row = run_isolated(spec, args, work)
            else:
                # The Trainer prints its log dicts to stdout: keep stdout for the table (and ROW lines).
                with contextlib.redirect_stdout(sys.stderr):
                    row = run_row(plan, spec, inputs[(spec["shape"], spec["docs"])], peak, overrides)
            rows.append(row)
            if args.json and not args.emit_json:  # partial results survive a timeout of the whole run
                Path(args.json).write_text(json.dumps({"partial": True, "rows": [asdict(r) for r in rows]}, indent=2))
            if args.emit_json:
                print("ROW " + json.dumps(asdict(row)), flush=True)
            else:
                print(
                    f"[bench] {row.name}: {_fmt(row.tokens_per_s, ',.0f')} tokens/s {row.error}",
                    file=sys.stderr,
                    flush=True,
                )
        if args.emit_json:
            return 0

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"\nkubetune trainer vs plain transformers+peft on {device} "
        f"({'tiny shapes' if plan.tiny else 'Llama-3.2-1B / Llama-3.1-8B shapes'}, random weights; "
        f"documents {plan.min_len}..{plan.max_len} tokens; {plan.warmup} warm-up + {plan.steps} timed steps "
        f"({plan.big_steps} for 8B); peak {peak or '-'} TFLOP/s; {time.perf_counter() - started:.0f} s)\n"
    )
    print(table(rows))
    rel = ratios(rows)
    if rel:
        print(
            "\nratios (kubetune / baseline): "
            + "; ".join(
                f"{name.split('/')[0]}: {s:.2f}x tokens/s" + (f", {m:.2f}x peak memory" if not math.isnan(m) else "")
                for name, (s, m) in rel.items()
            )
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"device": device, "plan": asdict(plan), "rows": [asdict(r) for r in rows], "ratios": rel}, indent=2
            )
        )
    return 0 if all(not r.error for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
