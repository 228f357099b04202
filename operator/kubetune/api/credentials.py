"""Which Secret feeds which part of a run, and under which environment names.

The operator never reads Secret contents: it wires each key into the trainer pod with
`secretKeyRef` under a role-prefixed name (KUBETUNE_OUTPUT_AWS_ACCESS_KEY_ID, ...), so a model in one
bucket and an output in another can use different credentials. The trainer looks a key up by role,
then falls back to the plain name (AWS_ACCESS_KEY_ID, HF_TOKEN) for local runs.

In a pod nothing falls back silently: the operator sets KUBETUNE_AMBIENT_CREDENTIALS to the roles whose spec
entry asked for ambientCredentials (and the platform's policy allowed). With that variable present, a role reads
only its own variables, and a role with neither a Secret nor ambient credentials reads anonymously, never with
the node's or instance's cloud identity.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubetune.api.constants import HF_KEYS, MLFLOW_KEYS, S3_KEYS, WANDB_KEYS
from kubetune.api.uris import OBJECT_STORES, parse_uri
from kubetune.api.v1alpha1 import Spec

SCHEME_KEYS = {"hf": HF_KEYS, "s3": S3_KEYS, "file": ()}
# The keys a Secret must hold to be of use at all: the pod waits for them (the operator reports SecretNotFound)
# rather than running without credentials; the others (AWS_SESSION_TOKEN) are optional.
SCHEME_REQUIRED_KEYS = {"hf": HF_KEYS, "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "file": ()}
# Set by the operator on every training pod: the roles that may use the pod's cloud identity, comma-separated.
AMBIENT_ROLES_ENV = "KUBETUNE_AMBIENT_CREDENTIALS"

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
    keys: tuple[str, ...]  # keys wired; a missing one is simply unset, unless it is required
    required: tuple[str, ...] = ()  # keys the Secret must hold (the pod does not start without them)


def _fallback_secret(spec: Spec, scheme: str) -> str | None:
    # Data usually lives beside the output (an object store) or behind the model's hub token (hf).
    if scheme in OBJECT_STORES:
        return spec.output.credentials_secret or (
            spec.model.credentials_secret if parse_uri(spec.model.uri).scheme == scheme else None
        )
    if scheme == "hf":
        return spec.model.credentials_secret if parse_uri(spec.model.uri).scheme == "hf" else None
    return None


def _storage_roles(spec: Spec) -> list[tuple[str, str, str | None, bool]]:
    """(role, uri, its own credentialsSecret, ambientCredentials) of everything the trainer reads or writes."""
    wanted = [(ROLE_MODEL, spec.model.uri, spec.model.credentials_secret, spec.model.ambient_credentials)]
    for i, ds in enumerate(spec.datasets):
        wanted.append((dataset_role(i), ds.uri, ds.credentials_secret, ds.ambient_credentials))
        if ds.eval_uri:
            wanted.append((eval_dataset_role(i), ds.eval_uri, ds.credentials_secret, ds.ambient_credentials))
    if spec.rlhf is not None and spec.rlhf.reward_model.uri:
        wanted.append((ROLE_REWARD_MODEL, spec.rlhf.reward_model.uri, spec.rlhf.reward_model.credentials_secret, False))
    if spec.output.uri:
        wanted.append((ROLE_OUTPUT, spec.output.uri, spec.output.credentials_secret, spec.output.ambient_credentials))
    return wanted


def ambient_roles(spec: Spec) -> list[str]:
    """The roles that read or write with the pod's cloud identity (ambientCredentials: true)."""
    return [role for role, _, _, ambient in _storage_roles(spec) if ambient]


def credential_bindings(spec: Spec) -> list[CredentialBinding]:
    """Every (role, Secret) pair the trainer pod needs, with defaults resolved."""
    bindings = []
    for role, uri, secret, ambient in _storage_roles(spec):
        scheme = parse_uri(uri).scheme
        # An entry that asked for the pod's identity borrows no other entry's Secret.
        if role != ROLE_OUTPUT and role != ROLE_MODEL and not ambient:
            secret = secret or _fallback_secret(spec, scheme)
        if secret and SCHEME_KEYS[scheme]:
            bindings.append(
                CredentialBinding(role, uri, scheme, secret, SCHEME_KEYS[scheme], SCHEME_REQUIRED_KEYS[scheme])
            )
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
    """A credential value for a role: the role's own variable, else (outside a pod the operator made) the plain
    one, else None."""
    env = os.environ if environ is None else environ
    own = env.get(env_name(role, key)) or None
    if own or AMBIENT_ROLES_ENV in env:
        return own
    return env.get(key) or None


def may_use_ambient(role: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a role without credentials of its own may fall back to the environment's (the cloud SDK's default
    chain: variables, config files, IRSA or workload identity, the instance's metadata service). Always outside
    a pod the operator made (a local run uses the machine's credentials); in one, only for the roles it listed."""
    env = os.environ if environ is None else environ
    if AMBIENT_ROLES_ENV not in env:
        return True
    return role in {r.strip() for r in env[AMBIENT_ROLES_ENV].split(",") if r.strip()}


def endpoint_for(spec: Spec, role: str) -> str | None:
    """S3 endpoint for a role: its own setting, else spec.output.endpoint (else the environment's)."""
    own = None
    if role == ROLE_MODEL:
        own = spec.model.endpoint
    elif role.startswith("dataset-"):
        own = spec.datasets[int(role.split("-")[1])].endpoint
    return own or spec.output.endpoint
