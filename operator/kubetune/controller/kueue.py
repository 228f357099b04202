"""Living with Kueue (kueue.x-k8s.io): what the operator asks of it, and what it leaves to it.

Kueue's rules for a batch/v1 Job, as its source has them (kubernetes-sigs/kueue):
- Its Job webhook (pkg/controller/jobs/job/job_webhook.go Default, pkg/controller/jobframework/defaults.go) runs
  on create only: a Job without the queue-name label gets `kueue.x-k8s.io/queue-name: default` when its namespace
  has a LocalQueue named `default`; a Job with the label, or any Job when Kueue runs with
  manageJobsWithoutQueueName, is created suspended.
- Its reconciler (pkg/controller/jobframework/reconciler.go ReconcileGenericJob) keeps one Workload per Job: a
  suspended Job whose Workload is admitted is unsuspended; a running Job whose Workload is not admitted is
  suspended again. So whoever else sets `spec.suspend` on such a Job fights Kueue, forever.
- A Workload with `spec.active: false` is never admitted, and an admitted one is evicted: Kueue stops its Job
  itself (kueuectl stop workload does exactly this). That is how the operator suspends a job Kueue manages.

The Workload of a Job is named by jobframework/workload_names.go GetWorkloadNameForOwnerWithGVK:
"job-<job name>-" and the first 5 hex digits of sha1("Job\\nbatch\\n<job name>\\n<job uid>").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kubernetes.client import ApiException

from kubetune.controller.builders import LABEL_KUEUE_QUEUE
from kubetune.controller.kube import MERGE_PATCH, Kube

GROUP = "kueue.x-k8s.io"
# The newest first; a cluster whose Kueue predates v1beta2 still serves v1beta1, where spec.active means the same.
VERSIONS = ("v1beta2", "v1beta1")
# On a Workload the operator deactivated because its FineTuneJob says suspend: only such a one is reactivated
# when the job resumes (a Workload an admin stopped stays stopped).
ANNOTATION_DEACTIVATED = "kubetune.dev/deactivated-for-suspend"


def workload_name(job: dict) -> str:
    """The name Kueue gives the Workload of a batch/v1 Job (jobframework GetWorkloadNameForOwnerWithGVK)."""
    meta = job["metadata"]
    digest = hashlib.sha1("\n".join(("Job", "batch", meta["name"], meta["uid"])).encode()).hexdigest()
    # The prefix is cut to fit the longest name (253, or 63 with ShortWorkloadNames): "job-" + a name of at most
    # 50 characters + "-" + 5 always fits both.
    return f"job-{meta['name']}-{digest[:5]}"


def queue_of(job: dict) -> str:
    """The LocalQueue the live Job is in: spec.queueName as the operator set it, or `default` as Kueue's webhook
    set it; "" when the Job has no queue label."""
    return (job.get("metadata", {}).get("labels") or {}).get(LABEL_KUEUE_QUEUE, "")


def _resource_missing(err: ApiException) -> bool:
    """A 404 for the resource itself (its API group or version is not served), not for one object of it: the API
    server names the object in the details of the latter only."""
    if err.status != 404:
        return False
    try:
        details = json.loads(err.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        details = {}
    return not details.get("name")


class NotInstalled(Exception):
    """No version of the kueue.x-k8s.io API is served: Kueue is not installed."""


@dataclass
class QueueCheck:
    found: bool
    problem: str = ""  # why not, in words for the status


class KueueClient:
    """The few Kueue calls the operator makes; which API version the cluster serves is found on first use."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self._version: str | None = None

    async def _call(self, method: str, namespace: str, plural: str, name: str, body: dict | None = None) -> dict:
        versions = (self._version,) if self._version else VERSIONS
        for version in versions:
            path = f"/apis/{GROUP}/{version}/namespaces/{namespace}/{plural}/{name}"
            try:
                answer = await self.kube.request(method, path, body=body, content_type=MERGE_PATCH)
            except ApiException as err:
                if _resource_missing(err):
                    continue
                raise
            self._version = version
            return answer
        self._version = None  # uninstalled meanwhile, or never there: look again next time
        raise NotInstalled()

    async def local_queue(self, namespace: str, queue: str) -> QueueCheck:
        """Whether the LocalQueue exists (QueueNotFound in the status when it does not, or Kueue is missing)."""
        try:
            await self._call("GET", namespace, "localqueues", queue)
        except NotInstalled:
            return QueueCheck(
                False,
                f"Kueue is not installed (this cluster serves no {GROUP} API), so nothing will "
                f"admit the Job to LocalQueue {queue!r}: install Kueue, or remove "
                "spec.queueName",
            )
        except ApiException as err:
            if err.status == 404:
                return QueueCheck(
                    False,
                    f"Kueue has no LocalQueue {queue!r} in namespace {namespace}: create it, or "
                    "name an existing one in spec.queueName (kubectl get localqueues)",
                )
            raise
        return QueueCheck(True)

    async def workload(self, job: dict) -> dict | None:
        """The Job's Workload; None while Kueue has made none (or manages no Job here)."""
        try:
            return await self._call("GET", job["metadata"]["namespace"], "workloads", workload_name(job))
        except NotInstalled:
            return None
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def set_active(self, job: dict, workload: dict, active: bool) -> dict:
        """Deactivate the Workload for a suspend (marking it as the operator's doing), or reactivate one the
        operator deactivated."""
        annotations = {ANNOTATION_DEACTIVATED: None if active else "true"}
        patch = {"metadata": {"annotations": annotations}, "spec": {"active": active}}
        return await self._call(
            "PATCH", job["metadata"]["namespace"], "workloads", workload["metadata"]["name"], body=patch
        )


def is_active(workload: dict) -> bool:
    return (workload.get("spec") or {}).get("active", True) is not False


def deactivated_by_us(workload: dict) -> bool:
    return (workload.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_DEACTIVATED) == "true"
