"""The kubelet and the Job controller for the model cache's Jobs, with real processes on this machine.

`PodRunner` watches the test API server for Jobs to run: population Jobs (modelcache.LABEL_POPULATION) always, and
training Jobs when it is given a `training` callable. For each it does what the Job controller and the kubelet would:
it creates the Job's pod, resolves the container's environment as the kubelet does (values, secretKeyRef read from
the API server: kubelet.py), runs the container's command as a process (`python` is this interpreter; the
pod's emptyDir and termination log are folders and files under `workdir`), reports the container's end in the pod's
status (exit code; the termination log, else the last lines of its output on failure: FallbackToLogsOnError), and
then, as the Job controller, applies the Job's podFailurePolicy and backoffLimit: a FailJob exit code or failures
past the limit fail the Job (conditions FailureTarget and Failed), other failures start a new pod, success completes
it (SuccessCriteriaMet and Complete). A Secret the container names that does not exist keeps the pod waiting with
the kubelet's CreateContainerConfigError, as in a cluster, until it exists.

Only what those Jobs use is implemented; a pod runs with its environment and nothing of this process's (no AWS_*
variables leak in: a population pod reaches the store only through what its spec gives it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes

from kubetune.api.constants import TERMINATION_LOG
from kubetune.controller import builders, modelcache
from kubetune.controller.status import now_rfc3339
from kubetune.testing import kubelet
from kubetune.testing.harness import BlockingKube, owned_by_job, wait_for

SCRATCH = "/scratch"
# What a container may print before the kubelet's FallbackToLogsOnError keeps only its tail.
LOG_TAIL_LINES = 80
MESSAGE_LIMIT = 4096  # the kubelet cuts a termination message to 4 KiB


def _job_failed_by_policy(job: dict, exit_code: int, container: str) -> bool:
    """podFailurePolicy's FailJob on this exit code (kubernetes pkg/controller/job/pod_failure_policy.go: the first
    rule that matches wins)."""
    for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if codes is None or codes.get("containerName") not in (None, container):
            continue
        if (exit_code in codes["values"]) == (codes["operator"] == "In"):
            return rule["action"] == "FailJob"
    return False


class PodRunner:
    """Runs the Jobs it is meant for until stopped. `training(job, env, workdir) -> exit code` runs a training Job's
    pod (its environment resolved); `extra_env` is added to every pod (what the node gives, e.g. HF_HUB_DISABLE_XET)."""

    def __init__(
        self,
        emulator,
        workdir: Path,
        *,
        admin_token: str,
        extra_env: dict[str, str] | None = None,
        training: Callable[[dict, dict, Path], int] | None = None,
        backoff_seconds: float = 0.0,
    ):
        self.kube = BlockingKube(emulator.client_configuration(admin_token))
        # Secrets, as the kubelet reads them (the operator's own client has no business with them).
        self._core = kubernetes.client.CoreV1Api(
            kubernetes.client.ApiClient(emulator.client_configuration(admin_token))
        )
        self.workdir = workdir
        self.extra_env = dict(extra_env or {})
        self.training = training
        self.backoff_seconds = backoff_seconds
        self.processes: dict[str, subprocess.Popen] = {}  # pod name -> its process, while it runs
        self.started: list[tuple[str, str, float]] = []  # (namespace, Job name, time.time() its pod started)
        self._handled: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cluster = kubelet.Cluster(
            read=self._read, token_for=lambda ns, sa: "", ca_pem="", api_host="127.0.0.1", api_port=443
        )
        self._watcher = threading.Thread(target=self._watch, name="pod-runner", daemon=True)

    def __enter__(self) -> PodRunner:
        self._watcher.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            running = list(self.processes.values())
        for proc in running:
            proc.kill()
        self._watcher.join(10)
        for thread in self._threads:
            thread.join(30)
        self.kube.close()

    # ------------------------------------------------------------------ the kubelet's reads

    def _read(self, kind: str, namespace: str, name: str) -> dict | None:
        if kind != "Secret":
            return self.kube.get(kind, namespace, name)
        try:
            return {"data": self._core.read_namespaced_secret(name, namespace).data or {}}
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def kill(self, pod_prefix: str, sig: int = signal.SIGKILL) -> str:
        """Kill the running container of the pod whose name starts with `pod_prefix` (a node lost, an OOM kill);
        returns the pod's name."""
        with self._lock:
            name, proc = next((n, p) for n, p in self.processes.items() if n.startswith(pod_prefix))
        proc.send_signal(sig)
        return name

    def running(self, pod_prefix: str) -> bool:
        with self._lock:
            return any(n.startswith(pod_prefix) for n in self.processes)

    # ------------------------------------------------------------------ the Job controller

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self.kube.list("Job", None)
            except Exception:  # the API server is going away with the test
                time.sleep(0.1)
                continue
            for job in jobs:
                meta = job["metadata"]
                labels = meta.get("labels") or {}
                population = modelcache.LABEL_POPULATION in labels
                training = self.training is not None and builders.LABEL_FTJ in labels
                if meta["uid"] in self._handled or not (population or training) or job["spec"].get("suspend"):
                    continue
                conditions = (job.get("status") or {}).get("conditions") or []
                if any(c.get("type") in ("Complete", "Failed") for c in conditions):
                    continue
                self._handled.add(meta["uid"])
                thread = threading.Thread(
                    target=self._run_job, args=(job, population), daemon=True, name=f"job-{meta['name']}"
                )
                self._threads.append(thread)
                thread.start()
            time.sleep(0.05)

    def _run_job(self, job: dict, population: bool) -> None:
        namespace = job["metadata"]["namespace"]
        failed = 0
        index = 0
        while not self._stop.is_set():
            pod = self._create_pod(job, index)
            index += 1
            code, message = self._run_pod(job, pod, population)
            if code is None:
                return  # stopped
            if code == 0:
                self._job_status(
                    job,
                    {
                        "active": 0,
                        "succeeded": 1,
                        "completionTime": now_rfc3339(),
                        "conditions": [
                            {
                                "type": "SuccessCriteriaMet",
                                "status": "True",
                                "reason": "CompletionsReached",
                                "lastTransitionTime": now_rfc3339(),
                            },
                            {
                                "type": "Complete",
                                "status": "True",
                                "reason": "CompletionsReached",
                                "lastTransitionTime": now_rfc3339(),
                            },
                        ],
                    },
                )
                return
            container = job["spec"]["template"]["spec"]["containers"][0]["name"]
            failed += 1
            if _job_failed_by_policy(job, code, container):
                self._fail_job(
                    job,
                    failed,
                    "PodFailurePolicy",
                    f"Container {container} for pod {namespace}/{pod['metadata']['name']} failed with "
                    f"exit code {code} matching FailJob rule at index 0",
                )
                return
            if failed > job["spec"].get("backoffLimit", 6):
                self._fail_job(job, failed, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
            self._job_status(job, {"active": 0, "failed": failed})
            time.sleep(self.backoff_seconds)

    def _fail_job(self, job: dict, failed: int, reason: str, message: str) -> None:
        now = now_rfc3339()
        conditions = [
            {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}
            for kind in ("FailureTarget", "Failed")
        ]
        self._job_status(job, {"active": 0, "failed": failed, "conditions": conditions})

    def _job_status(self, job: dict, patch: dict) -> None:
        self.kube.patch(
            "Job", job["metadata"]["namespace"], job["metadata"]["name"], {"status": patch}, subresource="status"
        )

    # ------------------------------------------------------------------ the kubelet

    def _create_pod(self, job: dict, index: int) -> dict:
        meta = job["metadata"]
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{meta['uid'][:5]}-{index}",  # a Job made again has pods of its own
                "namespace": meta["namespace"],
                "labels": (template["metadata"].get("labels") or {}) | {"batch.kubernetes.io/job-name": meta["name"]},
                "annotations": template["metadata"].get("annotations") or {},  # the trainer's spec among them
                "ownerReferences": owned_by_job(meta["name"], meta["uid"]),
            },
            "spec": template["spec"],
        }
        pod = self.kube.create(pod)
        self._job_status(job, {"active": 1, "startTime": (job.get("status") or {}).get("startTime") or now_rfc3339()})
        return pod

    def _pod_status(self, pod: dict, patch: dict) -> None:
        self.kube.patch(
            "Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": patch}, subresource="status"
        )

    def _environment(self, pod: dict, container: dict) -> dict[str, str] | None:
        """The container's environment, or None while a Secret it names is missing (the pod waits, as it would)."""
        while not self._stop.is_set():
            try:
                return kubelet._env(container, kubelet.pod_from(pod), self._cluster)
            except LookupError as err:
                # The kubelet's words (kubelet_pods.go makeEnvironmentVariables): the secret manager's NotFound.
                secret = str(err).split(" has no key")[0].split("/", 1)[-1]
                words = (
                    f'secret "{secret}" not found'
                    if self._read("Secret", pod["metadata"]["namespace"], secret) is None
                    else str(err)
                )
                self._pod_status(
                    pod,
                    {
                        "phase": "Pending",
                        "containerStatuses": [
                            {
                                "name": container["name"],
                                "ready": False,
                                "restartCount": 0,
                                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": words}},
                            }
                        ],
                    },
                )
                time.sleep(0.2)
        return None

    def _run_pod(self, job: dict, pod: dict, population: bool) -> tuple[int | None, str]:
        container = pod["spec"]["containers"][0]
        env = self._environment(pod, container)
        if env is None:
            return None, ""
        folder = self.workdir / pod["metadata"]["namespace"] / pod["metadata"]["name"]
        scratch = folder / "scratch"
        scratch.mkdir(parents=True)
        termination_log = folder / "termination-log"
        termination_log.write_text("")
        env = {
            key: value.replace(SCRATCH, str(scratch), 1) if value.startswith(SCRATCH) else value
            for key, value in env.items()
        }
        env = {key: str(termination_log) if value == TERMINATION_LOG else value for key, value in env.items()}
        self._pod_status(
            pod,
            {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now_rfc3339()}},
                    }
                ],
            },
        )
        self.started.append((pod["metadata"]["namespace"], job["metadata"]["name"], time.time()))
        if population:
            code, output = self._process(pod, container, env, folder)
        else:
            code, output = self.training(job, env, folder), ""
        if code is None:
            return None, ""
        message = termination_log.read_text().strip()
        if not message and code != 0:
            message = "\n".join(output.strip().splitlines()[-LOG_TAIL_LINES:])
        message = message[-MESSAGE_LIMIT:]
        self._pod_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "message": message,
                                "finishedAt": now_rfc3339(),
                            }
                        },
                    }
                ],
            },
        )
        return code, message

    def _process(self, pod: dict, container: dict, env: dict[str, str], folder: Path) -> tuple[int | None, str]:
        command = [sys.executable if part == "python" else part for part in container["command"]]
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", **self.extra_env, **env}
        proc = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=folder)
        name = pod["metadata"]["name"]
        with self._lock:
            self.processes[name] = proc
        try:
            output, _ = proc.communicate()
        finally:
            with self._lock:
                self.processes.pop(name, None)
        if self._stop.is_set():
            return None, ""
        code = proc.returncode
        # A container killed by a signal: the kubelet reports 128 + the signal (137 for SIGKILL).
        return (128 - code if code < 0 else code), output.decode(errors="replace")


def wait_for_job(runner: PodRunner, namespace: str, name: str, timeout: float = 60.0) -> dict:
    """The Job once it has finished (Complete or Failed)."""

    def finished():
        job = runner.kube.get("Job", namespace, name)
        conditions = (job or {}).get("status", {}).get("conditions") or []
        return job if any(c.get("type") in ("Complete", "Failed") for c in conditions) else None

    return wait_for(finished, timeout, f"Job {namespace}/{name} to finish")
