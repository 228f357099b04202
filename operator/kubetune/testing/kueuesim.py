"""Kueue in the test cluster: its batch/v1 Job webhook and its job reconciler's rules, played through the API the way
Kueue plays them, with a user of its own ("kueue") so that a test can count its writes.

Ported from kubernetes-sigs/kueue:
- pkg/controller/jobs/job/job_webhook.go Default, pkg/controller/jobframework/defaults.go (ApplyDefaultLocalQueue,
  ApplyDefaultForSuspend) and utils.go WorkloadShouldBeSuspended: on create only, a Job without the queue-name
  label gets `default` when its namespace has a LocalQueue named so; a Job with the label, or any Job when Kueue
  runs with manageJobsWithoutQueueName, is created suspended. A Job whose controller is not a kind Kueue manages
  (a FineTuneJob) is a top-level job to it.
- pkg/controller/jobframework/reconciler.go ReconcileGenericJob: one Workload per Job (named as in
  workload_names.go); step 6, an evicted Workload's Job is stopped; step 7, a suspended Job whose Workload is
  admitted is unsuspended; step 8, a running Job whose Workload is not admitted is suspended. The Workload
  controller's part: an inactive Workload (`spec.active: false`) is not admitted, and an admitted one is evicted
  (reason Deactivated).
- apis/kueue/v1beta2: LocalQueue and Workload (spec.queueName, spec.active, status.admission, conditions).

Admission itself is the scheduler's and a ClusterQueue's quota: here a LocalQueue admits while it exists and has
room (`capacity`, None = any number), and a Workload without a queue is never admitted.
"""

from __future__ import annotations

import threading
import time

from kubetune.controller.kueue import workload_name
from kubetune.testing.emulator import AdmissionRequest, ApiServer, Emulator
from kubetune.testing.harness import BlockingKube, owned_by_job

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
TOKEN = "kueue"
LABEL_QUEUE = f"{GROUP}/queue-name"
LABEL_JOB_UID = f"{GROUP}/job-uid"
DEFAULT_QUEUE = "default"
PREFIX = f"/apis/{GROUP}/{VERSION}"


def _crd(kind: str, plural: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


CRDS = (_crd("LocalQueue", "localqueues"), _crd("Workload", "workloads"))


def _condition(kind: str, status: str, reason: str, message: str = "") -> dict:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finished(job: dict) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


class KueueSim:
    def __init__(
        self, emulator: Emulator, *, manage_jobs_without_queue_name: bool = False, namespaces: set[str] | None = None
    ):
        self.emulator = emulator
        self.manage_jobs_without_queue_name = manage_jobs_without_queue_name
        self.namespaces = namespaces  # the namespaces Kueue manages (its managedJobsNamespaceSelector); None = all
        self.capacity: dict[tuple[str, str], int | None] = {}  # (namespace, LocalQueue) -> Workloads admitted at once
        self.kube: BlockingKube | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unregister = None
        self.errors: list[str] = []

    # ------------------------------------------------------------------------------------- install

    def install(self) -> KueueSim:
        self.emulator.call(
            lambda: (self.emulator.server.tokens.__setitem__(TOKEN, TOKEN), self.emulator.server.superusers.add(TOKEN))
        )
        for crd in CRDS:
            self.emulator.register_crd(crd)
        self._unregister = self.emulator.admit(self.webhook, mutating=True)
        self.kube = BlockingKube(self.emulator.client_configuration(TOKEN))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kueue-sim", daemon=True)
        self._thread.start()
        return self

    def uninstall(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._unregister is not None:
            self._unregister()
        for crd in CRDS:
            self.emulator.delete_crd(crd["metadata"]["name"])
        if self.kube is not None:
            self.kube.close()

    def __enter__(self) -> KueueSim:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def local_queue(self, namespace: str, name: str, capacity: int | None = None) -> dict:
        """Create a LocalQueue (pointing at a ClusterQueue this simulation does not model further)."""
        self.capacity[(namespace, name)] = capacity
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": "cluster-queue"},
        }
        return self.kube.request("POST", f"{PREFIX}/namespaces/{namespace}/localqueues", body=body)

    def workload(self, job: dict) -> dict | None:
        try:
            return self.kube.request(
                "GET", f"{PREFIX}/namespaces/{job['metadata']['namespace']}/workloads/{workload_name(job)}"
            )
        except Exception:
            return None

    # ------------------------------------------------------------------------------------- the webhook

    def _manages(self, namespace: str | None) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def webhook(self, server: ApiServer, request: AdmissionRequest) -> None:
        """The batch/v1 Job mutating webhook (create only)."""
        if (request.group, request.resource, request.operation) != ("batch", "jobs", "CREATE") or not self._manages(
            request.namespace
        ):
            return
        meta = request.obj["metadata"]
        labels = meta.setdefault("labels", {})
        queues = server.store.get((GROUP, "localqueues"), {})
        if not labels.get(LABEL_QUEUE) and (request.namespace, DEFAULT_QUEUE) in queues:
            labels[LABEL_QUEUE] = DEFAULT_QUEUE  # ApplyDefaultLocalQueue
        if labels.get(LABEL_QUEUE) or self.manage_jobs_without_queue_name:
            request.obj.setdefault("spec", {})["suspend"] = True  # ApplyDefaultForSuspend

    # ------------------------------------------------------------------------------------- the controller

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as err:
                self.errors.append(repr(err))
            time.sleep(0.05)

    def step(self) -> None:
        jobs = self.kube.request("GET", "/apis/batch/v1/jobs").get("items", [])
        queues = {
            (q["metadata"]["namespace"], q["metadata"]["name"])
            for q in self.kube.request("GET", f"{PREFIX}/localqueues").get("items", [])
        }
        workloads = {
            (w["metadata"]["namespace"], w["metadata"]["name"]): w
            for w in self.kube.request("GET", f"{PREFIX}/workloads").get("items", [])
        }
        admitted: dict[tuple[str, str], int] = {}
        for w in workloads.values():
            if (w.get("status") or {}).get("admission"):
                key = (w["metadata"]["namespace"], w["spec"].get("queueName", ""))
                admitted[key] = admitted.get(key, 0) + 1
        for job in jobs:
            meta = job["metadata"]
            queue = (meta.get("labels") or {}).get(LABEL_QUEUE, "")
            if (
                _finished(job)
                or not self._manages(meta["namespace"])
                or not (queue or self.manage_jobs_without_queue_name)
            ):
                continue
            workload = workloads.get((meta["namespace"], workload_name(job)))
            if workload is None:
                self._create_workload(job, queue)
                continue
            self._reconcile(job, workload, queue, queues, admitted)

    def _create_workload(self, job: dict, queue: str) -> None:
        meta = job["metadata"]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Workload",
            "metadata": {
                "name": workload_name(job),
                "namespace": meta["namespace"],
                "labels": {LABEL_JOB_UID: meta["uid"]},
                "ownerReferences": owned_by_job(meta["name"], meta["uid"]),
            },
            "spec": {
                "queueName": queue,
                "active": True,
                "podSets": [{"name": "main", "count": job["spec"].get("parallelism") or 1}],
            },
        }
        self.kube.request("POST", f"{PREFIX}/namespaces/{meta['namespace']}/workloads", body=body)

    def _workload_status(self, workload: dict, status: dict) -> None:
        self.kube.request(
            "PATCH",
            f"{PREFIX}/namespaces/{workload['metadata']['namespace']}/workloads/{workload['metadata']['name']}/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def _suspend(self, job: dict, suspend: bool) -> None:
        self.kube.patch("Job", job["metadata"]["namespace"], job["metadata"]["name"], {"spec": {"suspend": suspend}})

    def _reconcile(self, job: dict, workload: dict, queue: str, queues: set, admitted: dict) -> None:
        namespace = job["metadata"]["namespace"]
        is_admitted = bool((workload.get("status") or {}).get("admission"))
        active = (workload.get("spec") or {}).get("active", True) is not False
        key = (namespace, queue)
        if is_admitted and not active:  # the Workload controller evicts it (Deactivated)
            self._workload_status(
                workload,
                {
                    "admission": None,
                    "conditions": [
                        _condition("Admitted", "False", "NoReservation"),
                        _condition("Evicted", "True", "Deactivated", "The workload is deactivated"),
                    ],
                },
            )
            admitted[key] = admitted.get(key, 1) - 1
            is_admitted = False
        elif not is_admitted and active and queue and key in queues:
            room = self.capacity.get(key)
            if room is None or admitted.get(key, 0) < room:
                self._workload_status(
                    workload,
                    {
                        "admission": {"clusterQueue": "cluster-queue"},
                        "conditions": [
                            _condition("QuotaReserved", "True", "QuotaReserved"),
                            _condition("Admitted", "True", "Admitted"),
                        ],
                    },
                )
                admitted[key] = admitted.get(key, 0) + 1
                is_admitted = True
        suspended = bool(job["spec"].get("suspend"))
        if suspended and is_admitted:
            self._suspend(job, False)  # step 7: admitted, start the Job
        elif not suspended and not is_admitted:
            self._suspend(job, True)  # step 6 / 8: not admitted (or evicted), stop the Job
