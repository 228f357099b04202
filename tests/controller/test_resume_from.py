"""spec.resumeFrom naming another FineTuneJob: the operator resolves it to that job's output root and passes it to the
trainer (KUBETUNE_RESUME_FROM, which kubetune_trainer/resume_from.py reads); a job that does not exist, or has no
complete checkpoint yet, fails the new job with reason ResumeSourceNotFound, before anything is made for it."""

from __future__ import annotations

import pytest

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


def _env(job: dict) -> dict:
    return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def _checkpointed(user, sim, name: str, **spec) -> str:
    """A job that ran and reported a complete checkpoint under its output root; returns that root."""
    user.apply(name, **spec)
    job = wait_for(lambda: sim.kube.get("Job", user.ns, name), what=f"{name}'s Job")
    root = _env(job)["KUBETUNE_OUTPUT_URI"]
    sim.start(user.ns, name)
    user.wait_phase(name, "Running")
    user.crd.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        user.ns,
        PLURAL,
        name,
        {
            "status": {
                "checkpoints": [{"step": 400, "uri": f"{root}checkpoints/step-400/", "time": "2026-11-28T10:00:00Z"}]
            }
        },
    )
    return root


def test_resume_from_a_job_passes_its_output_root_to_the_trainer_for_every_attempt(user, sim):
    ns = user.ns
    root = _checkpointed(user, sim, "base")
    sim.succeed(ns, "base")
    user.wait_phase("base", "Succeeded")
    user.apply("more", resumeFrom="base", hyperparameters={"epochs": 6}, nodes=2, backoffLimit=2)
    job = wait_for(lambda: sim.kube.get("Job", ns, "more"), what="the Job")
    assert _env(job)["KUBETUNE_RESUME_FROM"] == root
    assert _env(job)["KUBETUNE_OUTPUT_URI"] != root  # a run of its own
    # The job it started from may go; the next attempt still starts from the same place.
    user.crd.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "base")
    sim.start(ns, "more")
    user.wait_phase("more", "Running")
    first_uid = job["metadata"]["uid"]
    sim.fail_pod(ns, "more", 1, 137, "OOMKilled")
    job = wait_for(
        lambda: (j := sim.kube.get("Job", ns, "more")) and j["metadata"]["uid"] != first_uid and j,
        what="the second attempt's Job",
    )
    assert _env(job)["KUBETUNE_RESUME_FROM"] == root


def test_resume_from_a_missing_job_or_one_without_a_checkpoint_fails_clearly(user, sim):
    ns = user.ns
    user.apply("orphan", resumeFrom="nope")
    failed = user.wait_phase("orphan", "Failed")
    assert user.condition("orphan", "Failed")["reason"] == "ResumeSourceNotFound"
    assert failed["message"] == (
        f"spec.resumeFrom: there is no FineTuneJob 'nope' in namespace {ns} (kubectl get ftj "
        f"-n {ns} lists them): name one that has a checkpoint, or a checkpoint URI, in a new "
        "FineTuneJob"
    )
    wait_for(lambda: ("Warning", "ResumeSourceNotFound") in user.events("orphan"), what="the Event")
    assert sim.kube.get("Job", ns, "orphan") is None and sim.kube.get("ConfigMap", ns, "orphan-spec") is None

    user.apply("fresh")  # running, but no checkpoint yet
    wait_for(lambda: sim.kube.get("Job", ns, "fresh"), what="fresh's Job")
    user.apply("eager", resumeFrom="fresh")
    failed = user.wait_phase("eager", "Failed")
    assert user.condition("eager", "Failed")["reason"] == "ResumeSourceNotFound"
    assert "FineTuneJob 'fresh' has no complete checkpoint yet" in failed["message"]
    assert sim.kube.get("Job", ns, "eager") is None

    # A checkpoint URI is the trainer's to read: nothing to resolve.
    user.apply("by-uri", resumeFrom="s3://kubetune-out/runs/elsewhere/checkpoints/step-100/")
    job = wait_for(lambda: sim.kube.get("Job", ns, "by-uri"), what="by-uri's Job")
    assert "KUBETUNE_RESUME_FROM" not in _env(job)
