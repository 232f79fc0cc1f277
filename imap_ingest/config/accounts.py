"""IMAP and POP3 accounts, and where their OAuth2 tokens come from, with each provider's
endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, FilePath, SecretStr, ValidationInfo, field_validator, model_validator

from ..message import RECIPIENT_HEADERS
from .folders import Folder
from .values import (
    Duration,
    HttpsUrl,
    Model,
    Secret,
    SecretFromEnv,
    SecretFromFile,
    WithSecret,
    is_loopback,
    pick_secret,
)

_MICROSOFT = "https://login.microsoftonline.com"
_GOOGLE = "https://oauth2.googleapis.com"
# What each provider's refresh-token flow asks for; client credentials ask for .default.
_SCOPES = {"microsoft": "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access",
           "google": "https://mail.google.com/"}


class OAuth2(Model):
    """Where an account's access tokens come from: a stored refresh token (any provider), or
    Microsoft's client credentials (app-only access, through MSAL)."""

    provider: Literal["microsoft", "google", "generic"]
    flow: Literal["refresh_token", "client_credentials"] = "refresh_token"
    client_id: str
    client_secret: Secret | None = None
    client_secret_file: SecretFromFile | None = None
    client_secret_env: SecretFromEnv | None = None
    certificate_file: FilePath | None = None  # client credentials: PEM with key and certificate
    tenant: str | None = None  # Microsoft: the directory (tenant) id or domain
    refresh_token_file: Path | None = None  # JSON, written back (mode 0600) on rotation
    scope: str | None = None  # space-separated; unset: the provider's IMAP scope
    # Endpoints; unset: the provider's. Set for generic, sovereign clouds, or a local test.
    token_url: HttpsUrl | None = None
    device_url: HttpsUrl | None = None
    authorize_url: HttpsUrl | None = None
    authority: HttpsUrl | None = None  # client credentials: MSAL's authority URL
    ca_file: FilePath | None = None  # trust this CA for the endpoints
    timeout: Duration = 30.0

    @model_validator(mode="after")
    def _complete_for_its_flow(self) -> OAuth2:
        secret = pick_secret(self, "client_secret")
        if self.flow == "client_credentials":
            if self.provider != "microsoft":
                raise ValueError("flow: client_credentials is for provider: microsoft (MSAL)")
            if self.tenant is None and self.authority is None:
                raise ValueError("client_credentials needs tenant: the directory (tenant) id")
            if (secret is None) == (self.certificate_file is None):
                raise ValueError("give one of client_secret, client_secret_file, "
                                 "client_secret_env, certificate_file")
            return self
        if self.certificate_file is not None:
            raise ValueError("certificate_file goes with flow: client_credentials")
        if self.refresh_token_file is None:
            raise ValueError("the refresh_token flow needs refresh_token_file (written by "
                             "`imap-ingest auth login`)")
        if self.provider == "generic" and self.token_url is None:
            raise ValueError("provider: generic needs token_url")
        if self.provider == "google" and secret is None:
            raise ValueError("Google's token endpoint needs client_secret (or _file, _env), "
                             "even for a desktop or TV client")
        return self

    @property
    def secret(self) -> SecretStr | None:
        return pick_secret(self, "client_secret")

    @property
    def _microsoft(self) -> str:
        return f"{_MICROSOFT}/{self.tenant or 'organizations'}/oauth2/v2.0"

    @property
    def effective_token_url(self) -> str:
        default = {"microsoft": f"{self._microsoft}/token", "google": f"{_GOOGLE}/token"}
        url = self.token_url or default.get(self.provider)
        assert url is not None  # generic: checked by _complete_for_its_flow
        return url

    @property
    def effective_device_url(self) -> str | None:
        default = {"microsoft": f"{self._microsoft}/devicecode", "google": f"{_GOOGLE}/device/code"}
        return self.device_url or default.get(self.provider)

    @property
    def effective_authorize_url(self) -> str | None:
        default = {"microsoft": f"{self._microsoft}/authorize",
                   "google": "https://accounts.google.com/o/oauth2/v2/auth"}
        return self.authorize_url or default.get(self.provider)

    @property
    def effective_authority(self) -> str:
        return self.authority or f"{_MICROSOFT}/{self.tenant}"

    @property
    def effective_scope(self) -> str:
        if self.scope is not None:
            return self.scope
        if self.flow == "client_credentials":
            return "https://outlook.office365.com/.default"
        return _SCOPES.get(self.provider, "")


class Account(WithSecret):
    """An IMAP account and the folders to ingest from it, or a POP3 account and its one
    folder (the maildrop)."""

    secret_name = "password"

    name: str
    protocol: Literal["imap", "pop3"] = "imap"
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    allow_insecure: bool = False
    security: Literal["ssl", "starttls", "none"] = "ssl"
    ca_file: FilePath | None = None
    verify_tls: bool = True
    username: str
    password: Secret | None = None
    password_file: SecretFromFile | None = None
    password_env: SecretFromEnv | None = None
    # password: LOGIN; xoauth2 / oauthbearer: AUTHENTICATE with a token from oauth2 or
    # token_command.
    auth: Literal["password", "xoauth2", "oauthbearer"] = "password"
    oauth2: OAuth2 | None = None
    token_command: Annotated[list[str], Field(min_length=1)] | None = None
    timeout: Duration = 60.0
    # POP3: leave every message on the server (the ledger remembers it by UIDL), or DELE
    # what the tracker accepted (or a rule discarded).
    keep: bool = True
    # Simultaneous connections the service may hold; unset: the provider's limit (budget.py).
    max_connections: Annotated[int, Field(ge=1)] | None = None
    # This mailbox's own addresses: user+EXT@domain sent to one of them gives the message
    # the sub-address EXT (RT's extension: queue, ticket or action).
    addresses: list[str] = []
    subaddress_separator: Annotated[str, Field(min_length=1, max_length=1)] = "+"
    recipient_headers: list[str] = list(RECIPIENT_HEADERS)
    folders: Annotated[list[Folder], Field(min_length=1)]

    @field_validator("security")
    @classmethod
    def _no_clear_text_off_loopback(cls, value: str, info: ValidationInfo) -> str:
        host = info.data.get("host", "")
        if value == "none" and not info.data.get("allow_insecure") and not is_loopback(host):
            raise ValueError(f"security: none would send the password in clear text to {host}; "
                             "use ssl or starttls, or set allow_insecure: true")
        return value

    def _needs_secret(self) -> bool:
        return self.auth == "password"

    @model_validator(mode="after")
    def _token_source_matches_auth(self) -> Account:
        sources = (self.oauth2 is not None) + (self.token_command is not None)
        if self.auth == "password":
            if sources:
                raise ValueError("oauth2 and token_command go with auth: xoauth2 or oauthbearer")
            return self
        if pick_secret(self, "password") is not None:
            raise ValueError("password goes with auth: password; a token login takes none")
        if sources != 1:
            raise ValueError(f"auth: {self.auth} needs a token: give one of oauth2, "
                             "token_command")
        return self

    @model_validator(mode="after")
    def _pop3_has_one_folder_and_no_others(self) -> Account:
        if self.protocol == "imap":
            if any(folder.failure_spool or folder.failure_folder for folder in self.folders):
                raise ValueError("failure_spool and failure_folder are for POP3 accounts: an "
                                 "IMAP folder has move_on_failure")
            return self
        if len(self.folders) != 1:
            raise ValueError("a POP3 account has one folder, its maildrop: give one entry "
                             "(name it INBOX) with its options")
        folder = self.folders[0]
        named = {"move_on_success": folder.move_on_success,
                 "move_on_failure": folder.move_on_failure, "loops_folder": folder.loops_folder}
        named.update({f"rules[{i}]": rule.then.move or rule.then.copy_to
                      for i, rule in enumerate(folder.rules) if rule.then})
        if used := [key for key, value in named.items() if value]:
            raise ValueError(f"POP3 has no folders to move or copy into ({', '.join(used)}): "
                             "accepted mail is deleted (keep: false) or left, refused mail is "
                             "left and recorded, and copied to failure_folder (an IMAP "
                             "account's) or failure_spool when set")
        if folder.idle:
            raise ValueError("POP3 has no IDLE: the maildrop is polled every interval")
        return self

    @property
    def uses_token(self) -> bool:
        return self.auth != "password"

    @property
    def idles(self) -> bool:
        """The protocol can announce new mail (IMAP IDLE); POP3 is polled only."""
        return self.protocol == "imap"

    @property
    def has_folders(self) -> bool:
        """The server has folders to move mail into and marks to set (IMAP); POP3 has its
        maildrop only, and the ledger remembers the rest."""
        return self.protocol == "imap"

    @property
    def effective_port(self) -> int:
        if self.protocol == "pop3":
            return self.port or (995 if self.security == "ssl" else 110)
        return self.port or (993 if self.security == "ssl" else 143)
