"""What the ledger hands out and takes: keys, records, earlier copies, its errors, and the
transaction a backend lends the shared SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from ..errors import ConfigError, IngestError
from ..states import Disposition, Result, State

Dedupe = Literal["message-id", "content", "off"]
T = TypeVar("T")
Row = tuple[Any, ...]


class LedgerError(IngestError):
    """The ledger cannot be used: corrupt, from a newer version, or not writable."""

    exit_code = ConfigError.exit_code


@dataclass(frozen=True, slots=True)
class Key:
    """Where a message is: account, folder, UIDVALIDITY, UID."""

    account: str
    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    state: State
    outcome: Result | None
    dispose_to: Disposition | None
    attempts: int
    first_seen: float
    next_try: float | None
    reason: str | None
    ticket: str | None


@dataclass(frozen=True, slots=True)
class Earlier:
    """An earlier copy of a message, for the same target, that the tracker has, may have or
    is to get; its state and outcome say which."""

    id: int
    where: str  # "account/folder uid N", for the log
    state: State
    outcome: Result | None
    ticket: str | None
    folder: tuple[str, str] = ("", "")  # its (account, folder)


@dataclass(frozen=True, slots=True)
class Begun:
    """No earlier copy stands for the message: it is recorded as submitting."""

    reused: str | None = None  # where a different message with its Message-ID was seen
    id: int = field(default=0, compare=False)  # the message's record


@dataclass(frozen=True, slots=True)
class Source:
    """Where a copy of a message was seen, and what became of it."""

    id: int
    folder: str
    outcome: Result | None
    ticket: str | None


@dataclass(frozen=True, slots=True)
class Archived:
    """An archived message not yet exported for training."""

    id: int  # its record
    message_id: str | None
    digest: str
    target: str
    ticket: str | None
    path: Path
    at: float


class Tx(Protocol):
    """One transaction of a backend, as the shared SQL uses it."""

    def one(self, sql: str, args: Sequence[object] = ()) -> Row | None: ...
    def all(self, sql: str, args: Sequence[object] = ()) -> list[Row]: ...
    def dicts(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]: ...
    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...


Folder = tuple[str, str]  # (account, folder): what a lease covers


class LeaseLost(IngestError):
    """Another replica holds this folder now (our lease ran out): the pass stops, writing
    and disposing nothing more."""

    exit_code = 75


class LedgerUnavailable(IngestError):
    """The ledger's server cannot be reached (for longer than ``ledger.wait``)."""

    exit_code = 75
