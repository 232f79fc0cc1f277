"""``imap-ingest auth login``: an account's first refresh token, obtained with a person.

Device code (RFC 8628): the person opens a URL on any device and types a short code while we
poll. Microsoft's default. Google refuses the Gmail scope in this flow.

Browser (authorization code with PKCE, RFC 7636, and a loopback redirect, RFC 8252): the
person signs in in a browser, which is sent back to http://127.0.0.1:PORT/ on this machine
(from another machine, through an SSH tunnel to that port) with a code. Google's default.

Either way the refresh token goes to the account's ``refresh_token_file`` (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .config import OAuth2
from .oauth import Endpoint, access_token, client_authentication, describe, refused, store

Say = Callable[[str], None]
GRANT_DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
BROWSER_TIMEOUT = 300.0


def device_login(account: str, oauth2: OAuth2, say: Say,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """RFC 8628: get a code, tell the person where to enter it, poll until they have."""
    assert oauth2.effective_device_url is not None  # checked by the command
    endpoint = Endpoint(account, oauth2)
    try:
        answer = endpoint.post(oauth2.effective_device_url,
                               {"client_id": oauth2.client_id, "scope": oauth2.effective_scope})
        if "error" in answer or "device_code" not in answer:
            raise refused(account, "device code refused: "
                          + (describe(answer) if "error" in answer else "no device_code"))
        # Google says verification_url, as drafts of RFC 8628 did.
        where = answer.get("verification_uri") or answer.get("verification_url")
        lifetime = float(answer.get("expires_in", 900))
        say(f"To let imap-ingest read the mail of account {account}, open\n  {where}\nand "
            f"enter the code {answer.get('user_code')} within {lifetime / 60:.0f} minutes.")
        interval = float(answer.get("interval", 5))
        deadline = time.monotonic() + lifetime
        poll = client_authentication(oauth2, {"grant_type": GRANT_DEVICE, "client_id":
                                              oauth2.client_id,
                                              "device_code": str(answer["device_code"])})
        while True:
            answer = endpoint.post(oauth2.effective_token_url, poll)
            error = answer.get("error")
            if error == "slow_down":
                interval += 5  # RFC 8628 §3.5
            elif error != "authorization_pending":
                break
            if time.monotonic() + interval > deadline:
                raise refused(account, "device login refused: the code was not entered in time")
            sleep(interval)
        _keep(account, oauth2, answer, "device login")
    finally:
        endpoint.close()


def browser_login(account: str, oauth2: OAuth2, say: Say, port: int = 0,
                  open_browser: bool = True, timeout: float = BROWSER_TIMEOUT) -> None:
    """Authorization code with PKCE: the browser brings the code back to a loopback port."""
    assert oauth2.effective_authorize_url is not None  # checked by the command
    verifier = secrets.token_urlsafe(64)  # 86 characters: RFC 7636 wants 43 to 128
    state = secrets.token_urlsafe(16)
    with _Redirect(port, state) as redirect:
        uri = f"http://127.0.0.1:{redirect.port}/"
        query = {"response_type": "code", "client_id": oauth2.client_id, "redirect_uri": uri,
                 "scope": oauth2.effective_scope, "state": state,
                 "code_challenge": _s256(verifier), "code_challenge_method": "S256"}
        if oauth2.provider == "google":  # else Google gives no refresh token
            query |= {"access_type": "offline", "prompt": "consent"}
        url = f"{oauth2.effective_authorize_url}?{urlencode(query)}"
        say(f"To let imap-ingest read the mail of account {account}, open in a browser on "
            f"this machine\n  {url}\nand sign in as the mailbox's user. From another machine, "
            f"first: ssh -L {redirect.port}:127.0.0.1:{redirect.port} THIS-HOST")
        if open_browser:
            webbrowser.open(url)
        answer = redirect.wait(timeout)
    if answer is None:
        raise refused(account, f"browser login: no answer within {timeout:.0f} s")
    if answer.get("state") != state:
        raise refused(account, "browser login: the redirect's state is not ours (a forged or "
                      "stale redirect); nothing was exchanged")
    if "error" in answer or "code" not in answer:
        raise refused(account, "browser login refused: "
                      + (describe(answer) if "error" in answer else "no code"))
    endpoint = Endpoint(account, oauth2)
    try:
        _keep(account, oauth2, endpoint.post(oauth2.effective_token_url, client_authentication(
            oauth2, {"grant_type": "authorization_code", "code": answer["code"],
                     "redirect_uri": uri, "client_id": oauth2.client_id,
                     "code_verifier": verifier})), "browser login")
    finally:
        endpoint.close()


def _keep(account: str, oauth2: OAuth2, answer: dict[str, Any], what: str) -> None:
    access_token(account, answer, what)  # AuthFailed when refused
    refresh_token = answer.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise refused(account, f"{what}: the provider gave no refresh token (Microsoft: add "
                      "offline_access to scope)")
    assert oauth2.refresh_token_file is not None  # checked by the command
    store(account, oauth2.refresh_token_file, answer, refresh_token)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _Redirect:
    """A one-shot listener on 127.0.0.1 for the browser's redirect: the first request that
    carries a code or an error is the answer; one with another state is refused."""

    def __init__(self, port: int, state: str) -> None:
        self.answer: dict[str, str] | None = None
        self._done = threading.Event()
        self._state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _Redirect:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait(self, timeout: float) -> dict[str, str] | None:
        self._done.wait(timeout)
        return self.answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        redirect = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass  # the query holds the code

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if ("code" not in query and "error" not in query) or redirect._done.is_set():
                    self._page(404, "Nothing here.")
                    return
                redirect.answer = query
                redirect._done.set()
                if query.get("state") != redirect._state:
                    self._page(400, "This sign-in is not the one imap-ingest started.")
                elif "error" in query:
                    self._page(400, f"Sign-in refused: {html.escape(query['error'])}.")
                else:
                    self._page(200, "imap-ingest has the sign-in: you can close this tab and "
                               "go back to the terminal.")

            def _page(self, status: int, text: str) -> None:
                body = f"<!doctype html><title>imap-ingest</title><p>{text}</p>".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
