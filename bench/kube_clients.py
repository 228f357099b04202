"""CPU per API call of the operator's own client (controller/kube.py) against the Python Kubernetes clients it
could have used, all against the local API emulator: N ConfigMaps created, read and merge-patched, 32 calls
in flight, as the operator's reconciles make them.

    python bench/kube_clients.py                  # the clients that are installed
    pip install kubernetes-asyncio lightkube      # (into a scratch environment) to compare those too

Each client runs in a process of its own and measures only its own CPU time; the emulator runs in this one.
The result decided the operator's client (docs/operator.md, "Design").
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

IN_FLIGHT = 32
CLIENTS = {  # name -> the module it needs
    "kubetune (aiohttp, controller/kube.py)": "aiohttp",
    "kubernetes (official, blocking, 32 threads)": "kubernetes",
    "kubernetes_asyncio": "kubernetes_asyncio",
    "lightkube (AsyncClient)": "lightkube",
    "bare HTTP/1.1 on asyncio (the floor)": "asyncio",
}


def config_map(i: int, namespace: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"c{i}", "namespace": namespace},
        "data": {"k": "v" * 200},
    }


async def in_flight(calls: int, one) -> None:
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def bounded(i: int) -> None:
        async with limit:
            await one(i)

    await asyncio.gather(*(bounded(i) for i in range(calls)))


class BareConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that reads answers with a Content-Length, one at a time: what a request
    costs with nothing around it (no pool policy, timeouts, redirects or chunked bodies). A floor to measure the
    clients against, not a client."""

    def __init__(self) -> None:
        self.buffer, self.answer, self.ends = b"", None, None

    def connection_made(self, transport) -> None:
        self.transport = transport

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return await self.answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.ends is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            headers = self.buffer[:end].lower()
            value = headers.index(b"content-length:") + len(b"content-length:")
            line_end = headers.find(b"\r\n", value)
            self.ends = (end + 4, end + 4 + int(headers[value : line_end if line_end >= 0 else None]))
        start, stop = self.ends
        if len(self.buffer) >= stop:
            status, body = int(self.buffer[9:12]), self.buffer[start:stop]
            self.buffer, self.ends = self.buffer[stop:], None
            self.answer.set_result((status, body))


def measure_bare(url: str, ca_file: str, token: str, namespace: str, n: int) -> float:
    import ssl
    from urllib.parse import urlsplit

    import orjson

    address = urlsplit(url)
    path = f"/api/v1/namespaces/{namespace}/configmaps".encode()
    headers = f"Host: {address.netloc}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n".encode()

    async def run() -> float:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context(cafile=ca_file)
        idle: asyncio.Queue[BareConnection] = asyncio.Queue()
        for _ in range(IN_FLIGHT):
            _, connection = await loop.create_connection(BareConnection, address.hostname, address.port, ssl=context)
            idle.put_nowait(connection)
        start = time.process_time()

        async def call(method: bytes, target: bytes, content_type: bytes = b"", body: bytes = b"") -> None:
            connection = await idle.get()
            head = b"%s %s HTTP/1.1\r\n%s" % (method, target, headers)
            if content_type:
                head += b"Content-Type: %s\r\n" % content_type
            status, answer = await connection.request(head, body)
            orjson.loads(answer)
            idle.put_nowait(connection)
            assert 200 <= status < 300, (status, answer)

        async def one(i: int) -> None:
            await call(b"POST", path, b"application/json", orjson.dumps(config_map(i, namespace)))
            await call(b"GET", path + b"/c%d" % i)
            patch = orjson.dumps({"data": {"k": "w"}})
            await call(b"PATCH", path + b"/c%d" % i, b"application/merge-patch+json", patch)

        await in_flight(n, one)
        spent = time.process_time() - start
        while not idle.empty():
            idle.get_nowait().transport.close()
        return spent

    return asyncio.run(run())


def measure(client: str, url: str, ca_file: str, token: str, namespace: str, n: int) -> float:
    """CPU seconds this process spent on n create/get/patch rounds."""
    if client.startswith("kubetune"):
        from kubernetes.client import Configuration

        from kubetune.controller.kube import Kube

        configuration = Configuration()
        configuration.host, configuration.ssl_ca_cert = url, ca_file
        configuration.api_key = {"authorization": f"Bearer {token}"}

        async def run() -> float:
            kube = Kube(configuration, connections=IN_FLIGHT)
            start = time.process_time()

            async def one(i: int) -> None:
                await kube.create(config_map(i, namespace))
                await kube.get("ConfigMap", namespace, f"c{i}")
                await kube.patch("ConfigMap", namespace, f"c{i}", {"data": {"k": "w"}})

            await in_flight(n, one)
            spent = time.process_time() - start
            await kube.close()
            return spent

        return asyncio.run(run())
    if client.startswith("bare"):
        return measure_bare(url, ca_file, token, namespace, n)
    if client.startswith("kubernetes ("):
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host, configuration.ssl_ca_cert = url, ca_file
        configuration.api_key = {"authorization": f"Bearer {token}"}
        configuration.connection_pool_maxsize = IN_FLIGHT
        core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))

        def one(i: int) -> None:
            core.create_namespaced_config_map(namespace, config_map(i, namespace))
            core.read_namespaced_config_map(f"c{i}", namespace)
            core.patch_namespaced_config_map(f"c{i}", namespace, {"data": {"k": "w"}})

        start = time.process_time()
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(one, range(n)))
        return time.process_time() - start
    if client == "kubernetes_asyncio":
        import kubernetes_asyncio

        configuration = kubernetes_asyncio.client.Configuration()
        configuration.host, configuration.ssl_ca_cert = url, ca_file
        configuration.api_key = {"BearerToken": f"Bearer {token}"}
        configuration.connection_pool_maxsize = IN_FLIGHT

        async def run() -> float:
            api = kubernetes_asyncio.client.ApiClient(configuration)
            core = kubernetes_asyncio.client.CoreV1Api(api)
            start = time.process_time()

            async def one(i: int) -> None:
                await core.create_namespaced_config_map(namespace, config_map(i, namespace))
                await core.read_namespaced_config_map(f"c{i}", namespace)
                await core.patch_namespaced_config_map(f"c{i}", namespace, {"data": {"k": "w"}})

            await in_flight(n, one)
            spent = time.process_time() - start
            await api.close()
            return spent

        return asyncio.run(run())
    from lightkube import AsyncClient, KubeConfig
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import ConfigMap
    from lightkube.types import PatchType

    kubeconfig = KubeConfig.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "c",
            "clusters": [{"name": "e", "cluster": {"server": url, "certificate-authority": ca_file}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "e", "user": "u", "namespace": namespace}}],
        }
    )

    async def run() -> float:
        lightkube = AsyncClient(kubeconfig)
        start = time.process_time()

        async def one(i: int) -> None:
            metadata = ObjectMeta(name=f"c{i}", namespace=namespace)
            await lightkube.create(ConfigMap(metadata=metadata, data={"k": "v" * 200}))
            await lightkube.get(ConfigMap, f"c{i}", namespace=namespace)
            await lightkube.patch(
                ConfigMap, f"c{i}", {"data": {"k": "w"}}, namespace=namespace, patch_type=PatchType.MERGE
            )

        await in_flight(n, one)
        spent = time.process_time() - start
        await lightkube.close()
        return spent

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="create/get/patch rounds per client")
    parser.add_argument("--rounds", type=int, default=2, help="runs per client, interleaved")
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)  # a client's own process
    args = parser.parse_args(argv)
    if args.measure:
        client, url, ca_file, token, namespace = args.measure
        print(json.dumps({"cpu_s": measure(client, url, ca_file, token, namespace, args.calls)}))
        return 0

    import kubernetes

    from kubetune.testing.emulator import ADMIN_TOKEN
    from kubetune.testing.harness import start_emulator

    clients = [name for name, module in CLIENTS.items() if importlib.util.find_spec(module)]
    emulator = start_emulator()
    results: dict[str, list[float]] = {name: [] for name in clients}
    try:
        core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN)))
        for run in range(args.rounds):
            for index, client in enumerate(clients):
                namespace = f"bench-{run}-{index}"
                core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--calls",
                        str(args.calls),
                        "--measure",
                        client,
                        emulator.url,
                        emulator.ca_file,
                        ADMIN_TOKEN,
                        namespace,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                cpu = json.loads(out.stdout.strip().splitlines()[-1])["cpu_s"]
                results[client].append(cpu / (3 * args.calls) * 1000)
    finally:
        emulator.stop()
    print(f"\nCPU per API call, {args.calls} x (create, get, merge patch), {IN_FLIGHT} in flight\n")
    print("| client | CPU per call (ms), each run |\n|---|---|")
    for client, per_call in results.items():
        print(f"| {client} | {', '.join(f'{ms:.2f}' for ms in per_call)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
