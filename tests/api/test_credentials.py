"""credentials.py: which Secret feeds which role, under which environment names, and how the trainer finds a
value (the role's own variable, else the plain one)."""

from __future__ import annotations

from kubetune.api.credentials import (
    ROLE_MODEL,
    ROLE_OUTPUT,
    ROLE_REWARD_MODEL,
    credential_bindings,
    dataset_role,
    endpoint_for,
    env_name,
    eval_dataset_role,
    lookup,
)
from kubetune.api.v1alpha1 import Spec


def _spec(**extra) -> Spec:
    raw = {
        "technique": "lora",
        "model": {"uri": "hf://org/model", "credentialsSecret": "hf-token"},
        "datasets": [
            {"name": "a", "uri": "s3://data/a.jsonl", "format": "text", "evalUri": "s3://data/a-eval.jsonl"},
            {"name": "b", "uri": "hf://datasets/org/b", "format": "text"},
            {
                "name": "c",
                "uri": "s3://other/c.jsonl",
                "format": "text",
                "credentialsSecret": "other",
                "endpoint": "http://minio:9000",
            },
        ],
        "output": {"uri": "s3://out/", "credentialsSecret": "s3-creds", "endpoint": "http://store:9000"},
    }
    raw.update(extra)
    return Spec.model_validate(raw)


def test_bindings_with_their_fallbacks():
    bindings = {b.role: b for b in credential_bindings(_spec())}
    assert bindings[ROLE_MODEL].secret == "hf-token" and bindings[ROLE_MODEL].keys == ("HF_TOKEN",)
    # s3 data without a Secret of its own reads with the output's; hf data with the model's token.
    assert bindings[dataset_role(0)].secret == "s3-creds"
    assert bindings[eval_dataset_role(0)].secret == "s3-creds"
    assert bindings[dataset_role(1)].secret == "hf-token" and bindings[dataset_role(1)].keys == ("HF_TOKEN",)
    assert bindings[dataset_role(2)].secret == "other"
    assert bindings[ROLE_OUTPUT].keys == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    assert ROLE_REWARD_MODEL not in bindings


def test_file_uris_and_missing_secrets_bind_nothing():
    spec = Spec.model_validate(
        {"technique": "full", "model": {"uri": "file:///m"}, "datasets": [{"uri": "file:///d.jsonl", "format": "text"}]}
    )
    assert credential_bindings(spec) == []


def test_lookup_prefers_the_roles_own_variable():
    env = {env_name("dataset-2", "AWS_ACCESS_KEY_ID"): "role-key", "AWS_ACCESS_KEY_ID": "plain-key"}
    assert env_name("dataset-2", "AWS_ACCESS_KEY_ID") == "KUBETUNE_DATASET_2_AWS_ACCESS_KEY_ID"
    assert lookup("dataset-2", "AWS_ACCESS_KEY_ID", env) == "role-key"
    assert lookup("output", "AWS_ACCESS_KEY_ID", env) == "plain-key"
    assert lookup("output", "AWS_SESSION_TOKEN", env) is None
    assert lookup("output", "AWS_ACCESS_KEY_ID", {"AWS_ACCESS_KEY_ID": ""}) is None


def test_endpoints_default_to_the_outputs():
    spec = _spec()
    assert endpoint_for(spec, dataset_role(2)) == "http://minio:9000"
    assert endpoint_for(spec, dataset_role(0)) == "http://store:9000"
    assert endpoint_for(spec, ROLE_MODEL) == "http://store:9000"
