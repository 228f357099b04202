"""`kubetune status|logs|metrics|compare|download` as a user runs them: a kubeconfig (the emulator's, over HTTPS),
AWS keys for the S3 output (moto), and jobs whose status, Events, child Job, pods and outputs come from the
operator's and the trainer's own code (tests/usercli/jobs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest

from kubetune.api.constants import Phase, Reason
from kubetune.cli import main
from tests.usercli.jobs import training_records, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("kubetune: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def running_job(world, name: str = "bot"):
    ftj = world.create_job(name)
    world.operator_status(ftj, Phase.RUNNING, Reason.PODS_RUNNING)
    layout = world.layout(ftj)
    checkpoints = [
        {"step": 100, "uri": layout.checkpoint_uri(100), "time": "2026-11-28T10:00:00Z", "evalLoss": 1.4321},
        {"step": 200, "uri": layout.checkpoint_uri(200), "time": "2026-11-28T10:10:00Z"},
    ]
    world.trainer_status(ftj, step=120, loss=0.9132, eval_loss=1.02, eta=1800, checkpoints=checkpoints)
    return ftj


# ----------------------------------------------------------------------------------------- status


def test_status_shows_phase_progress_checkpoints_and_outputs(world, capsys):
    ftj = running_job(world)
    code, out, err = run(capsys, "status", "bot")
    assert code == 0, err
    assert f"Name:        {world.namespace}/bot" in out
    assert "Phase:       Running (PodsRunning)" in out
    assert "Progress:    step 120/300 (40%), epoch 1.2, ETA 30m00s" in out
    assert "Metrics:     loss 0.9132  evalLoss 1.02" in out
    checkpoint_lines = [line.split() for line in out.splitlines() if "/checkpoints/step-" in line]
    assert checkpoint_lines == [
        ["100", "1.4321", "2026-11-28T10:00:00Z", world.layout(ftj).checkpoint_uri(100)],
        ["200", "-", "2026-11-28T10:10:00Z", world.layout(ftj).checkpoint_uri(200)],
    ]
    assert "Output:" not in out  # the trainer reports the output URIs when training ends

    world.trainer_status(ftj, step=300, loss=0.61, output=True)
    world.operator_status(ftj, Phase.SUCCEEDED, Reason.TRAINING_COMPLETE)
    code, out, _ = run(capsys, "status", f"{world.namespace}/bot", "-n", "elsewhere")  # NAMESPACE/NAME wins
    assert code == 0
    assert "Phase:       Succeeded (TrainingComplete)" in out
    assert "ETA" not in out
    layout = world.layout(ftj)
    assert f"  model:       {layout.final_uri}" in out
    assert f"  metrics:     {layout.metrics_uri}" in out

    code, out, _ = run(capsys, "status", "bot", "-o", "json")
    summary = json.loads(out)
    assert (summary["phase"], summary["step"], summary["output"]["modelUri"]) == ("Succeeded", 300, layout.final_uri)


def test_status_of_a_queued_job_says_what_it_waits_for(world, capsys):
    ftj = world.create_job("waiting", queueName="team-a-gpus")
    world.operator_status(
        ftj,
        Phase.QUEUED,
        Reason.WAITING_FOR_ADMISSION,
        "waiting for Kueue LocalQueue 'team-a-gpus' to admit the Job",
        attempts=0,
    )
    code, out, _ = run(capsys, "status", "waiting")
    assert code == 0
    assert "Phase:       Queued (WaitingForAdmission)" in out
    assert "Queue:       waiting for Kueue LocalQueue 'team-a-gpus' to admit the Job" in out
    assert "Checkpoints: none yet" in out


def test_errors_are_one_line_naming_what_is_missing(world, capsys, tmp_path):
    code, _, err = run(capsys, "status", "nope")
    assert_one_line_error(code, err, f'no FineTuneJob "nope" in namespace "{world.namespace}"')

    world.create_job("fresh")  # no operator has written its status
    code, _, err = run(capsys, "status", "fresh")
    assert_one_line_error(code, err, f"{world.namespace}/fresh has no status yet")

    other = f"{world.namespace}-other"
    world.create_namespace(other)
    token = world.grant_viewer(other, "viewer")
    code, _, err = run(capsys, "status", "bot", "--kubeconfig", str(world.kubeconfig(token, name="viewer")))
    assert_one_line_error(code, err, f'no access to FineTuneJob "bot" in namespace "{world.namespace}"')

    code, _, err = run(capsys, "status", "bot", "--kubeconfig", str(tmp_path / "missing"))
    assert_one_line_error(code, err, f"no usable kubeconfig at {tmp_path / 'missing'}")

    unreachable = world.kubeconfig("admin", name="unreachable")
    unreachable.write_text(unreachable.read_text().replace(world.emulator.url, "https://127.0.0.1:9"))
    code, _, err = run(capsys, "status", "bot", "--kubeconfig", str(unreachable))
    assert_one_line_error(code, err, "cannot reach the API server at https://127.0.0.1:9")

    code, _, err = run(capsys, "status", "bot", "--context", "no-such-context")
    assert_one_line_error(code, err, "no usable kubeconfig", "no-such-context")


# ----------------------------------------------------------------------------------------- metrics, compare


def test_metrics_from_the_output_store_as_table_raw_and_plot(world, capsys, tmp_path):
    ftj = running_job(world)
    records = training_records(120)
    world.write_metrics(ftj, records)

    code, out, err = run(capsys, "metrics", "bot", "--raw")
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == records

    code, out, _ = run(capsys, "metrics", "bot")
    lines = out.splitlines()
    assert lines[0].split() == ["STEP", "EPOCH", "LOSS", "EVAL_LOSS", "LEARNING_RATE", "GRAD_NORM", "TOKENS_PER_SECOND"]
    assert len(lines) == 1 + len({r["step"] for r in records})  # a step's training and evaluation on one row
    assert lines[1].split()[:3] == ["10", "0.1", str(records[0]["loss"])]
    at_50 = {k: v for r in records if r["step"] == 50 for k, v in r.items()}
    assert lines[5].split()[:4] == ["50", "0.5", str(at_50["loss"]), str(at_50["eval_loss"])]

    png = tmp_path / "bot.png"
    code, _, err = run(capsys, "metrics", "bot", "--plot", str(png))
    assert code == 0 and f"wrote {png}" in err
    import matplotlib.pyplot as plt

    assert plt.imread(png).shape[:2] == (400, 1100)  # two panels, 11 x 4 inches at 100 dpi


def test_metrics_errors_name_the_store(world, capsys):
    ftj = running_job(world)
    code, _, err = run(capsys, "metrics", "bot")
    assert_one_line_error(code, err, "bot has no metrics yet", f"{world.layout(ftj).metrics_uri} does not exist")

    world.create_job("lost", output={"uri": "s3://no-such-bucket/runs/", "endpoint": world.s3_url})
    world.operator_status(
        world.get({"metadata": {"namespace": world.namespace, "name": "lost"}}), Phase.RUNNING, Reason.PODS_RUNNING
    )
    code, _, err = run(capsys, "metrics", "lost")
    assert_one_line_error(code, err, "s3://no-such-bucket/", "the bucket does not exist")


def test_metrics_without_access_to_the_bucket(world, capsys, monkeypatch):
    """IAM as the store enforces it (moto's IAM checks): a user whose policy allows another bucket only."""
    ftj = running_job(world)
    world.write_metrics(ftj, training_records(50))
    admin = {
        "endpoint_url": world.s3_url,
        "region_name": "us-east-1",
        "aws_access_key_id": "admin",
        "aws_secret_access_key": "admin",
    }
    iam = boto3.client("iam", **admin)
    user = f"user-{world.namespace}"
    iam.create_user(UserName=user)
    policy = iam.create_policy(
        PolicyName=f"other-{world.namespace}",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::other", "arn:aws:s3:::other/*"]}
                ],
            }
        ),
    )
    iam.attach_user_policy(UserName=user, PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

    def enforce(count: str) -> None:
        urllib.request.urlopen(
            urllib.request.Request(
                f"{world.s3_url}/moto-api/reset-auth",
                data=count.encode(),
                method="POST",
                headers={"Content-Type": "text/plain"},
            )
        )

    enforce("0")
    try:
        code, _, err = run(capsys, "metrics", "bot")
        assert_one_line_error(
            code, err, world.layout(ftj).metrics_uri, "access denied", "check your own AWS credentials"
        )
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
        code, _, err = run(capsys, "metrics", "bot")
        assert_one_line_error(code, err, "the access key is not valid")
    finally:
        enforce("inf")


def test_compare_puts_several_jobs_side_by_side(world, capsys, tmp_path):
    a, b = running_job(world, "lr-2e-4"), running_job(world, "lr-1e-3")
    world.write_metrics(a, training_records(200, seed=1))
    faster = training_records(200, start=2.5, floor=0.7, seed=2)
    world.write_metrics(b, faster)
    png = tmp_path / "compare.png"
    code, out, err = run(capsys, "compare", "lr-2e-4", f"{world.namespace}/lr-1e-3", "--plot", str(png))
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    evals = [(r["eval_loss"], r["step"]) for r in faster if "eval_loss" in r]
    best = min(evals)
    assert rows[f"{world.namespace}/lr-1e-3"] == [
        f"{world.namespace}/lr-1e-3",
        "Running",
        "200",
        str([r for r in faster if "loss" in r][-1]["loss"]),
        str(best[0]),
        "(step",
        f"{best[1]})",
    ]
    assert png.stat().st_size > 10_000

    code, _, err = run(capsys, "compare", "lr-2e-4", "missing-run")
    assert_one_line_error(code, err, f'no FineTuneJob "missing-run" in namespace "{world.namespace}"')


def test_plot_without_matplotlib_says_which_extra(world, capsys, monkeypatch, tmp_path):
    ftj = running_job(world)
    world.write_metrics(ftj, training_records(30))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra meets: ImportError
    code, _, err = run(capsys, "metrics", "bot", "--plot", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "--plot needs matplotlib: pip install 'kubetune[plot]'")


# ----------------------------------------------------------------------------------------- download


def test_download_copies_the_complete_final_model(world, capsys, tmp_path):
    ftj = running_job(world)
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": os.urandom(4096),
        "tokenizer/tokenizer.json": b"{}",
    }
    world.write_final(ftj, files, complete=False)
    code, _, err = run(capsys, "download", "bot", str(tmp_path / "early"))
    assert_one_line_error(code, err, "has no complete final model", "phase Running")

    world.write_final(ftj, {}, complete=True)  # the trainer writes the marker after every other file
    world.trainer_status(ftj, step=300, output=True)
    world.operator_status(ftj, Phase.SUCCEEDED, Reason.TRAINING_COMPLETE)
    dest = tmp_path / "model"
    code, _, err = run(capsys, "download", "bot", str(dest))
    assert code == 0, err
    assert "downloaded 3 file(s)" in err
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == files

    code, _, err = run(capsys, "download", "bot", str(dest))
    assert_one_line_error(code, err, f"{dest}: the folder is not empty")


# ----------------------------------------------------------------------------------------- logs


def test_logs_show_the_current_pod_across_retries(world, capsys):
    ftj = world.create_job("bot")
    first = world.start_child_job(ftj)[0]
    world.operator_status(ftj, Phase.RUNNING, Reason.PODS_RUNNING)
    kubelet = world.emulator.kubelet
    kubelet.write(world.namespace, first["metadata"]["name"], "attempt 1: step 10 loss 2.1", "attempt 1: step 20")
    code, out, err = run(capsys, "logs", "bot")
    assert code == 0, err
    assert out.splitlines() == ["attempt 1: step 10 loss 2.1", "attempt 1: step 20"]
    assert f"==> pod {first['metadata']['name']} <==" in err

    world.sim.fail(world.namespace, "bot", 20, "storage unreachable")  # retried: the Job controller makes a pod
    pods = world.sim.pods(world.namespace, world.sim.job(world.namespace, "bot"))
    second = next(p for p in pods if p["metadata"]["uid"] != first["metadata"]["uid"])
    kubelet.write(world.namespace, second["metadata"]["name"], "attempt 2: resumed from step 20")
    code, out, _ = run(capsys, "logs", "bot")
    assert out.splitlines() == ["attempt 2: resumed from step 20"]
    asked = [r for r in kubelet.requests if r["pod"] == second["metadata"]["name"]]
    assert asked[-1]["container"] == "trainer"


def test_logs_before_the_trainer_runs(world, capsys):
    ftj = world.create_job("queued", queueName="gpus")
    world.operator_status(
        ftj,
        Phase.QUEUED,
        Reason.WAITING_FOR_ADMISSION,
        "waiting for Kueue LocalQueue 'gpus' to admit the Job",
        attempts=0,
    )
    code, _, err = run(capsys, "logs", "queued")
    assert_one_line_error(code, err, "queued has no training pod (phase Queued: waiting for Kueue LocalQueue 'gpus'")

    ftj = world.create_job("starting")
    spec_pod = world.start_child_job(ftj, running=False)[0]  # the container is still being created
    code, _, err = run(capsys, "logs", "starting")
    assert_one_line_error(
        code, err, f"the trainer has not started yet (pod {spec_pod['metadata']['name']} is ContainerCreating)"
    )


def test_logs_follow_goes_on_to_the_retry_and_stops_when_the_job_ends(world):
    ftj = world.create_job("bot")
    first = world.start_child_job(ftj)[0]
    world.operator_status(ftj, Phase.RUNNING, Reason.PODS_RUNNING)
    kubelet = world.emulator.kubelet
    kubelet.write(world.namespace, first["metadata"]["name"], "a1 line 1")
    proc = subprocess.Popen(
        [str(BIN / "kubetune"), "logs", "bot", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    out: list[str] = []
    import threading

    threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        wait_until(lambda: "a1 line 1\n" in out, 30, "the first attempt's log")
        kubelet.write(world.namespace, first["metadata"]["name"], "a1 line 2")
        wait_until(lambda: "a1 line 2\n" in out, 10, "a line written while following")
        world.sim.fail(world.namespace, "bot", 20, "node lost")  # pod 1 terminates; the retry's pod starts
        world.operator_status(ftj, Phase.RUNNING, Reason.PODS_RUNNING, attempts=2)
        pods = world.sim.pods(world.namespace, world.sim.job(world.namespace, "bot"))
        second = next(p for p in pods if p["metadata"]["uid"] != first["metadata"]["uid"])
        kubelet.write(world.namespace, second["metadata"]["name"], "a2 resumed at step 20", "a2 done")
        wait_until(lambda: "a2 done\n" in out, 30, "the retry's log")
        world.sim.succeed(world.namespace, "bot")
        world.operator_status(ftj, Phase.SUCCEEDED, Reason.TRAINING_COMPLETE, attempts=2)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert out == ["a1 line 1\n", "a1 line 2\n", "a2 resumed at step 20\n", "a2 done\n"]
    headers = [err.index(f"==> pod {pod['metadata']['name']} <==") for pod in (first, second)]
    assert headers == sorted(headers)
    assert err.rstrip().endswith(f"==> {world.namespace}/bot Succeeded <==")


# ----------------------------------------------------------------------------------------- kubectl plugin


KUBECTL = "/usr/bin/kubectl"


@pytest.mark.skipif(
    not os.access(KUBECTL, os.X_OK), reason="kubectl is not installed (Debian: apt-get install kubernetes-client)"
)
def test_kubectl_finds_the_plugin_on_path(world, tmp_path):
    """kubectl's own plugin mechanism: `kubectl ftj ...` runs the first `kubectl-ftj` on PATH, with kubectl's
    environment (KUBECONFIG) and the arguments after the plugin's name."""
    running_job(world)
    assert (BIN / "kubectl-ftj").exists(), "the console script kubectl-ftj is not installed (pip install -e .)"
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": os.environ["KUBECONFIG"]}

    def kubectl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([KUBECTL, *args], check=False, env=env, capture_output=True, text=True, timeout=60)

    listed = kubectl("plugin", "list")
    assert str(BIN / "kubectl-ftj") in listed.stdout
    shown = kubectl("ftj", "status", "bot", "-n", world.namespace)
    assert shown.returncode == 0, shown.stderr
    assert "Phase:       Running (PodsRunning)" in shown.stdout
    missing = kubectl("ftj", "status", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f'kubectl ftj: error: no FineTuneJob "nope" in namespace "{world.namespace}"'
