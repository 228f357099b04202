"""A Secret the spec names that does not exist (or lacks a key the trainer needs) shows in the status as
SecretNotFound, naming it, instead of a pod silently stuck in CreateContainerConfigError; the operator learns it from
the pod's container status (what the kubelet reports), never by reading Secrets (its RBAC has no access to them)."""

from __future__ import annotations

import pytest

from kubetune.api.constants import Phase, Reason
from kubetune.controller import status
from kubetune.controller.permissions import OPERATOR_PERMISSIONS
from kubetune.testing.harness import now_rfc3339, wait_for

# kubelet (pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables) when a secretKeyRef cannot be resolved: the secret
# manager's NotFound for a missing Secret, its own message for a missing key.
NO_SECRET = 'secret "s3-creds" not found'
NO_KEY = "couldn't find key AWS_SECRET_ACCESS_KEY in Secret team-a/s3-creds"


def pod(reason: str, message: str, phase: str = "Pending", container: str = "trainer") -> dict:
    return {
        "metadata": {"name": "bot-x", "namespace": "team-a", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": container,
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        },
    }


def test_the_kubelets_words_become_a_message_naming_the_secret():
    assert "Secret 's3-creds' does not exist in namespace team-a" in status.missing_secret(
        pod("CreateContainerConfigError", NO_SECRET)
    )
    text = status.missing_secret(pod("CreateContainerConfigError", NO_KEY))
    assert "Secret 's3-creds' in namespace team-a has no key AWS_SECRET_ACCESS_KEY" in text
    # Anything else is not about a Secret.
    assert status.missing_secret(pod("ContainerCreating", "")) is None
    assert status.missing_secret(pod("CreateContainerConfigError", 'configmap "x" not found')) is None
    assert status.missing_secret(pod("CreateContainerConfigError", NO_SECRET, container="sidecar")) is None


def test_a_pod_waiting_for_a_secret_is_pending_with_reason_secret_not_found():
    job = {"metadata": {"name": "bot", "uid": "j"}, "spec": {"suspend": False}, "status": {"active": 1}}
    observed = status.observe(
        job,
        [pod("CreateContainerConfigError", NO_SECRET)],
        nodes=1,
        spec_suspend=False,
        queue_name="",
        backoff_limit=3,
        active_deadline_seconds=0,
    )
    assert (observed.phase, observed.reason) == (Phase.PENDING, Reason.SECRET_NOT_FOUND)
    assert "s3-creds" in observed.message


def test_the_operator_never_reads_secrets():
    # It creates one kind, the reporter's token Secret (the token controller fills it, and deletes it with its
    # account), and that is all.
    assert [p.verbs for p in OPERATOR_PERMISSIONS if p.resource == "secrets"] == [("create",)]


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


@pytest.mark.timeout(120)
def test_a_missing_secret_shows_in_the_status_and_clears_once_it_exists(user, sim):
    user.apply("no-secret", output={"credentialsSecret": "s3-creds"})
    job = wait_for(lambda: sim.kube.get("Job", user.ns, "no-secret"), what="the Job")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    # The Secret is required: without it the kubelet does not start the trainer (it would run without credentials).
    assert env["KUBETUNE_OUTPUT_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-creds",
        "key": "AWS_ACCESS_KEY_ID",
        "optional": False,
    }
    [created] = sim.start(user.ns, "no-secret", running=False)
    message = NO_SECRET
    sim.kube.patch(
        "Pod",
        user.ns,
        created["metadata"]["name"],
        {
            "status": {
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
                    }
                ]
            }
        },
        subresource="status",
    )
    found = wait_for(
        lambda: (c := user.condition("no-secret", "Running"))["reason"] == "SecretNotFound" and c,
        what="Running=False SecretNotFound",
    )
    assert found["status"] == "False" and "'s3-creds'" in found["message"] and user.ns in found["message"]
    current = user.status("no-secret")
    assert current["phase"] == "Pending" and "'s3-creds'" in current["message"]
    wait_for(lambda: ("Warning", "SecretNotFound") in user.events("no-secret"), what="the SecretNotFound Event")
    # The user creates the Secret; the kubelet retries and the trainer starts.
    sim.kube.patch(
        "Pod",
        user.ns,
        created["metadata"]["name"],
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now_rfc3339()}},
                    }
                ],
            }
        },
        subresource="status",
    )
    user.wait_phase("no-secret", "Running")
