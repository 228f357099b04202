"""builders.py: a FineTuneJob's spec -> the Kubernetes objects that run it, compared field by field."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.validation import SpecError
from kubetune.controller import builders
from kubetune.controller.config import OperatorConfig
from tests.controller.samples import CONFIG, FTJ, SPEC


def _spec(**changes):
    return builders.resolve_spec(SPEC | changes, CONFIG)


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_single_node_job_is_exactly_what_the_trainer_needs():
    spec = _spec()
    job = builders.build_job(FTJ, spec, CONFIG, suspend=False)
    assert job["metadata"]["name"] == "bot"
    assert job["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kubetune", "kubetune.dev/finetunejob": "bot"}
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "bot",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
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
    # The namespace's `default` account, with no token of it: the Job is the first object a new job needs.
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "default"
    assert pod["terminationGracePeriodSeconds"] > CONFIG.grace_seconds
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [c] = pod["containers"]
    assert c["name"] == "trainer" and c["image"] == "img:default"
    assert c["command"] == ["python", "-m", "kubetune_trainer", "/etc/kubetune/finetunejob.yaml"]
    assert c["resources"] == {
        "limits": {"nvidia.com/gpu": "1", "cpu": "8", "memory": "64Gi"},
        "requests": {"cpu": "8", "memory": "64Gi"},
    }
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]},
    }
    env = _env(c)
    assert env["KUBETUNE_OUTPUT_URI"] == "s3://out/root/team-a/bot/u-1/"
    assert env["KUBETUNE_FTJ_NAME"] == "bot" and env["KUBETUNE_FTJ_NAMESPACE"] == "team-a"
    assert env["KUBETUNE_FTJ_UID"] == "u-1" and env["KUBETUNE_TERMINATION_LOG"] == "/dev/termination-log"
    assert env["KUBETUNE_REPORT_INTERVAL_SECONDS"] == "5" and env["KUBETUNE_GRACE_SECONDS"] == "60"
    assert env["HOME"].startswith("/scratch") and env["HF_HOME"].startswith("/scratch")
    # Credentials are references, never values; a Secret without its required keys keeps the pod from starting
    # (reported as SecretNotFound) instead of letting it run without credentials.
    assert env["KUBETUNE_MODEL_HF_TOKEN"] == {
        "secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN", "optional": False}
    }
    assert env["KUBETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY", "optional": False}
    }
    assert env["KUBETUNE_OUTPUT_AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
    assert env["KUBETUNE_AMBIENT_CREDENTIALS"] == ""  # no role may fall back to the node's identity
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin sets it for the GPU the pod got
    assert env["KUBETUNE_DATASET_0_AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "s3-creds"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The pod carries its spec (an annotation of its template), read as a file through the downward API: no ConfigMap.
    assert mounts["spec"]["mountPath"] == "/etc/kubetune" and volumes["spec"]["downwardAPI"]["items"] == [
        {"path": "finetunejob.yaml", "fieldRef": {"fieldPath": "metadata.annotations['kubetune.dev/spec']"}}
    ]
    assert "kubetune.dev/spec" in job["spec"]["template"]["metadata"]["annotations"]
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}  # half of memory
    assert "emptyDir" in volumes["scratch"]
    # The reporter's token from its Secret, made with its grant once the pods exist (optional: the pod starts first).
    token = volumes["reporter-token"]["projected"]["sources"][0]["secret"]
    assert token == {"name": "bot-reporter-u-1", "items": [{"key": "token", "path": "token"}], "optional": True}
    assert mounts["reporter-token"]["readOnly"] is True


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
    rank = next(e for e in env if e["name"] == "KUBETUNE_NODE_RANK")  # defined, so $(KUBETUNE_NODE_RANK) expands
    assert rank["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    service = builders.build_service(FTJ)
    assert service["metadata"]["name"] == "bot-workers" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    kinds = [o["kind"] for o in builders.build_support_objects(FTJ, spec)]
    assert kinds == ["ConfigMap", "Service", "ServiceAccount", "Secret", "Role", "RoleBinding"]


def test_the_pods_spec_annotation_holds_the_resolved_spec_and_no_secret_values():
    spec = _spec(technique="lora")
    text = builders.pod_template(FTJ, spec, CONFIG)["metadata"]["annotations"]["kubetune.dev/spec"]
    doc = yaml.safe_load(text)
    assert doc["metadata"] == {"name": "bot", "namespace": "team-a"}
    assert doc["spec"]["output"]["uri"] == "s3://out/root/"  # defaulted by the operator
    assert doc["spec"]["lora"]["rank"] == 16  # the technique's section is filled
    assert doc["spec"]["output"]["credentialsSecret"] == "s3-creds"  # a name, not a value
    assert "AWS_SECRET" not in text


def test_the_job_configmap_is_a_record_only_made_for_a_resolved_resume_source():
    spec = _spec(technique="lora")
    assert builders.build_prerequisites(FTJ, spec) == []
    made = builders.build_prerequisites(FTJ, spec, resume_from="s3://out/root/team-a/base/u-0/")
    record = next(o for o in made if o["kind"] == "ConfigMap")
    assert record["metadata"]["annotations"] == {"kubetune.dev/resume-from": "s3://out/root/team-a/base/u-0/"}
    assert "data" not in record


def test_reporter_role_can_only_get_and_patch_its_own_status():
    role = builders.build_role(FTJ)
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.dev"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["bot"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = builders.build_role_binding(FTJ, _spec())
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "bot-reporter", "namespace": "team-a"}]


def test_the_reporters_token_comes_from_a_secret_of_its_account_made_after_the_account():
    grant = builders.build_reporter_grant(FTJ, _spec())
    assert [o["kind"] for o in grant] == ["ServiceAccount", "Secret", "Role", "RoleBinding"]
    account, secret = grant[0], grant[1]
    assert account["metadata"]["name"] == "bot-reporter" and account["automountServiceAccountToken"] is False
    # The token controller fills this Secret with a token of the account it names, and deletes it when the account is
    # missing (hence the order) or goes (so it needs no ownerReference); the name carries the job's uid, as the
    # operator may not read a Secret to check it.
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "bot-reporter"}
    assert secret["metadata"]["name"] == "bot-reporter-u-1" and "data" not in secret
    assert "ownerReferences" not in secret["metadata"]
    assert secret["metadata"]["labels"]["kubetune.dev/finetunejob"] == "bot"


def test_spec_without_output_uri_and_no_operator_default_is_invalid():
    with pytest.raises(SpecError) as err:
        builders.resolve_spec(SPEC, OperatorConfig())
    assert err.value.problems[0].path == "spec.output.uri"


def test_propagated_fields():
    spec = _spec(backoffLimit=5, activeDeadlineSeconds=0)
    job = builders.build_job(FTJ, _spec(), CONFIG, suspend=False)
    assert builders.job_spec_updates(spec, job) == {"backoffLimit": 5, "activeDeadlineSeconds": None}
    assert builders.job_spec_updates(_spec(), job) == {}


def _shm(**resources):
    spec = _spec(resources={"gpus": 1} | resources)
    pod = builders.build_job(FTJ, spec, CONFIG, suspend=False)["spec"]["template"]["spec"]
    return next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize(
    "resources, size",
    [
        ({"memory": "64Gi"}, "32Gi"),
        ({"memory": "1.5Gi"}, "768Mi"),
        ({"memory": "64e9"}, "31250000Ki"),  # a decimal exponent: half of 64 GB, not the 1Gi fallback
        ({"memory": "64G"}, "31250000Ki"),
        ({"memory": "3"}, "1"),  # bytes, no unit divides it
        ({"memory": 2**31}, "1Gi"),  # an integer quantity
        ({}, "1Gi"),  # no memory given
        ({"memory": "64Gi", "sharedMemory": "8Gi"}, "8Gi"),  # asked for
    ],
)
def test_shared_memory_is_half_the_memory_limit_unless_given(resources, size):
    assert _shm(**resources) == size


def test_gpu_memory_from_the_operators_table_when_the_spec_names_a_gpu_product():
    """The trainer's memory plan needs the GPU's memory before it sees a GPU: from resources.gpuMemory, else from the
    operator's table of GPU products (the nvidia.com/gpu.product node label the spec's nodeSelector names)."""
    from dataclasses import replace

    config = replace(CONFIG, gpu_memory_table={"NVIDIA-H100-80GB-HBM3": "80Gi"})
    h100 = {"gpus": 8, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}

    def env(resources):
        job = builders.build_job(FTJ, _spec(resources=resources), config, suspend=False)
        return _env(job["spec"]["template"]["spec"]["containers"][0])

    assert env(h100)["KUBETUNE_GPU_MEMORY"] == "80Gi"
    assert "KUBETUNE_GPU_MEMORY" not in env(h100 | {"gpuMemory": "94Gi"})  # the spec's own value: the trainer reads it
    assert "KUBETUNE_GPU_MEMORY" not in env({"gpus": 1, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}})
    assert "KUBETUNE_GPU_MEMORY" not in env({"gpus": 1})
    # nodes x gpus is the world size, with FSDP as with DDP: the same Indexed Job and torchrun over every GPU.
    job = builders.build_job(
        FTJ, _spec(nodes=2, resources=h100, distributed={"strategy": "fsdp"}), config, suspend=False
    )
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--nnodes") + 1] == "2" and command[command.index("--nproc-per-node") + 1] == "8"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == 2


def test_the_trainer_plans_with_the_gpu_memory_the_operator_passes(monkeypatch):
    """The two ends of KUBETUNE_GPU_MEMORY: the value the operator puts in the pod is what the trainer's plan uses
    for the GPU's memory, before it looks at a GPU (and the spec's own resources.gpuMemory wins over it)."""
    from dataclasses import replace

    from kubetune_trainer.entrypoint import gpu_memory

    config = replace(CONFIG, gpu_memory_table={"NVIDIA-A100-SXM4-40GB": "40Gi"})
    spec = _spec(resources={"gpus": 1, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}})
    env = _env(builders.build_job(FTJ, spec, config, suspend=False)["spec"]["template"]["spec"]["containers"][0])
    monkeypatch.setenv("KUBETUNE_GPU_MEMORY", env["KUBETUNE_GPU_MEMORY"])
    assert gpu_memory(spec) == 40 * 2**30
    assert gpu_memory(_spec(resources={"gpus": 1, "gpuMemory": "80Gi"})) == 80 * 2**30
