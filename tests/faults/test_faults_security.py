"""Security: a canary secret placed in every credentials Secret of a full run (operator against the
emulator creates the Job; the trainer runs with the env that Job's pod would get, the secretKeyRefs
resolved from the Secrets in the emulator, against moto S3) is never found in logs, Events, status,
ConfigMaps, the Job, the termination message or any object written to S3 — for a good run, a run with
bad data and a run whose S3 calls fail. Pod specs of every example are locked down and namespace-local,
and the operator never touches a Secret."""

from __future__ import annotations

import base64
import glob
import json
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest
import yaml
from faultlib import s3_client
from operatorlib import OperatorProcess
from trainerlib import manifest

from kubetune.api.constants import GROUP, PLURAL, VERSION
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import wait_for

CANARY_KEY_ID = "AKIACANARY7Q2X9Z"
CANARY_SECRET = "canary-secret-9f3c1e7a2b"
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _pod_env(job: dict, secrets: dict[str, dict[str, str]], scratch: Path) -> dict[str, str]:
    """The trainer container's environment as the kubelet would build it."""
    env = {}
    for var in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"])
            if value is not None:
                env[var["name"]] = value
    env.update(
        HOME=str(scratch),
        TMPDIR=str(scratch),
        HF_HOME=str(scratch / "hf"),
        KUBETUNE_TERMINATION_LOG=str(scratch / "termination-log"),
    )
    return env


def test_canary_secret_never_leaks(api, moto_url, tiny_model, corpus, tmp_path, ledger):
    ns = "fault-canary"
    admin = kubernetes.client.ApiClient(api.client_configuration(ADMIN_TOKEN))
    core, crd = kubernetes.client.CoreV1Api(admin), kubernetes.client.CustomObjectsApi(admin)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    secret_data = {
        "AWS_ACCESS_KEY_ID": CANARY_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": CANARY_SECRET,
        "AWS_SESSION_TOKEN": CANARY_SECRET + "-session",
        "HF_TOKEN": "hf_" + CANARY_SECRET,
    }
    for name in ("output-creds", "data-creds"):
        core.create_namespaced_secret(
            ns,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret_data.items()},
            },
        )
    s3 = s3_client(moto_url)
    s3.create_bucket(Bucket="canary-out")
    s3.create_bucket(Bucket="canary-data")
    s3.put_object(Bucket="canary-data", Key="train.jsonl", Body=corpus.read_bytes())
    s3.put_object(Bucket="canary-data", Key="bad.jsonl", Body=b'{"text": "ok"}\n{"text": 1}\n')

    def spec(name, data_key, output="s3://canary-out/runs/"):
        doc = manifest(tiny_model, corpus, name=name)
        doc["spec"]["hyperparameters"]["maxSteps"] = 4
        doc["spec"]["datasets"] = [
            {
                "name": "corpus",
                "uri": f"s3://canary-data/{data_key}",
                "format": "text",
                "credentialsSecret": "data-creds",
            }
        ]
        doc["spec"]["output"] = {
            "uri": output,
            "credentialsSecret": "output-creds",
            "endpoint": moto_url,
            "checkpointEverySteps": 2,
        }
        doc["metadata"]["namespace"] = ns
        return doc

    runs = {
        "good": spec("good", "train.jsonl"),
        "bad-data": spec("bad-data", "bad.jsonl"),
        "s3-error": spec("s3-error", "train.jsonl", output="s3://no-such-canary-bucket/runs/"),
    }
    operator = OperatorProcess(api, tmp_path).start()
    texts: dict[str, str] = {}
    codes = {}
    try:
        for doc in runs.values():
            crd.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
        secrets = {
            s.metadata.name: {k: base64.b64decode(v).decode() for k, v in (s.data or {}).items()}
            for s in core.list_namespaced_secret(ns).items
        }
        for name in runs:
            job = wait_for(
                lambda name=name: (
                    api.objects("batch", "jobs", ns)
                    and next((j for j in api.objects("batch", "jobs", ns) if j["metadata"]["name"] == name), None)
                ),
                30,
                f"Job {name}",
            )
            scratch = tmp_path / name
            scratch.mkdir()
            spec_file = scratch / "job.yaml"  # what the pod's downward API volume holds: its spec annotation
            spec_file.write_text(job["spec"]["template"]["metadata"]["annotations"]["kubetune.dev/spec"])
            command = job["spec"]["template"]["spec"]["containers"][0]["command"]
            command = [
                sys.executable if c == "python" else str(spec_file) if c.startswith("/etc/kubetune") else c
                for c in command
            ]
            env = _pod_env(job, secrets, scratch)
            env.update(
                PATH="/usr/bin:/bin",
                OMP_NUM_THREADS="1",
                HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1",
                KUBETUNE_S3_MAX_ATTEMPTS="2",
            )
            assert env.get("KUBETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY") == CANARY_SECRET  # the pod gets the secret
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            codes[name] = proc.returncode
            texts[f"{name}: trainer stdout+stderr"] = proc.stdout + proc.stderr
            term = scratch / "termination-log"
            texts[f"{name}: termination message"] = term.read_text() if term.exists() else ""
            # The kubelet's view: the pod ends with that exit code and message; the operator records it.
        assert codes == {"good": 0, "bad-data": 10, "s3-error": 10}, (codes, {k: v[-2000:] for k, v in texts.items()})
    finally:
        operator.stop()
    texts["operator log"] = operator.output()
    texts["events"] = json.dumps(api.objects("", "events", ns))
    texts["finetunejobs (status)"] = json.dumps(api.objects(GROUP, PLURAL, ns))
    texts["configmaps"] = json.dumps(api.objects("", "configmaps", ns))
    texts["jobs"] = json.dumps(api.objects("batch", "jobs", ns))
    objects = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="canary-out"):
        for obj in page.get("Contents", []):
            objects += 1
            texts[f"s3://canary-out/{obj['Key']}"] = (
                s3.get_object(Bucket="canary-out", Key=obj["Key"])["Body"].read().decode("latin-1")
            )
    assert objects > 10 and "s3-error: termination message" in texts
    canaries = [CANARY_KEY_ID, CANARY_SECRET]
    hits = [(where, c) for where, text in texts.items() for c in canaries if c in text]
    assert hits == [], hits
    # Each place really held the run's text (the search is not over empty strings).
    assert "UserError" in texts["bad-data: termination message"] and "line 2" in texts["bad-data: termination message"]
    assert "no-such-canary-bucket" in texts["s3-error: termination message"]
    assert any(k.endswith("final/model.safetensors") for k in texts)
    calls = api.calls("operator")
    secret_calls = [c for c in calls if c.resource.startswith("secrets")]
    # Referenced by name, never read, listed or copied: the one Secret call is the create of a reporter's token Secret
    # (made once a job's pods exist; these jobs ran without pod objects: only other tests' jobs have one).
    assert {c.verb for c in secret_calls} <= {"create"}, secret_calls
    assert sorted(s["metadata"]["name"] for s in api.objects("", "secrets", ns)) == ["data-creds", "output-creds"]
    ledger.record(
        "security: canary in every credentials Secret",
        faults=3,
        runs=3,
        survived=1,
        leaks=len(hits),
        note=f"searched {len(texts)} places ({objects} S3 objects); operator Secret calls: {len(secret_calls)}",
    )


def _examples():
    for path in sorted(glob.glob(str(ROOT / "examples" / "*.yaml"))):
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "FineTuneJob":
                yield Path(path).name, doc


def test_every_example_pod_is_locked_down_and_namespace_local(ledger):
    from kubetune.controller import builders
    from kubetune.controller.config import OperatorConfig

    config = OperatorConfig(trainer_image="img", default_output_uri="s3://out/")
    checked = 0
    for i, (name, doc) in enumerate(_examples()):
        for nodes in (1, 2):
            ns = f"team-{i}"
            ftj = {**doc, "metadata": {"name": f"job-{i}", "namespace": ns, "uid": f"uid-{i}", "generation": 1}}
            ftj["spec"] = {**doc["spec"], "nodes": nodes}
            try:
                spec = builders.resolve_spec(ftj["spec"], config)
            except Exception:  # noqa: BLE001 - an example not valid with nodes=2 is not a pod to check
                continue
            job = builders.build_job(ftj, spec, config, suspend=False, held_by_namespace_limit=False)
            objects = [job, *builders.build_support_objects(ftj, spec)]
            assert all(o["metadata"]["namespace"] == ns for o in objects), name
            pod = job["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
                "type": "RuntimeDefault"
            }
            assert (
                pod["automountServiceAccountToken"] is False and not pod.get("hostNetwork") and not pod.get("hostPID")
            )
            containers = pod["containers"] + pod.get("initContainers", [])
            mounts = {m["mountPath"]: m for c in containers for m in c.get("volumeMounts", [])}
            for c in containers:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] and not sc.get("privileged")
            token_users = [
                c["name"] for c in containers if any(m["name"] == "reporter-token" for m in c.get("volumeMounts", []))
            ]
            assert token_users == ["trainer"], token_users
            volumes = {v["name"]: v for v in pod["volumes"]}
            declared = {v.name: v for v in (spec.pod.volumes if spec.pod is not None else [])}
            writable = [p for p, m in mounts.items() if not m.get("readOnly")]
            # scratch and /dev/shm, and the claims spec.pod.volumes made writable
            assert all(
                "emptyDir" in volumes[mounts[p]["name"]] or not declared[mounts[p]["name"]].read_only for p in writable
            ), writable
            for v in volumes.values():
                if v["name"] in declared:  # the job's own: a claim, ConfigMap or Secret of its namespace, by name
                    assert set(v) - {"name"} <= {"persistentVolumeClaim", "configMap", "secret"}, v
                    continue
                assert set(v) & {"downwardAPI", "emptyDir", "projected"}, v  # no hostPath, PVC, secret volumes
                if "downwardAPI" in v:  # the pod's own spec annotation, nothing else
                    assert [i["fieldRef"]["fieldPath"] for i in v["downwardAPI"]["items"]] == [
                        f"metadata.annotations['{builders.ANNOTATION_SPEC}']"
                    ]
                for source in v.get("projected", {}).get("sources", []):
                    assert set(source) <= {"serviceAccountToken", "configMap", "downwardAPI", "secret"}
                    if "secret" in source:  # the reporter's token, from its own token Secret, and nothing else of it
                        assert source["secret"]["name"] == builders.reporter_token_name(ftj)
                        assert source["secret"]["items"] == [{"key": "token", "path": "token"}]
            refs = [
                e["valueFrom"]["secretKeyRef"]
                for c in containers
                for e in c["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert all(set(r) <= {"name", "key", "optional"} for r in refs)  # a name only: this namespace's Secret
            role = next(o for o in objects if o["kind"] == "Role")
            assert role["rules"] == [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{PLURAL}/status"],
                    "resourceNames": [ftj["metadata"]["name"]],
                    "verbs": role["rules"][0]["verbs"],
                }
            ]
            assert set(role["rules"][0]["verbs"]) <= {"get", "patch"}
            binding = next(o for o in objects if o["kind"] == "RoleBinding")
            assert all(s.get("namespace") == ns for s in binding["subjects"])
            checked += 1
    assert checked >= 10
    ledger.record(
        "security: pod specs of every example x nodes",
        runs=checked,
        survived=checked,
        note="nonroot, no escalation, caps dropped, seccomp, RO root, token in trainer only",
    )
