"""The status listener: /healthz (alive), /readyz (every folder connected or backing off, and
no account in auth_failed), /metrics (Prometheus). It follows the running service across reloads."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

from .config import Http
from .errors import ConfigError

if TYPE_CHECKING:
    from .service import Service

PATHS = ("/healthz", "/readyz", "/metrics")


class StatusServer:
    def __init__(self, http: Http) -> None:
        self.service: Service | None = None
        self._server = _listen(http, self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="status",
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def serve(self, service: Service) -> None:
        """Report on this service from now on (after a reload: the new one)."""
        self.service = service

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        service = self.service
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if service is None:
                return 503, "text/plain", b"starting\n"
            waiting = [w.name + (" (auth_failed)" if w.auth_failed else "")
                       for w in service.workers if not w.ready]
            if waiting:
                return 503, "text/plain", ("not connected: " + ", ".join(waiting) + "\n").encode()
            return 200, "text/plain", b"ready\n"
        if path == "/metrics" and service is not None:
            return 200, CONTENT_TYPE_LATEST, service.metrics.text()
        return 404, "text/plain", b"not found: try /healthz, /readyz or /metrics\n"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        status = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass  # probes every few seconds would drown the log

            def do_GET(self) -> None:
                code, kind, body = status._answer(self.path.partition("?")[0])
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _listen(http: Http, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """The listener on ``http.listen``, IPv6 for an address such as [::1]; a port that is
    taken (or an address not ours) is a ConfigError naming it."""
    host, port = http.address
    try:
        return (_Server6 if ":" in host else _Server)((host, port), handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {http.listen}: {exc.strerror or exc}",
                          key="http.listen") from None
