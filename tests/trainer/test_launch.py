"""kubetune_trainer.launch: torchrun with the workers' exit code kept, so a user error under several
processes still fails the Job at once instead of being retried."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from kubetune.api.constants import ExitCode
from kubetune_trainer.launch import exit_code_for


def test_exit_code_mapping():
    assert exit_code_for(0, "") == ExitCode.OK
    assert exit_code_for(1, "UserError: data.jsonl: line 2: missing column 'text'") == ExitCode.USER_ERROR
    assert exit_code_for(1, "InfraError: s3 unreachable") == ExitCode.INFRA_ERROR
    assert exit_code_for(1, "Preempted: checkpoint step-8 saved") == ExitCode.PREEMPTED
    assert exit_code_for(1, "") == 1  # no reason: torchrun's code, retried by the Job
    assert exit_code_for(-9, "something else") == -9


def test_user_error_under_torchrun_exits_10(tiny_llama_dir, write_job, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"body": "no text column"}) + "\n")
    job = write_job(tiny_llama_dir, [{"uri": f"file://{data}", "format": "text"}])
    log = tmp_path / "termination-log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, KUBETUNE_TERMINATION_LOG=str(log), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune_trainer.launch",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "kubetune_trainer",
            str(job),
            "--output",
            f"file://{tmp_path}/out/",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == ExitCode.USER_ERROR, proc.stderr[-3000:]
    reason = log.read_text()
    assert reason.startswith("UserError:") and "missing column 'text'" in reason
