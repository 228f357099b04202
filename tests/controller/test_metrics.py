"""metrics.py: the operator's Prometheus metrics, and per FineTuneJob the series its status gives, scraped over HTTP
from the running operator with jobs in every phase."""

from __future__ import annotations

import datetime as dt
import urllib.request

import kubernetes
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.constants import GROUP, PLURAL, VERSION, ExitCode
from kubetune.controller.metrics import JOB_GAUGES, Metrics, job_record
from kubetune.testing.harness import wait_for
from kubetune_trainer.reporting import ProgressReport
from kubetune_trainer.status_reporter import StatusReporter
from tests.controller.samples import LORA_INSTRUCTION_SPEC

pytestmark = pytest.mark.timeout(120)

SPEC = LORA_INSTRUCTION_SPEC


def scrape(port: int) -> dict[str, list]:
    """GET /metrics, parsed with prometheus_client's own text parser: sample name -> samples."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def job_samples(samples: dict[str, list], namespace: str, name: str) -> dict[str, list]:
    """Every sample of one job, by name."""
    mine: dict[str, list] = {}
    for metric, found in samples.items():
        for sample in found:
            if sample.labels.get("namespace") == namespace and sample.labels.get("name") == name:
                mine.setdefault(metric, []).append(sample)
    return mine


def value(samples: dict[str, list], metric: str) -> float:
    (sample,) = samples[metric]
    return sample.value


# ------------------------------------------------------------------------------------- the operator's own


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


# ------------------------------------------------------------------------------------- per job, from a status


def running_ftj(**status) -> dict:
    return {
        "metadata": {"namespace": "a", "name": "x"},
        "spec": {"technique": "qlora", "objective": "preference"},
        "status": {
            "phase": "Running",
            "attempts": 2,
            "conditions": [
                {
                    "type": "Validated",
                    "status": "True",
                    "reason": "SpecValid",
                    "lastTransitionTime": "2026-11-28T12:00:00Z",
                },
                {
                    "type": "Queued",
                    "status": "False",
                    "reason": "Admitted",
                    "lastTransitionTime": "2026-11-28T10:00:00Z",
                },
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "PodsRunning",
                    "lastTransitionTime": "2026-11-28T10:05:00Z",
                },
                {
                    "type": "Reconciling",
                    "status": "True",
                    "reason": "PodsRunning",
                    "lastTransitionTime": "2026-11-28T11:00:00Z",
                },
            ],
            "progress": {"step": 30, "totalSteps": 120, "percent": 25, "etaSeconds": 900},
            "metrics": {"loss": 1.25, "evalLoss": 1.5, "tokensPerSecond": 2048.0, "learningRate": 1e-4},
        }
        | status,
    }


def test_a_record_reads_the_status_the_operator_and_the_trainer_keep():
    record = job_record(running_ftj())
    assert (record.phase, record.reason, record.attempts) == ("Running", "PodsRunning", 2)
    # Entered Running when its Running condition turned True; Validated and Reconciling say nothing of the phase.
    assert record.phase_since == dt.datetime(2026, 11, 28, 10, 5, tzinfo=dt.UTC).timestamp()
    assert (record.step, record.planned_steps, record.progress_ratio) == (30, 120, 0.25)
    assert (record.loss, record.eval_loss, record.tokens_per_second, record.eta_seconds) == (1.25, 1.5, 2048, 900)
    assert (record.technique, record.objective) == ("qlora", "preference")


def test_pending_after_a_failed_attempt_dates_from_the_running_condition_turning_false():
    ftj = running_ftj(
        phase="Pending",
        conditions=[
            {"type": "Queued", "status": "False", "reason": "Admitted", "lastTransitionTime": "2026-11-28T10:00:00Z"},
            {"type": "Running", "status": "False", "reason": "Retrying", "lastTransitionTime": "2026-11-28T10:30:00Z"},
        ],
    )
    record = job_record(ftj)
    assert (record.phase, record.reason) == ("Pending", "Retrying")
    assert record.phase_since == dt.datetime(2026, 11, 28, 10, 30, tzinfo=dt.UTC).timestamp()


def test_odd_values_give_no_sample_rather_than_a_wrong_one():
    """The trainer's token can write any status: a non-number, a bool or an unknown phase is left out."""
    record = job_record(
        running_ftj(
            phase="Exploded",
            attempts=True,
            progress={"step": "many", "totalSteps": 0},
            metrics={"loss": float("nan"), "evalLoss": "low", "tokensPerSecond": float("inf")},
            conditions=[{"type": "Running", "lastTransitionTime": "yesterday"}, "junk"],
        )
    )
    assert record.phase is None and record.attempts is None and record.phase_since is None
    assert (record.step, record.planned_steps, record.progress_ratio) == (0, None, None)
    assert (record.loss, record.eval_loss, record.tokens_per_second) == (None, None, None)


def test_throughput_and_eta_only_while_running_and_forgotten_jobs_lose_every_series():
    metrics = Metrics()
    metrics.observe("a", "x", running_ftj())
    metrics.observe("a", "done", running_ftj(phase="Succeeded") | {"metadata": {"namespace": "a", "name": "done"}})
    labels = {"namespace": "a", "name": "x"}
    done = {"namespace": "a", "name": "done"}
    get = metrics.registry.get_sample_value
    assert get("kubetune_finetunejob_tokens_per_second", labels) == 2048
    assert get("kubetune_finetunejob_eta_seconds", labels) == 900
    assert get("kubetune_finetunejob_tokens_per_second", done) is None  # a finished job has no rate of now
    assert get("kubetune_finetunejob_eta_seconds", done) is None
    assert get("kubetune_finetunejob_loss", done) == 1.25  # its result stays
    assert get("kubetune_finetunejob_phase", done | {"phase": "Succeeded", "reason": "PodsRunning"}) == 1
    assert get("kubetune_finetunejob_info", labels | {"technique": "qlora", "objective": "preference"}) == 1
    assert metrics.recorded() == {("a", "x"), ("a", "done")}
    metrics.set_phase("a", "x", "Running")
    metrics.set_phase("a", "x", None)  # the resync found it gone
    metrics.observe("a", "done", None)  # its DELETED event
    text = "".join(f"{s.name}{s.labels}" for family in metrics.registry.collect() for s in family.samples)
    assert '"name": "x"' not in text and '"name": "done"' not in text
    assert metrics.recorded() == set() and metrics.phase_counts() == {}


# ------------------------------------------------------------------------------------- the running operator


@pytest.fixture
def endpoint(operator):
    """The running operator's registry served on a free port (the session operator runs with the port off)."""
    server = operator.reconciler.metrics.serve(0, addr="127.0.0.1")
    yield server.server_port
    server.shutdown()


def test_every_phase_is_scraped_with_its_training_series_and_a_deleted_jobs_series_go(
    operator, sim, admin, emulator, namespace, endpoint
):
    crd = kubernetes.client.CustomObjectsApi(admin)
    ns = namespace

    def apply(name: str, **spec) -> None:
        crd.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": ns},
                "spec": SPEC | spec,
            },
        )

    def status(name: str) -> dict:
        return crd.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}

    def wait_phase(name: str, phase: str) -> dict:
        return wait_for(lambda: status(name) if status(name).get("phase") == phase else None, 20, f"{name} {phase}")

    def report(name: str, step: int, **metrics) -> None:
        """The trainer's reporter, with the pod's identity: a status-only patch that calls for no reconcile pass."""
        client = kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{ns}:{name}-reporter"))
        reporter = StatusReporter(name, ns, interval_seconds=0, api_client=client)
        reporter.progress(
            ProgressReport(step=step, total_steps=200, epoch=step / 100, eta_seconds=600 - 3 * step, metrics=metrics)
        )
        reporter.close()
        assert reporter.errors == 0

    apply("pending")
    apply("queued", queueName="no-such-queue")  # no Kueue here: Queued, QueueNotFound
    apply("suspended", suspend=True)
    apply("running")
    apply("succeeded", technique="full")
    apply("failed")
    for name in ("running", "succeeded", "failed"):
        wait_for(lambda name=name: sim.kube.get("Job", ns, name), 20, f"the Job of {name}")
        sim.start(ns, name)
        wait_phase(name, "Running")
    report("running", 50, loss=1.75, evalLoss=1.9, tokensPerSecond=4096.0, reward=0.5)
    report("succeeded", 200, loss=0.5, evalLoss=0.75, tokensPerSecond=1000.0)
    sim.succeed(ns, "succeeded")
    sim.fail(ns, "failed", ExitCode.USER_ERROR, "UserError: the dataset has no 'messages' column")
    wanted = {
        "pending": ("Pending", "PodsPending"),
        "queued": ("Queued", "QueueNotFound"),
        "suspended": ("Suspended", "SuspendedByUser"),
        "running": ("Running", "PodsRunning"),
        "succeeded": ("Succeeded", "TrainingComplete"),
        "failed": ("Failed", "UserError"),
    }
    for name, (phase, _) in wanted.items():
        wait_phase(name, phase)

    def scraped_when_settled() -> dict | None:
        samples = scrape(endpoint)
        jobs = {name: job_samples(samples, ns, name) for name in wanted}
        if (
            all(
                len(jobs[n].get("kubetune_finetunejob_phase", ())) == 1
                and jobs[n]["kubetune_finetunejob_phase"][0].labels["phase"] == phase
                for n, (phase, _) in wanted.items()
            )
            and value(jobs["running"], "kubetune_finetunejob_step") == 50
        ):
            return {"all": samples, **jobs}
        return None

    scraped = wait_for(scraped_when_settled, 20, "every job's phase and the running job's report in /metrics")
    for name, (phase, reason) in wanted.items():
        series = scraped[name]
        (phase_sample,) = series["kubetune_finetunejob_phase"]  # one series per job: its current phase
        assert (phase_sample.labels["phase"], phase_sample.labels["reason"], phase_sample.value) == (phase, reason, 1)
        conditions = {c["type"]: c for c in status(name)["conditions"]}
        named = conditions.get(phase) or conditions["Running"]  # Pending: when its Running condition turned False
        assert (
            value(series, "kubetune_finetunejob_phase_transition_timestamp_seconds")
            == dt.datetime.fromisoformat(named["lastTransitionTime"]).timestamp()
        ), name
        assert value(series, "kubetune_finetunejob_attempts") == (status(name).get("attempts") or 0), name
        (info,) = series["kubetune_finetunejob_info"]
        assert (info.labels["technique"], info.labels["objective"]) == (
            ("full", "instruction") if name == "succeeded" else ("lora", "instruction")
        )

    running = scraped["running"]
    assert value(running, "kubetune_finetunejob_step") == 50
    assert value(running, "kubetune_finetunejob_planned_steps") == 200
    assert value(running, "kubetune_finetunejob_progress_ratio") == 0.25
    assert value(running, "kubetune_finetunejob_loss") == 1.75
    assert value(running, "kubetune_finetunejob_eval_loss") == 1.9
    assert value(running, "kubetune_finetunejob_reward") == 0.5
    assert value(running, "kubetune_finetunejob_tokens_per_second") == 4096
    assert value(running, "kubetune_finetunejob_eta_seconds") == 450
    succeeded = scraped["succeeded"]
    assert value(succeeded, "kubetune_finetunejob_progress_ratio") == 1
    assert value(succeeded, "kubetune_finetunejob_loss") == 0.5
    assert not {"kubetune_finetunejob_tokens_per_second", "kubetune_finetunejob_eta_seconds"} & set(succeeded)
    for name in ("pending", "queued", "suspended", "failed"):  # never reported: step 0, no loss
        assert value(scraped[name], "kubetune_finetunejob_step") == 0
        assert not {"kubetune_finetunejob_loss", "kubetune_finetunejob_progress_ratio"} & set(scraped[name])
    # The operator's own counts in the same scrape (every namespace's jobs, so at least these).
    counts = {s.labels["phase"]: s.value for s in scraped["all"]["kubetune_finetunejobs"]}
    assert all(counts[phase] >= 1 for phase, _ in wanted.values()), counts
    assert {g.name for g in JOB_GAUGES} - {"kubetune_finetunejob_reward"} <= set(running), set(running)

    # A report moves the gauge without a reconcile pass.
    report("running", 60, loss=1.5, tokensPerSecond=4000.0)
    wait_for(
        lambda: value(job_samples(scrape(endpoint), ns, "running"), "kubetune_finetunejob_step") == 60,
        10,
        "the new step in /metrics",
    )

    # Deleted: every series of the job goes (its DELETED event), the others stay.
    for name in ("running", "failed"):
        crd.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    wait_for(
        lambda: not any(job_samples(scrape(endpoint), ns, name) for name in ("running", "failed")),
        10,
        "the deleted jobs' series gone",
    )
    assert job_samples(scrape(endpoint), ns, "succeeded")["kubetune_finetunejob_loss"][0].value == 0.5

    # Forgotten: a job the operator holds series of but the API no longer lists (a DELETED event missed across a
    # re-list) loses them at the next sweep (a metadata-only list every 10 resync periods: 10 s here).
    ghost = running_ftj() | {"metadata": {"namespace": ns, "name": "ghost"}}
    operator.reconciler.metrics.observe(ns, "ghost", ghost)
    assert job_samples(scrape(endpoint), ns, "ghost")
    wait_for(lambda: not job_samples(scrape(endpoint), ns, "ghost"), 25, "the ghost's series gone after a sweep")
