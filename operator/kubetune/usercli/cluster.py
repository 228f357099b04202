"""The cluster as the user sees it: the official kubernetes client on the user's kubeconfig (or, inside a pod, the
pod's service account), and every API error turned into one line that names what is missing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from kubetune.api.constants import GROUP, KIND, PLURAL, VERSION
from kubetune.usercli import CliError

# Seconds a single read may take; watches and followed logs have their own.
REQUEST_TIMEOUT = 30


def _client_modules():
    try:
        import kubernetes
        import urllib3
    except ImportError:
        raise CliError("this command needs the kubernetes client: pip install 'kubetune[cli]'") from None
    return kubernetes, urllib3


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_api_error(err: Exception, what: str) -> str:
    """An ApiException as one line: what was asked, and why the API server said no."""
    status = getattr(err, "status", None)
    try:
        body = json.loads(getattr(err, "body", None) or "{}")
    except (TypeError, ValueError):
        body = {}
    message = _one_line(body.get("message") or getattr(err, "reason", "") or "")
    if status == 401:
        return "the API server refused your credentials (401 Unauthorized): check the user of your kubeconfig context"
    if status == 403:
        return f"no access to {what}: {message or 'forbidden'}"
    if status == 404:
        return f"{what}: not found"
    if status == 0 or status is None:
        return f"{what}: {message or err}"
    return f"{what}: the API server answered {status}: {message}"


def _is_missing_resource_type(err: Exception) -> bool:
    """A 404 for a resource type the server does not serve carries no details.name (a missing object does)."""
    try:
        body = json.loads(getattr(err, "body", None) or "{}")
    except (TypeError, ValueError):
        return False
    return not (body.get("details") or {}).get("name")


def created_at(obj: dict) -> str:
    return obj.get("metadata", {}).get("creationTimestamp") or ""


class Cluster:
    """One API server, through the user's kubeconfig context; `namespace` is the context's unless given."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None):
        kubernetes, self._urllib3 = _client_modules()
        from kubernetes.config.config_exception import ConfigException

        self._kubernetes = kubernetes
        context_namespace = None
        # Read now: the client reads $KUBECONFIG once, when it is imported.
        kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
        try:
            self.api_client = kubernetes.config.new_client_from_config(
                config_file=kubeconfig, context=context, persist_config=False
            )
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
            context_namespace = ((chosen or {}).get("context") or {}).get("namespace")
        except ConfigException as err:
            if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                where = kubeconfig or "~/.kube/config"
                raise CliError(f"no usable kubeconfig at {where}: {_one_line(str(err))}") from None
            kubernetes.config.load_incluster_config()  # inside a pod: its service account
            self.api_client = kubernetes.client.ApiClient()
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as fh:
                context_namespace = fh.read().strip()
        self.host = self.api_client.configuration.host
        self.namespace = namespace or context_namespace or "default"
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.batch = kubernetes.client.BatchV1Api(self.api_client)

    # ------------------------------------------------------------------------------------------- calls

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs); an API or connection error becomes a CliError naming `what`. Reads come back as
        plain dicts in the wire form (camelCase), as `kubectl get -o json` shows them."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        kwargs.setdefault("_preload_content", False)
        try:
            response = fn(*args, **kwargs)
        except self._kubernetes.client.ApiException as err:
            raise CliError(describe_api_error(err, what)) from None
        except self._urllib3.exceptions.HTTPError as err:
            raise CliError(self.unreachable(err)) from None
        if not kwargs["_preload_content"]:
            return json.loads(response.data or b"null")
        return response

    def unreachable(self, err: Exception) -> str:
        reason = getattr(err, "reason", None) or err
        return f"cannot reach the API server at {self.host}: {_one_line(str(reason))}"

    # ------------------------------------------------------------------------------------------- FineTuneJobs

    def get_job(self, name: str, namespace: str | None = None) -> dict:
        namespace = namespace or self.namespace
        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        except self._kubernetes.client.ApiException as err:
            if err.status == 404 and _is_missing_resource_type(err):
                raise CliError(
                    f"the cluster at {self.host} does not serve {KIND}s ({PLURAL}.{GROUP}/{VERSION}): "
                    "is kubetune installed?"
                ) from None
            if err.status == 404:
                raise CliError(f'no {KIND} "{name}" in namespace "{namespace}"') from None
            raise CliError(describe_api_error(err, f'{KIND} "{name}" in namespace "{namespace}"')) from None
        except self._urllib3.exceptions.HTTPError as err:
            raise CliError(self.unreachable(err)) from None

    def patch_job(self, name: str, namespace: str, patch: dict) -> dict:
        """A merge patch of a FineTuneJob (its spec). A patch that names the resourceVersion it was made from is
        refused when the job changed since (409), and the error says so."""
        try:
            return self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, patch, _request_timeout=REQUEST_TIMEOUT
            )
        except self._kubernetes.client.ApiException as err:
            if err.status == 409:
                raise CliError(f"{KIND} {namespace}/{name} changed while this command read it: run it again") from None
            raise CliError(describe_api_error(err, f'{KIND} "{name}" in namespace "{namespace}"')) from None
        except self._urllib3.exceptions.HTTPError as err:
            raise CliError(self.unreachable(err)) from None

    def list_jobs(self, namespace: str | None) -> dict:
        """The FineTuneJob list (a dict with items and metadata.resourceVersion) of one namespace, or of all."""
        if namespace is None:
            return self.call(
                f"{PLURAL} in all namespaces", self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
            )
        return self.call(
            f'{PLURAL} in namespace "{namespace}"',
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
        )

    # ------------------------------------------------------------------------------------------- children

    def pods(self, namespace: str, label_selector: str) -> list[dict]:
        listed = self.call(
            f'pods in namespace "{namespace}"', self.core.list_namespaced_pod, namespace, label_selector=label_selector
        )
        return listed.get("items") or []

    def child_job(self, namespace: str, name: str) -> dict | None:
        try:
            return self.call(
                f'Job "{name}" in namespace "{namespace}"', self.batch.read_namespaced_job, name, namespace
            )
        except CliError:
            return None

    def events_for(self, ftj: dict) -> list[dict]:
        """The Events about one FineTuneJob, oldest first."""
        meta = ftj["metadata"]
        selector = f"involvedObject.kind={KIND},involvedObject.name={meta['name']}"
        listed = self.call(
            f'events in namespace "{meta["namespace"]}"',
            self.core.list_namespaced_event,
            meta["namespace"],
            field_selector=selector,
        )
        items = [
            e
            for e in listed.get("items") or []
            if (e.get("involvedObject") or {}).get("uid") in (None, meta.get("uid"))
        ]
        return sorted(items, key=event_time)

    def pod_log(self, namespace: str, pod: str, container: str, follow: bool) -> Iterator[str]:
        """The pod's log, line by line; with `follow`, lines as they are written until the container ends."""
        kubernetes = self._kubernetes
        what = f'the log of pod "{pod}" in namespace "{namespace}"'
        try:
            if follow:
                # The official client's Watch streams a followed log line by line.
                yield from kubernetes.watch.Watch().stream(
                    self.core.read_namespaced_pod_log, pod, namespace, container=container
                )
                return
            response = self.core.read_namespaced_pod_log(
                pod, namespace, container=container, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
            yield from response.data.decode("utf-8", errors="replace").splitlines()
        except kubernetes.client.ApiException as err:
            raise CliError(describe_api_error(err, what)) from None
        except self._urllib3.exceptions.HTTPError as err:
            raise CliError(self.unreachable(err)) from None


def event_time(event: dict) -> str:
    return (
        event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or created_at(event) or ""
    )
