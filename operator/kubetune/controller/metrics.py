"""Prometheus metrics of the operator: FineTuneJobs by phase, reconcile latency and errors, and per FineTuneJob what
its status says of the training (progress, loss, throughput, ETA, attempts, phase).

The per-job series come from the FineTuneJob's status as the watch delivers it (Reconciler.finetunejob_changed hands
every event to `Metrics.observe`, the trainer's progress reports included: those call for no reconcile pass), held as
one small record per job and turned into samples only when Prometheus scrapes (`JobCollector`). An event costs one
dict assignment; a deleted job's series go with its DELETED event, or with the resync that finds it gone
(`set_phase(..., None)`).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from kubetune.api.constants import ConditionStatus, ConditionType, Phase

JOB_LABELS = ("namespace", "name")
# The conditions that change, all in the same pass, whenever the phase does (status.desired_conditions): the newest
# lastTransitionTime among them is when the job entered its phase, also for Pending, which has no condition of its
# own (its Running or Queued condition turned False then).
PHASES = frozenset(str(phase) for phase in Phase)
PHASE_CONDITIONS = (
    ConditionType.QUEUED,
    ConditionType.RUNNING,
    ConditionType.SUSPENDED,
    ConditionType.SUCCEEDED,
    ConditionType.FAILED,
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What one FineTuneJob's series say, read from its status when the watch last carried it."""

    phase: str | None
    reason: str
    phase_since: float | None  # Unix time the job entered its phase
    attempts: float | None
    step: float
    planned_steps: float | None
    loss: float | None
    eval_loss: float | None
    reward: float | None
    tokens_per_second: float | None
    eta_seconds: float | None
    technique: str
    objective: str

    @property
    def running(self) -> bool:
        return self.phase == Phase.RUNNING

    @property
    def progress_ratio(self) -> float | None:
        return min(self.step / self.planned_steps, 1.0) if self.planned_steps else None


@dataclass(frozen=True)
class JobGauge:
    """One per-job gauge: its name, its help text (docs/operator.md's metrics table says the same), and its value
    for a job (None: no sample)."""

    name: str
    help: str
    value: Callable[[JobRecord], float | None]


# Throughput and ETA only while the job runs: a finished or waiting job's last report is no rate of now, and a sum of
# tokens/s over jobs must count the running ones only. Loss and progress stay: they are the job's result.
JOB_GAUGES = (
    JobGauge(
        "kubetune_finetunejob_progress_ratio",
        "Training progress, step / planned steps (0 to 1)",
        lambda r: r.progress_ratio,
    ),
    JobGauge("kubetune_finetunejob_step", "Optimizer steps done (0 until the trainer reports)", lambda r: r.step),
    JobGauge("kubetune_finetunejob_planned_steps", "Optimizer steps the run plans", lambda r: r.planned_steps),
    JobGauge("kubetune_finetunejob_loss", "Latest training loss", lambda r: r.loss),
    JobGauge("kubetune_finetunejob_eval_loss", "Latest evaluation loss", lambda r: r.eval_loss),
    JobGauge("kubetune_finetunejob_reward", "Latest mean reward (rlhf policy stage)", lambda r: r.reward),
    JobGauge(
        "kubetune_finetunejob_tokens_per_second",
        "Training throughput in tokens per second, while running",
        lambda r: r.tokens_per_second if r.running else None,
    ),
    JobGauge(
        "kubetune_finetunejob_eta_seconds",
        "Estimated seconds to completion, while running",
        lambda r: r.eta_seconds if r.running else None,
    ),
    JobGauge("kubetune_finetunejob_attempts", "Training attempts so far (retries + 1)", lambda r: r.attempts),
    JobGauge(
        "kubetune_finetunejob_phase_transition_timestamp_seconds",
        "Unix time the job entered its current phase (from its conditions' lastTransitionTime)",
        lambda r: r.phase_since,
    ),
)
PHASE_METRIC = "kubetune_finetunejob_phase"
PHASE_HELP = "The job's current phase (one series per job, value 1), with the reason its conditions give"
INFO_METRIC = "kubetune_finetunejob"  # exposed as kubetune_finetunejob_info
INFO_HELP = "A FineTuneJob's technique and objective (value 1), to join on namespace and name"


def _number(value: Any) -> float | None:
    """A finite number from the status, else None (a missing or odd value gives no sample, never a wrong one)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _unix_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _phase_and_since(status: Mapping) -> tuple[str, float | None]:
    """The reason of the job's phase and when it entered it, from its conditions: the condition named after the
    phase when True, else the Running condition (it carries the reason in every other phase)."""
    phase = status.get("phase")
    reason, since, running_reason = "", None, ""
    for condition in status.get("conditions") or ():
        if not isinstance(condition, Mapping) or condition.get("type") not in PHASE_CONDITIONS:
            continue
        changed = _unix_time(condition.get("lastTransitionTime"))
        if changed is not None and (since is None or changed > since):
            since = changed
        if condition.get("type") == phase and condition.get("status") == ConditionStatus.TRUE:
            reason = str(condition.get("reason") or "")
        elif condition.get("type") == ConditionType.RUNNING:
            running_reason = str(condition.get("reason") or "")
    return reason or running_reason, since


def job_record(ftj: Mapping) -> JobRecord:
    """A FineTuneJob's series, from its status (the operator's keys and the trainer's reports) and its spec."""
    status = ftj.get("status") or {}
    spec = ftj.get("spec") or {}
    progress = status.get("progress") or {}
    reported = status.get("metrics") or {}
    reason, since = _phase_and_since(status)
    phase = status.get("phase")
    return JobRecord(
        phase=phase if phase in PHASES else None,
        reason=reason,
        phase_since=since,
        attempts=_number(status.get("attempts")),
        step=_number(progress.get("step")) or 0.0,
        planned_steps=_number(progress.get("totalSteps")) or None,
        loss=_number(reported.get("loss")),
        eval_loss=_number(reported.get("evalLoss")),
        reward=_number(reported.get("reward")),
        tokens_per_second=_number(reported.get("tokensPerSecond")),
        eta_seconds=_number(progress.get("etaSeconds")),
        technique=str(spec.get("technique") or ""),
        objective=str(spec.get("objective") or ""),
    )


class JobCollector(Collector):
    """Per-job samples built at scrape time from the latest record of each job (one pass over the records, which a
    scrape must emit anyway); nothing is read from the API here."""

    def __init__(self, records: dict[tuple[str, str], JobRecord], lock: threading.Lock):
        self._records = records
        self._lock = lock

    def describe(self) -> Iterator:
        yield InfoMetricFamily(INFO_METRIC, INFO_HELP, labels=[*JOB_LABELS, "technique", "objective"])
        yield GaugeMetricFamily(PHASE_METRIC, PHASE_HELP, labels=[*JOB_LABELS, "phase", "reason"])
        for gauge in JOB_GAUGES:
            yield GaugeMetricFamily(gauge.name, gauge.help, labels=JOB_LABELS)

    def collect(self) -> Iterator:
        with self._lock:
            jobs = list(self._records.items())
        # One family at a time (the exposition consumes each before the next is built): at 10,000 jobs the
        # samples of one family are alive at once, not those of all.
        info = InfoMetricFamily(INFO_METRIC, INFO_HELP, labels=[*JOB_LABELS, "technique", "objective"])
        for (namespace, name), record in jobs:
            info.add_metric([namespace, name, record.technique, record.objective], {})
        yield info
        phases = GaugeMetricFamily(PHASE_METRIC, PHASE_HELP, labels=[*JOB_LABELS, "phase", "reason"])
        for (namespace, name), record in jobs:
            if record.phase is not None:
                phases.add_metric([namespace, name, record.phase, record.reason], 1)
        yield phases
        for gauge in JOB_GAUGES:
            family = GaugeMetricFamily(gauge.name, gauge.help, labels=JOB_LABELS)
            for key, record in jobs:
                value = gauge.value(record)
                if value is not None:
                    family.add_metric(key, value)
            yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.jobs = Gauge(
            "kubetune_finetunejobs", "FineTuneJobs known to the operator, by phase", ["phase"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time to reconcile one FineTuneJob",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors_total",
            "Reconciles that failed and will be retried",
            ["reason"],
            registry=self.registry,
        )
        # The shared model cache (modelcache.py): each job it serves counts once, when its training Job is made.
        self.model_cache_jobs = Counter(
            "kubetune_model_cache_jobs",
            "Jobs whose model the cache served: result=hit (the entry was complete when "
            "the job asked) or miss (the job waited for its population)",
            ["result"],
            registry=self.registry,
        )
        self.model_cache_served_bytes = Counter(
            "kubetune_model_cache_served_bytes",
            "Bytes of model the cache served: each job counts its entry's size "
            "once (a multi-node job's nodes each read it)",
            registry=self.registry,
        )
        self.model_cache_sources = Counter(
            "kubetune_model_cache_sources",
            "Sources other than the model the cache served to a training Job: source=dataset (an hf:// dataset "
            "or evaluation set) or reward-model, result=hit or miss; each Job made counts each of its sources once",
            ["source", "result"],
            registry=self.registry,
        )
        self.model_cache_populations = Counter(
            "kubetune_model_cache_populations",
            "Population Jobs that ended: succeeded, user_error (exit 10: the "
            "model cannot be had) or failed (their retries ran out on infrastructure errors)",
            ["outcome"],
            registry=self.registry,
        )
        self.model_cache_populated_bytes = Counter(
            "kubetune_model_cache_populated_bytes",
            "Bytes the populations fetched from the Hub into the cache (from their JSON results)",
            registry=self.registry,
        )
        self.model_cache_evictions = Counter(
            "kubetune_model_cache_evictions",
            "Entries evicted to keep the cache under its size cap",
            registry=self.registry,
        )
        self.model_cache_evicted_bytes = Counter(
            "kubetune_model_cache_evicted_bytes", "Bytes of the entries evicted", registry=self.registry
        )
        self.model_cache_stored_bytes = Gauge(
            "kubetune_model_cache_stored_bytes",
            "Bytes of complete entries in the cache, at the last eviction pass",
            registry=self.registry,
        )
        for result in ("hit", "miss"):  # every series from the start: rate() and increase() see the first one
            self.model_cache_jobs.labels(result=result)
        for outcome in ("succeeded", "user_error", "failed"):
            self.model_cache_populations.labels(outcome=outcome)
        for source in ("dataset", "reward-model"):
            for result in ("hit", "miss"):
                self.model_cache_sources.labels(source=source, result=result)
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {str(phase): 0 for phase in Phase}
        self._lock = threading.Lock()
        # Written on the operator's event loop, read by the scrape's thread: every access holds the lock.
        self._job_records: dict[tuple[str, str], JobRecord] = {}
        self._records_lock = threading.Lock()
        self.registry.register(JobCollector(self._job_records, self._records_lock))
        for phase in Phase:
            self.jobs.labels(phase=str(phase)).set(0)

    def observe(self, namespace: str, name: str, ftj: Mapping | None) -> None:
        """A watch event of one FineTuneJob: its series now say what its status says; None (deleted): they go, and
        the job leaves the phase counts."""
        if ftj is None:
            self.set_phase(namespace, name, None)
            return
        record = job_record(ftj)
        with self._records_lock:
            self._job_records[(namespace, name)] = record

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Record one job's phase as a reconcile pass found it; the gauge moves by one for the old and the new phase
        (O(1) per call). None: the job is gone, and its per-job series with it."""
        if phase is None:
            with self._records_lock:
                self._job_records.pop((namespace, name), None)
        with self._lock:
            old = self._phases.pop((namespace, name), None)
            if phase is not None:
                self._phases[(namespace, name)] = str(phase)
            if old == (str(phase) if phase is not None else None):
                return
            if old is not None:
                self._counts[old] -= 1
                self.jobs.labels(phase=old).set(self._counts[old])
            if phase is not None:
                self._counts[str(phase)] = self._counts.get(str(phase), 0) + 1
                self.jobs.labels(phase=str(phase)).set(self._counts[str(phase)])

    def recorded(self) -> set[tuple[str, str]]:
        """The (namespace, name) of every job with a phase or series recorded."""
        with self._lock:
            known = set(self._phases)
        with self._records_lock:
            return known | set(self._job_records)

    def phase_counts(self) -> dict[str, int]:
        with self._lock:
            return {phase: count for phase, count in self._counts.items() if count}

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Serve /metrics on a port in a daemon thread; returns the HTTP server (call .shutdown())."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
