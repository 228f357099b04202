"""The shared model cache, operator side (controller/modelcache.py), against the test API server with the real
operator, the Hub double (kubetune.testing) as the Hub, moto as the cache store, and the population Jobs run as real
`python -m kubetune_trainer.cache populate` processes by kubetune.testing.podrunner (the kubelet and the Job
controller): one population per entry whatever the number of jobs and namespaces, jobs Pending WaitingForModelCache
until the entry is complete and their training Jobs made only then, a population cut off, a user error, the Hub down,
a private model per namespace, the size cap's eviction, and the pure parts (the keys, the pods, the settings)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import uuid
from dataclasses import replace

import boto3
import kubernetes
import pytest

from kubetune.api.constants import GROUP, PLURAL, VERSION, Phase, Reason
from kubetune.api.v1alpha1 import Spec
from kubetune.controller import config as operator_config
from kubetune.controller import modelcache
from kubetune.controller.config import ModelCacheSettings, OperatorConfig
from kubetune.testing import hubdouble, pss
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import wait_for
from kubetune.testing.podrunner import PodRunner, wait_for_job
from kubetune_trainer import cache
from tests.controller.samples import LORA_INSTRUCTION_SPEC

pytestmark = pytest.mark.timeout(180)

OPERATOR_NAMESPACE = "kubetune-system"
WRITER_SECRET = "model-cache-writer"
READER_SECRET = "model-cache"
KEYS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
# A repository as the Hub holds one; the population fetches what the trainer would (not the card, not the pickles).
WEIGHTS = os.urandom(300_000)
REPO_FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 64}',
    "model.safetensors": WEIGHTS,
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b"{}",
    "pytorch_model.bin": b"\x80\x04pickled",
    "README.md": b"# card\n",
}
ENTRY_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
SPEC = {key: value for key, value in LORA_INSTRUCTION_SPEC.items() if key != "model"}  # each test names its model


# --------------------------------------------------------------------------------------- the set-up


@pytest.fixture(scope="module")
def s3():
    """moto's S3 over HTTP: the cache store (its URL)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    with hubdouble.running(monkeypatch, tmp_path_factory.mktemp("hf-home")) as double:
        yield double


class Cluster:
    """The cluster with the cache turned on: the operator's settings, the store, the Secrets the platform made, the
    population pods' runner, and a user who creates FineTuneJobs."""

    def __init__(self, admin, operator, emulator, s3_url: str, hub, tmp_path, monkeypatch, **settings):
        self.admin, self.operator, self.hub = admin, operator, hub
        self.core = kubernetes.client.CoreV1Api(admin)
        self.crd = kubernetes.client.CustomObjectsApi(admin)
        self.bucket = f"cache-{uuid.uuid4().hex[:8]}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            aws_access_key_id="testing-key",
            aws_secret_access_key="testing-secret",
            region_name="us-east-1",
        )
        self.s3.create_bucket(Bucket=self.bucket)
        self.root = f"s3://{self.bucket}/models/"
        # The operator's own pod: the chart passes the writer Secret's keys into its environment.
        for key, value in KEYS.items():
            monkeypatch.setenv(f"KUBETUNE_CACHE_{key}", value)
        monkeypatch.setenv("KUBETUNE_CACHE_AWS_ENDPOINT_URL", s3_url)
        self._namespace(OPERATOR_NAMESPACE)
        self._secret(OPERATOR_NAMESPACE, WRITER_SECRET, KEYS)
        self.settings = ModelCacheSettings(
            root=self.root,
            namespace=OPERATOR_NAMESPACE,
            populate_secret=WRITER_SECRET,
            read_secret=READER_SECRET,
            endpoint=s3_url,
            hub_endpoint=hub.url,
            poll_seconds=0.2,
            **settings,
        )
        operator.reconfigure(model_cache=self.settings)
        self.cache = operator.reconciler.modelcache
        self.cache._resolved.clear()  # another test's Hub named other commits
        self.runner = PodRunner(
            emulator,
            tmp_path / "pods",
            admin_token=ADMIN_TOKEN,
            extra_env={"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"},
        )
        self._earlier = {j["metadata"]["uid"] for j in self._population_jobs()}  # other tests' (no TTL controller)

    def close(self) -> None:
        self.operator.reconfigure(model_cache=ModelCacheSettings())

    def _namespace(self, name: str) -> None:
        try:
            self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        except kubernetes.client.ApiException as err:
            if err.status != 409:
                raise

    def _secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
        }
        try:
            self.core.create_namespaced_secret(namespace, body)
        except kubernetes.client.ApiException as err:
            if err.status != 409:
                raise

    def tenant(self, namespace: str) -> str:
        """A namespace as the platform sets one up: with the cache's read Secret."""
        self._namespace(namespace)
        self._secret(namespace, READER_SECRET, KEYS)
        return namespace

    def apply(self, namespace: str, name: str, model: dict, **spec) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": SPEC | {"model": model} | spec,
        }
        return self.crd.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def status(self, namespace: str, name: str) -> dict:
        return self.crd.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}

    def reason(self, namespace: str, name: str) -> tuple[str | None, str | None, str]:
        current = self.status(namespace, name)
        running = next((c for c in current.get("conditions") or [] if c["type"] == "Running"), {})
        failed = next((c for c in current.get("conditions") or [] if c["type"] == "Failed"), {})
        return current.get("phase"), (failed or running).get("reason"), (failed or running).get("message", "")

    def waiting(self, namespace: str, name: str) -> str:
        phase, reason, message = self.reason(namespace, name)
        return message if (phase, reason) == (Phase.PENDING, Reason.WAITING_FOR_MODEL_CACHE) else ""

    def wait_waiting(self, namespace: str, name: str, words: str = "", timeout: float = 30) -> str:
        """The job's message once it waits for the model cache (and its message holds `words`)."""

        def message() -> str:
            text = self.waiting(namespace, name)
            return text if words in text else ""

        return wait_for(message, timeout, f"{namespace}/{name} waiting for the model cache ({words!r})")

    def wait_failed(self, namespace: str, name: str, timeout: float = 60) -> tuple[str, str, str]:
        def failed():
            found = self.reason(namespace, name)
            return found if found[0] == Phase.FAILED else None

        return wait_for(failed, timeout, f"{namespace}/{name} failed")

    def wait_cache_status(self, namespace: str, name: str) -> dict:
        return wait_for(lambda: self.status(namespace, name).get("modelCache"), 30, f"{namespace}/{name} modelCache")

    def job(self, namespace: str, name: str) -> dict | None:
        return self.runner.kube.get("Job", namespace, name)

    def env(self, namespace: str, name: str) -> dict[str, dict]:
        job = wait_for(lambda: self.job(namespace, name), 60, f"the training Job {namespace}/{name}")
        return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}

    def _population_jobs(self) -> list[dict]:
        return [
            j
            for j in self.runner.kube.list("Job", None)
            if modelcache.LABEL_POPULATION in (j["metadata"].get("labels") or {})
        ]

    def populations(self) -> list[dict]:
        """The population Jobs made during this test."""
        return [j for j in self._population_jobs() if j["metadata"]["uid"] not in self._earlier]

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"models/{prefix}")
        return sorted(o["Key"].removeprefix("models/") for page in pages for o in page.get("Contents", []))

    def on_loop(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.operator.reconciler.loop).result(60)


@pytest.fixture
def cluster(admin, operator, emulator, s3, hub, tmp_path, monkeypatch):
    made = Cluster(admin, operator, emulator, s3, hub, tmp_path, monkeypatch)
    try:
        with made.runner:
            yield made
    finally:
        made.close()


def _repo(hub, name: str | None = None, **kwargs) -> tuple[str, str]:
    repo = name or f"org/tiny-{uuid.uuid4().hex[:6]}"
    return repo, hub.add_repo(repo, REPO_FILES, **kwargs)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metric(operator, name: str, **labels) -> float:
    return operator.reconciler.metrics.registry.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------------------- one population, many jobs


def test_jobs_in_three_namespaces_wait_for_one_population_and_start_once_it_is_complete(cluster, operator):
    repo, commit = _repo(cluster.hub)
    uri = f"hf://{repo}"
    entry = cache.entry_uri(cluster.root, uri, commit)
    namespaces = [cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}") for _ in range(3)]
    jobs = [(ns, f"bot-{i}") for ns in namespaces for i in range(2)]
    hits, misses = (
        _metric(operator, "kubetune_model_cache_jobs_total", result="hit"),
        _metric(operator, "kubetune_model_cache_jobs_total", result="miss"),
    )
    served = _metric(operator, "kubetune_model_cache_served_bytes_total")
    cluster.hub.delay("model.safetensors", 8.0)  # the weights take their time
    for ns, name in jobs:
        cluster.apply(ns, name, {"uri": uri})
    for ns, name in jobs:
        message = cluster.wait_waiting(ns, name)
        assert "population Job" in message and uri in message
    wait_for(lambda: cluster.hub.gets("model.safetensors"), 30, "the population asking for the weights")
    # The entry is not complete: nothing reads it, no training Job exists.
    assert [cluster.job(ns, name) for ns, name in jobs] == [None] * len(jobs)
    assert cache.MARKER not in [k.rsplit("/", 1)[-1] for k in cluster.keys()]
    (population,) = cluster.populations()
    assert population["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert population["metadata"]["name"] == modelcache.population_name(entry)

    for ns, name in jobs:
        env = cluster.env(ns, name)
        assert env["KUBETUNE_MODEL_CACHE_URI"]["value"] == entry
        assert env["KUBETUNE_CACHE_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": READER_SECRET,
            "key": "AWS_ACCESS_KEY_ID",
            "optional": False,
        }
        assert env["KUBETUNE_CACHE_AWS_ENDPOINT_URL"]["value"] == cluster.settings.endpoint
        assert "cache" not in env["KUBETUNE_AMBIENT_CREDENTIALS"]["value"].split(",")
        assert cluster.wait_cache_status(ns, name) == {"uri": entry, "hit": False}
    # One population, one download of each file from the Hub, and a complete entry holding exactly those files.
    assert len(cluster.populations()) == 1
    assert cluster.hub.downloads() == {name: 1 for name in ENTRY_FILES}
    prefix = entry.removeprefix(cluster.root)
    stored = cluster.keys(prefix)
    assert [k.removeprefix(prefix) for k in stored if not k.endswith(modelcache.USED)] == sorted(
        [*ENTRY_FILES, cache.MARKER]
    )
    weights = cluster.s3.get_object(Bucket=cluster.bucket, Key=f"models/{prefix}model.safetensors")["Body"].read()
    assert _sha(weights) == _sha(WEIGHTS)
    marker = json.loads(cluster.s3.get_object(Bucket=cluster.bucket, Key=f"models/{prefix}_COMPLETE")["Body"].read())
    size = marker["bytes"]

    # A job that comes later hits: no population, no Hub download, its Job at once.
    late = cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}")
    cluster.apply(late, "late", {"uri": f"{uri}@main"})
    assert cluster.env(late, "late")["KUBETUNE_MODEL_CACHE_URI"]["value"] == entry
    assert wait_for(lambda: cluster.status(late, "late").get("modelCache")) == {"uri": entry, "hit": True}
    assert len(cluster.populations()) == 1 and cluster.hub.downloads() == {name: 1 for name in ENTRY_FILES}
    wait_for(lambda: _metric(operator, "kubetune_model_cache_jobs_total", result="hit") - hits == 1, 10, "the hit")
    assert _metric(operator, "kubetune_model_cache_jobs_total", result="miss") - misses == len(jobs)
    wait_for(lambda: _metric(operator, "kubetune_model_cache_populated_bytes_total") >= size, 10, "the bytes fetched")
    assert _metric(operator, "kubetune_model_cache_served_bytes_total") - served == (len(jobs) + 1) * size
    # The last use is recorded, with the revision that named the commit (what a Hub outage falls back on).
    used = wait_for(
        lambda: (
            modelcache.USED in [k.rsplit("/", 1)[-1] for k in cluster.keys(prefix)]
            and json.loads(
                cluster.s3.get_object(Bucket=cluster.bucket, Key=f"models/{prefix}{modelcache.USED}")["Body"].read()
            )
        )
    )
    assert "main" in used["revisions"] and used["lastUsed"]


def test_a_job_that_opts_out_or_reads_a_local_model_is_not_served(cluster):
    ns = cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}")
    cluster.apply(ns, "own", {"uri": "hf://org/anything", "cache": False})
    cluster.apply(ns, "local", {"uri": "file:///models/llama"})
    for name in ("own", "local"):
        env = cluster.env(ns, name)
        assert "KUBETUNE_MODEL_CACHE_URI" not in env and not any(n.startswith("KUBETUNE_CACHE_") for n in env)
        assert "modelCache" not in cluster.status(ns, name)
    assert cluster.populations() == [] and cluster.hub.requests == []


# --------------------------------------------------------------------------------------- faults


def test_a_population_killed_midway_is_redone_and_no_job_reads_the_partial_entry(cluster):
    cluster.runner.backoff_seconds = 1.0  # the Job controller's backoff before the next pod
    repo, commit = _repo(cluster.hub)
    uri = f"hf://{repo}"
    entry = cache.entry_uri(cluster.root, uri, commit)
    prefix = entry.removeprefix(cluster.root)
    ns = cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}")
    held = cluster.hub.hold("model.safetensors", after_bytes=1000)
    for name in ("a", "b"):
        cluster.apply(ns, name, {"uri": uri})
    assert held.reached.wait(60)
    wait_for(
        lambda: "config.json" in [k.removeprefix(prefix) for k in cluster.keys(prefix)],
        30,
        "the small files uploaded while the weights hang",
    )
    pod = cluster.runner.kill(modelcache.population_name(entry))  # the node is lost: no handler, no clean-up
    held.release()
    # The attempt failed (137, no message); the jobs wait on, and say so.
    for name in ("a", "b"):
        message = cluster.wait_waiting(ns, name, "last attempt failed")
        assert "exit code 137" in message
        assert cluster.job(ns, name) is None
    assert cache.MARKER not in [k.removeprefix(prefix) for k in cluster.keys(prefix)]

    for name in ("a", "b"):
        assert cluster.env(ns, name)["KUBETUNE_MODEL_CACHE_URI"]["value"] == entry
        assert wait_for(lambda name=name: cluster.status(ns, name).get("jobName"), 30, "jobName") == name
        assert cluster.reason(ns, name)[0] == Phase.PENDING
    (population,) = cluster.populations()
    population = wait_for_job(cluster.runner, OPERATOR_NAMESPACE, population["metadata"]["name"])
    assert population["status"]["failed"] == 1 and population["status"]["succeeded"] == 1
    assert pod.endswith("-0")
    stored = cluster.s3.get_object(Bucket=cluster.bucket, Key=f"models/{prefix}model.safetensors")["Body"].read()
    assert _sha(stored) == _sha(WEIGHTS)  # the redone population's, whole


def test_a_population_that_fails_for_the_users_model_fails_the_waiting_jobs(cluster, operator):
    repo, _ = _repo(cluster.hub, gated=True)  # gated: its files need a token the job did not give
    ns = cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}")
    for name in ("a", "b"):
        cluster.apply(ns, name, {"uri": f"hf://{repo}"})
    for name in ("a", "b"):
        phase, reason, message = cluster.wait_failed(ns, name)
        assert reason == Reason.USER_ERROR and "gated" in message and f"hf://{repo}" in message
        assert cluster.job(ns, name) is None
    (population,) = cluster.populations()
    assert population["status"]["failed"] == 1  # exit 10 fails the Job at once: no retries
    wait_for(
        lambda: _metric(operator, "kubetune_model_cache_populations_total", outcome="user_error") >= 1,
        10,
        "the failed population counted",
    )

    # A model the Hub does not know fails at once: the operator's own lookup says so.
    cluster.apply(ns, "nowhere", {"uri": "hf://org/no-such-model"})
    phase, reason, message = wait_for(
        lambda: cluster.reason(ns, "nowhere")[0] == Phase.FAILED and cluster.reason(ns, "nowhere"), 60, "the job failed"
    )
    assert reason == Reason.USER_ERROR and "credentialsSecret" in message and len(cluster.populations()) == 1


def test_with_the_hub_down_a_cached_model_starts_and_an_uncached_one_waits_and_retries(cluster):
    cluster.runner.backoff_seconds = 0.5
    repo, commit = _repo(cluster.hub)
    uri = f"hf://{repo}"
    entry = cache.entry_uri(cluster.root, uri, commit)
    ns = cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}")
    cluster.apply(ns, "first", {"uri": uri})
    assert cluster.env(ns, "first")["KUBETUNE_MODEL_CACHE_URI"]["value"] == entry
    prefix = entry.removeprefix(cluster.root)
    wait_for(lambda: modelcache.USED in [k.removeprefix(prefix) for k in cluster.keys(prefix)], 30, "_USED")
    other, other_commit = _repo(cluster.hub)

    cluster.hub.down = True
    cluster.hub.reset_counts()
    cluster.cache._resolved.clear()  # what the operator remembers for a moment is not what this is about
    cluster.apply(ns, "moving", {"uri": f"{uri}@main"})  # main: the commit it named when last resolved
    cluster.apply(ns, "pinned", {"uri": f"{uri}@{commit}"})  # a commit needs no lookup
    for name in ("moving", "pinned"):
        assert cluster.env(ns, name)["KUBETUNE_MODEL_CACHE_URI"]["value"] == entry
        assert cluster.wait_cache_status(ns, name) == {"uri": entry, "hit": True}
    # No entry yet: the job waits (an infrastructure error, retried with backoff), it does not fail.
    cluster.apply(ns, "uncached", {"uri": f"hf://{other}"})
    message = wait_for(lambda: cluster.waiting(ns, "uncached"), 30, "the uncached job waiting")
    assert "cannot be reached" in message and "looking again in" in message
    # Pinned to a commit, its population needs no lookup by the operator: the population's pods exit 20 and are
    # retried, and the job waits on.
    cluster.apply(ns, "pinned-uncached", {"uri": f"hf://{other}@{other_commit}"})
    wait_for(lambda: "last attempt failed" in cluster.waiting(ns, "pinned-uncached"), 60, "a failed population attempt")
    assert "InfraError" in cluster.waiting(ns, "pinned-uncached")
    assert cluster.job(ns, "uncached") is None and cluster.job(ns, "pinned-uncached") is None

    cluster.hub.down = False
    other_entry = cache.entry_uri(cluster.root, f"hf://{other}", other_commit)
    for name in ("uncached", "pinned-uncached"):
        assert cluster.env(ns, name)["KUBETUNE_MODEL_CACHE_URI"]["value"] == other_entry
        assert cluster.reason(ns, name)[0] != Phase.FAILED


# --------------------------------------------------------------------------------------- private models


def test_a_private_model_is_populated_in_each_namespace_with_its_own_token(cluster):
    repo, commit = _repo(cluster.hub, private=True, tokens=("hf_team_token",))
    uri = f"hf://{repo}"
    spaces = [cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}") for _ in range(2)]
    for ns in spaces:
        cluster._secret(ns, "hf-token", {"HF_TOKEN": "hf_team_token"})
        cluster.apply(ns, "a", {"uri": uri, "credentialsSecret": "hf-token"})
        cluster.apply(ns, "b", {"uri": uri, "credentialsSecret": "hf-token"})
    for ns in spaces:
        entry = cache.entry_uri(cluster.root, uri, commit, ns, private=True)
        assert entry.startswith(f"{cluster.root}namespaces/{ns}/hf/")
        for name in ("a", "b"):
            assert cluster.env(ns, name)["KUBETUNE_MODEL_CACHE_URI"]["value"] == entry
    # One population per namespace, in that namespace, with the job's token and the namespace's cache Secret.
    populations = cluster.populations()
    assert sorted(p["metadata"]["namespace"] for p in populations) == sorted(spaces)
    for population in populations:
        (container,) = population["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["KUBETUNE_MODEL_HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
        assert env["KUBETUNE_CACHE_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == READER_SECRET
        assert ["--private", "--namespace", population["metadata"]["namespace"]] == container["command"][-3:]
    # Nothing public was made of it, and each tenant's files were fetched with its own token.
    assert not [k for k in cluster.keys() if k.startswith("hf/")]
    assert cluster.hub.downloads() == {name: 2 for name in ENTRY_FILES}


# --------------------------------------------------------------------------------------- s3:// models


def test_an_s3_model_is_populated_once_per_namespace_with_the_tenants_keys_and_keyed_by_its_content(cluster, s3):
    """An s3:// model is read with the tenant's keys: each namespace gets its own entry, populated there with the job's
    credentialsSecret (one population for the namespace's jobs), and never reads another namespace's; rewriting an
    object of the model gives the next job a new entry."""
    source_bucket = f"models-{uuid.uuid4().hex[:8]}"
    cluster.s3.create_bucket(Bucket=source_bucket)
    for name in ENTRY_FILES:
        cluster.s3.put_object(Bucket=source_bucket, Key=f"tiny/{name}", Body=REPO_FILES[name])
    uri = f"s3://{source_bucket}/tiny/"
    model = {"uri": uri, "credentialsSecret": "bucket-keys", "endpoint": s3}
    spaces = [cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}") for _ in range(2)]
    for ns in spaces:
        cluster._secret(ns, "bucket-keys", {"AWS_ACCESS_KEY_ID": f"key-{ns}", "AWS_SECRET_ACCESS_KEY": "tenant"})
        for name in ("a", "b"):
            cluster.apply(ns, name, model)
    entries = {}
    for ns in spaces:
        for name in ("a", "b"):
            entries.setdefault(ns, cluster.env(ns, name)["KUBETUNE_MODEL_CACHE_URI"]["value"])
            assert cluster.env(ns, name)["KUBETUNE_MODEL_CACHE_URI"]["value"] == entries[ns]
            assert cluster.wait_cache_status(ns, name)["uri"] == entries[ns]
        assert entries[ns].startswith(f"{cluster.root}namespaces/{ns}/s3/{source_bucket}/")
        assert entries[ns] == cache.entry_uri(cluster.root, uri, modelcache.commit_in(entries[ns]), ns, private=True)
    # The same content, so the same key, yet each namespace has an entry of its own: B never reads what A's keys got.
    first, second = spaces
    assert modelcache.commit_in(entries[first]) == modelcache.commit_in(entries[second])
    assert entries[first] != entries[second]
    for ns in spaces:
        prefix = entries[ns].removeprefix(cluster.root)
        assert [k.removeprefix(prefix) for k in cluster.keys(prefix) if not k.endswith(modelcache.USED)] == sorted(
            [*ENTRY_FILES, cache.MARKER]
        )
    assert not [k for k in cluster.keys() if not k.startswith("namespaces/")]  # nothing shared
    # One population per namespace, in it, reading the bucket with that namespace's Secret and the spec's endpoint.
    populations = cluster.populations()
    assert sorted(p["metadata"]["namespace"] for p in populations) == sorted(spaces)
    for population in populations:
        (container,) = population["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["KUBETUNE_MODEL_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "bucket-keys"
        assert env["KUBETUNE_MODEL_AWS_ENDPOINT_URL"]["value"] == s3
        assert env["KUBETUNE_CACHE_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == READER_SECRET
        assert container["command"][-3:] == ["--private", "--namespace", population["metadata"]["namespace"]]

    # The weights are rewritten: the next job's population keys the new content, a new entry.
    cluster.s3.put_object(Bucket=source_bucket, Key="tiny/model.safetensors", Body=WEIGHTS[::-1])
    cluster.apply(first, "after", model)
    after = cluster.env(first, "after")["KUBETUNE_MODEL_CACHE_URI"]["value"]
    assert after != entries[first] and after.startswith(f"{cluster.root}namespaces/{first}/s3/")
    stored = cluster.s3.get_object(
        Bucket=cluster.bucket, Key=f"models/{after.removeprefix(cluster.root)}model.safetensors"
    )["Body"].read()
    assert stored == WEIGHTS[::-1]
    # The namespace's population ran again (a new Job of the same name: its single-flight key has no content in it).
    again = [p for p in cluster.populations() if p["metadata"]["namespace"] == first]
    assert len(again) == 1 and again[0]["metadata"]["uid"] not in {p["metadata"]["uid"] for p in populations}


# --------------------------------------------------------------------------------------- hf:// datasets


DATASET_SPEC = {"datasets": [{"uri": "", "format": "text", "subset": "short", "columns": {"text": "body"}}]}


def test_an_hf_dataset_is_fetched_once_for_many_jobs_and_the_trainer_reads_it_from_its_entry(
    cluster, operator, s3, monkeypatch, tmp_path
):
    repo, commit = _repo(cluster.hub)
    data_repo = f"org/data-{uuid.uuid4().hex[:6]}"
    data_commit = cluster.hub.add_repo(data_repo, hubdouble.dataset_repo_files(1), repo_type="dataset")
    data_uri = f"hf://datasets/{data_repo}"
    entry = cache.entry_uri(cluster.root, data_uri, data_commit)
    datasets = [{**DATASET_SPEC["datasets"][0], "uri": data_uri, "evalUri": f"{data_uri}@{data_commit}"}]
    served = {
        result: _metric(operator, "kubetune_model_cache_sources_total", source="dataset", result=result)
        for result in ("hit", "miss")
    }
    cluster.hub.delay("short/train.jsonl", 4.0)
    namespaces = [cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}") for _ in range(2)]
    jobs = [(ns, f"bot-{i}") for ns in namespaces for i in range(2)]
    for ns, name in jobs:
        cluster.apply(ns, name, {"uri": f"hf://{repo}"}, objective="causal-lm", datasets=datasets)
    for ns, name in jobs:
        cluster.wait_waiting(ns, name, f"fetches {data_uri}@{data_commit}")
    for ns, name in jobs:
        env = cluster.env(ns, name)
        assert env["KUBETUNE_DATASET_0_CACHE_URI"]["value"] == entry
        assert env["KUBETUNE_DATASET_0_EVAL_CACHE_URI"]["value"] == entry  # the same commit: the same entry
        assert env["KUBETUNE_MODEL_CACHE_URI"]["value"] == cache.entry_uri(cluster.root, f"hf://{repo}", commit)
        assert cluster.wait_cache_status(ns, name)["uri"] == env["KUBETUNE_MODEL_CACHE_URI"]["value"]  # the model's
    # One population of the dataset (and one of the model), in the operator's namespace: each file from the Hub once.
    populations = cluster.populations()
    assert len(populations) == 2 and {p["metadata"]["namespace"] for p in populations} == {OPERATOR_NAMESPACE}
    (dataset_population,) = [
        p for p in populations if "--dataset" in p["spec"]["template"]["spec"]["containers"][0]["command"]
    ]
    assert dataset_population["metadata"]["name"] == modelcache.population_name(entry)
    for name in ("short/train.jsonl", "data/train.jsonl", "data/test.jsonl"):
        assert cluster.hub.gets(name, data_repo) == 1
    assert cluster.hub.gets("loader.py", data_repo) == 0  # a dataset's code is never cached
    wait_for(
        lambda: (
            _metric(operator, "kubetune_model_cache_sources_total", source="dataset", result="miss") - served["miss"]
            == 2 * len(jobs)
        ),
        10,
        "the datasets counted",
    )

    # The trainer's data loading, with the environment the training Job gives it, reads the entry: not the Hub.
    from kubetune.api.v1alpha1 import Spec as TrainerSpec
    from kubetune_trainer.data import load_tasks

    ns, name = jobs[0]
    env = cluster.env(ns, name)
    monkeypatch.setenv("KUBETUNE_AMBIENT_CREDENTIALS", "")
    monkeypatch.setenv("KUBETUNE_CACHE_AWS_ENDPOINT_URL", env["KUBETUNE_CACHE_AWS_ENDPOINT_URL"]["value"])
    for role in ("DATASET_0", "DATASET_0_EVAL"):
        monkeypatch.setenv(f"KUBETUNE_{role}_CACHE_URI", env[f"KUBETUNE_{role}_CACHE_URI"]["value"])
    cluster.hub.down = True
    cluster.hub.reset_counts()
    spec = TrainerSpec.model_validate(
        SPEC | {"model": {"uri": f"hf://{repo}"}, "objective": "causal-lm", "datasets": datasets}
    )
    (task,) = load_tasks(spec, tmp_path / "work")
    assert task.train["text"] == ["v1 short 0", "v1 short 1", "v1 short 2"] and len(task.eval) == 3
    assert cluster.hub.requests == []

    # The datasets' entry is in use by these unfinished jobs, also for an operator that did not make their Jobs (a
    # restart since): the status holds the model's entry only, so it is read from the Jobs' pods' environment.
    restarted = modelcache.ModelCache(operator.reconciler)
    in_use = cluster.on_loop(restarted.in_use())
    assert entry in in_use
    assert {cluster.wait_cache_status(ns, name)["uri"] for ns, name in jobs} <= in_use


def test_the_reward_model_is_served_from_its_entry_like_the_model(cluster):
    """spec.rlhf.rewardModel.uri on the Hub: one population for jobs in two namespaces, each file from the Hub once,
    and the pods read it from its entry (KUBETUNE_REWARD_MODEL_CACHE_URI) beside the policy model's."""
    repo, commit = _repo(cluster.hub)
    reward_repo, reward_commit = _repo(cluster.hub, f"org/reward-{uuid.uuid4().hex[:6]}")
    entry = cache.entry_uri(cluster.root, f"hf://{reward_repo}", reward_commit)
    rlhf = {
        "objective": "rlhf",
        "rlhf": {"rewardModel": {"uri": f"hf://{reward_repo}"}},
        "datasets": [{"uri": "file:///data/prompts.jsonl", "format": "prompt"}],
    }
    jobs = [(cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}"), "policy") for _ in range(2)]
    for ns, name in jobs:
        cluster.apply(ns, name, {"uri": f"hf://{repo}"}, **rlhf)
    for ns, name in jobs:
        env = cluster.env(ns, name)
        assert env["KUBETUNE_REWARD_MODEL_CACHE_URI"]["value"] == entry
        assert env["KUBETUNE_MODEL_CACHE_URI"]["value"] == cache.entry_uri(cluster.root, f"hf://{repo}", commit)
    assert [p["metadata"]["name"] for p in cluster.populations()].count(modelcache.population_name(entry)) == 1
    for name in ENTRY_FILES:
        assert cluster.hub.gets(name, reward_repo) == 1, name
    assert cache.MARKER in [k.rsplit("/", 1)[-1] for k in cluster.keys(entry.removeprefix(cluster.root))]


def test_a_cut_dataset_population_is_never_used(cluster):
    cluster.runner.backoff_seconds = 1.0
    data_repo = f"org/data-{uuid.uuid4().hex[:6]}"
    data_commit = cluster.hub.add_repo(data_repo, hubdouble.dataset_repo_files(1), repo_type="dataset")
    data_uri = f"hf://datasets/{data_repo}"
    entry = cache.entry_uri(cluster.root, data_uri, data_commit)
    prefix = entry.removeprefix(cluster.root)
    datasets = [{**DATASET_SPEC["datasets"][0], "uri": data_uri}]
    held = cluster.hub.hold("data/train.jsonl", after_bytes=10)
    ns = cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}")
    cluster.apply(ns, "a", {"uri": "file:///models/llama"}, objective="causal-lm", datasets=datasets)
    assert held.reached.wait(60), cluster.reason(ns, "a")
    wait_for(lambda: "short/train.jsonl" in [k.removeprefix(prefix) for k in cluster.keys(prefix)], 30, "files")
    cluster.runner.kill(modelcache.population_name(entry))
    held.release()
    message = cluster.wait_waiting(ns, "a", "last attempt failed")
    assert "exit code 137" in message and data_uri in message
    assert cluster.job(ns, "a") is None and cache.MARKER not in [k.removeprefix(prefix) for k in cluster.keys(prefix)]
    assert cluster.env(ns, "a")["KUBETUNE_DATASET_0_CACHE_URI"]["value"] == entry
    marker = json.loads(cluster.s3.get_object(Bucket=cluster.bucket, Key=f"models/{prefix}_COMPLETE")["Body"].read())
    stored = cluster.s3.get_object(Bucket=cluster.bucket, Key=f"models/{prefix}data/train.jsonl")["Body"].read()
    assert (
        marker["files"]["data/train.jsonl"]["size"]
        == len(stored)
        == len(hubdouble.dataset_repo_files(1)["data/train.jsonl"])
    )
    assert "modelCache" not in cluster.status(ns, "a")  # the model is not the cache's: status has room for it only


# --------------------------------------------------------------------------------------- eviction


def _fake_entry(cluster, folder: str, size: int, used: str) -> str:
    entry = f"{cluster.root}{folder}/"
    key = f"models/{folder}/"
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key + "model.safetensors", Body=b"x" * 10)
    marker = {
        "format": 1,
        "source": "hf://org/x",
        "kind": "model",
        "repo": "org/x",
        "commit": "0" * 40,
        "bytes": size,
        "files": {"model.safetensors": {"size": 10, "sha256": ""}},
        "populatedAt": "2026-01-01T00:00:00Z",
    }
    cluster.s3.put_object(Bucket=cluster.bucket, Key=key + cache.MARKER, Body=json.dumps(marker).encode())
    cluster.s3.put_object(
        Bucket=cluster.bucket,
        Key=key + modelcache.USED,
        Body=json.dumps({"format": 1, "lastUsed": used, "revisions": {}}).encode(),
    )
    return entry


def test_eviction_deletes_least_recently_used_entries_but_never_one_a_job_uses(cluster, operator):
    gib = 1 << 30
    oldest_in_use = _fake_entry(cluster, f"hf/models--org--a/{'a' * 40}", 4 * gib, "2026-01-01T00:00:00Z")
    old = _fake_entry(cluster, f"hf/models--org--b/{'b' * 40}", 3 * gib, "2026-02-01T00:00:00Z")
    newer = _fake_entry(cluster, f"namespaces/team-x/hf/models--org--c/{'c' * 40}", 2 * gib, "2026-03-01T00:00:00Z")
    newest = _fake_entry(cluster, f"hf/models--org--d/{'d' * 40}", 2 * gib, "2026-04-01T00:00:00Z")
    cluster.s3.put_object(Bucket=cluster.bucket, Key=f"models/hf/models--org--e/{'e' * 40}/config.json", Body=b"{}")
    # An unfinished job was given the oldest entry (between two attempts, say): its status says so.
    ns = cluster.tenant(f"cache-{uuid.uuid4().hex[:5]}")
    cluster.apply(ns, "user", {"uri": "hf://org/a", "cache": False})
    wait_for(lambda: cluster.status(ns, "user").get("phase"))
    cluster.crd.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "user", {"status": {"modelCache": {"uri": oldest_in_use, "hit": True}}}
    )

    operator.reconfigure(model_cache=replace(cluster.settings, max_bytes=7 * gib))
    evicted = cluster.on_loop(cluster.cache.evict())
    # 11 GiB stored, 7 allowed: the least recently used entry nobody uses goes first, then the next, until it fits.
    assert evicted == [old, newer]
    keys = cluster.keys()
    for gone in (old, newer):
        assert not [k for k in keys if k.startswith(gone.removeprefix(cluster.root))]
    for kept in (oldest_in_use, newest):
        assert f"{kept.removeprefix(cluster.root)}{cache.MARKER}" in keys
    assert f"hf/models--org--e/{'e' * 40}/config.json" in keys  # not complete: not the eviction's (a population's)
    assert _metric(operator, "kubetune_model_cache_stored_bytes") == 6 * gib
    assert cluster.on_loop(cluster.cache.evict()) == []  # it fits now


# --------------------------------------------------------------------------------------- the pure parts


SETTINGS = ModelCacheSettings(
    root="s3://cache/models/",
    namespace="kubetune-system",
    populate_secret="writer",
    read_secret="reader",
    endpoint="http://minio:9000",
    hub_endpoint="http://hub.local",
)
CONFIG = OperatorConfig(trainer_image="registry.example/trainer:1", trainer_image_pull_secrets=("regcred",))


def _spec(**model) -> Spec:
    return Spec.model_validate(SPEC | {"model": model})


def test_which_jobs_the_cache_serves():
    assert modelcache.wanted(_spec(uri="hf://org/m"), SETTINGS)
    assert not modelcache.wanted(_spec(uri="hf://org/m", cache=False), SETTINGS)
    assert not modelcache.wanted(_spec(uri="hf://org/m"), replace(SETTINGS, default=False))
    assert modelcache.wanted(_spec(uri="hf://org/m", cache=True), replace(SETTINGS, default=False))
    assert not modelcache.wanted(_spec(uri="hf://org/m", cache=True), ModelCacheSettings())  # no cache at all
    assert modelcache.wanted(_spec(uri="s3://models/llama/"), SETTINGS)  # per namespace (test_an_s3_model_...)
    assert not modelcache.wanted(_spec(uri="file:///models/llama"), SETTINGS)


def test_what_the_cache_serves_of_a_job_and_with_whose_credentials():
    spec = Spec.model_validate(
        SPEC
        | {
            "model": {"uri": "hf://org/m", "credentialsSecret": "hf"},
            "objective": "causal-lm",
            "datasets": [
                {"uri": "hf://datasets/org/d", "format": "text", "evalUri": "s3://data/eval.jsonl"},
                {"uri": "s3://data/train.jsonl", "format": "text", "evalUri": "hf://datasets/org/e"},
            ],
        }
    )
    served = {s.role: s for s in modelcache.sources(spec, SETTINGS)}
    assert sorted(served) == ["dataset-0", "dataset-1-eval", "model"]  # s3:// data is read as it is
    # An hf:// dataset without a Secret of its own is read with the model's token: private, as the model is.
    assert served["dataset-0"].secret == "hf" and served["dataset-0"].private and served["dataset-0"].kind == "dataset"
    assert (
        modelcache.sources(spec.model_copy(update={"model": spec.model.model_copy(update={"cache": False})}), SETTINGS)
        == []
    )
    bucket = _spec(uri="s3://models/llama/", credentialsSecret="keys", endpoint="http://minio:9000")
    (model,) = modelcache.sources(bucket, SETTINGS)
    assert model.private and model.secret == "keys" and model.endpoint == "http://minio:9000"
    env = {e["name"]: e for e in modelcache.s3_reader_env(model)}
    assert env["KUBETUNE_MODEL_AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["KUBETUNE_MODEL_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "keys"
    # Another namespace's entry of the same bucket, written into the status by the job's pod: ignored.
    fingerprint = "f" * 32
    mine = cache.entry_uri(SETTINGS.root, "s3://models/llama/", fingerprint, "ns", private=True)
    theirs = cache.entry_uri(SETTINGS.root, "s3://models/llama/", fingerprint, "other", private=True)
    assert modelcache.pinned_entry({"modelCache": {"uri": mine}}, None, bucket, SETTINGS, "ns") == (mine, False)
    assert modelcache.pinned_entry({"modelCache": {"uri": theirs}}, None, bucket, SETTINGS, "ns") is None
    job = modelcache.population_job(
        SETTINGS,
        CONFIG,
        name="p",
        namespace="ns",
        source="hf://datasets/org/d",
        private=True,
        allow_pickle=False,
        hf_secret="hf",
        role="dataset-0",
        kind="dataset",
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][4:6] == ["--dataset", "hf://datasets/org/d"] and "--role" in container["command"]
    assert {e["name"] for e in container["env"]} >= {"KUBETUNE_DATASET_0_HF_TOKEN"}


def test_an_entry_in_the_status_is_taken_only_when_it_is_this_models():
    commit = "c" * 40
    spec = _spec(uri="hf://org/m@main")
    entry = cache.entry_uri(SETTINGS.root, "hf://org/m", commit)
    assert modelcache.pinned_entry({"modelCache": {"uri": entry, "hit": True}}, None, spec, SETTINGS, "ns") == (
        entry,
        True,
    )
    private = _spec(uri="hf://org/m", credentialsSecret="hf")
    mine = cache.entry_uri(SETTINGS.root, "hf://org/m", commit, "ns", private=True)
    theirs = cache.entry_uri(SETTINGS.root, "hf://org/m", commit, "other", private=True)
    assert modelcache.pinned_entry(None, {"modelCache": {"uri": mine}}, private, SETTINGS, "ns") == (mine, False)
    # Written by the job's own pod, say: another tenant's entry, another model's, another root: ignored.
    for forged in (
        theirs,
        entry,
        cache.entry_uri(SETTINGS.root, "hf://org/other", commit),
        cache.entry_uri("s3://elsewhere/", "hf://org/m", commit),
        f"{mine}../",
        "s3://cache/models/",
    ):
        assert modelcache.pinned_entry({"modelCache": {"uri": forged}}, None, private, SETTINGS, "ns") is None
    pickles = _spec(uri="hf://org/m", allowPickle=True)
    assert modelcache.pinned_entry({"modelCache": {"uri": entry}}, None, pickles, SETTINGS, "ns") is None


def test_a_population_job_runs_the_trainers_command_within_the_restricted_standard():
    job = modelcache.population_job(
        SETTINGS,
        CONFIG,
        name="kubetune-cache-x",
        namespace="team-a",
        source=f"hf://org/m@{'c' * 40}",
        private=True,
        allow_pickle=True,
        hf_secret="hf",
    )
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "python",
        "-m",
        "kubetune_trainer.cache",
        "populate",
        "--model",
        f"hf://org/m@{'c' * 40}",
        "--cache-root",
        SETTINGS.root,
        "--private",
        "--namespace",
        "team-a",
        "--allow-pickle",
    ]
    assert container["image"] == CONFIG.trainer_image and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pss.restricted_violations(job["spec"]["template"]["metadata"], pod) == []
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [10] and rules[0]["action"] == "FailJob"
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETUNE_MODEL_HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    assert env["KUBETUNE_CACHE_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "reader"
    assert env["HF_ENDPOINT"]["value"] == "http://hub.local" and env["KUBETUNE_AMBIENT_CREDENTIALS"]["value"] == ""
    public = modelcache.population_job(
        replace(SETTINGS, populate_secret=""),
        CONFIG,
        name="p",
        namespace="sys",
        source="hf://org/m",
        private=False,
        allow_pickle=False,
        service_account="cache-writer",
    )
    public_env = {e["name"]: e for e in public["spec"]["template"]["spec"]["containers"][0]["env"]}
    # No write Secret: the pods' cloud identity (their ServiceAccount's), and no key of anyone's.
    assert public_env["KUBETUNE_AMBIENT_CREDENTIALS"]["value"] == "cache"
    assert "KUBETUNE_CACHE_AWS_ACCESS_KEY_ID" not in public_env and "KUBETUNE_MODEL_HF_TOKEN" not in public_env
    assert public["spec"]["template"]["spec"]["serviceAccountName"] == "cache-writer"


def test_the_training_pod_reads_with_the_namespaces_secret_or_its_identity():
    from kubetune.controller import builders
    from tests.controller.samples import FTJ

    spec = builders.resolve_spec(
        SPEC | {"model": {"uri": "hf://org/m"}}, operator_config.OperatorConfig(default_output_uri="s3://out/"), "bot"
    )
    ready = modelcache.Ready("s3://cache/models/hf/models--org--m/" + "c" * 40 + "/", hit=True)

    def env_of(settings):
        job = builders.build_job(FTJ, spec, CONFIG, suspend=False)
        modelcache.wire(job, ready, settings)
        return job["spec"]["template"]["spec"]["containers"][0]["env"]

    env = env_of(SETTINGS)
    names = [e["name"] for e in env]
    at = names.index("KUBETUNE_AMBIENT_CREDENTIALS")
    assert names[at + 1 : at + 6] == [
        "KUBETUNE_MODEL_CACHE_URI",
        "KUBETUNE_CACHE_AWS_ENDPOINT_URL",
        "KUBETUNE_CACHE_AWS_ACCESS_KEY_ID",
        "KUBETUNE_CACHE_AWS_SECRET_ACCESS_KEY",
        "KUBETUNE_CACHE_AWS_SESSION_TOKEN",
    ]
    assert env[at + 5]["valueFrom"]["secretKeyRef"]["optional"] is True
    ambient = {e["name"]: e.get("value") for e in env_of(replace(SETTINGS, read_ambient=True))}
    assert ambient["KUBETUNE_AMBIENT_CREDENTIALS"].split(",")[-1] == "cache"
    assert "KUBETUNE_CACHE_AWS_ACCESS_KEY_ID" not in ambient
    assert builders.build_job(FTJ, spec, CONFIG, suspend=False) == modelcache.wire(
        builders.build_job(FTJ, spec, CONFIG, suspend=False), None, SETTINGS
    )


def test_the_settings_from_the_environment():
    env = {
        "KUBETUNE_CACHE_ROOT": "s3://kubetune-cache/",
        "KUBETUNE_CACHE_NAMESPACE": "kubetune-system",
        "KUBETUNE_CACHE_MAX_SIZE": "2Ti",
        "KUBETUNE_CACHE_DEFAULT": "false",
        "KUBETUNE_CACHE_READ_SECRET": "cache",
        "KUBETUNE_CACHE_POPULATE_SECRET": "writer",
        "KUBETUNE_CACHE_AWS_ENDPOINT_URL": "http://minio:9000",
        "KUBETUNE_CACHE_POPULATE_RESOURCES": '{"requests": {"cpu": "1"}}',
    }
    settings = operator_config.from_env(env).model_cache
    assert settings.enabled and settings.max_bytes == 2 * 1024**4 and settings.default is False
    assert settings.populate_resources == {"requests": {"cpu": "1"}} and settings.endpoint == "http://minio:9000"
    assert not operator_config.from_env({}).model_cache.enabled
    for bad, words in (
        (dict(env, KUBETUNE_CACHE_ROOT="gs://x/"), "KUBETUNE_CACHE_ROOT"),
        (dict(env, KUBETUNE_CACHE_NAMESPACE=""), "KUBETUNE_CACHE_NAMESPACE"),
        (dict(env, KUBETUNE_CACHE_MAX_SIZE="lots"), "KUBETUNE_CACHE_MAX_SIZE"),
        (dict(env, KUBETUNE_CACHE_DEFAULT="yes"), "KUBETUNE_CACHE_DEFAULT"),
        (dict(env, KUBETUNE_CACHE_POPULATE_RESOURCES="[]"), "KUBETUNE_CACHE_POPULATE_RESOURCES"),
    ):
        with pytest.raises(ValueError, match=words):
            operator_config.from_env(bad)


def test_population_results_and_failures_as_the_kubelet_reports_them():
    def pod(code: int, message: str, finished: str = "2026-01-01T00:00:00Z") -> dict:
        return {
            "status": {
                "containerStatuses": [
                    {
                        "name": "populate",
                        "state": {"terminated": {"exitCode": code, "message": message, "finishedAt": finished}},
                    }
                ]
            }
        }

    line = json.dumps(
        {"entry": "s3://c/hf/models--o--m/" + "c" * 40 + "/", "commit": "c" * 40, "hit": False, "files": 3, "bytes": 10}
    )
    assert modelcache.population_result([pod(20, "InfraError: x"), pod(0, f"log line\n{line}")])["bytes"] == 10
    assert modelcache.population_result([pod(0, "not json")]) is None
    assert modelcache.last_failure(
        [
            pod(20, "InfraError: first", "2026-01-01T00:00:01Z"),
            pod(10, "UserError: \x1b[31mgated\x1b[0m", "2026-01-01T00:00:02Z"),
        ]
    ) == (10, "UserError: gated")
    assert modelcache.last_failure([pod(0, line)]) == (None, "")
    assert modelcache.population_name("a") == modelcache.population_name("a") != modelcache.population_name("b")
    assert len(modelcache.population_name("x" * 500)) <= 63


def test_the_operators_cache_code_needs_no_training_library(tmp_path):
    """The operator's image has boto3 and huggingface_hub but no torch, transformers or datasets: the store and the
    Hub lookups the operator runs (a Hub and a store that cannot be reached, here) import none of them."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    script = f"""
import importlib.abc, sys
class NoTraining(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "datasets", "peft", "trl", "accelerate"):
            raise ImportError("the operator's image has no " + name)
sys.meta_path.insert(0, NoTraining())
from kubetune.controller import modelcache
from kubetune_trainer import cache
from kubetune_trainer.errors import InfraError
try:
    modelcache.Store("s3://cache/models/").marker("s3://cache/models/hf/models--o--m/{"c" * 40}/")
except InfraError as err:
    print("store:", err)
try:
    cache.resolve_commit("hf://org/model", token=False)
except InfraError as err:
    print("hub:", err)
"""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HF_ENDPOINT": closed,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path),
        "KUBETUNE_CACHE_AWS_ENDPOINT_URL": closed,
        "KUBETUNE_S3_MAX_ATTEMPTS": "1",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "HF_HUB_ETAG_TIMEOUT": "1",
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "store:" in done.stdout and "hub:" in done.stdout and "cannot be reached" in done.stdout, done.stdout
