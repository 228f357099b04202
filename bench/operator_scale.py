"""Operator at scale: N FineTuneJobs created at once against the local API emulator, the real operator
(`kubetune operator`, its own process) turning each into a Job.

    python bench/operator_scale.py                 # 1,000 FineTuneJobs in 10 namespaces
    python bench/operator_scale.py --jobs 50       # quick

Measured: time from the first FineTuneJob stored until every child Job is stored; per FineTuneJob the
latency from it being stored to its Job being stored (p50, p99, max), both taken from the emulator's
own clock (it stamps every change, so nothing polls); the operator process's peak RSS (VmHWM) and CPU
time; API calls the operator made per FineTuneJob (the emulator records every call with its user).
The users creating the FineTuneJobs (16 threads of the official client) run in a process of their own.
The emulator is tests/controller/emulator.py (kmock plus the API-server semantics kopf needs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


JOBS = ("batch", "jobs")


def stored_at(server) -> tuple[dict, dict, dict]:
    """From the emulator's history, per FineTuneJob: when it was stored, when its Job was, and when its
    first status (phase and Job name) was."""
    from kubetune.api.constants import GROUP, PLURAL
    from kubetune.controller import builders

    if server.oldest_rv:
        raise RuntimeError("the emulator trimmed its history; raise max_history")
    ftjs, jobs, statuses = {}, {}, {}
    for change in server.history:
        meta = change.obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if change.key == (GROUP, PLURAL):
            if change.kind == "ADDED":
                ftjs[key] = change.at
            elif (change.obj.get("status") or {}).get("jobName"):
                statuses.setdefault(key, change.at)
        elif change.key == JOBS and change.kind == "ADDED":
            jobs[(meta["namespace"], meta["labels"][builders.LABEL_FTJ])] = change.at
    return ftjs, jobs, statuses


def create_all(url: str, ca_file: str, targets: list[tuple[str, str]], clients: int) -> tuple[float, float]:
    """The users: `clients` threads creating the FineTuneJobs with the official client; returns seconds
    of wall time and of CPU time.

    Runs in a process of its own (`--create-in URL`), as users' kubectl or Argo CD would, so that its
    CPU and its threads do not slow the emulator down.
    """
    import kubernetes
    from emulator import ADMIN_TOKEN

    from kubetune.api.constants import GROUP, PLURAL, VERSION

    configuration = kubernetes.client.Configuration()
    configuration.host = url
    configuration.ssl_ca_cert = ca_file
    configuration.api_key = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    configuration.connection_pool_maxsize = clients + 4
    crd = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))

    def create(target: tuple[str, str]) -> None:
        ns, name = target
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": ns}, "spec": SPEC}
        crd.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(create, targets))
    return time.perf_counter() - start, time.process_time() - cpu


def job_targets(jobs: int, namespaces: int) -> list[tuple[str, str]]:
    return [(f"bench-{i % namespaces}", f"ftj-{i:05d}") for i in range(jobs)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

    emulator = start_emulator()
    emulator.call(lambda: setattr(emulator.server, "max_history", 20 * jobs + 20000))
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="kt-op-bench-") as tmp:
            core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN)))
            targets = job_targets(jobs, namespaces)
            for ns in sorted({ns for ns, _ in targets}):
                core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            proc = start_operator(emulator, Path(tmp))
            wait_ready(emulator, proc, 60)
            calls_before = len(emulator.calls("operator"))
            operator_cpu_before, emulator_cpu_before = cpu_seconds(proc.pid), cpu_seconds(os.getpid())

            users = subprocess.run(
                [sys.executable, __file__, "--create-in", emulator.url, "--ca", emulator.ca_file, "--jobs", str(jobs),
                 "--namespaces", str(namespaces), "--clients", str(clients)],
                capture_output=True, text=True, check=True, timeout=timeout)
            users_result = json.loads(users.stdout.strip().splitlines()[-1])
            deadline = time.monotonic() + timeout
            def jobs_stored() -> int:
                return emulator.call(lambda: len(emulator.server.store.get(JOBS, {})))

            while time.monotonic() < deadline and jobs_stored() < jobs:
                time.sleep(0.05)
            deadline = time.monotonic() + 60  # the status writes follow the Jobs
            while time.monotonic() < deadline and len(emulator.call(lambda: stored_at(emulator.server))[2]) < jobs:
                time.sleep(0.1)
            created, seen, reported = emulator.call(lambda: stored_at(emulator.server))
            missing = [t for t in targets if t not in seen]
            start = min(created.values())
            total = max(seen.values()) - start if seen else float("nan")
            latencies = [seen[t] - created[t] for t in targets if t in seen]
            status_latencies = [reported[t] - created[t] for t in targets if t in reported]
            operator_calls = emulator.calls("operator")[calls_before:]
            by_verb = Counter(f"{c.verb} {c.resource}" for c in operator_calls)
            rss = vm_hwm_mib(proc.pid)
            operator_cpu = cpu_seconds(proc.pid) - operator_cpu_before
            emulator_cpu = cpu_seconds(os.getpid()) - emulator_cpu_before
            return {
                "jobs": jobs, "namespaces": namespaces, "client_threads": clients,
                "created_all_s": users_result["seconds"], "all_jobs_exist_s": total if not missing else float("nan"),
                "missing": len(missing), "latency_p50_s": percentile(latencies, 50),
                "latency_p99_s": percentile(latencies, 99), "latency_max_s": max(latencies, default=float("nan")),
                "status_p50_s": percentile(status_latencies, 50), "status_p99_s": percentile(status_latencies, 99),
                "all_statuses_s": max(reported.values()) - start if len(reported) == jobs else float("nan"),
                "operator_peak_rss_mib": rss, "operator_cpu_s": operator_cpu, "emulator_cpu_s": emulator_cpu,
                "users_cpu_s": users_result["cpu_seconds"], "api_calls_per_job": len(operator_calls) / jobs,
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
        ("create -> first status (Pending, Job name) p50 (s)", f"{result['status_p50_s']:.3f}"),
        ("create -> first status p99 (s)", f"{result['status_p99_s']:.3f}"),
        ("every FineTuneJob has its first status (s)", f"{result['all_statuses_s']:.2f}"),
        ("operator peak RSS (MiB)", f"{result['operator_peak_rss_mib']:.0f}"),
        ("operator CPU (s)", f"{result['operator_cpu_s']:.2f}"),
        ("API emulator CPU (s)", f"{result['emulator_cpu_s']:.2f}"),
        ("users' CPU, creating the FineTuneJobs (s)", f"{result['users_cpu_s']:.2f}"),
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
    parser.add_argument("--create-in", metavar="URL", help=argparse.SUPPRESS)  # the users' process
    parser.add_argument("--ca", help=argparse.SUPPRESS)  # the emulator's CA, for the users' process
    args = parser.parse_args(argv)
    if args.create_in:
        targets = job_targets(args.jobs, args.namespaces)
        seconds, cpu_seconds = create_all(args.create_in, args.ca, targets, args.clients)
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds}))
        return 0
    result = run(args.jobs, args.namespaces, args.clients, args.timeout)
    print(f"\nkubetune operator (default settings, own process) against the API emulator, "
          f"{args.jobs} FineTuneJobs created by {args.clients} client threads\n")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if not result["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
