"""kstatus' status computation for a custom resource, ported from sigs.k8s.io/cli-utils
pkg/kstatus/status (status.go Compute and checkReadyCondition, generic.go checkGenericProperties and
checkGeneration, util.go newInProgressStatus). Flux (`wait: true`, `healthChecks`), kubectl-based
pipelines and cli-utils' appliers read a FineTuneJob's health with it.

A FineTuneJob is no built-in kind, so core.go's per-kind rules (GetLegacyConditionsFn) never apply:
deletion, then observedGeneration, then the Reconciling / Stalled conditions, then Ready, else Current.
"""

from __future__ import annotations

from dataclasses import dataclass

IN_PROGRESS, FAILED, CURRENT, TERMINATING = "InProgress", "Failed", "Current", "Terminating"


@dataclass(frozen=True)
class Result:
    status: str
    message: str


def compute(obj: dict) -> Result:
    metadata, status = obj.get("metadata") or {}, obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return Result(TERMINATING, "Resource scheduled for deletion")
    # checkGeneration: only when both are present (a missing observedGeneration skips the check).
    generation, observed = metadata.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return Result(
            IN_PROGRESS, f"{obj.get('kind')} generation is {generation}, but latest observed generation is {observed}"
        )
    conditions = status.get("conditions") or []
    for cond in conditions:
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return Result(IN_PROGRESS, cond.get("message", ""))
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return Result(FAILED, cond.get("message", ""))
    for cond in conditions:
        if cond.get("type") != "Ready":
            continue
        if cond.get("status") == "True":
            return Result(CURRENT, "Resource is Ready")
        if cond.get("status") in ("False", "Unknown"):
            return Result(IN_PROGRESS, cond.get("message", ""))
    return Result(CURRENT, "Resource is current")
