"""Trainer faults: SIGKILL at random steps, SIGTERM and SIGKILL during a checkpoint upload, and a flaky
S3 (dropped connections, 500/503, cut-off bodies, slow answers) through a fault-injecting proxy in front
of moto. Every run is compared with one uninterrupted reference run: same final weights, every step
logged once, every checkpoint marker backed by the files it lists."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest
from faultlib import SEED, s3_client, s3_env
from s3proxy import FaultPlan, Rule, S3FaultProxy
from trainerlib import (
    INTERVAL,
    STEPS,
    broken_markers,
    checkpoint_steps,
    keys,
    manifest,
    max_difference,
    metric_steps,
    read,
    start,
    weights,
    write_manifest,
)

from kubetune.api.constants import ExitCode

ATOL = 1e-5
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tiny_model, corpus, tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("fault-job") / "job.yaml", manifest(tiny_model, corpus))


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """The final weights of one uninterrupted run (in-process, to a local folder)."""
    from kubetune_trainer.entrypoint import main

    out = tmp_path_factory.mktemp("fault-reference")
    assert main([str(job), "--output", f"file://{out}/"]) == 0
    return weights((out / "final" / "model.safetensors").read_bytes())


def _check_finished_run(client, bucket, prefix, reference) -> tuple[int, int, float]:
    """Asserts what every surviving run must hold; returns (duplicate steps, leaked folders, max diff)."""
    stored = keys(client, bucket, prefix)
    assert f"{prefix}final/model.safetensors" in stored
    diff = max_difference(weights(read(client, bucket, f"{prefix}final/model.safetensors")), reference)
    assert diff <= ATOL, f"final weights differ from the uninterrupted run by {diff}"
    steps = metric_steps(client, bucket, prefix)
    duplicates = len(steps) - len(set(steps))
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), f"metrics.jsonl steps: {steps}"
    assert duplicates == 0, f"duplicate steps in metrics.jsonl: {steps}"
    assert broken_markers(client, bucket, prefix) == []
    complete, incomplete = checkpoint_steps(client, bucket, prefix)
    assert complete[-1] == STEPS and len(complete) <= 2, complete
    assert incomplete == [], f"half-written checkpoints left behind: {incomplete}"
    return duplicates, len(incomplete), diff


def test_sigkill_at_random_steps_resumes_from_the_newest_complete_checkpoint(
    job, reference, moto_url, bucket, tmp_path, rng, ledger
):
    client = s3_client(moto_url)
    output, prefix = f"s3://{bucket}/run/", "run/"
    env = s3_env(moto_url, KUBETUNE_DEBUG_STEP_SLEEP="0.3")
    kills, worst_lost, resumed = 0, 0, []
    newest = 0
    for attempt in range(3):
        target = rng.randint(newest + 2, STEPS - 1)
        run = start(job, output, tmp_path, env, f"attempt-{attempt}")
        run.wait_for_step(target)
        run.kill(signal.SIGKILL)
        kills += 1
        resumed.append(run.resumed_from() or 0)
        assert resumed[-1] == newest, f"attempt {attempt} resumed from {resumed[-1]}, newest complete was {newest}"
        complete, _ = checkpoint_steps(client, bucket, prefix)
        newest = complete[-1] if complete else 0
        killed_at = run.last_step()
        lost = killed_at - newest
        worst_lost = max(worst_lost, lost)
        reported = [int(s) for s in re.findall(r"checkpoint step-(\d+) complete", run.text())]
        # Every checkpoint the trainer called complete before the kill is there and is what resumes next.
        assert newest >= max(reported, default=0), (
            f"the trainer reported step-{max(reported)} complete; S3 has {complete}"
        )
        assert newest % INTERVAL == 0 and newest <= killed_at, (newest, killed_at)
        # An upload overlaps one step at most (the next step waits for it), so even a SIGKILL loses at
        # most the interval, however slow the store.
        assert lost <= INTERVAL, (
            f"killed after step {killed_at} (target {target}); newest complete checkpoint "
            f"step-{newest}: {lost} steps lost > interval {INTERVAL}"
        )
        assert "final/model.safetensors" not in "".join(keys(client, bucket, prefix))
    last = start(job, output, tmp_path, env, "attempt-last")
    assert last.finish() == 0, last.text()[-3000:]
    assert last.resumed_from() == newest
    duplicates, leaks, diff = _check_finished_run(client, bucket, prefix, reference)
    ledger.record(
        "trainer: SIGKILL at random steps",
        faults=kills,
        runs=1,
        survived=1,
        steps_lost=worst_lost,
        duplicates=duplicates,
        leaks=leaks,
        note=f"resumed from {resumed[1:] + [newest]}; max diff {diff:.1e}",
    )


def _upload_trap(step: int, after_puts: int):
    """A proxy rule that slows every PUT of checkpoints/step-<step>/ and fires an Event after `after_puts`."""
    fired, seen, lock = threading.Event(), [0], threading.Lock()

    def on_match(method, path):
        with lock:
            seen[0] += 1
            if seen[0] >= after_puts:
                fired.set()

    rule = Rule(
        lambda method, path: method == "PUT" and f"/checkpoints/step-{step}/" in path,
        "slow",
        delay=0.4,
        on_match=on_match,
    )
    return rule, fired


def test_sigkill_during_a_checkpoint_upload_never_loads_the_half_written_one(
    job, reference, moto_url, bucket, tmp_path, ledger
):
    client = s3_client(moto_url)
    proxy = S3FaultProxy(moto_url).start()
    try:
        rule, fired = _upload_trap(step=2 * INTERVAL, after_puts=3)
        proxy.rules.append(rule)
        output, prefix = f"s3://{bucket}/run/", "run/"
        env = s3_env(proxy.url, KUBETUNE_DEBUG_STEP_SLEEP="0.3")
        run = start(job, output, tmp_path, env, "cut-upload")
        assert fired.wait(180), run.text()[-3000:]
        run.kill(signal.SIGKILL)
        complete, incomplete = checkpoint_steps(client, bucket, prefix)
        assert complete == [INTERVAL] and incomplete == [2 * INTERVAL], (complete, incomplete)
        lost = run.last_step() - INTERVAL
        # The step after step-6 waits for its (slowed) upload: the kill loses the interval, not more.
        assert run.last_step() == 2 * INTERVAL and lost == INTERVAL, run.text()[-2000:]
        proxy.rules.clear()
        resume = start(job, output, tmp_path, env, "after-cut")
        assert resume.finish() == 0, resume.text()[-3000:]
        assert resume.resumed_from() == INTERVAL, "the half-written step-6 checkpoint must not be loaded"
        duplicates, leaks, diff = _check_finished_run(client, bucket, prefix, reference)
    finally:
        proxy.stop()
    ledger.record(
        "trainer: SIGKILL mid checkpoint upload",
        faults=1,
        runs=1,
        survived=1,
        steps_lost=lost,
        duplicates=duplicates,
        leaks=leaks,
        note="step-6 cut after 3 files; resumed from step-3",
    )


def test_sigterm_during_a_checkpoint_upload_finishes_it_saves_again_and_exits_143(
    job, reference, moto_url, bucket, tmp_path, ledger
):
    client = s3_client(moto_url)
    proxy = S3FaultProxy(moto_url).start()
    try:
        rule, fired = _upload_trap(step=INTERVAL, after_puts=1)
        proxy.rules.append(rule)
        output, prefix = f"s3://{bucket}/run/", "run/"
        env = s3_env(proxy.url, KUBETUNE_DEBUG_STEP_SLEEP="0.3", KUBETUNE_GRACE_SECONDS="30")
        run = start(job, output, tmp_path, env, "sigterm")
        assert fired.wait(180), run.text()[-3000:]
        at_signal = run.last_step()
        started = time.time()
        rc = run.kill(signal.SIGTERM)
        assert rc == ExitCode.PREEMPTED, run.text()[-3000:]
        assert time.time() - started < 30
        complete, incomplete = checkpoint_steps(client, bucket, prefix)
        assert INTERVAL in complete and incomplete == [], (complete, incomplete)
        assert broken_markers(client, bucket, prefix) == []
        lost = run.last_step() - complete[-1]
        assert lost == 0, f"SIGTERM with grace left: the step it stopped at ({run.last_step()}) is saved ({complete})"
        assert run.termination_log.read_text().startswith(f"Preempted: checkpoint step-{complete[-1]} saved")
        proxy.rules.clear()
        resume = start(job, output, tmp_path, env, "after-sigterm")
        assert resume.finish() == 0, resume.text()[-3000:]
        assert resume.resumed_from() == complete[-1]
        duplicates, leaks, diff = _check_finished_run(client, bucket, prefix, reference)
    finally:
        proxy.stop()
    ledger.record(
        "trainer: SIGTERM mid checkpoint upload",
        faults=1,
        runs=1,
        survived=1,
        steps_lost=lost,
        duplicates=duplicates,
        leaks=leaks,
        note=f"signal at step {at_signal}; saved step-{complete[-1]}",
    )


# --------------------------------------------------------------------------- flaky S3


def test_training_through_a_flaky_s3_loses_nothing(job, reference, moto_url, bucket, tmp_path, monkeypatch, ledger):
    from kubetune_trainer.entrypoint import main

    proxy = S3FaultProxy(
        moto_url, seed=SEED, plan=FaultPlan(drop=0.1, error=0.1, truncate=0.15, slow=0.1, slow_seconds=0.2)
    ).start()
    client = s3_client(moto_url)
    try:
        for key, value in s3_env(proxy.url).items():
            if key.startswith(("AWS_", "KUBETUNE_")):
                monkeypatch.setenv(key, value)
        # The data comes through the proxy too.
        client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=_corpus_bytes(job))
        faulty_job = tmp_path / "job.yaml"
        doc = _load(job)
        doc["spec"]["datasets"][0]["uri"] = f"s3://{bucket}/data/train.jsonl"
        write_manifest(faulty_job, doc)
        rc = main([str(faulty_job), "--output", f"s3://{bucket}/run/", "--termination-log", str(tmp_path / "term")])
        assert rc == 0, (tmp_path / "term").read_text() if (tmp_path / "term").exists() else rc
        duplicates, leaks, diff = _check_finished_run(client, bucket, "run/", reference)
    finally:
        proxy.stop()
    faults = proxy.injected - proxy.faults["slow"]
    assert faults >= 5, f"too few faults to mean anything: {dict(proxy.faults)}"
    ledger.record(
        "S3: drops / 500 / 503 / cut bodies / slow",
        faults=proxy.injected,
        runs=1,
        survived=1,
        duplicates=duplicates,
        leaks=leaks,
        note=" ".join(f"{k}={v}" for k, v in sorted(proxy.faults.items()) if k != "pass"),
    )


def _load(job):
    import yaml

    return yaml.safe_load(job.read_text())


def _corpus_bytes(job) -> bytes:
    from pathlib import Path

    return Path(_load(job)["spec"]["datasets"][0]["uri"].removeprefix("file://")).read_bytes()


@pytest.mark.parametrize("how", ["503 forever", "drops from step 4 on"])
def test_s3_unreachable_beyond_the_retry_budget_is_an_infrastructure_error(
    how, job, moto_url, bucket, tmp_path, ledger
):
    proxy = S3FaultProxy(moto_url).start()
    try:
        env = s3_env(proxy.url, KUBETUNE_S3_MAX_ATTEMPTS="3", KUBETUNE_DEBUG_STEP_SLEEP="0.2")
        if how == "503 forever":
            proxy.rules.append(Rule(lambda m, p: True, "503"))
        run = start(job, f"s3://{bucket}/run/", tmp_path, env, how.replace(" ", "-"))
        if how != "503 forever":
            run.wait_for_step(4)
            proxy.plan.down = True
        rc = run.finish(timeout=240)
    finally:
        proxy.stop()
    reason = run.termination_log.read_text()
    assert rc == ExitCode.INFRA_ERROR, (rc, reason, run.text()[-3000:])
    assert reason.startswith("InfraError:") and "UserError" not in reason
    assert "Traceback" not in run.text()
    ledger.record(
        f"S3 unreachable ({how})", faults=proxy.injected, runs=1, survived=0, note=f"exit {rc}: {reason.strip()[:60]}"
    )
