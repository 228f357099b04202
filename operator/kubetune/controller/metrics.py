"""Prometheus metrics of the operator: FineTuneJobs by phase, reconcile latency, reconcile errors."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api.constants import Phase


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.jobs = Gauge("kubetune_finetunejobs", "FineTuneJobs known to the operator, by phase", ["phase"],
                          registry=self.registry)
        self.reconcile_seconds = Histogram(
            "kubetune_reconcile_duration_seconds", "Time to reconcile one FineTuneJob",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=self.registry)
        self.reconcile_errors = Counter("kubetune_reconcile_errors_total", "Reconciles that failed and will be retried",
                                        ["reason"], registry=self.registry)
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {str(phase): 0 for phase in Phase}
        self._lock = threading.Lock()
        for phase in Phase:
            self.jobs.labels(phase=str(phase)).set(0)

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Record one job's phase; the gauge moves by one for the old and the new phase (O(1) per call)."""
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
        """The (namespace, name) of every job with a phase recorded."""
        with self._lock:
            return set(self._phases)

    def phase_counts(self) -> dict[str, int]:
        with self._lock:
            return {phase: count for phase, count in self._counts.items() if count}

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Serve /metrics on a port in a daemon thread; returns the HTTP server (call .shutdown())."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
