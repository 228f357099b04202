"""The shared model cache, operator side: which entry a job's pods read, when that entry is populated, and which
entries are evicted.

What an entry is, how it is populated and how a pod reads it is the trainer's (kubetune_trainer/cache.py): entries
keyed by source and resolved commit, `python -m kubetune_trainer.cache populate` (exit 0, 10 or 20, a JSON result in
its termination message), `_COMPLETE` written last, training pods reading KUBETUNE_<ROLE>_CACHE_URI with the `cache`
role's credentials. This module decides, for each FineTuneJob the reconciler is about to give a Job:

- What the cache serves of it (`sources`): nothing unless the platform turned it on (Settings.root) and
  spec.model.cache says yes (unset: the platform's default, Settings.default); then the model and the reward model
  when they are hf:// repositories or s3:// folders, and every hf://datasets/... dataset and evaluation set. Each is a
  Source with its own entry and its own KUBETUNE_<ROLE>_CACHE_URI; file:// is read where it is, s3:// data as it is.
- Which entry. A public repository (read without credentials) is keyed here, as the trainer keys it: the commit its
  revision names now, looked up on the Hub without a token (`cache.resolve_commit`), then `cache.entry_uri`. A source
  read with the tenant's credentials (a credentialsSecret, which the operator never reads, the pod's identity, and
  every s3:// model) is private: its population Job runs in the job's namespace, as the job's ServiceAccount, with the
  job's credentials, keys the source there (the commit, or for s3:// a digest of its listing) and reports the entry,
  under namespaces/<namespace>/, in its termination message.
  A job keeps the model entry it was first given (status.modelCache.uri, checked to be an entry of its model) for
  every later attempt, so a retry never trains on another commit than the checkpoints it resumes. The API's status
  has room for the model's entry only: the other sources are resolved again for each attempt (as the trainer would
  without a cache), counted in kubetune_model_cache_sources_total and named in a ModelCacheReady Event.
- When its pods start. A complete entry (`_COMPLETE` in the store) gives the training Job KUBETUNE_MODEL_CACHE_URI and
  the store's read credentials at once. Otherwise the job waits, phase Pending with reason WaitingForModelCache, for
  the one population Job of its key, and its training Job is made once that population succeeded: the pods never see
  a partial entry. Single flight: the population Job's name is derived from its key (the entry itself for a public
  model; namespace, source, pickles and Secret for a private one), so however many jobs in however many namespaces
  ask at once, one create succeeds and the others get 409 AlreadyExists and wait for that Job.
- Failures. A population that exits 10 (no such repository or revision, gated without a token: the user's model is
  wrong) fails the jobs waiting for it with its words. One that exits 20 (Hub or store trouble) is retried by its Job
  (backoffLimit, with the Job controller's backoff) and then by a new Job, while the jobs keep waiting, each pass
  saying how the last attempt failed. With the Hub unreachable, a job whose entry exists still starts: a pinned
  commit needs no lookup, and a moving revision is taken to name the commit it named when the operator last resolved
  it (recorded in that entry's `_USED`); a job whose entry does not exist waits and is tried again with backoff.
- Eviction. With a size cap (Settings.max_bytes), complete entries are deleted least recently used first until the
  cache fits: `_COMPLETE` first (from then on no reader takes the entry), then its files. Last use is the entry's
  `_USED` (written whenever the operator gives a job the entry), else its population time. Never evicted: an entry
  that an unfinished job was given (its status.modelCache.uri, or for its other sources what this process gave its
  Job) or that a pass is giving a job right now.

Why the operator resolves a public model's commit itself rather than reading it from the population's report: a hit
then costs no pod at all (one Hub API request, shared by the jobs that ask at once, and one read of `_COMPLETE`),
so twenty jobs on a cached model start as early as without the cache; the single-flight key is the entry itself, so
a `main` that moved gets a population of its own and a finished population of an older commit is never taken for
the current one; and a job whose entry exists starts while the Hub is down.

Store calls (boto3, blocking) run in threads; everything else runs on the reconciler's loop, so the checks "is this
entry in use" and "is it being evicted" are atomic against each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubernetes.client import ApiException

from kubetune.api.constants import KIND, S3_KEYS, SCRATCH_MOUNT, TERMINATION_LOG, ExitCode, Phase, Reason
from kubetune.api.credentials import (
    AMBIENT_ROLES_ENV,
    ROLE_MODEL,
    ROLE_REWARD_MODEL,
    SCHEME_KEYS,
    SCHEME_REQUIRED_KEYS,
    ambient_roles,
    credential_bindings,
    dataset_role,
    endpoint_for,
    env_name,
    eval_dataset_role,
)
from kubetune.api.uris import join_uri, parse_uri
from kubetune.controller import builders, logs, status
from kubetune.controller.config import ModelCacheSettings as Settings
from kubetune.controller.queue import ItemExponentialBackoff

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec
    from kubetune.controller.reconciler import Reconciler

log = logs.log
Key = tuple[str, str]

# The trainer's names (kubetune_trainer.cache imports neither torch nor boto3 at module level).
CACHE_ROLE = "cache"
MARKER = "_COMPLETE"
PICKLE_VARIANT = ".with-pickles"
# Beside `_COMPLETE`: {"format": 1, "lastUsed": <RFC 3339>, "revisions": {<revision>: <when it last named the commit>}},
# written by the operator whenever it gives a job the entry. Eviction orders by lastUsed; with the Hub unreachable, a
# moving revision is taken to name the entry it named most recently.
USED = "_USED"
USED_FORMAT = 1
# `_USED` is written at most this often per entry (twenty jobs started together write it once).
USED_WRITE_SECONDS = 60.0
# A public revision resolved on the Hub is taken as it is for this long: the jobs of one burst share one lookup.
RESOLVED_SECONDS = 30.0
# A job a pass gave an entry counts as using it for this long, until its status (status.modelCache) says so.
GIVEN_SECONDS = 600.0

POPULATE_CONTAINER = "populate"
LABEL_POPULATION = "kubetune.dev/model-cache-population"
ANNOTATION_SOURCE = "kubetune.dev/model-cache-source"
ANNOTATION_ENTRY = "kubetune.dev/model-cache-entry"
POPULATION_PREFIX = "kubetune-cache-"
# Exit 20 (Hub or store trouble) is retried within the Job this many times, with the Job controller's backoff (10 s,
# doubling, at most 6 min); a Job that runs out of them is replaced by a new one.
POPULATION_BACKOFF_LIMIT = 4
# A finished population Job stays this long (the TTL controller removes it): a private model's result (its entry) is
# read from it by the jobs that come meanwhile; a moving revision of it is resolved again after that.
POPULATION_TTL_SECONDS = 600
# After a failed Hub lookup with no entry to fall back on: 5 s, doubling per failure in a row, at most 5 min.
HUB_RETRY_SECONDS = 5
HUB_RETRY_MAX_SECONDS = 300

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Ready:
    """The complete entry a job's pods read its model from; `hit`: it was complete when the job first asked."""

    entry: str
    hit: bool
    bytes: int = 0
    role: str = ROLE_MODEL


class Waiting(Exception):
    """The job's entry is not complete yet: it stays Pending (WaitingForModelCache) with these words."""


class Refused(Exception):
    """The job cannot have its model: it fails with reason UserError and these words."""


# --------------------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Source:
    """One thing a job reads that the cache can hold: its model, an hf:// dataset (or evaluation set), its reward
    model; with the credentials its population reads it with (those its training pods would read it with)."""

    role: str  # kubetune.api.credentials' role: model, dataset-0, dataset-0-eval, reward-model
    field: str  # the spec field that names it, for messages
    uri: str
    kind: str = "model"  # or "dataset"
    secret: str = ""  # the job's Secret its population reads it with ("" none)
    ambient: bool = False  # read with the pod's cloud identity (ambientCredentials)
    allow_pickle: bool = False
    endpoint: str = ""  # an s3:// source's endpoint (spec)
    region: str = ""
    service_account: str = ""  # spec.pod.serviceAccountName: a private population runs as the job's pods do

    @property
    def scheme(self) -> str:
        return parse_uri(self.uri).scheme

    @property
    def private(self) -> bool:
        """Read with a tenant's credentials (a credentialsSecret, the pod's identity, any s3:// model): cached in the
        job's namespace only, populated there with those credentials, never shared with another namespace."""
        return bool(self.secret) or self.ambient or self.scheme == "s3"


def _cacheable(uri: str, kind: str) -> bool:
    """What the population command fetches: hf:// models and datasets, and s3:// model folders (s3:// data is files
    the trainer reads as they are; file:// is read where it is)."""
    parsed = parse_uri(uri)
    if parsed.scheme == "hf":
        return parsed.is_dataset_repo == (kind == "dataset")
    return parsed.scheme == "s3" and kind == "model"


def sources(spec: Spec, settings: Settings) -> list[Source]:
    """What the cache serves of this job: nothing unless it is enabled and spec.model.cache (unset: the platform's
    default) says yes; then the model, the reward model (hf:// or s3://) and the hf:// datasets."""
    if not settings.enabled or not (spec.model.cache if spec.model.cache is not None else settings.default):
        return []
    bindings = {binding.role: binding for binding in credential_bindings(spec)}
    ambient = set(ambient_roles(spec))
    found = []

    def add(role: str, field: str, uri: str | None, kind: str, allow_pickle: bool = False) -> None:
        if not uri or not _cacheable(uri, kind):
            return
        binding = bindings.get(role)
        s3 = parse_uri(uri).scheme == "s3"
        found.append(
            Source(
                role,
                field,
                uri,
                kind,
                secret=binding.secret if binding is not None else "",
                ambient=role in ambient,
                allow_pickle=allow_pickle,
                endpoint=(endpoint_for(spec, role) or "") if s3 else "",
                region=(spec.output.region or "") if s3 else "",
                service_account=spec.chosen_service_account,
            )
        )

    add(ROLE_MODEL, "spec.model.uri", spec.model.uri, "model", spec.model.allow_pickle)
    for i, dataset in enumerate(spec.datasets):
        add(dataset_role(i), f"spec.datasets[{i}].uri", dataset.uri, "dataset")
        add(eval_dataset_role(i), f"spec.datasets[{i}].evalUri", dataset.eval_uri, "dataset")
    if spec.rlhf is not None:
        # The trainer loads the reward model with the model's allowPickle (entrypoint.py).
        add(
            ROLE_REWARD_MODEL, "spec.rlhf.rewardModel.uri", spec.rlhf.reward_model.uri, "model", spec.model.allow_pickle
        )
    return found


def model_source(spec: Spec, settings: Settings) -> Source | None:
    return next((s for s in sources(spec, settings) if s.role == ROLE_MODEL), None)


def wanted(spec: Spec, settings: Settings) -> bool:
    """Whether the cache serves this job's model: enabled, spec.model.cache (unset: the default), an hf:// or s3://
    model."""
    return model_source(spec, settings) is not None


def at_commit(uri: str, commit: str) -> str:
    """hf://org/name@<commit>: the same repository pinned to one commit (an s3:// folder has no commit to pin)."""
    parsed = parse_uri(uri)
    if parsed.scheme != "hf":
        return uri
    return f"hf://{'datasets/' if parsed.is_dataset_repo else ''}{parsed.location}@{commit}"


def revision_of(uri: str) -> str:
    """The revision a URI names ("main" when none: the Hub's default)."""
    return parse_uri(uri).revision or "main"


def commit_in(entry: str) -> str:
    """The commit an hf:// entry is keyed by (its last folder, without the pickles' suffix)."""
    return entry.rstrip("/").rsplit("/", 1)[-1].removesuffix(PICKLE_VARIANT)


def entry_of(settings: Settings, source: Source, namespace: str, commit: str) -> str:
    from kubetune_trainer import cache

    return cache.entry_uri(
        settings.root, source.uri, commit, namespace, source.private, allow_pickle=source.allow_pickle
    )


def pinned_entry(
    operator_status: Mapping | None, stored: Mapping | None, spec: Spec, settings: Settings, namespace: str
) -> tuple[str, bool] | None:
    """The entry (and hit) an earlier pass gave this job's model, from status.modelCache, when it is an entry of this
    job's model under this cache root (the status is writable by the job's own pod: anything else is ignored)."""
    source = model_source(spec, settings)
    if source is None:
        return None
    for recorded_in in (operator_status, stored):
        recorded = (recorded_in or {}).get("modelCache") or {}
        uri = recorded.get("uri")
        if not isinstance(uri, str) or not uri:
            continue
        try:
            expected = entry_of(settings, source, namespace, commit_in(uri))
        except ValueError:
            continue
        if expected == uri:
            return uri, bool(recorded.get("hit"))
    return None


def population_name(*key: str) -> str:
    """A population Job's name, the same for every pass that wants the same population (single flight)."""
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:20]
    return f"{POPULATION_PREFIX}{digest}"


def store_env(settings: Settings, secret: str) -> list[dict]:
    """The `cache` role's store settings for a pod: endpoint and region, and the keys of `secret` (none: ambient
    identity or anonymous reads, as KUBETUNE_AMBIENT_CREDENTIALS says)."""
    env = []
    if settings.endpoint:
        env.append({"name": env_name(CACHE_ROLE, "AWS_ENDPOINT_URL"), "value": settings.endpoint})
    if settings.region:
        env.append({"name": env_name(CACHE_ROLE, "AWS_REGION"), "value": settings.region})
    if secret:
        required = SCHEME_REQUIRED_KEYS["s3"]
        env += [
            {
                "name": env_name(CACHE_ROLE, key),
                "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": key not in required}},
            }
            for key in S3_KEYS
        ]
    return env


def s3_reader_env(source: Source) -> list[dict]:
    """An s3:// source's endpoint, region and keys (the job's Secret, referenced: the kubelet reads it), under the
    role's names, as a training pod gets them."""
    env = []
    if source.endpoint:
        env.append({"name": env_name(source.role, "AWS_ENDPOINT_URL"), "value": source.endpoint})
    if source.region:
        env.append({"name": env_name(source.role, "AWS_REGION"), "value": source.region})
    if source.secret:
        required = SCHEME_REQUIRED_KEYS["s3"]
        env += [
            {
                "name": env_name(source.role, key),
                "valueFrom": {"secretKeyRef": {"name": source.secret, "key": key, "optional": key not in required}},
            }
            for key in SCHEME_KEYS["s3"]
        ]
    return env


def wire(job: dict, ready: list[Ready] | Ready | None, settings: Settings) -> dict:
    """The training Job's pods read the model from the entry: KUBETUNE_<ROLE>_CACHE_URI and the store's read
    credentials (the read Secret of the job's namespace, or `cache` among the ambient roles), after the operator's
    own variables and before the user's. `ready`: every entry the job reads (its model's, its datasets'...)."""
    readies = [ready] if isinstance(ready, Ready) else list(ready or [])
    if not readies:
        return job
    from kubetune_trainer import cache

    container = next(
        c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == builders.TRAINER_CONTAINER
    )
    env = container["env"]
    at = next(i for i, e in enumerate(env) if e["name"] == AMBIENT_ROLES_ENV)
    if settings.read_ambient:
        roles = [r for r in env[at]["value"].split(",") if r]
        env[at] = {"name": AMBIENT_ROLES_ENV, "value": ",".join([*roles, CACHE_ROLE])}
    env[at + 1 : at + 1] = [
        *({"name": cache.env_for(each.role), "value": each.entry} for each in readies),
        *store_env(settings, "" if settings.read_ambient else settings.read_secret),
    ]
    return job


def wired_entries(job: dict | None) -> set[str]:
    """The cache entries a Job `wire` prepared reads, but its model's (which the job's status.modelCache holds)."""
    from kubetune_trainer import cache

    containers = (((job or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    trainer = next((c for c in containers if c.get("name") == builders.TRAINER_CONTAINER), {})
    wired = cache.entry_variables(trainer.get("env") or [])
    wired.pop(cache.env_for(ROLE_MODEL), None)
    return set(wired.values())


def population_job(
    settings: Settings,
    config,
    *,
    name: str,
    namespace: str,
    source: str,
    entry: str = "",
    private: bool,
    allow_pickle: bool,
    hf_secret: str = "",
    service_account: str = "",
    role: str = ROLE_MODEL,
    kind: str = "model",
    reader_env: list[dict] | None = None,
    reader_ambient: bool = False,
) -> dict:
    """A population Job: `python -m kubetune_trainer.cache populate` in the trainer image, once (podFailurePolicy:
    exit 10 fails it at once; exit 20 is retried), within the restricted Pod Security Standard like a training pod.

    Public (`private` False): in the operator's namespace with the platform's write credentials. Private: in the job's
    namespace, with the job's credentials for the source (`hf_secret`'s token, or `reader_env`, the role's keys and
    endpoint as `reader_env` gives them; `reader_ambient`: the pod's identity) and the namespace's cache Secret,
    writing under namespaces/<namespace>/. `role`: whose variables the command reads the source with."""
    option = "--dataset" if kind == "dataset" else "--model"
    command = ["python", "-m", "kubetune_trainer.cache", "populate", option, source, "--cache-root", settings.root]
    if role != ROLE_MODEL:
        command += ["--role", role]
    if private:
        command += ["--private", "--namespace", namespace]
    if allow_pickle:
        command.append("--allow-pickle")
    ambient = settings.read_ambient if private else not settings.populate_secret
    ambient_roles_value = [CACHE_ROLE] if ambient else []
    if reader_ambient:
        ambient_roles_value.append(role)
    env = [
        {"name": "KUBETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "KUBETUNE_WORK_DIR", "value": SCRATCH_MOUNT},
        {"name": "HOME", "value": SCRATCH_MOUNT},
        {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
        {"name": "TMPDIR", "value": SCRATCH_MOUNT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "HF_HUB_DISABLE_PROGRESS_BARS", "value": "1"},
        # Present, so a role without keys of its own never falls back to other credentials in the pod.
        {"name": AMBIENT_ROLES_ENV, "value": ",".join(ambient_roles_value)},
        *store_env(settings, "" if ambient else (settings.read_secret if private else settings.populate_secret)),
    ]
    if settings.hub_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": settings.hub_endpoint})
    if hf_secret:
        env.append(
            {
                "name": env_name(role, "HF_TOKEN"),
                "valueFrom": {"secretKeyRef": {"name": hf_secret, "key": "HF_TOKEN"}},
            }
        )
    env += reader_env or []
    labels = {
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/component": "model-cache",
        LABEL_POPULATION: name,
    }
    annotations = {ANNOTATION_SOURCE: source}
    if entry:
        annotations[ANNOTATION_ENTRY] = entry
    container = {
        "name": POPULATE_CONTAINER,
        "image": config.trainer_image,
        "command": command,
        "env": env,
        "resources": dict(settings.populate_resources),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_MOUNT}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": builders.RUN_AS_USER,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": builders.RUN_AS_USER,
            "runAsGroup": builders.RUN_AS_USER,
            "fsGroup": builders.RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if config.trainer_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in config.trainer_image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "backoffLimit": POPULATION_BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": POPULATION_TTL_SECONDS,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": POPULATE_CONTAINER,
                            "operator": "In",
                            "values": [ExitCode.USER_ERROR],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _terminated(pod: dict) -> dict | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == POPULATE_CONTAINER:
            return (container.get("state") or {}).get("terminated")
    return None


def _waiting_trouble(pods: list[dict]) -> str:
    """Why a population pod cannot start (a Secret or key it names is missing), in the kubelet's words."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if container.get("name") == POPULATE_CONTAINER and waiting.get("reason") == "CreateContainerConfigError":
                return status.pod_text(waiting.get("message") or waiting["reason"])
    return ""


def population_result(pods: list[dict]) -> dict | None:
    """The JSON result line a succeeded population pod left in its termination message."""
    for pod in pods:
        terminated = _terminated(pod)
        if not terminated or terminated.get("exitCode") != 0:
            continue
        for line in reversed((terminated.get("message") or "").strip().splitlines()):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if isinstance(result, dict) and isinstance(result.get("entry"), str):
                return result
    return None


def last_failure(pods: list[dict]) -> tuple[int | None, str]:
    """(exit code, words) of the newest failed population pod; (None, "") when none failed."""
    failed = [(t.get("finishedAt") or "", t) for p in pods if (t := _terminated(p)) and t.get("exitCode")]
    if not failed:
        return None, ""
    _, newest = max(failed, key=lambda pair: pair[0])
    words = status.pod_text(newest.get("message") or "") or f"exit code {newest.get('exitCode')}"
    return newest.get("exitCode"), words


def _finished(job: dict) -> str:
    """ "Complete", "Failed" or "" (still at work)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return ""


def _ended(job: dict, outcome: str) -> float:
    """When a finished Job's condition `outcome` ("Complete", "Failed") became true (0: it has none)."""
    return max(
        (
            _parse_time(c.get("lastTransitionTime"))
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("type") == outcome
        ),
        default=0.0,
    )


def _created(ftj: dict) -> float:
    return _parse_time(ftj["metadata"].get("creationTimestamp"))


def waited(operator_status: Mapping) -> bool:
    """Whether the job's last status had it waiting for the model cache (the Running condition carries the reason of
    a Pending job)."""
    return any(
        c.get("type") == "Running" and c.get("reason") == Reason.WAITING_FOR_MODEL_CACHE
        for c in operator_status.get("conditions") or []
        if isinstance(c, dict)
    )


def _now() -> str:
    return status.now_rfc3339()


def _parse_time(text: Any) -> float:
    try:
        return dt.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------------------- the store


class Store:
    """The cache root with the `cache` role's credentials of the operator's own pod (the chart passes the write
    Secret's keys into its environment: the kubelet reads that Secret, not the operator). Blocking: call in a thread."""

    def __init__(self, root: str):
        from kubetune_trainer.storage import get_storage

        self.root = root
        self._storage = get_storage(root, credentials_role=CACHE_ROLE)

    def marker(self, entry: str) -> dict | None:
        try:
            marker = json.loads(self._storage.read_text(join_uri(entry, MARKER)))
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None

    def used(self, entry: str) -> dict:
        try:
            used = json.loads(self._storage.read_text(join_uri(entry, USED)))
        except (FileNotFoundError, ValueError):
            return {}
        return used if isinstance(used, dict) else {}

    def record_use(self, entry: str, revision: str | None, now: str) -> None:
        used = self.used(entry)
        revisions = used.get("revisions") if isinstance(used.get("revisions"), dict) else {}
        if revision:
            revisions[revision] = now
        self._storage.write_text(
            join_uri(entry, USED),
            json.dumps({"format": USED_FORMAT, "lastUsed": now, "revisions": revisions}, sort_keys=True),
        )

    def entries(self, prefix: str) -> dict[str, set[str]]:
        """Entry -> the bookkeeping objects it has (`_COMPLETE`, `_USED`) under `prefix`."""
        found: dict[str, set[str]] = {}
        for uri in self._storage.list(prefix):
            folder, _, name = uri.rpartition("/")
            if name in (MARKER, USED):
                found.setdefault(folder + "/", set()).add(name)
        return found

    def delete(self, entry: str) -> None:
        """The marker first, so that no reader takes the entry while its files go."""
        self._storage.delete_prefix(join_uri(entry, MARKER))
        self._storage.delete_prefix(entry)


# --------------------------------------------------------------------------------------- the operator's part


@dataclass
class _Watched:
    """A population Job some jobs wait for."""

    waiters: set[Key] = field(default_factory=set)
    failed: int = 0


@dataclass(frozen=True)
class Stored:
    """A complete entry as an eviction pass sees it."""

    entry: str
    bytes: int
    last_used: float


class ModelCache:
    """The reconciler's model cache: `prepare` before a job's Job is made, `wire` into it, `run_forever` beside."""

    def __init__(self, reconciler: Reconciler):
        self._reconciler = reconciler
        self._stores: dict[str, Store] = {}
        self._resolved: dict[str, tuple[str, float]] = {}  # hf URI -> (commit, when resolved: monotonic)
        self._resolving: dict[str, asyncio.Future] = {}
        self._reading: dict[str, asyncio.Future] = {}  # entry -> the read of its marker under way
        self._hub_backoff = ItemExponentialBackoff(HUB_RETRY_SECONDS, HUB_RETRY_MAX_SECONDS)
        self._watched: dict[Key, _Watched] = {}  # (namespace, population Job) -> who waits for it
        self._given: dict[str, dict[Key, float]] = {}  # entry -> jobs a pass gave it (monotonic time)
        self._serving: dict[Key, set[str]] = {}  # job -> the entries of its other sources its last Job reads
        self._evicting: set[str] = set()
        self._used_written: dict[tuple[str, str | None], float] = {}
        self._markers: dict[str, dict] = {}  # complete entries' markers, as eviction read them
        self._counted: set[str] = set()  # population Jobs (uid) whose outcome the metrics counted
        self._background: set[asyncio.Task] = set()
        self._evict_due = 0.0

    @property
    def settings(self) -> Settings:
        return self._reconciler.config.model_cache

    @property
    def _metrics(self):
        return self._reconciler.metrics

    def _store(self) -> Store:
        root = self.settings.root
        if root not in self._stores:
            self._stores[root] = Store(root)
        return self._stores[root]

    async def _in_thread(self, what: str, call, *args):
        """A store call off the loop; the store's trouble is a Waiting (the platform's to fix, the job waits)."""
        from kubetune_trainer.errors import TrainerError

        try:
            return await asyncio.to_thread(call, *args)
        except TrainerError as err:
            raise Waiting(f"the model cache's store cannot be used ({what}): {err}; retrying") from None

    # ----------------------------------------------------------------------------------- prepare

    async def prepare(self, ftj: dict, spec: Spec, operator_status: Mapping) -> list[Ready]:
        """The complete entries this job's pods read, one per source the cache serves (none: it serves none); raises
        Waiting while any is not complete yet (a population is under way, or the Hub cannot be reached), Refused when
        a source cannot be had. Every source's population is started in the same pass: they run side by side."""
        settings = self.settings
        wanted_sources = sources(spec, settings)
        if not wanted_sources:
            return []
        meta = ftj["metadata"]
        key = (meta["namespace"], meta["name"])
        for watched in self._watched.values():
            watched.waiters.discard(key)  # registered again below while it still waits
        waited_before = waited(operator_status)
        readies, waits = [], []
        for source in wanted_sources:
            try:
                readies.append(await self._prepare(ftj, spec, source, operator_status, settings, key, waited_before))
            except Waiting as wait:
                waits.append(str(wait))
        if waits:
            message = "; ".join(waits)
            if not self._waits_for_population(key):
                delay = self._hub_backoff.when(key)
                self._reconciler.queue.add_after(key, delay)
                raise Waiting(f"{message} in {delay:.0f} s")
            raise Waiting(message)
        self._hub_backoff.forget(key)
        await self._served(ftj, readies)
        return readies

    def _waits_for_population(self, key: Key) -> bool:
        return any(key in watched.waiters for watched in self._watched.values())

    async def _prepare(
        self,
        ftj: dict,
        spec: Spec,
        source: Source,
        operator_status: Mapping,
        settings: Settings,
        key: Key,
        waited_before: bool,
    ) -> Ready:
        namespace = key[0]
        if source.role == ROLE_MODEL:
            pinned = pinned_entry(operator_status, ftj.get("status"), spec, settings, namespace)
            if pinned is not None:
                entry, hit = pinned
                ready = await self._complete(entry, key, hit, role=source.role)
                if ready is not None:
                    return ready
                # Gone (deleted by hand, or a store's lifecycle rule): the job's later attempts need the very same
                # commit (an s3:// folder is fetched as it is now: the bucket holds nothing older).
                ready = await self._population(
                    ftj,
                    source,
                    settings,
                    key,
                    fetch=at_commit(source.uri, commit_in(entry)),
                    entry=entry if not source.private else "",
                    waited=True,
                )
                return dataclasses.replace(ready, hit=hit)
        if source.private:
            return await self._population(ftj, source, settings, key, fetch=source.uri, entry="", waited=waited_before)
        commit, revision = await self._resolve(source, settings)
        entry = entry_of(settings, source, namespace, commit)
        ready = await self._complete(entry, key, not waited_before, revision, role=source.role)
        if ready is not None:
            return ready
        return await self._population(
            ftj,
            source,
            settings,
            key,
            fetch=at_commit(source.uri, commit),
            entry=entry,
            waited=waited_before,
            revision=revision,
        )

    async def _complete(
        self, entry: str, key: Key, hit: bool, revision: str | None = None, *, role: str = ROLE_MODEL
    ) -> Ready | None:
        """The entry as Ready when its marker is there and no eviction is taking it; the job counts as its user from
        now on (an eviction pass skips it)."""
        self._given.setdefault(entry, {})[key] = time.monotonic()
        if entry in self._evicting:
            return None
        marker = await self._marker(entry)
        if marker is None or entry in self._evicting:
            return None
        self._record_use(entry, revision)
        return Ready(entry, hit, int(marker.get("bytes") or 0), role)

    async def _marker(self, entry: str) -> dict | None:
        """The entry's `_COMPLETE`, read once for the passes that ask at the same time (the twenty jobs a finished
        population releases at once cost one read)."""
        pending = self._reading.get(entry)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._reading[entry] = pending
        try:
            marker = await self._in_thread(f"reading {entry}{MARKER}", self._store().marker, entry)
        except BaseException as err:
            pending.set_exception(err)
            pending.exception()  # retrieved: the other waiters raise it too
            raise
        else:
            pending.set_result(marker)
            return marker
        finally:
            self._reading.pop(entry, None)

    async def _resolve(self, source: Source, settings: Settings) -> tuple[str, str | None]:
        """(the commit a public repository's revision names, the revision when it is not a commit itself). One Hub
        request per URI at a time, and its answer is reused for RESOLVED_SECONDS."""
        uri = source.uri
        revision = parse_uri(uri).revision
        if revision and _COMMIT.fullmatch(revision):
            return revision, None
        known = self._resolved.get(uri)
        if known and time.monotonic() - known[1] < RESOLVED_SECONDS:
            return known[0], revision_of(uri)
        pending = self._resolving.get(uri)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._resolving[uri] = pending
            try:
                commit = await self._lookup(source, settings)
            except BaseException as err:
                pending.set_exception(err)
                pending.exception()  # retrieved: the other waiters raise it too
                raise
            else:
                self._resolved[uri] = (commit, time.monotonic())
                pending.set_result(commit)
            finally:
                self._resolving.pop(uri, None)
            return commit, revision_of(uri)
        return await asyncio.shield(pending), revision_of(uri)

    async def _lookup(self, source: Source, settings: Settings) -> str:
        from kubetune_trainer import cache
        from kubetune_trainer.errors import UserError

        uri = source.uri
        try:
            return await asyncio.to_thread(cache.resolve_commit, uri, token=False)
        except UserError as err:
            raise Refused(
                f"{source.field}: {err} (the model cache looked it up without a token; a gated or private "
                f"{source.kind} needs a credentialsSecret)"
            ) from None
        except Exception as err:  # noqa: BLE001 - the Hub's trouble: fall back on what the cache knows
            trouble = str(err) or type(err).__name__
        commit = await self._last_known(source, settings)
        if commit is None:
            raise Waiting(
                f"the Hugging Face Hub cannot be reached to resolve {uri} ({trouble}), and the model cache "
                "holds no entry that revision named before; looking again"
            )
        log.warning(
            "the Hugging Face Hub cannot be reached to resolve %s (%s): using commit %s, the one it named "
            "when last resolved",
            uri,
            trouble,
            commit,
        )
        return commit

    async def _last_known(self, source: Source, settings: Settings) -> str | None:
        """The commit a revision named when the operator last resolved it (the entries' `_USED`), among complete
        entries of this repository: what a job may start from while the Hub is down."""
        uri = source.uri
        parsed = parse_uri(uri)
        folder = f"{'datasets' if parsed.is_dataset_repo else 'models'}--{parsed.location.replace('/', '--')}"
        store = self._store()
        entries = await self._in_thread("listing its entries", store.entries, join_uri(settings.root, "hf", folder))
        revision, best = revision_of(uri), None
        for entry, names in entries.items():
            if names != {MARKER, USED}:
                continue
            try:
                if entry_of(settings, source, "", commit_in(entry)) != entry:
                    continue  # the other pickle variant, or not an entry at all
            except ValueError:
                continue
            when = _parse_time(
                ((await self._in_thread("reading _USED", store.used, entry)).get("revisions") or {}).get(revision)
            )
            if when and (best is None or when > best[0]):
                best = (when, commit_in(entry))
        return best[1] if best else None

    # ----------------------------------------------------------------------------------- population

    async def _population(
        self,
        ftj: dict,
        source: Source,
        settings: Settings,
        key: Key,
        *,
        fetch: str,
        entry: str,
        waited: bool,
        revision: str | None = None,
    ) -> Ready:
        """The population Job of this key: made when there is none, read when it has finished. Returns the entry once
        complete; raises Waiting meanwhile, Refused when it failed for a reason of the user's. `fetch`: the URI it
        fetches (a public repository pinned to the commit its entry is keyed by)."""
        private = source.private
        namespace = key[0] if private else settings.namespace
        if private:
            # In the job's namespace, as the job's ServiceAccount, with the job's credentials; one per namespace,
            # source, variant and credentials: the jobs of a namespace that read one source with one Secret (or with
            # their identity, under one ServiceAccount) share it.
            account = source.service_account
            name = population_name(
                namespace,
                fetch,
                str(source.allow_pickle),
                source.secret,
                f"ambient:{account}" if source.ambient else "",
            )
        else:
            name = population_name(entry)
            account = settings.populate_service_account
        kube = self._reconciler.kube
        where = f"population Job {namespace}/{name}"
        job = await kube.get("Job", namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            if job is None:
                body = population_job(
                    settings,
                    self._reconciler.config,
                    name=name,
                    namespace=namespace,
                    source=fetch,
                    entry=entry,
                    private=private,
                    allow_pickle=source.allow_pickle,
                    hf_secret=source.secret if source.scheme == "hf" else "",
                    service_account=account,
                    role=source.role,
                    kind=source.kind,
                    reader_env=s3_reader_env(source) if source.scheme == "s3" else [],
                    reader_ambient=source.ambient,
                )
                try:
                    await kube.create(body)
                    logs.action(
                        key[0],
                        key[1],
                        "ModelCachePopulating",
                        f"created {where} to fetch {fetch} ({source.field}) into the model cache",
                        uid=ftj["metadata"]["uid"],
                    )
                except ApiException as err:
                    if err.status != 409:  # 409: another pass made it first; it is waited for all the same
                        raise Waiting(f"the API server refused {where}: {err.status} {err.reason}; retrying") from None
            self._wait_for(namespace, name, key, job)
            raise Waiting(f"waiting for the model cache: {where} fetches {fetch}")
        pods = await kube.list("Pod", namespace, f"{LABEL_POPULATION}={name}")
        outcome = _finished(job)
        if outcome == "Complete" and source.scheme == "s3" and _ended(job, "Complete") <= _created(ftj):
            # An s3:// folder has no revision to resolve: only a population run after the job was created can say
            # which content it holds now (a rewritten object gives a new key). An unchanged one costs that run a
            # listing and a read of `_COMPLETE`. The API's times are whole seconds: one that ended in the second the
            # job was created may have listed the folder before it, so it is run again too.
            await self._replace(namespace, job, key, f"{where} keyed {fetch} before this job was created")
            raise Waiting(f"waiting for the model cache: {where} keys {fetch} again")
        if outcome == "Complete":
            result = population_result(pods)
            if private:
                entry = self._checked_result(result, source, settings, namespace)
                hit = bool(result and result.get("hit")) or not waited
            else:
                hit = not waited
            ready = await self._complete(entry, key, hit, revision, role=source.role) if entry else None
            if ready is not None:
                return ready
            # Finished, yet its entry is not complete (evicted since, or its result unreadable): populate again.
            await self._replace(namespace, job, key, f"{where} finished but its entry is not complete")
            raise Waiting(f"waiting for the model cache: {where} fetches {fetch} again")
        if outcome == "Failed":
            code, words = last_failure(pods)
            if code == ExitCode.USER_ERROR and _ended(job, "Failed") >= _created(ftj):
                raise Refused(
                    f"{source.field}: the model cache cannot fetch {source.uri}: {words or 'the population failed'}"
                )
            # An infrastructure failure, or a user error that ended before this job was created (the Secret or the
            # grant may have been fixed since): a new population.
            await self._replace(namespace, job, key, f"{where} failed ({words or 'no reason given'})")
            raise Waiting(
                f"waiting for the model cache: {where} failed ({words or 'no reason given'}); starting it again"
            )
        self._wait_for(namespace, name, key, job)
        message = f"waiting for the model cache: {where} fetches {fetch}"
        trouble = _waiting_trouble(pods)
        if trouble:
            message += f"; its pod cannot start: {trouble}"
        code, words = last_failure(pods)
        if code is not None:
            message += f"; its last attempt failed ({words}) and is retried"
        raise Waiting(message)

    def _checked_result(self, result: dict | None, source: Source, settings: Settings, namespace: str) -> str:
        """A private population's entry, from its report, when it is an entry of this source in this namespace."""
        if not result:
            return ""
        try:
            expected = entry_of(settings, source, namespace, str(result.get("commit") or ""))
        except ValueError:
            return ""
        return expected if expected == result.get("entry") else ""

    async def _replace(self, namespace: str, job: dict, key: Key, why: str) -> None:
        """Delete a finished population Job that cannot serve: the next pass makes a new one."""
        self._count(job, [])
        await self._reconciler.kube.delete("Job", namespace, job["metadata"]["name"])
        logs.action(key[0], key[1], "ModelCachePopulating", f"{why}: deleted it, a new one starts")

    def _wait_for(self, namespace: str, name: str, key: Key, job: dict | None) -> None:
        watched = self._watched.setdefault((namespace, name), _Watched())
        watched.waiters.add(key)
        if job is not None:
            watched.failed = max(watched.failed, int((job.get("status") or {}).get("failed") or 0))

    # ----------------------------------------------------------------------------------- serving

    async def _served(self, ftj: dict, readies: list[Ready]) -> None:
        """The model's entry in status.modelCache before the Job exists (a later attempt reads its entry back from
        there), counted in the metrics the first time. The API's status has room for the model's entry only: the
        other sources (hf:// datasets, the reward model) are counted and named in an Event each time a Job is made
        for them (each attempt reads them again), and remembered as in use by this job until it finishes."""
        meta = ftj["metadata"]
        key = (meta["namespace"], meta["name"])
        others = [ready for ready in readies if ready.role != ROLE_MODEL]
        self._serving[key] = {ready.entry for ready in others}
        for ready in others:
            kind = "reward-model" if ready.role == ROLE_REWARD_MODEL else "dataset"
            self._metrics.model_cache_sources.labels(source=kind, result="hit" if ready.hit else "miss").inc()
            logs.action(
                meta["namespace"],
                meta["name"],
                "ModelCacheReady",
                f"the {kind} of role {ready.role} is read from the model cache entry {ready.entry} "
                f"({'it was there already' if ready.hit else 'populated for it'}, {ready.bytes} bytes)",
                uid=meta["uid"],
            )
        ready = next((ready for ready in readies if ready.role == ROLE_MODEL), None)
        if ready is None:
            return
        wanted_status = {"uri": ready.entry, "hit": ready.hit}
        if ((ftj.get("status") or {}).get("modelCache") or {}) == wanted_status:
            return
        await self._reconciler.kube.patch(
            KIND, meta["namespace"], meta["name"], {"status": {"modelCache": wanted_status}}, subresource="status"
        )
        if not (ftj.get("status") or {}).get("modelCache"):
            self._metrics.model_cache_jobs.labels(result="hit" if ready.hit else "miss").inc()
            self._metrics.model_cache_served_bytes.inc(ready.bytes)
            logs.action(
                meta["namespace"],
                meta["name"],
                "ModelCacheReady",
                f"the model is read from the model cache entry {ready.entry} "
                f"({'it was there already' if ready.hit else 'populated for it'}, {ready.bytes} bytes)",
                uid=meta["uid"],
            )

    def _record_use(self, entry: str, revision: str | None) -> None:
        """`_USED` of the entry, in the background: at most once a minute per entry and revision."""
        now = time.monotonic()
        if now - self._used_written.get((entry, revision), float("-inf")) < USED_WRITE_SECONDS:
            return
        self._used_written[(entry, revision)] = now
        store, stamp = self._store(), _now()

        async def write() -> None:
            try:
                await asyncio.to_thread(store.record_use, entry, revision, stamp)
            except Exception as err:  # noqa: BLE001 - last use is worth a log line, never a failed pass
                log.warning("model cache: could not record the use of %s: %s", entry, err)

        task = asyncio.get_running_loop().create_task(write())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for the background writes (tests; shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ----------------------------------------------------------------------------------- the populations' progress

    async def run_forever(self) -> None:
        """Look at the population Jobs jobs wait for (a finished one, or a failed attempt, queues their passes), and
        keep the cache under its cap."""
        while True:
            settings = self.settings
            await asyncio.sleep(settings.poll_seconds if settings.enabled else 1.0)
            if not settings.enabled:
                continue
            for entry in list(self._given):
                self._recently_given(entry)  # forgets what is old (the jobs' status says it from then on)
            try:
                await self.poll()
            except Exception:  # looked at again on the next round
                log.exception("model cache: looking at the population Jobs failed")
            if settings.max_bytes and time.monotonic() >= self._evict_due:
                self._evict_due = time.monotonic() + settings.evict_every_seconds
                try:
                    await self.evict()
                except Exception:  # tried again on the next round
                    log.exception("model cache: the eviction pass failed")

    async def poll(self) -> None:
        kube = self._reconciler.kube
        for (namespace, name), watched in list(self._watched.items()):
            job = await kube.get("Job", namespace, name)
            outcome = _finished(job) if job is not None else "gone"
            failed = int(((job or {}).get("status") or {}).get("failed") or 0)
            if not outcome and failed == watched.failed:
                continue
            watched.failed = failed
            for key in sorted(watched.waiters):
                self._reconciler.enqueue(*key)
            if outcome:
                self._watched.pop((namespace, name), None)
                if job is not None:
                    self._count(job, await kube.list("Pod", namespace, f"{LABEL_POPULATION}={name}"))
                if outcome == "Complete":
                    self._evict_due = 0.0  # the cache grew: check the cap

    def _count(self, job: dict, pods: list[dict]) -> None:
        """A finished population Job's outcome in the metrics, once."""
        uid, outcome = job["metadata"].get("uid", ""), _finished(job)
        if not outcome or uid in self._counted:
            return
        self._counted.add(uid)
        if outcome == "Complete":
            result = population_result(pods) or {}
            self._metrics.model_cache_populations.labels(outcome="succeeded").inc()
            if result.get("hit") is False:
                self._metrics.model_cache_populated_bytes.inc(int(result.get("bytes") or 0))
        else:
            code, _ = last_failure(pods)
            self._metrics.model_cache_populations.labels(
                outcome="user_error" if code == ExitCode.USER_ERROR else "failed"
            ).inc()

    # ----------------------------------------------------------------------------------- eviction

    async def evict(self) -> list[str]:
        """Delete complete entries, least recently used first, until the cache fits its cap; never one a job uses.
        Returns the entries deleted."""
        settings = self.settings
        if not settings.enabled:
            return []
        stored = await self._in_thread("listing the cache", self._scan)
        total = sum(s.bytes for s in stored)
        self._metrics.model_cache_stored_bytes.set(total)
        if not settings.max_bytes or total <= settings.max_bytes:
            return []
        in_use = await self.in_use()
        evicted = []
        for candidate in sorted(stored, key=lambda s: (s.last_used, s.entry)):
            if total <= settings.max_bytes:
                break
            if candidate.entry in in_use or self._recently_given(candidate.entry):
                continue
            self._evicting.add(candidate.entry)  # from here on no pass gives it to a job
            try:
                await asyncio.to_thread(self._store().delete, candidate.entry)
            except Exception as err:  # noqa: BLE001 - the next pass tries again
                log.warning("model cache: could not evict %s: %s", candidate.entry, err)
                continue
            finally:
                self._evicting.discard(candidate.entry)
            self._markers.pop(candidate.entry, None)
            total -= candidate.bytes
            evicted.append(candidate.entry)
            self._metrics.model_cache_evictions.inc()
            self._metrics.model_cache_evicted_bytes.inc(candidate.bytes)
            log.info(
                "model cache: evicted %s (%d bytes, last used %s): the cache holds %d bytes of %d allowed",
                candidate.entry,
                candidate.bytes,
                dt.datetime.fromtimestamp(candidate.last_used, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                total,
                settings.max_bytes,
            )
        self._metrics.model_cache_stored_bytes.set(total)
        return evicted

    def _scan(self) -> list[Stored]:
        store = self._store()
        out = []
        for entry, names in store.entries(store.root).items():
            if MARKER not in names:
                continue  # being populated, or cut off: the next population of it deletes what is there
            marker = self._markers.get(entry) or store.marker(entry)
            if marker is None:
                continue
            self._markers[entry] = marker
            used = store.used(entry) if USED in names else {}
            last = max(_parse_time(used.get("lastUsed")), _parse_time(marker.get("populatedAt")))
            out.append(Stored(entry, int(marker.get("bytes") or 0), last))
        return out

    def _recently_given(self, entry: str) -> bool:
        given = self._given.get(entry) or {}
        now = time.monotonic()
        for key, when in list(given.items()):
            if now - when > GIVEN_SECONDS:
                del given[key]
        if not given:
            self._given.pop(entry, None)
        return bool(given)

    async def in_use(self) -> set[str]:
        """The entries unfinished FineTuneJobs were given (their status.modelCache.uri): running, between attempts,
        or about to start."""
        kube, config = self._reconciler.kube, self._reconciler.config
        used: set[str] = set()
        unfinished: set[tuple[str, str]] = set()
        for namespace in config.namespaces or (None,):
            for ftj in await kube.list(KIND, namespace):
                current = ftj.get("status") or {}
                if current.get("phase") in (Phase.SUCCEEDED, Phase.FAILED):
                    continue
                uri = (current.get("modelCache") or {}).get("uri")
                if isinstance(uri, str) and uri:
                    used.add(uri)
                meta = ftj.get("metadata") or {}
                unfinished.add((meta.get("namespace"), meta.get("name")))
        # The other sources' entries are not in the status (the API has room for the model's only): those this process
        # gave the unfinished jobs' Jobs, and for a job whose Job an earlier process made (a restart since), those its
        # Job's pods read (their KUBETUNE_<ROLE>_CACHE_URI), looked up once.
        for key in list(self._serving):
            if key not in unfinished:
                del self._serving[key]
        for namespace, name in unfinished - self._serving.keys():
            job = await kube.get("Job", namespace, builders.job_name(name))
            self._serving[(namespace, name)] = wired_entries(job)
        for key in unfinished:
            used |= self._serving[key]
        return used
