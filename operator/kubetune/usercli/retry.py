"""`kubetune retry NAME`: the spec edit that re-opens a FineTuneJob that failed for its backoffLimit or its deadline.

The operator does the rest: a job in phase Failed with reason BackoffLimitExceeded (or DeadlineExceeded) whose
spec.backoffLimit (or spec.activeDeadlineSeconds) now allows more runs again, from the newest complete checkpoint, in
the same output root, its attempts counted on (docs/operator.md, "What a spec edit does"). In a GitOps setup, make
the same edit in Git: the tool would undo this one.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.constants import Phase, Reason
from kubetune.api.v1alpha1 import Spec
from kubetune.usercli import CliError

# The most spec.backoffLimit may be (the API's bound, which the CRD enforces).
MAX_BACKOFF_LIMIT = next(
    bound.le for bound in Spec.model_fields["backoff_limit"].metadata if getattr(bound, "le", None) is not None
)


@dataclass(frozen=True)
class Retry:
    patch: dict  # a merge patch of the FineTuneJob
    words: str  # what it does, one line


def _failure_reason(status: dict) -> str:
    failed = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"), {}
    )
    return failed.get("reason") or ""


def plan_retry(ftj: dict, backoff_limit: int | None = None, active_deadline_seconds: int | None = None) -> Retry:
    """The patch that re-opens `ftj`, or a CliError saying why a retry cannot help.

    By default a job that failed for its backoffLimit gets as many retries again as its spec gave it (at least one
    more attempt): spec.backoffLimit becomes its attempts so far plus the limit it had, which counts every earlier
    attempt as failed (the operator counts only the failed ones). One that failed for its deadline gets as long
    again: spec.activeDeadlineSeconds doubles."""
    meta, spec, status = ftj["metadata"], ftj.get("spec") or {}, ftj.get("status") or {}
    who = f"{meta['namespace']}/{meta['name']}"
    phase = status.get("phase")
    if phase != Phase.FAILED:
        raise CliError(
            f"{who} is {phase or 'not started yet (no status)'}, not Failed: retry re-opens a job that "
            "failed with BackoffLimitExceeded or DeadlineExceeded"
        )
    reason = _failure_reason(status)
    guard = {"metadata": {"resourceVersion": meta.get("resourceVersion")}} if meta.get("resourceVersion") else {}
    if reason == Reason.BACKOFF_LIMIT_EXCEEDED:
        old = spec.get("backoffLimit", Spec.model_fields["backoff_limit"].default)
        attempts = status.get("attempts") or 0
        new = backoff_limit if backoff_limit is not None else min(MAX_BACKOFF_LIMIT, attempts + max(old, 0))
        if new <= old or new > MAX_BACKOFF_LIMIT:
            raise CliError(
                f"--backoff-limit {new}: it must be above the job's spec.backoffLimit ({old}) and at most "
                f"{MAX_BACKOFF_LIMIT}"
            )
        return Retry(
            {**guard, "spec": {"backoffLimit": new}},
            f"{who}: spec.backoffLimit {old} -> {new}: the operator re-opens the job, and attempt "
            f"{attempts + 1} resumes from the newest complete checkpoint",
        )
    if reason == Reason.DEADLINE_EXCEEDED:
        old = spec.get("activeDeadlineSeconds") or 0
        new = active_deadline_seconds if active_deadline_seconds is not None else 2 * old
        if new and new <= old:
            raise CliError(
                f"--active-deadline-seconds {new}: it must be above the job's spec.activeDeadlineSeconds "
                f"({old}), or 0 for no deadline"
            )
        limit = f"{new} s" if new else "none"
        return Retry(
            {**guard, "spec": {"activeDeadlineSeconds": new}},
            f"{who}: spec.activeDeadlineSeconds {old} s -> {limit}: the operator re-opens the job, which "
            "resumes from the newest complete checkpoint",
        )
    raise CliError(
        f"{who} failed with {reason or 'no reason given'}, which another attempt would meet again: fix "
        f"the cause (kubetune status {meta['name']} says it) and create a new FineTuneJob; "
        f"spec.resumeFrom: {meta['name']} starts it from this job's newest checkpoint"
    )
