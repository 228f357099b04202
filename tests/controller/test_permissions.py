"""permissions.py: every API call the operator makes is granted, and it holds all it grants."""

from __future__ import annotations

import kubernetes
import pytest

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.controller import builders
from kubetune.controller.permissions import OPERATOR_PERMISSIONS, is_granted
from kubetune.testing.harness import wait_for
from tests.controller.samples import FTJ


def test_the_operator_holds_every_permission_it_grants_a_reporter():
    """RBAC escalation check: the API server refuses a Role granting what its creator does not hold."""
    role = builders.build_role(FTJ)
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert is_granted(verb, group, resource), f"the operator cannot grant {verb} {resource}"


@pytest.mark.timeout(60)
def test_every_call_the_operator_made_is_granted_by_permissions_py(admin, namespace, sim, emulator, operator):
    """One job through its life (two nodes: a Service too; a TTL: the children deleted), then every call the
    operator made since it started, this test's and any earlier test's, against the list."""
    crd = kubernetes.client.CustomObjectsApi(admin)
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "granted", "namespace": namespace},
        "spec": {
            "technique": "lora",
            "objective": "causal-lm",
            "model": {"uri": "hf://org/model"},
            "datasets": [{"uri": "s3://data/train.jsonl", "format": "text"}],
            "nodes": 2,
            "ttlSecondsAfterFinished": 1,
        },
    }
    crd.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    wait_for(lambda: sim.kube.get("Job", namespace, "granted"), what="the Job")
    sim.start(namespace, "granted")
    sim.succeed(namespace, "granted")
    wait_for(lambda: sim.kube.get("Job", namespace, "granted") is None, timeout=10, what="the TTL's deletions")

    calls = {(c.verb, c.api_group, c.resource) for c in emulator.calls("operator")}
    assert {
        ("create", "batch", "jobs"),
        ("delete", "batch", "jobs"),
        ("create", "", "services"),
        ("patch", GROUP, f"{PLURAL}/status"),
        ("list", "", "pods"),
    } <= calls
    missing = sorted(call for call in calls if not is_granted(*call))
    assert not missing, f"permissions.py lacks: {missing}"
    assert all(p.verbs for p in OPERATOR_PERMISSIONS)
