"""Helpers for driving the trainer as the pod would: `python -m kubetune_trainer FILE --output URI` in
a subprocess (so a SIGKILL is a real one), and reading back what the output store holds."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from tests.fixtures import tiny_training_job

STEPS = 12
INTERVAL = 3  # spec.output.checkpointEverySteps
_STEP_LINE = re.compile(r"step (\d+)/(\d+)")
_RESUME_LINE = re.compile(r"resuming from checkpoint step-(\d+)")


def manifest(model_dir: Path, data: Path, name: str = "faulty", **spec_extra) -> dict:
    datasets = [{"name": "corpus", "uri": f"file://{data}", "format": "text"}]
    return tiny_training_job(model_dir, datasets, name=name, steps=STEPS, checkpoint_every=INTERVAL, **spec_extra)


def write_manifest(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Attempt:
    proc: subprocess.Popen
    log: Path
    termination_log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def last_step(self) -> int:
        steps = [int(m.group(1)) for m in _STEP_LINE.finditer(self.text())]
        return max(steps) if steps else 0

    def resumed_from(self) -> int | None:
        m = _RESUME_LINE.search(self.text())
        return int(m.group(1)) if m else None

    def wait_for_step(self, step: int, timeout: float = 120) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            seen = self.last_step()
            if seen >= step:
                return seen
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the trainer exited ({self.proc.returncode}) before step {step}:\n{self.text()[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(f"step {step} not reached in {timeout} s:\n{self.text()[-3000:]}")

    def kill(self, sig=signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def start(job: Path, output: str, workdir: Path, env: dict, tag: str, *args: str) -> Attempt:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{tag}.log"
    termination = workdir / f"{tag}.termination-log"
    scratch = workdir / f"{tag}-tmp"
    scratch.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubetune_trainer",
            str(job),
            "--output",
            output,
            "--termination-log",
            str(termination),
            *args,
        ],
        env={**env, "TMPDIR": str(scratch)},  # a fresh pod's scratch volume; nothing carries over
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return Attempt(proc, log, termination)


# --------------------------------------------------------------------------- reading the store


def keys(client, bucket: str, prefix: str = "") -> dict[str, int]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def read(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def checkpoint_steps(client, bucket: str, prefix: str) -> tuple[list[int], list[int]]:
    """(complete steps, step folders without a marker) under <prefix>checkpoints/."""
    found: dict[int, bool] = {}
    for key in keys(client, bucket, prefix + "checkpoints/"):
        m = re.search(r"checkpoints/step-(\d+)/(.+)$", key)
        if m:
            step = int(m.group(1))
            found[step] = found.get(step, False) or m.group(2) == "_COMPLETE"
    return sorted(s for s, c in found.items() if c), sorted(s for s, c in found.items() if not c)


def broken_markers(client, bucket: str, prefix: str) -> list[str]:
    """Every complete checkpoint's marker lists files that exist with the listed sizes: the problems."""
    stored = keys(client, bucket, prefix + "checkpoints/")
    problems = []
    for key in stored:
        if key.endswith("/_COMPLETE"):
            folder = key[: -len("_COMPLETE")]
            marker = json.loads(read(client, bucket, key))
            for name, size in marker["files"].items():
                if stored.get(folder + name) != size:
                    problems.append(f"{folder}{name}: listed {size} bytes, stored {stored.get(folder + name)}")
    return problems


def metric_steps(client, bucket: str, prefix: str) -> list[int]:
    text = read(client, bucket, prefix + "metrics.jsonl").decode()
    return [r["step"] for r in (json.loads(line) for line in text.splitlines() if line.strip()) if "loss" in r]


def weights(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
