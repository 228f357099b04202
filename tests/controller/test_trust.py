"""The training pod cannot forge the result: what its token writes into the status is data the operator checks
(result URIs must lie under the job's output root); phase, conditions, attempts and times come from the
operator's own look at the Job and its pods, and a forged value never survives the operator's next pass, in
either direction, while the operator runs or across its restart."""

from __future__ import annotations

import kubernetes
import pytest

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.testing.harness import wait_for
from kubetune_trainer.reporting import CheckpointReport, OutputReport
from kubetune_trainer.status_reporter import StatusReporter

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


def pod_token(emulator, namespace: str, name: str) -> kubernetes.client.CustomObjectsApi:
    """The API as the training pod has it: the job's reporter ServiceAccount."""
    return kubernetes.client.CustomObjectsApi(
        kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{namespace}:{name}-reporter"))
    )


def forge(api, namespace: str, name: str, status: dict) -> None:
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})


def running_job(user, sim, name: str) -> dict:
    user.apply(name)
    wait_for(lambda: sim.kube.get("Job", user.ns, name), what="the Job")
    sim.start(user.ns, name)
    return user.wait_phase(name, "Running")


def root_of(user, name: str) -> str:
    return f"s3://kubetune-out/runs/{user.ns}/{name}/{user.get(name)['metadata']['uid']}/"


def operator_keys(status: dict) -> dict:
    keys = (
        "phase",
        "conditions",
        "attempts",
        "startTime",
        "completionTime",
        "jobName",
        "message",
        "observedGeneration",
    )
    return {k: status.get(k) for k in keys}


def test_a_forged_success_with_a_made_up_model_never_survives(user, sim, emulator, operator_log):
    """Seen: the Job failed and the FineTuneJob still said Succeeded with a made-up output.modelUri."""
    before = running_job(user, sim, "forger")
    pod = pod_token(emulator, user.ns, "forger")
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "TrainingComplete",
        "message": "training finished",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    forge(
        pod,
        user.ns,
        "forger",
        {
            "phase": "Succeeded",
            "conditions": [ready],
            "attempts": 9,
            "message": "done!",
            "completionTime": "2026-01-01T00:00:00Z",
            "output": {"modelUri": "s3://attacker/model/", "metricsUri": "s3://attacker/m"},
        },
    )
    restored = wait_for(
        lambda: (s := user.status("forger"))["phase"] == "Running" and not s.get("output") and s,
        what="the operator's next pass",
    )
    assert operator_keys(restored) == operator_keys(before)
    assert "StatusRestored" in operator_log.reasons(user.ns, "forger")
    assert "ResultRejected" in operator_log.reasons(user.ns, "forger")

    # The Job fails for real: the status says so, with no result to show.
    sim.fail(user.ns, "forger", 10, "spec.datasets[0]: no rows")
    failed = user.wait_phase("forger", "Failed")
    assert failed["message"] == "spec.datasets[0]: no rows" and not failed.get("output")


def test_a_forged_failure_of_a_running_job_never_survives(user, sim, emulator):
    before = running_job(user, sim, "victim")
    forge(
        pod_token(emulator, user.ns, "victim"),
        user.ns,
        "victim",
        {
            "phase": "Failed",
            "message": "UserError: forged",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "UserError",
                    "message": "forged",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        },
    )
    restored = wait_for(lambda: (s := user.status("victim"))["phase"] == "Running" and s, what="restored")
    assert operator_keys(restored) == operator_keys(before)
    sim.succeed(user.ns, "victim")
    user.wait_phase("victim", "Succeeded")


def test_the_pods_own_results_are_kept_and_only_those(user, sim, emulator):
    running_job(user, sim, "honest")
    root = root_of(user, "honest")
    client = kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{user.ns}:honest-reporter"))
    reporter = StatusReporter("honest", user.ns, interval_seconds=0, api_client=client)
    reporter.checkpoints(
        [
            CheckpointReport(step=10, uri=f"{root}checkpoints/step-10/", time="2026-01-01T00:00:00Z"),
            CheckpointReport(step=20, uri=f"{root}checkpoints/../../../other/uid/", time="2026-01-01T00:01:00Z"),
            CheckpointReport(step=30, uri="s3://elsewhere/step-30/", time="2026-01-01T00:02:00Z"),
        ]
    )
    reporter.output(
        OutputReport(
            model_uri=f"{root}final/",
            metrics_uri=f"{root}metrics.jsonl",
            tensorboard_uri=f"{root}tensorboard/",
            checkpoints_uri=f"{root}checkpoints/",
        )
    )
    reporter.close()
    sim.succeed(user.ns, "honest")
    status = user.wait_phase("honest", "Succeeded")
    status = wait_for(
        lambda: (s := user.status("honest")) and len(s.get("checkpoints") or []) == 1 and s,
        what="the checkpoints outside the root taken back",
    )
    assert [c["step"] for c in status["checkpoints"]] == [10]
    assert status["output"] == {
        "modelUri": f"{root}final/",
        "metricsUri": f"{root}metrics.jsonl",
        "tensorboardUri": f"{root}tensorboard/",
        "checkpointsUri": f"{root}checkpoints/",
    }

    # After the job finished, a late forgery of the finished job is put back too.
    forge(
        pod_token(emulator, user.ns, "honest"),
        user.ns,
        "honest",
        {"phase": "Failed", "output": {"modelUri": "s3://attacker/model/"}},
    )
    wait_for(
        lambda: (s := user.status("honest"))["phase"] == "Succeeded" and s["output"].get("modelUri") is None,
        what="the finished job restored",
    )
    # And the pod's identity reaches no other job.
    user.apply("neighbour")
    with pytest.raises(kubernetes.client.ApiException) as denied:
        forge(pod_token(emulator, user.ns, "honest"), user.ns, "neighbour", {"phase": "Failed"})
    assert denied.value.status == 403


def test_a_forgery_made_while_the_operator_was_down_does_not_survive_its_restart(user, sim, emulator, operator):
    before = running_job(user, sim, "outage")
    operator.stop()
    try:
        forge(
            pod_token(emulator, user.ns, "outage"),
            user.ns,
            "outage",
            {
                "phase": "Succeeded",
                "completionTime": "2026-01-01T00:00:00Z",
                "output": {"modelUri": "s3://attacker/model/"},
            },
        )
    finally:
        operator.start()
    restored = wait_for(
        lambda: (s := user.status("outage"))["phase"] == "Running" and not s.get("output") and s,
        what="restored after the restart",
    )
    assert restored["jobName"] == before["jobName"] and restored["attempts"] == before["attempts"]
    assert not restored.get("completionTime")
