"""The pure parts: spec -> Kubernetes objects, and (Job, pods) -> status."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.constants import Phase, Reason
from kubetune.api.validation import SpecError
from kubetune.controller import builders, status
from kubetune.controller.config import OperatorConfig, from_env

CONFIG = OperatorConfig(trainer_image="img:default", default_output_uri="s3://out/root/", report_interval_seconds=5,
                        grace_seconds=60)
FTJ = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
       "metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": 1}}
SPEC = {
    "technique": "qlora",
    "objective": "instruction",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "credentialsSecret": "hf-token"},
    "datasets": [{"name": "support", "uri": "s3://data/support/train.jsonl", "format": "messages"}],
    "output": {"credentialsSecret": "s3-creds"},
    "resources": {"gpus": 1, "cpu": "8", "memory": "64Gi", "nodeSelector": {"pool": "gpu"},
                  "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "priorityClassName": "training",
    "backoffLimit": 2,
    "activeDeadlineSeconds": 3600,
}


def _spec(**changes):
    return builders.resolve_spec(SPEC | changes, CONFIG)


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_single_node_job_is_exactly_what_the_trainer_needs():
    spec = _spec()
    job = builders.build_job(FTJ, spec, CONFIG, suspend=False)
    assert job["metadata"]["name"] == "bot"
    assert job["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kubetune", "kubetune.dev/finetunejob": "bot"}
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
                                                   "name": "bot", "uid": "u-1", "controller": True,
                                                   "blockOwnerDeletion": True}]
    js = job["spec"]
    assert js["backoffLimit"] == 2 and js["activeDeadlineSeconds"] == 3600 and js["suspend"] is False
    assert "ttlSecondsAfterFinished" not in js  # the operator handles the TTL (it must never lose status)
    assert "completionMode" not in js
    assert js["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [10]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "bot-reporter"
    assert pod["terminationGracePeriodSeconds"] > CONFIG.grace_seconds
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [c] = pod["containers"]
    assert c["name"] == "trainer" and c["image"] == "img:default"
    assert c["command"] == ["python", "-m", "kubetune_trainer", "/etc/kubetune/finetunejob.yaml"]
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "1", "cpu": "8", "memory": "64Gi"},
                              "requests": {"cpu": "8", "memory": "64Gi"}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "runAsUser": 1000, "capabilities": {"drop": ["ALL"]}}
    env = _env(c)
    assert env["KUBETUNE_OUTPUT_URI"] == "s3://out/root/team-a/bot/u-1/"
    assert env["KUBETUNE_FTJ_NAME"] == "bot" and env["KUBETUNE_FTJ_NAMESPACE"] == "team-a"
    assert env["KUBETUNE_FTJ_UID"] == "u-1" and env["KUBETUNE_TERMINATION_LOG"] == "/dev/termination-log"
    assert env["KUBETUNE_REPORT_INTERVAL_SECONDS"] == "5" and env["KUBETUNE_GRACE_SECONDS"] == "60"
    assert env["HOME"].startswith("/scratch") and env["HF_HOME"].startswith("/scratch")
    # Credentials are references, never values.
    assert env["KUBETUNE_MODEL_HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN", "optional": True}}
    assert env["KUBETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY", "optional": True}}
    assert env["KUBETUNE_DATASET_0_AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "s3-creds"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["spec"]["mountPath"] == "/etc/kubetune" and volumes["spec"]["configMap"]["name"] == "bot-spec"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}  # half of memory
    assert "emptyDir" in volumes["scratch"]
    token = volumes["reporter-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["path"] == "token" and mounts["reporter-token"]["readOnly"] is True


def test_multi_node_job_is_indexed_with_torchrun_rendezvous_and_a_headless_service():
    spec = _spec(nodes=3, resources={"gpus": 8}, queueName="gpu-queue")
    job = builders.build_job(FTJ, spec, CONFIG, suspend=builders.initial_suspend(spec))
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["suspend"] is True  # queued: Kueue unsuspends on admission
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "bot-workers"
    command = pod["containers"][0]["command"]
    assert command[:7] == ["python", "-m", "kubetune_trainer.launch", "--nnodes", "3", "--nproc-per-node", "8"]
    assert command[command.index("--master-addr") + 1] == "bot-0.bot-workers"
    assert command[command.index("--node-rank") + 1] == "$(KUBETUNE_NODE_RANK)"
    assert command[-3:] == ["-m", "kubetune_trainer", "/etc/kubetune/finetunejob.yaml"]
    env = pod["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names.index("KUBETUNE_NODE_RANK") >= 0  # defined, so $(KUBETUNE_NODE_RANK) expands
    service = builders.build_service(FTJ)
    assert service["metadata"]["name"] == "bot-workers" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    kinds = [o["kind"] for o in builders.build_support_objects(FTJ, spec)]
    assert kinds == ["ServiceAccount", "ConfigMap", "Service", "Role", "RoleBinding"]


def test_configmap_holds_the_resolved_spec_and_no_secret_values():
    spec = _spec(technique="lora")
    cm = builders.build_configmap(FTJ, spec)
    doc = yaml.safe_load(cm["data"]["finetunejob.yaml"])
    assert doc["metadata"] == {"name": "bot", "namespace": "team-a"}
    assert doc["spec"]["output"]["uri"] == "s3://out/root/"  # defaulted by the operator
    assert doc["spec"]["lora"]["rank"] == 16  # the technique's section is filled
    assert doc["spec"]["output"]["credentialsSecret"] == "s3-creds"  # a name, not a value
    assert "AWS_SECRET" not in cm["data"]["finetunejob.yaml"]


def test_reporter_role_can_only_get_and_patch_its_own_status():
    role = builders.build_role(FTJ)
    assert role["rules"] == [{"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs/status"],
                              "resourceNames": ["bot"], "verbs": ["get", "patch"]}]
    binding = builders.build_role_binding(FTJ)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "bot-reporter", "namespace": "team-a"}]


def test_spec_without_output_uri_and_no_operator_default_is_invalid():
    with pytest.raises(SpecError) as err:
        builders.resolve_spec(SPEC, OperatorConfig())
    assert err.value.problems[0].path == "spec.output.uri"


def test_propagated_fields():
    spec = _spec(backoffLimit=5, activeDeadlineSeconds=0)
    job = builders.build_job(FTJ, _spec(), CONFIG, suspend=False)
    assert builders.job_spec_updates(spec, job) == {"backoffLimit": 5, "activeDeadlineSeconds": None}
    assert builders.job_spec_updates(_spec(), job) == {}


def test_config_from_env():
    cfg = from_env({"KUBETUNE_NAMESPACES": "a, b", "KUBETUNE_MAX_RUNNING_PER_NAMESPACE": "2",
                    "KUBETUNE_TRAINER_IMAGE": "x:1"})
    assert cfg.namespaces == ("a", "b") and cfg.max_running_per_namespace == 2 and cfg.trainer_image == "x:1"
    with pytest.raises(ValueError, match="KUBETUNE_GRACE_SECONDS"):
        from_env({"KUBETUNE_GRACE_SECONDS": "soon"})
    with pytest.raises(ValueError, match=r"KUBETUNE_CONCURRENT_RECONCILES must be >= 1 \(got 0\)"):
        from_env({"KUBETUNE_CONCURRENT_RECONCILES": "0"})  # no slot at all would reconcile nothing


# ------------------------------------------------------------------------------------------ status


def _job(**status_fields):
    return {"metadata": {"name": "bot", "uid": "j-1", "annotations": {}}, "spec": {"suspend": False},
            "status": status_fields}


def _failed_pod(code, message, disruption=False):
    conditions = [{"type": "DisruptionTarget", "status": "True"}] if disruption else []
    return {"metadata": {"name": "bot-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": code, "message": message}}}]}}


def _observe(job, pods=(), **kw):
    args = dict(nodes=1, spec_suspend=False, queue_name="", backoff_limit=3, active_deadline_seconds=0) | kw
    return status.observe(job, list(pods), **args)


def test_observe_user_error_carries_the_termination_message():
    job = _job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    seen = _observe(job, [_failed_pod(10, "spec.datasets[0].columns.messages: no such column")])
    assert (seen.phase, seen.reason) == (Phase.FAILED, Reason.USER_ERROR)
    assert seen.message == "spec.datasets[0].columns.messages: no such column"


def test_observe_retry_preemption_deadline_queue_and_suspend():
    retry = _observe(_job(failed=1, active=1), [_failed_pod(20, "S3 timed out")])
    assert (retry.phase, retry.reason, retry.attempts) == (Phase.PENDING, Reason.RETRYING, 2)
    preempted = _observe(_job(active=1), [_failed_pod(143, "", disruption=True)])
    assert preempted.reason == Reason.PREEMPTED
    deadline = _observe(_job(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]))
    assert deadline.reason == Reason.DEADLINE_EXCEEDED
    queued = _job() | {"spec": {"suspend": True}}
    assert _observe(queued, queue_name="q").phase == Phase.QUEUED
    assert _observe(queued, spec_suspend=True).phase == Phase.SUSPENDED
    held = queued | {"metadata": {"name": "bot", "annotations": {builders.ANNOTATION_HELD: "true"}}}
    assert _observe(held).reason == Reason.NAMESPACE_LIMIT


def test_conditions_keep_transition_time_and_kstatus_conditions():
    ftj = dict(FTJ)
    running = status.compute(ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:00:00Z")
    conds = {c["type"]: c for c in running.status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "InProgress"
    assert conds["Reconciling"]["status"] == "True" and "Stalled" not in conds
    assert [e.reason for e in running.events] == ["PodsRunning"]  # JobCreated already said it was valid
    ftj["status"] = running.status
    again = status.compute(ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:05:00Z")
    assert again.events == [] and status.status_patch(running.status, again.status) == {}
    done = status.compute(ftj, status.Observed(Phase.FAILED, Reason.USER_ERROR, "bad column", 1), "bot",
                          "2026-01-01T00:09:00Z")
    conds = {c["type"]: c for c in done.status["conditions"]}
    assert conds["Validated"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # unchanged status, unchanged time
    assert conds["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # still False
    assert conds["Running"]["lastTransitionTime"] == "2026-01-01T00:09:00Z"
    assert conds["Stalled"]["status"] == "True" and "Reconciling" not in conds
    assert done.status["message"] == "bad column" and done.status["completionTime"] == "2026-01-01T00:09:00Z"
    assert [(e.type, e.reason) for e in done.events] == [("Warning", "UserError")]


def test_metrics_count_jobs_by_phase_and_serve_them():
    import urllib.request

    from kubetune.controller.metrics import Metrics

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
    assert metrics.jobs.labels(phase="Running")._value.get() == 0


def test_cli_operator_options_reach_the_config():
    from kubetune.cli import build_parser
    from kubetune.controller.config import from_args

    args = build_parser().parse_args(["operator", "-n", "team-a", "--max-running-per-namespace", "3",
                                      "--default-output-uri", "s3://b/p/"])
    cfg = from_args(args, env={})
    assert cfg.namespaces == ("team-a",) and cfg.max_running_per_namespace == 3
    assert cfg.default_output_uri == "s3://b/p/" and cfg.metrics_port == 9090


def test_a_failure_seen_only_after_the_retry_started_is_still_told():
    """Attempt 1 failed and attempt 2 was running before the operator looked again: the status message and
    a Retrying Event still say why attempt 1 failed."""
    running_pod = {"metadata": {"name": "bot-y", "creationTimestamp": "2026-01-01T00:01:00Z"}, "status": {"phase": "Running"}}
    seen = _observe(_job(failed=1, active=1), [_failed_pod(20, "S3 timed out"), running_pod])
    assert (seen.phase, seen.attempts) == (Phase.RUNNING, 2) and "S3 timed out" in seen.last_failure
    ftj = dict(FTJ)
    first = status.compute(ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:00:00Z")
    ftj["status"] = first.status
    later = status.compute(ftj, seen, "bot", "2026-01-01T00:02:00Z")
    assert later.status["attempts"] == 2
    assert later.status["message"].startswith("attempt 1 failed:") and "S3 timed out" in later.status["message"]
    assert ("Warning", "Retrying") in [(e.type, e.reason) for e in later.events]
    ftj["status"] = later.status
    steady = status.compute(ftj, seen, "bot", "2026-01-01T00:03:00Z")
    assert steady.events == []  # told once


def test_a_failure_already_told_is_not_told_again_when_the_retry_runs():
    ftj = dict(FTJ)
    first = status.compute(ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 1), "bot", "2026-01-01T00:00:00Z")
    ftj["status"] = first.status
    retrying = status.compute(ftj, status.Observed(Phase.PENDING, Reason.RETRYING, "attempt failed: oom", 1), "bot",
                              "2026-01-01T00:01:00Z")
    assert [e.reason for e in retrying.events] == ["Retrying"]
    ftj["status"] = retrying.status
    running = status.compute(ftj, status.Observed(Phase.RUNNING, Reason.PODS_RUNNING, "", 2, last_failure="oom"), "bot",
                             "2026-01-01T00:02:00Z")
    assert [e.reason for e in running.events] == ["PodsRunning"]


# ----------------------------------------------------------------------------------------- event filters


def _ftj(generation=1, status=None, deleting=False):
    meta = {"name": "a", "namespace": "n", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {}, **({"status": status} if status is not None else {})}


@pytest.mark.parametrize("event_type, body, expected", [
    ("ADDED", _ftj(), True),                                                        # new: no phase yet
    (None, _ftj(status={"phase": "Succeeded", "observedGeneration": 1}), True),      # startup / re-list
    ("MODIFIED", _ftj(2, {"phase": "Running", "observedGeneration": 1}), True),      # spec edited
    ("MODIFIED", _ftj(1, {"phase": "Running", "observedGeneration": 1, "progress": {"step": 3}}), False),  # reporter
    ("MODIFIED", _ftj(1, {"progress": {"step": 3}}), True),                          # reporter first, no phase yet
    ("DELETED", _ftj(), False),
    ("MODIFIED", _ftj(deleting=True), False),
])
def test_finetunejob_events_that_need_a_reconcile(event_type, body, expected):
    from kubetune.controller.handlers import needs_reconcile

    assert needs_reconcile(type=event_type, body=body) is expected


def test_a_job_event_just_after_its_creation_is_skipped_and_any_status_is_not():
    from kubetune.controller.handlers import job_tells_something

    assert job_tells_something(type="ADDED", status={}) is False
    assert job_tells_something(type="ADDED", status={"active": 1}) is True  # adopted after a restart
    assert job_tells_something(type="MODIFIED", status={}) is True  # e.g. Kueue unsuspended it
    assert job_tells_something(type=None, status={}) is True  # startup listing


def _pod(phase):
    return {"metadata": {"name": f"bot-{phase.lower()}"}, "status": {"phase": phase}}


@pytest.mark.parametrize("counters, pods, attempts", [
    ({"failed": 1}, [_pod("Running")], 2),                    # replacement running; the Job has not counted it
    ({"active": 1}, [_failed_pod(20, "S3")], 1),               # the pod failed; the Job has not counted it
    ({"failed": 1, "active": 1}, [_failed_pod(20, "S3"), _pod("Running")], 2),
    ({"active": 1}, [], 1),                                    # the pod is not listed yet
    ({"failed": 2, "active": 1}, [_pod("Pending")], 3),       # two failed pods already removed
])
def test_attempts_count_the_job_and_its_pods_whichever_lags(counters, pods, attempts):
    assert status.count_attempts(_job(**counters), nodes=1, pods=pods) == attempts



def test_the_pass_that_creates_the_job_tells_it_in_one_event():
    pending = status.compute(dict(FTJ), status.Observed(Phase.PENDING, Reason.PODS_PENDING, "waiting", 0), "bot",
                             "2026-01-01T00:00:00Z")
    told = status.announce_job(pending, "bot", recreated=False)
    assert [(e.reason, e.message) for e in told.events] == [
        ("JobCreated", "created Job bot; waiting for the training pods to start")]
    queued = status.compute(dict(FTJ), status.Observed(Phase.QUEUED, Reason.WAITING_FOR_ADMISSION, "waiting for Kueue", 0),
                            "bot", "2026-01-01T00:00:00Z")
    told = status.announce_job(queued, "bot", recreated=True)
    assert [(e.reason, e.message) for e in told.events] == [("JobCreated", "recreated Job bot"),
                                                            ("WaitingForAdmission", "waiting for Kueue")]


def test_the_operator_holds_every_permission_it_grants_a_reporter():
    """RBAC escalation check: the API server refuses a Role granting what its creator does not hold."""
    from kubetune.controller.permissions import is_granted

    role = builders.build_role(FTJ)
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert is_granted(verb, group, resource), f"the operator cannot grant {verb} {resource}"
