"""The ledger's vocabulary: a message's state, what became of it, and where it goes.

The values are the strings the ledger stores, so a ledger written before they were types
reads the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

# Keywords that remember, on the server, a message we must not look at again.
FAILED = "$ImapIngestFailed"
SKIPPED = "$ImapIngestSkipped"


class State(StrEnum):
    """Where a message is in the ledger's state machine."""

    SUBMITTING = "submitting"  # being posted: the tracker may or may not have it
    SUBMITTED = "submitted"  # the tracker took it; not yet disposed of
    DECIDED = "decided"  # decided without a ticket (refused, skipped …); not yet disposed of
    WAITING = "waiting"  # left in place for a retry
    DISPOSED = "disposed"  # moved, deleted or marked: done


class Result(StrEnum):
    """What became of a message: counted, logged and stored as its outcome."""

    SUBMITTED = "submitted"
    FAILED = "failed"
    PARTIAL = "partial"  # refused, but part of it may be in the tracker (RT chains)
    SKIPPED = "skipped"
    MOVED = "moved"
    DISCARDED = "discarded"
    HELD = "held"
    TOO_OLD = "skipped-by-age"  # left alone by start: since or max_age
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"
    DEFERRED = "deferred"
    REFUSED_KEY = "refused-key"
    RETRIED = "retried"  # released by `imap-ingest retry`
    RESUMED = "resumed"  # finished from an earlier pass's record that had no outcome
    SUPERSEDED = "superseded"  # its retry taken over by another copy of the message


Verb = Literal["delete", "move", "mark", "copy"]


@dataclass(frozen=True, slots=True)
class Disposition:
    """What is done to a message in its folder: ``delete``, ``move:FOLDER``,
    ``mark:KEYWORD`` or ``copy:FOLDER``, as the ledger stores it."""

    verb: Verb
    where: str = ""  # the folder, or the keyword; empty for delete

    @classmethod
    def parse(cls, text: str) -> Disposition:
        verb, _, where = text.partition(":")
        if verb not in ("delete", "move", "mark", "copy"):
            raise ValueError(f"not a disposition: {text!r}")
        return cls(verb, where)  # type: ignore[arg-type]  # checked just above

    def __str__(self) -> str:
        return f"{self.verb}:{self.where}" if self.where else self.verb

    def describe(self) -> str:
        """Where the message is now, for a log line."""
        if self.verb == "move":
            return f"moved to {self.where}"
        if self.verb == "delete":
            return "deleted"
        return "kept in place, marked so it is not tried again"
