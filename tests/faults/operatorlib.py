"""The operator as its own process (`python -m kubetune.cli operator`), pointed at the API emulator
through a kubeconfig, so a test can SIGKILL it for real; and the checks every fault test ends with:
exactly one Job per FineTuneJob and a status that matches that Job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kubetune.api.constants import GROUP, PLURAL, VERSION

TRAINER_IMAGE = "registry.example/kubetune-trainer:faults"
OUTPUT_URI = "s3://kubetune-out/runs/"


class OperatorProcess:
    def __init__(
        self, emulator, workdir: Path, token: str = "operator", args: tuple[str, ...] = ("--standalone",), **env: str
    ):
        self.emulator = emulator
        self.workdir = workdir
        self.args = args
        self.kubeconfig = workdir / f"kubeconfig-{token}"
        self.kubeconfig.write_text(yaml.safe_dump(emulator.kubeconfig(token)))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBERNETES_"))}
        self.env.update(
            KUBECONFIG=str(self.kubeconfig),
            KUBETUNE_TRAINER_IMAGE=TRAINER_IMAGE,
            KUBETUNE_DEFAULT_OUTPUT_URI=OUTPUT_URI,
            KUBETUNE_RESYNC_SECONDS="1",
            KUBETUNE_METRICS_PORT="0",
            HOSTNAME="kubetune-operator-test",
            **env,
        )
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[Path] = []

    def start(self) -> OperatorProcess:
        log = self.workdir / f"operator-{self.kubeconfig.name.removeprefix('kubeconfig-')}-{self.starts}.log"
        self.logs.append(log)
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli", "operator", "--liveness", "", *self.args],
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM (kopf's graceful stop), then SIGKILL if it takes longer than a pod's grace period would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def finetunejobs(emulator, namespace: str) -> list[dict]:
    return emulator.objects(GROUP, PLURAL, namespace)


def ftj_manifest(name: str, namespace: str, **spec) -> dict:
    base = {
        "technique": "lora",
        "objective": "instruction",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "datasets": [{"uri": "s3://data/support/train.jsonl", "format": "messages"}],
        "resources": {"gpus": 1},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base | spec,
    }


def expected_phase(job: dict, pods: list[dict]) -> str:
    """The phase a FineTuneJob must show for this Job, judged from the Job and its pods directly."""
    conds = {c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conds:
        return "Succeeded"
    if "Failed" in conds:
        return "Failed"
    if any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        return "Running"
    return "Pending"


def mismatches(emulator, namespace: str) -> list[str]:
    """Every way the namespace breaks 'exactly one Job per FineTuneJob, and a status that matches it'."""
    problems = []
    ftjs = {f["metadata"]["name"]: f for f in finetunejobs(emulator, namespace)}
    jobs = emulator.objects("batch", "jobs", namespace)
    pods = emulator.objects("", "pods", namespace)
    owned: dict[str, list[dict]] = {}
    for job in jobs:
        owners = [r.get("uid") for r in job["metadata"].get("ownerReferences") or []]
        parent = next((f for f in ftjs.values() if f["metadata"]["uid"] in owners), None)
        if parent is None:
            problems.append(f"Job {job['metadata']['name']} has no FineTuneJob owner")
            continue
        owned.setdefault(parent["metadata"]["name"], []).append(job)
    for name, ftj in ftjs.items():
        mine = owned.get(name, [])
        status = ftj.get("status") or {}
        if len(mine) != 1:
            problems.append(f"{name}: {len(mine)} Jobs")
            continue
        job = mine[0]
        job_pods = [
            p
            for p in pods
            if any(r.get("uid") == job["metadata"]["uid"] for r in p["metadata"].get("ownerReferences") or [])
        ]
        want = expected_phase(job, job_pods)
        if status.get("phase") != want:
            problems.append(f"{name}: phase {status.get('phase')!r}, its Job says {want!r}")
        if status.get("jobName") != job["metadata"]["name"]:
            problems.append(f"{name}: jobName {status.get('jobName')!r}")
        if status.get("observedGeneration") != ftj["metadata"].get("generation"):
            problems.append(
                f"{name}: observedGeneration {status.get('observedGeneration')} != {ftj['metadata'].get('generation')}"
            )
        # Attempts: every pod still there, plus failed ones that are gone (the Job's counter keeps them).
        gone = (job.get("status") or {}).get("failed") or 0
        if job_pods and not len(job_pods) <= (status.get("attempts") or 0) <= len(job_pods) + gone:
            problems.append(f"{name}: attempts {status.get('attempts')} for {len(job_pods)} pods ({gone} failed)")
    return problems


def wait_until_consistent(emulator, namespace: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    problems = mismatches(emulator, namespace)
    while problems and time.monotonic() < deadline:
        time.sleep(0.5)
        problems = mismatches(emulator, namespace)
    return problems
