"""Test harness: the API emulator, the real operator (kopf) in a thread, and the parts of a cluster
the emulator does not have — the Job controller and the kubelet — played by `ClusterSim` through the API,
the way those controllers write Job and pod status (Kueue: kueuesim.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import kopf
import kubernetes

from emulator import ADMIN_TOKEN, OPERATOR_TOKEN, Emulator
from kubetune.api.crd import crd
from kubetune.controller import config as operator_config
from kubetune.controller import handlers
from kubetune.controller.kube import Kube
from kubetune.controller.status import now_rfc3339


class BlockingKube:
    """The operator's own `Kube`, called from test code: it runs on an event loop in a thread of its own."""

    def __init__(self, configuration: kubernetes.client.Configuration):
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="blocking-kube", daemon=True).start()
        self._kube = self._run(self._open(configuration))

    @staticmethod
    async def _open(configuration: kubernetes.client.Configuration) -> Kube:
        return Kube(configuration)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def __getattr__(self, verb: str) -> Callable[..., Any]:
        call = getattr(self._kube, verb)
        return lambda *args, **kwargs: self._run(call(*args, **kwargs))

    def close(self) -> None:
        self._run(self._kube.close())
        self._loop.call_soon_threadsafe(self._loop.stop)


def start_emulator() -> Emulator:
    emulator = Emulator().start()
    emulator.register_crd(crd())
    return emulator


class OperatorThread:
    """`kubetune operator` in-process: kopf.operator() on its own event loop in a thread."""

    def __init__(self, emulator: Emulator, settings: operator_config.OperatorConfig):
        self.emulator = emulator
        self.settings = settings
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> OperatorThread:
        operator_config.set_current(self.settings)
        handlers.runtime.client_configuration = self.emulator.client_configuration(OPERATOR_TOKEN)
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()

        def run() -> None:
            try:
                asyncio.run(kopf.operator(clusterwide=True, standalone=True, stop_flag=self.stop_flag,
                                          ready_flag=self.ready_flag))
            except BaseException as err:  # surfaced by the tests
                self.error = err

        self.thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
        self.thread.start()
        if not self.ready_flag.wait(30):
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        wait_for(lambda: handlers.runtime.reconciler is not None, 10, "the operator's reconciler")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(30)
            assert not self.thread.is_alive(), "the operator did not stop"

    @property
    def reconciler(self):
        return handlers.runtime.reconciler

    def reconcile(self, namespace: str, name: str, body: dict | None = None) -> str | None:
        """One reconcile pass, on the operator's loop (where the reconciler lives)."""
        return asyncio.run_coroutine_threadsafe(self.reconciler.reconcile(namespace, name, body=body),
                                                self.reconciler.loop).result(30)

    def reconfigure(self, **changes: Any) -> None:
        """Change settings of the running operator (e.g. the namespace cap) for one test."""
        self.reconciler.config = replace(self.reconciler.config, **changes)


class OperatorLog(logging.Handler):
    """What the operator logs (logger kubetune.operator) while attached: each line's job, reason and words, as
    `kubectl logs deploy/kubetune-operator` would show them."""

    LOGGER = "kubetune.operator"

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def attach(self) -> OperatorLog:
        logger = logging.getLogger(self.LOGGER)
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def detach(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._level)

    def lines(self, namespace: str, name: str | None = None) -> list[tuple[str, str, str]]:
        """(level, reason, message) of each line about a job of `namespace` (and `name`), in order."""
        out = []
        for record in list(self.records):
            ref = getattr(record, "k8s_ref", None) or {}
            if ref.get("namespace") == namespace and (name is None or ref.get("name") == name):
                out.append((record.levelname, getattr(record, "reason", ""), record.getMessage()))
        return out

    def reasons(self, namespace: str, name: str | None = None) -> list[str]:
        return [reason for _, reason, _ in self.lines(namespace, name)]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except kubernetes.client.ApiException as err:
            last = err
            if err.status != 404:
                raise
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class ClusterSim:
    """The Job controller and the kubelet, reduced to what the operator observes."""

    def __init__(self, emulator: Emulator):
        self.kube = BlockingKube(emulator.client_configuration(ADMIN_TOKEN))

    def close(self) -> None:
        self.kube.close()

    def job(self, namespace: str, name: str) -> dict:
        job = self.kube.get("Job", namespace, name)
        assert job is not None, f"no Job {namespace}/{name}"
        return job

    def pods(self, namespace: str, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        return [p for p in self.kube.list("Pod", namespace)
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]

    def _job_status(self, job: dict, patch: dict) -> dict:
        return self.kube.patch("Job", job["metadata"]["namespace"], job["metadata"]["name"], {"status": patch},
                               subresource="status")

    def _pod_status(self, pod: dict, patch: dict) -> dict:
        return self.kube.patch("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": patch},
                               subresource="status")

    def start(self, namespace: str, name: str, running: bool = True) -> list[dict]:
        """Create the Job's pods (one per node) and, as the kubelet, mark them Running."""
        job = self.job(namespace, name)
        assert not job["spec"].get("suspend"), "a suspended Job gets no pods"
        count = job["spec"].get("parallelism") or 1
        template = job["spec"]["template"]
        pods = []
        for index in range(count):
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "generateName": f"{name}-{index}-" if job["spec"].get("completionMode") == "Indexed" else f"{name}-",
                    "namespace": namespace,
                    "labels": template["metadata"]["labels"] | {
                        "batch.kubernetes.io/job-name": name, "batch.kubernetes.io/controller-uid": job["metadata"]["uid"]},
                    "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                         "uid": job["metadata"]["uid"], "controller": True,
                                         "blockOwnerDeletion": True}],
                },
                "spec": template["spec"],
            }
            pod = self.kube.create(pod)
            phase = "Running" if running else "Pending"
            state = {"running": {"startedAt": now_rfc3339()}} if running else {"waiting": {"reason": "ContainerCreating"}}
            pods.append(self._pod_status(pod, {"phase": phase, "containerStatuses": [
                {"name": "trainer", "ready": running, "restartCount": 0, "state": state}]}))
        status = job.get("status") or {}
        self._job_status(job, {"active": count, "startTime": status.get("startTime") or now_rfc3339(),
                               "ready": count if running else 0})
        return pods

    def _terminate(self, pod: dict, exit_code: int, message: str, disruption: bool = False) -> None:
        conditions = []
        if disruption:
            conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                               "message": "preempted by a higher-priority pod", "lastTransitionTime": now_rfc3339()})
        self._pod_status(pod, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0, "state": {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "message": message,
                "finishedAt": now_rfc3339()}}}],
        })

    @staticmethod
    def _policy_action(job: dict, exit_code: int, disruption: bool) -> str:
        """The Job controller's podFailurePolicy evaluation: first matching rule wins, else Count."""
        for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules", []):
            codes = rule.get("onExitCodes")
            if codes:
                matches = exit_code in codes["values"]
                if codes.get("operator") == "NotIn":
                    matches = not matches and exit_code != 0
                if matches:
                    return rule["action"]
            for cond in rule.get("onPodConditions") or []:
                if cond["type"] == "DisruptionTarget" and disruption:
                    return rule["action"]
        return "Count"

    def fail(self, namespace: str, name: str, exit_code: int, message: str = "", disruption: bool = False,
             restart: bool = True) -> dict:
        """The trainer exits with `exit_code`; the Job controller applies podFailurePolicy and backoffLimit."""
        job = self.job(namespace, name)
        active = [p for p in self.pods(namespace, job) if p["status"].get("phase") in ("Pending", "Running")]
        for pod in active:
            self._terminate(pod, exit_code, message, disruption)
        action = self._policy_action(job, exit_code, disruption)
        status = job.get("status") or {}
        failed = (status.get("failed") or 0) + (0 if action == "Ignore" else 1)
        now = now_rfc3339()
        if action == "FailJob":
            msg = f"Container trainer for pod {namespace}/{active[0]['metadata']['name']} failed with exit code " \
                  f"{exit_code} matching FailJob rule at index 0"
            return self._job_status(job, {"active": 0, "ready": 0, "failed": failed, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": msg,
                 "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": msg,
                 "lastTransitionTime": now}]})
        if failed > job["spec"]["backoffLimit"]:
            return self._job_status(job, {"active": 0, "ready": 0, "failed": failed, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastTransitionTime": now}]})
        job = self._job_status(job, {"active": 0, "ready": 0, "failed": failed})
        if restart:
            self.start(namespace, name)
        return self.job(namespace, name)

    def succeed(self, namespace: str, name: str) -> dict:
        job = self.job(namespace, name)
        pods = [p for p in self.pods(namespace, job) if p["status"].get("phase") in ("Pending", "Running")]
        for pod in pods:
            self._terminate(pod, 0, "")
        now = now_rfc3339()
        return self._job_status(job, {"active": 0, "ready": 0, "succeeded": len(pods), "completionTime": now,
                                      "conditions": [
                                          {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                                           "lastTransitionTime": now},
                                          {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                                           "lastTransitionTime": now}]})

    def exceed_deadline(self, namespace: str, name: str) -> dict:
        job = self.job(namespace, name)
        for pod in self.pods(namespace, job):
            self.kube.delete("Pod", namespace, pod["metadata"]["name"])
        return self._job_status(job, {"active": 0, "ready": 0, "conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
             "message": "Job was active longer than specified deadline", "lastTransitionTime": now_rfc3339()}]})

    def sync_suspend(self, namespace: str, name: str) -> None:
        """A suspended Job's active pods are deleted (not counted as failures)."""
        job = self.job(namespace, name)
        if job["spec"].get("suspend"):
            for pod in self.pods(namespace, job):
                if pod["status"].get("phase") in ("Pending", "Running"):
                    self.kube.delete("Pod", namespace, pod["metadata"]["name"])
            self._job_status(job, {"active": 0, "ready": 0})
