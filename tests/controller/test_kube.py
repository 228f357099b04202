"""The operator's API client (controller/kube.py) against the API emulator, and its TLS settings."""

from __future__ import annotations

import asyncio
import ssl

import certifi
import kubernetes
import pytest
from kubernetes.client import ApiException

from kubetune.controller.kube import Kube, _ssl_context
from kubetune.testing.emulator import ADMIN_TOKEN


def run(coro_fn):
    return asyncio.run(coro_fn())


def test_the_api_client_maps_answers_and_reads_rotated_credentials_again_after_a_401(emulator):
    configuration = emulator.client_configuration("expired-token")
    reads = []

    def refresh(config):  # what the in-cluster loader's hook does when the token file was rotated
        reads.append(1)
        if len(reads) > 1:
            config.api_key["authorization"] = f"Bearer {ADMIN_TOKEN}"

    configuration.refresh_api_key_hook = refresh

    async def scenario():
        kube = Kube(configuration)
        try:
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-client-test"}}
            await kube.request("POST", "/api/v1/namespaces", body=namespace)  # 401 once, then admitted
            assert len(reads) == 2
            config_map = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "kube-client-test"},
                "data": {"k": "v"},
            }
            created = await kube.create(config_map)
            assert created["metadata"]["uid"] and created["data"] == {"k": "v"}
            with pytest.raises(ApiException) as err:
                await kube.create(config_map)
            assert err.value.status == 409 and "AlreadyExists" in err.value.body
            patched = await kube.patch("ConfigMap", "kube-client-test", "c", {"data": {"k": "w"}})
            assert patched["data"] == {"k": "w"}
            assert [c["metadata"]["name"] for c in await kube.list("ConfigMap", "kube-client-test")] == ["c"]
            assert await kube.delete("ConfigMap", "kube-client-test", "c") is True
            assert await kube.get("ConfigMap", "kube-client-test", "c") is None
            assert await kube.delete("ConfigMap", "kube-client-test", "c") is False
        finally:
            await kube.close()
        assert len(reads) == 2  # credentials are not re-read on every call

    run(scenario)


def test_tls_settings_come_from_the_client_configuration():
    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:8080"
    assert _ssl_context(configuration) is False  # plain HTTP

    configuration.host = "https://10.0.0.1:443"
    configuration.ssl_ca_cert = certifi.where()  # in a pod: the service account's ca.crt
    context = _ssl_context(configuration)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs()

    configuration.verify_ssl = False  # kubeconfig: insecure-skip-tls-verify
    context = _ssl_context(configuration)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_the_proxy_applies_unless_no_proxy_exempts_the_api_server():
    async def proxies(**settings):
        configuration = kubernetes.client.Configuration()
        configuration.host = "https://10.0.0.1:443"
        for key, value in settings.items():
            setattr(configuration, key, value)
        kube = Kube(configuration)
        await kube.close()
        return kube.proxy

    assert asyncio.run(proxies()) is None
    assert asyncio.run(proxies(proxy="http://proxy.corp:3128")) == "http://proxy.corp:3128"
    assert asyncio.run(proxies(proxy="http://proxy.corp:3128", no_proxy="10.0.0.1,.cluster.local")) is None
