"""The operators' console: a web page on its own listener (off unless ``console:`` is
configured, loopback unless told otherwise) behind the token in ``console.token_file``.

Logging in with the token gives a session cookie (HttpOnly, SameSite=Strict) and a CSRF
token tied to it; every action is a POST carrying both. Pages are in pages.py, the mail
side in mail.py; this module is the HTTP edge only.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from ..config import Config, Console
from ..errors import ConfigError, MailboxError
from ..flow import Flow
from ..health import TIMEOUT, _listen
from ..ledger import Ledger
from ..oauth import Tokens
from ..trackers import Tracker
from . import mail, pages

log = logging.getLogger(__name__)

COOKIE = "imap_ingest_console"
LATEST = 40  # messages on the page
DAY = 86400.0
_SECURITY = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
             "form-action 'self'; frame-ancestors 'none'",
             "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
             "Cache-Control": "no-store"}


class Consoled(Protocol):
    """What the console shows and acts on: the running service."""

    config: Config
    ledger: Ledger
    trackers: dict[str, Tracker]
    tokens: dict[str, Tokens]

    def flow(self) -> Flow:
        """Every folder's flow now."""


Answer = tuple[int, dict[str, str], bytes]


class ConsoleServer:
    def __init__(self, console: Console, threads: int = 4) -> None:
        self.service: Consoled | None = None
        try:
            self._token = console.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file: {exc.strerror}",
                              file=console.token_file, key="console.token_file") from None
        if len(self._token) < 16:
            raise ConfigError("the console token must be at least 16 characters",
                              file=console.token_file, key="console.token_file")
        self._sessions: dict[str, str] = {}  # session id: its CSRF token
        self._lock = threading.Lock()  # one action at a time
        self._server = _listen(console, self._handler(), threads)
        self._thread = threading.Thread(target=self._server.serve_forever, name="console",
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def serve(self, service: Consoled) -> None:
        self.service = service

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- requests ---------------------------------------------------------------------------

    def get(self, path: str, query: dict[str, str], session: str | None) -> Answer:
        csrf = self._sessions.get(session or "")
        if csrf is None or self.service is None:
            return _html(pages.login())
        service = self.service
        if path == "/":
            return _html(self._dashboard(service, csrf))
        if path in ("/message", "/raw"):
            account, folder, uid = query.get("account", ""), query.get("folder", ""), int(
                query.get("uid", "0") or 0)
            raw = mail.raw(service.config, service.ledger, service.tokens, account, folder, uid)
            if raw is None:
                return 404, {"Content-Type": "text/plain"}, b"no such message\n"
            if path == "/raw":
                return 200, {"Content-Type": "application/octet-stream",
                             "Content-Disposition": f'attachment; filename="{uid}.eml"'}, raw
            item = next((i for i in mail.set_aside(service.config, service.ledger,
                                                   service.tokens, (account, folder))
                         if (i.account, i.folder, i.uid) == (account, folder, uid)), None)
            if item is None:
                return 404, {"Content-Type": "text/plain"}, b"not set aside\n"
            return _html(pages.message(item, mail.trace(service.config, account, folder, raw),
                                       len(raw), csrf))
        return 404, {"Content-Type": "text/plain"}, b"not found\n"

    def post(self, path: str, form: dict[str, str], session: str | None) -> Answer:
        if path == "/login":
            if not hmac.compare_digest(form.get("token", "").encode(), self._token.encode()):
                log.warning("console: a login with a wrong token")
                return _html(pages.login(failed=True), 403)
            new = secrets.token_urlsafe(32)
            self._sessions[new] = secrets.token_urlsafe(32)
            return 303, {"Location": "/", "Set-Cookie": f"{COOKIE}={new}; HttpOnly; "
                         "SameSite=Strict; Path=/"}, b""
        csrf = self._sessions.get(session or "")
        if (csrf is None or self.service is None
                or not hmac.compare_digest(form.get("csrf", "").encode(), csrf.encode())):
            return 403, {"Content-Type": "text/plain"}, b"log in again\n"
        if path == "/logout":
            self._sessions.pop(session or "", None)
            return 303, {"Location": "/", "Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/"}, b""
        service = self.service
        account, folder, uid = form.get("account", ""), form.get("folder", ""), int(
            form.get("uid", "0") or 0)
        actions: dict[str, Callable[[], str]] = {
            "/retry": lambda: "; ".join(mail.do_retry(service.config, service.ledger,
                                                      service.tokens, account, folder, uid)),
            "/release": lambda: mail.do_release(service.config, service.ledger,
                                                service.trackers, service.tokens, account,
                                                folder, uid)}
        if path not in actions:
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        with self._lock:
            try:
                done = actions[path]() or "nothing to do"
            except (MailboxError, LookupError) as exc:
                done = f"not done: {exc}"
        log.info("console: %s %s/%s uid %d: %s", path[1:], account, folder, uid, done)
        return _html(self._dashboard(service, csrf, done))

    def _dashboard(self, service: Consoled, csrf: str, notice: str = "") -> bytes:
        return pages.dashboard(service.flow(), mail.set_aside(service.config, service.ledger,
                                                              service.tokens),
                               service.ledger.latest(LATEST),
                               service.ledger.hourly(time.time() - DAY), csrf, notice,
                               pages.ways(service.config))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        console = self

        class Handler(BaseHTTPRequestHandler):
            timeout = TIMEOUT

            def log_message(self, *_: object) -> None:
                pass

            def _session(self) -> str | None:
                cookie = SimpleCookie(self.headers.get("Cookie", ""))
                return cookie[COOKIE].value if COOKIE in cookie else None

            def _send(self, answer: Answer) -> None:
                code, headers, body = answer
                self.send_response(code)
                for name, value in {**_SECURITY, **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                self._send(console.get(url.path, query, self._session()))

            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), 64 * 1024)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode(
                    errors="replace")).items()}
                self._send(console.post(urlsplit(self.path).path, form, self._session()))

        return Handler


def _html(body: bytes, code: int = 200) -> Answer:
    return code, {"Content-Type": "text/html; charset=utf-8"}, body
