"""Pure functions: (FineTuneJob, its Job, its pods) -> the status the operator writes, and the Events
that tell the story of each transition.

The operator owns phase, conditions, attempts, startTime, completionTime, observedGeneration, jobName
and message, and derives them from what it sees of the Job and its pods, never from what the status says:
the trainer's reporter may patch the status (its progress, metrics, checkpoints, output and plan), and with
its token it could write any key. The operator's next pass puts its own keys back (`status_patch` against what
is stored) and drops result URIs outside the job's output root (`untrusted_results`). Both sides build their
part with the API's status models (kubetune.api.v1alpha1.Status), fitted to the CRD's bounds (bounds.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import orjson

from kubetune.api.constants import ConditionStatus as S
from kubetune.api.constants import ConditionType as C
from kubetune.api.constants import ExitCode, Phase, Reason
from kubetune.api.v1alpha1 import Condition, OutputRefs, Plan, Status
from kubetune.controller import bounds
from kubetune.controller.builders import (
    ANNOTATION_HELD,
    ANNOTATION_SUSPENDED_BY_USER,
    LABEL_KUEUE_QUEUE,
    TRAINER_CONTAINER,
    Tally,
)

# kstatus (sigs.k8s.io/cli-utils/pkg/kstatus) "abnormal-true" conditions: present (True) while the
# object is progressing / stuck, removed otherwise. Flux and Argo read them with observedGeneration.

FINISHED_PHASES = (Phase.SUCCEEDED, Phase.FAILED)
# The status fields the operator owns and writes (in wire form: their camelCase aliases); the others are the
# trainer's reporter's, and a merge patch of the operator's never touches them.
OPERATOR_STATUS_FIELDS = (
    "phase",
    "observed_generation",
    "conditions",
    "start_time",
    "completion_time",
    "attempts",
    "job_name",
    "message",
)
OPERATOR_STATUS_KEYS = tuple(Status.model_fields[name].alias for name in OPERATOR_STATUS_FIELDS)


@functools.lru_cache(maxsize=2)
def _second_text(second: int) -> str:
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def now_rfc3339() -> str:
    """Now, to the second (the API's time format). The text is made once a second: a burst of passes asked for it
    thousands of times a second, and strftime was 1.5 % of the operator's CPU."""
    return _second_text(int(time.time())) + "Z"


def now_rfc3339_micro() -> str:
    """Now, to the microsecond (RFC 3339, as metav1.MicroTime writes it)."""
    now = time.time()
    second = int(now)
    return f"{_second_text(second)}.{int((now - second) * 1e6):06d}Z"


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Observed:
    """What the reconcile found the job to be doing."""

    phase: Phase
    reason: Reason
    message: str = ""
    attempts: int = 0
    completion_time: str | None = None
    last_failure: str = ""  # the newest failed pod's reason, even when a new attempt already runs
    # The attempt ended and another one starts: the tally the next Job starts from. The reconciler records it and
    # deletes the Job, whose pods all go (a multi-node attempt is all or nothing).
    next: Tally | None = None
    earlier_attempts: int = 0  # the attempts of the FineTuneJob's earlier Jobs (their failures were told then)


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any]  # the operator's keys only, in wire form (a Status model's, unset ones left out)
    events: list[Event] = field(default_factory=list)

    @property
    def phase(self) -> str:
        return self.status["phase"]


# ----------------------------------------------------------------------------------------- pods


def trainer_termination(pod: dict) -> dict | None:
    """The trainer container's `state.terminated` (exitCode, message, reason, finishedAt), if any."""
    for status in pod.get("status", {}).get("containerStatuses", []) or []:
        if status.get("name") == TRAINER_CONTAINER:
            return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
    return None


# The kubelet's words when a container's Secret reference cannot be resolved (kubelet_pods.go,
# makeEnvironmentVariables: the secret manager's NotFound error, or a missing key).
_SECRET_MISSING = re.compile(r'secrets? "(?P<name>[^"]+)" not found')
_SECRET_KEY_MISSING = re.compile(r"couldn't find key (?P<key>\S+) in Secret (?P<namespace>[^/\s]+)/(?P<name>\S+)")


def missing_secret(pod: dict) -> str | None:
    """Why the trainer container cannot start, when it waits for a Secret (or a key of one) that does not exist."""
    for status in pod.get("status", {}).get("containerStatuses", []) or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if status.get("name") != TRAINER_CONTAINER or waiting.get("reason") != "CreateContainerConfigError":
            continue
        text = waiting.get("message") or ""
        namespace = pod.get("metadata", {}).get("namespace", "")
        if m := _SECRET_KEY_MISSING.search(text):
            return (
                f"Secret {m['name']!r} in namespace {m['namespace']} has no key {m['key']}: add it, or name "
                "another Secret in the spec's credentialsSecret; the training pod waits for it"
            )
        if m := _SECRET_MISSING.search(text):
            return (
                f"Secret {m['name']!r} does not exist in namespace {namespace}: create it, or correct the "
                "credentialsSecret (or spec.pod) that names it; the training pod waits for it"
            )
    return None


def condition_true(obj: dict, kind: str) -> dict | None:
    """The object's condition of type `kind`, when it is True."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def failed_pods(pods: list[dict]) -> list[dict]:
    """Failed pods, the first to fail first."""
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]

    def order(pod: dict) -> tuple:
        # Timestamps have 1 s resolution. Within one second a pod the Job controller stopped because another failed
        # (SIGTERM: exit 143) failed after it, whichever was created first; then the resourceVersion (an etcd
        # revision in practice) orders them.
        termination = trainer_termination(pod) or {}
        rv = pod["metadata"].get("resourceVersion") or "0"
        return (
            termination.get("finishedAt") or "",
            termination.get("exitCode") == ExitCode.PREEMPTED,
            pod["metadata"].get("creationTimestamp") or "",
            int(rv) if rv.isdigit() else 0,
        )

    return sorted(failed, key=order)


# ANSI escape sequences (a colour code, a cursor move) as a terminal reads them.
_ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-_])")


def pod_text(text: str) -> str:
    """Text from inside a pod (a termination message, or the log tail the kubelet uses instead) as one line of
    printable text: control characters and escape sequences out (a message must not repaint a terminal that
    runs `kubectl describe`), lines joined with " | ". Its length is bounded where it is stored."""
    text = _ESCAPE_SEQUENCE.sub("", text)
    lines = (
        "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in line).strip() for line in text.splitlines()
    )
    return " | ".join(line for line in lines if line)


def failure_text(pod: dict) -> str:
    term = trainer_termination(pod) or {}
    message = pod_text(term.get("message") or "")
    if message:
        return message
    if condition_true(pod, "DisruptionTarget"):
        cond = condition_true(pod, "DisruptionTarget") or {}
        return f"the pod was disrupted ({cond.get('reason') or 'preempted'})"
    exit_code = term.get("exitCode")
    reason = term.get("reason") or pod.get("status", {}).get("reason") or "Error"
    return (
        f"the trainer exited with code {exit_code} ({reason})"
        if exit_code is not None
        else f"the pod failed ({reason})"
    )


def _user_error_pod(pods: list[dict]) -> dict | None:
    for pod in reversed(failed_pods(pods)):
        if (trainer_termination(pod) or {}).get("exitCode") == ExitCode.USER_ERROR:
            return pod
    return None


# ----------------------------------------------------------------------------------------- phase


def count_attempts(job: dict, nodes: int, pods: list[dict] = ()) -> int:
    """Attempts of this Job (pods started / nodes, rounded up) plus those of earlier Jobs.

    The Job's counters and the pods seen are both used: either can lag behind the other. The pods are
    listed after the Job is read, so a pod already running while the Job still says active 0, failed 1
    is a replacement (attempt 2), and active 1 beside a listed failed pod is that same pod. A Job of several
    nodes is one attempt (the Job controller never replaces one of its pods alone: its first failure ends it),
    or more when it was suspended and resumed (all its pods are made again).
    """
    previous = Tally.of_job(job).attempts
    counters = job.get("status", {}) or {}
    finished = (counters.get("failed") or 0) + (counters.get("succeeded") or 0)
    live = sum(
        1
        for p in pods
        if p.get("status", {}).get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")
    )
    counted = max(finished + (counters.get("active") or 0), len(pods), finished + live)
    return previous + math.ceil(counted / max(nodes, 1))


def user_error_reason(text: str) -> Reason:
    """The reason of a user error: DoesNotFit when the trainer's memory plan says the job cannot fit its GPUs (its
    termination message then starts "UserError: DoesNotFit: ..."), else UserError."""
    if text.removeprefix(f"{Reason.USER_ERROR}:").lstrip().startswith(f"{Reason.DOES_NOT_FIT}:"):
        return Reason.DOES_NOT_FIT
    return Reason.USER_ERROR


def attempt_seconds(job: dict, now: dt.datetime | None = None) -> int:
    """Seconds the Job has been active, as the Job controller counts them for its activeDeadlineSeconds: from its
    startTime (set again on each resume from suspension) to its end, or now."""
    job_status = job.get("status", {}) or {}
    start = parse_time(job_status.get("startTime"))
    if start is None:
        return 0
    ended = condition_true(job, "Failed") or condition_true(job, "FailureTarget") or {}
    end = parse_time(job_status.get("completionTime")) or parse_time(ended.get("lastTransitionTime"))
    end = end or now or dt.datetime.now(dt.UTC)
    return max(0, int((end - start).total_seconds()))


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _on_node(pod: dict | None, nodes: int) -> str:
    """ " on node <index>" for a pod of a several-node Job (its completion index), "" otherwise."""
    if nodes < 2:
        return ""
    index = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(COMPLETION_INDEX)
    return f" on node {index}" if index is not None else ""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def ended_attempt(
    job: dict,
    pods: list[dict],
    failed: dict | None,
    *,
    nodes: int,
    attempts: int,
    backoff_limit: int,
    active_deadline_seconds: int,
    now: dt.datetime | None = None,
    reopening: bool = False,
) -> Observed:
    """What follows a Job that failed (`failed`: its Failed or FailureTarget condition) or, with several nodes, one
    whose pod was disrupted: the job fails, or the next attempt starts (`Observed.next`).

    A user error fails the job. A disruption of one of several nodes ends the attempt without counting it. Any other
    failure counts against spec.backoffLimit: each failed attempt of a several-node job (a Job) once, each failed pod
    of a one-node Job once (a pod is a whole attempt there). A Job that failed for its backoffLimit or deadline while
    the spec now allows more (raised since) is followed by another attempt: the job is re-opened (`reopening`: the
    job had failed already, and its spec was edited since)."""
    earlier = Tally.of_job(job)
    job_status = job.get("status", {}) or {}
    finished_at = job_status.get("completionTime") or (failed or {}).get("lastTransitionTime")
    job_reason = (failed or {}).get("reason")
    disrupted = next((p for p in pods if condition_true(p, "DisruptionTarget")), None) if nodes > 1 else None
    user_pod = _user_error_pod(pods)
    if user_pod is not None or (job_reason == "PodFailurePolicy" and disrupted is None):
        text = (
            failure_text(user_pod)
            if user_pod
            else ((failed or {}).get("message") or "the trainer reported a user error")
        )
        return Observed(Phase.FAILED, user_error_reason(text), text, attempts, finished_at)
    seconds = earlier.seconds + attempt_seconds(job, now)
    if job_reason == "DeadlineExceeded":
        # The Job ran for all the time it was given (what the spec left after the earlier Jobs): the job has used
        # that much, whatever the clocks say.
        seconds = earlier.seconds + ((job.get("spec") or {}).get("activeDeadlineSeconds") or 0) or seconds
        if active_deadline_seconds and seconds >= active_deadline_seconds:
            text = f"the job ran longer than spec.activeDeadlineSeconds ({active_deadline_seconds} s)"
            return Observed(Phase.FAILED, Reason.DEADLINE_EXCEEDED, text, attempts, finished_at)
        allowed = f"is now {active_deadline_seconds} s" if active_deadline_seconds else "was removed"
        text = (
            f"spec.activeDeadlineSeconds {allowed} ({seconds} s used): the job runs again from the newest "
            "complete checkpoint"
        )
        return Observed(
            Phase.PENDING,
            Reason.REOPENED,
            text,
            attempts,
            next=Tally(attempts, earlier.failures, seconds, Reason.REOPENED, text),
        )
    if disrupted is not None:
        text = (
            f"a training pod{_on_node(disrupted, nodes)} was disrupted ({failure_text(disrupted)}): the attempt's "
            "other pods are stopped and every node starts again from the newest complete checkpoint (not counted "
            "against spec.backoffLimit)"
        )
        return Observed(
            Phase.PENDING,
            Reason.PREEMPTED,
            text,
            attempts,
            next=Tally(attempts, earlier.failures, seconds, Reason.PREEMPTED, text),
        )
    causes = failed_pods(pods)
    cause = (causes[0] if nodes > 1 else causes[-1]) if causes else None  # several nodes: the first to fail
    what = failure_text(cause) if cause else "a training pod was deleted or lost before it finished"
    failures = earlier.failures + (1 if nodes > 1 else (job_status.get("failed") or 0))
    if failures > backoff_limit:
        text = f"{_plural(failures, 'failed attempt')}, more than spec.backoffLimit ({backoff_limit}) allows"
        if attempts > failures:
            text += f" ({_plural(attempts, 'attempt')} in all: preemptions are not counted)"
        return Observed(
            Phase.FAILED,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{text}; last failure{_on_node(cause, nodes)}: {what}",
            attempts,
            finished_at,
        )
    if nodes > 1 and not reopening:
        reason = Reason.RETRYING
        text = (
            f"attempt {attempts} failed{_on_node(cause, nodes)}: {what}; the attempt's other pods are stopped and "
            "every node starts again from the newest complete checkpoint"
        )
    else:  # the Job used up its retries, and spec.backoffLimit was raised since
        reason = Reason.REOPENED
        text = (
            f"spec.backoffLimit is now {backoff_limit} ({_plural(failures, 'failed attempt')} so far): the next "
            "attempt resumes from the newest complete checkpoint"
        )
    return Observed(Phase.PENDING, reason, text, attempts, next=Tally(attempts, failures, seconds, reason, text))


def reopened_from_status(operator_status: dict, *, backoff_limit: int, active_deadline_seconds: int) -> Observed:
    """Whether a job that failed for its backoffLimit or deadline runs again now that its spec was edited, from its
    status alone (ttlSecondsAfterFinished removed its Job, and the tally with it): every attempt counts as failed, and
    the time from its start to its end as active."""
    attempts = operator_status.get("attempts") or 0
    reason = phase_reason(operator_status)[1]
    start, end = parse_time(operator_status.get("startTime")), parse_time(operator_status.get("completionTime"))
    seconds = max(0, int((end - start).total_seconds())) if start and end else 0
    if reason == Reason.BACKOFF_LIMIT_EXCEEDED and attempts <= backoff_limit:
        text = (
            f"spec.backoffLimit is now {backoff_limit} ({_plural(attempts, 'attempt')} so far): the next attempt "
            "resumes from the newest complete checkpoint"
        )
    elif reason == Reason.DEADLINE_EXCEEDED and (not active_deadline_seconds or seconds < active_deadline_seconds):
        allowed = f"is now {active_deadline_seconds} s" if active_deadline_seconds else "was removed"
        text = (
            f"spec.activeDeadlineSeconds {allowed} ({seconds} s used): the job runs again from the newest "
            "complete checkpoint"
        )
    else:
        return Observed(
            Phase.FAILED,
            Reason(reason) if reason in Reason else Reason.BACKOFF_LIMIT_EXCEEDED,
            operator_status.get("message") or "",
            attempts,
        )
    return Observed(
        Phase.PENDING, Reason.REOPENED, text, attempts, next=Tally(attempts, attempts, seconds, Reason.REOPENED, text)
    )


def observe_generation(operator_status: dict, generation: int | None) -> dict:
    """The operator's status of a job as it stands, with a spec edit observed: observedGeneration, and each
    condition's, at `generation`. What the edit does is the reconciler's (most edits of a finished job change
    nothing), but a status that never observes it leaves GitOps tools waiting: kstatus (Flux) reads a resource whose
    observedGeneration lags its generation as InProgress, and so does Argo CD."""
    if generation is None or not operator_status:
        return operator_status
    out = dict(operator_status, observedGeneration=generation)
    if isinstance(out.get("conditions"), list):
        out["conditions"] = [
            c | {"observedGeneration": generation} if isinstance(c, dict) and "observedGeneration" in c else c
            for c in out["conditions"]
        ]
    return out


def observe(
    job: dict | None,
    pods: list[dict],
    *,
    nodes: int,
    spec_suspend: bool,
    queue_name: str,
    backoff_limit: int,
    active_deadline_seconds: int,
    queue_problem: str = "",
    now: dt.datetime | None = None,
) -> Observed:
    """The phase a FineTuneJob is in, read from its Job and pods (pods of the current Job only).

    `queue_name`: spec.queueName; `queue_problem`: why the live Job's LocalQueue cannot admit it (no such
    LocalQueue, or no Kueue at all), "" when it can."""
    if job is None:
        return Observed(Phase.PENDING, Reason.JOB_CREATED, "creating the training Job")
    seen = _observe_job(
        job,
        pods,
        nodes=nodes,
        spec_suspend=spec_suspend,
        queue_name=queue_name,
        backoff_limit=backoff_limit,
        active_deadline_seconds=active_deadline_seconds,
        queue_problem=queue_problem,
        now=now,
    )
    return dataclasses.replace(seen, earlier_attempts=Tally.of_job(job).attempts)


def _observe_job(
    job: dict,
    pods: list[dict],
    *,
    nodes: int,
    spec_suspend: bool,
    queue_name: str,
    backoff_limit: int,
    active_deadline_seconds: int,
    queue_problem: str,
    now: dt.datetime | None,
) -> Observed:
    attempts = count_attempts(job, nodes, pods)
    job_status = job.get("status", {}) or {}
    completion = job_status.get("completionTime")
    if condition_true(job, "Complete") or condition_true(job, "SuccessCriteriaMet"):
        return Observed(Phase.SUCCEEDED, Reason.TRAINING_COMPLETE, "", attempts, completion)
    failed = condition_true(job, "Failed") or condition_true(job, "FailureTarget")
    if failed or (nodes > 1 and any(condition_true(p, "DisruptionTarget") for p in pods)):
        return ended_attempt(
            job,
            pods,
            failed,
            nodes=nodes,
            attempts=attempts,
            backoff_limit=backoff_limit,
            active_deadline_seconds=active_deadline_seconds,
            now=now,
        )
    if (job.get("spec", {}) or {}).get("suspend"):
        # Who holds the Job: the user (spec.suspend), the operator's namespace cap, Kueue, or someone else.
        if spec_suspend:
            return Observed(Phase.SUSPENDED, Reason.SUSPENDED_BY_USER, "suspended: spec.suspend is true", attempts)
        annotations = job.get("metadata", {}).get("annotations") or {}
        if annotations.get(ANNOTATION_HELD) == "true":
            return Observed(
                Phase.QUEUED,
                Reason.NAMESPACE_LIMIT,
                "waiting: this namespace runs as many FineTuneJobs as the operator allows",
                attempts,
            )
        queue = (job.get("metadata", {}).get("labels") or {}).get(LABEL_KUEUE_QUEUE, "")
        if queue and queue_problem:
            return Observed(Phase.QUEUED, Reason.QUEUE_NOT_FOUND, queue_problem, attempts)
        if queue:
            how = "" if queue == queue_name else " (Kueue's webhook put it in its namespace's default LocalQueue)"
            return Observed(
                Phase.QUEUED,
                Reason.WAITING_FOR_ADMISSION,
                f"waiting for Kueue LocalQueue {queue!r} to admit the Job{how}",
                attempts,
            )
        if annotations.get(ANNOTATION_SUSPENDED_BY_USER) == "true":
            return Observed(Phase.SUSPENDED, Reason.SUSPENDED_BY_USER, "the training Job is suspended", attempts)
        return Observed(
            Phase.QUEUED,
            Reason.WAITING_FOR_ADMISSION,
            "the Job was suspended by another controller, not by kubetune (Kueue does this to every Job of "
            "a namespace it manages with manageJobsWithoutQueueName): it starts when that controller "
            "admits it",
            attempts,
        )
    live = [
        p
        for p in pods
        if p.get("status", {}).get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")
    ]
    failures = failed_pods(pods)
    last_failure = failure_text(failures[-1]) if failures else ""
    if any(p.get("status", {}).get("phase") == "Running" for p in live):
        return Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", attempts, last_failure=last_failure)
    waiting_for_secret = next((text for p in live if (text := missing_secret(p))), None)
    if waiting_for_secret:
        return Observed(Phase.PENDING, Reason.SECRET_NOT_FOUND, waiting_for_secret, attempts)
    if not live and any(p.get("status", {}).get("phase") == "Succeeded" for p in pods):
        # The trainer exited 0; the Job controller has not marked the Job Complete yet.
        return Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", attempts)
    previous = failed_pods(pods)
    if previous:
        # Several nodes: the first pod to fail is the cause; the Job controller then stops the others (exit 143).
        last = previous[0] if nodes > 1 else previous[-1]
        if condition_true(last, "DisruptionTarget"):
            return Observed(
                Phase.PENDING,
                Reason.PREEMPTED,
                f"a training pod was preempted ({failure_text(last)}); the next attempt resumes from the "
                "newest checkpoint",
                attempts,
            )
        counted = [p for p in previous if not condition_true(p, "DisruptionTarget")]
        failures = Tally.of_job(job).failures + max(job_status.get("failed") or 0, len(counted))
        if nodes == 1 and (_user_error_pod(previous) is not None or failures > backoff_limit):
            # The Job controller is about to fail the Job (its pod failure policy fails it on a user error, its
            # backoffLimit on one failure too many) and has not said so yet: tell what follows, not a retry.
            counted_job = dict(job, status=dict(job_status, failed=failures - Tally.of_job(job).failures))
            return ended_attempt(
                counted_job,
                pods,
                None,
                nodes=nodes,
                attempts=attempts,
                backoff_limit=backoff_limit,
                active_deadline_seconds=active_deadline_seconds,
                now=now,
            )
        return Observed(
            Phase.PENDING,
            Reason.RETRYING,
            f"attempt failed{_on_node(last, nodes)}: {failure_text(last)}; retrying from the newest checkpoint",
            attempts,
        )
    if job_status.get("failed"):
        # The failed pod is gone (deleted by hand, lost with its node, garbage-collected): the Job's
        # counter is all that is left of it, and the reason must not vanish with it.
        return Observed(
            Phase.PENDING,
            Reason.RETRYING,
            f"attempt failed: a training pod was deleted or lost before it finished "
            f"({job_status['failed']} failed so far); retrying from the newest checkpoint",
            attempts,
        )
    return Observed(Phase.PENDING, Reason.PODS_PENDING, "waiting for the training pods to start", attempts)


# ----------------------------------------------------------------------------------------- conditions


def bounded(text: str) -> str:
    """status.message cut to the CRD's bound (the API server refuses a longer one, and the whole write with it)."""
    return bounds.fit_text(text, bounds.max_length("message"))


def _condition(kind: str, status: S, reason: str, message: str, generation: int | None) -> Condition:
    return Condition(
        type=str(kind),
        status=status,
        reason=str(reason),
        message=bounds.fit_text(message, bounds.max_length("conditions", "message")),
        observed_generation=generation,
    )


def merge_conditions(old: list[dict], new: list[Condition], now: str) -> list[Condition]:
    """metav1.Condition semantics: lastTransitionTime changes only when status changes."""
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for cond in new:
        before = previous.get(cond.type)
        if before is not None and before.get("status") == cond.status and before.get("lastTransitionTime"):
            changed = before["lastTransitionTime"]
        else:
            changed = now
        merged.append(cond.model_copy(update={"last_transition_time": changed}))
    return merged


def desired_conditions(
    observed: Observed, old_conditions: list[dict], generation: int | None, valid_message: str = ""
) -> list[Condition]:
    phase, reason, message = observed.phase, observed.reason, observed.message
    g = generation
    conds = [_condition(C.VALIDATED, S.TRUE, Reason.SPEC_VALID, valid_message or "the spec is valid", g)]
    if phase == Phase.QUEUED:
        conds.append(_condition(C.QUEUED, S.TRUE, reason, message, g))
    else:
        conds.append(_condition(C.QUEUED, S.FALSE, Reason.ADMITTED, "", g))
    if phase == Phase.RUNNING:
        conds.append(_condition(C.RUNNING, S.TRUE, Reason.PODS_RUNNING, "the training pods are running", g))
    else:
        conds.append(_condition(C.RUNNING, S.FALSE, reason, message, g))
    had_suspended = any(c.get("type") == C.SUSPENDED for c in old_conditions or [])
    if phase == Phase.SUSPENDED:
        conds.append(_condition(C.SUSPENDED, S.TRUE, reason, message, g))
    elif had_suspended:
        conds.append(_condition(C.SUSPENDED, S.FALSE, Reason.RESUMED, "", g))
    if phase == Phase.SUCCEEDED:
        conds.append(_condition(C.SUCCEEDED, S.TRUE, Reason.TRAINING_COMPLETE, "training finished", g))
        conds.append(_condition(C.READY, S.TRUE, Reason.TRAINING_COMPLETE, "training finished", g))
    elif phase == Phase.FAILED:
        conds.append(_condition(C.FAILED, S.TRUE, reason, message, g))
        conds.append(_condition(C.READY, S.FALSE, reason, message, g))
        conds.append(_condition(C.STALLED, S.TRUE, reason, message, g))
    elif phase == Phase.SUSPENDED:
        # Neither Ready nor Reconciling: a suspended job is where its spec asks it to be, so kstatus (Flux
        # `wait: true`) reads it Current rather than InProgress forever (it takes Ready=False for work still
        # under way), while `kubectl wait --for=condition=Ready` still waits for the training to finish.
        pass
    else:
        conds.append(_condition(C.READY, S.FALSE, Reason.IN_PROGRESS, message, g))
        conds.append(_condition(C.RECONCILING, S.TRUE, reason, message, g))
    return conds


def invalid_conditions(message: str, generation: int | None, reason: str = Reason.SPEC_INVALID) -> list[Condition]:
    g = generation
    return [
        _condition(C.VALIDATED, S.FALSE, reason, message, g),
        _condition(C.FAILED, S.TRUE, reason, message, g),
        _condition(C.READY, S.FALSE, reason, message, g),
        _condition(C.STALLED, S.TRUE, reason, message, g),
    ]


# ----------------------------------------------------------------------------------------- status


_EVENT_TEXT = {
    Reason.JOB_CREATED: "created the training Job",
    Reason.PODS_PENDING: "waiting for the training pods to start",
    Reason.PODS_RUNNING: "training is running",
    Reason.TRAINING_COMPLETE: "training finished",
    Reason.RESUMED: "resumed",
}
_WARNING_REASONS = {
    Reason.USER_ERROR,
    Reason.BACKOFF_LIMIT_EXCEEDED,
    Reason.DEADLINE_EXCEEDED,
    Reason.RETRYING,
    Reason.PREEMPTED,
    Reason.SPEC_INVALID,
    Reason.JOB_MISSING,
    Reason.POLICY_DENIED,
    Reason.SECRET_NOT_FOUND,
    Reason.CHILD_REJECTED,
    Reason.DOES_NOT_FIT,
    Reason.QUEUE_NOT_FOUND,
    Reason.RESUME_SOURCE_NOT_FOUND,
}
# Reasons whose words become status.message: failures, and what keeps a job from starting that a user can fix.
_MESSAGE_REASONS = {Reason.RETRYING, Reason.PREEMPTED, Reason.SECRET_NOT_FOUND, Reason.QUEUE_NOT_FOUND, Reason.REOPENED}
# Of those, the ones that stop being true once the job moves on (a failure's words stay: it happened).
_HOLD_REASONS = {Reason.SECRET_NOT_FOUND, Reason.QUEUE_NOT_FOUND}


def is_warning(reason: str) -> bool:
    return reason in _WARNING_REASONS


def _event(reason: str, message: str) -> Event:
    kind = "Warning" if reason in _WARNING_REASONS else "Normal"
    return Event(kind, str(reason), message or _EVENT_TEXT.get(reason, str(reason)))


def phase_reason(old_status: dict) -> tuple[str | None, str | None]:
    """The (phase, reason) recorded last time: the Running condition carries the reason in every phase (for a job
    that never got a Job, SpecInvalid or PolicyDenied, the Failed condition does)."""
    conditions = old_status.get("conditions") or []
    running = next((c for c in conditions if c.get("type") == C.RUNNING), None)
    running = running or next((c for c in conditions if c.get("type") == C.FAILED), {})
    return old_status.get("phase"), running.get("reason")


def valid_message(notices: list[str] = ()) -> str:
    """The Validated condition's message: valid, and which settings will not take effect (validation.notices)."""
    if not notices:
        return "the spec is valid"
    return "the spec is valid; these settings will not take effect: " + "; ".join(notices)


def compute(ftj: dict, observed: Observed, job_name: str | None, now: str, notices: list[str] = ()) -> Outcome:
    """The operator's part of status for a valid FineTuneJob, and the Events for what changed.

    `ftj["status"]` is the operator's own record of what it wrote last (never trusted from the object alone:
    the reconciler hands over its record, see Reconciler._trusted)."""
    old = ftj.get("status") or {}
    generation = ftj.get("metadata", {}).get("generation")
    wanted = desired_conditions(observed, old.get("conditions") or [], generation, valid_message(notices))
    conditions = merge_conditions(old.get("conditions") or [], wanted, now)
    attempts = max(observed.attempts, old.get("attempts") or 0)
    start_time = old.get("startTime")
    # A finished job keeps its completionTime; one that is not (anymore: a re-opened job) has none.
    completion_time = old.get("completionTime") if observed.phase in FINISHED_PHASES else None
    message = old.get("message") or ""
    if observed.phase == Phase.RUNNING and not start_time:
        start_time = now
    if observed.phase in FINISHED_PHASES and not completion_time:
        completion_time = observed.completion_time or now
        start_time = start_time or completion_time
    if observed.phase == Phase.FAILED or observed.reason in _MESSAGE_REASONS:
        message = observed.message
    elif observed.phase == Phase.SUCCEEDED or phase_reason(old)[1] in _HOLD_REASONS:
        message = ""
    events = []
    old_attempts = old.get("attempts") or 0
    told = {Reason.RETRYING, Reason.PREEMPTED, Reason.REOPENED}
    if (
        observed.earlier_attempts < old_attempts < attempts
        and observed.phase not in FINISHED_PHASES
        and observed.reason not in told
        and phase_reason(old)[1] not in told
    ):
        # An attempt failed and the next one started between two looks: the story still needs the failure.
        failure = observed.last_failure or "a training pod was lost"
        message = f"attempt {old_attempts} failed: {failure}; retrying from the newest checkpoint"
        events.append(_event(Reason.RETRYING, message))
    # No SpecValid Event: JobCreated says as much, and an invalid spec is final (Failed, immutable).
    if phase_reason(old) != (str(observed.phase), str(observed.reason)):
        text = observed.message
        if observed.reason == Reason.PODS_RUNNING:
            text = f"training is running (attempt {attempts})"
        events.append(_event(observed.reason, text))
    status = Status(
        phase=observed.phase,
        observed_generation=generation,
        conditions=conditions,
        attempts=attempts,
        job_name=job_name,
        start_time=start_time,
        completion_time=completion_time,
        message=bounded(message),
    )
    return Outcome(status.to_wire(), events)


def announce_job(outcome: Outcome, job_name: str, recreated: bool) -> Outcome:
    """The Events of the pass that created the Job: JobCreated first. A PodsPending beside it says
    nothing new, so it becomes part of JobCreated's message (one Event, one API call, less per job)."""
    text = f"{'recreated' if recreated else 'created'} Job {job_name}"
    rest = [e for e in outcome.events if e.reason != Reason.PODS_PENDING]
    if len(rest) < len(outcome.events):
        text += "; waiting for the training pods to start"
    return Outcome(outcome.status, [_event(Reason.JOB_CREATED, text)] + rest)


def compute_invalid(ftj: dict, problems: list[str], now: str, reason: str = Reason.SPEC_INVALID) -> Outcome:
    """A job that never gets a Job: its spec is invalid, or (reason PolicyDenied) the platform's policy refuses it."""
    old = ftj.get("status") or {}
    generation = ftj.get("metadata", {}).get("generation")
    lead = "denied by the cluster's policy: " if reason == Reason.POLICY_DENIED else "invalid spec: "
    message = bounded(lead + "; ".join(problems))
    status = Status(
        phase=Phase.FAILED,
        observed_generation=generation,
        conditions=merge_conditions(old.get("conditions") or [], invalid_conditions(message, generation, reason), now),
        attempts=old.get("attempts") or 0,
        job_name=None,
        start_time=old.get("startTime"),
        completion_time=old.get("completionTime") or now,
        message=message,
    )
    events = [] if old.get("message") == message and old.get("phase") == Phase.FAILED else [_event(reason, message)]
    return Outcome(status.to_wire(), events)


def status_patch(old_status: dict, new_status: dict) -> dict:
    """A merge patch of the operator's keys that differ; {} when nothing changed (no write)."""
    patch = {}
    for key in OPERATOR_STATUS_KEYS:
        new, old = new_status.get(key), (old_status or {}).get(key)
        if new != old and not (new in (None, "") and old in (None, "")):
            patch[key] = None if new == "" else new  # removed, as if never written
    return patch


# A message's length in the form a status write takes after the API server refused it in full.
MINIMAL_MESSAGE_LENGTH = 256


def minimal(patch: dict) -> dict:
    """A status patch cut down, for an API server that refused it for a reason its answer does not name as a bound:
    the same keys, every message short."""
    out = dict(patch)
    if isinstance(out.get("message"), str):
        out["message"] = bounds.fit_text(out["message"], MINIMAL_MESSAGE_LENGTH)
    if isinstance(out.get("conditions"), list):
        out["conditions"] = [
            c | {"message": bounds.fit_text(c.get("message") or "", MINIMAL_MESSAGE_LENGTH)}
            if isinstance(c, dict)
            else c
            for c in out["conditions"]
        ]
    return out


def ttl_deadline(status: dict, ttl_seconds: int) -> dt.datetime | None:
    """When the children of a finished job are removed; None = never (ttl 0 or not finished)."""
    if ttl_seconds <= 0 or status.get("phase") not in FINISHED_PHASES:
        return None
    finished = parse_time(status.get("completionTime"))
    return finished + dt.timedelta(seconds=ttl_seconds) if finished else None


# ----------------------------------------------------------------------------------------- the plan


def plan_text(plan: Any) -> str:
    """The trainer's memory plan (status.plan) in words for the Planned Event, e.g. "fsdp over 4 GPUs, about 31.2 GiB
    per GPU of 80 GiB"; "" when the status holds no plan this release can read."""
    if not isinstance(plan, dict) or not plan:
        return ""
    try:
        parsed = Plan.model_validate(plan)
    except ValueError:
        return ""
    if parsed.strategy is None and parsed.per_gpu_gib is None:
        return ""
    words = str(parsed.strategy or "a strategy not named")
    if parsed.cpu_offload:
        words += " with CPU offload"
    if parsed.world_size:
        words += f" over {parsed.world_size} GPU{'' if parsed.world_size == 1 else 's'}"
    if parsed.per_gpu_gib is not None:
        words += f", about {parsed.per_gpu_gib:.1f} GiB per GPU"
        if parsed.gpu_memory_gib is not None:
            words += f" of {parsed.gpu_memory_gib:g} GiB"
    if parsed.fits is False:
        words += ": it does not fit"
    elif parsed.fits is None:
        words += " (the GPU's memory is not known: no verdict)"
    return words


# ----------------------------------------------------------------------------------------- trust


def canonical(status: dict | None) -> str:
    """The operator's keys of a status in one comparable form: what the operator wrote is told from what someone
    else (the trainer's token can patch the whole status) wrote since. Absent, null and "" are alike."""
    status = status or {}
    kept = {k: status[k] for k in OPERATOR_STATUS_KEYS if status.get(k) not in (None, "")}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode()


def operator_part(status: dict | None) -> dict:
    return {k: v for k, v in (status or {}).items() if k in OPERATOR_STATUS_KEYS}


OUTPUT_RESULT_KEYS = tuple(f.alias for f in OutputRefs.model_fields.values())


def under_root(uri: Any, root: str) -> bool:
    """Whether a URI the trainer reports lies under the job's output root: the root's own prefix, and no "." or ".."
    segment (percent-encoded or not) to climb out of it by a reader that normalises paths."""
    if not isinstance(uri, str) or not uri.startswith(root):
        return False
    segments = urllib.parse.unquote(uri[len(root) :]).split("/")
    return not any(segment in (".", "..") for segment in segments)


def untrusted_results(status: dict | None, root: str) -> dict:
    """A merge patch that takes back the results (output URIs, checkpoints) outside the job's output root: only
    the run's own output may be shown as its result. {} when every one is in place."""
    status = status or {}
    patch: dict[str, Any] = {}
    output = status.get("output") or {}
    if isinstance(output, dict):
        outside = {
            key: None for key in OUTPUT_RESULT_KEYS if output.get(key) is not None and not under_root(output[key], root)
        }
        if outside:
            patch["output"] = outside
    checkpoints = status.get("checkpoints")
    if isinstance(checkpoints, list):
        kept = [c for c in checkpoints if isinstance(c, dict) and under_root(c.get("uri"), root)]
        if len(kept) != len(checkpoints):
            patch["checkpoints"] = kept or None
    return patch
