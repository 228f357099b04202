"""SIGTERM: the pod is being stopped (node drain, Kueue preemption, suspend). During training the Trainer saves a
checkpoint at the next step end and the run exits 143 once it is uploaded; outside training there is nothing to
save and the run exits at once. A watchdog ends the process within the grace period whatever happens."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from kubetune.api.constants import ExitCode

log = logging.getLogger("kubetune.preemption")


class Preempted(BaseException):
    """SIGTERM: the pod is being stopped (node drain, Kueue preemption, suspend). BaseException so
    that no `except Exception` in a library swallows it."""


class Preemption:
    """SIGTERM -> ask the Trainer to save and stop at the next step end, then exit 143.

    Outside training (downloads, data loading) there is nothing to save: exit at once. A watchdog
    makes sure the process is gone within the grace period even if a step hangs.
    """

    def __init__(self) -> None:
        self.requested = False
        self.training = False
        self.deadline: float | None = None
        self.on_timeout = None  # called by the watchdog just before os._exit (writes the termination log)

    @property
    def grace_seconds(self) -> float:
        return float(os.environ.get("KUBETUNE_GRACE_SECONDS", "25"))

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return
        self.requested = True
        self.deadline = time.monotonic() + self.grace_seconds
        timer = threading.Timer(max(0.5, self.grace_seconds - 1.0), self._watchdog)
        timer.daemon = True
        timer.start()
        log.warning("SIGTERM: saving a checkpoint and stopping (grace %.0fs)", self.grace_seconds)
        if not self.training:
            raise Preempted("stopped (SIGTERM) before training started; nothing to save")

    def _watchdog(self) -> None:
        if self.on_timeout is not None:
            try:
                self.on_timeout()
            except Exception:  # noqa: BLE001 - we are exiting anyway
                pass
        os._exit(ExitCode.PREEMPTED)


PREEMPTION = Preemption()
