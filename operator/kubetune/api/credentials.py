"""Which Secret feeds which part of a run, and under which environment names.

The operator never reads Secret contents: it wires each key into the trainer pod with
`secretKeyRef` under a role-prefixed name (KUBETUNE_OUTPUT_AWS_ACCESS_KEY_ID, ...), so a model in one
bucket and an output in another can use different credentials. The trainer looks a key up by role,
then falls back to the plain name (AWS_ACCESS_KEY_ID, HF_TOKEN) for local runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubetune.api.constants import HF_KEYS, MLFLOW_KEYS, S3_KEYS, WANDB_KEYS
from kubetune.api.uris import parse_uri
from kubetune.api.v1alpha1 import Spec

SCHEME_KEYS = {"hf": HF_KEYS, "s3": S3_KEYS, "file": ()}

ROLE_MODEL = "model"
ROLE_OUTPUT = "output"
ROLE_REWARD_MODEL = "reward-model"
# The experiment trackers of spec.tracking: their tokens, wired like every other key (KUBETUNE_MLFLOW_<KEY>, ...).
ROLE_MLFLOW = "mlflow"
ROLE_WANDB = "wandb"


def dataset_role(index: int) -> str:
    return f"dataset-{index}"


def eval_dataset_role(index: int) -> str:
    return f"dataset-{index}-eval"


def env_name(role: str, key: str) -> str:
    """KUBETUNE_<ROLE>_<KEY>, e.g. KUBETUNE_DATASET_0_AWS_ACCESS_KEY_ID."""
    return f"KUBETUNE_{role.upper().replace('-', '_')}_{key}"


@dataclass(frozen=True)
class CredentialBinding:
    role: str
    uri: str
    scheme: str
    secret: str  # Secret name in the job's namespace
    keys: tuple[str, ...]  # keys wired (optional: a missing key is simply unset)


def _fallback_secret(spec: Spec, scheme: str) -> str | None:
    # Data usually lives beside the output (s3) or behind the model's hub token (hf).
    if scheme == "s3":
        return spec.output.credentials_secret or (
            spec.model.credentials_secret if parse_uri(spec.model.uri).scheme == "s3" else None
        )
    if scheme == "hf":
        return spec.model.credentials_secret if parse_uri(spec.model.uri).scheme == "hf" else None
    return None


def credential_bindings(spec: Spec) -> list[CredentialBinding]:
    """Every (role, Secret) pair the trainer pod needs, with defaults resolved."""
    wanted: list[tuple[str, str, str | None]] = [(ROLE_MODEL, spec.model.uri, spec.model.credentials_secret)]
    for i, ds in enumerate(spec.datasets):
        wanted.append((dataset_role(i), ds.uri, ds.credentials_secret))
        if ds.eval_uri:
            wanted.append((eval_dataset_role(i), ds.eval_uri, ds.credentials_secret))
    if spec.rlhf is not None and spec.rlhf.reward_model.uri:
        wanted.append((ROLE_REWARD_MODEL, spec.rlhf.reward_model.uri, spec.rlhf.reward_model.credentials_secret))
    if spec.output.uri:
        wanted.append((ROLE_OUTPUT, spec.output.uri, spec.output.credentials_secret))
    bindings = []
    for role, uri, secret in wanted:
        scheme = parse_uri(uri).scheme
        if role != ROLE_OUTPUT and role != ROLE_MODEL:
            secret = secret or _fallback_secret(spec, scheme)
        if secret and SCHEME_KEYS[scheme]:
            bindings.append(CredentialBinding(role, uri, scheme, secret, SCHEME_KEYS[scheme]))
    # The trackers' tokens: no key is required (MLflow takes a token or a user and password; a tracker that cannot
    # log in never holds training up, the trainer warns and trains on).
    tracking = spec.tracking
    if tracking is not None and tracking.mlflow is not None and tracking.mlflow.credentials_secret:
        uri = str(tracking.mlflow.uri)
        secret = tracking.mlflow.credentials_secret
        bindings.append(CredentialBinding(ROLE_MLFLOW, uri, uri.split("://", 1)[0], secret, MLFLOW_KEYS))
    if tracking is not None and tracking.wandb is not None:
        # W&B has no URI in the spec (its server is W&B's, or WANDB_BASE_URL in spec.pod.env).
        bindings.append(CredentialBinding(ROLE_WANDB, "", "wandb", tracking.wandb.credentials_secret, WANDB_KEYS))
    return bindings


def lookup(role: str, key: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A credential value for a role: the role's own variable, else the plain one, else None."""
    env = os.environ if environ is None else environ
    return env.get(env_name(role, key)) or env.get(key) or None


def endpoint_for(spec: Spec, role: str) -> str | None:
    """S3 endpoint for a role: its own setting, else spec.output.endpoint (else the environment's)."""
    own = None
    if role == ROLE_MODEL:
        own = spec.model.endpoint
    elif role.startswith("dataset-"):
        own = spec.datasets[int(role.split("-")[1])].endpoint
    return own or spec.output.endpoint
