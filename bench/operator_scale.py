"""Operator at scale: N FineTuneJobs created at once against the local API emulator, the real operator
(`kubetune operator`, its own process) turning each into a Job; then the same operator restarted over those jobs
in a mix of phases, and idle over a history of finished ones.

    python bench/operator_scale.py                 # 1,000 FineTuneJobs in 10 namespaces, all three phases
    python bench/operator_scale.py --jobs 50       # quick
    python bench/operator_scale.py --no-restart --no-history    # the burst alone

The burst. Measured: time from the first FineTuneJob stored until every child Job is stored; per FineTuneJob the
latency from it being stored to its Job being stored (p50, p99, max), both taken from the emulator's
own clock (it stamps every change, so nothing polls); the operator process's peak RSS (VmHWM) and CPU
time; API calls the operator made per FineTuneJob (the emulator records every call with its user); when the last
JobCreated Event was stored (the operator writes Events after the statuses, so the CPU and the calls are read once every
Event is written); and in the JSON, per second of the burst, how many FineTuneJobs, Jobs and first statuses were stored
and the median create -> Job latency (`timeline`: whether the operator trails the users by a constant lag or by a
growing queue). The users creating the FineTuneJobs (16 threads of the official client) run in a process of their own.
The emulator is kubetune.testing.emulator (kmock plus the API-server semantics kopf needs).

The restart (--no-restart: skipped). A process of its own plays the Job controller and the kubelet with the admin
client, as they write: a quarter of the Jobs gets the Complete condition, a quarter Failed (BackoffLimitExceeded,
one failure more than the Job's backoffLimit), a quarter a pod owned by the Job with the Job template's labels,
Running (and the Job's active count; then the trainer's first status report, its memory plan and progress, which the
operator tells as a Planned Event), a quarter is left as it is (Pending, no pod). Once the operator has written
every job's phase and made no call for --settle-quiet seconds, it is stopped with SIGTERM (as a rollout does) and a
fresh process started with the same settings. Measured on the new process: from its first API call to the last
call or busy moment of its settling burst (settled: no call, and under a fifth of a core of CPU, for --settle-quiet
seconds: a pass that needs no call shows only as CPU), its calls in that time by verb, the
mutating ones among them (create, update, patch, delete, refused ones included; target 0: nothing changed while it
was down), how many statuses and Events differ afterwards, its CPU time from process start to settled
(/proc/PID/stat, Python's imports included) and its peak RSS. The emulator stamps each call as it receives it.

The history (--no-history: skipped). Every job not finished yet is finished (pods Succeeded, Jobs Complete) and
the operator writes Succeeded; then the operator is restarted once more with KUBETUNE_RESYNC_SECONDS set short
(--idle-resync, 10 s), so that several resync passes fall into the window, and, once its start-up pass over the
history has settled, watched idle for --idle-seconds (120 s): its CPU as a share of one core (/proc/PID/stat over
the window), its API calls per minute by verb (the emulator's records), its RSS at the end (VmRSS) and peak
(VmHWM). No job changes in the window: whatever the operator does then is the cost of the history.

Below 1,000 jobs (quick runs and the tests' small form) the phases' default waits are shorter: --settle-quiet 1 s,
--idle-seconds 3 s, --idle-resync 1 s. The idle operator's start-up counts as settled after half a resync period
without a call when that is shorter than --settle-quiet (the resync's own calls come every period).
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

SPEC = {
    "technique": "lora",
    "objective": "instruction",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "datasets": [{"uri": "s3://data/support/train.jsonl", "format": "messages"}],
    "resources": {"gpus": 1},
}


def job_spec(pod_service_account: str = "") -> dict:
    """The users' spec; with `pod_service_account`, their pods run as that account of theirs (a cloud identity), and
    the reporter's grant goes to it: no per-job ServiceAccount or token Secret once the pods exist."""
    return SPEC | {"pod": {"serviceAccountName": pod_service_account}} if pod_service_account else SPEC


def operator_settings(pod_service_account: str = "") -> dict[str, str]:
    """KUBETUNE_* settings of every operator the bench starts: a policy that lets the pods run as that account."""
    if not pod_service_account:
        return {}
    return {"KUBETUNE_POLICY": json.dumps({"allowedServiceAccounts": [pod_service_account]})}


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
EVENTS = ("", "events")


def is_first_status(change) -> bool:
    """Whether a FineTuneJob's change carries the operator's status (it names the job's Job): the first such change of
    each job is its first status."""
    from kubetune.api.constants import GROUP, PLURAL

    return change.key == (GROUP, PLURAL) and bool((change.obj.get("status") or {}).get("jobName"))


def stored_at(server) -> tuple[dict, dict, dict, float]:
    """From the emulator's history, per FineTuneJob: when it was stored, when its Job was, and when its
    first status (phase and Job name) was; and when the last Event was."""
    from kubetune.api.constants import GROUP, PLURAL
    from kubetune.controller import builders

    if server.oldest_rv:
        raise RuntimeError("the emulator trimmed its history; raise max_history")
    ftjs, jobs, statuses = {}, {}, {}
    last_event = float("nan")
    for change in server.history:
        if change.key == EVENTS:
            last_event = change.at
            continue
        meta = change.obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if change.key == (GROUP, PLURAL):
            if change.kind == "ADDED":
                ftjs[key] = change.at
            elif is_first_status(change):
                statuses.setdefault(key, change.at)
        elif change.key == JOBS and change.kind == "ADDED":
            jobs[(meta["namespace"], meta["labels"][builders.LABEL_FTJ])] = change.at
    return ftjs, jobs, statuses, last_event


def timeline(created: dict, seen: dict, reported: dict, seconds: float = 1.0) -> list[dict]:
    """Per `seconds` of the burst (from the first FineTuneJob stored): how many FineTuneJobs, Jobs and first statuses
    were stored in it, and the median create -> Job latency of the FineTuneJobs created in it."""
    start = min(created.values())
    bins: dict[int, dict] = {}

    def at(moment: float) -> dict:
        return bins.setdefault(int((moment - start) // seconds), {"ftjs": 0, "jobs": 0, "statuses": 0, "lags": []})

    for key, moment in created.items():
        at(moment)["ftjs"] += 1
        if key in seen:
            at(moment)["lags"].append(seen[key] - moment)
    for moment in seen.values():
        at(moment)["jobs"] += 1
    for moment in reported.values():
        at(moment)["statuses"] += 1
    return [
        {"second": i * seconds, **{k: v for k, v in b.items() if k != "lags"}, "lag_p50_s": percentile(b["lags"], 50)}
        for i, b in sorted(bins.items())
    ]


class FirstStatuses:
    """How many FineTuneJobs have their first status (phase and Job name), counted from the emulator's history as it
    grows: each poll reads the changes since the last one. (Reading the whole history each time, as stored_at does,
    took a seventh of the emulator's time while the bench waited for the last statuses, and slowed what it measured.)"""

    def __init__(self) -> None:
        self.read = 0
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, server) -> int:
        history = server.history
        for change in history[self.read :]:
            if is_first_status(change):
                self.seen.add((change.obj["metadata"].get("namespace"), change.obj["metadata"]["name"]))
        self.read = len(history)
        return len(self.seen)


def create_all(
    url: str, ca_file: str, targets: list[tuple[str, str]], clients: int, pod_service_account: str = ""
) -> tuple[float, float]:
    """The users: `clients` threads creating the FineTuneJobs with the official client; returns seconds
    of wall time and of CPU time.

    Runs in a process of its own (`--create-in URL`), as users' kubectl or Argo CD would, so that its
    CPU and its threads do not slow the emulator down.
    """
    import kubernetes

    from kubetune.api.constants import GROUP, PLURAL, VERSION
    from kubetune.testing.emulator import ADMIN_TOKEN

    configuration = kubernetes.client.Configuration()
    configuration.host = url
    configuration.ssl_ca_cert = ca_file
    configuration.api_key = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    configuration.connection_pool_maxsize = clients + 4
    crd = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
    spec = job_spec(pod_service_account)

    def create(target: tuple[str, str]) -> None:
        ns, name = target
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
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


def start_operator(
    emulator, work: Path, settings: dict[str, str] | None = None, log_name: str = "operator.log"
) -> subprocess.Popen:
    """`kubetune operator --standalone` with the bench's settings (and `settings`, KUBETUNE_* variables)."""
    import yaml

    from kubetune.testing.emulator import OPERATOR_TOKEN

    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emulator.kubeconfig(OPERATOR_TOKEN)))
    env = (
        os.environ
        | {
            "KUBECONFIG": str(kubeconfig),
            "KUBETUNE_TRAINER_IMAGE": "registry.example/kubetune-trainer:bench",
            "KUBETUNE_DEFAULT_OUTPUT_URI": "s3://kubetune-out/runs/",
            "KUBETUNE_METRICS_PORT": "0",
        }
        | (settings or {})
    )
    log = (work / log_name).open("w")
    # No liveness endpoint: its port 8080 would keep two benches from running on one machine.
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune.cli", "operator", "--liveness", "", "--standalone"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_ready(emulator, proc: subprocess.Popen, timeout: float, since: int = 0) -> None:
    """The operator is up once it watches FineTuneJobs (its first calls reach the emulator); `since`: the index in
    the emulator's calls where this process's calls start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode} before it was ready")
        if any(
            c.resource.startswith("finetunejobs") and c.verb in ("watch", "list")
            for c in calls_between(emulator, since)
        ):
            return
        time.sleep(0.1)
    raise RuntimeError("the operator did not start watching FineTuneJobs in time")


# --------------------------------------------------------------------------------------------- restart and history

MUTATING = ("create", "update", "patch", "delete", "deletecollection")
# Who the hand-written states go to, by a FineTuneJob's index: the phase the operator then reports.
RESTART_STATES = ("complete", "failed", "running", "untouched")
RESTART_PHASES = {"complete": "Succeeded", "failed": "Failed", "running": "Running", "untouched": "Pending"}


class TimedCalls(list):
    """The emulator's record of calls, each stamped (perf_counter) as the emulator receives it: `at[i]` for `[i]`."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def append(self, call) -> None:
        self.at.append(time.perf_counter())
        super().append(call)


def calls_between(emulator, start: int, end: int | None = None, user: str = "operator") -> list:
    return emulator.call(lambda: [c for c in emulator.server.calls[start:end] if c.user == user])


def last_call(emulator, since: int, user: str = "operator") -> tuple[int, float] | None:
    """Index and time of `user`'s last call at or after `since` (None: none yet)."""

    def find():
        calls = emulator.server.calls
        for index in range(len(calls) - 1, since - 1, -1):
            if calls[index].user == user:
                return index, calls.at[index]
        return None

    return emulator.call(find)


def first_call(emulator, since: int, user: str = "operator") -> tuple[int, float] | None:
    def find():
        calls = emulator.server.calls
        for index in range(since, len(calls)):
            if calls[index].user == user:
                return index, calls.at[index]
        return None

    return emulator.call(find)


# Busy: more CPU than this share of a core over a sampling interval (0.1 s). An idle operator uses under 1 %.
BUSY_SHARE = 0.2


def wait_settled(emulator, proc: subprocess.Popen, since: int, quiet: float, timeout: float) -> tuple[int, float]:
    """Until the operator has made no call for `quiet` seconds (after one at least) and not been busy either (passes
    that need no call, as a restarted operator's over jobs it reads from its start-up listings, show only as CPU):
    the index of its last call then, and the time of its last call or busy interval, the later."""
    deadline = time.monotonic() + timeout
    cpu, sampled = cpu_seconds(proc.pid), time.perf_counter()
    busy_at = sampled
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}")
        now_cpu, now = cpu_seconds(proc.pid), time.perf_counter()
        if now_cpu - cpu > BUSY_SHARE * (now - sampled):
            busy_at = now
        cpu, sampled = now_cpu, now
        last = last_call(emulator, since)
        if last is not None and now - max(last[1], busy_at) >= quiet:
            return last[0], max(last[1], busy_at)
        time.sleep(0.1)
    raise RuntimeError(f"the operator did not settle (no call and no busy moment for {quiet} s) within {timeout} s")


def phases(emulator) -> Counter:
    from kubetune.api.constants import GROUP, PLURAL

    return emulator.call(
        lambda: Counter(
            (o.get("status") or {}).get("phase") for o in emulator.server.store.get((GROUP, PLURAL), {}).values()
        )
    )


def wait_phases(emulator, wanted: Counter, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if phases(emulator) == wanted:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the FineTuneJobs did not reach {dict(wanted)} in {timeout} s (now {dict(phases(emulator))})")


def stored_statuses(emulator) -> tuple[dict, set]:
    """Every FineTuneJob's status (a write stores a new object, never changes a stored one in place, so these keep)
    and every Event's name and resourceVersion."""
    from kubetune.api.constants import GROUP, PLURAL

    def snapshot():
        store = emulator.server.store
        return (
            {key: obj.get("status") for key, obj in store.get((GROUP, PLURAL), {}).items()},
            {(key, obj["metadata"].get("resourceVersion")) for key, obj in store.get(("", "events"), {}).items()},
        )

    return emulator.call(snapshot)


def stop_operator(proc: subprocess.Popen) -> None:
    """SIGTERM, as a rollout stops the old pod."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def by_verb(calls: list) -> Counter:
    return Counter(f"{c.verb} {c.resource}" for c in calls)


def write_states(url: str, ca_file: str, targets: list[tuple[str, str]], clients: int, step: str) -> dict:
    """The Job controller and the kubelet, as they write (the admin client; a process of its own, like the users).

    step "restart": by each FineTuneJob's index, its Job gets the Complete condition, or Failed for its backoffLimit,
    or a Running pod it owns (its active count, and the trainer's first reports), or nothing (RESTART_STATES).
    step "finish": every Job not finished yet completes (its running pods Succeeded first). Returns the number of
    writes and of Jobs written."""
    import datetime as dt

    import kubernetes

    from kubetune.api.constants import GROUP, PLURAL, VERSION
    from kubetune.controller import builders
    from kubetune.testing.emulator import ADMIN_TOKEN
    from kubetune.testing.harness import owned_by_job

    configuration = kubernetes.client.Configuration()
    configuration.host = url
    configuration.ssl_ca_cert = ca_file
    configuration.api_key = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    configuration.connection_pool_maxsize = clients + 4
    client = kubernetes.client.ApiClient(configuration)
    batch, core = kubernetes.client.BatchV1Api(client), kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    index = {target: i for i, target in enumerate(targets)}
    raw = {"_preload_content": False}  # answers as bytes: no client-side models to build

    def listed(call, namespace: str) -> list[dict]:
        return json.loads(call(namespace, **raw).data)["items"]

    def finished(job: dict) -> bool:
        return any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in (job.get("status") or {}).get("conditions") or []
        )

    def complete(job: dict, pods: list[dict]) -> int:
        meta = job["metadata"]
        exited = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}
        for pod in pods:
            core.patch_namespaced_pod_status(
                pod["metadata"]["name"],
                meta["namespace"],
                {
                    "status": {
                        "phase": "Succeeded",
                        "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0, "state": exited}],
                    }
                },
                **raw,
            )
        batch.patch_namespaced_job_status(
            meta["name"],
            meta["namespace"],
            {
                "status": {
                    "active": 0,
                    "ready": 0,
                    "succeeded": 1,
                    "startTime": (job.get("status") or {}).get("startTime") or now,
                    "completionTime": now,
                    "conditions": [
                        {
                            "type": "SuccessCriteriaMet",
                            "status": "True",
                            "reason": "CompletionsReached",
                            "lastTransitionTime": now,
                        },
                        {
                            "type": "Complete",
                            "status": "True",
                            "reason": "CompletionsReached",
                            "lastTransitionTime": now,
                        },
                    ],
                }
            },
            **raw,
        )
        return len(pods) + 1

    def fail(job: dict) -> int:
        meta = job["metadata"]
        words = {
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
            "lastTransitionTime": now,
        }
        batch.patch_namespaced_job_status(
            meta["name"],
            meta["namespace"],
            {
                "status": {
                    "active": 0,
                    "ready": 0,
                    "failed": (job["spec"].get("backoffLimit") or 0) + 1,
                    "startTime": now,
                    "conditions": [{"type": "FailureTarget", **words}, {"type": "Failed", **words}],
                }
            },
            **raw,
        )
        return 1

    def run_pod(job: dict) -> int:
        """ClusterSim._create_pod's pod (kubetune.testing.harness), one node; then its trainer's first reports (the
        memory plan and progress, as kubetune_trainer.status_reporter writes them)."""
        meta = job["metadata"]
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "labels": template["metadata"]["labels"]
                | {"batch.kubernetes.io/job-name": meta["name"], "batch.kubernetes.io/controller-uid": meta["uid"]},
                "ownerReferences": owned_by_job(meta["name"], meta["uid"]),
            },
            "spec": template["spec"],
        }
        created = json.loads(core.create_namespaced_pod(meta["namespace"], pod, **raw).data)
        core.patch_namespaced_pod_status(
            created["metadata"]["name"],
            meta["namespace"],
            {
                "status": {
                    "phase": "Running",
                    "containerStatuses": [
                        {"name": "trainer", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": now}}}
                    ],
                }
            },
            **raw,
        )
        batch.patch_namespaced_job_status(
            meta["name"], meta["namespace"], {"status": {"active": 1, "ready": 1, "startTime": now}}, **raw
        )
        ftj = job["metadata"]["labels"][builders.LABEL_FTJ]
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            ftj,
            {
                "status": {
                    "plan": {"strategy": "ddp", "worldSize": 1, "perGpuGiB": 14.2, "gpuMemoryGiB": 80.0, "fits": True},
                    "progress": {"step": 10, "totalSteps": 1000, "epoch": 0.01, "percent": 1, "etaSeconds": 5400},
                }
            },
            **raw,
        )
        return 4

    work = []
    for namespace in sorted({ns for ns, _ in targets}):
        pods: dict[str, list[dict]] = {}
        for pod in listed(core.list_namespaced_pod, namespace):
            if pod["status"].get("phase") in ("Pending", "Running"):
                for ref in pod["metadata"].get("ownerReferences") or []:
                    pods.setdefault(ref["uid"], []).append(pod)
        for job in listed(batch.list_namespaced_job, namespace):
            key = (namespace, (job["metadata"].get("labels") or {}).get(builders.LABEL_FTJ))
            if key not in index or finished(job):
                continue
            if step == "finish":
                work.append((complete, job, pods.get(job["metadata"]["uid"], [])))
                continue
            state = RESTART_STATES[index[key] % len(RESTART_STATES)]
            if state == "complete":
                work.append((complete, job, []))
            elif state == "failed":
                work.append((fail, job))
            elif state == "running":
                work.append((run_pod, job))
    with ThreadPoolExecutor(clients) as pool:
        return {"writes": sum(pool.map(lambda item: item[0](*item[1:]), work)), "jobs": len(work)}


def hand_write(
    emulator, targets: list[tuple[str, str]], jobs: int, namespaces: int, clients: int, step: str, timeout: float
) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--states-in",
            emulator.url,
            "--ca",
            emulator.ca_file,
            "--step",
            step,
            "--jobs",
            str(jobs),
            "--namespaces",
            str(namespaces),
            "--clients",
            str(clients),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"writing the Jobs' states ({step}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def restart_phase(
    emulator, operators: list[subprocess.Popen], work: Path, targets: list[tuple[str, str]], args: argparse.Namespace
) -> dict:
    """Jobs into a mix of phases, the operator (`operators[-1]`) settled over them, then stopped and a fresh one
    started (appended to `operators`): what the fresh one does until it settles."""
    proc = operators[-1]
    wanted = Counter(RESTART_PHASES[RESTART_STATES[i % len(RESTART_STATES)]] for i in range(len(targets)))
    since = emulator.call(lambda: len(emulator.server.calls))
    written = hand_write(emulator, targets, args.jobs, args.namespaces, args.clients, "restart", args.timeout)
    wait_phases(emulator, wanted, args.timeout)
    wait_settled(emulator, proc, since, args.settle_quiet, args.timeout)
    reacting = len(calls_between(emulator, since))
    stop_operator(proc)
    statuses, events = stored_statuses(emulator)

    since = emulator.call(lambda: len(emulator.server.calls))
    started = time.perf_counter()
    fresh = start_operator(emulator, work, operator_settings(args.pod_service_account), "operator-restarted.log")
    operators.append(fresh)
    wait_ready(emulator, fresh, 60, since)
    last_index, last_at = wait_settled(emulator, fresh, since, args.settle_quiet, args.timeout)
    cpu = cpu_seconds(fresh.pid)
    first_index, first_at = first_call(emulator, since)
    calls = calls_between(emulator, first_index, last_index + 1)
    writes = [c for c in calls if c.verb in MUTATING]
    after_statuses, after_events = stored_statuses(emulator)
    return {
        "phases": dict(wanted),
        "hand_writes": written["writes"],
        "calls_before_restart": reacting,
        "settle_quiet_s": args.settle_quiet,
        "settle_s": last_at - first_at,
        "from_process_start_s": last_at - started,
        "calls": len(calls),
        "calls_by_verb": dict(by_verb(calls).most_common()),
        "mutating_calls": len(writes),
        "mutating_by_verb": dict(by_verb(writes).most_common()),
        "statuses_changed": sum(1 for key, status in statuses.items() if after_statuses.get(key) != status),
        "events_written": len(after_events - events),  # new ones, and old ones written again
        "cpu_s": cpu,
        "peak_rss_mib": vm_hwm_mib(fresh.pid),
    }


def history_phase(
    emulator, operators: list[subprocess.Popen], work: Path, targets: list[tuple[str, str]], args: argparse.Namespace
) -> dict:
    """Every job finished; the operator (`operators[-1]`) restarted with a short resync (appended to `operators`) and
    watched idle."""
    proc = operators[-1]
    since = emulator.call(lambda: len(emulator.server.calls))
    hand_write(emulator, targets, args.jobs, args.namespaces, args.clients, "finish", args.timeout)
    finished = phases(emulator)
    wanted = Counter({"Failed": finished.get("Failed", 0)})
    wanted["Succeeded"] = len(targets) - wanted["Failed"]
    wait_phases(emulator, +wanted, args.timeout)
    wait_settled(emulator, proc, since, args.settle_quiet, args.timeout)
    stop_operator(proc)

    since = emulator.call(lambda: len(emulator.server.calls))
    started = time.perf_counter()
    settings = operator_settings(args.pod_service_account) | {"KUBETUNE_RESYNC_SECONDS": str(args.idle_resync)}
    idle = start_operator(emulator, work, settings, "operator-idle.log")
    operators.append(idle)
    wait_ready(emulator, idle, 60, since)
    # Quiet for less than a resync period, or the resync's own calls would keep it from ever settling.
    quiet = min(args.settle_quiet, args.idle_resync / 2)
    last_index, last_at = wait_settled(emulator, idle, since, quiet, args.timeout)
    first_index, first_at = first_call(emulator, since)
    startup = calls_between(emulator, first_index, last_index + 1)

    window_start = emulator.call(lambda: len(emulator.server.calls))
    cpu_before, wall_before = cpu_seconds(idle.pid), time.perf_counter()
    time.sleep(args.idle_seconds)
    cpu_after, wall_after = cpu_seconds(idle.pid), time.perf_counter()
    if idle.poll() is not None:
        raise RuntimeError(f"the operator exited with {idle.returncode} while idle")
    window = calls_between(emulator, window_start)
    minutes = (wall_after - wall_before) / 60
    return {
        "phases": {k: v for k, v in wanted.items() if v},
        "resync_s": args.idle_resync,
        "settle_quiet_s": quiet,
        "startup_settle_s": last_at - first_at,
        "startup_from_process_start_s": last_at - started,
        "startup_calls": len(startup),
        "startup_mutating_calls": sum(1 for c in startup if c.verb in MUTATING),
        "startup_calls_by_verb": dict(by_verb(startup).most_common()),
        "window_s": wall_after - wall_before,
        "cpu_percent": 100 * (cpu_after - cpu_before) / (wall_after - wall_before),
        "calls_per_min": len(window) / minutes,
        "calls_per_min_by_verb": {k: v / minutes for k, v in by_verb(window).most_common()},
        "mutating_calls": sum(1 for c in window if c.verb in MUTATING),
        "rss_end_mib": vm_rss_mib(idle.pid),
        "peak_rss_mib": vm_hwm_mib(idle.pid),
    }


def tune_emulator_gc() -> None:
    """The emulator's process (this one) tuned as a server with a large heap: what exists after start-up is left out
    of every collection (gc.freeze), and a young collection runs every 100,000 allocations, not every 700 (the older
    generations' thresholds, counted in young collections, stay as they are). The emulator keeps every object it
    stores (10,000 FineTuneJobs, their Jobs and Events, and its watch history: millions of dicts), and the default
    thresholds had it traverse them all again each time the heap grew by a quarter: about a fifth of its CPU in a
    10,000-job burst. Nothing of the operator's process changes."""
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 10, 10)


def run(
    jobs: int,
    namespaces: int,
    clients: int,
    timeout: float,
    phases_args: argparse.Namespace | None = None,
    emulator_gc: str = "tuned",
    pod_service_account: str = "",
) -> dict:
    """The burst; then, as `phases_args` asks (its restart and history flags), the restart and history phases.
    `emulator_gc`: "tuned" (tune_emulator_gc) or "default" (Python's own settings). `pod_service_account`: the
    users' pods run as that account of theirs (job_spec)."""
    import kubernetes

    from kubetune.testing.emulator import ADMIN_TOKEN
    from kubetune.testing.harness import start_emulator

    emulator = start_emulator()
    if emulator_gc == "tuned":
        tune_emulator_gc()
    # The restart and history phases write about as much again as the burst.
    emulator.call(lambda: setattr(emulator.server, "max_history", 40 * jobs + 20000))
    emulator.call(lambda: setattr(emulator.server, "calls", TimedCalls()))
    proc = None
    operators: list[subprocess.Popen] = []  # the burst's operator, then each one started after it
    try:
        with tempfile.TemporaryDirectory(prefix="kt-op-bench-") as tmp:
            core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN)))
            targets = job_targets(jobs, namespaces)
            for ns in sorted({ns for ns, _ in targets}):
                core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                if pod_service_account:  # the users' own account: the pods of the restart phase run as it
                    core.create_namespaced_service_account(ns, {"metadata": {"name": pod_service_account}})
            proc = start_operator(emulator, Path(tmp), operator_settings(pod_service_account))
            wait_ready(emulator, proc, 60)
            calls_before = len(emulator.calls("operator"))
            operator_cpu_before, emulator_cpu_before = cpu_seconds(proc.pid), cpu_seconds(os.getpid())

            users = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--create-in",
                    emulator.url,
                    "--ca",
                    emulator.ca_file,
                    "--jobs",
                    str(jobs),
                    "--namespaces",
                    str(namespaces),
                    "--clients",
                    str(clients),
                    "--pod-service-account",
                    pod_service_account,
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=timeout,
            )
            users_result = json.loads(users.stdout.strip().splitlines()[-1])
            deadline = time.monotonic() + timeout

            def jobs_stored() -> int:
                return emulator.call(lambda: len(emulator.server.store.get(JOBS, {})))

            while time.monotonic() < deadline and jobs_stored() < jobs:
                time.sleep(0.05)
            deadline = time.monotonic() + 60  # the status writes follow the Jobs
            first_statuses = FirstStatuses()
            while time.monotonic() < deadline and emulator.call(lambda: first_statuses(emulator.server)) < jobs:
                time.sleep(0.1)

            def events_stored() -> int:
                return emulator.call(lambda: len(emulator.server.store.get(EVENTS, {})))

            # Each job's JobCreated Event comes after its status (the operator writes Events last): the burst's CPU
            # and calls are read once they are all written.
            while time.monotonic() < deadline and events_stored() < jobs:
                time.sleep(0.1)
            created, seen, reported, last_event = emulator.call(lambda: stored_at(emulator.server))
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
            result = {
                "jobs": jobs,
                "namespaces": namespaces,
                "client_threads": clients,
                "pod_service_account": pod_service_account,
                "created_all_s": users_result["seconds"],
                "all_jobs_exist_s": total if not missing else float("nan"),
                "missing": len(missing),
                "latency_p50_s": percentile(latencies, 50),
                "latency_p99_s": percentile(latencies, 99),
                "latency_max_s": max(latencies, default=float("nan")),
                "status_p50_s": percentile(status_latencies, 50),
                "status_p99_s": percentile(status_latencies, 99),
                "all_statuses_s": max(reported.values()) - start if len(reported) == jobs else float("nan"),
                "all_events_s": last_event - start,
                "operator_peak_rss_mib": rss,
                "operator_cpu_s": operator_cpu,
                "emulator_cpu_s": emulator_cpu,
                "emulator_gc": emulator_gc,
                "users_cpu_s": users_result["cpu_seconds"],
                "api_calls_per_job": len(operator_calls) / jobs,
                "job_creates": by_verb.get("create jobs", 0),
                "calls_by_verb": dict(by_verb.most_common(8)),
                # Does the operator fall behind as the burst goes on (a queue) or trail it by a constant lag?
                "timeline": timeline(created, seen, reported),
            }
            operators.append(proc)
            if phases_args is not None and phases_args.restart:
                result["restart"] = restart_phase(emulator, operators, Path(tmp), targets, phases_args)
            if phases_args is not None and phases_args.history:
                result["history"] = history_phase(emulator, operators, Path(tmp), targets, phases_args)
            return result
    finally:
        for operator in operators + [proc]:
            if operator is not None and operator.poll() is None:
                operator.terminate()
                try:
                    operator.wait(20)
                except subprocess.TimeoutExpired:
                    operator.kill()
        emulator.stop()


def table(result: dict) -> str:
    rows = [
        ("FineTuneJobs", f"{result['jobs']:,} in {result['namespaces']} namespaces"),
        ("all creates returned (s)", f"{result['created_all_s']:.2f}"),
        (
            "every child Job exists (s)",
            f"{result['all_jobs_exist_s']:.2f}" + (f" ({result['missing']} missing)" if result["missing"] else ""),
        ),
        ("create -> Job p50 (s)", f"{result['latency_p50_s']:.3f}"),
        ("create -> Job p99 (s)", f"{result['latency_p99_s']:.3f}"),
        ("create -> Job max (s)", f"{result['latency_max_s']:.3f}"),
        ("create -> first status (Pending, Job name) p50 (s)", f"{result['status_p50_s']:.3f}"),
        ("create -> first status p99 (s)", f"{result['status_p99_s']:.3f}"),
        ("every FineTuneJob has its first status (s)", f"{result['all_statuses_s']:.2f}"),
        ("every JobCreated Event written (s)", f"{result['all_events_s']:.2f}"),
        ("operator peak RSS (MiB)", f"{result['operator_peak_rss_mib']:.0f}"),
        ("operator CPU (s)", f"{result['operator_cpu_s']:.2f}"),
        (f"API emulator CPU, its GC {result['emulator_gc']} (s)", f"{result['emulator_cpu_s']:.2f}"),
        ("users' CPU, creating the FineTuneJobs (s)", f"{result['users_cpu_s']:.2f}"),
        ("operator API calls per job", f"{result['api_calls_per_job']:.1f}"),
    ]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines.append("\noperator calls by verb: " + ", ".join(f"{k}: {v}" for k, v in result["calls_by_verb"].items()))
    return "\n".join(lines)


def verbs(counts: dict, unit: str = "") -> str:
    return (
        ", ".join(f"{k}: {v:.1f}{unit}" if isinstance(v, float) else f"{k}: {v}{unit}" for k, v in counts.items())
        or "none"
    )


def restart_table(restart: dict) -> str:
    mix = ", ".join(f"{v:,} {k}" for k, v in restart["phases"].items())
    rows = [
        ("FineTuneJobs when it stopped", mix),
        ("settle: from its first API call to the last of its burst (s)", f"{restart['settle_s']:.2f}"),
        ("settled, from process start (s)", f"{restart['from_process_start_s']:.2f}"),
        ("API calls until settled", f"{restart['calls']:,}"),
        ("mutating calls (target 0)", f"{restart['mutating_calls']:,}"),
        ("statuses changed / Events written", f"{restart['statuses_changed']:,} / {restart['events_written']:,}"),
        ("CPU, process start to settled (s)", f"{restart['cpu_s']:.2f}"),
        ("peak RSS (MiB)", f"{restart['peak_rss_mib']:.0f}"),
    ]
    lines = ["| restart metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines.append(
        f"\nsettled = no API call and under {BUSY_SHARE:.0%} of a core for {restart['settle_quiet_s']:g} s; calls by "
        "verb: " + verbs(restart["calls_by_verb"])
    )
    lines.append("mutating: " + verbs(restart["mutating_by_verb"]))
    return "\n".join(lines)


def history_table(history: dict) -> str:
    mix = ", ".join(f"{v:,} {k}" for k, v in history["phases"].items())
    rows = [
        ("finished FineTuneJobs", mix),
        ("its start-up over them: settle from first call (s)", f"{history['startup_settle_s']:.2f}"),
        ("start-up: API calls / mutating", f"{history['startup_calls']:,} / {history['startup_mutating_calls']:,}"),
        ("idle window (s)", f"{history['window_s']:.0f}"),
        ("idle CPU (% of one core)", f"{history['cpu_percent']:.2f}"),
        ("idle API calls per minute", f"{history['calls_per_min']:.1f}"),
        ("idle mutating calls", f"{history['mutating_calls']:,}"),
        ("RSS at the end / peak (MiB)", f"{history['rss_end_mib']:.0f} / {history['peak_rss_mib']:.0f}"),
    ]
    lines = ["| idle metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines.append(
        f"\nKUBETUNE_RESYNC_SECONDS={history['resync_s']} for this operator (default 60), so about "
        f"{history['window_s'] / history['resync_s']:.0f} resync passes fall in the window; calls per minute "
        "by verb: " + verbs(history["calls_per_min_by_verb"])
    )
    lines.append(
        f"start-up settled = no API call and under {BUSY_SHARE:.0%} of a core for {history['settle_quiet_s']:g} s; "
        "its calls by verb: " + verbs(history["startup_calls_by_verb"])
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16, help="threads creating FineTuneJobs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every Job")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--emulator-gc",
        choices=("tuned", "default"),
        default="tuned",
        help="the API emulator's garbage collector: tuned for a large heap (default), or Python's own settings",
    )
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="skip the restart phase (jobs in a mix of phases, the operator restarted over them)",
    )
    parser.add_argument(
        "--no-history",
        dest="history",
        action="store_false",
        help="skip the history phase (every job finished, the operator watched idle)",
    )
    parser.add_argument(
        "--settle-quiet",
        type=float,
        default=None,
        metavar="S",
        help="settled = no operator API call for S seconds (default 5; 1 below 1,000 jobs)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        metavar="S",
        help="the idle window (default 120; 3 below 1,000 jobs)",
    )
    parser.add_argument(
        "--idle-resync",
        type=int,
        default=None,
        metavar="S",
        help="KUBETUNE_RESYNC_SECONDS of the idle operator (default 10; 1 below 1,000 jobs)",
    )
    parser.add_argument(
        "--pod-service-account",
        default="",
        metavar="NAME",
        help="the users' pods run as this ServiceAccount of theirs (spec.pod.serviceAccountName, which the operator's "
        "policy allows): no per-job ServiceAccount or token Secret when their pods run",
    )
    parser.add_argument("--create-in", metavar="URL", help=argparse.SUPPRESS)  # the users' process
    parser.add_argument("--states-in", metavar="URL", help=argparse.SUPPRESS)  # the Job controller's and kubelet's
    parser.add_argument("--step", choices=("restart", "finish"), help=argparse.SUPPRESS)  # what they write
    parser.add_argument("--ca", help=argparse.SUPPRESS)  # the emulator's CA, for those processes
    args = parser.parse_args(argv)
    if args.create_in:
        targets = job_targets(args.jobs, args.namespaces)
        seconds, cpu_seconds = create_all(args.create_in, args.ca, targets, args.clients, args.pod_service_account)
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds}))
        return 0
    if args.states_in:
        targets = job_targets(args.jobs, args.namespaces)
        print(json.dumps(write_states(args.states_in, args.ca, targets, args.clients, args.step)))
        return 0
    full = args.jobs >= 1000
    args.settle_quiet = args.settle_quiet if args.settle_quiet is not None else (5.0 if full else 1.0)
    args.idle_seconds = args.idle_seconds if args.idle_seconds is not None else (120.0 if full else 3.0)
    args.idle_resync = args.idle_resync if args.idle_resync is not None else (10 if full else 1)
    if args.idle_resync < 1:
        parser.error("--idle-resync must be at least 1 (KUBETUNE_RESYNC_SECONDS is whole seconds)")
    if args.pod_service_account:
        from kubetune.api.k8s_validation import is_dns1123_subdomain

        if problems := is_dns1123_subdomain(args.pod_service_account):
            parser.error(
                f"--pod-service-account: {args.pod_service_account!r} is not a ServiceAccount name: {problems[0]}"
            )
    result = run(
        args.jobs, args.namespaces, args.clients, args.timeout, args, args.emulator_gc, args.pod_service_account
    )
    account = args.pod_service_account
    running_as = f", their pods running as ServiceAccount {account}" if account else ""
    print(
        f"\nkubetune operator (default settings, own process) against the API emulator, "
        f"{args.jobs} FineTuneJobs created by {args.clients} client threads{running_as}\n"
    )
    print(table(result))
    if "restart" in result:
        print(
            "\nRestart: the jobs put into a mix of phases by hand (as the Job controller and kubelet write), the "
            "operator settled, stopped (SIGTERM) and started again; the fresh process:\n"
        )
        print(restart_table(result["restart"]))
    if "history" in result:
        print("\nHistory: every job finished, the operator restarted and left idle:\n")
        print(history_table(result["history"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if not result["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
