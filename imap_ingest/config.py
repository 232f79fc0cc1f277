"""The configuration: a YAML file, overridden from the environment, validated by pydantic.

Environment overrides are ``IMAP_INGEST_`` followed by the key path with ``__`` between
levels; a list item is named by its index or by its ``name``:

    IMAP_INGEST_ACCOUNTS__0__PASSWORD=...          accounts[0].password
    IMAP_INGEST_ACCOUNTS__SUPPORT__FOLDERS__INBOX__INTERVAL=30s
    IMAP_INGEST_TARGETS__REDMINE__KEY=...          targets.redmine.key
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from . import conditions, loops
from .errors import ConfigError

ENV_PREFIX = "IMAP_INGEST_"
CONFIG_VARIABLE = "IMAP_INGEST_CONFIG"  # names the file itself, not a key in it

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/imap-ingest, else ~/.local/state/imap-ingest."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "imap-ingest"


def parse_duration(value: object) -> float:
    """``30``, ``"30s"``, ``"5m"``, ``"1h"`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h")
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def parse_size(value: object) -> int:
    """``1048576``, ``"512k"``, ``"25M"``, ``"1G"`` → bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 512k, 25M or 1G")
    return int(float(match[1]) * _SIZES[match[2].lower()])


def _read_secret_file(value: object) -> str:
    path = Path(str(value)).expanduser()
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def _read_secret_env(value: object) -> str:
    secret = os.environ.get(str(value))
    if not secret:
        raise ValueError(f"environment variable {value} is not set or empty")
    return secret


def _check_condition(item: str | dict[str, str]) -> str | dict[str, str]:
    conditions.parse(item)
    return item


def _check_name(name: str) -> str:
    if name not in loops.NAMES:
        raise ValueError(f"{name!r} is not a built-in check: {', '.join(loops.NAMES)}")
    return name


def _check_url(url: str) -> str:
    if not re.match(r"https?://[^/\s]+", url):
        raise ValueError("must be an http:// or https:// URL")
    return url.rstrip("/")


def _check_https(url: str) -> str:
    """An https:// URL; http:// only on loopback (a local test or proxy), as tokens cross it."""
    url = _check_url(url)
    if url.startswith("http://") and not _is_loopback(urlsplit(url).hostname or ""):
        raise ValueError("must be an https:// URL (http:// only on loopback): tokens cross it")
    return url


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
# The *_file and *_env forms hold the secret itself once validated: read once, at load time.
SecretFromFile = Annotated[SecretStr, BeforeValidator(_read_secret_file)]
SecretFromEnv = Annotated[SecretStr, BeforeValidator(_read_secret_env)]
Condition = Annotated[str | dict[str, str], AfterValidator(_check_condition)]
CheckName = Annotated[str, AfterValidator(_check_name)]
HttpsUrl = Annotated[str, AfterValidator(_check_https)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def pick_secret(model: BaseModel, name: str) -> SecretStr | None:
    """The one of NAME, NAME_file, NAME_env that is set (the *_file and *_env forms hold
    the secret itself once validated); ValueError when several are."""
    given = [getattr(model, f) for f in (name, f"{name}_file", f"{name}_env")]
    given = [secret for secret in given if secret is not None]
    if len(given) > 1:
        raise ValueError(f"give only one of {name}, {name}_file, {name}_env")
    return given[0] if given else None


class _WithSecret(_Model):
    """A model whose secret is given as NAME, NAME_file or NAME_env: exactly one of them."""

    secret_name: ClassVar[str]

    def _needs_secret(self) -> bool:
        return True

    @model_validator(mode="after")
    def _one_secret_given(self) -> Self:
        if self._needs_secret() and pick_secret(self, self.secret_name) is None:
            name = self.secret_name
            raise ValueError(f"give one of {name}, {name}_file, {name}_env")
        return self

    @property
    def secret(self) -> SecretStr:
        """The secret, wherever it came from (read once, at load time)."""
        secret = pick_secret(self, self.secret_name)
        assert secret is not None  # checked by _one_secret_given
        return secret


class SubmitOptions(_Model):
    """Per-message tracker options: set on a folder, overridden by a rule's ``submit``."""

    target: str | None = None
    project: str | None = None
    tracker: str | None = None
    category: str | None = None
    priority: str | None = None
    status: str | None = None
    assigned_to: str | None = None
    fixed_version: str | None = None
    allow_override: str | None = None
    is_private: bool | None = None  # Redmine: issue[is_private]
    queue: str | None = None  # RT
    action: str | None = None  # RT: correspond, comment, take, resolve, chained with -

    @field_validator("allow_override", mode="before")
    @classmethod
    def _join_list(cls, value: object) -> object:
        return ",".join(map(str, value)) if isinstance(value, list) else value

    def merged(self, overrides: SubmitOptions) -> SubmitOptions:
        """These options with every field ``overrides`` sets replacing ours."""
        return self.model_copy(update=overrides.model_dump(exclude_none=True))

    def options(self) -> SubmitOptions:
        """Just the tracker options, without whatever a subclass adds."""
        fields = set(SubmitOptions.model_fields)
        return SubmitOptions.model_validate(self.model_dump(include=fields))


class Action(_Model):
    """What a matching rule does: one of submit, skip, move, discard (copy may stand alone,
    then the next rules are tried); header edits go with submit."""

    model_config = ConfigDict(populate_by_name=True)

    submit: SubmitOptions | None = None
    skip: bool = False
    move: str | None = None
    discard: bool = False
    copy_to: str | None = Field(None, alias="copy")
    set_header: dict[str, str] = {}
    remove_header: list[str] = []
    from_header: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: object) -> object:
        if value in ("submit", "skip", "discard"):
            return {value: {} if value == "submit" else True}
        if isinstance(value, str):
            raise ValueError(f"{value!r} is not an action: use submit, skip, discard, "
                             "{submit: {OPTION: VALUE}}, {move: FOLDER} or {copy: FOLDER}")
        if isinstance(value, dict):
            if value.get("submit", 0) is None:
                value = {**value, "submit": {}}
            if isinstance(value.get("remove_header"), str):
                value = {**value, "remove_header": [value["remove_header"]]}
        return value

    @model_validator(mode="after")
    def _one_outcome(self) -> Action:
        final = sum((self.submit is not None, self.skip, self.move is not None, self.discard))
        if final > 1 or (final == 0 and self.copy_to is None):
            raise ValueError("give one of submit, skip, move, discard (copy may stand alone)")
        if self.submit is None and (self.set_header or self.remove_header or self.from_header):
            raise ValueError("set_header, remove_header and from_header go with submit")
        return self

    @property
    def edits_headers(self) -> bool:
        return bool(self.set_header or self.remove_header or self.from_header)


class Rule(_Model):
    """``if`` all conditions hold (none: always), ``then`` act; ``allow`` lifts the named
    built-in loop checks for this rule's submit. ``use: NAME`` (or just the name) stands
    for a rule of the top-level ``rules:``."""

    model_config = ConfigDict(populate_by_name=True)

    name: str | None = None
    use: str | None = None
    if_: list[Condition] = Field(default=[], alias="if")
    allow: list[CheckName] = []
    then: Action | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        return {"use": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _use_or_then(self) -> Rule:
        if self.use is not None and (self.then or self.if_ or self.allow or self.name):
            raise ValueError("a rule with use: takes nothing else")
        if self.use is None and self.then is None:
            raise ValueError("a rule needs then: (or use: NAME of a top-level rule)")
        return self

    @property
    def action(self) -> Action:
        assert self.then is not None  # checked by _use_or_then, for rules without use:
        return self.then


class Folder(SubmitOptions):
    """One IMAP folder to ingest, with its tracker options and rules."""

    name: str
    interval: Duration = 60.0
    move_on_success: str | None = None
    move_on_failure: str | None = None
    max_message_size: Size = parse_size("25M")
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100
    loops_folder: str | None = None
    idle: bool | None = None  # IMAP IDLE for mail within a second; unset: when the server has it
    rules: list[Rule] = []


_MICROSOFT = "https://login.microsoftonline.com"
_GOOGLE = "https://oauth2.googleapis.com"
# What each provider's refresh-token flow asks for; client credentials ask for .default.
_SCOPES = {"microsoft": "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access",
           "google": "https://mail.google.com/"}


class OAuth2(_Model):
    """Where an account's access tokens come from: a stored refresh token (any provider), or
    Microsoft's client credentials (app-only access, through MSAL)."""

    provider: Literal["microsoft", "google", "generic"]
    flow: Literal["refresh_token", "client_credentials"] = "refresh_token"
    client_id: str
    client_secret: SecretStr | None = None
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


class Account(_WithSecret):
    """An IMAP account and the folders to ingest from it."""

    secret_name = "password"

    name: str
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    allow_insecure: bool = False
    security: Literal["ssl", "starttls", "none"] = "ssl"
    ca_file: FilePath | None = None
    verify_tls: bool = True
    username: str
    password: SecretStr | None = None
    password_file: SecretFromFile | None = None
    password_env: SecretFromEnv | None = None
    # password: LOGIN; xoauth2 / oauthbearer: AUTHENTICATE with a token from oauth2 or
    # token_command.
    auth: Literal["password", "xoauth2", "oauthbearer"] = "password"
    oauth2: OAuth2 | None = None
    token_command: Annotated[list[str], Field(min_length=1)] | None = None
    timeout: Duration = 60.0
    # This mailbox's own addresses: user+EXT@domain sent to one of them gives the message
    # the sub-address EXT (RT's extension: queue, ticket or action).
    addresses: list[str] = []
    subaddress_separator: Annotated[str, Field(min_length=1, max_length=1)] = "+"
    recipient_headers: list[str] = ["Delivered-To", "X-Original-To", "To", "Cc"]
    folders: Annotated[list[Folder], Field(min_length=1)]

    @field_validator("security")
    @classmethod
    def _no_clear_text_off_loopback(cls, value: str, info: ValidationInfo) -> str:
        host = info.data.get("host", "")
        if value == "none" and not info.data.get("allow_insecure") and not _is_loopback(host):
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

    @property
    def uses_token(self) -> bool:
        return self.auth != "password"

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "ssl" else 143)


class _Http(_Model):
    """What every HTTP target has."""

    url: Annotated[str, AfterValidator(_check_url)]
    ca_file: FilePath | None = None
    verify_tls: bool = True
    timeout: Duration = 60.0
    # Requests in flight at once, all folders together. One by default: Redmine and RT on
    # SQLite answer concurrent writes with lock errors, which look like refusals.
    concurrency: Annotated[int, Field(ge=1, le=64)] = 1
    addresses: list[str] = []  # the tracker's own From addresses, for the own-address check


class RedmineTarget(_Http, _WithSecret):
    """Redmine's incoming-mail web service, ``POST {url}/mail_handler``."""

    secret_name = "key"

    type: Literal["redmine"]
    key: SecretStr | None = None
    key_file: SecretFromFile | None = None
    key_env: SecretFromEnv | None = None
    unknown_user: Literal["ignore", "accept", "create"] | None = None
    no_permission_check: bool = False
    no_account_notice: bool = False
    no_notification: bool = False
    default_group: str | None = None
    project_from_subaddress: str | None = None


class RtTarget(_Http):
    """Request Tracker's mail gateway, ``POST {url}/REST/1.0/NoAuth/mail-gateway``."""

    type: Literal["rt"]
    queue: str | None = None  # unset: RT's queue 1 (General)
    action: str = "correspond"
    extension: Literal["queue", "ticket", "action"] | None = None
    timeout: Duration = 180.0

    @field_validator("action")
    @classmethod
    def _known_actions(cls, value: str) -> str:
        if not re.fullmatch(r"(correspond|comment|take|resolve)(-(correspond|comment|take|"
                            r"resolve))*", value):
            raise ValueError("must be correspond, comment, take or resolve, or several "
                             "chained with - (take-comment, correspond-resolve)")
        return value


class WebhookTarget(_Http):
    """Any HTTP endpoint: a JSON document per message, or the raw message/rfc822."""

    type: Literal["webhook"]
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    format: Literal["json", "raw"] = "json"
    timeout: Duration = 30.0
    headers: dict[str, str] = {}
    token: SecretStr | None = None  # sent as Authorization: Bearer
    token_file: SecretFromFile | None = None
    token_env: SecretFromEnv | None = None
    secret: SecretStr | None = None  # signs the body: HMAC-SHA256 in signature_header
    secret_file: SecretFromFile | None = None
    secret_env: SecretFromEnv | None = None
    signature_header: str = "X-Imap-Ingest-Signature"
    attachment_limit: Size = parse_size("1M")  # larger attachments are listed, not included
    id_pointer: str | None = None  # JSON pointer to the ticket id in the answer, e.g. /id

    @model_validator(mode="after")
    def _one_of_each(self) -> WebhookTarget:
        pick_secret(self, "token")
        pick_secret(self, "secret")
        return self


class DirectoryTarget(_Model):
    """A directory: each message as NAME.eml plus a NAME.json summary (an archive, a demo)."""

    type: Literal["directory"]
    path: Path
    addresses: list[str] = []


HttpTarget = RedmineTarget | RtTarget | WebhookTarget
Target = Annotated[RedmineTarget | RtTarget | WebhookTarget | DirectoryTarget,
                   Field(discriminator="type")]
TARGET_TYPES = ("redmine", "rt", "webhook", "directory")


class Retry(_Model):
    """How temporary failures are retried: backoff with jitter, then given up."""

    first_delay: Duration = 30.0
    max_delay: Duration = 3600.0
    max_attempts: Annotated[int, Field(ge=1)] = 10
    max_age: Duration = parse_duration("2d")


class Http(_Model):
    """The status listener: /healthz, /readyz, /metrics."""

    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464 or 0.0.0.0:9464")
        return value

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class Config(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    accounts: Annotated[list[Account], Field(min_length=1)]
    targets: Annotated[dict[str, Target], Field(min_length=1)]
    rules: dict[str, Rule] = {}
    loops_folder: str | None = None
    loop_checks: dict[CheckName, bool] = {}
    state_dir: Path = Field(default_factory=default_state_dir)
    # YAML 1.1 reads a bare `off` as false.
    dedupe: Annotated[Literal["message-id", "content", "off"],
                      BeforeValidator(lambda value: "off" if value is False else value)
                      ] = "message-id"
    in_doubt: Literal["quarantine", "resubmit"] = "quarantine"
    quarantine_folder: str = "Quarantine"
    retry: Retry = Retry()
    http: Http | None = None
    shutdown_grace: Duration = 30.0  # on SIGTERM, how long the message in hand may take

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        *_: PydanticBaseSettingsSource, **__: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load() has already merged the file and the environment, list items included,
        # which pydantic-settings' own env source cannot address.
        return (init_settings,)

    def secrets(self) -> Iterator[str]:
        """Every secret value, so that logging can redact them."""
        models: list[BaseModel] = [*self.accounts, *self.targets.values()]
        while models:
            for value in models.pop().__dict__.values():
                if isinstance(value, SecretStr):
                    yield value.get_secret_value()
                elif isinstance(value, OAuth2):
                    models.append(value)

    def own_addresses(self) -> set[str]:
        """Every target's own From addresses, lower-cased, for the own-address check."""
        return {a.lower() for target in self.targets.values() for a in target.addresses}

    def concurrency(self, target: str) -> int:
        """How many requests ``target`` may have in flight (a directory: one)."""
        chosen = self.targets[target]
        return 1 if isinstance(chosen, DirectoryTarget) else chosen.concurrency

    def target_for(self, options: SubmitOptions) -> str:
        """The target a message with these options goes to."""
        return options.target or next(iter(self.targets))


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment and validate; ConfigError names file, key, reason."""
    environ = os.environ if environ is None else environ
    data = _read_yaml(Path(path))
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and name != CONFIG_VARIABLE:
            _override(data, name, value, path)
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc), file=path) from None
    _check_references(config, path)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {where}{problem}", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with accounts: and targets:", file=path)
    return data


def _override(data: dict[str, Any], name: str, value: str, path: str | os.PathLike[str]) -> None:
    """Set the value an ``IMAP_INGEST_A__B__C`` variable names inside ``data``."""
    keys = name.removeprefix(ENV_PREFIX).split("__")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            index = _list_index(node, key)
            if index is None:
                raise ConfigError(f"{name}: no item {key!r} in this list (use an index or a name)",
                                  file=path, key=_key_path(keys[:depth]))
            if last:
                node[index] = _env_value(value)
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{name}: cannot set a key inside a single value",
                              file=path, key=_key_path(keys[:depth]))
        real = next((k for k in node if str(k).lower() == key.lower()), key.lower())
        if last:
            node[real] = _env_value(value)
        else:
            node = node.setdefault(real, {})


def _list_index(items: list[Any], key: str) -> int | None:
    if key.isdigit() and int(key) < len(items):
        return int(key)
    names = [str(item.get("name", "")).lower() if isinstance(item, dict) else "" for item in items]
    return names.index(key.lower()) if key.lower() in names else None


def _env_value(value: str) -> Any:
    """JSON for lists and mappings; any other value stays a string for pydantic to convert."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _key_path(loc: tuple[int | str, ...] | list[str]) -> str:
    """``('accounts', 0, 'folders', 1, 'name')`` → ``accounts[0].folders[1].name``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _describe(exc: ValidationError) -> str:
    """One line per problem, each naming its key path; never the offending value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple("if" if part == "if_" else part for part in error["loc"])
        if loc[:1] == ("targets",) and len(loc) > 2 and loc[2] in TARGET_TYPES:
            loc = loc[:2] + loc[3:]  # the union's tag, not a key of the file
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, message = (*loc, "type"), "must be one of " + ", ".join(TARGET_TYPES)
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{_key_path(loc) or '(top level)'}: {message}")
    return "\n  ".join(lines)


def _check_references(config: Config, path: str | os.PathLike[str]) -> None:
    """Names that must point at something: targets, and a default when there are several."""
    known = ", ".join(config.targets)
    for a, account in enumerate(config.accounts):
        for f, folder in enumerate(account.folders):
            where = f"accounts[{a}].folders[{f}]"
            if folder.target is None and len(config.targets) > 1:
                raise ConfigError(f"several targets are defined ({known}): name one",
                                  file=path, key=f"{where}.target")
            for r, rule in enumerate(folder.rules):
                if rule.use is not None and rule.use not in config.rules:
                    raise ConfigError(f"no rule named {rule.use!r} in the top-level rules: "
                                      f"(known: {', '.join(config.rules) or 'none'})",
                                      file=path, key=f"{where}.rules[{r}].use")
            named = [(f"{where}.target", folder.target)] + [
                (f"{where}.rules[{r}].then.submit.target", rule.then.submit.target)
                for r, rule in enumerate(folder.rules)
                if rule.then is not None and rule.then.submit is not None
            ] + [(f"rules.{name}.then.submit.target", rule.then.submit.target)
                 for name, rule in config.rules.items()
                 if rule.then is not None and rule.then.submit is not None]
            for key, target in named:
                if target is not None and target not in config.targets:
                    raise ConfigError(f"no target named {target!r} (known: {known})",
                                      file=path, key=key)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
