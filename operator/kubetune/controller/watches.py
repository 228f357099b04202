"""The operator's watches: its FineTuneJobs, whole, and its Jobs and pods, metadata only.

Listing, then watching from the list's resourceVersion (with bookmarks), as every informer does; a 410 (the version is
too old) lists again; a lost connection opens the watch again after a backoff.

The FineTuneJobs. Each watch event, and each job the listing brings (at start-up, and after a 410), is handed to the
reconciler (Reconciler.finetunejob_changed), which decides whether it calls for a pass. The listing is read in chunks,
so that a history of 10,000 finished jobs is never held at once. This watch used to be kopf's (an event handler): kopf
spends a task, a per-object worker and a dozen handler-matching steps on each event, 16 % of the operator's CPU in a
burst of new jobs; here an event costs a JSON decode and a call.

The Jobs and pods. A change of one calls for a pass over its FineTuneJob (named by its label), and the pass reads the
Job and the pods itself: so the watch needs the labels and nothing else. The API server sends just the metadata when
asked for PartialObjectMetadata (controller-runtime's metadata-only watches of owned objects do the same), so a Job's
pod template, a pod's spec and status are neither sent, decoded, nor queued. At start-up the reconciler lists them
whole once (list_all) and keeps what each job's first pass reads, before it lists the FineTuneJobs
(Reconciler._watch); their watches start from those listings. A listing again after a 410, when the events in
between are lost, gives every unfinished job a pass (Reconciler.children_relisted).
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
# Objects a listing asks for at once: what it holds in memory, whatever the number of objects.
LIST_CHUNK = 500
# The event type a listed object is handed over with (a watch event's are ADDED, MODIFIED, DELETED).
LISTED = "LISTED"

# What a listing or a watch request can fail with: the API server's answer, the connection, a body that is not JSON.
FAILURES = (ApiException, aiohttp.ClientError, OSError, RuntimeError, ValueError, asyncio.TimeoutError)

OnChange = Callable[[str, dict], None]  # (event type, the object: its metadata only, for a metadata-only watch)


class Gone(Exception):
    """410: the resourceVersion the watch asked for is older than what the API server keeps."""


async def _list(kube: Kube, kind: str, namespace: str | None, selector: str, on_listed: OnChange | None) -> str:
    """The version to watch from. Without `on_listed`, a list one item long (the items call for nothing); with it,
    every object (list_all)."""
    if on_listed is None:
        query = {"labelSelector": selector, "limit": "1"} if selector else {"limit": "1"}
        listed = await kube.request("GET", collection_path(kind, namespace), query=query, accept=METADATA_LIST)
        return (listed.get("metadata") or {}).get("resourceVersion", "")
    return await list_all(kube, kind, namespace, selector, on_listed)


async def list_all(
    kube: Kube,
    kind: str,
    namespace: str | None,
    selector: str,
    on_listed: OnChange,
    fields: str = "",
    accept: str = "application/json",
) -> str:
    """Every object of `kind` (with the label `selector` and the field selector `fields`), chunk after chunk (one
    snapshot: every chunk carries its version), each handed to `on_listed`; returns the version to watch from.
    `accept`: METADATA_LIST for their metadata only."""
    path = collection_path(kind, namespace)
    query = {"labelSelector": selector} if selector else {}
    if fields:
        query["fieldSelector"] = fields
    query["limit"] = str(LIST_CHUNK)
    while True:
        listed = await kube.request("GET", path, query=query, accept=accept)
        # A list's items carry no kind and apiVersion of their own: the list's, less its "List".
        item_kind = (listed.get("kind") or "").removesuffix("List")
        for item in listed.get("items") or ():
            item.setdefault("kind", item_kind)
            item.setdefault("apiVersion", listed.get("apiVersion"))
            on_listed(LISTED, item)
        meta = listed.get("metadata") or {}
        if not meta.get("continue"):
            return meta.get("resourceVersion", "")
        query["continue"] = meta["continue"]


async def _watch_from(
    kube: Kube, kind: str, namespace: str | None, selector: str, version: str, on_change: OnChange, accept: str
) -> str:
    """One watch request from `version`; returns the last version seen (raises Gone on a 410)."""
    query = {"resourceVersion": version, "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
    if selector:
        query["labelSelector"] = selector
    async for event in kube.watch(kind, namespace, query, accept):
        kind_of_event, obj = event.get("type"), event.get("object") or {}
        if kind_of_event == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise RuntimeError(f"watch of {kind}: {obj.get('message') or obj}")
        version = (obj.get("metadata") or {}).get("resourceVersion") or version
        if kind_of_event != "BOOKMARK":
            on_change(kind_of_event, obj)
    return version


async def watch_forever(
    kube: Kube,
    kind: str,
    namespace: str | None,
    selector: str,
    on_change: OnChange,
    *,
    metadata_only: bool = True,
    on_listed: OnChange | None = None,
    on_relisted: Callable[[], None] | None = None,
    listed_at: str = "",
) -> None:
    """List and watch `kind` (in `namespace`, or everywhere) with `selector` for as long as the operator runs.

    `metadata_only`: the watch events carry PartialObjectMetadata. `on_listed`: every listed object is handed to it
    (whole), at the start and after each 410. `on_relisted`: called after each listing but the first, when the events
    between the last version seen and the listing are lost. `listed_at`: the version of a listing the caller made
    (list_all): the watch starts from it, without a listing of its own."""
    version = listed_at
    delay = RETRY_SECONDS
    accept = METADATA if metadata_only else "application/json"
    lists = 1 if listed_at else 0
    while True:
        listed = not version
        try:
            if listed:
                version = await _list(kube, kind, namespace, selector, on_listed)
                lists += 1
                if lists > 1 and on_relisted is not None:
                    on_relisted()
            version = await _watch_from(kube, kind, namespace, selector, version, on_change, accept)
            delay = RETRY_SECONDS
        except asyncio.CancelledError:
            raise
        except Gone:
            # List again: what happened meanwhile comes with the listing, or is the resync's (unfinished jobs) to
            # catch. A list's own version that is too old already (a server keeping little history) is not asked
            # for again in a tight loop.
            if listed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            version = ""
        except FAILURES as err:
            where = f"in {namespace}" if namespace else "cluster-wide"
            log.warning("watch of %ss %s failed (%s); watching again in %.0f s", kind, where, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            if isinstance(err, ApiException) and err.status == 410:
                version = ""
