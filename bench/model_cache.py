"""The shared model cache at work: N FineTuneJobs of one model created at once in three namespaces, with the cache
and without it, in one run.

    python bench/model_cache.py                        # 20 jobs, a 64 MiB model
    python bench/model_cache.py --jobs 4 --model-mib 2 # quick (tests/bench runs this form)

Everything runs on this machine: the test API server (kubetune.testing.emulator) with the real operator
(`kubetune operator`'s kopf handlers, in this process), the Hub double (kubetune.testing) serving a Hugging Face
repository (config, tokenizer, one safetensors file of --model-mib), moto's S3 behind a counting proxy as the cache
store, and kubetune.testing.podrunner as the kubelet and the Job controller. A population Job runs the trainer's
`python -m kubetune_trainer.cache populate` as a process. A training pod is a process that runs the trainer's own
fetch code, `kubetune_trainer.sources.fetch_model`, with the environment its Job gives it (KUBETUNE_MODEL_CACHE_URI
and the store's read credentials with the cache; the Hub without), and reports when its model is ready: it is started
before the jobs are created, with the libraries the trainer has loaded by the time it fetches its model (transformers,
huggingface_hub, boto3), and waits for its pod's environment, as a container whose image is pulled and whose Python is
up would (twenty interpreters importing transformers at once on a small machine would measure the machine, not the
cache).

Reported per phase: the Hub's requests per file and bytes served, the cache store's bytes stored and read, and per
job the time from its creation to its pod starting (with the cache: once its entry is complete) and to its model being
ready. The targets: with the cache the Hub serves each file once
(without it, once per job), and the last job's model is ready no later than the first job's plus the store's read
time (the longest any pod took to read the entry).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

NAMESPACES = ("team-a", "team-b", "team-c")
OPERATOR_NAMESPACE = "kubetune-system"
WRITER_SECRET, READER_SECRET = "model-cache-writer", "model-cache"
KEYS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
REPO = "org/bench-model"
SPEC = {
    "technique": "lora",
    "objective": "instruction",
    "datasets": [{"uri": "s3://data/support/train.jsonl", "format": "messages"}],
    "resources": {"gpus": 1},
}

# A training pod's container, started ahead: imports the fetch code, then waits for its environment on stdin, fetches
# the model as the trainer does and prints when it was ready.
POD = r"""
import json, os, sys, time
from pathlib import Path
import boto3, huggingface_hub  # noqa: F401 - loaded, as in the trainer by the time it fetches its model
from transformers import CONFIG_MAPPING  # noqa: F401 - fetch_model checks the config against it
from kubetune_trainer.sources import fetch_model
print("up", flush=True)
order = json.loads(sys.stdin.readline())
os.environ.clear()
os.environ.update(order["env"])
started = time.time()
fetch_model(order["uri"], Path(order["dest"]), role="model", spec=None)
print(json.dumps({"started": started, "ready": time.time()}), flush=True)
"""


def repository(mib: int) -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "llama", "hidden_size": 64}',
        "model.safetensors": os.urandom(mib << 20),
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b"{}",
        "README.md": b"# bench\n",
    }


class Pods:
    """Training pods started ahead (one per job of a phase), handed out as the pod runner starts the Jobs' pods."""

    def __init__(self, count: int, env: dict[str, str]):
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", **env}
        self._free = [
            subprocess.Popen(
                [sys.executable, "-c", POD],
                env=base,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        for proc in self._free:
            if proc.stdout.readline().strip() != "up":
                raise RuntimeError(f"a pod did not start: {proc.stderr.read()}")
        self._lock = threading.Lock()
        self.results: dict[tuple[str, str], dict] = {}

    def run(self, job: dict, env: dict, folder: Path) -> int:
        """The pod runner's `training`: one waiting pod fetches this Job's model; its exit code."""
        meta = job["metadata"]
        with self._lock:
            proc = self._free.pop()
        spec = json.loads(env.pop("_SPEC"))
        order = {"env": env, "uri": spec["model"]["uri"], "dest": str(folder / "model")}
        out, err = proc.communicate(json.dumps(order) + "\n", timeout=600)
        if proc.returncode == 0:
            self.results[(meta["namespace"], meta["name"])] = json.loads(out.strip().splitlines()[-1])
        else:
            print(f"pod of {meta['namespace']}/{meta['name']} failed: {err.strip().splitlines()[-1:]}", file=sys.stderr)
        return proc.returncode

    def close(self) -> None:
        for proc in self._free:
            proc.kill()


class Bench:
    def __init__(self, jobs: int, model_mib: int, workdir: Path):
        import boto3
        import kubernetes
        import pytest
        from moto.server import ThreadedMotoServer

        from kubetune.controller.config import ModelCacheSettings, OperatorConfig
        from kubetune.testing.emulator import ADMIN_TOKEN
        from kubetune.testing.harness import BlockingKube, OperatorThread, start_emulator
        from kubetune.testing.hubdouble import CountingProxy, HubDouble
        from kubetune.testing.podrunner import PodRunner

        self.jobs, self.workdir = jobs, workdir
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto: a line per request otherwise
        self.monkeypatch = pytest.MonkeyPatch()
        self.hub = HubDouble()
        self.hub.online(self.monkeypatch, workdir / "operator-hf-home")  # the operator's own revision lookups
        self.files = repository(model_mib)
        self.commit = self.hub.add_repo(REPO, self.files)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.store = CountingProxy(f"http://{host}:{port}")
        self.s3 = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
        )
        self.bucket = "kubetune-cache"
        self.s3.create_bucket(Bucket=self.bucket)
        for key, value in KEYS.items():  # the operator's pod: the writer's keys, as the chart passes them in
            self.monkeypatch.setenv(f"KUBETUNE_CACHE_{key}", value)
        self.monkeypatch.setenv("KUBETUNE_CACHE_AWS_ENDPOINT_URL", self.store.url)

        self.emulator = start_emulator()
        self.kube = BlockingKube(self.emulator.client_configuration(ADMIN_TOKEN))
        self.core = kubernetes.client.CoreV1Api(
            kubernetes.client.ApiClient(self.emulator.client_configuration(ADMIN_TOKEN))
        )
        settings = ModelCacheSettings(
            root=f"s3://{self.bucket}/",
            namespace=OPERATOR_NAMESPACE,
            populate_secret=WRITER_SECRET,
            read_secret=READER_SECRET,
            endpoint=self.store.url,
            hub_endpoint=self.hub.url,
            poll_seconds=0.1,
        )
        config = OperatorConfig(
            trainer_image="registry.example/kubetune-trainer:bench",
            default_output_uri="s3://outputs/runs/",
            resync_seconds=5.0,
            metrics_port=0,
            model_cache=settings,
        )
        self.operator = OperatorThread(self.emulator, config).start()
        for namespace in (OPERATOR_NAMESPACE, *NAMESPACES):
            self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self._secret(OPERATOR_NAMESPACE, WRITER_SECRET)
        for namespace in NAMESPACES:
            self._secret(namespace, READER_SECRET)
        self.pods: Pods | None = None
        # Every pod reaches the Hub double as the cluster's Hub (a training pod without the cache fetches from it).
        self.node_env = {
            "HF_ENDPOINT": self.hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        self.runner = PodRunner(
            self.emulator, workdir / "pods", admin_token=ADMIN_TOKEN, extra_env=self.node_env, training=self._train
        )
        self.runner.__enter__()

    def _secret(self, namespace: str, name: str) -> None:
        """A Secret the platform made (the writer's in the operator's namespace, the reader's in each other)."""
        import base64

        data = {key: base64.b64encode(value.encode()).decode() for key, value in KEYS.items()}
        self.core.create_namespaced_secret(
            namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}
        )

    def _train(self, job: dict, env: dict, folder: Path) -> int:
        spec = json.loads(job["spec"]["template"]["metadata"]["annotations"]["kubetune.dev/spec"])["spec"]
        return self.pods.run(job, {**self.node_env, **env, "_SPEC": json.dumps(spec)}, folder)

    def close(self) -> None:
        self.runner.stop()
        if self.pods is not None:
            self.pods.close()
        self.operator.stop()
        self.kube.close()
        self.emulator.stop()
        self.store.close()
        self.moto.stop()
        self.hub.close()
        self.monkeypatch.undo()

    # ------------------------------------------------------------------ one phase

    def phase(self, cached: bool) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        from kubetune.api.constants import GROUP, VERSION

        self.hub.reset_counts()
        read_before = self.store.bytes_served(f"/{self.bucket}/")
        self.pods = Pods(self.jobs, self.node_env)
        tag = "cached" if cached else "direct"
        targets = [(NAMESPACES[i % len(NAMESPACES)], f"{tag}-{i}") for i in range(self.jobs)]
        created: dict[tuple[str, str], float] = {}

        def create(target: tuple[str, str]) -> None:
            namespace, name = target
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": namespace},
                "spec": SPEC | {"model": {"uri": f"hf://{REPO}", "cache": cached}},
            }
            created[target] = time.time()
            self.kube.create(body)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, targets))
        deadline = time.monotonic() + 600
        while len(self.pods.results) < self.jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.jobs - len(self.pods.results)} jobs' models never became ready")
            time.sleep(0.1)
        self.pods.close()
        ready = sorted(self.pods.results[t]["ready"] - created[t] for t in targets)
        first_pod = {}
        for namespace, name, at in self.runner.started:
            if (namespace, name) in created:
                first_pod[(namespace, name)] = min(at, first_pod.get((namespace, name), at))
        pods_started = sorted(first_pod[t] - created[t] for t in targets)
        reads = [r["ready"] - r["started"] for r in self.pods.results.values()]
        files = sorted(n for n in self.files if n != "README.md")
        stored = sum(
            o["Size"]
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            for o in page.get("Contents", [])
        )
        statuses = [self.kube.get("FineTuneJob", ns, name).get("status", {}).get("modelCache") for ns, name in targets]
        return {
            "phase": "with the cache" if cached else "without the cache",
            "jobs": self.jobs,
            "model_bytes": sum(len(self.files[name]) for name in files),
            "hub_requests_per_file": {name: self.hub.gets(name) for name in files},
            "hub_bytes": self.hub.bytes_served(),
            "store_bytes_stored": stored,
            "store_bytes_read": self.store.bytes_served(f"/{self.bucket}/") - read_before,
            "ready_first_s": ready[0],
            "ready_median_s": statistics.median(ready),
            "ready_last_s": ready[-1],
            "read_max_s": max(reads),
            "pod_started_first_s": pods_started[0],
            "pod_started_last_s": pods_started[-1],
            "hits": sum(1 for s in statuses if s and s.get("hit")),
            "ready_s": ready,
        }


def table(rows: list[dict], model_bytes: int) -> str:
    lines = [
        "| phase | jobs | Hub requests per file | Hub MiB | store MiB stored | store MiB read | pod started: "
        "first / last (s) | model ready: first / median / last (s) | longest read (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mib = 1 << 20
    for row in rows:
        per_file = sorted(set(row["hub_requests_per_file"].values()))
        lines.append(
            f"| {row['phase']} | {row['jobs']} | {'-'.join(map(str, per_file))} | "
            f"{row['hub_bytes'] / mib:.1f} | {row['store_bytes_stored'] / mib:.1f} | "
            f"{row['store_bytes_read'] / mib:.1f} | "
            f"{row['pod_started_first_s']:.2f} / {row['pod_started_last_s']:.2f} | "
            f"{row['ready_first_s']:.2f} / {row['ready_median_s']:.2f} / {row['ready_last_s']:.2f} | "
            f"{row['read_max_s']:.2f} |"
        )
    lines.append(f"\n(the model: {model_bytes / mib:.1f} MiB in {len(rows[0]['hub_requests_per_file'])} files)")
    return "\n".join(lines)


def verdict(cached: dict, direct: dict) -> list[str]:
    """The targets, each as a line: 'ok ...' or 'MISSED ...'."""
    lines = []
    once = set(cached["hub_requests_per_file"].values()) == {1}
    lines.append(
        f"{'ok' if once else 'MISSED'}: with the cache the Hub served each file once "
        f"({cached['hub_requests_per_file']})"
    )
    every = set(direct["hub_requests_per_file"].values()) == {direct["jobs"]}
    lines.append(f"{'ok' if every else 'MISSED'}: without it, once per job ({direct['hub_requests_per_file']})")
    bound = cached["ready_first_s"] + cached["read_max_s"]
    lines.append(
        f"{'ok' if cached['ready_last_s'] <= bound else 'MISSED'}: the last job's model was ready after "
        f"{cached['ready_last_s']:.2f} s, the first's after {cached['ready_first_s']:.2f} s plus the longest "
        f"read from the store {cached['read_max_s']:.2f} s = {bound:.2f} s"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--model-mib", type=int, default=64)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"model-cache-bench-{uuid.uuid4().hex[:6]}-") as tmp:
        bench = Bench(args.jobs, args.model_mib, Path(tmp))
        try:
            cached = bench.phase(cached=True)
            direct = bench.phase(cached=False)
        finally:
            bench.close()
    print(table([cached, direct], cached["model_bytes"]))
    for line in verdict(cached, direct):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [cached, direct], "verdict": verdict(cached, direct)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
