"""FineTuneJobs as a user meets them, made with the operator's and the trainer's own code: the child Job from
controller.builders (its pod labels), the operator's status from controller.status.compute (conditions, reasons,
messages, Events), the trainer's part of status in its wire form, and outputs written where the operator tells the
trainer to write them (builders.output_root + the trainer's OutputLayout, through the trainer's storage code)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp.web
import boto3
import yaml

from kubetune.api.constants import API_VERSION, KIND, Phase, Reason
from kubetune.api.uris import join_uri
from kubetune.controller import builders
from kubetune.controller import status as operator_status
from kubetune.controller.config import OperatorConfig
from kubetune_trainer.layout import COMPLETE_MARKER, OutputLayout

CONFIG = OperatorConfig(
    trainer_image="registry.example/kubetune-trainer:test",
    default_output_uri="s3://unused/",
    report_interval_seconds=7,
    grace_seconds=90,
)
ACCESS_KEY, SECRET_KEY = "user-key", "user-secret"


class Kubelet:
    """The kubelet's `pods/log`, which the emulator does not serve: GET /api/v1/namespaces/NS/pods/POD/log
    answers the lines a test wrote for that pod; with follow=true it streams them as they are written until the
    trainer container has terminated (the state a test writes through the API), as a kubelet does. A container
    still waiting gets the API server's 400 "is waiting to start". Installed in front of the emulator's request
    handler (its public entry point, `__call__`)."""

    PATH = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<pod>[^/]+)/log$")

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str], list[str]] = {}
        self.lock = threading.Lock()
        self.requests: list[dict] = []

    @classmethod
    def install(cls) -> Kubelet:
        from kubetune.testing.emulator import ApiServer

        kubelet = cls()
        kubelet.original = ApiServer.__call__

        async def handle(server, request):
            match = cls.PATH.match(request.path)
            if match is None or request.method != "GET":
                return await kubelet.original(server, request)
            return await kubelet.serve(server, request, match["namespace"], match["pod"])

        ApiServer.__call__ = handle
        return kubelet

    def uninstall(self) -> None:
        from kubetune.testing.emulator import ApiServer

        ApiServer.__call__ = self.original

    def write(self, namespace: str, pod: str, *lines: str) -> None:
        with self.lock:
            self.lines.setdefault((namespace, pod), []).extend(lines)

    def _snapshot(self, namespace: str, pod: str, start: int) -> list[str]:
        with self.lock:
            return list(self.lines.get((namespace, pod), [])[start:])

    @staticmethod
    def _container_state(server, namespace: str, pod: str) -> dict | None:
        obj = server.store.get(("", "pods"), {}).get((namespace, pod))
        if obj is None:
            return None
        for status in (obj.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") == builders.TRAINER_CONTAINER:
                return status.get("state") or {}
        return {"waiting": {"reason": "ContainerCreating"}}

    async def serve(self, server, request, namespace: str, pod: str):
        self.requests.append({"namespace": namespace, "pod": pod, **dict(request.query)})
        if not request.headers.get("Authorization", "").lower().startswith("bearer "):
            return server._status_response(401, "Unauthorized", "Unauthorized")
        state = self._container_state(server, namespace, pod)
        if state is None:
            return server._status_response(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
        if "waiting" in state:
            reason = state["waiting"].get("reason")
            return server._status_response(
                400, "BadRequest", f'container "trainer" in pod "{pod}" is waiting to start: {reason}'
            )
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        follow = request.query.get("follow") in ("true", "1")
        try:
            while True:
                new = self._snapshot(namespace, pod, sent)
                for line in new:
                    await response.write(line.encode() + b"\n")
                sent += len(new)
                if not follow:
                    break
                state = self._container_state(server, namespace, pod)
                if (state is None or "terminated" in state) and not self._snapshot(namespace, pod, sent):
                    break
                await asyncio.sleep(0.05)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response


class World:
    """One test's namespace, bucket and credentials on the shared emulator and S3 endpoint."""

    def __init__(self, emulator, sim, s3_url: str, tmp_path: Path, namespace: str):
        self.emulator = emulator
        self.sim = sim
        self.kube = sim.kube
        self.s3_url = s3_url
        self.tmp_path = tmp_path
        self.namespace = namespace
        self.bucket = f"out-{namespace}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        self.s3.create_bucket(Bucket=self.bucket)

    # ------------------------------------------------------------------------------------ access

    def kubeconfig(self, token: str, namespace: str | None = None, name: str = "kubeconfig") -> Path:
        config = self.emulator.kubeconfig(token)
        config["contexts"][0]["context"]["namespace"] = namespace or self.namespace
        path = self.tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    def s3_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def create_namespace(self, name: str) -> None:
        import kubernetes

        from kubetune.testing.emulator import ADMIN_TOKEN

        api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(self.emulator.client_configuration(ADMIN_TOKEN)))
        api.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def grant_viewer(self, namespace: str, account: str) -> str:
        """A Role to read FineTuneJobs, their Events and pods (and pod logs) in `namespace`, bound to the service
        account `account` there; its token (the emulator's service-account tokens are "sa:NS:NAME")."""
        self.kube.create(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "ftj-viewer", "namespace": namespace},
                "rules": [
                    {"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["events", "pods", "pods/log"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
                ],
            }
        )
        self.kube.create(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "ftj-viewer", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ftj-viewer"},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            }
        )
        return f"sa:{namespace}:{account}"

    # ------------------------------------------------------------------------------------ jobs

    def spec(self, **changes: Any) -> dict:
        spec = {
            "technique": "lora",
            "objective": "causal-lm",
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "datasets": [
                {
                    "name": "stories",
                    "uri": f"s3://{self.bucket}/data/train.jsonl",
                    "format": "text",
                    "evalFraction": 0.05,
                }
            ],
            "hyperparameters": {"maxSteps": 300, "batchSize": 8},
            "evaluation": {"everySteps": 50},
            "output": {"uri": f"s3://{self.bucket}/runs/", "endpoint": self.s3_url, "checkpointEverySteps": 100},
            "resources": {"gpus": 1},
        }
        spec.update(changes)
        return spec

    def create_job(self, name: str, namespace: str | None = None, **spec_changes: Any) -> dict:
        namespace = namespace or self.namespace
        return self.kube.create(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": name, "namespace": namespace},
                "spec": self.spec(**spec_changes),
            }
        )

    def get(self, ftj: dict) -> dict:
        return self.kube.get(KIND, ftj["metadata"]["namespace"], ftj["metadata"]["name"])

    def operator_status(self, ftj: dict, phase: Phase, reason: Reason, message: str = "", attempts: int = 1) -> dict:
        """What the operator writes for an observation (its own status.compute), with the Events it posts."""
        ftj = self.get(ftj)
        observed = operator_status.Observed(
            phase,
            reason,
            message,
            attempts,
            operator_status.now_rfc3339() if phase in (Phase.SUCCEEDED, Phase.FAILED) else None,
        )
        outcome = operator_status.compute(ftj, observed, ftj["metadata"]["name"], operator_status.now_rfc3339())
        patch = operator_status.status_patch(ftj.get("status") or {}, outcome.status)
        updated = self.kube.patch(
            KIND, ftj["metadata"]["namespace"], ftj["metadata"]["name"], {"status": patch}, subresource="status"
        )
        for event in outcome.events:
            self.post_event(ftj, event.type, event.reason, event.message)
        return updated

    def trainer_status(
        self,
        ftj: dict,
        *,
        step: int,
        total: int = 300,
        loss: float | None = None,
        eval_loss: float | None = None,
        eta: int | None = None,
        checkpoints: list[dict] | None = None,
        output: bool = False,
    ) -> dict:
        """What the trainer's reporter writes (status.progress, metrics, checkpoints, output), in wire form."""
        ftj = self.get(ftj)
        status: dict[str, Any] = {
            "progress": {
                "step": step,
                "totalSteps": total,
                "epoch": round(step / 100, 2),
                "percent": int(100 * step / total),
                "etaSeconds": eta,
            }
        }
        metrics = {k: v for k, v in (("loss", loss), ("evalLoss", eval_loss)) if v is not None}
        if metrics:
            status["metrics"] = metrics
        if checkpoints is not None:
            status["checkpoints"] = checkpoints
        if output:
            layout = self.layout(ftj)
            status["output"] = {
                "modelUri": layout.final_uri,
                "metricsUri": layout.metrics_uri,
                "tensorboardUri": layout.tensorboard_uri,
                "checkpointsUri": layout.checkpoints_uri,
            }
        return self.kube.patch(
            KIND, ftj["metadata"]["namespace"], ftj["metadata"]["name"], {"status": status}, subresource="status"
        )

    def post_event(self, ftj: dict, kind: str, reason: str, message: str) -> dict:
        """An Event about the job, in the form the operator posts it (controller/reconciler.py `event`)."""
        meta = ftj["metadata"]
        now = operator_status.now_rfc3339()
        return self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "type": kind,
                "reason": str(reason),
                "message": message,
                "source": {"component": "kubetune-operator"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )

    def start_child_job(self, ftj: dict, running: bool = True) -> list[dict]:
        """The operator's child Job (controller.builders), and its first pod as the Job controller makes it."""
        ftj = self.get(ftj)
        spec = builders.resolve_spec(ftj["spec"], CONFIG, ftj["metadata"]["name"])
        self.kube.create(builders.build_job(ftj, spec, CONFIG, suspend=False))
        return self.sim.start(ftj["metadata"]["namespace"], ftj["metadata"]["name"], running=running)

    # ------------------------------------------------------------------------------------ outputs

    def layout(self, ftj: dict) -> OutputLayout:
        ftj = self.get(ftj)
        meta = ftj["metadata"]
        spec = builders.resolve_spec(ftj["spec"], CONFIG, meta["name"])
        return OutputLayout(builders.output_root(spec, meta["namespace"], meta["name"], meta["uid"]))

    def _key(self, uri: str) -> str:
        assert uri.startswith(f"s3://{self.bucket}/"), uri
        return uri[len(f"s3://{self.bucket}/") :]

    def write_metrics(self, ftj: dict, records: list[dict]) -> str:
        uri = self.layout(ftj).metrics_uri
        self.s3.put_object(
            Bucket=self.bucket, Key=self._key(uri), Body="".join(json.dumps(r) + "\n" for r in records).encode()
        )
        return uri

    def write_final(self, ftj: dict, files: dict[str, bytes], complete: bool = True) -> str:
        final = self.layout(ftj).final_uri
        for relative, data in files.items():
            self.s3.put_object(Bucket=self.bucket, Key=self._key(join_uri(final, relative)), Body=data)
        if complete:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(join_uri(final, COMPLETE_MARKER)), Body=b"")
        return final


def training_records(
    steps: int, *, every: int = 10, eval_every: int = 50, start: float = 3.0, floor: float = 1.0, seed: int = 0
) -> list[dict]:
    """metrics.jsonl records as the trainer's MetricsCallback writes them: a train record every `every` steps, an
    eval record every `eval_every`."""
    import math
    import random

    rng = random.Random(seed)
    records = []
    for step in range(every, steps + 1, every):
        loss = floor + (start - floor) * math.exp(-step / 80) + rng.uniform(-0.05, 0.05)
        records.append(
            {
                "step": step,
                "epoch": round(step / 100, 4),
                "loss": round(loss, 4),
                "grad_norm": round(rng.uniform(0.5, 2), 3),
                "learning_rate": 2e-4 * (1 - step / 400),
                "tokens_per_second": 24000.0 + rng.uniform(-500, 500),
            }
        )
        if step % eval_every == 0:
            records.append(
                {
                    "step": step,
                    "epoch": round(step / 100, 4),
                    "eval_loss": round(loss + 0.12, 4),
                    "eval_runtime": 1.5,
                    "eval_samples_per_second": 40.0,
                }
            )
    return records


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
