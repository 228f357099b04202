"""`kubetune operator`'s log answers "what happened to my job": one line per action (Job created, phase change,
retry, failure, invalid spec, deletion) with the job's namespace and name and a reason, as text or as JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.controller import config
from kubetune.testing.emulator import OPERATOR_TOKEN, Fault
from kubetune.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


def test_one_line_per_action_with_the_job_and_a_reason(user, sim, emulator, operator_log):
    ns = user.ns
    user.apply("told", backoffLimit=1)
    wait_for(lambda: sim.kube.get("Job", ns, "told"), what="the Job")
    sim.start(ns, "told")
    user.wait_phase("told", "Running")
    sim.fail(ns, "told", 20, "S3 upload timed out")  # retried: a new pod
    wait_for(lambda: "Retrying" in operator_log.reasons(ns, "told"), what="the retry logged")
    sim.fail(ns, "told", 20, "S3 upload timed out again")  # over backoffLimit: the job fails
    user.wait_phase("told", "Failed")
    wait_for(lambda: "BackoffLimitExceeded" in operator_log.reasons(ns, "told"), what="the failure logged")
    lines = operator_log.lines(ns, "told")
    assert [reason for _, reason, _ in lines[:3]] == ["JobCreated", "PodsRunning", "Retrying"]
    level, reason, message = lines[-1]
    assert (level, reason) == ("WARNING", "BackoffLimitExceeded") and "S3 upload timed out again" in message
    assert lines[0][2] == "JobCreated: created Job told; waiting for the training pods to start"

    user.apply("typo", hyperparameters={"learningRate": 5.0})
    user.wait_phase("typo", "Failed")
    wait_for(lambda: operator_log.reasons(ns, "typo") == ["SpecInvalid"], what="the invalid spec logged")
    assert "spec.hyperparameters.learningRate" in operator_log.lines(ns, "typo")[0][2]

    # A pass that fails is retried, and says when.
    emulator.inject(
        Fault(lambda c: c.user == "operator" and c.resource == f"{PLURAL}/status" and c.name == "flaky", 500, times=1)
    )
    user.apply("flaky")
    wait_for(lambda: "JobCreated" in operator_log.reasons(ns, "flaky"), timeout=30, what="the retried pass")
    retry = next(m for _, reason, m in operator_log.lines(ns, "flaky") if reason == "ReconcileError")
    assert "retrying in 5 s" in retry

    user.crd.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "told")
    wait_for(lambda: "Deleted" in operator_log.reasons(ns, "told"), what="the deletion logged")
    # Every line names its job: a log collector can select one job's story.
    for record in operator_log.records:
        if getattr(record, "reason", None):
            assert record.k8s_ref["namespace"] and record.k8s_ref["name"] and record.k8s_ref["kind"] == "FineTuneJob"


def test_the_log_format_setting():
    assert config.from_env({"KUBETUNE_LOG_FORMAT": "json"}).log_format == "json"
    assert config.from_env({}).log_format == "text"
    with pytest.raises(ValueError, match="KUBETUNE_LOG_FORMAT must be one of text, json"):
        config.from_env({"KUBETUNE_LOG_FORMAT": "xml"})


def test_json_lines_from_the_operator_process(user, sim, emulator, operator, tmp_path: Path):
    """`kubetune operator --log-format json`, its own process, as the Deployment runs it."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emulator.kubeconfig(OPERATOR_TOKEN)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "KUBETUNE_"))}
    env.update(
        KUBECONFIG=str(kubeconfig),
        KUBETUNE_DEFAULT_OUTPUT_URI="s3://kubetune-out/runs/",
        KUBETUNE_METRICS_PORT="0",
        KUBETUNE_RESYNC_SECONDS="1",
    )
    log = tmp_path / "operator.log"
    operator.stop()  # one operator at a time
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubetune.cli",
            "operator",
            "--liveness",
            "",
            "--standalone",
            "--namespace",
            user.ns,
            "--log-format",
            "json",
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        user.apply("structured")
        wait_for(lambda: sim.kube.get("Job", user.ns, "structured"), timeout=60, what="the Job")
        sim.start(user.ns, "structured")
        user.wait_phase("structured", "Running", timeout=30)

        def ours() -> list[dict]:
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            return [line for line in lines if (line.get("object") or {}).get("name") == "structured"]

        lines = wait_for(lambda: len(ours()) >= 2 and ours(), what="two JSON lines about the job")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        operator.start()
    assert [line["reason"] for line in lines[:2]] == ["JobCreated", "PodsRunning"]
    assert lines[0]["object"]["namespace"] == user.ns and lines[0]["severity"] == "info"
    assert lines[0]["message"].startswith("JobCreated: created Job structured") and lines[0]["timestamp"]
    # Every line of the process is JSON, kopf's own included.
    assert all(line.startswith("{") for line in log.read_text().splitlines() if line.strip())
