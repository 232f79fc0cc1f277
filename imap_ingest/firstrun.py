"""A safe first run on an existing mailbox: ``start:``, ``max_age:`` and the backlog
warning, as pure functions of what the ledger recorded.

``start: all`` (the default) ingests what the folder holds; ``new`` only mail that arrives
after the first run (UIDs above the highest seen then); ``since:DATE`` or ``since:7d`` only
mail that arrived (IMAP INTERNALDATE) after that date, or that long before the first run.
The first run is recorded (the ledger's ``starts``), so later runs keep to it. After a
UIDVALIDITY change the UIDs mean nothing: ``new`` then leaves alone mail that arrived before
the first run. ``max_age: 30d`` leaves alone mail older than that, at every pass. Mail left
alone by a date is marked skipped and recorded as ``skipped-by-age``; mail below ``new``'s
UID is not even fetched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .config.folders import Start


@dataclass(frozen=True, slots=True)
class Started:
    """Where a folder's first run started, as recorded."""

    uidvalidity: int
    first_uid: int
    at: float
    since: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What a pass takes: the UIDs to look at, and the arrival time older mail is left
    alone before (with why)."""

    uids: list[int]
    cutoff: float | None = None
    why: str = ""


def first_uid(start: Start, uids: list[int]) -> int:
    """The lowest UID a first run with ``start`` takes."""
    return max(uids) + 1 if start.mode == "new" and uids else 0


def plan(start: Start, started: Started, uidvalidity: int, uids: list[int],
         max_age: float | None, now: float) -> Plan:
    """The pass's UIDs and cutoff under ``start`` (as ``started`` recorded it) and
    ``max_age``."""
    cutoffs: list[tuple[float, str]] = []
    if started.since is not None:
        cutoffs.append((started.since, f"arrived before start: since {_stamp(started.since)}"))
    if started.uidvalidity == uidvalidity:
        uids = [uid for uid in uids if uid >= started.first_uid]
    elif start.mode == "new":
        cutoffs.append((started.at, "arrived before the first run (start: new; UIDVALIDITY "
                        "changed since)"))
    if max_age is not None:
        cutoffs.append((now - max_age, f"older than max_age ({max_age / 86400:g} days)"))
    if not cutoffs:
        return Plan(uids)
    cutoff, why = max(cutoffs)
    return Plan(uids, cutoff, why)


def backlog_warning(where: str, count: int, limit: int) -> str | None:
    """The warning for a first run with start: all over a big backlog, or None."""
    if count <= limit:
        return None
    return (f"{where}: first run over {count} messages (backlog_warning: {limit}): each "
            "becomes a ticket, and maybe an auto-reply; set start: new or since:DATE on "
            "the folder to leave old mail alone")


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
