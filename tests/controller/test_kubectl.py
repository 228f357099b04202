"""The real kubectl against the API emulator and the running operator: what the README tells a user to type.

kubectl reads what a real API server serves (aggregated discovery, OpenAPI v3 and v2, Tables with the CRD's
printer columns, fieldValidation) and talks to it over HTTPS with a bearer token, so these tests fail when the
emulator drifts from a real server in any of these, and when the CRD's columns or descriptions break.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from kubetune.api.crd import crd
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import wait_for
from kubetune_trainer.reporting import ProgressReport
from kubetune_trainer.status_reporter import StatusReporter

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

pytestmark = pytest.mark.skipif(
    not os.access(KUBECTL, os.X_OK), reason="kubectl is not installed (Debian: apt-get install kubernetes-client)"
)


class Kubectl:
    """kubectl with its own kubeconfig (the emulator's CA and an admin token), HOME and discovery cache."""

    def __init__(self, emulator, workdir: Path):
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(emulator.kubeconfig(ADMIN_TOKEN)))
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "KUBECONFIG": str(kubeconfig)}
        self.base = [KUBECTL, f"--cache-dir={workdir / 'cache'}"]
        version = json.loads(self("version", "--client", "-o", "json").stdout)["clientVersion"]
        # From 1.27 kubectl explains from OpenAPI v3 and leaves field validation to the server (fieldValidation);
        # older ones (Debian's kubernetes-client is 1.20) use OpenAPI v2 for both.
        self.minor = int(re.match(r"\d+", version["minor"])[0])

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.base + list(args), check=False, input=stdin, env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def watch(self, *args: str) -> tuple[subprocess.Popen, list[str]]:
        """Start `kubectl ... -w`; its lines are appended to the returned list as they arrive."""
        proc = subprocess.Popen(
            self.base + list(args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
        return proc, lines


@pytest.fixture(scope="module")
def kubectl(emulator, tmp_path_factory) -> Kubectl:
    return Kubectl(emulator, tmp_path_factory.mktemp("kubectl"))


def examples() -> list[dict]:
    return [
        doc
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def printer_columns() -> list[dict]:
    return crd()["spec"]["versions"][0]["additionalPrinterColumns"]


def table(text: str) -> list[dict[str, str]]:
    """kubectl's table output as rows of {HEADER: cell}, cut at the header's column offsets."""
    header, *rows = text.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    names = [header[s:e].strip() for s, e in zip(starts, starts[1:] + [None], strict=True)]
    return [
        {name: row[s:e].strip() for name, s, e in zip(names, starts, starts[1:] + [None], strict=True)} for row in rows
    ]


def test_apply_the_crd_and_every_example_then_get_explain_and_describe(kubectl, operator, emulator):
    manifests = examples()
    for namespace in sorted({m["metadata"]["namespace"] for m in manifests}):
        assert kubectl("create", "namespace", namespace).stdout.strip() == f"namespace/{namespace} created"

    applied = kubectl("apply", "-f", str(ROOT / "crds")).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/finetunejobs.kubetune.dev" in applied
    kubectl("wait", "--for=condition=Established", "--timeout=10s", "crd/finetunejobs.kubetune.dev")

    applied = kubectl("apply", "-f", str(ROOT / "examples")).stdout.splitlines()
    assert sorted(applied) == sorted(f"finetunejob.kubetune.dev/{m['metadata']['name']} created" for m in manifests)

    # The operator answers each with a phase; `get` shows the CRD's printer columns (priority 0 only).
    example_namespaces = {m["metadata"]["namespace"] for m in manifests}  # earlier tests' jobs live elsewhere

    def all_answered():
        rows = [r for r in table(kubectl("get", "ftj", "-A").stdout) if r["NAMESPACE"] in example_namespaces]
        return rows if len(rows) == len(manifests) and all(r["PHASE"] for r in rows) else None

    rows = wait_for(all_answered, 20, "a phase on every example")
    statuses = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o["status"]
        for o in emulator.objects("kubetune.dev", "finetunejobs")
    }
    assert all(r["PHASE"] == statuses[r["NAMESPACE"], r["NAME"]]["phase"] for r in rows)
    columns = printer_columns()
    assert list(rows[0]) == ["NAMESPACE", "NAME"] + [c["name"].upper() for c in columns if not c.get("priority")]
    by_name = {(r["NAMESPACE"], r["NAME"]): r for r in rows}
    for m in manifests:
        row = by_name[(m["metadata"]["namespace"], m["metadata"]["name"])]
        assert (row["TECHNIQUE"], row["OBJECTIVE"]) == (m["spec"]["technique"], m["spec"]["objective"])
        assert re.fullmatch(r"\d+s", row["AGE"]), row
    wide = table(kubectl("get", "ftj", "-A", "-o", "wide").stdout)
    assert list(wide[0]) == ["NAMESPACE", "NAME"] + [c["name"].upper() for c in columns]
    for r in wide:  # an integer column: the number, or <none> where the status has none
        assert r["ATTEMPTS"] == str(statuses[r["NAMESPACE"], r["NAME"]].get("attempts", "<none>")), r

    # Built-in kinds get the real server's columns too.
    namespaces = table(kubectl("get", "namespace", "team-a").stdout)
    assert namespaces[0]["NAME"] == "team-a" and namespaces[0]["STATUS"] == "Active"

    # explain reads the CRD's descriptions from OpenAPI v3, and from v2 (protobuf) when asked to.
    lora = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["lora"]
    for output in ("plaintext", "plaintext-openapiv2") if kubectl.minor >= 27 else ("",):
        text = " ".join(kubectl("explain", "ftj.spec.lora", *([f"--output={output}"] if output else [])).stdout.split())
        assert "KIND: FineTuneJob" in text and " ".join(lora["description"].split()) in text
        for field, schema in lora["properties"].items():
            assert f"{field} <{schema['type']}>" in text and " ".join(schema["description"].split()[:6]) in text

    # describe: the object and the operator's Events about it.
    described = kubectl("describe", "ftj", "support-bot", "-n", "team-a").stdout
    assert re.search(r"^Name:\s+support-bot$", described, re.MULTILINE) and re.search(r"Technique:\s+qlora", described)
    events = described.split("\nEvents:", 1)[1]
    assert re.search(r"Normal\s+JobCreated\s+\S+\s+kubetune-operator", events), events
    listed = table(
        kubectl("get", "events", "-n", "team-a", "--field-selector", "involvedObject.name=support-bot").stdout
    )
    assert [(e["TYPE"], e["REASON"], e["OBJECT"]) for e in listed] == [
        ("Normal", "JobCreated", "finetunejob/support-bot")
    ]


def test_unknown_fields_are_refused_by_apply_and_pruned_without_validation(kubectl, operator):
    kubectl("create", "namespace", "kubectl-typo")
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "typo", "namespace": "kubectl-typo"},
        "spec": {**examples()[0]["spec"], "lora": {"rank": 8, "rnak": 16}},
    }
    refused = kubectl("apply", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert refused.returncode == 1
    if kubectl.minor >= 27:  # refused by the server: fieldValidation=Strict
        assert 'strict decoding error: unknown field "spec.lora.rnak"' in refused.stderr
    else:  # refused by kubectl, from the OpenAPI v2 document
        assert 'unknown field "rnak" in dev.kubetune.v1alpha1.FineTuneJob.spec.lora' in refused.stderr

    created = kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(manifest))
    assert created.stdout.strip() == "finetunejob.kubetune.dev/typo created"
    lora = json.loads(kubectl("get", "ftj", "typo", "-n", "kubectl-typo", "-o", "jsonpath={.spec.lora}").stdout)
    assert lora == {"rank": 8}  # the API server prunes what the schema does not declare

    if kubectl.minor >= 27:  # fieldValidation=Warn: stored, pruned, and the server's Warning header printed
        manifest["metadata"]["name"] = "typo-warned"
        warned = kubectl("apply", "--validate=warn", "-f", "-", stdin=json.dumps(manifest))
        assert 'Warning: unknown field "spec.lora.rnak"' in warned.stderr


def test_get_watch_follows_a_job_through_its_life(kubectl, operator, sim, emulator):
    ns, name = "kubectl-watch", "watched"
    kubectl("create", "namespace", ns)
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "technique": "lora",
            "objective": "instruction",
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "datasets": [{"uri": "s3://data/support/train.jsonl", "format": "messages"}],
            "resources": {"gpus": 1},
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(manifest))
    watch, lines = kubectl.watch("get", "ftj", "-n", ns, "-w")  # a list, then the watch from its resourceVersion
    try:
        wait_for(lambda: any(" Pending " in f" {line} " for line in lines), 20, "a Pending row")
        sim.start(ns, name)
        wait_for(lambda: any(" Running " in f" {line} " for line in lines), 20, "a Running row")

        client = emulator.client_configuration(f"sa:{ns}:{name}-reporter")  # the trainer's identity
        import kubernetes

        reporter = StatusReporter(name, ns, interval_seconds=30, api_client=kubernetes.client.ApiClient(client))
        reporter.progress(ProgressReport(step=40, total_steps=80, epoch=1.0, eta_seconds=60, metrics={"loss": 1.25}))
        reporter.close()
        wait_for(
            lambda: any(re.search(r"\bRunning\s+50\s+1\.25\b", line) for line in lines),
            20,
            "a row with the progress and the loss",
        )
        sim.succeed(ns, name)
        wait_for(lambda: any(" Succeeded " in f" {line} " for line in lines), 20, "a Succeeded row")
    finally:
        watch.terminate()
        watch.wait(10)
    header, rows = lines[0], [line for line in lines[1:] if line.startswith(name)]
    assert header.split() == ["NAME"] + [c["name"].upper() for c in printer_columns() if not c.get("priority")]
    phases = [p for p in (re.search(r"\b(Pending|Running|Succeeded)\b", r) for r in rows) if p]
    seen = [p[1] for i, p in enumerate(phases) if i == 0 or phases[i - 1][1] != p[1]]
    assert seen == ["Pending", "Running", "Succeeded"], rows
    assert re.search(r"\bSucceeded\s+50\s+1\.25\b", rows[-1]), rows[-1]


def test_a_crd_applied_with_kubectl_is_served_until_it_is_deleted(kubectl, emulator):
    widgets = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.test"},
        "spec": {
            "group": "example.test",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                        }
                    },
                }
            ],
        },
    }
    assert "the server doesn't have a resource type" in kubectl("get", "wdg", check=False).stderr
    kubectl("apply", "-f", "-", stdin=json.dumps(widgets))
    kubectl("wait", "--for=condition=Established", "--timeout=10s", "crd/widgets.example.test")
    kubectl("create", "namespace", "kubectl-widgets")
    widget = {
        "apiVersion": "example.test/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "kubectl-widgets"},
        "spec": {"size": 3},
    }
    assert kubectl("apply", "-f", "-", stdin=json.dumps(widget)).stdout.strip() == "widget.example.test/w1 created"
    rows = table(kubectl("get", "wdg", "-n", "kubectl-widgets").stdout)
    assert list(rows[0]) == ["NAME", "AGE"] and rows[0]["NAME"] == "w1"  # no printer columns: Name and Age

    # Discovery as a real server has it: short names on the resource only, the core group version is "v1".
    listed = json.loads(kubectl("get", "--raw", "/apis/example.test/v1").stdout)
    assert [(r["name"], r.get("shortNames")) for r in listed["resources"]] == [
        ("widgets", ["wdg"]),
        ("widgets/status", None),
    ]
    assert json.loads(kubectl("get", "--raw", "/api/v1").stdout)["groupVersion"] == "v1"

    kubectl("delete", "crd", "widgets.example.test")
    # Its objects go with it; its API is gone (kubectl's cached discovery still knows the name: NotFound).
    assert emulator.objects("example.test", "widgets") == []
    assert "NotFound" in kubectl("get", "--raw", "/apis/example.test/v1", check=False).stderr
    gone = kubectl("get", "wdg", "-n", "kubectl-widgets", check=False)
    assert gone.returncode == 1 and "the server could not find the requested resource" in gone.stderr
