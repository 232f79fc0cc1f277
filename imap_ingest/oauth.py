"""Access tokens for XOAUTH2 and OAUTHBEARER logins: where they come from, and one cache per
account that all its connections share.

    Tokens               cached until shortly before expiry; refresh() after a refusal
    ├── RefreshTokenFlow  POST token_url grant_type=refresh_token; a rotated token written back
    ├── ClientCredentials Microsoft app-only tokens through MSAL
    └── TokenCommand      a program that prints a token

Every requests, MSAL and subprocess error is turned here into AuthFailed (refused: a person
must act) or ConnectionLost (the provider unreachable or in trouble: try again later). Every
token is handed to the log redactor as soon as it is seen, and no error text carries one.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msal
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from . import token_file
from .config import Account, OAuth2
from .errors import AuthFailed, ConnectionLost
from .logs import redact
from .urls import origin

log = logging.getLogger(__name__)

# A token is renewed this long before it expires (half its lifetime when that is shorter),
# so that a login never presents one that runs out on the way.
EXPIRY_MARGIN = 300.0
# token_command does not say how long its token lasts: ask it again after this long (its
# tokens last an hour at Microsoft and Google; a refused one is asked for again at once).
COMMAND_TOKEN_TTL = 300.0
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    renew_at: float  # time.time() from which it is renewed before use

    @classmethod
    def lasting(cls, value: str, expires_in: float) -> Token:
        return cls(value, time.time() + expires_in - min(EXPIRY_MARGIN, expires_in / 2))


class Source(Protocol):
    def fetch(self) -> Token: ...


class Tokens:
    """One account's access token, shared by all its connections: fetched once, renewed
    shortly before it expires, and at most once however many connections saw it refused."""

    def __init__(self, account: Account, source: Source | None = None) -> None:
        self.account = account.name
        self._source = source or _source_for(account)
        self._token: Token | None = None
        # Held while fetching: the other connections wait for that token, not a second one.
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._token.renew_at:
                self._token = None
                self._token = self._fetch()
            return self._token.value

    def refresh(self, refused: str) -> str:
        """A new token after the server refused ``refused``, unless another connection
        has already replaced it."""
        with self._lock:
            if self._token is None or self._token.value == refused:
                self._token = None
                self._token = self._fetch()
            return self._token.value

    def _fetch(self) -> Token:
        token = self._source.fetch()
        redact.track(f"{self.account}/access", token.value)
        log.debug("account %s: new access token, renewed in %.0f s", self.account,
                  token.renew_at - time.time())
        return token


def _source_for(account: Account) -> Source:
    if account.token_command is not None:
        return TokenCommand(account.name, account.token_command, account.timeout)
    assert account.oauth2 is not None  # checked by Account._token_source_matches_auth
    if account.oauth2.flow == "client_credentials":
        return ClientCredentials(account.name, account.oauth2)
    return RefreshTokenFlow(account.name, account.oauth2)


def refused(account: str, reason: str) -> AuthFailed:
    return AuthFailed(redact(reason), account=account)


def unreachable(account: str, reason: str) -> ConnectionLost:
    return ConnectionLost(redact(f"token endpoint: {reason}"), account=account)


def describe(answer: dict[str, Any]) -> str:
    """An OAuth2 error answer in one line: ``error: error_description``."""
    text = str(answer.get("error"))
    if answer.get("error_description"):
        text += f": {str(answer['error_description']).splitlines()[0][:300]}"
    return text


class Session(requests.Session):
    """HTTP to a provider: its CA (``ca_file``) and timeout on every request. requests would
    let REQUESTS_CA_BUNDLE win over a session's own ``verify``; passed per request, it can't."""

    def __init__(self, oauth2: OAuth2) -> None:
        super().__init__()
        self.verify = str(oauth2.ca_file) if oauth2.ca_file else True
        self.timeout = oauth2.timeout
        self.headers["Accept"] = "application/json"

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("timeout", self.timeout)
        # A 307/308 would carry the refresh token and client secret to wherever it points,
        # plain http or another host: the configured endpoint is the only one.
        kwargs["allow_redirects"] = False
        return super().request(*args, **kwargs)


class Endpoint:
    """A provider's token and device endpoints, as one account reaches them: POST a form,
    get a JSON object. Errors answered in OAuth2's terms come back as values (``error``)."""

    def __init__(self, account: str, oauth2: OAuth2) -> None:
        self.account = account
        self._session = Session(oauth2)

    def post(self, url: str, fields: dict[str, str]) -> dict[str, Any]:
        log.debug("account %s: POST %s (%s)", self.account, url,
                  fields.get("grant_type", "device authorization"))
        try:
            response = self._session.post(url, data=fields)
        except requests.RequestException as exc:
            raise unreachable(self.account, f"{origin(url)}: {_reason(exc)}") from None
        status = response.status_code
        if 300 <= status < 400:
            raise refused(self.account, f"{origin(url)} answered {status}, a redirect: not "
                          "followed, as it would take the credentials along; configure the "
                          "endpoint it points to")
        if status >= 500 or status == 429:
            raise unreachable(self.account, f"{origin(url)} answered {status}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise unreachable(self.account, f"{origin(url)} answered {status} without a "
                              "JSON object")
        if status != 200 and "error" not in answer:
            answer["error"] = f"HTTP {status}"
        return answer

    def close(self) -> None:
        self._session.close()


def _reason(exc: requests.RequestException) -> str:
    """What went wrong, in a few words: the kind of error and its innermost cause."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    detail = getattr(cause, "reason", None) or str(cause)
    return f"{type(exc).__name__} ({str(detail)[:200]})"


def access_token(account: str, answer: dict[str, Any], what: str) -> Token:
    """The access token of a token endpoint's answer; AuthFailed for a refusal."""
    value = answer.get("access_token")
    if "error" in answer or not isinstance(value, str) or not value:
        raise refused(account, f"{what} refused: "
                      + (describe(answer) if "error" in answer else "no access_token"))
    redact.track(f"{account}/access", value)
    try:
        expires_in = float(answer.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires_in = 3600.0
    return Token.lasting(value, expires_in)


class RefreshTokenFlow:
    """RFC 6749 §6: the stored refresh token buys an access token; when the provider rotates
    it, the new one replaces the file before the access token is used."""

    def __init__(self, account: str, oauth2: OAuth2) -> None:
        assert oauth2.refresh_token_file is not None  # checked by OAuth2._complete_for_its_flow
        self.account, self.oauth2, self.path = account, oauth2, oauth2.refresh_token_file
        self._endpoint = Endpoint(account, oauth2)

    def fetch(self) -> Token:
        # Read every time: `imap-ingest auth login` may have replaced it meanwhile.
        try:
            stored = token_file.read(self.path)
        except token_file.TokenFileError as exc:
            raise refused(self.account, f"no refresh token: {exc}; run `imap-ingest auth "
                          f"login {self.account}`") from None
        redact.track(f"{self.account}/refresh", stored.refresh_token)
        answer = self._endpoint.post(self.oauth2.effective_token_url,
                                     refresh_fields(self.oauth2, stored.refresh_token))
        token = access_token(self.account, answer, "token refresh")
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != stored.refresh_token:
            store(self.account, self.path, answer, rotated)
        return token


def refresh_fields(oauth2: OAuth2, refresh_token: str) -> dict[str, str]:
    """The form of a refresh request. Google takes no scope there (the grant has it);
    Microsoft wants it, and the others may."""
    fields = {"grant_type": "refresh_token", "client_id": oauth2.client_id,
              "refresh_token": refresh_token}
    if oauth2.provider != "google" and oauth2.effective_scope:
        fields["scope"] = oauth2.effective_scope
    return client_authentication(oauth2, fields)


def client_authentication(oauth2: OAuth2, fields: dict[str, str]) -> dict[str, str]:
    """``fields`` plus client_secret when there is one (RFC 6749 §2.3.1, in the body)."""
    if oauth2.secret is not None:
        return {**fields, "client_secret": oauth2.secret.get_secret_value()}
    return fields


def store(account: str, path: Path, answer: dict[str, Any], refresh_token: str) -> None:
    """Write a refresh token the provider just gave; AuthFailed when it cannot be kept, as
    the provider may already have retired the one before."""
    redact.track(f"{account}/refresh", refresh_token)
    try:
        token_file.write(path, token_file.StoredToken.from_answer(answer, refresh_token))
    except OSError as exc:
        raise refused(account, f"cannot write the new refresh token to {path}: "
                      f"{exc.strerror}") from None
    log.info("account %s: new refresh token written to %s", account, path)


class ClientCredentials:
    """Microsoft's client credentials flow through MSAL: an app-only token for a mailbox the
    app was given in Exchange (Add-MailboxPermission)."""

    def __init__(self, account: str, oauth2: OAuth2) -> None:
        self.account, self.oauth2 = account, oauth2
        self._app: msal.ConfidentialClientApplication | None = None

    def fetch(self) -> Token:
        try:
            app = self._application()
            # Our cache decides when to ask; MSAL's would hand back a token just refused.
            app.remove_tokens_for_client()
            result = app.acquire_token_for_client(scopes=[self.oauth2.effective_scope])
        except requests.RequestException as exc:
            raise unreachable(self.account, _reason(exc)) from None
        except ValueError as exc:  # MSAL: the authority's discovery failed (tenant unknown)
            raise refused(self.account, f"client credentials: {exc}") from None
        return access_token(self.account, result, "client credentials")

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            oauth2 = self.oauth2
            secret = oauth2.secret
            credential = (secret.get_secret_value() if secret is not None
                          else self._certificate())
            self._app = msal.ConfidentialClientApplication(
                oauth2.client_id, client_credential=credential,
                authority=oauth2.effective_authority,
                # The authority is configured, not guessed: no instance discovery round trip.
                instance_discovery=False, http_client=Session(oauth2))
        return self._app

    def _certificate(self) -> dict[str, str]:
        assert self.oauth2.certificate_file is not None  # checked by OAuth2
        try:
            text = self.oauth2.certificate_file.read_text(encoding="ascii")
        except (OSError, ValueError) as exc:
            raise refused(self.account, f"cannot read certificate_file: {exc}") from None
        blocks = {match[1]: match[0] for match in _PEM.finditer(text)}
        key = next((block for kind, block in blocks.items() if kind.endswith("PRIVATE KEY")),
                   None)
        if key is None or "CERTIFICATE" not in blocks:
            raise refused(self.account, f"{self.oauth2.certificate_file} needs a PRIVATE KEY "
                          "and a CERTIFICATE in PEM")
        try:
            rsa = isinstance(load_pem_private_key(key.encode(), None), RSAPrivateKey)
        except (ValueError, TypeError) as exc:  # encrypted, or not a key
            raise refused(self.account, f"{self.oauth2.certificate_file}: {exc}") from None
        if not rsa:
            raise refused(self.account, f"{self.oauth2.certificate_file} needs an RSA private "
                          "key: Microsoft Entra takes RSA certificates only")
        # MSAL signs its assertion with the key, naming the certificate by its SHA-256.
        return {"private_key": key, "public_certificate": blocks["CERTIFICATE"]}


class TokenCommand:
    """A program that prints an access token on its first line of output (getmail6's
    password_command, mutt_oauth2.py, oama)."""

    def __init__(self, account: str, argv: list[str], timeout: float) -> None:
        self.account, self.argv, self.timeout = account, argv, timeout

    def fetch(self) -> Token:
        try:
            done = subprocess.run(self.argv, capture_output=True, text=True, check=False,
                                  stdin=subprocess.DEVNULL, timeout=self.timeout)
        except OSError as exc:
            raise refused(self.account, f"token_command: cannot run {self.argv[0]}: "
                          f"{exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise refused(self.account, f"token_command did not finish within "
                          f"{self.timeout:.0f} s") from None
        lines = done.stdout.strip().splitlines()
        if lines:
            redact.track(f"{self.account}/access", lines[0].strip())
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()[-1:]
            raise refused(self.account, f"token_command exited with status {done.returncode}"
                          + (f": {said[0][:300]}" if said else ""))
        if not lines:
            raise refused(self.account, "token_command printed no token")
        return Token(lines[0].strip(), time.time() + COMMAND_TOKEN_TTL)
