"""No silent fallback to the node's credentials: an entry asking for ambientCredentials borrows no other entry's
Secret, the pod is told which roles may use its cloud identity, and in a pod a role without credentials finds none
(no plain AWS_* variables, no default chain); a Secret without its required keys keeps the pod from starting."""

from __future__ import annotations

from kubetune.api.credentials import (
    AMBIENT_ROLES_ENV,
    ROLE_MODEL,
    ROLE_OUTPUT,
    ambient_roles,
    credential_bindings,
    dataset_role,
    env_name,
    eval_dataset_role,
    lookup,
    may_use_ambient,
)
from kubetune.api.v1alpha1 import Spec


def _spec(**extra) -> Spec:
    raw = {
        "technique": "lora",
        "model": {"uri": "s3://models/base/", "ambientCredentials": True},
        "datasets": [
            {
                "name": "a",
                "uri": "s3://data/a.jsonl",
                "format": "text",
                "ambientCredentials": True,
                "evalUri": "s3://data/a-eval.jsonl",
            },
            {"name": "b", "uri": "s3://data/b.jsonl", "format": "text"},
        ],
        "output": {"uri": "s3://out/", "credentialsSecret": "s3-creds"},
    }
    raw.update(extra)
    return Spec.model_validate(raw)


def test_an_entry_asking_for_ambient_credentials_borrows_no_secret():
    bindings = {b.role: b for b in credential_bindings(_spec())}
    # Dataset a (and its eval data) reads with the pod's identity, not with the output's Secret.
    assert dataset_role(0) not in bindings and eval_dataset_role(0) not in bindings
    assert ROLE_MODEL not in bindings
    # Dataset b asked for nothing: it still reads beside the output, with the output's Secret.
    assert bindings[dataset_role(1)].secret == "s3-creds"
    assert ambient_roles(_spec()) == [ROLE_MODEL, dataset_role(0), eval_dataset_role(0)]
    assert (
        ambient_roles(_spec(model={"uri": "hf://org/m"}, datasets=[{"uri": "s3://data/x.jsonl", "format": "text"}]))
        == []
    )


def test_the_keys_a_secret_must_hold():
    bindings = {b.role: b for b in credential_bindings(_spec())}
    assert bindings[ROLE_OUTPUT].required == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert "AWS_SESSION_TOKEN" in bindings[ROLE_OUTPUT].keys  # wired, but optional
    hf = {b.role: b for b in credential_bindings(_spec(model={"uri": "hf://org/m", "credentialsSecret": "hf"}))}
    assert hf[ROLE_MODEL].required == ("HF_TOKEN",)


def test_in_a_pod_a_role_finds_only_its_own_credentials():
    role_key = env_name(ROLE_OUTPUT, "AWS_ACCESS_KEY_ID")
    local = {"AWS_ACCESS_KEY_ID": "machine-key"}
    pod = {AMBIENT_ROLES_ENV: "", "AWS_ACCESS_KEY_ID": "image-or-node-key"}
    # A local run (no marker): the plain variable, and the environment's default chain, as before.
    assert lookup(ROLE_OUTPUT, "AWS_ACCESS_KEY_ID", local) == "machine-key"
    assert may_use_ambient(ROLE_OUTPUT, local)
    # In a pod the operator made: the role's own variable or nothing.
    assert lookup(ROLE_OUTPUT, "AWS_ACCESS_KEY_ID", pod) is None
    assert lookup(ROLE_OUTPUT, "AWS_ACCESS_KEY_ID", pod | {role_key: "secret-key"}) == "secret-key"
    assert not may_use_ambient(ROLE_OUTPUT, pod)
    listed = {AMBIENT_ROLES_ENV: "model, dataset-0"}
    assert may_use_ambient(ROLE_MODEL, listed) and may_use_ambient(dataset_role(0), listed)
    assert not may_use_ambient(dataset_role(1), listed) and not may_use_ambient(ROLE_OUTPUT, listed)
