"""A real HTTP server on loopback that answers as Redmine's /mail_handler does (recorded)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes, urlsplit

FORBIDDEN = b"Access denied. Incoming emails WS is disabled or key is invalid."


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, list[bytes]] = field(default_factory=dict)
    client_port: int = 0  # tells whether requests shared one connection

    def field(self, name: str) -> bytes:
        return self.form[name][0]


def parse_form(data: bytes) -> dict[str, list[bytes]]:
    """application/x-www-form-urlencoded → fields, values kept as exact bytes."""
    form: dict[str, list[bytes]] = {}
    for pair in filter(None, data.split(b"&")):
        name, _, value = pair.partition(b"=")
        form.setdefault(_unquote(name).decode(), []).append(_unquote(value))
    return form


def _unquote(part: bytes) -> bytes:
    return unquote_to_bytes(part.replace(b"+", b" "))


# status, body, seconds to wait before answering
Answer = tuple[int, bytes, float]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (our timeout tests) is expected, not an error to print."""


class FakeRedmine:
    """Records every request; ``answer`` decides the reply (default: Redmine's 201)."""

    def __init__(self, key: str = "s3cret-key") -> None:
        self.key = key
        self.requests: list[Request] = []
        self.answer: Callable[[Request], Answer] = self._redmine
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def emails(self) -> list[bytes]:
        return [r.field("email") for r in self.requests if r.method == "POST"]

    def _redmine(self, request: Request) -> Answer:
        key = request.form.get("key", [b""])[0].decode()
        if key != self.key:
            return 403, FORBIDDEN, 0
        return (201 if request.method == "POST" else 200), b"", 0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                query = urlsplit(self.path).query.encode()
                form = parse_form(body if self.command == "POST" else query)
                request = Request(self.command, urlsplit(self.path).path,
                                  dict(self.headers.items()), body, form,
                                  self.client_address[1])
                fake.requests.append(request)
                status, reply, delay = fake.answer(request)
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = _serve

        return Handler
