"""The status listener: /healthz (alive: no folder's pass stuck), /readyz (every folder
connected or backing off, and no account in auth_failed), /metrics (Prometheus). It follows
the running service across reloads.

/readyz answers in JSON with every folder's flow (flow.py) when asked for it
(``Accept: application/json`` or ``?format=json``); a stalled folder is named there and on
the plain line, but does not make the service unready: restarting it would not help.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from .config import Http
from .errors import ConfigError
from .flow import Flow

PATHS = ("/healthz", "/readyz", "/metrics")
# A probe is answered in milliseconds: a client slower than this is dropped, and no more
# than THREADS are served at once (more are hung up on; probes try again).
TIMEOUT = 5.0
THREADS = 8


class _Bounded(ThreadingHTTPServer):
    """At most ``threads`` connections handled at once; one more is closed unanswered."""

    daemon_threads = True
    request_queue_size = 64  # socketserver's 5 would drop a probe's SYN behind slow clients

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 threads: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Observed(Protocol):
    """What the listener reports on: the running service."""

    def not_ready(self) -> list[str]:
        """The folders that are not ready, each named with its state where it has one."""

    def stuck(self) -> list[str]:
        """The folders whose pass is stuck, each named with how long it has been."""

    def metrics_text(self) -> bytes:
        """The metrics in Prometheus' text format."""

    def flow(self) -> Flow:
        """Every folder's flow now."""


class StatusServer:
    def __init__(self, http: Http, *, timeout: float = TIMEOUT, threads: int = THREADS) -> None:
        self.service: Observed | None = None
        self._server = _listen(http, self._handler(timeout), threads)
        self._thread = threading.Thread(target=self._server.serve_forever, name="status",
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def serve(self, service: Observed) -> None:
        """Report on this service from now on (after a reload: the new one)."""
        self.service = service

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str, want_json: bool = False) -> tuple[int, str, bytes]:
        service = self.service
        if path == "/healthz":
            if service is not None and (stuck := service.stuck()):
                return 503, "text/plain", ("stuck: " + ", ".join(stuck) + "\n").encode()
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if service is None:
                return 503, "text/plain", b"starting\n"
            waiting = service.not_ready()
            flow = service.flow()
            code = 503 if waiting else 200
            if want_json:
                body = {"ready": not waiting, "not_ready": waiting, **flow.json()}
                return code, "application/json", json.dumps(body).encode()
            line = "not connected: " + ", ".join(waiting) if waiting else "ready"
            stalled = "; ".join(f"{f.name} {f.stalled}" for f in flow.folders if f.stalled)
            return code, "text/plain", (line + (f"; stalled: {stalled}" if stalled else "")
                                        + "\n").encode()
        if path == "/metrics" and service is not None:
            return 200, CONTENT_TYPE_LATEST, service.metrics_text()
        return 404, "text/plain", b"not found: try /healthz, /readyz or /metrics\n"

    def _handler(self, limit: float) -> type[BaseHTTPRequestHandler]:
        status = self

        class Handler(BaseHTTPRequestHandler):
            # Per connection, on every read and write: a half-open client cannot hold on.
            timeout = limit
            def log_message(self, *_: object) -> None:
                pass  # probes every few seconds would drown the log

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                want_json = ("format=json" in query.split("&")
                             or "application/json" in self.headers.get("Accept", ""))
                code, kind, body = status._answer(path, want_json)
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


class _Bounded6(_Bounded):
    address_family = socket.AF_INET6


def _listen(http: Http, handler: type[BaseHTTPRequestHandler], threads: int) -> _Bounded:
    """The listener on ``http.listen``, IPv6 for an address such as [::1]; a port that is
    taken (or an address not ours) is a ConfigError naming it."""
    host, port = http.address
    try:
        return (_Bounded6 if ":" in host else _Bounded)((host, port), handler, threads)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {http.listen}: {exc.strerror or exc}",
                          key="http.listen") from None
