"""`python -m kubetune_trainer.launch TORCHRUN_ARGS...`: torchrun, with the workers' exit code kept.

torchrun exits 1 whenever a worker fails, so a user error (exit 10: do not retry) would look like any
crash and be retried until backoffLimit. Every worker writes its one-line reason to the termination log
("UserError: ...", "InfraError: ...", ...); this launcher runs torchrun, and on failure turns that
reason back into the exit code the operator's podFailurePolicy keys on. SIGTERM and SIGINT are passed
on to torchrun, which forwards them to the workers (they save a checkpoint and exit 143).
"""

from __future__ import annotations

import signal
import subprocess
import sys

from kubetune.api.constants import ExitCode
from kubetune_trainer.entrypoint import termination_log_path, write_termination_log

# The first word of the termination message, as the entrypoint writes it.
REASON_CODES = {
    "UserError": ExitCode.USER_ERROR,
    "InfraError": ExitCode.INFRA_ERROR,
    "InternalError": ExitCode.INTERNAL_ERROR,
    "Preempted": ExitCode.PREEMPTED,
}


def exit_code_for(torchrun_code: int, reason: str) -> int:
    """The pod's exit code: the workers' classified failure, else torchrun's own code."""
    if torchrun_code == 0:
        return ExitCode.OK
    head = reason.split(":", 1)[0].strip()
    return REASON_CODES.get(head, torchrun_code)


def _read_reason(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log_path = termination_log_path(None)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv])

    def forward(signum, _frame):
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    reason = _read_reason(log_path)
    result = exit_code_for(code, reason)
    if code != 0 and not reason:
        # A worker died without a word (OOM kill, segfault): say so, and let the Job retry.
        write_termination_log(
            log_path, f"InfraError: a training process died (torchrun exit code {code}); see the pod log"
        )
    return result


if __name__ == "__main__":
    sys.exit(main())
