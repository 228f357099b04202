"""Fault suite fixtures: one moto S3 server, one tiny model, one API emulator per session, and the
`ledger` every test writes its measured counts into (faults injected, runs survived, steps lost,
duplicates, leaks); the table prints at the end of the session.

Nothing here changes os.environ for the whole session (other suites run in the same process):
subprocesses get an explicit env, in-process runs use monkeypatch.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from faultlib import S3_KEY_ID, S3_SECRET, SEED, s3_client, s3_env  # noqa: E402,F401


@dataclass
class Row:
    scenario: str
    faults: int = 0
    runs: int = 0
    survived: int = 0
    steps_lost: int = 0  # the worst single interruption
    duplicates: int = 0
    leaks: int = 0
    note: str = ""


class Ledger:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def record(self, scenario: str, **counts) -> Row:
        row = Row(scenario, **counts)
        self.rows.append(row)
        return row


_LEDGER = pytest.StashKey[Ledger]()


@pytest.fixture(scope="session")
def ledger(request) -> Ledger:
    return request.config.stash.setdefault(_LEDGER, Ledger())


@pytest.fixture
def rng(request) -> random.Random:
    return random.Random(f"{SEED}-{request.node.name}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    ledger = config.stash.get(_LEDGER, None)
    if ledger is None or not ledger.rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"fault suite (seed {SEED}; replay with KUBETUNE_FAULT_SEED={SEED})")
    write(f"{'scenario':<46}{'faults':>7}{'runs':>6}{'survived':>9}{'lost':>6}{'dups':>6}{'leaks':>6}  note")
    totals = Row("total")
    for r in ledger.rows:
        write(
            f"{r.scenario:<46}{r.faults:>7}{r.runs:>6}{r.survived:>9}{r.steps_lost:>6}{r.duplicates:>6}{r.leaks:>6}"
            f"  {r.note}"
        )
        totals.faults += r.faults
        totals.runs += r.runs
        totals.survived += r.survived
        totals.steps_lost = max(totals.steps_lost, r.steps_lost)
        totals.duplicates += r.duplicates
        totals.leaks += r.leaks
    write(
        f"{'total (lost: worst)':<46}{totals.faults:>7}{totals.runs:>6}{totals.survived:>9}{totals.steps_lost:>6}"
        f"{totals.duplicates:>6}{totals.leaks:>6}"
    )


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_url, request) -> str:
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    s3_client(moto_url).create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- model and data


@pytest.fixture(scope="session")
def tiny_model(tiny_llama_dir) -> Path:
    return tiny_llama_dir  # tests/conftest.py builds it once per session


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    import json

    from kubetune_trainer.tiny import sample_corpus

    path = tmp_path_factory.mktemp("fault-data") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(96, seed=11)))
    return path


# --------------------------------------------------------------------------- API emulator


@pytest.fixture(scope="session")
def api():
    from kubetune.testing.harness import start_emulator

    emu = start_emulator()
    yield emu
    emu.stop()
