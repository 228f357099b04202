"""metrics.py: the operator's Prometheus metrics."""

from __future__ import annotations

import urllib.request

from kubetune.controller.metrics import Metrics


def test_metrics_count_jobs_by_phase_and_serve_them():
    metrics = Metrics()
    metrics.set_phase("a", "x", "Running")
    metrics.set_phase("a", "y", "Running")
    metrics.set_phase("a", "y", "Failed")
    metrics.reconcile_seconds.observe(0.01)
    server = metrics.serve(0, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'kubetune_finetunejobs{phase="Running"} 1.0' in text
    assert 'kubetune_finetunejobs{phase="Failed"} 1.0' in text
    assert "kubetune_reconcile_duration_seconds_count 1.0" in text
    metrics.set_phase("a", "y", "Failed")  # the same phase again counts once
    metrics.set_phase("a", "x", None)  # deleted
    assert metrics.phase_counts() == {"Failed": 1}
    assert metrics.registry.get_sample_value("kubetune_finetunejobs", {"phase": "Running"}) == 0
