"""The Reconciler's retry backoff, with an API that fails on demand (no operator, no emulator)."""

from __future__ import annotations

import pytest

from kubetune.controller.config import OperatorConfig
from kubetune.controller.reconciler import RETRY_MAX_SECONDS, RETRY_SECONDS, Reconciler


class FlakyKube:
    """Answers every GET of the FineTuneJob with a failure while `failing`, else with 'not found'."""

    def __init__(self):
        self.failing = True

    def get(self, kind, namespace, name):
        if self.failing:
            raise ConnectionError("the API server went away")
        return None  # deleted: nothing to do


def test_failed_passes_are_retried_with_a_doubling_delay_reset_by_a_success():
    kube = FlakyKube()
    reconciler = Reconciler(kube, OperatorConfig())
    delays = []
    for _ in range(9):
        with pytest.raises(ConnectionError):
            reconciler.reconcile("team", "bot")
        delays.append(reconciler.retry_later("team", "bot"))
    assert delays[:4] == [RETRY_SECONDS, 2 * RETRY_SECONDS, 4 * RETRY_SECONDS, 8 * RETRY_SECONDS]
    assert max(delays) == RETRY_MAX_SECONDS and delays[-1] == RETRY_MAX_SECONDS
    assert len(reconciler._wakeups) == 9  # each failure scheduled its retry

    kube.failing = False
    assert reconciler.reconcile("team", "bot") is None
    kube.failing = True
    with pytest.raises(ConnectionError):
        reconciler.reconcile("team", "bot")
    assert reconciler.retry_later("team", "bot") == RETRY_SECONDS  # a success starts the count again
