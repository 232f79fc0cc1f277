"""Real HTTP servers on loopback that answer as Redmine's /mail_handler and RT's mail gateway
do (recorded answers), recording every request byte for byte."""

from __future__ import annotations

import re
import ssl
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
    filenames: dict[str, str | None] = field(default_factory=dict)  # multipart parts

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


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, list[bytes]],
                                                             dict[str, str | None]]:
    """multipart/form-data → (fields with exact bytes, each field's filename or None)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary, content_type
    form: dict[str, list[bytes]] = {}
    filenames: dict[str, str | None] = {}
    for chunk in body.split(b"--" + boundary[1].encode())[1:-1]:
        head, _, value = chunk[2:].partition(b"\r\n\r\n")
        disposition = re.search(rb'name="([^"]*)"(?:; filename="([^"]*)")?', head)
        assert disposition, head
        name = disposition[1].decode()
        form.setdefault(name, []).append(value[:-2])  # the CRLF before the next boundary
        filenames[name] = disposition[2].decode() if disposition[2] is not None else None
    return form, filenames


# status, body, seconds to wait before answering[, extra headers]
Answer = tuple[int, bytes, float] | tuple[int, bytes, float, dict[str, str]]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (our timeout tests) is expected, not an error to print."""


class RecordingServer:
    """Records every request; ``answer`` decides the reply (default: 204 No Content).
    With ``context``, it speaks HTTPS; ``port`` 0 takes a free one."""

    def __init__(self, context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.answer: Callable[[Request], Answer] = self.default
        self._server = _QuietServer(("127.0.0.1", port), self._handler())
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if context else "http"
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def default(self, request: Request) -> Answer:
        return 204, b"", 0

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
                if len(body) < length:
                    # The client died mid-upload: like a real server, process nothing.
                    self.close_connection = True
                    return
                query = urlsplit(self.path).query.encode()
                content_type = self.headers.get("Content-Type", "")
                filenames: dict[str, str | None] = {}
                if content_type.startswith("multipart/form-data"):
                    form, filenames = parse_multipart(body, content_type)
                elif content_type.startswith("application/x-www-form-urlencoded"):
                    form = parse_form(body)
                else:
                    form = parse_form(query)
                request = Request(self.command, urlsplit(self.path).path,
                                  dict(self.headers.items()), body, form,
                                  self.client_address[1], filenames)
                fake.requests.append(request)
                status, reply, delay, *extra = fake.answer(request)
                time.sleep(delay)
                self.send_response(status)
                headers = {"Content-Type": "text/plain", **(extra[0] if extra else {})}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_PATCH = do_HEAD = _serve

        return Handler


class FakeRedmine(RecordingServer):
    """Redmine's /mail_handler: 201, or 403 for a wrong key."""

    def __init__(self, key: str = "s3cret-key") -> None:
        self.key = key
        super().__init__()

    @property
    def emails(self) -> list[bytes]:
        """The mails posted (not check's key probe, a post without one)."""
        return [r.field("email") for r in self.requests
                if r.method == "POST" and "email" in r.form]

    def default(self, request: Request) -> Answer:
        key = request.form.get("key", [b""])[0].decode()
        if key != self.key:
            return 403, FORBIDDEN, 0
        if request.method == "POST" and "email" not in request.form:
            return 422, b"", 0  # MailHandler.receive fails on nil: nothing is created
        return (201 if request.method == "POST" else 200), b"", 0


class FakeRT(RecordingServer):
    """RT 5.0.3's mail gateway as recorded (reference/rt.md): queue and action checks,
    subject tags, the message part's filename trap, DevelMode's Ticket: line."""

    def __init__(self, queues: tuple[str, ...] = ("General", "Support", "Billing"),
                 plugins: tuple[str, ...] = ("correspond", "comment"),
                 devel_mode: bool = False) -> None:
        self.queues, self.plugins, self.devel_mode = queues, plugins, devel_mode
        self.tickets: dict[int, list[bytes]] = {}  # ticket → messages recorded on it
        super().__init__()

    @property
    def messages(self) -> list[bytes]:
        return [r.field("message") for r in self.requests if r.method == "POST"]

    def default(self, request: Request) -> Answer:
        if request.method == "GET":
            return 200, b"RT/5.0.3 401 Credentials required\n", 0
        if request.filenames.get("message"):
            return 200, b"not ok - Couldn't parse or find sender's address\n", 0
        form = {name: values[0].decode() for name, values in request.form.items()
                if name != "message"}
        actions = form.get("action", "correspond").split("-")
        if any(action not in self.plugins for action in actions):
            return 200, b"temporary failure - operation unsuccessful\n", 0
        message = request.field("message")
        tag = re.search(rb"^Subject:.*\[rt\.example\.net #(\d+)\]", message,
                        re.MULTILINE | re.IGNORECASE)
        ticket = int(form["ticket"]) if "ticket" in form else int(tag[1]) if tag else None
        if ticket is None and form.get("queue", "General") not in self.queues:
            return 200, b"temporary failure - operation unsuccessful\n", 0
        if ticket is not None and ticket not in self.tickets:
            return 200, b"not ok - operation unsuccessful\n", 0
        if ticket is None:
            ticket = len(self.tickets) + 1
            self.tickets[ticket] = []
        self.tickets[ticket].append(message)
        body = b"ok\n" + (f"Ticket: {ticket}\nQueue: General\n".encode()
                          if self.devel_mode else b"")
        return 200, body, 0
