"""The whole file: accounts, targets, shared rules, and the service's own settings."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..urls import origin
from .alerting import Alert
from .archive import Archive
from .folders import AllowSenders, CheckName, Flood, Folder, Rule, SubmitOptions
from .routes import Route
from .targets import AnyTarget, HttpTarget, in_clear_off_loopback
from .values import (
    Duration,
    Model,
    Secret,
    SecretFromEnv,
    SecretFromFile,
    is_loopback,
    parse_duration,
    pick_secret,
)


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/imap-ingest, else ~/.local/state/imap-ingest."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "imap-ingest"


class Retry(Model):
    """How temporary failures are retried: backoff with jitter, then given up."""

    first_delay: Duration = 30.0
    max_delay: Duration = 3600.0
    max_attempts: Annotated[int, Field(ge=1)] = 10
    max_age: Duration = parse_duration("2d")


class Http(Model):
    """The status listener: /healthz, /readyz, /metrics."""

    listen: str = "127.0.0.1:9464"
    # /healthz fails for a folder whose pass made no progress for this long; unset: 4 times
    # the longest of the account's and the targets' timeouts (worker.stall_limit).
    stuck_after: Duration | None = None

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


class Console(Http):
    """The operators' web page: off unless configured, behind the token in ``token_file``."""

    listen: str = "127.0.0.1:9465"
    token_file: Path


class LedgerConfig(Model):
    """Where the ledger lives: the state_dir's SQLite file, or a PostgreSQL database shared
    by replicas (``url``; its password as password, password_file or password_env)."""

    url: Annotated[str, AfterValidator(_check_postgres_url)] | None = None
    password: Secret | None = None
    password_file: SecretFromFile | None = None
    password_env: SecretFromEnv | None = None
    # This replica's name in leases, status and metrics; the host name by default (the
    # process id is added: two processes on a host are two replicas).
    replica: str | None = None
    lease_ttl: Duration = 15.0  # a dead replica's folders are taken over after this long
    wait: Duration = 60.0  # how long a lost database is waited for before a pass gives up

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        pick_secret(self, "password")
        return self

    @property
    def secret(self) -> SecretStr | None:
        return pick_secret(self, "password")


def _check_postgres_url(url: str) -> str:
    if not re.match(r"postgres(ql)?://", url):
        raise ValueError("must be a postgresql:// URL (leave ledger.url out for SQLite)")
    if re.match(r"postgres(ql)?://[^/@]*:[^/@]*@", url):
        raise ValueError("give the password as ledger.password_file or password_env, not "
                         "in the URL (it would show wherever the URL does)")
    return url


def _accounts(value: object) -> list[Account]:
    """``accounts:``, validated by the accounts module, which is imported only when there
    are some: mail an MTA pipes in needs none, and their models cost each process time."""
    return [] if value == [] else _account_list().validate_python(value)


@cache
def _account_list() -> TypeAdapter[list[Account]]:
    from .accounts import Account

    return TypeAdapter(list[Account])


if TYPE_CHECKING:
    from .accounts import Account

    Accounts = list[Account]
else:
    Accounts = Annotated[list[Any], PlainValidator(_accounts)]


class Config(BaseModel):
    """The whole configuration file. load() merges the file and the environment (list items
    included, which pydantic-settings' env source cannot address), so a plain model: an MTA
    starts a process per message, and pydantic-settings costs ~50 ms of each."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    routes: dict[str, Route] = {}  # mail an MTA pipes in: `imap-ingest deliver --route NAME`
    accounts: Accounts = Field([], validate_default=True)  # after routes: it reads them
    targets: Annotated[dict[str, AnyTarget], Field(min_length=1)]
    rules: dict[str, Rule] = {}
    loops_folder: str | None = None
    loop_checks: dict[CheckName, bool] = {}
    allow_senders: list[AllowSenders] = []  # for every folder, with each folder's own
    flood: Flood | None = None  # for every folder without its own
    flood_folder: str | None = None  # unset: loops_folder
    backlog_warning: Annotated[int, Field(ge=0)] = 500  # a first run over more: warn, ask
    state_dir: Path = Field(default_factory=default_state_dir)
    # YAML 1.1 reads a bare `off` as false.
    dedupe: Annotated[Literal["message-id", "content", "off"],
                      BeforeValidator(lambda value: "off" if value is False else value)
                      ] = "message-id"
    in_doubt: Literal["quarantine", "resubmit"] = "quarantine"
    quarantine_folder: str = "Quarantine"
    retry: Retry = Retry()
    http: Http | None = None
    alert: Alert = Alert()
    console: Console | None = None
    ledger: LedgerConfig = LedgerConfig()
    archive: Archive | None = None  # every folder's and route's, unless it has its own
    shutdown_grace: Duration = 30.0  # on SIGTERM, how long the message in hand may take
    # run --once: processes working the folders at once, each on a connection of its own
    # (within each account's max_connections); auto: one per CPU core (processes.py).
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"

    @field_validator("accounts")
    @classmethod
    def _accounts_or_routes(cls, value: list[Account], info: ValidationInfo) -> list[Account]:
        if not value and not info.data.get("routes"):
            raise ValueError("List should have at least 1 item (or give routes: for mail "
                             "an MTA delivers)")
        protocols = {account.name: account.protocol for account in value}
        places = [(f"routes.{name}", route.failure_folder)
                  for name, route in info.data.get("routes", {}).items()]
        places += [(f"accounts[{a}].folders[{f}]", folder.failure_folder)
                   for a, account in enumerate(value) for f, folder in enumerate(account.folders)]
        for where, to in places:
            if to is not None and protocols.get(to.account) != "imap":
                raise ValueError(f"{where}.failure_folder names account {to.account}, which "
                                 + ("is POP3: it has no folders to append to"
                                    if to.account in protocols else "is not in accounts"))
        return value

    def secrets(self) -> Iterator[str]:
        """Every secret value, so that logging can redact them."""
        for model in (*self.accounts, *self.targets.values(), self.alert, self.ledger):
            yield from model.secrets()
        for account in self.accounts:
            for folder in account.folders:
                yield from folder.smime.secrets() if folder.smime else ()

    def cautions(self) -> list[tuple[str, str]]:
        """What the owner allowed that crosses the network unprotected, by key path: for
        `check` to print and the service to log at start."""
        off = "certificate checks are off: whoever is on the path can read and change it all"
        found = []
        for a, account in enumerate(self.accounts):
            if account.security == "none" and not is_loopback(account.host):
                found.append((f"accounts[{a}].security", f"security: none: the password and "
                              f"the mail cross the network to {account.host} in clear"))
            if not account.verify_tls:
                found.append((f"accounts[{a}].verify_tls", off))
        for name, target in self.targets.items():
            if not isinstance(target, HttpTarget):
                continue
            if in_clear_off_loopback(target.url):
                found.append((f"targets.{name}.url", f"{origin(target.url)} is plain http "
                              "(allow_insecure: true): the key and the mail cross the network "
                              "in clear"))
            if not target.verify_tls:
                found.append((f"targets.{name}.verify_tls", off))
        return found

    def own_addresses(self) -> set[str]:
        """Every target's own From addresses, lower-cased, for the own-address check."""
        return {a.lower() for target in self.targets.values() for a in target.addresses}

    @property
    def worker_processes(self) -> int:
        """How many processes run --once may use: ``workers``, or the cores it may run on."""
        return len(os.sched_getaffinity(0)) if self.workers == "auto" else self.workers

    def concurrency(self, target: str) -> int:
        """How many requests ``target`` may have in flight."""
        return self.targets[target].max_in_flight()

    def archive_for(self, folder: Folder) -> Archive | None:
        """Where what ``folder`` hands to a tracker is archived, if anywhere."""
        return folder.archive or self.archive

    def target_for(self, options: SubmitOptions) -> str:
        """The target a message with these options goes to."""
        return options.target or next(iter(self.targets))
