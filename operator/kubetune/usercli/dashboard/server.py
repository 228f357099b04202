"""The dashboard's server: aiohttp on 127.0.0.1, the user's kubeconfig and storage credentials.

What it knows comes from watches (the official client's Watch, each in a thread of its own): one on FineTuneJobs
and one on their Events per namespace scope, cluster-wide when the user may list cluster-wide, else per namespace
the user may list. The browser gets the changes as server-sent events; no object is polled. Curves come from each
job's metrics.jsonl in its output store, read again when the watch shows the job's step moved (at most once per
`refresh_seconds` per job), with the losses the watch saw since then drawn after them.

The page is served only to whoever holds the token printed at start (a cookie after the first visit) and only
under the loopback host names: another local user, or a web page using DNS rebinding, cannot read through it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import webbrowser
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import yaml

from kubetune.api.constants import GROUP, KIND, PLURAL, VERSION
from kubetune.usercli import CliError
from kubetune.usercli.cluster import Cluster, describe_api_error, event_time
from kubetune.usercli.summary import is_finished, summarize

STATIC = Path(__file__).parent / "static"
COOKIE = "kubetune_dashboard"
WATCH_SECONDS = 300  # one watch request's length; the next resumes from the last resourceVersion seen
EVENTS_KEPT = 50  # per job
SPARK_POINTS = 60
CLIENT_QUEUE = 1000  # changes a slow browser may lag behind before it is dropped (it reconnects and re-reads)

Key = tuple[str, str]


def key_of(obj: dict) -> Key:
    return obj["metadata"].get("namespace") or "", obj["metadata"]["name"]


def sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


class Client:
    """One browser's stream. A browser too slow to keep up is dropped: its EventSource reconnects and starts
    again from a fresh snapshot."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
        self.dropped = False

    def send(self, message: str) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped = True


@dataclass
class Curves:
    """One job's metrics: the records of metrics.jsonl when last read, and the losses the watch saw after them."""

    records: list[dict] = field(default_factory=list)
    error: str = ""
    read_at: float = 0.0
    read_step: int = -1
    read_finished: bool = False
    reading: bool = False
    live: dict[int, float] = field(default_factory=dict)  # step -> training loss from status.metrics
    later: asyncio.TimerHandle | None = None

    def last_step(self) -> int:
        return max((r["step"] for r in self.records), default=-1)

    def points(self) -> list[dict]:
        last = self.last_step()
        return self.records + [{"step": s, "loss": v, "live": True} for s, v in sorted(self.live.items()) if s > last]


def spark(points: list[dict], limit: int = SPARK_POINTS) -> list[list[float]]:
    """[step, loss] of the training loss, thinned to `limit` points (first and last kept)."""
    losses = [[p["step"], p["loss"]] for p in points if isinstance(p.get("loss"), (int, float))]
    if len(losses) <= limit:
        return losses
    stride = (len(losses) - 1) / (limit - 1)
    return [losses[round(i * stride)] for i in range(limit)]


class Dashboard:
    def __init__(
        self,
        cluster: Cluster,
        namespaces: list[str] | None = None,
        s3_endpoint: str | None = None,
        refresh_seconds: float = 10.0,
    ):
        self.cluster = cluster
        self.requested = list(namespaces or [])
        self.s3_endpoint = s3_endpoint
        self.refresh_seconds = refresh_seconds
        self.token = secrets.token_urlsafe(24)
        self.jobs: dict[Key, dict] = {}
        self.events: dict[Key, dict[str, dict]] = {}
        self.curves: dict[Key, Curves] = {}
        self.scopes: list[str | None] = []
        self.notes: dict[str, str] = {}  # what cannot be shown, and why (by source)
        self.clients: set[Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = threading.Event()
        self.readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-metrics")
        self.port = 0

    # ------------------------------------------------------------------------------------- scopes

    def _may_list(self, namespace: str | None) -> str:
        """'' if the user may list FineTuneJobs there, else the one-line reason."""
        try:
            if namespace is None:
                self.cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1, _request_timeout=30)
            else:
                self.cluster.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, limit=1, _request_timeout=30
                )
            return ""
        except self.cluster._kubernetes.client.ApiException as err:
            return describe_api_error(
                err, f"{PLURAL} in " + (f'namespace "{namespace}"' if namespace else "all namespaces")
            )
        except self.cluster._urllib3.exceptions.HTTPError as err:
            raise CliError(self.cluster.unreachable(err)) from None

    def find_scopes(self) -> list[str | None]:
        """Where to watch: the namespaces asked for; else the whole cluster when the user may list it there; else
        every namespace the user may list FineTuneJobs in (the namespaces listed, or the context's)."""
        if self.requested:
            scopes = []
            for namespace in self.requested:
                reason = self._may_list(namespace)
                if reason:
                    self.notes[f"scope:{namespace}"] = reason
                else:
                    scopes.append(namespace)
            return scopes
        reason = self._may_list(None)
        if not reason:
            return [None]
        try:
            listed = self.cluster.call("namespaces", self.cluster.core.list_namespace)
            candidates = sorted(n["metadata"]["name"] for n in listed.get("items") or [])
            self.notes["scope"] = "you may not list FineTuneJobs cluster-wide: showing the namespaces where you may"
        except CliError:
            candidates = [self.cluster.namespace]
            self.notes["scope"] = (
                f"you may list neither FineTuneJobs cluster-wide nor namespaces: showing namespace "
                f'"{self.cluster.namespace}" (the kubeconfig context\'s; -n adds others)'
            )
        scopes = [n for n in candidates if not self._may_list(n)]
        if not scopes:
            self.notes["scope"] = "you may not list FineTuneJobs in any namespace (" + reason + ")"
        return scopes

    # ------------------------------------------------------------------------------------- watches (threads)

    def _post(self, fn, *args: Any) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def _watch(self, source: str, scope: str | None, list_fn, args: tuple, kwargs: dict) -> None:
        """List, then watch from the list's resourceVersion; relist after 410 Gone; back off on errors. Runs in
        its own thread until the dashboard stops."""
        kubernetes = self.cluster._kubernetes
        resource_version = None
        backoff = 1.0
        note = f"{source}:{scope or '*'}"
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    response = list_fn(*args, **kwargs, _preload_content=False, _request_timeout=60)
                    listed = json.loads(response.data)
                    resource_version = listed["metadata"].get("resourceVersion")
                    self._post(self._synced, source, scope, listed.get("items") or [])
                    self._post(self._clear_note, note)
                watch = kubernetes.watch.Watch()
                # The server ends the watch after WATCH_SECONDS; the read timeout only catches a connection that died.
                for event in watch.stream(
                    list_fn,
                    *args,
                    **kwargs,
                    resource_version=resource_version,
                    timeout_seconds=WATCH_SECONDS,
                    deserialize=False,
                    _request_timeout=(30, WATCH_SECONDS + 60),
                ):
                    obj = event.get("object") or {}
                    resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._post(self._changed, source, event["type"], obj)
                    if self.stopping.is_set():
                        watch.stop()
                        break
                backoff = 1.0
            except kubernetes.client.ApiException as err:
                resource_version = None
                if err.status == 410:
                    continue
                what = "FineTuneJobs" if source == "jobs" else "their Events"
                self._post(
                    self._set_note,
                    note,
                    describe_api_error(err, f"{what} in " + (f'namespace "{scope}"' if scope else "all namespaces")),
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 60.0)
            except Exception as err:  # noqa: BLE001 - the API server went away: say so, retry
                resource_version = None
                self._post(self._set_note, note, self.cluster.unreachable(err))
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def start_watches(self) -> None:
        """Find the scopes (blocking calls: in a thread), then one FineTuneJob watch and one Event watch each."""
        try:
            self.scopes = self.find_scopes()
        except CliError as err:
            self._post(self._set_note, "scope", str(err))
            return
        self._post(self._broadcast, "scope", self._scope_info())
        custom, core = self.cluster.custom, self.cluster.core
        events_selector = {"field_selector": f"involvedObject.kind={KIND}"}
        for scope in self.scopes:
            if scope is None:
                watches = [
                    ("jobs", custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL), {}),
                    ("events", core.list_event_for_all_namespaces, (), events_selector),
                ]
            else:
                watches = [
                    ("jobs", custom.list_namespaced_custom_object, (GROUP, VERSION, scope, PLURAL), {}),
                    ("events", core.list_namespaced_event, (scope,), events_selector),
                ]
            for source, fn, args, kwargs in watches:
                threading.Thread(
                    target=self._watch,
                    args=(source, scope, fn, args, kwargs),
                    daemon=True,
                    name=f"watch-{source}-{scope or 'all'}",
                ).start()

    # ------------------------------------------------------------------------------------- state (event loop)

    def _scope_info(self) -> dict:
        return {
            "scopes": ["*" if s is None else s for s in self.scopes],
            "notes": sorted(set(self.notes.values())),
            "host": self.cluster.host,
        }

    def _set_note(self, source: str, text: str) -> None:
        if self.notes.get(source) != text:
            self.notes[source] = text
            self._broadcast("scope", self._scope_info())

    def _clear_note(self, source: str) -> None:
        if self.notes.pop(source, None) is not None:
            self._broadcast("scope", self._scope_info())

    def _synced(self, source: str, scope: str | None, items: list[dict]) -> None:
        if source == "jobs":
            present = {key_of(o) for o in items}
            for key in [k for k in self.jobs if (scope is None or k[0] == scope) and k not in present]:
                self._changed("jobs", "DELETED", self.jobs[key])
        for obj in items:
            self._changed(source, "ADDED", obj)

    def _changed(self, source: str, kind: str, obj: dict) -> None:
        if source == "events":
            self._event_changed(kind, obj)
            return
        key = key_of(obj)
        if kind == "DELETED":
            self.jobs.pop(key, None)
            self.events.pop(key, None)
            curves = self.curves.pop(key, None)
            if curves and curves.later:
                curves.later.cancel()
            self._broadcast("deleted", {"namespace": key[0], "name": key[1]})
            return
        old = self.jobs.get(key)
        if old is not None and old["metadata"].get("uid") != obj["metadata"].get("uid"):
            self.curves.pop(key, None)  # deleted and created again under the same name: another run
            self.events.pop(key, None)
        self.jobs[key] = obj
        curves = self.curves.setdefault(key, Curves())
        status = obj.get("status") or {}
        step, loss = (status.get("progress") or {}).get("step"), (status.get("metrics") or {}).get("loss")
        if isinstance(step, int) and isinstance(loss, (int, float)) and step > curves.last_step():
            curves.live[step] = float(loss)
        self._broadcast("job", self.job_row(key))
        self._maybe_read(key)

    def _event_changed(self, kind: str, event: dict) -> None:
        involved = event.get("involvedObject") or {}
        key = (event["metadata"].get("namespace") or involved.get("namespace") or "", involved.get("name") or "")
        kept = self.events.setdefault(key, {})
        uid = event["metadata"].get("uid") or event["metadata"]["name"]
        if kind == "DELETED":
            kept.pop(uid, None)
        else:
            kept[uid] = event
            if len(kept) > EVENTS_KEPT:
                for old in sorted(kept.values(), key=event_time)[: len(kept) - EVENTS_KEPT]:
                    kept.pop(old["metadata"].get("uid") or old["metadata"]["name"], None)
        self._broadcast("event", {"namespace": key[0], "name": key[1], "event": event_row(event)})

    def _broadcast(self, kind: str, data: Any) -> None:
        message = sse(kind, data)
        for client in list(self.clients):
            client.send(message)
            if client.dropped:
                self.clients.discard(client)

    # ------------------------------------------------------------------------------------- curves

    def _wants_read(self, key: Key) -> bool:
        ftj, curves = self.jobs.get(key), self.curves.get(key)
        if ftj is None or curves is None or curves.reading:
            return False
        status = ftj.get("status") or {}
        if not status.get("progress") and not (status.get("output") or {}).get("metricsUri"):
            return False  # never trained: no metrics.jsonl to read
        if curves.read_finished:
            return False
        step = (status.get("progress") or {}).get("step") or 0
        return curves.read_step != step or is_finished(ftj)

    def _maybe_read(self, key: Key) -> None:
        if not self._wants_read(key):
            return
        curves = self.curves[key]
        wait = curves.read_at + self.refresh_seconds - time.monotonic()
        if wait > 0:
            if curves.later is None:
                curves.later = self.loop.call_later(wait, self._read_later, key)
            return
        curves.reading = True
        ftj = self.jobs[key]
        finished = is_finished(ftj)
        step = ((ftj.get("status") or {}).get("progress") or {}).get("step") or 0
        future = self.loop.run_in_executor(self.readers, self._read_metrics, ftj)
        future.add_done_callback(lambda f: self._read_done(key, ftj["metadata"].get("uid"), step, finished, f))

    def _read_later(self, key: Key) -> None:
        curves = self.curves.get(key)
        if curves is not None:
            curves.later = None
            self._maybe_read(key)

    def _read_metrics(self, ftj: dict) -> tuple[list[dict], str]:
        from kubetune.usercli.outputs import read_metrics

        try:
            return read_metrics(ftj, self.cluster, self.s3_endpoint), ""
        except CliError as err:
            return [], str(err)
        except Exception as err:  # noqa: BLE001 - shown on the page, never a dead dashboard
            return [], f"{type(err).__name__}: {err}"

    def _read_done(self, key: Key, uid: str | None, step: int, finished: bool, future) -> None:
        curves = self.curves.get(key)
        ftj = self.jobs.get(key)
        if curves is None or ftj is None or ftj["metadata"].get("uid") != uid:
            return
        records, error = future.result()
        curves.reading = False
        curves.read_at = time.monotonic()
        curves.read_step = step
        curves.read_finished = finished  # a finished job's file is read once (after an error too: no retry loop)
        curves.error = error
        if records or not error:
            curves.records = records
            last = curves.last_step()
            curves.live = {s: v for s, v in curves.live.items() if s > last}
        self._broadcast("job", self.job_row(key))
        self._broadcast("metrics", {"namespace": key[0], "name": key[1]})
        self._maybe_read(key)  # the step moved on while this read ran

    # ------------------------------------------------------------------------------------- views

    def job_row(self, key: Key) -> dict:
        row = summarize(self.jobs[key])
        curves = self.curves.get(key) or Curves()
        row["spark"] = spark(curves.points())
        row["metricsError"] = curves.error
        return row

    def job_detail(self, key: Key) -> dict:
        ftj = self.jobs[key]
        uid = ftj["metadata"].get("uid")
        events = [
            e
            for e in (self.events.get(key) or {}).values()
            if (e.get("involvedObject") or {}).get("uid") in (None, uid)
        ]
        from kubetune.usercli.outputs import locate

        outputs = locate(ftj)
        return {
            "summary": self.job_row(key),
            "conditions": (ftj.get("status") or {}).get("conditions") or [],
            "events": [event_row(e) for e in sorted(events, key=event_time)],
            "spec": yaml.safe_dump(ftj.get("spec") or {}, sort_keys=False),
            "outputs": {
                "metrics": outputs.metrics_uri,
                "model": outputs.model_uri,
                "tensorboard": outputs.tensorboard_uri,
                "checkpoints": outputs.checkpoints_uri,
            },
        }

    # ------------------------------------------------------------------------------------- HTTP

    @aiohttp.web.middleware
    async def guard(self, request: aiohttp.web.Request, handler):
        host = request.host.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            return aiohttp.web.Response(status=421, text="this dashboard answers only on 127.0.0.1")
        if request.query.get("token") == self.token:
            rest = {k: v for k, v in request.query.items() if k != "token"}
            response = aiohttp.web.HTTPFound(request.rel_url.with_query(rest))
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            return response
        if not secrets.compare_digest(request.cookies.get(COOKIE, ""), self.token):
            return aiohttp.web.Response(
                status=403,
                text="open the address `kubetune dashboard` printed (it carries the token of this dashboard)",
            )
        return await handler(request)

    async def index(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def snapshot(self) -> dict:
        return {"jobs": [self.job_row(k) for k in sorted(self.jobs)], **self._scope_info()}

    async def state(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self.snapshot())

    async def job(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.jobs:
            raise aiohttp.web.HTTPNotFound(text=f"no {KIND} {key[0]}/{key[1]} among those you can see")
        return aiohttp.web.json_response(self.job_detail(key))

    async def metrics(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.jobs:
            raise aiohttp.web.HTTPNotFound(text=f"no {KIND} {key[0]}/{key[1]} among those you can see")
        curves = self.curves.setdefault(key, Curves())
        return aiohttp.web.json_response({"points": curves.points(), "error": curves.error, "reading": curves.reading})

    async def stream(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """Server-sent events: the whole state first, then every change, in the order the watches saw them."""
        response = aiohttp.web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        client = Client()
        client.send(sse("state", self.snapshot()))
        self.clients.add(client)
        try:
            while not (client.dropped and client.queue.empty()) and not self.stopping.is_set():
                try:
                    message = await asyncio.wait_for(client.queue.get(), timeout=15)
                except TimeoutError:
                    message = ": keep-alive\n\n"
                await response.write(message.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(client)
        return response

    def app(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application(middlewares=[self.guard])
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_get("/api/jobs/{namespace}/{name}", self.job)
        app.router.add_get("/api/jobs/{namespace}/{name}/metrics", self.metrics)
        return app

    async def run(self, port: int, open_browser: bool = False, started=None) -> None:
        self.loop = asyncio.get_running_loop()
        runner = aiohttp.web.AppRunner(self.app(), handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise CliError(f"cannot listen on 127.0.0.1:{port} ({err.strerror}): --port 0 picks a free port") from None
        self.port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{self.port}/?token={self.token}"
        print(f"kubetune dashboard: {url}", flush=True)
        print(f"  (FineTuneJobs of {self.cluster.host}, read with your kubeconfig; Ctrl-C stops)", flush=True)
        threading.Thread(target=self.start_watches, daemon=True, name="dashboard-scopes").start()
        if open_browser:
            webbrowser.open(url)
        if started is not None:
            started(url)
        try:
            await asyncio.Event().wait()
        finally:
            self.stopping.set()
            await runner.cleanup()
            self.readers.shutdown(wait=False, cancel_futures=True)


def event_row(event: dict) -> dict:
    return {
        "type": event.get("type") or "",
        "reason": event.get("reason") or "",
        "message": event.get("message") or "",
        "time": event_time(event),
        "count": event.get("count") or 1,
    }


def serve(
    cluster: Cluster,
    namespaces: list[str] | None = None,
    port: int = 8470,
    open_browser: bool = False,
    s3_endpoint: str | None = None,
    refresh_seconds: float = 10.0,
) -> int:
    dashboard = Dashboard(cluster, namespaces, s3_endpoint, refresh_seconds)
    try:
        asyncio.run(dashboard.run(port, open_browser))
    except KeyboardInterrupt:
        pass
    return 0
