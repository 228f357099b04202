"""What the chart deploys and what the operator builds, run for real in the images.

1. The chart's Deployment (default values; the image repositories set as docs/quickstart.md sets them, the
   test's own ports and output root) runs `kubetune operator` in the operator image, with the pod's
   arguments, environment, user, read-only root and /tmp emptyDir, against the test API server (TLS, the
   in-cluster service-account mount) on the host network. Its liveness endpoint answers.
2. A FineTuneJob gets its Job from that operator. The Job's pod template runs in the trainer image with
   the same command, env (Secret keys resolved as the kubelet does), user, read-only root, /scratch and
   /dev/shm volumes, the ConfigMap's spec file and the projected token mounted where the pod spec says,
   reading the model and data from moto's S3 server and reporting status to the API server as the
   job's own service account (the Role the operator made is enforced).
3. The test plays the Job controller (harness.ClusterSim): the FineTuneJob reaches Succeeded with the
   trained model in the store, at the URI the trainer reported.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import kubernetes
import pytest
from imageset import REPO
from tests.controller.test_operator import reporter_token

from kubetune.testing.emulator import ADMIN_TOKEN, OPERATOR_TOKEN
from kubetune.testing.harness import ClusterSim, start_emulator, wait_for
from kubetune.testing.kubelet import Cluster, docker_run, pod_from, template_pod, termination_message

helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk (the embedded Helm SDK) is not installed")

RELEASE_NAMESPACE = "kubetune-system"
NAMESPACE = "team-a"
JOB = "image-e2e"
BUCKET = "kubetune-images"
SECRET = "s3-credentials"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_deployment(values: dict) -> dict:
    rendered = helm.Chart.load(REPO / "charts" / "kubetune").render(
        values, name="kubetune", namespace=RELEASE_NAMESPACE
    )
    import yaml

    docs = [
        d for name, text in rendered.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d
    ]
    return next(d for d in docs if d["kind"] == "Deployment")


@pytest.fixture(scope="module")
def api():
    emulator = start_emulator()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def admin(api):
    client = kubernetes.client.ApiClient(api.client_configuration(ADMIN_TOKEN))
    yield client
    client.close()


def cluster_view(api, admin) -> Cluster:
    """The kubelet's view: objects read as an admin, service-account tokens as the API server takes them."""
    core = kubernetes.client.CoreV1Api(admin)
    readers = {"Secret": core.read_namespaced_secret, "ConfigMap": core.read_namespaced_config_map}

    def read(kind: str, namespace: str, name: str) -> dict | None:
        try:
            return json.loads(readers[kind](name, namespace, _preload_content=False).data)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def token_for(namespace: str, account: str) -> str:
        # The operator's account holds the chart's cluster-wide grants; the emulator knows it by this token.
        return OPERATOR_TOKEN if namespace == RELEASE_NAMESPACE else f"sa:{namespace}:{account}"

    host, port = api.url.removeprefix("https://").rsplit(":", 1)
    return Cluster(
        read=read, token_for=token_for, ca_pem=Path(api.ca_file).read_text(), api_host=host, api_port=int(port)
    )


def upload_model_and_data(s3_url: str) -> None:
    import boto3

    from kubetune_trainer.tiny import build_tiny_llama, sample_corpus

    client = boto3.client(
        "s3", endpoint_url=s3_url, aws_access_key_id="images", aws_secret_access_key="images", region_name="us-east-1"
    )
    client.create_bucket(Bucket=BUCKET)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llama(Path(tmp) / "model")
        for path in model.iterdir():
            client.upload_file(str(path), BUCKET, f"models/tiny/{path.name}")
    rows = "".join(json.dumps({"text": text}) + "\n" for text in sample_corpus(64, seed=5))
    client.put_object(Bucket=BUCKET, Key="data/train.jsonl", Body=rows.encode())


def finetunejob(s3_url: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "technique": "lora",
            "objective": "causal-lm",
            "model": {"uri": f"s3://{BUCKET}/models/tiny/", "credentialsSecret": SECRET},
            "datasets": [{"name": "stories", "uri": f"s3://{BUCKET}/data/train.jsonl", "format": "text"}],
            "hyperparameters": {"maxSteps": 4, "batchSize": 4, "maxSeqLength": 64, "learningRate": 1e-3},
            "lora": {"rank": 4, "alpha": 8},
            # No output.uri: the chart's trainer.defaultOutputUri applies.
            "output": {"credentialsSecret": SECRET, "endpoint": s3_url, "checkpointEverySteps": 2},
            "resources": {"gpus": 0},
            "backoffLimit": 0,
        },
    }


def start_container(images, run, *, detach: bool, timeout: float) -> subprocess.CompletedProcess:
    mode = ["--detach"] if detach else []
    return images.engine.cli("run", *mode, *run.args, run.image, *run.command, check=False, timeout=timeout)


def test_the_charts_operator_and_the_pod_it_builds_run_in_the_images(images, api, s3, admin, tmp_path):
    engine = images.engine
    cluster = cluster_view(api, admin)
    operator_repo, trainer_repo = images.operator.split(":")[0], images.trainer.split(":")[0]
    liveness_port, metrics_port = free_port(), free_port()
    deployment = render_deployment(
        {
            "image": {"repository": operator_repo},
            "trainer": {"image": {"repository": trainer_repo}, "defaultOutputUri": f"s3://{BUCKET}/runs/"},
            "livenessPort": liveness_port,
            "metrics": {"port": metrics_port},
        }
    )
    template = deployment["spec"]["template"]

    # The kubelet's side of the namespaces: the FineTuneJob's namespace with its Secret.
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    # `data`, as `kubectl create secret generic --from-literal` sends it (the test API server does not turn
    # stringData into data).
    core.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": SECRET},
            "data": {
                key: base64.b64encode(b"images").decode() for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            },
        },
    )
    upload_model_and_data(s3)

    operator_dir = tmp_path / "operator"
    operator_dir.mkdir()
    operator_pod = template_pod(template, RELEASE_NAMESPACE, "kubetune-5c9d8f7b6-x2x7q")
    operator_run = docker_run(operator_pod, "operator", cluster, operator_dir, name="kubetune-test-operator")
    assert operator_run.image == images.operator and operator_run.user == "65532:65532"
    engine.cli("rm", "--force", "kubetune-test-operator", check=False)
    started = start_container(images, operator_run, detach=True, timeout=60)
    assert started.returncode == 0, started.stderr.decode()
    trainer_name = None
    try:

        def healthy() -> bool:
            state = engine.cli("inspect", "--format", "{{.State.Running}}", "kubetune-test-operator", check=False)
            assert state.stdout.decode().strip() == "true", engine.cli(
                "logs", "kubetune-test-operator", check=False
            ).stderr.decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_for(healthy, 90, "the operator container's liveness endpoint")

        custom = kubernetes.client.CustomObjectsApi(admin)
        custom.create_namespaced_custom_object("kubetune.dev", "v1alpha1", NAMESPACE, "finetunejobs", finetunejob(s3))
        sim = ClusterSim(api)
        try:
            job = wait_for(lambda: sim.kube.get("Job", NAMESPACE, JOB), 60, "the Job the operator creates")
            assert job["spec"]["template"]["spec"]["containers"][0]["image"] == images.trainer
            pod = sim.start(NAMESPACE, JOB)[0]
            # The reporter's token comes with its grant, once the operator sees the pod. A kubelet writes it into the
            # running pod at its next sync; this one writes volumes once, so the container starts after it.
            reporter_token(sim, job)

            trainer_dir = tmp_path / "trainer"
            trainer_dir.mkdir()
            trainer_name = f"kubetune-test-{pod['metadata']['name']}"
            run = docker_run(pod_from(pod), "trainer", cluster, trainer_dir, name=trainer_name)
            assert run.image == images.trainer and run.user == "1000:1000"
            begin = time.monotonic()
            result = start_container(images, run, detach=False, timeout=900)
            logs = (result.stdout + result.stderr).decode()
            message = termination_message(run, logs)
            if result.returncode == 0:
                sim.succeed(NAMESPACE, JOB)
            else:
                sim.fail(NAMESPACE, JOB, result.returncode, message, restart=False)
            assert result.returncode == 0, f"the trainer exited {result.returncode}: {message}\n{logs[-4000:]}"
            assert time.monotonic() - begin < 900

            def finished() -> dict | None:
                ftj = custom.get_namespaced_custom_object("kubetune.dev", "v1alpha1", NAMESPACE, "finetunejobs", JOB)
                return ftj if (ftj.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

            ftj = wait_for(finished, 60, "the FineTuneJob to finish")
        finally:
            sim.close()
        status = ftj["status"]
        assert status["phase"] == "Succeeded", status

        # Written by the trainer through the reporter's token, not by the operator.
        assert status["progress"]["step"] == status["progress"]["totalSteps"] == 4, status
        assert [c["step"] for c in status.get("checkpoints", [])] == [2, 4], status
        model_uri = status["output"]["modelUri"]
        assert model_uri.startswith(f"s3://{BUCKET}/runs/{NAMESPACE}/{JOB}/"), model_uri
        import boto3

        bucket, _, prefix = model_uri.removeprefix("s3://").partition("/")
        listing = boto3.client(
            "s3", endpoint_url=s3, aws_access_key_id="images", aws_secret_access_key="images", region_name="us-east-1"
        ).list_objects_v2(Bucket=bucket, Prefix=prefix)
        names = {item["Key"].rsplit("/", 1)[-1] for item in listing.get("Contents", [])}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names, names
        reporter_calls = [c for c in api.calls() if c.user == f"sa:{NAMESPACE}:{JOB}-reporter"]
        assert reporter_calls and all(c.resource == "finetunejobs/status" and c.name == JOB for c in reporter_calls)
    finally:
        logs = engine.cli("logs", "kubetune-test-operator", check=False)
        engine.cli("rm", "--force", "kubetune-test-operator", check=False)
        if trainer_name:
            engine.cli("rm", "--force", trainer_name, check=False)
        print((logs.stdout + logs.stderr).decode()[-2000:])
