"""A thin JSON-in, JSON-out layer over the official client's ApiClient.

The operator works on plain dicts (what builders.py returns and status.py reads): no model classes,
no camelCase/snake_case round trips. Errors are the client's own ApiException.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient, ApiException

from kubetune.api.constants import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"

# kind -> (API path prefix, plural)
PATHS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": ("/apis/batch/v1", "jobs"),
    "FineTuneJob": (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


def is_status(err: Exception, *codes: int) -> bool:
    return isinstance(err, ApiException) and err.status in codes


class Kube:
    def __init__(self, api_client: ApiClient, timeout: float = 30.0):
        self.api = api_client
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None,
                content_type: str = "application/json") -> dict:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        _method, url, headers, body, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()), header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        response = self.api.call_api(_method, url, header_params=headers, body=body, _request_timeout=self.timeout)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data or b"{}")

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        prefix, plural = PATHS[kind]
        out = f"{prefix}/namespaces/{namespace}/{plural}"
        if name:
            out += f"/{name}"
        if subresource:
            out += f"/{subresource}"
        return out

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict]:
        prefix, plural = PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        query = {"labelSelector": label_selector} if label_selector else None
        return self.request("GET", path, query=query).get("items", [])

    def create(self, obj: dict) -> dict:
        return self.request("POST", self.path(obj["kind"], obj["metadata"]["namespace"]), body=obj)

    def patch(self, kind: str, namespace: str, name: str, patch: dict, subresource: str | None = None) -> dict:
        return self.request("PATCH", self.path(kind, namespace, name, subresource), body=patch, content_type=MERGE_PATCH)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (a Job's pods go too); False when it was already gone."""
        try:
            self.request("DELETE", self.path(kind, namespace, name), body={"propagationPolicy": "Background"})
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise
