"""Operator at scale: N FineTuneJobs created at once against the local API emulator, the real operator
(`kubetune operator`, its own process) turning each into a Job.

    python bench/operator_scale.py                 # 1,000 FineTuneJobs in 10 namespaces
    python bench/operator_scale.py --jobs 50       # quick

Measured: time from the first create until every child Job exists; per FineTuneJob the latency from
its create call returning to its Job appearing in the API (p50, p99, max; the emulator's store is
polled every 10 ms); the operator process's peak RSS (VmHWM); API calls the operator made per
FineTuneJob (the emulator records every call with its user). The emulator is
tests/controller/emulator.py (kmock plus the API-server semantics kopf needs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "controller"))

SPEC = {
    "technique": "lora",
    "objective": "instruction",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "datasets": [{"uri": "s3://data/support/train.jsonl", "format": "messages"}],
    "resources": {"gpus": 1},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_operator(emulator, work: Path) -> subprocess.Popen:
    import yaml
    from emulator import OPERATOR_TOKEN

    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emulator.kubeconfig(OPERATOR_TOKEN)))
    env = os.environ | {
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_TRAINER_IMAGE": "registry.example/kubetune-trainer:bench",
        "KUBETUNE_DEFAULT_OUTPUT_URI": "s3://kubetune-out/runs/",
        "KUBETUNE_METRICS_PORT": "0",
    }
    log = (work / "operator.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "kubetune.cli", "operator", "--standalone"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_ready(emulator, proc: subprocess.Popen, timeout: float) -> None:
    """The operator is up once it watches FineTuneJobs (its first calls reach the emulator)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode} before it was ready")
        if any(c.resource.startswith("finetunejobs") and c.verb in ("watch", "list") for c in emulator.calls("operator")):
            return
        time.sleep(0.1)
    raise RuntimeError("the operator did not start watching FineTuneJobs in time")


def run(jobs: int, namespaces: int, clients: int, timeout: float) -> dict:
    import kubernetes
    from emulator import ADMIN_TOKEN
    from harness import start_emulator

    from kubetune.api.constants import GROUP, PLURAL, VERSION

    emulator = start_emulator()
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="kt-op-bench-") as tmp:
            admin = kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN))
            admin.configuration.connection_pool_maxsize = clients + 4
            core, crd = kubernetes.client.CoreV1Api(admin), kubernetes.client.CustomObjectsApi(admin)
            names = [f"bench-{i}" for i in range(namespaces)]
            for ns in names:
                core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            proc = start_operator(emulator, Path(tmp))
            wait_ready(emulator, proc, 60)
            calls_before = len(emulator.calls("operator"))

            targets = [(names[i % namespaces], f"ftj-{i:05d}") for i in range(jobs)]
            created: dict[tuple[str, str], float] = {}
            seen: dict[tuple[str, str], float] = {}
            done = threading.Event()

            def poll() -> None:
                def job_keys():
                    return list(emulator.server.store.get(("batch", "jobs"), {}).keys())

                while not done.is_set():
                    now = time.perf_counter()
                    for key in emulator.call(job_keys):
                        seen.setdefault(key, now)
                    if len(seen) >= jobs:
                        return
                    time.sleep(0.01)

            def create(target: tuple[str, str]) -> None:
                ns, name = target
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob",
                        "metadata": {"name": name, "namespace": ns}, "spec": SPEC}
                crd.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
                created[target] = time.perf_counter()

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(create, targets))
            created_all = time.perf_counter() - start
            poller.join(timeout)
            done.set()
            missing = [t for t in targets if t not in seen]
            total = max(seen.values()) - start if seen else float("nan")
            latencies = [max(0.0, seen[t] - created[t]) for t in targets if t in seen]
            operator_calls = emulator.calls("operator")[calls_before:]
            by_verb = Counter(f"{c.verb} {c.resource}" for c in operator_calls)
            rss = vm_hwm_mib(proc.pid)
            return {
                "jobs": jobs, "namespaces": namespaces, "client_threads": clients,
                "created_all_s": created_all, "all_jobs_exist_s": total if not missing else float("nan"),
                "missing": len(missing), "latency_p50_s": percentile(latencies, 50),
                "latency_p99_s": percentile(latencies, 99), "latency_max_s": max(latencies, default=float("nan")),
                "operator_peak_rss_mib": rss, "api_calls_per_job": len(operator_calls) / jobs,
                "job_creates": by_verb.get("create jobs", 0),
                "calls_by_verb": dict(by_verb.most_common(8)),
            }
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        emulator.stop()


def table(result: dict) -> str:
    rows = [
        ("FineTuneJobs", f"{result['jobs']:,} in {result['namespaces']} namespaces"),
        ("all creates returned (s)", f"{result['created_all_s']:.2f}"),
        ("every child Job exists (s)", f"{result['all_jobs_exist_s']:.2f}" + (f" ({result['missing']} missing)" if result["missing"] else "")),
        ("create -> Job p50 (s)", f"{result['latency_p50_s']:.3f}"),
        ("create -> Job p99 (s)", f"{result['latency_p99_s']:.3f}"),
        ("create -> Job max (s)", f"{result['latency_max_s']:.3f}"),
        ("operator peak RSS (MiB)", f"{result['operator_peak_rss_mib']:.0f}"),
        ("operator API calls per job", f"{result['api_calls_per_job']:.1f}"),
    ]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines.append("\noperator calls by verb: " + ", ".join(f"{k}: {v}" for k, v in result["calls_by_verb"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16, help="threads creating FineTuneJobs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every Job")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = run(args.jobs, args.namespaces, args.clients, args.timeout)
    print(f"\nkubetune operator (default settings, own process) against the API emulator, "
          f"{args.jobs} FineTuneJobs created by {args.clients} client threads\n")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if not result["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
