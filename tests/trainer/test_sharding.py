"""spec.distributed.strategy fsdp on the CPU (torchrun, gloo): FSDP2 with 2 and 4 processes trains the tiny Llama
to the losses of one process with the same global batch, each rank holds about 1/N of the parameters, and a run
killed mid-way resumes from its sharded checkpoint on another number of processes and ends where an
uninterrupted run ends. The final model is one Hugging Face folder that transformers and peft reload."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS = 8
PER_DEVICE = 2
# Float summation order differs between one process and N (gradient reduce-scatter, accumulation): the losses
# of the same global batches agree to this, per step.
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-5


def _env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(job: Path, out: Path, processes: int, **env) -> subprocess.Popen:
    command = [sys.executable, "-m", "kubetune_trainer", str(job), "--output", out.as_uri() + "/"]
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(processes),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_port()),
            *command[1:],
        ]
    return subprocess.Popen(command, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(job: Path, out: Path, processes: int, **env) -> str:
    proc = _torchrun(job, out, processes, **env)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    return output


def _job(
    write_job,
    model_dir,
    data,
    name: str,
    technique: str = "full",
    accumulation: int = 1,
    strategy: str = "fsdp",
    offload: bool = False,
):
    sections = {"lora": {"rank": 4, "alpha": 8, "dropout": 0.0}} if technique in ("lora", "qlora") else {}
    return write_job(
        model_dir,
        [{"name": "corpus", "uri": data.as_uri(), "format": "text"}],
        filename=f"{name}.yaml",
        technique=technique,
        hyperparameters={
            "maxSteps": STEPS,
            "batchSize": PER_DEVICE,
            "gradientAccumulationSteps": accumulation,
            "packing": False,
            "learningRate": 3e-3,
        },
        output={"checkpointEverySteps": 4, "keepCheckpoints": 2},
        distributed={"strategy": strategy, "cpuOffload": offload} if offload else {"strategy": strategy},
        **sections,
    )


def _kill_after_step_4(job: Path, out: Path, processes: int) -> None:
    """Run `job` slowly on `processes` and kill it once its step-4 checkpoint is complete."""
    proc = _torchrun(job, out, processes, KUBETUNE_DEBUG_STEP_SLEEP="0.5")
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "step-4" / "_COMPLETE").exists():
            assert proc.poll() is None and time.time() < deadline, (
                proc.stdout.read()[-3000:] if proc.poll() is not None else "timeout"
            )
            time.sleep(0.2)
    finally:
        proc.kill()  # torchrun, then its workers (they run `... kubetune_trainer <job>`)
        proc.wait()
        subprocess.run(["pkill", "-9", "-f", str(job)], check=False)
    assert not (out / "final" / "_COMPLETE").exists(), "killed too late: the run had finished"


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _final(out: Path, adapter: bool) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / ("adapter_model.safetensors" if adapter else "model.safetensors")))


def _close(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from kubetune_trainer.tiny import sample_corpus

    path = tmp_path_factory.mktemp("sharding-data") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(96, seed=12)))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir, data):
    """run(processes, **job) -> (output folder, log) of `_job(**job)` on `processes`, run once per module: several
    tests compare with the same uninterrupted run (each run costs tens of seconds on 2 cores)."""
    import yaml
    from tests.fixtures import tiny_training_job

    done: dict[tuple, tuple[Path, str]] = {}

    def write(model_dir, datasets, *, filename, **sections):
        doc = tiny_training_job(model_dir, datasets, name="job", steps=8, checkpoint_every=4, **sections)
        path = tmp_path_factory.mktemp("job") / filename
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def run(processes: int, **job) -> tuple[Path, str]:
        key = (processes, tuple(sorted(job.items())))
        if key not in done:
            out = tmp_path_factory.mktemp("run") / "out"
            log = _run(_job(write, tiny_llama_dir, data, "reference", **job), out, processes)
            done[key] = (out, log)
        return done[key]

    return run


@pytest.mark.parametrize(("technique", "processes"), [("full", 2), ("lora", 2), ("qlora", 2), ("full", 4)])
def test_fsdp_matches_one_process_of_the_same_global_batch(technique, processes, runs):
    sharded_out, log = runs(processes, technique=technique)
    single_out, _ = runs(1, technique=technique, accumulation=processes, strategy="ddp")

    sharded, single = _losses(sharded_out), _losses(single_out)
    assert len(sharded) == len(single) == STEPS
    assert max(abs(a - b) for a, b in zip(sharded, single, strict=True)) <= LOSS_TOLERANCE, (sharded, single)
    assert sharded[-1] < sharded[0]
    adapter = technique in ("lora", "qlora")
    assert _close(_final(sharded_out, adapter), _final(single_out, adapter)) <= WEIGHT_TOLERANCE

    # Each rank holds about 1/N of the base's parameters (the layers split evenly; small tensors round up).
    if technique == "qlora":  # loaded whole (4-bit weights packed in a float storage), sharded once LoRA is added
        assert f"FSDP2 over {processes} processes, applied after loading" in log, log[-3000:]
    held = {int(r): (int(h), int(t)) for r, h, t in re.findall(r"rank (\d+) holds (\d+) of the (\d+) parameters", log)}
    assert sorted(held) == list(range(processes)), log[-3000:]
    for rank, (mine, total) in held.items():
        share = mine / total
        # lora's adapters stay whole on every rank; qlora's are sharded with its base (see the qlora test)
        adapters = 0.05 if technique == "lora" else 0.0
        assert 1 / processes - 0.02 <= share <= 1 / processes + 0.02 + adapters, (rank, share)
    # Sharded checkpoints: every rank's shard, the metadata, and the marker listing every file.
    step = sharded_out / "checkpoints" / "step-8"
    names = {p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file()}
    assert {f"dcp/__{r}_0.distcp" for r in range(processes)} | {
        "dcp/.metadata",
        "_COMPLETE",
        "trainer_state.json",
    } <= names
    marker = json.loads((step / "_COMPLETE").read_text())
    assert set(marker["files"]) == names - {"_COMPLETE"}


def test_the_final_model_reloads(tiny_llama_dir, runs):
    from transformers import AutoModelForCausalLM

    out, _ = runs(2, technique="full")
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    assert any((p - q).abs().max() > 0 for p, q in zip(model.parameters(), base.parameters(), strict=True))


@pytest.mark.parametrize(("first", "then"), [(2, 1), (2, 4)])
def test_killed_run_resumes_on_another_number_of_processes(
    first, then, tiny_llama_dir, data, write_job, tmp_path, runs
):
    """Killed after its step-4 checkpoint, resumed on `then` processes: the same global batch (accumulation makes
    up for the processes), the same losses and final weights as a run never interrupted."""
    # A global batch of 8 (2 per process x 2 accumulated x 2 processes) that 1 (x4) and 4 (x1) processes keep.
    job = _job(write_job, tiny_llama_dir, data, "job", accumulation=2)
    reference, _ = runs(first, technique="full", accumulation=2)

    out = tmp_path / "out"
    _kill_after_step_4(job, out, first)

    log = _run(job, out, then)
    assert "resuming from checkpoint step-" in log
    resumed, uninterrupted = _losses(out), _losses(reference)
    assert len(resumed) == STEPS
    largest_loss_gap = max(abs(a - b) for a, b in zip(resumed, uninterrupted, strict=True))
    assert largest_loss_gap <= LOSS_TOLERANCE, (resumed, uninterrupted)
    assert _close(_final(out, False), _final(reference, False)) <= WEIGHT_TOLERANCE


def test_cpu_offload_on_one_process_matches_a_plain_run_and_resumes_on_two(
    tiny_llama_dir, data, write_job, tmp_path, runs
):
    """distributed.cpuOffload on one process: FSDP2 over a one-rank mesh with the offload policy (unpinned without
    an accelerator: torch refuses to pin memory with "Cannot access accelerator device when none is available"; the
    pinned policy runs on the GPU, bench/gpu_run.sh). The losses and weights are a plain one-process run's, the
    checkpoints are sharded ones, and a run killed after step 4 resumes on 2 processes with the same global batch
    (accumulation 2 on one, 1 on two) and ends where the uninterrupted run ends."""
    import torch

    offload_job = _job(write_job, tiny_llama_dir, data, "offload", accumulation=2, offload=True)
    log = _run(offload_job, tmp_path / "offload", 1)
    plain_out, _ = runs(1, technique="full", accumulation=2, strategy="ddp")

    assert "FSDP2 with CPU offload over one process" in log, log[-3000:]
    if not torch.accelerator.is_available():
        assert "(no accelerator: unpinned)" in log
    offload, plain = _losses(tmp_path / "offload"), _losses(plain_out)
    assert len(offload) == len(plain) == STEPS
    assert max(abs(a - b) for a, b in zip(offload, plain, strict=True)) <= LOSS_TOLERANCE, (offload, plain)
    assert _close(_final(tmp_path / "offload", False), _final(plain_out, False)) <= WEIGHT_TOLERANCE
    step = tmp_path / "offload" / "checkpoints" / "step-8"
    assert (step / "dcp" / "__0_0.distcp").is_file() and (step / "dcp" / ".metadata").is_file()
    assert json.loads((step / "kubetune_sharded.json").read_text()) == {"world": 1, "globalBatch": 2 * 2}

    out = tmp_path / "resumed"
    _kill_after_step_4(offload_job, out, 1)
    log = _run(offload_job, out, 2)
    assert "resuming from checkpoint step-4" in log
    assert "gradient accumulation 1 keeps the global batch of 4" in log
    resumed = _losses(out)
    assert max(abs(a - b) for a, b in zip(resumed, offload, strict=True)) <= LOSS_TOLERANCE, (resumed, offload)
    assert _close(_final(out, False), _final(tmp_path / "offload", False)) <= WEIGHT_TOLERANCE


def test_qlora_cpu_offload_on_one_process_matches_a_plain_run(tiny_llama_dir, data, write_job, tmp_path, runs):
    """qlora with distributed.cpuOffload on one process: the 4-bit base, in a float storage, and its adapter are
    sharded over a one-rank mesh once LoRA is added (PEFT cannot wrap a 4-bit layer whose weight FSDP already holds),
    with the offload policy (unpinned without an accelerator). The losses and adapter are a plain run's."""
    offload_job = _job(write_job, tiny_llama_dir, data, "offload", "qlora", accumulation=2, offload=True)
    log = _run(offload_job, tmp_path / "offload", 1)
    plain_out, _ = runs(1, technique="qlora", accumulation=2, strategy="ddp")

    assert "FSDP2 with CPU offload over one process" in log, log[-3000:]
    offload, plain = _losses(tmp_path / "offload"), _losses(plain_out)
    assert len(offload) == len(plain) == STEPS
    assert max(abs(a - b) for a, b in zip(offload, plain, strict=True)) <= LOSS_TOLERANCE, (offload, plain)
    assert _close(_final(tmp_path / "offload", True), _final(plain_out, True)) <= WEIGHT_TOLERANCE


def test_qlora_killed_under_fsdp_resumes_on_one_process(tiny_llama_dir, data, write_job, tmp_path):
    """A qlora run on 2 processes killed after its step-4 checkpoint resumes on one, where the model is whole and its
    4-bit weights are bitsandbytes' own uint8 packing, not the float storage FSDP shards: the checkpoint holds what
    trains (the adapter and its optimizer state), never the frozen 4-bit base, which each attempt loads afresh."""
    job = _job(write_job, tiny_llama_dir, data, "job", "qlora", accumulation=2)
    reference = tmp_path / "reference"
    _run(job, reference, 2)
    names = {p.name for p in (reference / "checkpoints" / "step-8" / "dcp").iterdir()}
    assert names == {"__0_0.distcp", "__1_0.distcp", ".metadata"}, names

    out = tmp_path / "out"
    _kill_after_step_4(job, out, 2)
    log = _run(job, out, 1)
    assert "resuming from checkpoint step-4" in log
    resumed, uninterrupted = _losses(out), _losses(reference)
    assert len(resumed) == STEPS
    largest_loss_gap = max(abs(a - b) for a, b in zip(resumed, uninterrupted, strict=True))
    assert largest_loss_gap <= LOSS_TOLERANCE, (resumed, uninterrupted)
    assert _close(_final(out, True), _final(reference, True)) <= WEIGHT_TOLERANCE


# Loads one model under CPU offload on one process and says which trained parameters FSDP does not manage.
_UNMANAGED = """
import json, sys
from torch.distributed.tensor import DTensor
from kubetune.api.v1alpha1 import Spec
from kubetune_trainer import sharding
from kubetune_trainer.modeling import load_for_training

spec = Spec.model_validate(json.loads(sys.argv[1])).resolved()
model = load_for_training(spec, sys.argv[2], "causal-lm", strategy=sharding.choose(spec, world=1)).model
trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
print(json.dumps({"trained": len(trained), "unmanaged": [name for name, p in trained if not isinstance(p, DTensor)]}))
sharding.finish_one_process_group()
"""


@pytest.mark.parametrize("technique", ["lora", "adapter"])
def test_under_cpu_offload_what_a_technique_adds_is_sharded_with_the_base(technique, tiny_llama_dir):
    """Under CPU offload FSDP brings to the GPU only the parameters it manages. PEFT, and the bottleneck adapter, put
    what they add on their base layer's device, which offload makes the host: sharded as the model loads, the adapter
    would stay there beside FSDP's units (on a GPU: a device mismatch in the first forward). Every parameter that
    trains must be FSDP's (a DTensor), as the base's are."""
    from tests.fixtures import TECHNIQUE_SECTIONS

    spec = {
        "technique": technique,
        "model": {"uri": tiny_llama_dir.as_uri()},
        "datasets": [{"uri": "file:///d.jsonl", "format": "text"}],
        "hyperparameters": {"precision": "fp32"},
        "distributed": {"strategy": "fsdp", "cpuOffload": True},
        **TECHNIQUE_SECTIONS[technique],
    }
    done = subprocess.run(
        [sys.executable, "-c", _UNMANAGED, json.dumps(spec), str(tiny_llama_dir)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["trained"] > 0 and seen["unmanaged"] == [], seen
