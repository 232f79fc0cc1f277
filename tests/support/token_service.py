"""A local OAuth2 provider for the tests, over https with a CA of its own: the token endpoint
(refresh token, client credentials, device code, authorization code with PKCE), device
authorization, OIDC discovery for MSAL, and the introspection endpoint that dovecot's oauth2
passdb asks whether a token is good."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from .redmine_server import Answer, RecordingServer, Request

GRANT_DEVICE = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class Access:
    username: str
    expires_at: float
    revoked: bool = False


@dataclass
class Pending:
    """A device code or authorization code waiting to be turned into tokens."""

    username: str
    polls_left: int = 0  # device code: answers authorization_pending this many times first
    challenge: str | None = None  # authorization code: the PKCE S256 challenge
    redirect_uri: str | None = None


class TokenService(RecordingServer):
    """Issues and checks tokens; tests arrange grants and revoke them."""

    def __init__(self, directory: Path) -> None:
        self._lock = threading.Lock()
        self.reset()
        ca = trustme.CA()
        self.ca_file = str(directory / "token-service-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        super().__init__(context)

    def reset(self) -> None:
        """Back to the defaults, with no tokens and no requests."""
        self.requests = []
        self.answer = self.default
        self.lifetime = 3600  # expires_in of access tokens
        self.rotate = True  # a refresh gives a new refresh token and retires the old one
        self.refresh_expires_in: int | None = None  # refresh_token_expires_in, as Google says
        self.client_id = "test-client"
        self.client_secret: str | None = None  # required of every token request when set
        # Client credentials: the mailbox an app-only token opens (Exchange's service principal).
        self.app_mailbox = ""
        self.refresh_tokens: dict[str, str] = {}  # live refresh token → username
        self.retired: list[str] = []  # refresh tokens replaced by rotation
        self.access: dict[str, Access] = {}
        self.pending: dict[str, Pending] = {}
        self._next_device = Pending("")

    # -- arranging ---------------------------------------------------------------------------

    def grant(self, username: str) -> str:
        """A refresh token for ``username``, as if the user had consented."""
        token = "rt-" + secrets.token_urlsafe(16)
        self.refresh_tokens[token] = username
        return token

    def mint(self, username: str) -> str:
        """An access token for ``username`` straight away (what a token helper would print)."""
        token = "at-" + secrets.token_urlsafe(16)
        self.access[token] = Access(username, time.time() + self.lifetime)
        return token

    def revoke_refresh_tokens(self, username: str) -> None:
        for token in [t for t, user in self.refresh_tokens.items() if user == username]:
            del self.refresh_tokens[token]

    def revoke_access_tokens(self, username: str) -> None:
        for access in self.access.values():
            if access.username == username:
                access.revoked = True

    def expect_device_login(self, username: str, polls: int = 1) -> None:
        """The next device code request is approved by ``username`` after ``polls`` polls."""
        self._next_device = Pending(username, polls_left=polls)

    def approve(self, username: str, challenge: str, redirect_uri: str) -> str:
        """The user consents in the browser: an authorization code for the redirect."""
        code = "code-" + secrets.token_urlsafe(8)
        self.pending[code] = Pending(username, challenge=challenge, redirect_uri=redirect_uri)
        return code

    # -- what tests look at ------------------------------------------------------------------

    def token_requests(self, grant_type: str | None = None) -> list[dict[str, str]]:
        """The form fields of each token request (of one grant type)."""
        forms = [{name: values[0].decode() for name, values in r.form.items()}
                 for r in self.requests if r.path.endswith("/token")]
        return [form for form in forms if grant_type in (None, form.get("grant_type"))]

    def issued(self) -> list[str]:
        """Every access and refresh token issued or granted so far."""
        return [*self.access, *self.refresh_tokens, *self.retired]

    # -- answering ---------------------------------------------------------------------------

    def default(self, request: Request) -> Answer:
        form = {name: values[0].decode() for name, values in request.form.items()}
        with self._lock:
            if request.path.endswith("/.well-known/openid-configuration"):
                tenant = request.path.split("/")[1]
                base = f"{self.url}/{tenant}/oauth2/v2.0"
                return _json(200, {"issuer": f"{self.url}/{tenant}/v2.0",
                                   "authorization_endpoint": f"{base}/authorize",
                                   "token_endpoint": f"{base}/token"})
            if request.path.endswith("/introspect"):
                return _json(200, self._introspect(form.get("token", "")))
            if request.path.endswith(("/device", "/devicecode")):
                return self._device(form)
            if request.path.endswith("/token"):
                return self._token(form)
        return _json(404, {"error": "not_found"})

    def _introspect(self, token: str) -> dict[str, object]:
        access = self.access.get(token)
        if access is None or access.revoked or access.expires_at < time.time():
            return {"active": False}
        return {"active": True, "username": access.username}

    def _device(self, form: dict[str, str]) -> Answer:
        if form.get("client_id") != self.client_id:
            return _json(400, {"error": "invalid_client"})
        code = "dc-" + secrets.token_urlsafe(8)
        self.pending[code] = self._next_device
        return _json(200, {"device_code": code, "user_code": "WDJB-MJHT",
                           "verification_uri": f"{self.url}/activate", "expires_in": 30,
                           "interval": 0})

    def _token(self, form: dict[str, str]) -> Answer:
        if form.get("client_id") != self.client_id or (
                self.client_secret is not None
                and form.get("client_secret") != self.client_secret
                and "client_assertion" not in form):
            return _json(401, {"error": "invalid_client",
                               "error_description": "client authentication failed"})
        grant = form.get("grant_type")
        if grant == "refresh_token":
            username = self.refresh_tokens.get(form.get("refresh_token", ""))
            if username is None:
                return _json(400, {"error": "invalid_grant",
                                   "error_description": "Token has been expired or revoked."})
            if self.rotate:
                del self.refresh_tokens[form["refresh_token"]]
                self.retired.append(form["refresh_token"])
                return self._tokens(username, refresh=True)
            return self._tokens(username, refresh=False)
        if grant == "client_credentials":
            return self._tokens(self.app_mailbox, refresh=False)
        if grant == GRANT_DEVICE:
            pending = self.pending.get(form.get("device_code", ""))
            if pending is None:
                return _json(400, {"error": "expired_token"})
            if pending.polls_left > 0:
                pending.polls_left -= 1
                return _json(400, {"error": "authorization_pending"})
            del self.pending[form["device_code"]]
            return self._tokens(pending.username, refresh=True)
        if grant == "authorization_code":
            pending = self.pending.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            if pending is None or pending.redirect_uri != form.get("redirect_uri") or (
                    _s256(verifier) != pending.challenge):
                return _json(400, {"error": "invalid_grant"})
            return self._tokens(pending.username, refresh=True)
        return _json(400, {"error": "unsupported_grant_type"})

    def _tokens(self, username: str, refresh: bool) -> Answer:
        answer: dict[str, object] = {"access_token": self.mint(username), "token_type": "Bearer",
                                     "expires_in": self.lifetime}
        if refresh:
            answer["refresh_token"] = self.grant(username)
            if self.refresh_expires_in is not None:
                answer["refresh_token_expires_in"] = self.refresh_expires_in
        return _json(200, answer)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _json(status: int, body: dict[str, object]) -> Answer:
    return status, json.dumps(body).encode(), 0, {"Content-Type": "application/json"}
