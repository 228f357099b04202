"""`kubetune dashboard` in a real headless browser (Debian's chromium driven by Playwright): the process a user
starts (`kubetune dashboard`, the user's kubeconfig and AWS keys), the API emulator with jobs in every phase, and
metrics.jsonl files in S3 (moto). Screenshots are kept under the test's tmp folder (pytest keeps the last three
runs); KUBETUNE_UPDATE_SCREENSHOTS=1 also copies the list view to docs/img/dashboard.png for the README."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kubetune.api.constants import Phase, Reason
from tests.usercli.jobs import training_records, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that let Debian's chromium run headless in a container without a GPU and without calling home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_missing() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        return "chromium is not installed (Debian: apt-get install -y chromium); the dashboard's browser test skips"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright); the dashboard's browser test skips"
    return ""


pytestmark = pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "browser available")


class DashboardProcess:
    """`kubetune dashboard --port 0` as a user starts it; `url` is the address it prints (with its token)."""

    def __init__(self, kubeconfig: Path, *args: str):
        self.proc = subprocess.Popen(
            [
                str(BIN / "kubetune"),
                "dashboard",
                "--port",
                "0",
                "--refresh",
                "0.5",
                "--kubeconfig",
                str(kubeconfig),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()
        found = wait_until(
            lambda: (
                next((m for line in self.lines if (m := re.search(r"(http://\S+)", line))), None)
                or self.proc.poll() is not None
            ),
            60,
            "the dashboard's address",
        )
        assert isinstance(found, re.Match), f"the dashboard exited: {''.join(self.lines)}"
        self.url = found[1]
        self.base = self.url.split("/?")[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    yield folder
    print(f"\ndashboard screenshots: {folder}")


def make_jobs(world) -> dict[str, dict]:
    """A team's jobs in every phase, with the status, Events and outputs the operator and the trainer write."""
    jobs = {}

    def running(name: str, step: int, eta: int, seed: int, **spec) -> dict:
        ftj = world.create_job(name, **spec)
        world.operator_status(ftj, Phase.RUNNING, Reason.PODS_RUNNING)
        records = training_records(step, seed=seed)
        world.write_metrics(ftj, records)
        last = [r for r in records if "loss" in r][-1]
        evals = [r for r in records if "eval_loss" in r]
        layout = world.layout(ftj)
        checkpoints = [
            {
                "step": s,
                "uri": layout.checkpoint_uri(s),
                "time": "2026-11-28T10:00:00Z",
                "evalLoss": next(r["eval_loss"] for r in evals if r["step"] == s),
            }
            for s in (100, 200)
            if s <= step
        ]
        world.trainer_status(
            ftj,
            step=step,
            loss=last["loss"],
            eval_loss=evals[-1]["eval_loss"] if evals else None,
            eta=eta,
            checkpoints=checkpoints,
        )
        return ftj

    jobs["support-bot-qlora"] = running("support-bot-qlora", 180, 1080, 1, technique="qlora")
    jobs["summarizer-lora-r16"] = running("summarizer-lora-r16", 120, 1800, 2)
    done = world.create_job("summarizer-lora-r64")
    world.operator_status(done, Phase.RUNNING, Reason.PODS_RUNNING)
    world.write_metrics(done, training_records(300, start=2.8, floor=0.8, seed=3))
    world.trainer_status(done, step=300, loss=0.83, eval_loss=0.95, output=True)
    world.operator_status(done, Phase.SUCCEEDED, Reason.TRAINING_COMPLETE)
    jobs["summarizer-lora-r64"] = done
    failed = world.create_job("classifier-full", technique="full")
    world.operator_status(
        failed,
        Phase.FAILED,
        Reason.USER_ERROR,
        f"datasets[0].uri: s3://{world.bucket}/data/train.jsonl: no such object",
    )
    jobs["classifier-full"] = failed
    queued = world.create_job("dpo-tune", queueName="team-gpus")
    world.operator_status(
        queued,
        Phase.QUEUED,
        Reason.WAITING_FOR_ADMISSION,
        "waiting for Kueue LocalQueue 'team-gpus' to admit the Job",
        attempts=0,
    )
    jobs["dpo-tune"] = queued
    pending = world.create_job("nightly-domain")
    world.operator_status(pending, Phase.PENDING, Reason.PODS_PENDING, "waiting for the training pods to start")
    jobs["nightly-domain"] = pending
    paused = world.create_job("paused-sweep", suspend=True)
    world.operator_status(paused, Phase.SUSPENDED, Reason.SUSPENDED_BY_USER, "suspended: spec.suspend is true")
    jobs["paused-sweep"] = paused
    return jobs


def row(page, world, name: str):
    return page.locator(f'tr[data-job="{world.namespace}/{name}"]')


def test_dashboard_lists_every_phase_and_follows_changes_live(world, browser, shots):
    jobs = make_jobs(world)
    dashboard = DashboardProcess(world.kubeconfig("admin"), "-n", world.namespace)
    requests: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1480, "height": 600})
        page.on("request", lambda request: requests.append(request.url))
        page.goto(dashboard.url)
        page.wait_for_selector("#jobs tbody tr")
        wait_until(lambda: page.locator("#jobs tbody tr").count() == len(jobs), 20, "every job listed")
        phases = {name: row(page, world, name).locator(".phase").inner_text() for name in jobs}
        assert phases == {
            "support-bot-qlora": "Running",
            "summarizer-lora-r16": "Running",
            "summarizer-lora-r64": "Succeeded",
            "classifier-full": "Failed",
            "dpo-tune": "Queued",
            "nightly-domain": "Pending",
            "paused-sweep": "Suspended",
        }
        qlora = row(page, world, "support-bot-qlora")
        assert qlora.locator(".cell-eta").inner_text() == "18m00s"
        assert "60% · 180/300" in qlora.inner_text()
        queue = row(page, world, "dpo-tune").locator(".cell-queue").inner_text()
        assert "waiting for Kueue LocalQueue 'team-gpus'" in queue
        # Sparklines from each job's metrics.jsonl in S3 (60 points at most), read once the watch showed the job.
        wait_until(
            lambda: row(page, world, "summarizer-lora-r64").locator(".cell-spark polyline").count() == 1,
            20,
            "the finished job's loss sparkline",
        )
        points = row(page, world, "summarizer-lora-r64").locator(".cell-spark polyline").get_attribute("points")
        assert len(points.split()) == 30  # 300 steps logged every 10
        assert row(page, world, "dpo-tune").locator(".cell-spark polyline").count() == 0  # never trained
        page.screenshot(path=str(shots / "list.png"))

        # Idle, the dashboard asks the API server nothing: what it shows comes from its open watches.
        def reads() -> list:
            return [c for c in world.emulator.calls("admin") if c.verb in ("get", "list")]

        quiet = len(reads())
        page.wait_for_timeout(2000)
        assert len(reads()) == quiet
        if os.environ.get("KUBETUNE_UPDATE_SCREENSHOTS") == "1":
            (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(shots / "list.png", ROOT / "docs" / "img" / "dashboard.png")

        # Live, from the watch: a queued job is admitted, a running one moves on, a new one appears, one goes away.
        world.operator_status(jobs["dpo-tune"], Phase.RUNNING, Reason.PODS_RUNNING)
        wait_until(lambda: row(page, world, "dpo-tune").locator(".phase").inner_text() == "Running", 10, "admission")
        world.trainer_status(jobs["summarizer-lora-r16"], step=150, loss=1.234, eta=1500)
        wait_until(lambda: "50% · 150/300" in row(page, world, "summarizer-lora-r16").inner_text(), 10, "progress")
        assert row(page, world, "summarizer-lora-r16").locator(".cell-loss").inner_text() == "1.234"
        world.create_job("late-arrival")
        wait_until(lambda: row(page, world, "late-arrival").count() == 1, 10, "a new job")
        world.kube.delete("FineTuneJob", world.namespace, "paused-sweep")
        wait_until(lambda: row(page, world, "paused-sweep").count() == 0, 10, "a deleted job gone")
        # Watches cut by the API server resume from their resourceVersion; too old a one (410 Gone) lists again,
        # and a job deleted meanwhile goes away.
        world.emulator.cut_watches()
        world.trainer_status(jobs["summarizer-lora-r16"], step=160, loss=1.2, eta=1400)
        wait_until(lambda: "53% · 160/300" in row(page, world, "summarizer-lora-r16").inner_text(), 10, "after a cut")

        def lists() -> int:
            return sum(1 for c in world.emulator.calls("admin") if c.verb == "list" and c.resource == "finetunejobs")

        before = lists()
        world.emulator.forget_history()
        world.emulator.cut_watches()
        wait_until(lambda: lists() > before, 15, "a list again after 410 Gone")
        world.kube.delete("FineTuneJob", world.namespace, "late-arrival")
        wait_until(lambda: row(page, world, "late-arrival").count() == 0, 15, "a deletion after the relist")
        assert page.locator("#connection").inner_text() == "live"
        assert all(url.startswith(dashboard.base) for url in requests), [
            u for u in requests if not u.startswith(dashboard.base)
        ]
    finally:
        dashboard.stop()


def test_job_page_and_overlay(world, browser, shots):
    jobs = make_jobs(world)
    dashboard = DashboardProcess(world.kubeconfig("admin"), "-n", world.namespace)
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1500})
        page.goto(dashboard.url)
        row(page, world, "summarizer-lora-r16").locator("a").click()
        page.wait_for_selector("#job-title")
        assert page.locator("#job-title").inner_text().startswith(f"{world.namespace}/summarizer-lora-r16")
        train = page.locator('#loss-chart path.series[data-label="train loss"]')
        wait_until(lambda: train.count() == 1 and train.get_attribute("data-points") == "12", 20, "the loss curve")
        assert page.locator('#loss-chart path.series[data-label="eval loss"]').get_attribute("data-points") == "2"
        assert page.locator("#checkpoints tbody tr").count() == 1
        assert "PodsRunning" in page.locator("#events").inner_text()
        assert "technique: lora" in page.locator("#spec").inner_text()

        # Live curve: the trainer logs on (its status through the watch; metrics.jsonl synced later).
        records = training_records(160, seed=2)
        world.trainer_status(jobs["summarizer-lora-r16"], step=140, loss=1.1, eta=1600)
        wait_until(lambda: train.get_attribute("data-points") == "13", 10, "the live point from the status")
        world.write_metrics(jobs["summarizer-lora-r16"], records)
        world.trainer_status(jobs["summarizer-lora-r16"], step=160, loss=records[-1].get("loss", 1.0), eta=1400)
        wait_until(lambda: train.get_attribute("data-points") == "16", 15, "the curve read again from metrics.jsonl")
        world.post_event(world.get(jobs["summarizer-lora-r16"]), "Normal", "CheckpointSaved", "checkpoint step 150")
        wait_until(lambda: "CheckpointSaved" in page.locator("#events").inner_text(), 10, "a new Event")
        page.screenshot(path=str(shots / "job.png"), full_page=True)

        # Overlay: pick two jobs on the list, compare their curves.
        page.goto(dashboard.base + "/#/")
        page.wait_for_selector("#jobs tbody tr")
        for name in ("summarizer-lora-r16", "summarizer-lora-r64"):
            row(page, world, name).locator("input.pick").check()
        page.locator("#overlay").click()
        page.wait_for_selector("#compare-train path.series")
        labels = sorted(p.get_attribute("data-label") for p in page.locator("#compare-train path.series").all())
        assert labels == [f"{world.namespace}/summarizer-lora-r16", f"{world.namespace}/summarizer-lora-r64"]
        assert page.locator("#compare-eval path.series").count() == 2
        page.screenshot(path=str(shots / "compare.png"))
    finally:
        dashboard.stop()


def test_dashboard_shows_only_what_the_user_may_read(world, browser, shots):
    """A user who may read FineTuneJobs in one namespace only (a Role there): the dashboard lists that namespace,
    says why not more, and has nothing of another namespace to show, not even by address."""
    mine = world.create_job("mine")
    world.operator_status(mine, Phase.RUNNING, Reason.PODS_RUNNING)
    other = f"{world.namespace}-private"
    world.create_namespace(other)
    world.create_job("theirs", namespace=other)
    token = world.grant_viewer(world.namespace, "alice")
    dashboard = DashboardProcess(world.kubeconfig(token, name="alice"))
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 500})
        page.goto(dashboard.url)
        wait_until(lambda: page.locator("#jobs tbody tr").count() == 1, 20, "alice's job")
        assert row(page, world, "mine").count() == 1
        assert f"namespaces: {world.namespace}" in page.locator("#scope").inner_text()
        assert "you may list neither FineTuneJobs cluster-wide nor namespaces" in page.locator("#notes").inner_text()
        page.screenshot(path=str(shots / "restricted.png"))
        answer = page.request.get(f"{dashboard.base}/api/jobs/{other}/theirs")
        assert answer.status == 404

        # The page answers only whoever has the printed token, and only on the loopback names.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(dashboard.base + "/api/state")
        assert refused.value.code == 403
        forged = urllib.request.Request(dashboard.base + "/api/state", headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError) as rebound:
            urllib.request.urlopen(forged)
        assert rebound.value.code == 421
    finally:
        dashboard.stop()
