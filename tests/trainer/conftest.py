"""Fixtures shared by the trainer tests (the tiny Llama itself, `tiny_llama_dir`, is built once per session in
tests/conftest.py for every suite that trains)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures import tiny_training_job


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_llama_dir) -> Path:
    """The tokenizer of `tiny_llama_dir` (the same folder: AutoTokenizer loads it from there)."""
    return tiny_llama_dir


# --------------------------------------------------------------------------- S3 (moto over HTTP)
# Added by the plumbing/entrypoint tests; append new fixtures below, keep these names stable.


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real HTTP S3 endpoint (moto's threaded server) for the whole session; its URL.

    Sets AWS_ENDPOINT_URL and test credentials in os.environ so in-process runs and subprocesses
    (which inherit the environment) reach it; KUBETUNE_S3_MAX_ATTEMPTS keeps failure tests quick."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "KUBETUNE_S3_MAX_ATTEMPTS",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing-key",
        AWS_SECRET_ACCESS_KEY="testing-secret",
        AWS_DEFAULT_REGION="us-east-1",
        KUBETUNE_S3_MAX_ATTEMPTS="2",
    )
    yield url
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket (named after the test) on the session's S3 endpoint; its name."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def write_job(tmp_path):
    """Write a FineTuneJob manifest; returns its path. Keyword arguments are spec sections (merged
    over small defaults: full fine-tuning, a few steps, fp32, file:// everything)."""
    import yaml

    def write(model_dir, datasets, *, name="job", filename="job.yaml", **spec_sections):
        doc = tiny_training_job(model_dir, datasets, name=name, steps=8, checkpoint_every=4, **spec_sections)
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


# --------------------------------------------------------------------------- training results table
# Added by the technique x objective matrix (test_matrix.py): each test appends a dict with technique,
# objective, measure, before, after, logged, changed, seconds; the table prints at the end of the session.

_TRAINING_RESULTS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def training_results(request) -> list[dict]:
    return request.config.stash.setdefault(_TRAINING_RESULTS, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = config.stash.get(_TRAINING_RESULTS, [])
    if not results:
        return
    write = terminalreporter.write_line
    terminalreporter.section("technique x objective: measured before -> after training")
    write(
        f"{'technique':<19}{'objective':<15}{'measure':<13}{'before':>9}{'after':>10}  "
        f"{'trainer log (first -> last)':<28}{'changed':>8}{'s':>6}"
    )
    for r in sorted(results, key=lambda r: (r["objective"], r["technique"])):
        write(
            f"{r['technique']:<19}{r['objective']:<15}{r['measure']:<13}{r['before']:>9.4f}{r['after']:>10.4f}  "
            f"{r['logged']:<28}{r['changed']:>8}{r['seconds']:>6.1f}"
        )
