"""The trainer's side of the status: its reporter writes only its own keys, within the CRD's bounds, and copes with
an API server that holds it to tighter ones; user data in its messages is quoted and bounded."""

from __future__ import annotations

import copy
import logging

import kubernetes
import pytest

from kubetune.api.crd import crd
from kubetune.api.v1alpha1 import Plan
from kubetune.testing.harness import wait_for
from kubetune_trainer.reporting import MultiReporter, NullReporter, ProgressReport, quoted
from kubetune_trainer.status_reporter import StatusReporter, status_patch


@pytest.mark.parametrize(
    "value, shown",
    [
        ("conversation", "'conversation'"),
        ("it's", "'it\\'s'"),
        ("two\nlines", "'two\\nlines'"),
        ("\x1b[31mred", "'\\u001b[31mred'"),
        ("\u202eevil", "'\\u202eevil'"),  # a bidirectional override: escaped, never applied
        ("réponse", "'réponse'"),
        (42, "'42'"),
    ],
)
def test_user_data_is_quoted_on_one_line(value, shown):
    assert quoted(value) == shown


def test_user_data_is_bounded_without_breaking_an_escape():
    long = quoted("\n" * 100, limit=11)
    assert long == "'\\n\\n\\n\\n...'"
    assert len(quoted("x" * 10_000)) == 82


def test_the_reporter_writes_only_its_own_keys():
    patch = status_patch(
        {
            "progress": {"step": 3, "totalSteps": 10, "epoch": 0.3, "percent": 30},
            "plan": {"strategy": "fsdp", "worldSize": 8, "perGpuGiB": 30.5, "fits": True},
        }
    )
    assert set(patch) == {"progress", "plan"}  # no defaults of the operator's keys (conditions, phase)


def test_a_plan_with_keys_the_api_does_not_know_says_so(caplog):
    reporter = StatusReporter("x", "y", api_client=object())
    with caplog.at_level(logging.WARNING, "kubetune.trainer.status"):
        reporter.plan({"strategy": "ddp", "worldSize": 1, "perGpuGib": 3.0})
    reporter.close(timeout=0.1)
    assert "status.plan has no field perGpuGib" in caplog.text  # the contract spells it perGpuGiB


def test_an_optional_report_reaches_only_the_reporters_that_take_it():
    class Console:
        def __init__(self):
            self.seen = []

        def progress(self, report):
            self.seen.append(report)

    console, null = Console(), NullReporter()
    both = MultiReporter(console, null)
    both.plan(Plan(strategy="ddp", world_size=1))  # Console has no plan(): skipped, no warning
    both.progress(ProgressReport(step=1, total_steps=2, epoch=0.5))
    assert len(console.seen) == 1


def test_a_reporter_held_to_tighter_bounds_learns_them_from_the_refusal(admin, namespace, sim, emulator, operator):
    """A cluster whose CRD bounds progress.stage to 64 characters: the first patch is refused, the reporter cuts it
    to the bound the answer names and every later patch fits from the start."""
    from tests.controller.test_operator import User

    tighter = copy.deepcopy(crd())
    tighter["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["progress"][
        "properties"
    ]["stage"]["maxLength"] = 64
    user = User(admin, namespace)
    emulator.register_crd(tighter)
    try:
        user.apply("tight")
        wait_for(lambda: user.status("tight").get("phase"), what="a status")
        sim.start(namespace, "tight")  # the grant follows the pods
        client = kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{namespace}:tight-reporter"))
        wait_for(lambda: sim.kube.get("RoleBinding", namespace, "tight-reporter"), what="the reporter's grant")
        reporter = StatusReporter("tight", namespace, interval_seconds=0, api_client=client)
        reporter.progress(ProgressReport(step=1, total_steps=4, epoch=0.25, stage="policy " * 20))
        wait_for(lambda: (user.status("tight").get("progress") or {}).get("step") == 1, what="the first report")
        reporter.progress(ProgressReport(step=2, total_steps=4, epoch=0.5, stage="policy " * 20))
        reporter.close()
        progress = wait_for(
            lambda: (p := user.status("tight").get("progress") or {}).get("step") == 2 and p, what="the second report"
        )
        assert len(progress["stage"]) == 64
        refused = [c for c in emulator.calls(f"sa:{namespace}:tight-reporter") if c.verb == "patch"]
        assert len(refused) == 3  # refused, cut and sent again, then cut from the start
        assert reporter.errors == 0
    finally:
        emulator.register_crd(crd())


def test_a_trainer_that_closes_before_its_grant_exists_keeps_its_last_report(monkeypatch):
    """The operator makes the reporter's Role once it sees the job's pods: a trainer quick enough to finish before
    then is refused (403) until it exists. Its last report is tried again rather than lost; a refusal after a report
    got through is not waited on."""
    from kubetune_trainer import status_reporter

    monkeypatch.setattr(status_reporter, "GRANT_WAIT_SECONDS", 0.05)
    sent = []

    def make(refusals: int, sent_before: int = 0) -> StatusReporter:
        reporter = StatusReporter("quick", "team", interval_seconds=3600, api_client=object())
        reporter.patches_sent = sent_before
        answers = iter([kubernetes.client.ApiException(status=403, reason="Forbidden")] * refusals)

        def patch(status):
            refusal = next(answers, None)
            if refusal is not None:
                raise refusal
            sent.append(status)

        reporter._patch = patch
        return reporter

    reporter = make(refusals=3)
    reporter.progress(ProgressReport(step=4, total_steps=4, epoch=1.0))
    reporter.close()
    # Waited on at close (the first refusal may come before close() did, and then calls for no wait).
    assert [s["progress"]["step"] for s in sent] == [4] and reporter._grant_waits in (2, 3)

    sent.clear()
    reporter = make(refusals=1, sent_before=2)  # reports got through before: the refusal is something else
    reporter.progress(ProgressReport(step=4, total_steps=4, epoch=1.0))
    reporter.close()
    assert sent == [] and reporter._grant_waits == 0


def test_a_trainer_that_closes_before_its_token_is_written_keeps_its_last_report(
    admin, namespace, sim, emulator, operator, tmp_path, monkeypatch
):
    """The reporter's token comes from a Secret the operator makes once it sees the pods, and the kubelet writes it
    into a running pod at its next sync: until then the in-cluster client has no token file. A trainer closing then
    tries its last report again for a while, and it lands once the file is there (as in a pod: no client given)."""
    import threading
    from pathlib import Path

    from kubernetes.config import incluster_config

    from kubetune_trainer import status_reporter
    from tests.controller.test_operator import User, reporter_token

    monkeypatch.setattr(status_reporter, "GRANT_WAIT_SECONDS", 0.2)
    volume = tmp_path / "serviceaccount"  # the pod's reporter-token volume, as the kubelet has written it so far
    volume.mkdir()
    (volume / "ca.crt").write_text(Path(emulator.ca_file).read_text())
    (volume / "namespace").write_text(namespace)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(volume / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(volume / "ca.crt"))
    host, port = emulator.url.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)

    user = User(admin, namespace)
    user.apply("late")
    job = wait_for(lambda: sim.kube.get("Job", namespace, "late"), what="the Job")
    sim.start(namespace, "late")
    token = reporter_token(sim, job)
    wait_for(lambda: sim.kube.get("RoleBinding", namespace, "late-reporter"), what="the reporter's grant")

    reporter = StatusReporter("late", namespace, interval_seconds=3600)
    reporter.progress(ProgressReport(step=4, total_steps=4, epoch=1.0))
    wait_for(lambda: reporter.errors == 1, what="the first report, which found no token")
    closing = threading.Thread(target=reporter.close)
    closing.start()
    wait_for(lambda: reporter._grant_waits >= 1, what="the closing reporter waiting for its token")
    (volume / "token").write_text(token)  # the kubelet's next sync of the pod
    closing.join(15)
    assert not closing.is_alive()
    assert reporter.patches_sent == 1
    assert user.status("late")["progress"]["step"] == 4
    patches = [c for c in emulator.calls(f"sa:{namespace}:late-reporter") if c.verb == "patch"]
    assert len(patches) == 1
