"""Shared fixtures: one API emulator and one operator for the whole session (start-up is the slow
part); each test works in its own namespace."""

from __future__ import annotations

import itertools
import logging

import kubernetes
import pytest

from kubetune.controller.config import OperatorConfig
from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import ClusterSim, OperatorLog, OperatorThread, start_emulator

OUTPUT_URI = "s3://kubetune-out/runs/"
SETTINGS = OperatorConfig(
    trainer_image="registry.example/kubetune-trainer:test",
    default_output_uri=OUTPUT_URI,
    report_interval_seconds=7,
    grace_seconds=90,
    resync_seconds=1.0,
    metrics_port=0,
)
_counter = itertools.count()


@pytest.fixture(scope="session")
def emulator():
    emu = start_emulator()
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def operator(emulator):
    logging.getLogger("kopf").setLevel(logging.WARNING)
    op = OperatorThread(emulator, SETTINGS).start()
    yield op
    op.stop()


@pytest.fixture(scope="session")
def admin(emulator):
    return kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN))


@pytest.fixture(scope="session")
def sim(emulator):
    cluster = ClusterSim(emulator)
    yield cluster
    cluster.close()


@pytest.fixture
def namespace(admin):
    name = f"t{next(_counter)}"
    kubernetes.client.CoreV1Api(admin).create_namespace(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    return name


@pytest.fixture
def operator_log(operator):
    """The operator's log lines while the test runs."""
    capture = OperatorLog().attach()
    yield capture
    capture.detach()
