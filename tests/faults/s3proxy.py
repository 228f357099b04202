"""A fault-injecting HTTP proxy for S3 tests: sits between boto3 and moto's server and, for a fraction
of requests, drops the connection (before an answer, or half-way through reading an upload), answers
500 / 503 with an S3 error body, cuts a response body short, or answers slowly.

Threaded and small on purpose: one request per connection turn, bodies read by Content-Length or
chunked framing, forwarded with http.client. Every decision comes from one seeded RNG, so a failing
run can be replayed; every injected fault is counted (`faults`), so the suite can report them.
`rules` are checked before the random faults: a rule that matches a request decides its fate
(e.g. "slow down every PUT of checkpoints/step-6/" for a test that must catch an upload half-way).
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class Rule:
    """`action` for requests where `match(method, path)`: "slow" (sleep `delay` first), "drop", "500",
    "503", "pass"; `on_match` is called (method, path) before the action (a test's trigger)."""

    match: Callable[[str, str], bool]
    action: str
    delay: float = 0.0
    on_match: Callable[[str, str], None] | None = None


@dataclass
class FaultPlan:
    drop: float = 0.0  # connection closed with no answer (half-way through an upload's body when it has one)
    error: float = 0.0  # 500 or 503
    truncate: float = 0.0  # headers and half the body, then the connection closes (GETs with a body only)
    slow: float = 0.0  # answer after `slow_seconds`
    slow_seconds: float = 0.3
    down: bool = False  # every request dropped: S3 unreachable


@dataclass
class S3FaultProxy:
    upstream: str
    seed: int = 0
    plan: FaultPlan = field(default_factory=FaultPlan)
    rules: list[Rule] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        parts = urlsplit(self.upstream)
        self._upstream = (parts.hostname, parts.port)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up: expected here
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def injected(self) -> int:
        return sum(v for k, v in self.faults.items() if k != "pass")

    # ------------------------------------------------------------------------------------- decisions

    def _decide(self, method: str, path: str) -> tuple[str, float]:
        for rule in list(self.rules):
            if rule.match(method, path):
                if rule.on_match is not None:
                    rule.on_match(method, path)
                return rule.action, rule.delay
        plan = self.plan
        if plan.down:
            return "drop", 0.0
        with self._lock:
            roll = self._rng.random()
            slow = self._rng.random() < plan.slow
        if roll < plan.drop:
            return "drop", 0.0
        roll -= plan.drop
        if roll < plan.error:
            return ("500" if self._rng.random() < 0.5 else "503"), 0.0
        roll -= plan.error
        if roll < plan.truncate and method == "GET":
            return "truncate", 0.0
        return ("slow", plan.slow_seconds) if slow else ("pass", 0.0)

    # ------------------------------------------------------------------------------------- serving

    @staticmethod
    def _read_body(handler: BaseHTTPRequestHandler, limit: int | None = None) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body
                body += handler.rfile.read(size)
                handler.rfile.readline()
                if limit is not None and len(body) >= limit:
                    return body
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length if limit is None else min(length, limit))

    def _count(self, kind: str, method: str) -> None:
        with self._lock:
            self.faults[kind] += 1
            self.requests[method] += 1

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        action, delay = self._decide(method, path)
        if action == "drop":
            self._count("drop", method)
            length = int(handler.headers.get("Content-Length") or 0)
            if length > 1:
                self._read_body(handler, limit=length // 2)  # the upload is cut off half-way
            self._abort(handler)
            return
        body = self._read_body(handler)
        if action in ("500", "503"):
            self._count(action, method)
            code, message = S3_ERRORS[int(action)]
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
            ).encode()
            handler.send_response(int(action))
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if action == "slow":
            self._count("slow", method)
            time.sleep(delay)
        elif action == "truncate":
            self._count("truncate", method)
        else:
            self._count("pass", method)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if action == "truncate" and method == "GET" and len(data) > 1:
            handler.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            self._abort(handler)
            return
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and (key.lower() != "content-length" or method == "HEAD"):
                handler.send_header(key, value)
        if method != "HEAD":
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)

    @staticmethod
    def _abort(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        try:
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
