"""Every API permission the operator uses, in one place.

The Helm chart's ClusterRole and the permission test (which records every call the operator makes
against the API-server emulator) are derived from this list; add a row here before calling a new API.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.constants import GROUP, PLURAL


@dataclass(frozen=True)
class Permission:
    api_group: str  # "" = core
    resource: str  # "jobs", "finetunejobs/status", ...
    verbs: tuple[str, ...]


OPERATOR_PERMISSIONS: tuple[Permission, ...] = (
    # The FineTuneJobs themselves: read and watched, never written (only their status is).
    Permission(GROUP, PLURAL, ("get", "list", "watch")),
    # patch: the operator's keys; get: only so that it may grant get+patch to a job's reporter (the API
    # server refuses a Role that grants more than its creator holds).
    Permission(GROUP, f"{PLURAL}/status", ("get", "patch")),
    # Never called: the OwnerReferencesPermissionEnforcement admission plugin (on by default in OpenShift)
    # lets a create set ownerReferences[].blockOwnerDeletion=true only for a user who may update the
    # owner's finalizers, and every child carries such a reference to its FineTuneJob.
    Permission(GROUP, f"{PLURAL}/finalizers", ("update",)),
    # Children.
    Permission("batch", "jobs", ("get", "list", "watch", "create", "patch", "delete")),
    # the job's record between its Jobs (builders.build_configmap): the tally the next Job starts from, patched on.
    # list: a restarted operator lists the children it made (metadata only), not a GET of each, a job at a time.
    Permission("", "configmaps", ("get", "list", "create", "patch", "delete")),
    Permission("", "services", ("get", "list", "create", "delete")),
    Permission("", "serviceaccounts", ("get", "list", "create", "delete")),
    # The reporter's token Secret (builders.build_reporter_token): created, never read, listed or deleted (the token
    # controller deletes it with its account).
    Permission("", "secrets", ("create",)),
    Permission("rbac.authorization.k8s.io", "roles", ("get", "list", "create", "delete")),
    Permission("rbac.authorization.k8s.io", "rolebindings", ("get", "list", "create", "delete")),
    # Kueue (controller/kueue.py): whether a job's LocalQueue exists, and its Job's Workload, deactivated while
    # spec.suspend holds the job (Kueue then stops the Job itself) and reactivated on resume.
    Permission("kueue.x-k8s.io", "localqueues", ("get",)),
    Permission("kueue.x-k8s.io", "workloads", ("get", "patch")),
    # Observing the training pods (exit codes, termination messages, node loss).
    Permission("", "pods", ("list", "watch")),
    # `kubectl describe ftj` tells the story (ours and kopf's warnings: core v1 Events). get, list: a Planned Event
    # (named from its plan) is looked up after a restart rather than posted a second time (the Planned Events of
    # FineTuneJobs are listed at start-up, by field selector).
    Permission("", "events", ("get", "list", "create")),
    # kopf observes namespaces (for namespace patterns) and CRDs while it runs.
    Permission("", "namespaces", ("list", "watch")),
    Permission("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
)

# With several replicas (controller/leader.py): the Lease the leader holds, in the operator's own namespace only.
LEADER_ELECTION_PERMISSIONS: tuple[Permission, ...] = (
    Permission("coordination.k8s.io", "leases", ("get", "create", "update")),
)

# The per-job Role the trainer's status reporter runs with: its own FineTuneJob's status, nothing else.
REPORTER_VERBS = ("get", "patch")


def is_granted(verb: str, api_group: str, resource: str, permissions=OPERATOR_PERMISSIONS) -> bool:
    return any(p.api_group == api_group and p.resource == resource and verb in p.verbs for p in permissions)
