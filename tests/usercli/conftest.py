"""The user's commands and the dashboard against the project's API emulator (HTTPS, RBAC for service-account
tokens) and a real HTTP S3 endpoint (moto), the way a user reaches a cluster: a kubeconfig file and AWS_* keys."""

from __future__ import annotations

import itertools

import kubernetes
import pytest

from kubetune.testing.emulator import ADMIN_TOKEN
from kubetune.testing.harness import ClusterSim, start_emulator
from tests.usercli.jobs import Kubelet, World

_counter = itertools.count()


@pytest.fixture(scope="session")
def emulator():
    emu = start_emulator()
    kubelet = Kubelet.install()
    emu.kubelet = kubelet
    yield emu
    kubelet.uninstall()
    emu.stop()


@pytest.fixture(scope="session")
def s3_url():
    """A real HTTP S3 endpoint of its own (moto's threaded server)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def sim(emulator):
    cluster = ClusterSim(emulator)
    yield cluster
    cluster.close()


@pytest.fixture
def world(emulator, sim, s3_url, tmp_path, monkeypatch):
    """A fresh namespace, a bucket, the admin's kubeconfig in KUBECONFIG and S3 keys in the environment."""
    world = World(emulator, sim, s3_url, tmp_path, namespace=f"u{next(_counter)}")
    world.create_namespace(world.namespace)
    monkeypatch.setenv("KUBECONFIG", str(world.kubeconfig(ADMIN_TOKEN)))
    for key, value in world.s3_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("KUBETUNE_S3_MAX_ATTEMPTS", "2")  # set here, so the commands' own default leaks nowhere
    return world


@pytest.fixture
def admin_api(emulator):
    return kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN))
