"""Trackers take a raw message and answer with an Outcome; adding one means adding a file
(see registry.py, and "Adding a tracker" in the README).

A tracker's answer, good or bad, is a value: ``submit`` raises only for our own bugs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..logs import redact
from . import registry

if TYPE_CHECKING:
    from ..config import Account, SubmitOptions, Target
    from ..limiter import Pace
    from ..message import Message


REASON_LIMIT = 500  # characters of a reason kept: what a tracker says may be megabytes


class Kind(Enum):
    SUCCESS = "success"  # the tracker took it: dispose of the message
    PERMANENT = "permanent"  # refused for good: move it aside
    TEMPORARY = "temporary"  # try again later: leave it where it is
    CONFIG = "config"  # our key or URL is wrong: touch nothing, stop the folder


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    reason: str  # logged and stored: never a secret
    ticket: str | None = None
    status: int | None = None
    partial: bool = False  # refused, but part of it may have been recorded (RT chains)
    retry_after: float | None = None  # seconds the tracker asked us to wait (429)
    in_doubt: bool = False  # sent, but no answer came: the tracker may have taken it
    # Other requests to the target were in flight meanwhile: a refusal may be a conflict
    # between them (Redmine's 422 for SQLite's "database is locked"), see verdict.answer.
    crowded: bool = False

    def __post_init__(self) -> None:
        # One place for every tracker: a reason may quote the tracker's answer, and a hostile
        # one echoes what it was sent (redacted before cutting, which could halve a secret);
        # RT's first line, say, goes into the reason whole.
        reason = redact(self.reason)
        if len(reason) > REASON_LIMIT:
            reason = reason[:REASON_LIMIT - 1] + "…"
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True, slots=True)
class Envelope:
    """Where a message came from, which no header says reliably."""

    account: str
    folder: str
    uidvalidity: int
    uid: int
    subaddress: str | None = None  # the +EXT of the recipient address, like an MTA's EXTENSION
    # The ticket its thread became, known before posting only for a reply to a message the
    # ledger knows the ticket of (a new message's ticket is made by the post itself).
    ticket: str | None = None

    @classmethod
    def of(cls, account: Account, message: Message, folder: str, uidvalidity: int = 0,
           uid: int = 0) -> Envelope:
        """The envelope of ``message`` in ``folder``, its sub-address read as ``account`` says."""
        return cls(account.name, folder, uidvalidity, uid, message.subaddress(
            account.addresses, account.subaddress_separator, account.recipient_headers))


class Tracker(Protocol):
    def submit(self, raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
        """Hand one message to the tracker."""

    def preview(self, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> tuple[str, list[tuple[str, str]]]:
        """What ``submit`` would do (``POST URL``) and the fields it would send, secrets
        masked; sends nothing."""

    def check(self) -> Outcome:
        """Reach the tracker and test the credentials, creating nothing."""

    def close(self) -> None:
        """Release connections."""


@runtime_checkable
class Paced(Protocol):
    """A tracker over HTTP: its slots, shared by every folder, say how many may be in flight."""

    pace: Pace


@runtime_checkable
class Lonely(Protocol):
    """A tracker that must get some messages with nothing else in flight to it."""

    def alone(self, raw: bytes) -> bool:
        """Whether this message must be posted so."""


def open_tracker(target: Target) -> Tracker:
    """The tracker for one entry of ``targets:``."""
    return registry.lookup(target.type).tracker(target)
