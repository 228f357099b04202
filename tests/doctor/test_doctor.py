"""`kubetune doctor FILE`: one line per finding, each with what to do; exit status 1 when any is an error. Run as a
user runs it (`kubetune doctor ... --kubeconfig`), against the test API server and moto."""

from __future__ import annotations

import base64
import time

from kubetune import __version__
from kubetune.api.crd import crd
from kubetune.cli import main
from tests.doctor.conftest import OPERATOR_NAMESPACE, SECRET_VALUE

NS = "team-a"
TRAINER = "registry.example/ml/trainer"


def spec(s3_url: str, **changes) -> dict:
    base = {
        "technique": "lora",
        "objective": "instruction",
        "model": {"uri": "s3://models/qwen-0.5b/", "credentialsSecret": "s3-credentials"},
        "datasets": [
            {
                "name": "support",
                "uri": "s3://data/support/train.jsonl",
                "format": "messages",
                "evalUri": "s3://data/support/eval.jsonl",
            }
        ],
        "output": {"uri": "s3://runs/kubetune/", "credentialsSecret": "s3-credentials", "endpoint": s3_url},
        "queueName": "team-gpus",
        "priorityClassName": "ml-batch",
        "resources": {"gpus": 1},
        "pod": {
            "imagePullSecrets": ["regcred"],
            "volumes": [
                {"name": "corpus", "mountPath": "/corpus", "persistentVolumeClaim": {"claimName": "corpus"}},
                {"name": "ca", "mountPath": "/etc/corp-ca", "configMap": {"name": "corp-ca"}},
            ],
        },
    }
    return base | changes


OPERATOR_VALUES = {"watchNamespaces": [NS], "trainer": {"image": {"repository": TRAINER}}}


def ready_cluster(world, operator_values: dict = OPERATOR_VALUES) -> None:
    """Everything spec() needs."""
    world.namespace(NS)
    world.secret(NS, "s3-credentials", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    world.secret(NS, "regcred", (".dockerconfigjson",))
    world.claim(NS, "corpus")
    world.config_map(NS, "corp-ca")
    world.priority_class("ml-batch")
    world.install_kueue()
    world.local_queue(NS, "team-gpus")
    world.operator(operator_values)
    world.put("s3://models/qwen-0.5b/config.json")
    world.put("s3://data/support/train.jsonl")
    world.put("s3://data/support/eval.jsonl")
    world.bucket("runs")


def doctor(world, capsys, manifest, *args: str, kubeconfig=None) -> tuple[int, list[str]]:
    code = main(["doctor", str(manifest), "--kubeconfig", str(kubeconfig or world.kubeconfig), *args])
    out = capsys.readouterr().out
    return code, out.splitlines()


def levels(lines: list[str], level: str) -> list[str]:
    return [line for line in lines if line.startswith(f"{level}: ")]


def test_a_job_whose_needs_are_all_met_is_ready(world, capsys):
    ready_cluster(world)
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert code == 0, "\n".join(lines)
    assert levels(lines, "error") == [] and levels(lines, "warning") == [], "\n".join(lines)
    text = "\n".join(lines)
    for found in (
        f"CRD finetunejobs.kubetune.dev: installed, with the schema of this kubetune ({__version__})",
        f"operator {OPERATOR_NAMESPACE}/kubetune: running (1/1 available",
        f"{NS}/support-bot: the operator {OPERATOR_NAMESPACE}/kubetune watches {NS}",
        (
            f'{NS}/support-bot: Secret "s3-credentials": exists (model credentials, dataset-0 credentials, '
            "dataset-0-eval credentials, output credentials); it must hold AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY"
        ),
        f'{NS}/support-bot: Secret "regcred": exists (spec.pod.imagePullSecrets)',
        f'{NS}/support-bot: PersistentVolumeClaim "corpus": exists (volume corpus)',
        f'{NS}/support-bot: ConfigMap "corp-ca": exists (volume ca)',
        f'{NS}/support-bot: LocalQueue "team-gpus": exists (spec.queueName)',
        f'{NS}/support-bot: PriorityClass "ml-batch": exists',
        f"{NS}/support-bot: trainer image {TRAINER}:{__version__} (the operator's default)",
        f"{NS}/support-bot: output: s3://runs/kubetune/{NS}/support-bot/ (spec.output.uri) is writable",
        f"{NS}/support-bot: model: s3://models/qwen-0.5b/ exists",
        f"{NS}/support-bot: dataset support: s3://data/support/train.jsonl exists",
        f"{NS}/support-bot: dataset support (eval): s3://data/support/eval.jsonl exists",
    ):
        assert found in text, f"{found!r} not in:\n{text}"
    # The probe object was written and deleted again; Secrets were looked up by name, their data never shown.
    assert world.keys("runs") == []
    assert SECRET_VALUE not in text and base64.b64encode(SECRET_VALUE.encode()).decode() not in text


def test_each_missing_piece_is_an_error_that_says_what_to_do(world, capsys):
    world.namespace(NS)
    world.operator(OPERATOR_VALUES)
    world.install_kueue()
    world.bucket("runs")
    world.put("s3://data/support/train.jsonl")
    manifest = world.manifest(spec(world.s3_url))
    code, lines = doctor(world, capsys, manifest)
    assert code == 1
    errors = "\n".join(levels(lines, "error"))
    for found in (
        (
            f'Secret "s3-credentials": does not exist in namespace {NS} (model credentials, dataset-0 '
            f"credentials, dataset-0-eval credentials, output credentials): the pod would wait for it "
            f"(SecretNotFound); kubectl -n {NS} create secret generic s3-credentials "
            "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=..."
        ),
        f'PersistentVolumeClaim "corpus": does not exist in namespace {NS} (volume corpus)',
        f'ConfigMap "corp-ca": does not exist in namespace {NS} (volume ca)',
        (
            f'LocalQueue "team-gpus": does not exist in namespace {NS} (spec.queueName): the job would stay '
            "Queued (QueueNotFound)"
        ),
        'PriorityClass "ml-batch": does not exist',
        "model: s3://models/qwen-0.5b/config.json does not exist: not a Hugging Face model folder",
        "dataset support (eval): nothing at s3://data/support/eval.jsonl",
    ):
        assert found in errors, f"{found!r} not in:\n{errors}"
    # A missing image pull Secret does not stop the pod: a warning.
    assert any('Secret "regcred": does not exist' in line for line in levels(lines, "warning"))
    assert "dataset support: s3://data/support/train.jsonl exists" in "\n".join(lines)


def test_a_namespace_the_operator_does_not_watch(world, capsys):
    ready_cluster(world, {"watchNamespaces": ["team-x", "team-y"]})
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert code == 1
    (error,) = levels(lines, "error")
    assert (
        f"the operator {OPERATOR_NAMESPACE}/kubetune watches only team-x, team-y, not {NS}: the job would get no "
        "status at all; add the namespace: helm upgrade <release> charts/kubetune -n kubetune-system "
        "--reuse-values --set 'watchNamespaces={team-x,team-y,team-a}'"
    ) in error
    # Its default trainer image is not that of an operator that ignores the namespace.
    assert any("the operator's default trainer image could not be read" in w for w in levels(lines, "warning"))


def test_an_operator_that_cannot_start_or_is_not_ready(world, capsys):
    world.operator({"extraArgs": ["--verbose"]})
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)), "--operator-namespace", OPERATOR_NAMESPACE)
    assert code == 1
    assert any(
        "operator kubetune-system/kubetune: cannot start: `kubetune operator" in e
        and "is refused: kubetune: error: unrecognized arguments: --verbose" in e
        for e in levels(lines, "error")
    ), lines


def test_an_operator_that_crash_loops(world, capsys):
    world.operator({}, available=0, waiting="CrashLoopBackOff")
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert code == 1
    assert any(
        "operator kubetune-system/kubetune: not running (0/1 available; kubetune-7d9f-x2x4z: "
        "CrashLoopBackOff (back-off 40s)): kubectl -n kubetune-system describe deployment kubetune" in e
        for e in levels(lines, "error")
    ), lines


def test_no_operator_at_all(world, capsys):
    world.namespace(NS)
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert code == 1
    assert any(
        "operator: no kubetune operator Deployment in any namespace" in e and "install the chart" in e
        for e in levels(lines, "error")
    ), lines


def test_the_policy_of_the_cluster(world, capsys):
    ready_cluster(world, OPERATOR_VALUES | {"policy": {"maxGpusPerJob": 1, "allowedPriorityClasses": ["ml-urgent"]}})
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url, resources={"gpus": 2})))
    assert code == 1
    errors = levels(lines, "error")
    assert any(
        "the cluster's policy refuses it (the job would fail with PolicyDenied): spec.resources.gpus: the job "
        "asks for 2 GPUs"
        in e
        and "(policy rule maxGpusPerJob)" in e
        for e in errors
    ), errors
    assert any("spec.priorityClassName: 'ml-batch' is not allowed on this cluster" in e for e in errors), errors


def test_default_output_and_default_queue_come_from_the_operator(world, capsys):
    values = OPERATOR_VALUES | {
        "trainer": {"image": {"repository": TRAINER}, "defaultOutputUri": "s3://runs/shared/"},
        "policy": {"defaultQueue": "team-gpus"},
    }
    ready_cluster(world, values)
    job = spec(world.s3_url, output={"credentialsSecret": "s3-credentials", "endpoint": world.s3_url})
    del job["queueName"]
    code, lines = doctor(world, capsys, world.manifest(job))
    assert code == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert (f"output: s3://runs/shared/{NS}/support-bot/ (the operator's default output URI) is writable") in text
    assert 'LocalQueue "team-gpus": exists (the policy\'s defaultQueue)' in text


def test_no_output_anywhere(world, capsys):
    ready_cluster(world)
    job = spec(world.s3_url, output={"credentialsSecret": "s3-credentials", "endpoint": world.s3_url})
    code, lines = doctor(world, capsys, world.manifest(job))
    assert code == 1
    assert any(
        "output: spec.output.uri is empty and the operator has no default (trainer.defaultOutputUri): the "
        "job would fail as SpecInvalid" in e
        for e in levels(lines, "error")
    ), lines


def test_kueue_not_installed_and_an_inactive_queue(world, capsys):
    world.namespace(NS)
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert code == 1
    assert any(
        'LocalQueue "team-gpus": Kueue is not installed (the cluster serves no kueue.x-k8s.io LocalQueues)' in e
        for e in levels(lines, "error")
    ), lines
    world.install_kueue()
    world.local_queue(NS, "team-gpus", active=False)
    _, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert not any("LocalQueue" in e for e in levels(lines, "error"))  # inactive may be a moment's state: a warning
    assert any(
        'LocalQueue "team-gpus": exists (spec.queueName) but is not active: ClusterQueueDoesNotExist' in w
        for w in levels(lines, "warning")
    ), lines


def test_a_crd_that_is_missing_or_older_than_the_cli(world, capsys):
    name = crd()["metadata"]["name"]
    world.emulator.delete_crd(name)
    world.namespace(NS)
    manifest = world.manifest(spec(world.s3_url, tracking={"wandb": {"project": "p", "credentialsSecret": "wandb"}}))
    code, lines = doctor(world, capsys, manifest)
    assert code == 1
    assert any(f"CRD {name}: not installed" in e for e in levels(lines, "error")), lines

    older = crd()
    schema = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del schema["properties"]["tracking"]
    world.emulator.register_crd(older)
    code, lines = doctor(world, capsys, manifest)
    assert any(
        f"CRD {name}: older than this kubetune ({__version__}): the API server would drop spec.tracking, "
        "spec.tracking.wandb"
        in e
        and "kubectl apply --server-side --force-conflicts -f charts/kubetune/crds/" in e
        for e in levels(lines, "error")
    ), lines
    # A manifest that does not use the missing field only hears that the CRD is older.
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert any(
        f"CRD {name}: older than this kubetune" in w and "it lacks spec.tracking" in w for w in levels(lines, "warning")
    ), lines


def test_a_user_who_may_not_read_crds_nor_deployments(world, capsys):
    """The CRD's fields come from the OpenAPI document every user may read; the operator is reported unchecked."""
    ready_cluster(world)
    user = "sa:team-a:alice"
    world.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "ml-user"},
            "rules": [
                {"apiGroups": [""], "resources": ["secrets", "configmaps", "persistentvolumeclaims"], "verbs": ["get"]}
            ],
        },
    )
    world.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "ml-user"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ml-user"},
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": NS}],
        },
    )
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)), kubeconfig=world.write_kubeconfig(user))
    text = "\n".join(lines)
    assert f"ok: CRD finetunejobs.kubetune.dev: installed, with the fields of this kubetune ({__version__})" in text
    assert "warning: operator: not checked: you may not read Deployments in namespace kubetune-system" in text
    assert 'ok: team-a/support-bot: Secret "s3-credentials": exists' in text
    assert 'warning: team-a/support-bot: LocalQueue "team-gpus": not checked: you may not read LocalQueues' in text
    assert 'warning: team-a/support-bot: PriorityClass "ml-batch": not checked' in text
    assert code == 0  # nothing found wrong, only unchecked


def test_storage_the_user_cannot_reach_or_write(world, capsys, monkeypatch):
    ready_cluster(world)
    job = spec(
        world.s3_url,
        output={
            "uri": "s3://no-such-bucket/kubetune/",
            "credentialsSecret": "s3-credentials",
            "endpoint": world.s3_url,
        },
    )
    code, lines = doctor(world, capsys, world.manifest(job))
    assert code == 1
    assert any(
        "output: s3://no-such-bucket/kubetune/team-a/support-bot/" in e
        and "the bucket does not exist (with your credentials; the pods use the spec's)" in e
        for e in levels(lines, "error")
    ), lines

    # An endpoint only the cluster resolves: not an error, but a way to check through another address.
    inside = spec(
        world.s3_url,
        output={"uri": "s3://runs/kubetune/", "credentialsSecret": "s3-credentials", "endpoint": "http://127.0.0.1:9"},
    )
    started = time.monotonic()
    code, lines = doctor(world, capsys, world.manifest(inside))
    assert time.monotonic() - started < 60
    warnings = levels(lines, "warning")
    assert any(
        "output: s3://runs/kubetune/team-a/support-bot/ (spec.output.uri) not checked: " in w
        and "--s3-endpoint URL" in w
        for w in warnings
    ), lines
    code, lines = doctor(world, capsys, world.manifest(inside), "--s3-endpoint", world.s3_url)
    assert code == 0, lines

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)))
    assert any(
        "output: s3://runs/kubetune/team-a/support-bot/ (spec.output.uri) not checked: you have no S3 "
        "credentials here" in w
        for w in levels(lines, "warning")
    ), lines


def test_hub_and_file_uris(world, capsys, monkeypatch):
    import huggingface_hub.constants

    ready_cluster(world)
    job = spec(
        world.s3_url,
        model={"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        datasets=[{"name": "papers", "uri": "file:///corpus/papers/", "format": "messages"}],
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, lines = doctor(world, capsys, world.manifest(job))
    text = "\n".join(lines)
    assert "skipped: team-a/support-bot: dataset papers: file:///corpus/papers/ lies on a volume of the pods" in text
    assert "skipped: team-a/support-bot: model: hf://Qwen/Qwen2.5-0.5B-Instruct: not checked (HF_HUB_OFFLINE" in text
    assert code == 0
    # Online, with a hub this machine cannot reach (HF_ENDPOINT is a closed port here): a warning, not an error.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    code, lines = doctor(world, capsys, world.manifest(job))
    assert (
        "warning: team-a/support-bot: model: hf://Qwen/Qwen2.5-0.5B-Instruct not checked: "
        "hf://Qwen/Qwen2.5-0.5B-Instruct: the Hugging Face Hub cannot be reached"
    ) in "\n".join(lines)
    assert code == 0


def test_bad_manifests_and_namespaces(world, capsys):
    ready_cluster(world)
    bad = spec(world.s3_url, lora={"rank": 0})
    code, lines = doctor(world, capsys, world.manifest(bad))
    assert code == 1
    assert any("support-bot: spec.lora.rank" in e and "(kubetune validate" in e for e in levels(lines, "error"))

    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)), "-n", "team-b")
    assert any("metadata.namespace is team-a but -n says team-b" in e for e in levels(lines, "error")), lines

    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url), namespace=None), "-n", "team-c")
    assert any("a valid FineTuneJob, to be created in namespace team-c" in o for o in levels(lines, "ok"))
    assert any(
        "namespace team-c does not exist: kubectl create namespace team-c" in e for e in levels(lines, "error")
    ), lines


def test_an_api_server_out_of_reach(world, capsys):
    """The cluster's part is one error; the storage checks still run."""
    ready_cluster(world)
    kubeconfig = world.write_kubeconfig("admin", server="https://127.0.0.1:9")
    started = time.monotonic()
    code, lines = doctor(world, capsys, world.manifest(spec(world.s3_url)), kubeconfig=kubeconfig)
    assert time.monotonic() - started < 60
    assert code == 1
    (error,) = levels(lines, "error")
    assert error.startswith("error: cluster: cannot reach the API server at https://127.0.0.1:9")
    assert any(
        "output: s3://runs/kubetune/team-a/support-bot/ (spec.output.uri) is writable" in o for o in levels(lines, "ok")
    )


def test_the_operators_settings_are_read_with_its_own_code():
    from kubetune.doctor import operator_settings

    settings, refusal = operator_settings(
        {
            "args": ["operator", "--standalone", "--namespace=a", "-n", "b"],
            "env": [
                {"name": "KUBETUNE_TRAINER_IMAGE", "value": "r/t:1"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {}}},
            ],
        }
    )
    assert refusal == "" and settings.namespaces == ("a", "b") and settings.trainer_image == "r/t:1"
    settings, refusal = operator_settings(
        {
            "args": ["operator"],
            "env": [
                {"name": "KUBETUNE_NAMESPACES", "value": "x,y"},
                {"name": "KUBETUNE_CONCURRENT_RECONCILES", "value": "0"},
            ],
        }
    )
    assert settings is None and "KUBETUNE_CONCURRENT_RECONCILES must be >= 1" in refusal
    settings, _ = operator_settings(
        {
            "command": ["/usr/local/bin/kubetune"],
            "args": ["operator"],
            "env": [{"name": "KUBETUNE_NAMESPACES", "value": "x,y"}],
        }
    )
    assert settings.namespaces == ("x", "y")
