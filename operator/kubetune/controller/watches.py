"""The watches of the operator's Jobs and pods: metadata only.

A change of a Job or a pod calls for a pass over its FineTuneJob (named by its label), and the pass reads the Job and
the pods itself: so the watch needs the labels and nothing else. The API server sends just the metadata when asked
for PartialObjectMetadata (controller-runtime's metadata-only watches of owned objects do the same), so a Job's pod
template, a pod's spec and status are neither sent, decoded, nor queued: at 10,000 jobs that is most of what a
restart used to hold in memory, and most of the CPU a watch event cost through kopf's per-object machinery.

Listing, then watching from the list's resourceVersion (with bookmarks), as every informer does: the listing itself
calls for no pass (the FineTuneJobs' own listing gives every job the operator does not know one, and the resync visits
the unfinished ones); a 410 (the version is too old) lists again; a lost connection opens the watch again after a
backoff. kopf keeps the FineTuneJobs' watch (handlers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from kubernetes.client import ApiException

from kubetune.controller.kube import METADATA, METADATA_LIST, Kube, collection_path

log = logging.getLogger("kubetune.operator")

# The API server ends each watch request after this long; the next one starts from the last version seen.
WATCH_SECONDS = 300
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0

OnChange = Callable[[str, dict], None]  # (event type, the object's metadata)


class Gone(Exception):
    """410: the resourceVersion the watch asked for is older than what the API server keeps."""


async def _list_version(kube: Kube, kind: str, namespace: str | None, selector: str) -> str:
    """The version to watch from: a list's, one item long (the items call for nothing)."""
    listed = await kube.request(
        "GET", collection_path(kind, namespace), query={"labelSelector": selector, "limit": "1"}, accept=METADATA_LIST
    )
    return (listed.get("metadata") or {}).get("resourceVersion", "")


async def _watch_from(
    kube: Kube, kind: str, namespace: str | None, selector: str, version: str, on_change: OnChange
) -> str:
    """One watch request from `version`; returns the last version seen (raises Gone on a 410)."""
    query = {
        "labelSelector": selector,
        "resourceVersion": version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(WATCH_SECONDS),
    }
    async for event in kube.watch(kind, namespace, query, METADATA):
        kind_of_event, obj = event.get("type"), event.get("object") or {}
        if kind_of_event == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise RuntimeError(f"watch of {kind}: {obj.get('message') or obj}")
        meta = obj.get("metadata") or {}
        version = meta.get("resourceVersion") or version
        if kind_of_event != "BOOKMARK":
            on_change(kind_of_event, meta)
    return version


async def watch_forever(kube: Kube, kind: str, namespace: str | None, selector: str, on_change: OnChange) -> None:
    """List and watch `kind` (in `namespace`, or everywhere) with `selector` for as long as the operator runs."""
    version = ""
    delay = RETRY_SECONDS
    while True:
        listed = not version
        try:
            if listed:
                version = await _list_version(kube, kind, namespace, selector)
            version = await _watch_from(kube, kind, namespace, selector, version, on_change)
            delay = RETRY_SECONDS
        except asyncio.CancelledError:
            raise
        except Gone:
            # List again: what happened meanwhile is the resync's (unfinished jobs) to catch. A list's own version
            # that is too old already (a server keeping little history) is not asked for again in a tight loop.
            if listed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            version = ""
        except (ApiException, aiohttp.ClientError, OSError, RuntimeError, ValueError, asyncio.TimeoutError) as err:
            where = f"in {namespace}" if namespace else "cluster-wide"
            log.warning("watch of %ss %s failed (%s); watching again in %.0f s", kind, where, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            if isinstance(err, ApiException) and err.status == 410:
                version = ""
