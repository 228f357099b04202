"""A short, real transcript for the docs: the API emulator + the operator, one FineTuneJob driven through
its phases (the Job controller and kubelet played by kubetune.testing.harness.ClusterSim, Kueue by
kubetune.testing.kueuesim.KueueSim, progress patched by the trainer's real StatusReporter), printing `status` as
YAML at each phase.

    python tests/controller/transcript.py
"""

from __future__ import annotations

import logging

import kubernetes
import yaml

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.controller.config import OperatorConfig
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import ClusterSim, OperatorThread, start_emulator, wait_for
from kubetune.testing.kueuesim import KueueSim
from kubetune_trainer.reporting import CheckpointReport, OutputReport, ProgressReport
from kubetune_trainer.status_reporter import StatusReporter

NS, NAME = "team-a", "support-bot"
MANIFEST = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "FineTuneJob",
    "metadata": {"name": NAME, "namespace": NS},
    "spec": {
        "technique": "qlora",
        "objective": "instruction",
        "queueName": "gpu-queue",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "credentialsSecret": "hf-token"},
        "datasets": [{"name": "support", "uri": "s3://data/support/train.jsonl", "format": "messages"}],
        "output": {"uri": "s3://kubetune/", "credentialsSecret": "s3-credentials"},
    },
}


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    emulator = start_emulator()
    operator = OperatorThread(emulator, OperatorConfig(metrics_port=0, resync_seconds=2)).start()
    admin = kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN))
    api = kubernetes.client.CustomObjectsApi(admin)
    sim = ClusterSim(emulator)
    kueue = KueueSim(emulator, namespaces={NS}).install()
    kueue.local_queue(NS, "gpu-queue", capacity=0)
    get = lambda: api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME).get("status") or {}  # noqa: E731

    def show(title: str, phase: str) -> None:
        status = wait_for(lambda: get() if get().get("phase") == phase else None, 20, phase)
        print(f"# --- {title}\n# kubectl get ftj {NAME} -n {NS} -o yaml | yq .status")
        print(yaml.safe_dump({"status": status}, sort_keys=False, width=120))

    try:
        print(f"# kubectl apply -f {NAME}.yaml   (spec.queueName: gpu-queue)\n")
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, MANIFEST)
        show("queued: the Job exists, suspended, labelled for Kueue", "Queued")
        kueue.capacity[(NS, "gpu-queue")] = 1  # quota frees up: Kueue admits the Workload and unsuspends the Job
        wait_for(lambda: not sim.job(NS, NAME)["spec"]["suspend"], 20, "admission")
        sim.start(NS, NAME)
        uid = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)["metadata"]["uid"]
        root = f"s3://kubetune/{NS}/{NAME}/{uid}/"
        reporter = StatusReporter(
            NAME,
            NS,
            interval_seconds=0,
            api_client=kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{NS}:{NAME}-reporter")),
        )
        reporter.progress(
            ProgressReport(
                step=1200,
                total_steps=3000,
                epoch=1.2,
                eta_seconds=1800,
                metrics={"loss": 0.91, "evalLoss": 1.02, "learningRate": 1.5e-4},
            )
        )
        reporter.checkpoints([CheckpointReport(1200, f"{root}checkpoints/step-1200/", "2026-11-26T04:10:00Z", 1.02)])
        reporter.close()
        show("admitted by Kueue, training, progress reported by the trainer", "Running")
        sim.fail(NS, NAME, 20, "S3 upload of checkpoint step-1400 failed: connection reset", restart=False)
        show("an infrastructure failure: the Job controller will retry", "Pending")
        sim.start(NS, NAME)
        show("attempt 2 resumes from checkpoint step-1200", "Running")
        reporter = StatusReporter(
            NAME,
            NS,
            interval_seconds=0,
            api_client=kubernetes.client.ApiClient(emulator.client_configuration(f"sa:{NS}:{NAME}-reporter")),
        )
        reporter.progress(
            ProgressReport(
                step=3000, total_steps=3000, epoch=3.0, eta_seconds=0, metrics={"loss": 0.62, "evalLoss": 0.88}
            )
        )
        reporter.output(
            OutputReport(f"{root}final/", f"{root}metrics.jsonl", f"{root}tensorboard/", f"{root}checkpoints/")
        )
        reporter.close()
        sim.succeed(NS, NAME)
        show("finished", "Succeeded")
        events = kubernetes.client.CoreV1Api(admin).list_namespaced_event(NS).items
        print(f"# kubectl describe ftj {NAME} -n {NS}   (Events)")
        for event in sorted(events, key=lambda e: int(e.metadata.resource_version)):
            print(f"#   {event.type:<8} {event.reason:<18} {event.message}")
    finally:
        kueue.uninstall()
        sim.close()
        operator.stop()
        emulator.stop()


if __name__ == "__main__":
    main()
