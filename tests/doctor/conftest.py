"""`kubetune doctor` against the project's test API server (HTTPS, a kubeconfig, RBAC for service-account tokens)
and a real HTTP S3 endpoint (moto), the way a user reaches a cluster and a bucket."""

from __future__ import annotations

import base64
import copy
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from kubetune.api.constants import API_VERSION, KIND
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import BlockingKube, start_emulator
from kubetune.testing.kueuesim import CRDS as KUEUE_CRDS

ACCESS_KEY, SECRET_KEY = "user-key", "user-secret"
SECRET_VALUE = "the-value-nobody-may-print"
OPERATOR_NAMESPACE = "kubetune-system"


@pytest.fixture(scope="session")
def s3_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class World:
    """One cluster (a fresh test API server) and the shared S3 endpoint, as the user's kubeconfig and AWS keys see
    them; objects are made by the admin."""

    def __init__(self, emulator, s3_url: str, tmp_path: Path):
        self.emulator = emulator
        self.s3_url = s3_url
        self.tmp_path = tmp_path
        self.kube = BlockingKube(emulator.client_configuration(ADMIN_TOKEN))
        self.s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        self.kubeconfig = self.write_kubeconfig(ADMIN_TOKEN)

    def write_kubeconfig(self, token: str, server: str | None = None) -> Path:
        config = self.emulator.kubeconfig(token)
        if server:
            config["clusters"][0]["cluster"]["server"] = server
        path = self.tmp_path / f"kubeconfig-{token.replace(':', '-')}"
        path.write_text(yaml.safe_dump(config))
        return path

    # ------------------------------------------------------------------------------------------- objects

    def create(self, path: str, body: dict) -> dict:
        return self.kube.request("POST", path, body=body)

    def namespace(self, name: str) -> None:
        self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def secret(self, namespace: str, name: str, keys: tuple[str, ...]) -> None:
        self.create(
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name},
                "type": "Opaque",
                "data": {key: base64.b64encode(SECRET_VALUE.encode()).decode() for key in keys},
            },
        )

    def config_map(self, namespace: str, name: str) -> None:
        self.create(
            f"/api/v1/namespaces/{namespace}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"ca.crt": "x"}},
        )

    def claim(self, namespace: str, name: str) -> None:
        self.create(
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )

    def priority_class(self, name: str) -> None:
        self.create(
            "/apis/scheduling.k8s.io/v1/priorityclasses",
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": 100},
        )

    def install_kueue(self) -> None:
        for crd in KUEUE_CRDS:
            self.emulator.register_crd(copy.deepcopy(crd))

    def local_queue(self, namespace: str, name: str, active: bool = True) -> None:
        group, version = KUEUE_CRDS[0]["spec"]["group"], KUEUE_CRDS[0]["spec"]["versions"][0]["name"]
        path = f"/apis/{group}/{version}/namespaces/{namespace}/localqueues"
        self.create(
            path,
            {
                "apiVersion": f"{group}/{version}",
                "kind": "LocalQueue",
                "metadata": {"name": name},
                "spec": {"clusterQueue": "cluster-queue"},
            },
        )
        if not active:
            self.kube.request(
                "PATCH",
                f"{path}/{name}/status",
                content_type="application/merge-patch+json",
                body={
                    "status": {
                        "conditions": [
                            {
                                "type": "Active",
                                "status": "False",
                                "reason": "ClusterQueueDoesNotExist",
                                "message": "Can't submit new workloads to clusterQueue",
                            }
                        ]
                    }
                },
            )

    def operator(self, values: dict, available: int = 1, waiting: str | None = None) -> dict:
        """The chart's own operator Deployment for `values`, running (or not) as its status says."""
        from tests.charts.test_chart import by_kind, render

        docs = render(values)
        (deployment,) = by_kind(docs, "Deployment")
        self.namespace(OPERATOR_NAMESPACE)
        for account in by_kind(docs, "ServiceAccount"):  # the operator's pod runs as it (admission wants it there)
            self.create(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/serviceaccounts", account)
        path = f"/apis/apps/v1/namespaces/{OPERATOR_NAMESPACE}/deployments"
        created = self.create(path, deployment)
        self.kube.request(
            "PATCH",
            f"{path}/{created['metadata']['name']}/status",
            content_type="application/merge-patch+json",
            body={"status": {"replicas": 1, "availableReplicas": available, "readyReplicas": available}},
        )
        if waiting:
            labels = deployment["spec"]["selector"]["matchLabels"]
            pod = self.create(
                f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "kubetune-7d9f-x2x4z", "labels": labels},
                    "spec": deployment["spec"]["template"]["spec"],
                },
            )
            self.kube.request(
                "PATCH",
                f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{pod['metadata']['name']}/status",
                content_type="application/merge-patch+json",
                body={
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [
                            {
                                "name": "operator",
                                "ready": False,
                                "restartCount": 4,
                                "image": "x",
                                "imageID": "",
                                "state": {"waiting": {"reason": waiting, "message": "back-off 40s"}},
                            }
                        ],
                    }
                },
            )
        return deployment

    # ------------------------------------------------------------------------------------------- storage

    def bucket(self, name: str) -> None:
        try:
            self.s3.create_bucket(Bucket=name)
        except self.s3.exceptions.BucketAlreadyOwnedByYou:
            pass

    def put(self, uri: str, body: str = "{}\n") -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self.bucket(bucket)
        self.s3.put_object(Bucket=bucket, Key=key, Body=body.encode())

    def keys(self, bucket: str) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]

    # ------------------------------------------------------------------------------------------- the manifest

    def manifest(self, spec: dict, name: str = "support-bot", namespace: str | None = "team-a") -> Path:
        metadata = {"name": name} | ({"namespace": namespace} if namespace else {})
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}))
        return path


@pytest.fixture
def world(s3_url, tmp_path, monkeypatch):
    # Every test starts with an empty store (moto's own reset endpoint) and a cluster of its own.
    urllib.request.urlopen(urllib.request.Request(f"{s3_url}/moto-api/reset", method="POST"), timeout=10).close()
    emulator = start_emulator()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for variable in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "KUBECONFIG"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KUBETUNE_S3_MAX_ATTEMPTS", "1")
    # No test reaches the Hugging Face Hub: its address is a closed port here.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    world = World(emulator, s3_url, tmp_path)
    yield world
    world.kube.close()
    emulator.stop()
