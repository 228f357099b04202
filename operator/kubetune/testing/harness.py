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

from kubetune.api.crd import crd
from kubetune.controller import config as operator_config
from kubetune.controller import handlers
from kubetune.controller.kube import Kube
from kubetune.controller.status import now_rfc3339
from kubetune.testing.emulator import ADMIN_TOKEN, OPERATOR_TOKEN, Emulator


def owned_by_job(name: str, uid: str) -> list[dict]:
    """ownerReferences naming Job `name` as the controller, as the Job controller sets them on its pods (and Kueue on
    a Job's Workload)."""
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


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
                asyncio.run(
                    kopf.operator(
                        clusterwide=True, standalone=True, stop_flag=self.stop_flag, ready_flag=self.ready_flag
                    )
                )
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
        return asyncio.run_coroutine_threadsafe(
            self.reconciler.reconcile(namespace, name, body=body), self.reconciler.loop
        ).result(30)

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
        return [
            p
            for p in self.kube.list("Pod", namespace)
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    def _job_status(self, job: dict, patch: dict) -> dict:
        return self.kube.patch(
            "Job", job["metadata"]["namespace"], job["metadata"]["name"], {"status": patch}, subresource="status"
        )

    def _pod_status(self, pod: dict, patch: dict) -> dict:
        return self.kube.patch(
            "Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": patch}, subresource="status"
        )

    def start(self, namespace: str, name: str, running: bool = True, graceful: bool = False) -> list[dict]:
        """Create the Job's pods (one per node) and, as the kubelet, mark them Running.

        `graceful`: the pods take their time to stop once deleted (a finalizer stands for the kubelet's grace period:
        they stay, with a deletionTimestamp, until `stop_terminating` lets them go)."""
        job = self.job(namespace, name)
        assert not job["spec"].get("suspend"), "a suspended Job gets no pods"
        count = job["spec"].get("parallelism") or 1
        pods = [self._create_pod(job, index, running, graceful) for index in range(count)]
        status = job.get("status") or {}
        self._job_status(
            job,
            {"active": count, "startTime": status.get("startTime") or now_rfc3339(), "ready": count if running else 0},
        )
        return pods

    def _create_pod(self, job: dict, index: int, running: bool = True, graceful: bool = False) -> dict:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        template = job["spec"]["template"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{name}-{index}-" if indexed else f"{name}-",
                "namespace": namespace,
                "labels": template["metadata"]["labels"]
                | {"batch.kubernetes.io/job-name": name, "batch.kubernetes.io/controller-uid": job["metadata"]["uid"]},
                # The template's annotations (the trainer's spec among them), and for the pods of an Indexed Job the
                # completion index (KUBETUNE_NODE_RANK reads it), as the Job controller gives them.
                "annotations": (template["metadata"].get("annotations") or {})
                | ({"batch.kubernetes.io/job-completion-index": str(index)} if indexed else {}),
                "ownerReferences": owned_by_job(name, job["metadata"]["uid"]),
                **({"finalizers": [self.KUBELET_GRACE]} if graceful else {}),
            },
            "spec": template["spec"],
        }
        pod = self.kube.create(pod)
        phase = "Running" if running else "Pending"
        state = {"running": {"startedAt": now_rfc3339()}} if running else {"waiting": {"reason": "ContainerCreating"}}
        return self._pod_status(
            pod,
            {
                "phase": phase,
                "containerStatuses": [{"name": "trainer", "ready": running, "restartCount": 0, "state": state}],
            },
        )

    # Stands for the kubelet's grace period on pods started with `graceful`: a deleted pod stays until it is lifted.
    KUBELET_GRACE = "kubetune.test/kubelet-grace"

    def stop_terminating(self, namespace: str) -> int:
        """As the kubelet, finish stopping the deleted pods of `graceful` starts (the trainer saved on SIGTERM and
        exited 143): they go. Returns how many went."""
        gone = 0
        for pod in self.kube.list("Pod", namespace):
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and self.KUBELET_GRACE in (meta.get("finalizers") or []):
                self._terminate(pod, 143, "")
                self.kube.patch("Pod", namespace, pod["metadata"]["name"], {"metadata": {"finalizers": None}})
                gone += 1
        return gone

    def _terminate(self, pod: dict, exit_code: int, message: str, disruption: bool = False) -> dict:
        conditions = list((pod.get("status") or {}).get("conditions") or [])
        if disruption and not any(c.get("type") == "DisruptionTarget" for c in conditions):
            conditions.append(self._disruption_condition())
        return self._pod_status(
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "reason": "Completed" if exit_code == 0 else "Error",
                                "message": message,
                                "finishedAt": now_rfc3339(),
                            }
                        },
                    }
                ],
            },
        )

    @staticmethod
    def _disruption_condition() -> dict:
        return {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": "preempted by a higher-priority pod",
            "lastTransitionTime": now_rfc3339(),
        }

    # ------------------------------------------------------------------ the Job controller's failure handling
    # Ported from kubernetes pkg/controller/job: pod_failure_policy.go (matchPodFailurePolicy) and job_controller.go
    # (syncJob, trackJobStatusAndRemoveFinalizers, deleteActivePods): a failed pod that matches a FailJob rule, or
    # failures past backoffLimit, make the Job's FailureTarget condition; its active pods are deleted at once (every
    # pod not terminated then counts as failed) and, once none is left running, the Job gets the Failed condition with
    # the same reason. A failure matched by Ignore is not counted; any other is (Count). A failed pod is replaced
    # while the Job goes on: one pod, of the same completion index.

    @staticmethod
    def _policy_action(job: dict, pod: dict) -> tuple[str, str]:
        """matchPodFailurePolicy: the first rule that matches the failed pod wins; (action, FailJob's message)."""
        meta, status = pod["metadata"], pod.get("status") or {}
        for index, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules", [])):
            codes = rule.get("onExitCodes")
            if codes is not None:
                for container in status.get("containerStatuses") or []:
                    terminated = (container.get("state") or {}).get("terminated")
                    if terminated is None or terminated.get("exitCode") == 0:
                        continue  # still running, or exited 0: no exit code to match
                    if codes.get("containerName") not in (None, container.get("name")):
                        continue
                    listed = terminated["exitCode"] in codes["values"]
                    if listed == (codes["operator"] == "In"):
                        return rule["action"], (
                            f"Container {container['name']} for pod {meta['namespace']}/"
                            f"{meta['name']} failed with exit code {terminated['exitCode']} "
                            f"matching {rule['action']} rule at index {index}"
                        )
            elif rule.get("onPodConditions") is not None:
                for condition in status.get("conditions") or []:
                    if any(
                        condition.get("type") == p["type"] and condition.get("status") == p.get("status", "True")
                        for p in rule["onPodConditions"]
                    ):
                        return rule["action"], (
                            f"Pod {meta['namespace']}/{meta['name']} has condition "
                            f"{condition['type']} matching {rule['action']} rule at index {index}"
                        )
        return "Count", ""

    def _sync_failures(self, job: dict, failed_pods: list[dict], restart: bool) -> dict:
        """The Job controller's sync after `failed_pods` of the Job failed."""
        namespace = job["metadata"]["namespace"]
        status = job.get("status") or {}
        failed = status.get("failed") or 0
        fail_job = None
        for pod in failed_pods:
            action, message = self._policy_action(job, pod)
            if action == "FailJob" and fail_job is None:
                fail_job = ("PodFailurePolicy", message)
            if action != "Ignore":
                failed += 1
        if fail_job is None and failed > job["spec"]["backoffLimit"]:
            fail_job = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if fail_job is not None:
            return self._end_job(job, *fail_job, failed=failed)
        active = self._active_count(job)
        job = self._job_status(job, {"active": active, "ready": active, "failed": failed})
        if restart:
            if job["spec"].get("completionMode") == "Indexed":
                for pod in failed_pods:
                    index = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
                    self._create_pod(job, index)
                active = self._active_count(job)
                self._job_status(job, {"active": active, "ready": active})
            else:
                self.start(namespace, job["metadata"]["name"])
        return self.job(namespace, job["metadata"]["name"])

    def _active_count(self, job: dict) -> int:
        return sum(
            1
            for p in self.pods(job["metadata"]["namespace"], job)
            if p["status"].get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")
        )

    def _end_job(self, job: dict, reason: str, message: str, failed: int) -> dict:
        now = now_rfc3339()
        target = {
            "type": "FailureTarget",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        }
        conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") != "FailureTarget"]
        active = [
            p
            for p in self.pods(job["metadata"]["namespace"], job)
            if p["status"].get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")
        ]
        # deleteActivePods first, then one status write (syncJob): the kubelet stops them (the trainer saves on
        # SIGTERM and exits 143); once counted, their tracking finalizer goes and so do they.
        for pod in active:
            try:
                self._terminate(pod, 143, "")
            except kubernetes.client.ApiException as err:
                if err.status != 404:
                    raise
                continue  # gone meanwhile (the operator ended the attempt, its pods with it)
            self.kube.delete("Pod", job["metadata"]["namespace"], pod["metadata"]["name"])
        failed += len(active)  # every pod not terminated counts as failed once the Job is finished
        try:
            job = self._job_status(
                job, {"conditions": conditions + [target], "failed": failed, "active": 0, "ready": 0}
            )
            return self._job_status(
                job,
                {
                    "conditions": conditions
                    + [
                        target,
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": reason,
                            "message": message,
                            "lastTransitionTime": now,
                        },
                    ]
                },
            )
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise
            return {}  # the operator already deleted it (it ends an attempt at the first disrupted pod it sees)

    def fail(
        self,
        namespace: str,
        name: str,
        exit_code: int,
        message: str = "",
        disruption: bool = False,
        restart: bool = True,
    ) -> dict:
        """Every running pod of the Job exits with `exit_code` (the trainer's; `disruption`: they were preempted);
        the Job controller applies podFailurePolicy and backoffLimit, and (`restart`) replaces what it retries."""
        job = self.job(namespace, name)
        active = [p for p in self.pods(namespace, job) if p["status"].get("phase") in ("Pending", "Running")]
        failed = [self._terminate(pod, exit_code, message, disruption) for pod in active]
        return self._sync_failures(job, failed, restart)

    def fail_pod(
        self,
        namespace: str,
        name: str,
        index: int,
        exit_code: int,
        message: str = "",
        disruption: bool = False,
        restart: bool = True,
    ) -> dict:
        """One node of an Indexed Job: its pod (completion index `index`) exits with `exit_code` (`disruption`: it was
        preempted or evicted first), the others go on; then the Job controller's sync."""
        job = self.job(namespace, name)
        [pod] = [
            p
            for p in self.pods(namespace, job)
            if p["status"].get("phase") in ("Pending", "Running")
            and p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(index)
        ]
        return self._sync_failures(job, [self._terminate(pod, exit_code, message, disruption)], restart)

    def disrupt_pod(self, namespace: str, name: str, index: int) -> dict:
        """The scheduler preempts (or the eviction API evicts) one running pod of an Indexed Job: it gets the
        DisruptionTarget condition first and is deleted after (kube-scheduler's preemption, pkg/scheduler/framework/
        preemption); the kubelet has not stopped it yet."""
        job = self.job(namespace, name)
        [pod] = [
            p
            for p in self.pods(namespace, job)
            if p["status"].get("phase") == "Running"
            and p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(index)
        ]
        conditions = [*((pod.get("status") or {}).get("conditions") or []), self._disruption_condition()]
        return self._pod_status(pod, {"conditions": conditions})

    def succeed(self, namespace: str, name: str) -> dict:
        job = self.job(namespace, name)
        pods = [p for p in self.pods(namespace, job) if p["status"].get("phase") in ("Pending", "Running")]
        for pod in pods:
            self._terminate(pod, 0, "")
        now = now_rfc3339()
        return self._job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "succeeded": len(pods),
                "completionTime": now,
                "conditions": [
                    {
                        "type": "SuccessCriteriaMet",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "lastTransitionTime": now,
                    },
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now},
                ],
            },
        )

    def exceed_deadline(self, namespace: str, name: str) -> dict:
        job = self.job(namespace, name)
        for pod in self.pods(namespace, job):
            self.kube.delete("Pod", namespace, pod["metadata"]["name"])
        return self._job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                        "lastTransitionTime": now_rfc3339(),
                    }
                ],
            },
        )

    def sync_suspend(self, namespace: str, name: str) -> None:
        """A suspended Job's active pods are deleted (not counted as failures)."""
        job = self.job(namespace, name)
        if job["spec"].get("suspend"):
            for pod in self.pods(namespace, job):
                if pod["status"].get("phase") in ("Pending", "Running"):
                    self.kube.delete("Pod", namespace, pod["metadata"]["name"])
            self._job_status(job, {"active": 0, "ready": 0})
