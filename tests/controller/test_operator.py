"""The real operator (kopf, in-process) against the API emulator; the test plays the Job controller,
the kubelet and Kueue (harness.ClusterSim) and the user (the official client)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import kubernetes
import pytest

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.controller.policy import Policy
from kubetune.controller.reconciler import Reconciler
from kubetune.testing.emulator import Fault
from kubetune.testing.harness import ClusterSim, OperatorThread, wait_for
from kubetune_trainer.reporting import CheckpointReport, OutputReport, ProgressReport
from kubetune_trainer.status_reporter import StatusReporter
from tests.controller.conftest import SETTINGS
from tests.controller.samples import LORA_INSTRUCTION_SPEC

# Each test waits for the operator through the API: bounded, so that a hang fails the test instead of the run.
pytestmark = pytest.mark.timeout(120)

SPEC = LORA_INSTRUCTION_SPEC


def manifest(name: str, namespace: str, **spec) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": SPEC | spec,
    }


class User:
    """kubectl, in short."""

    def __init__(self, admin: kubernetes.client.ApiClient, namespace: str):
        self.crd = kubernetes.client.CustomObjectsApi(admin)
        self.core = kubernetes.client.CoreV1Api(admin)
        self.batch = kubernetes.client.BatchV1Api(admin)
        self.ns = namespace

    def apply(self, name: str, **spec) -> dict:
        return self.crd.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, manifest(name, self.ns, **spec)
        )

    def get(self, name: str) -> dict:
        return self.crd.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def edit(self, name: str, **spec) -> dict:
        return self.crd.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def wait_phase(self, name: str, phase: str, timeout: float = 20) -> dict:
        return wait_for(
            lambda: self.status(name) if self.status(name).get("phase") == phase else None,
            timeout,
            f"{name} in phase {phase} (now {self.status(name).get('phase')})",
        )

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(self.ns).items
        return [
            (e.type, e.reason)
            for e in sorted(items, key=lambda e: int(e.metadata.resource_version))
            if e.involved_object.name == name
        ]

    def condition(self, name: str, kind: str) -> dict:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == kind)


@pytest.fixture
def user(admin, namespace, operator):
    return User(admin, namespace)


def reporter_token(sim: ClusterSim, job: dict) -> str:
    """The token a pod of `job` finds in its reporter-token volume, once the token controller has filled the Secret."""
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    [source] = [s["secret"] for s in volumes["reporter-token"]["projected"]["sources"] if "secret" in s]
    namespace = job["metadata"]["namespace"]
    token = wait_for(
        lambda: ((sim.kube.get("Secret", namespace, source["name"]) or {}).get("data") or {}).get("token"),
        what="the reporter's token",
    )
    return base64.b64decode(token).decode()


def test_valid_job_gets_its_children_and_runs_to_success_with_progress_from_the_reporter(user, sim, emulator):
    user.apply("bot")
    ns = user.ns
    job = wait_for(lambda: sim.kube.get("Job", ns, "bot"), what="the Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/kubetune-trainer:test"
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    uid = user.get("bot")["metadata"]["uid"]
    assert env["KUBETUNE_OUTPUT_URI"] == f"s3://kubetune-out/runs/{ns}/bot/{uid}/"
    assert sim.kube.get("Service", ns, "bot-workers") is None  # single node: no rendezvous Service
    assert sim.kube.get("ConfigMap", ns, "bot-spec") is None  # the pod carries its spec: no ConfigMap to start
    status = user.wait_phase("bot", "Pending")
    assert status["jobName"] == "bot" and status["observedGeneration"] == 1
    # The reporter's identity and grant follow the pods: nothing while none runs. The pods run as the namespace's
    # `default` account (the emulator, as the API server, refuses a pod whose account is missing).
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "default"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert sim.kube.get(kind, ns, "bot-reporter") is None, kind

    sim.start(ns, "bot")
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        child = wait_for(lambda kind=kind: sim.kube.get(kind, ns, "bot-reporter"), what=f"the reporter's {kind}")
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    status = user.wait_phase("bot", "Running")
    assert status["attempts"] == 1 and status["startTime"]
    assert user.condition("bot", "Running")["status"] == "True"

    # The trainer's reporter, with the token the pod's reporter-token volume carries: the one the cluster's token
    # controller put in the job's Secret.
    reporter_client = kubernetes.client.ApiClient(emulator.client_configuration(reporter_token(sim, job)))
    reporter = StatusReporter("bot", ns, interval_seconds=30, api_client=reporter_client)
    for step in range(1, 51):
        reporter.progress(
            ProgressReport(
                step=step,
                total_steps=100,
                epoch=step / 50,
                eta_seconds=100 - step,
                metrics={"loss": 2.0 - step / 100, "learningRate": 1e-4, "bad": float("nan")},
            )
        )
    reporter.checkpoints(
        [
            CheckpointReport(
                step=50,
                uri=f"s3://kubetune-out/runs/{ns}/bot/{uid}/checkpoints/step-50/",
                time="2026-01-01T00:00:00Z",
                eval_loss=1.5,
            )
        ]
    )
    root = f"s3://kubetune-out/runs/{ns}/bot/{uid}/"  # the trainer reports where it wrote: under the output root
    reporter.output(
        OutputReport(
            model_uri=f"{root}final/",
            metrics_uri=f"{root}metrics.jsonl",
            tensorboard_uri=f"{root}tensorboard/",
            checkpoints_uri=f"{root}checkpoints/",
        )
    )
    reporter.close()
    patches = [c for c in emulator.calls(f"sa:{ns}:bot-reporter") if c.verb == "patch"]
    assert 1 <= len(patches) <= 2, "rate limit: the first report, then one flush on close"
    assert reporter.errors == 0
    status = user.status("bot")
    assert status["progress"] == {"step": 50, "totalSteps": 100, "epoch": 1.0, "percent": 50, "etaSeconds": 50}
    assert status["metrics"] == {"loss": 1.5, "learningRate": 1e-4}
    assert status["checkpoints"] == [
        {
            "step": 50,
            "uri": f"s3://kubetune-out/runs/{ns}/bot/{uid}/checkpoints/step-50/",
            "time": "2026-01-01T00:00:00Z",
            "evalLoss": 1.5,
        }
    ]
    assert status["output"] == {
        "modelUri": f"{root}final/",
        "metricsUri": f"{root}metrics.jsonl",
        "tensorboardUri": f"{root}tensorboard/",
        "checkpointsUri": f"{root}checkpoints/",
    }
    assert status["phase"] == "Running"  # the reporter never touches the operator's keys

    # Its identity can patch only its own FineTuneJob's status.
    foreign = kubernetes.client.CustomObjectsApi(reporter_client)
    user.apply("other")
    with pytest.raises(kubernetes.client.ApiException) as denied:
        foreign.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "other", {"status": {"progress": {}}})
    assert denied.value.status == 403
    with pytest.raises(kubernetes.client.ApiException) as denied:
        foreign.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "bot", {"spec": {"suspend": True}})
    assert denied.value.status == 403

    sim.succeed(ns, "bot")
    status = user.wait_phase("bot", "Succeeded")
    assert status["completionTime"] and status["progress"]["step"] == 50  # both writers' keys survive
    assert status["output"]["modelUri"] == f"{root}final/" and len(status["checkpoints"]) == 1
    assert user.condition("bot", "Ready")["status"] == "True"
    assert not any(c["type"] in ("Reconciling", "Stalled") for c in status["conditions"])
    wait_for(lambda: ("Normal", "TrainingComplete") in user.events("bot"), what="the TrainingComplete Event")
    assert user.events("bot") == [("Normal", "JobCreated"), ("Normal", "PodsRunning"), ("Normal", "TrainingComplete")]
    # GitOps: the operator writes status only; no bookkeeping annotations or finalizers on the user's object.
    meta = user.get("bot")["metadata"]
    assert not [k for k in meta.get("annotations") or {} if "kubetune.dev" in k or "kopf" in k], meta["annotations"]
    assert not meta.get("finalizers")
    assert not [c for c in emulator.calls("operator") if c.verb == "patch" and c.resource == "finetunejobs"]


def test_the_reporters_token_holds_while_its_secret_and_account_exist(user, sim, emulator):
    """The token controller's token in the job's Secret is the reporter's identity while both exist (kube-apiserver
    checks a Secret-held token against the Secret and the account at each request): deleting the Secret revokes it,
    and deleting the account (as ttlSecondsAfterFinished does, and the garbage collector with the FineTuneJob) takes
    the Secret with it."""
    ns = user.ns

    def running(name: str) -> str:
        """A job of that name with its pods, and its reporter's token."""
        user.apply(name)
        job = wait_for(lambda: sim.kube.get("Job", ns, name), what="the Job")
        sim.start(ns, name)
        return reporter_token(sim, job)

    def token_secrets(name: str) -> list[str]:
        return [s.metadata.name for s in user.core.list_namespaced_secret(ns).items if s.metadata.name.startswith(name)]

    def answer(token: str, name: str) -> int:
        api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(emulator.client_configuration(token)))
        try:
            api.get_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name)
        except kubernetes.client.ApiException as err:
            return err.status
        return 200

    token = running("brief")
    assert answer(token, "brief") == 200
    [secret] = token_secrets("brief-")
    user.core.delete_namespaced_secret(secret, ns)
    assert answer(token, "brief") == 401

    token = running("brief-too")
    user.core.delete_namespaced_service_account("brief-too-reporter", ns)
    wait_for(lambda: not token_secrets("brief-too-"), what="the token Secret to go with its account")
    assert answer(token, "brief-too") == 401

    # The Secret has no ownerReference: deleting the FineTuneJob takes its account (the garbage collector), and the
    # account the Secret (the token controller).
    running("brief-end")
    user.crd.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "brief-end")
    wait_for(lambda: not token_secrets("brief-end-"), what="the token Secret to go with its FineTuneJob")


@pytest.fixture
def operator_allowing_an_identity(operator, emulator):
    """The session's operator stopped until the test ends, and one in its place whose policy lets the pods run as the
    ServiceAccount `ml-identity` (a cloud identity)."""
    operator.stop()
    settings = dataclasses.replace(SETTINGS, policy=Policy(allowed_service_accounts=("ml-identity",)))
    allowing = OperatorThread(emulator, settings).start()
    try:
        yield allowing
    finally:
        allowing.stop()
        operator.start()


def test_pods_that_run_as_the_users_account_report_with_it_and_no_job_account_is_made(
    operator_allowing_an_identity, admin, namespace, sim, emulator
):
    user = User(admin, namespace)
    user.core.create_namespaced_service_account(namespace, {"metadata": {"name": "ml-identity"}})
    user.apply("bot", pod={"serviceAccountName": "ml-identity"})
    job = wait_for(lambda: sim.kube.get("Job", namespace, "bot"), what="the Job")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "ml-identity"
    user.wait_phase("bot", "Pending")
    sim.start(namespace, "bot")  # the emulator refuses a pod whose account is missing: this one exists
    binding = wait_for(lambda: sim.kube.get("RoleBinding", namespace, "bot-reporter"), what="the reporter's grant")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ml-identity", "namespace": namespace}]
    user.wait_phase("bot", "Running")
    assert sim.kube.get("ServiceAccount", namespace, "bot-reporter") is None  # no pod would run as it

    # The trainer reports with the token of the account its pod runs as.
    reporter = StatusReporter(
        "bot",
        namespace,
        interval_seconds=30,
        api_client=kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{namespace}:ml-identity")),
    )
    reporter.progress(ProgressReport(step=5, total_steps=10, epoch=0.5, eta_seconds=5, metrics={"loss": 1.0}))
    reporter.close()
    assert reporter.errors == 0
    assert user.status("bot")["progress"]["step"] == 5


def test_user_error_fails_at_once_with_the_termination_message(user, sim):
    user.apply("bad-data", backoffLimit=3)
    wait_for(lambda: sim.kube.get("Job", user.ns, "bad-data"), what="the Job")
    sim.start(user.ns, "bad-data")
    user.wait_phase("bad-data", "Running")
    message = "spec.datasets[0].columns.messages: column 'conversation' not found in s3://data/support/train.jsonl"
    sim.fail(user.ns, "bad-data", 10, message)
    status = user.wait_phase("bad-data", "Failed")
    assert status["message"] == message
    assert status["attempts"] == 1
    failed = user.condition("bad-data", "Failed")
    assert failed["reason"] == "UserError" and failed["message"] == message
    assert user.condition("bad-data", "Stalled")["status"] == "True"
    assert len(sim.pods(user.ns, sim.job(user.ns, "bad-data"))) == 1  # no retry
    wait_for(lambda: ("Warning", "UserError") in user.events("bad-data"), what="the UserError Event")  # after status


def test_infrastructure_failure_is_retried_and_counted(user, sim):
    user.apply("flaky", backoffLimit=1)
    wait_for(lambda: sim.kube.get("Job", user.ns, "flaky"), what="the Job")
    sim.start(user.ns, "flaky")
    user.wait_phase("flaky", "Running")
    sim.fail(user.ns, "flaky", 20, "S3 upload timed out")  # the Job controller starts a new pod
    status = wait_for(
        lambda: (st := user.status("flaky")).get("attempts") == 2 and st["phase"] == "Running" and st,
        what="attempt 2 running",
    )
    # the failure is told even when attempt 2 was already running at the operator's next look
    assert "S3 upload timed out" in status["message"]
    wait_for(lambda: ("Warning", "Retrying") in user.events("flaky"), what="the Retrying event")
    sim.fail(user.ns, "flaky", 20, "S3 upload timed out again")  # over backoffLimit
    status = user.wait_phase("flaky", "Failed")
    assert user.condition("flaky", "Failed")["reason"] == "BackoffLimitExceeded"
    assert "S3 upload timed out again" in status["message"]


def test_suspend_and_resume(user, sim):
    user.apply("pausable")
    wait_for(lambda: sim.kube.get("Job", user.ns, "pausable"), what="the Job")
    sim.start(user.ns, "pausable")
    user.wait_phase("pausable", "Running")
    user.edit("pausable", suspend=True)
    wait_for(lambda: sim.job(user.ns, "pausable")["spec"]["suspend"], what="Job.spec.suspend")
    sim.sync_suspend(user.ns, "pausable")
    user.wait_phase("pausable", "Suspended")
    assert user.condition("pausable", "Suspended")["reason"] == "SuspendedByUser"
    user.edit("pausable", suspend=False)
    wait_for(lambda: not sim.job(user.ns, "pausable")["spec"]["suspend"], what="the Job resumed")
    sim.start(user.ns, "pausable")
    user.wait_phase("pausable", "Running")
    assert user.condition("pausable", "Suspended")["status"] == "False"


def test_mutable_fields_propagate_and_reapplying_is_a_no_op(user, sim, emulator):
    user.apply("tuned", backoffLimit=3)
    user.wait_phase("tuned", "Pending")
    user.edit("tuned", backoffLimit=5, activeDeadlineSeconds=600)
    wait_for(lambda: sim.job(user.ns, "tuned")["spec"].get("activeDeadlineSeconds") == 600, what="deadline")
    assert sim.job(user.ns, "tuned")["spec"]["backoffLimit"] == 5
    time.sleep(0.5)
    before = user.get("tuned")["metadata"]["resourceVersion"], sim.job(user.ns, "tuned")["metadata"]["resourceVersion"]
    user.edit("tuned", backoffLimit=5, activeDeadlineSeconds=600)  # same manifest again
    time.sleep(1.5)  # one resync period
    after = user.get("tuned")["metadata"]["resourceVersion"], sim.job(user.ns, "tuned")["metadata"]["resourceVersion"]
    assert before == after


def test_deadline_exceeded(user, sim):
    user.apply("slow", activeDeadlineSeconds=60)
    wait_for(lambda: sim.kube.get("Job", user.ns, "slow"), what="the Job")
    sim.start(user.ns, "slow")
    user.wait_phase("slow", "Running")
    sim.exceed_deadline(user.ns, "slow")
    user.wait_phase("slow", "Failed")
    assert user.condition("slow", "Failed")["reason"] == "DeadlineExceeded"


def test_invalid_spec_fails_validation_with_an_event_and_no_job(user, sim):
    user.apply(
        "broken",
        technique="qlora",
        hyperparameters={"learningRate": 5.0},
        datasets=[{"uri": "s3://data/x.jsonl", "format": "preference"}],
    )
    status = user.wait_phase("broken", "Failed")
    validated = user.condition("broken", "Validated")
    assert validated["status"] == "False" and validated["reason"] == "SpecInvalid"
    assert "spec.hyperparameters.learningRate" in validated["message"]
    assert status["message"].startswith("invalid spec")
    # The Event follows the status write.
    wait_for(lambda: ("Warning", "SpecInvalid") in user.events("broken"), what="the SpecInvalid Event")
    time.sleep(1.2)  # no retry loop: one Event, no Job, after a resync too
    assert sim.kube.get("Job", user.ns, "broken") is None
    assert user.events("broken").count(("Warning", "SpecInvalid")) == 1


def test_job_deleted_by_hand_is_recreated_and_deleting_the_finetunejob_removes_children(user, sim):
    user.apply("resilient", nodes=2)
    wait_for(lambda: sim.kube.get("Job", user.ns, "resilient"), what="the Job")
    assert sim.kube.get("Service", user.ns, "resilient-workers") is not None
    sim.start(user.ns, "resilient")
    user.wait_phase("resilient", "Running")
    first_uid = sim.job(user.ns, "resilient")["metadata"]["uid"]
    sim.kube.delete("Job", user.ns, "resilient")  # pods go with it (garbage collection)
    new_job = wait_for(
        lambda: (j := sim.kube.get("Job", user.ns, "resilient")) and j["metadata"]["uid"] != first_uid and j,
        what="a recreated Job",
    )
    assert ("Warning", "JobMissing") in user.events("resilient")
    sim.start(user.ns, "resilient")
    wait_for(
        lambda: (st := user.status("resilient")).get("attempts") == 2 and st["phase"] == "Running" and st,
        what="attempt 2 running",
    )
    assert new_job["metadata"]["annotations"]["kubetune.dev/previous-attempts"] == "1"

    user.crd.delete_namespaced_custom_object(GROUP, VERSION, user.ns, PLURAL, "resilient")
    for kind, name in (
        ("Job", "resilient"),
        ("ConfigMap", "resilient-spec"),
        ("Service", "resilient-workers"),
        ("ServiceAccount", "resilient-reporter"),
        ("Role", "resilient-reporter"),
        ("RoleBinding", "resilient-reporter"),
    ):
        wait_for(lambda kind=kind, name=name: sim.kube.get(kind, user.ns, name) is None, what=f"{kind} {name} deleted")
    wait_for(lambda: not sim.kube.list("Pod", user.ns), what="pods deleted")


def test_ttl_removes_children_but_keeps_the_finetunejob(user, sim):
    user.apply("shortlived", ttlSecondsAfterFinished=1)
    wait_for(lambda: sim.kube.get("Job", user.ns, "shortlived"), what="the Job")
    sim.start(user.ns, "shortlived")
    sim.succeed(user.ns, "shortlived")
    user.wait_phase("shortlived", "Succeeded")
    wait_for(lambda: sim.kube.get("Job", user.ns, "shortlived") is None, timeout=10, what="TTL")
    wait_for(lambda: sim.kube.get("ConfigMap", user.ns, "shortlived-spec") is None, what="TTL ConfigMap")
    time.sleep(1.2)
    assert user.status("shortlived")["phase"] == "Succeeded"  # not recreated, status kept
    assert sim.kube.get("Job", user.ns, "shortlived") is None


def test_per_namespace_cap(user, sim, operator):
    operator.reconfigure(max_running_per_namespace=2)
    try:
        for i in range(3):
            user.apply(f"capped-{i}")
        wait_for(lambda: len(sim.kube.list("Job", user.ns)) == 3, what="3 Jobs")
        held = wait_for(lambda: [j for j in sim.kube.list("Job", user.ns) if j["spec"]["suspend"]], what="a held Job")
        assert len(held) == 1
        name = held[0]["metadata"]["name"]
        status = user.wait_phase(name, "Queued")
        assert user.condition(name, "Queued")["reason"] == "NamespaceLimitReached"
        running = [j["metadata"]["name"] for j in sim.kube.list("Job", user.ns) if not j["spec"]["suspend"]]
        sim.start(user.ns, running[0])
        sim.succeed(user.ns, running[0])
        wait_for(lambda: not sim.job(user.ns, name)["spec"]["suspend"], what="the held Job released")
        sim.start(user.ns, name)
        user.wait_phase(name, "Running")
        assert status["phase"] == "Queued"
    finally:
        operator.reconfigure(max_running_per_namespace=0)


def test_operator_restart_mid_reconcile_never_creates_a_second_job(user, sim, emulator, operator):
    operator.stop()
    try:
        user.apply("restarted")
        ns = user.ns
        # Every status write fails: the operator creates the Job but cannot record it.
        emulator.inject(
            Fault(
                lambda c: c.user == "operator" and c.resource == "finetunejobs/status" and c.name == "restarted",
                500,
                times=None,
            )
        )
        operator.start()
        first = wait_for(lambda: sim.kube.get("Job", ns, "restarted"), what="the Job")
        time.sleep(0.5)
        operator.stop()  # mid-reconcile: the status was never written
        assert not user.status("restarted").get("jobName")
        emulator.call(lambda: emulator.server.faults.clear())
    finally:
        creates_before = len(job_creates(emulator, ns))
        operator.start()
    status = user.wait_phase("restarted", "Pending")
    assert len(emulator.objects("batch", "jobs", ns)) == 1
    # The restarted operator tried to create the Job again, met AlreadyExists and adopted the one there.
    assert len(job_creates(emulator, ns)) > creates_before
    assert sim.job(ns, "restarted")["metadata"]["uid"] == first["metadata"]["uid"] and status["jobName"] == "restarted"


def job_creates(emulator, namespace: str) -> list:
    return [
        c
        for c in emulator.calls("operator")
        if c.verb == "create" and c.resource == "jobs" and c.namespace == namespace
    ]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_many_jobs_reconcile_concurrently_a_bounded_number_at_a_time(user, sim, emulator, operator, monkeypatch):
    """200 FineTuneJobs waiting when the operator starts: each gets one Job and its status, several passes run at
    once, and never more than concurrent_reconciles. Counted where a pass holds its slot: from reaching its
    namespace's lock (creating a Job is one step with counting the namespace's running ones) to creating its Job."""
    at_lock, most = [0], [0]  # counted on the operator's loop (one thread: no lock needed)
    namespace_lock = Reconciler._namespace_lock

    @contextlib.asynccontextmanager
    async def counted(self, namespace):
        at_lock[0] += 1
        most[0] = max(most[0], at_lock[0])
        try:
            async with namespace_lock(self, namespace):
                yield
        finally:
            at_lock[0] -= 1

    monkeypatch.setattr(Reconciler, "_namespace_lock", counted)
    operator.stop()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: user.apply(f"bulk-{i}"), range(200)))
    finally:
        operator.start()
    wait_for(lambda: len(sim.kube.list("Job", user.ns)) == 200, timeout=90, what="200 Jobs")

    def pending() -> list[dict]:
        return [
            f
            for f in user.crd.list_namespaced_custom_object(GROUP, VERSION, user.ns, PLURAL)["items"]
            if (f.get("status") or {}).get("phase") == "Pending"
        ]

    wait_for(lambda: len(pending()) == 200, timeout=60, what="200 FineTuneJobs Pending")
    assert len(job_creates(emulator, user.ns)) == 200
    assert 1 < most[0] <= operator.settings.concurrent_reconciles, most[0]


def test_a_stale_watched_copy_never_replays_what_the_operator_already_did(user, sim, emulator, operator):
    created = user.apply("stale")  # as the first watch event carried it: no status
    user.wait_phase("stale", "Pending")
    wait_for(lambda: ("Normal", "JobCreated") in user.events("stale"), what="the first Event")
    before = user.events("stale"), user.status("stale")
    creates = len([c for c in emulator.calls("operator") if c.verb == "create" and c.name == "stale"])
    # A watch event delivered late (or a re-list racing our write) hands over that old copy again.
    assert operator.reconcile(user.ns, "stale", body=created) == "Pending"
    assert (user.events("stale"), user.status("stale")) == before
    assert len([c for c in emulator.calls("operator") if c.verb == "create" and c.name == "stale"]) == creates


def test_jobs_and_pods_are_watched_with_a_server_side_selector(emulator, operator):
    """In a shared cluster the operator must not receive every pod and Job to drop them itself."""

    def streams():
        return [
            c
            for c in emulator.calls("operator")
            if c.verb in ("list", "watch") and c.resource in ("jobs", "pods") and c.namespace is None
        ]

    wait_for(
        lambda: {c.resource for c in streams()} == {"jobs", "pods"}, what="kopf's cluster-wide Job and pod watches"
    )
    streams = streams()
    assert all(c.label_selector == "app.kubernetes.io/managed-by=kubetune" for c in streams), streams


def test_status_features_of_a_job_that_does_not_fit(user, sim, emulator):
    """A preference job whose lora.dropout has no effect (said in Validated), whose trainer reports its memory plan
    (kept in the status across the operator's passes) and then stops with exit 10 "UserError: DoesNotFit: ..."."""
    user.apply(
        "toobig",
        objective="preference",
        lora={"dropout": 0.1},
        datasets=[{"uri": "s3://data/prefs.jsonl", "format": "preference"}],
    )
    wait_for(lambda: sim.kube.get("Job", user.ns, "toobig"), what="the Job")
    validated = wait_for(
        lambda: user.status("toobig").get("conditions") and user.condition("toobig", "Validated"),
        what="the Validated condition",
    )
    assert (
        validated["status"] == "True"
        and "spec.lora.dropout: 0.1 is not applied with objective preference" in validated["message"]
    )
    sim.start(user.ns, "toobig")
    user.wait_phase("toobig", "Running")
    from kubetune.api.v1alpha1 import Plan

    client = kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{user.ns}:toobig-reporter"))
    reporter = StatusReporter("toobig", user.ns, interval_seconds=0, api_client=client)
    reporter.plan(Plan(strategy="ddp", world_size=1, per_gpu_gib=14.2, gpu_memory_gib=12.0, fits=False))
    reporter.close()
    wait_for(lambda: user.status("toobig").get("plan"), what="status.plan")
    # The operator tells the plan once, as an Event, when it first sees it (a status-only change of the trainer's).
    planned = wait_for(
        lambda: [e for e in user.core.list_namespaced_event(user.ns).items if e.reason == "Planned"],
        what="the Planned Event",
    )
    assert [e.message for e in planned] == ["ddp over 1 GPU, about 14.2 GiB per GPU of 12 GiB: it does not fit"]
    words = "UserError: DoesNotFit: 14.2 GiB per GPU but 11.0 GiB usable of 12 GiB; use strategy fsdp or 2 GPUs"
    sim.fail(user.ns, "toobig", 10, words)
    status = user.wait_phase("toobig", "Failed")
    assert user.condition("toobig", "Failed")["reason"] == "DoesNotFit" and status["message"] == words
    assert status["plan"] == {"strategy": "ddp", "worldSize": 1, "perGpuGiB": 14.2, "gpuMemoryGiB": 12.0, "fits": False}
    wait_for(lambda: ("Warning", "DoesNotFit") in user.events("toobig"), what="the DoesNotFit Event")
    assert user.events("toobig").count(("Normal", "Planned")) == 1


def test_user_data_in_the_trainers_message_reaches_the_status_quoted_and_bounded(user, sim):
    """CSV headers and JSON keys of the user's files: the trainer quotes and bounds them, the operator keeps what
    the pod says to one printable line within the CRD's bound."""
    from kubetune.api.v1alpha1 import Dataset as DatasetSpec
    from kubetune_trainer.data import _Checker

    headers = ["\x1b[2Jtraining finished\nphase: Succeeded", "x" * 5000] + [f"col{i}" for i in range(500)]
    error = _Checker(DatasetSpec(uri="s3://data/t.csv", format="text"), 0)._missing("t.csv: line 1", "text", headers)
    user.apply("hostile")
    wait_for(lambda: sim.kube.get("Job", user.ns, "hostile"), what="the Job")
    sim.start(user.ns, "hostile")
    user.wait_phase("hostile", "Running")
    sim.fail(user.ns, "hostile", 10, f"UserError: {error}")
    message = user.wait_phase("hostile", "Failed")["message"]
    assert message.startswith("UserError: t.csv: line 1: missing column 'text'; columns found: ")
    assert "\\x1b" not in message and "\x1b" not in message and "\n" not in message
    assert "'\\u001b[2Jtraining finished\\nphase: Succeeded'" in message and "and 482 more" in message
    assert len(message) < 2000  # 20 names of at most 80 characters each
