"""policy.py: the platform's policy as the operator reads it (KUBETUNE_POLICY) and enforces it, rule by rule; and the
running operator, which fails a job the policy refuses with reason PolicyDenied before creating anything for it.
(The same rules as a ValidatingAdmissionPolicy: tests/charts/test_admission_policy.py.)"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from kubetune.controller import builders, policy
from kubetune.controller.config import from_env
from kubetune.controller.policy import Policy
from kubetune.testing.harness import wait_for
from tests.controller.samples import CONFIG, FTJ, SPEC

STRICT = Policy(
    allowed_image_prefixes=("registry.example/ml/",),
    require_queue=True,
    max_gpus_per_job=8,
    max_nodes_per_job=2,
    allowed_priority_classes=("training", "urgent"),
    output_uri_prefix="s3://out/root/{namespace}/",
    allow_ambient_credentials=False,
    allowed_service_accounts=("ml-identity",),
)
ALLOWED = SPEC | {"queueName": "team-a-gpus"}


def violations(spec: dict, rules: Policy = STRICT, ftj: dict = FTJ) -> dict[str, str]:
    config = dataclasses.replace(CONFIG, policy=rules)
    resolved = builders.resolve_spec(spec, config, ftj["metadata"]["name"])
    return {v.rule: str(v) for v in policy.check(config, ftj, resolved)}


def test_a_job_within_every_rule_is_allowed():
    assert violations(ALLOWED) == {}
    # the default trainer image, named or not, is always allowed
    assert violations(ALLOWED | {"image": CONFIG.trainer_image}) == {}
    assert violations(ALLOWED | {"image": "registry.example/ml/trainer:2"}) == {}


@pytest.mark.parametrize(
    "change, rule, field",
    [
        ({"image": "registry.example/ml-evil/trainer:1"}, "allowedImagePrefixes", "spec.image"),
        ({"image": "docker.io/library/python:3.11"}, "allowedImagePrefixes", "spec.image"),
        ({"queueName": ""}, "requireQueue", "spec.queueName"),
        ({"resources": SPEC["resources"] | {"gpus": 8}, "nodes": 2}, "maxGpusPerJob", "spec.resources.gpus"),
        ({"nodes": 3}, "maxNodesPerJob", "spec.nodes"),
        ({"priorityClassName": "system-cluster-critical"}, "allowedPriorityClasses", "spec.priorityClassName"),
        ({"output": {"uri": "s3://elsewhere/", "credentialsSecret": "s3-creds"}}, "outputUriPrefix", "spec.output.uri"),
        # the run lands under <uri>/<namespace>/..., so naming another team's folder does not get there either
        (
            {"output": {"uri": "s3://out/root/team-b/", "credentialsSecret": "s3-creds"}},
            "outputUriPrefix",
            "spec.output.uri",
        ),
        (
            {"output": {"uri": "s3://out/root/", "ambientCredentials": True}},
            "allowAmbientCredentials",
            "spec.output.ambientCredentials",
        ),
        ({"pod": {"serviceAccountName": "cluster-admin-ish"}}, "allowedServiceAccounts", "spec.pod.serviceAccountName"),
    ],
)
def test_each_rule_refuses_naming_itself_and_the_field(change, rule, field):
    found = violations(ALLOWED | change)
    assert set(found) == {rule}, found
    assert found[rule].startswith(field + ":") and found[rule].endswith(f"(policy rule {rule})")


def test_limits_count_every_gpu_of_every_node():
    assert violations(ALLOWED | {"resources": {"gpus": 4}, "nodes": 2}) == {}  # 8
    assert "16 GPUs" in violations(ALLOWED | {"resources": {"gpus": 8}, "nodes": 2})["maxGpusPerJob"]


def test_output_prefix_per_namespace():
    # The default output root (s3://out/root/) puts team-a's runs under s3://out/root/team-a/: allowed.
    assert violations(ALLOWED) == {}
    # A prefix without the closing slash still does not cover a namespace whose name merely starts alike.
    rules = dataclasses.replace(STRICT, output_uri_prefix="s3://out/root/{namespace}")
    assert rules.output_prefix("team-a") == "s3://out/root/team-a/"
    other = FTJ | {"metadata": FTJ["metadata"] | {"namespace": "team-ab"}}
    assert violations(ALLOWED, rules, other) == {}  # s3://out/root/team-ab/bot/u-1/
    # team-ab writing into team-a's folder: s3://out/root/team-a/team-ab/... is not under s3://out/root/team-ab/
    found = violations(ALLOWED | {"output": {"uri": "s3://out/root/team-a"}}, rules, other)
    assert set(found) == {"outputUriPrefix"} and "s3://out/root/team-a/team-ab/bot/u-1/" in found["outputUriPrefix"]
    # and team-a naming a look-alike folder lands in s3://out/root/team-a-evil/team-a/...: not under team-a/
    assert set(violations(ALLOWED | {"output": {"uri": "s3://out/root/team-a-evil/"}}, rules)) == {"outputUriPrefix"}


def test_ambient_credentials_name_every_entry_that_asks():
    spec = SPEC | {
        "queueName": "q",
        "model": {"uri": "s3://models/base/", "ambientCredentials": True},
        "datasets": [
            {"name": "a", "uri": "s3://data/a.jsonl", "format": "messages"},
            {"name": "b", "uri": "s3://data/b.jsonl", "format": "messages", "ambientCredentials": True},
        ],
    }
    config = dataclasses.replace(CONFIG, policy=STRICT)
    found = policy.check(config, FTJ, builders.resolve_spec(spec, config))
    assert [v.field for v in found] == ["spec.model.ambientCredentials", "spec.datasets[1].ambientCredentials"]
    assert violations(spec, dataclasses.replace(STRICT, allow_ambient_credentials=True)) == {}


def test_service_accounts_none_by_default_any_with_a_star():
    spec = ALLOWED | {"pod": {"serviceAccountName": "ml-identity"}}
    assert violations(spec) == {}
    assert set(violations(spec, dataclasses.replace(STRICT, allowed_service_accounts=()))) == {"allowedServiceAccounts"}
    assert (
        violations(
            spec | {"pod": {"serviceAccountName": "x"}}, dataclasses.replace(STRICT, allowed_service_accounts=("*",))
        )
        == {}
    )
    # without any policy: identities are the two things refused unless allowed
    assert set(violations(spec, Policy())) == {"allowedServiceAccounts"}
    assert violations(SPEC, Policy()) == {}


def test_default_queue_is_filled_in_and_satisfies_require_queue():
    rules = dataclasses.replace(STRICT, default_queue="team-gpus")
    config = dataclasses.replace(CONFIG, policy=rules)
    spec = builders.resolve_spec(SPEC, config)
    assert spec.queue_name == "team-gpus" and policy.check(config, FTJ, spec) == []
    job = builders.build_job(FTJ, spec, config, suspend=builders.initial_suspend(spec))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus" and job["spec"]["suspend"] is True
    # a queue the job names is kept
    assert builders.resolve_spec(SPEC | {"queueName": "mine"}, config).queue_name == "mine"


# ------------------------------------------------------------------------------------------ the setting


def test_the_policy_setting_is_read_from_the_helm_values_json():
    values = {
        "allowedImagePrefixes": ["registry.example/ml/"],
        "requireQueue": True,
        "defaultQueue": "",
        "maxGpusPerJob": 8,
        "maxNodesPerJob": 2,
        "allowedPriorityClasses": ["training", "urgent"],
        "outputUriPrefix": "s3://out/root/{namespace}/",
        "allowAmbientCredentials": False,
        "allowedServiceAccounts": ["ml-identity"],
    }
    assert from_env({"KUBETUNE_POLICY": json.dumps(values)}).policy == STRICT
    assert from_env({}).policy == Policy() == from_env({"KUBETUNE_POLICY": "  "}).policy


@pytest.mark.parametrize(
    "values, named",
    [
        ({"maxGpus": 8}, "unknown rule(s) maxGpus"),
        ({"maxGpusPerJob": -1}, "KUBETUNE_POLICY.maxGpusPerJob: must be an integer >= 0"),
        ({"maxGpusPerJob": "8"}, "KUBETUNE_POLICY.maxGpusPerJob"),
        ({"requireQueue": "yes"}, "KUBETUNE_POLICY.requireQueue: must be true or false"),
        ({"allowedImagePrefixes": "ghcr.io/acme/"}, "KUBETUNE_POLICY.allowedImagePrefixes: must be a list"),
        ({"allowedImagePrefixes": ["ghcr.io/acme"]}, "must end with '/', ':' or '@'"),
        ({"outputUriPrefix": "s3://out/{team}/"}, "only {namespace} may stand in braces"),
        ({"outputUriPrefix": "ml-outputs/{namespace}/"}, "is not a URI prefix"),
        ({"allowedServiceAccounts": ["Admin"]}, "KUBETUNE_POLICY.allowedServiceAccounts"),
        ({"defaultQueue": "Team GPUs"}, "KUBETUNE_POLICY.defaultQueue"),
    ],
)
def test_a_bad_policy_setting_is_one_line_naming_the_value(values, named):
    with pytest.raises(ValueError, match="KUBETUNE_POLICY") as refused:
        from_env({"KUBETUNE_POLICY": json.dumps(values)})
    assert named in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="not valid JSON"):
        from_env({"KUBETUNE_POLICY": "{maxGpusPerJob: 8"})


# ------------------------------------------------------------------------------------------ the running operator


@pytest.fixture
def user(admin, namespace, operator):
    from tests.controller.test_operator import User

    return User(admin, namespace)


@pytest.mark.timeout(120)
def test_the_operator_fails_a_refused_job_before_creating_anything(user, sim, operator):
    operator.reconfigure(policy=Policy(max_gpus_per_job=2, allowed_priority_classes=("training",)))
    try:
        user.apply("too-big", resources={"gpus": 4}, priorityClassName="urgent")
        status = user.wait_phase("too-big", "Failed")
        failed = user.condition("too-big", "Failed")
        assert failed["reason"] == "PolicyDenied" and user.condition("too-big", "Ready")["reason"] == "PolicyDenied"
        assert "maxGpusPerJob" in status["message"] and "allowedPriorityClasses" in status["message"]
        assert status["message"].startswith("denied by the cluster's policy: spec.resources.gpus: the job asks for 4")
        wait_for(lambda: ("Warning", "PolicyDenied") in user.events("too-big"), what="the PolicyDenied Event")
        time.sleep(1.2)  # after a resync too: no Job, nothing else, one Event
        assert sim.kube.get("Job", user.ns, "too-big") is None
        assert sim.kube.get("ServiceAccount", user.ns, "too-big-reporter") is None
        assert user.events("too-big").count(("Warning", "PolicyDenied")) == 1
    finally:
        operator.reconfigure(policy=Policy())


@pytest.mark.timeout(120)
def test_a_running_job_keeps_the_rules_it_started_under(user, sim, operator):
    user.apply("early", priorityClassName="urgent")
    wait_for(lambda: sim.kube.get("Job", user.ns, "early"), what="the Job")
    sim.start(user.ns, "early")
    user.wait_phase("early", "Running")
    operator.reconfigure(policy=Policy(allowed_priority_classes=("training",)))
    try:
        time.sleep(2.5)  # resyncs run every second
        assert user.status("early")["phase"] == "Running"
    finally:
        operator.reconfigure(policy=Policy())


@pytest.mark.timeout(120)
def test_the_default_queue_sends_a_job_through_kueue(user, sim, operator):
    operator.reconfigure(policy=Policy(require_queue=True, default_queue="team-gpus"))
    try:
        user.apply("queued")
        job = wait_for(lambda: sim.kube.get("Job", user.ns, "queued"), what="the Job")
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus" and job["spec"]["suspend"]
        assert user.wait_phase("queued", "Queued")["phase"] == "Queued"
    finally:
        operator.reconfigure(policy=Policy())
