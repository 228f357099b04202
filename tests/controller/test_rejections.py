"""What the API server refuses ends in a status a user can act on: phase Failed, reason ChildRejected, the server's
words and a Warning Event, never a silent retry loop; an object of a child's name that is not the job's is
reported, never adopted; and a refused status write is logged and sent again in a form that fits."""

from __future__ import annotations

import copy
import time

import pytest

from kubetune.api.crd import crd
from kubetune.controller import bounds
from kubetune.testing.emulator import ApiError, Fault
from kubetune.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


def creates(emulator, namespace: str, resource: str) -> int:
    return len(
        [
            c
            for c in emulator.calls("operator")
            if c.verb == "create" and c.resource == resource and c.namespace == namespace
        ]
    )


def test_a_users_object_with_a_childs_name_is_reported_not_adopted(user, sim, emulator, operator_log):
    """The reporter's account is made with its grant, once the pods exist: a user's account of its name fails the
    job then, and its Job is stopped (a Failed job runs nothing)."""
    user.core.create_namespaced_service_account(
        user.ns, {"metadata": {"name": "clash-reporter", "labels": {"mine": "yes"}}}
    )
    user.apply("clash")
    wait_for(lambda: sim.kube.get("Job", user.ns, "clash"), what="the Job")
    sim.start(user.ns, "clash")
    status = user.wait_phase("clash", "Failed")
    failed = user.condition("clash", "Failed")
    assert (
        failed["reason"] == "ChildRejected"
        and "ServiceAccount" in failed["message"]
        and "clash-reporter" in failed["message"]
    )
    assert user.condition("clash", "Validated")["status"] == "True"  # the spec is fine; the name is taken
    assert status["message"] == failed["message"]
    wait_for(lambda: ("Warning", "ChildRejected") in user.events("clash"), what="the Warning Event")
    mine = user.core.read_namespaced_service_account("clash-reporter", user.ns)
    assert mine.metadata.labels == {"mine": "yes"} and not mine.metadata.owner_references  # untouched, not adopted
    wait_for(lambda: sim.kube.get("Job", user.ns, "clash") is None, what="the Job to be deleted")
    time.sleep(2.2)  # two resyncs: nothing is tried again
    assert creates(emulator, user.ns, "serviceaccounts") == 1 and creates(emulator, user.ns, "jobs") == 1
    assert creates(emulator, user.ns, "secrets") == 0  # the token Secret comes after the account
    assert user.events("clash").count(("Warning", "ChildRejected")) == 1
    assert ("WARNING", "ChildRejected") in [
        (level, reason) for level, reason, _ in operator_log.lines(user.ns, "clash")
    ]


def test_a_job_an_admission_webhook_refuses_fails_with_its_words(user, sim, emulator):
    words = 'admission webhook "gpu-quota.example.com" denied the request: team quota of 8 GPUs is used up'

    def quota(server, request):
        if (request.group, request.resource, request.operation) == (
            "batch",
            "jobs",
            "CREATE",
        ) and request.namespace == user.ns:
            raise ApiError(403, "Forbidden", words)

    remove = emulator.admit(quota)
    try:
        user.apply("refused")
        user.wait_phase("refused", "Failed")
    finally:
        remove()
    failed = user.condition("refused", "Failed")
    assert failed["reason"] == "ChildRejected"
    assert failed["message"] == f"the API server refused to create Job {user.ns}/refused: {words}"
    time.sleep(2.2)
    assert creates(emulator, user.ns, "jobs") == 1


def test_a_refused_patch_of_a_running_job_fails_it_and_stops_the_job(user, sim, emulator):
    user.apply("edited")
    wait_for(lambda: sim.kube.get("Job", user.ns, "edited"), what="the Job")
    sim.start(user.ns, "edited")
    user.wait_phase("edited", "Running")
    emulator.inject(
        Fault(
            lambda c: c.user == "operator" and c.verb == "patch" and c.resource == "jobs" and c.namespace == user.ns,
            422,
            times=None,
            reason="Invalid",
            message='Job.batch "edited" is invalid: spec.backoffLimit: Invalid value: 9: over the '
            "cluster's limit of 6",
        )
    )
    try:
        user.edit("edited", backoffLimit=9)
        user.wait_phase("edited", "Failed")
    finally:
        emulator.call(lambda: emulator.server.faults.clear())
    assert "spec.backoffLimit: Invalid value: 9" in user.condition("edited", "Failed")["message"]
    wait_for(lambda: sim.kube.get("Job", user.ns, "edited") is None, what="the Job of a failed job deleted")


def test_the_api_server_refuses_what_kubernetes_refuses():
    """The ported rules of the test API server itself (kubetune.testing.apivalidation), against apimachinery's words."""
    from kubetune.testing import apivalidation

    causes = apivalidation.metadata_causes("", "services", {"metadata": {"name": "7b-lora-workers"}})
    assert causes[0]["field"] == "metadata.name" and "DNS-1035" in causes[0]["message"]
    causes = apivalidation.metadata_causes(
        "batch", "jobs", {"metadata": {"name": "j", "labels": {"kueue.x-k8s.io/queue-name": "q" * 64}}}
    )
    assert causes == [
        {
            "reason": "FieldValueInvalid",
            "field": "metadata.labels",
            "message": f'Invalid value: "{"q" * 64}": must be no more than 63 characters',
        }
    ]
    schema = {
        "properties": {
            "status": {
                "properties": {"message": {"type": "string", "maxLength": 5}, "list": {"type": "array", "maxItems": 1}}
            }
        }
    }
    refusal = apivalidation.Invalid(
        "FineTuneJob",
        "kubetune.dev",
        "bot",
        apivalidation.custom_resource_causes(
            {"status": {"message": "123456", "list": [1, 2]}}, schema, status_only=True
        ),
    )
    assert refusal.message == (
        'FineTuneJob.kubetune.dev "bot" is invalid: [status.message: Too long: may not be more '
        "than 5 bytes, status.list: Too many: 2: must have at most 1 item]"
    )


def test_a_status_write_the_api_server_refuses_is_sent_again_in_a_form_that_fits(
    user, sim, emulator, operator, operator_log
):
    """A cluster whose CRD bounds status.message tighter than this release's (another release's CRD): the write is
    refused, logged, and sent again cut to the bound the server named, so phase and conditions still change."""
    tighter = copy.deepcopy(crd())
    status_schema = tighter["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    status_schema["properties"]["message"]["maxLength"] = 300
    status_schema["properties"]["conditions"]["items"]["properties"]["message"]["maxLength"] = 300
    emulator.register_crd(tighter)
    try:
        user.apply("wordy")
        wait_for(lambda: sim.kube.get("Job", user.ns, "wordy"), what="the Job")
        sim.start(user.ns, "wordy")
        user.wait_phase("wordy", "Running")
        sim.fail(user.ns, "wordy", 10, "UserError: " + "the column is missing; " * 100)
        status = user.wait_phase("wordy", "Failed")
        assert len(status["message"]) == 300 and status["message"].endswith(bounds.TRUNCATED)
        assert all(len(c["message"]) <= 300 for c in status["conditions"])
        assert "StatusRefused" in operator_log.reasons(user.ns, "wordy")
        refused = [m for _, reason, m in operator_log.lines(user.ns, "wordy") if reason == "StatusRefused"]
        assert "may not be more than 300 bytes" in refused[0]
    finally:
        emulator.register_crd(crd())
        operator.reconciler._refused_bounds.clear()  # what it learned of the tighter CRD


def test_a_child_left_by_an_earlier_job_of_the_same_name_is_waited_for_not_rejected(user, sim, emulator):
    """Deleted and created again at once: the garbage collector may not have removed the first job's children yet
    (here a finalizer holds one). They are of an earlier FineTuneJob of this name: the new job waits for them to go,
    then gets its own."""
    leftover = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "again-reporter",
            "namespace": user.ns,
            "finalizers": ["example.com/hold"],
            "labels": {"app.kubernetes.io/managed-by": "kubetune", "kubetune.dev/finetunejob": "again"},
            "ownerReferences": [
                {
                    "apiVersion": "kubetune.dev/v1alpha1",
                    "kind": "FineTuneJob",
                    "name": "again",
                    "uid": "uid-of-the-first-again",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
    }
    sim.kube.create(leftover)  # its owner is gone: the garbage collector deletes it, the finalizer holds it
    wait_for(
        lambda: (
            (sim.kube.get("ServiceAccount", user.ns, "again-reporter") or {})
            .get("metadata", {})
            .get("deletionTimestamp")
        ),
        what="the leftover being deleted",
    )
    user.apply("again")
    wait_for(lambda: sim.kube.get("Job", user.ns, "again"), what="the Job")
    sim.start(user.ns, "again")  # the reporter's account is made once the pods exist
    time.sleep(1.5)
    assert user.status("again").get("phase") == "Pending"  # waiting, not failed
    assert sim.kube.get("RoleBinding", user.ns, "again-reporter") is None
    sim.kube.patch("ServiceAccount", user.ns, "again-reporter", {"metadata": {"finalizers": None}})
    status = user.wait_phase("again", "Running", timeout=30)  # the next retry (5 s backoff) creates its own
    assert status["jobName"] == "again"
    own = sim.kube.get("ServiceAccount", user.ns, "again-reporter")
    assert own["metadata"]["ownerReferences"][0]["uid"] == user.get("again")["metadata"]["uid"]
