"""A thin JSON-in, JSON-out layer over the Kubernetes API, awaited on kopf's event loop.

It speaks HTTP through aiohttp (kopf's own HTTP library) and takes the address, TLS settings and
credentials from the official client's Configuration (in-cluster or kubeconfig). A third or less of
the CPU per call of the official client, kubernetes_asyncio or lightkube (docs/operator.md, "Design").

Plain dicts in and out (what builders.py returns and status.py reads): no model classes, no
camelCase/snake_case round trips. Errors are the official client's ApiException. JSON through orjson: encoding a Job
and decoding the answers were a tenth of the operator's CPU at 10,000 jobs with the standard library's json.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from kubernetes.client import ApiException, Configuration
from kubernetes.client.rest import should_bypass_proxies

from kubetune.api.constants import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
# Metadata only (the API server's PartialObjectMetadata forms), else the object.
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"

# kind -> (API path prefix, plural)
PATHS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "FineTuneJob": (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


def is_status(err: Exception, *codes: int) -> bool:
    return isinstance(err, ApiException) and err.status in codes


def collection_path(kind: str, namespace: str | None) -> str:
    """The path of a kind's objects in a namespace, or in every namespace (None)."""
    prefix, plural = PATHS[kind]
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def api_path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = PATHS[kind]
    out = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


# Credentials are read from the Configuration again after this long, or at once after a 401 (the
# in-cluster loader's hook re-reads the rotated token file; kubeconfig exec plugins refresh theirs).
AUTH_REFRESH_SECONDS = 60.0
# A watch request that sends nothing for this long (not even a bookmark) is taken for lost and opened again.
WATCH_READ_SECONDS = 600.0


def _ssl_context(configuration: Configuration) -> ssl.SSLContext | bool:
    if not configuration.host.startswith("https"):
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Kube:
    """get/list/create/patch/delete by kind, namespace and name (create it inside the loop that uses it)."""

    def __init__(self, configuration: Configuration, connections: int = 32, timeout: float = 30.0):
        self.configuration = configuration
        self.host = configuration.host.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ssl=_ssl_context(configuration)),
            cookie_jar=aiohttp.DummyCookieJar(),  # the API server sets none; spares a jar lookup per call
        )
        self._auth: dict[str, str] = {}
        self._auth_read = float("-inf")
        # kubeconfig `tls-server-name`: the name the server's certificate is checked against.
        self._tls = {"server_hostname": configuration.tls_server_name} if configuration.tls_server_name else {}
        # The proxy, unless no_proxy exempts the API server (the official client's rule).
        bypass = should_bypass_proxies(configuration.host, configuration.no_proxy or "")
        self.proxy = configuration.proxy if configuration.proxy and not bypass else None

    async def close(self) -> None:
        await self.session.close()

    def _headers(self, refresh: bool = False) -> dict[str, str]:
        if refresh or time.monotonic() - self._auth_read > AUTH_REFRESH_SECONDS:
            self._auth = {}
            for setting in self.configuration.auth_settings().values():  # runs the refresh hook
                if setting.get("in") == "header" and setting.get("value"):
                    self._auth[setting["key"]] = setting["value"]
            self._auth_read = time.monotonic()
        return {"Accept": "application/json", **self._auth}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict | None = None,
        content_type: str = "application/json",
        accept: str = "",
        read: bool = True,
    ) -> dict:
        """`read`: decode the answer (False: the caller needs none, and {} comes back)."""
        data = None if body is None else orjson.dumps(body)
        for attempt in (1, 2):
            headers = self._headers(refresh=attempt == 2)
            if accept:
                headers["Accept"] = accept
            if data is not None:
                headers["Content-Type"] = content_type
            async with self.session.request(
                method,
                self.host + path,
                params=query,
                data=data,
                headers=headers,
                timeout=self.timeout,
                proxy=self.proxy,
                **self._tls,
            ) as response:
                payload = await response.read()
                if response.status == 401 and attempt == 1:
                    continue  # the token may have been rotated: read it again, once
                if not 200 <= response.status < 300:
                    err = ApiException(status=response.status, reason=response.reason)
                    err.body = payload.decode(errors="replace")
                    raise err
                return orjson.loads(payload or b"{}") if read else {}
        raise AssertionError("unreachable")

    async def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return await self.request("GET", api_path(kind, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict]:
        path = collection_path(kind, namespace)
        query = {"labelSelector": label_selector} if label_selector else None
        return (await self.request("GET", path, query=query)).get("items", [])

    async def list_keys(self, kind: str, namespace: str | None) -> set[tuple[str, str]]:
        """(namespace, name) of every object of a kind, read as metadata only (a PartialObjectMetadataList, which the
        API server serves for every resource): a few hundred bytes an object, whatever their specs and statuses."""
        path = collection_path(kind, namespace)
        listed = await self.request("GET", path, accept=METADATA_LIST)
        return {(item["metadata"].get("namespace", ""), item["metadata"]["name"]) for item in listed.get("items", [])}

    async def watch(self, kind: str, namespace: str | None, query: dict, accept: str) -> AsyncIterator[dict]:
        """The events of one watch request (?watch=1), one dict each, until the API server ends it (its timeoutSeconds).
        Errors as in `request`; a 401 is not retried here (the caller opens the next watch with fresh headers)."""
        path = collection_path(kind, namespace)
        headers = self._headers() | {"Accept": accept}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout.total, sock_read=WATCH_READ_SECONDS)
        async with self.session.get(
            self.host + path,
            params={**query, "watch": "1"},
            headers=headers,
            timeout=timeout,
            proxy=self.proxy,
            **self._tls,
        ) as response:
            if response.status == 401:
                self._auth_read = float("-inf")  # read the credentials again for the next request
            if not 200 <= response.status < 300:
                err = ApiException(status=response.status, reason=response.reason)
                err.body = (await response.read()).decode(errors="replace")
                raise err
            # Lines split here, not by aiohttp's readline: that refuses a line over 64 KiB, and a pod's metadata
            # carries its spec (an annotation of up to 256 KiB).
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)
            if buffer.strip():
                yield orjson.loads(buffer)

    async def create(self, obj: dict, read: bool = True) -> dict:
        return await self.request("POST", api_path(obj["kind"], obj["metadata"]["namespace"]), body=obj, read=read)

    async def patch(self, kind: str, namespace: str, name: str, patch: dict, subresource: str | None = None) -> dict:
        return await self.request(
            "PATCH", api_path(kind, namespace, name, subresource), body=patch, content_type=MERGE_PATCH
        )

    async def delete(
        self, kind: str, namespace: str, name: str, propagation: str = "Background", uid: str | None = None
    ) -> bool:
        """Delete (a Job's pods go too); False when it was already gone, or when `uid` is given and the object of
        that name is another one now (the API server's uid precondition answers 409).

        `propagation`: Background (the object goes at once, its dependents after it) or Foreground (the object
        stays, with a deletionTimestamp, until the dependents that block it are gone)."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", api_path(kind, namespace, name), body=body)
            return True
        except ApiException as err:
            if err.status == 404 or (uid and err.status == 409):
                return False
            raise
