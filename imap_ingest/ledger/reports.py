"""What the ledger tells of the flow (reports, the console, metrics) and of the archive
(spam-filter training): read mostly, over any backend's transactions."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from ..states import Result, State
from .records import Archived, Folder, T, Tx


class Store(ABC):
    """A backend's transactions, which the shared SQL runs in.

    A write that a crash may lose without harm (the next pass redoes its work, or reads the
    message as in doubt) can wait, ``later``, for the next write transaction: a pass then
    commits a message's answer together with the next message's "submitting", one
    transaction per message instead of two. A read, or ``flush``, commits what waits first.
    """

    def __init__(self) -> None:
        self._later: list[tuple[Folder | None, Callable[[Tx], object]]] = []
        self._later_lock = threading.Lock()

    @abstractmethod
    def _transaction(self, fn: Callable[[Tx], T], fence: Folder | None = None) -> T:
        """``fn`` in one write transaction, taken at once so that check-then-insert is
        atomic; with ``fence``, only while this process holds that folder's lease."""

    @abstractmethod
    def _view(self, fn: Callable[[Tx], T]) -> T:
        """``fn`` over a consistent view."""

    def _write(self, fn: Callable[[Tx], T], fence: Folder | None = None) -> T:
        """``fn`` in a write transaction with the writes waiting for one (those fenced by
        another folder first, in their own)."""
        with self._later_lock:
            waiting, self._later = self._later, []
        for other in dict.fromkeys(their for their, _ in waiting if their != fence):
            self._transaction(_all([g for their, g in waiting if their == other]), other)
        mine = _all([g for their, g in waiting if their == fence])
        return self._transaction(lambda db: (mine(db), fn(db))[1], fence)

    def _write_later(self, fn: Callable[[Tx], object], fence: Folder | None = None) -> None:
        """``fn`` in the next write transaction; lost, like the work of a killed process,
        if that fails."""
        with self._later_lock:
            self._later.append((fence, fn))

    def _read(self, fn: Callable[[Tx], T]) -> T:
        if self._later:
            self.flush()
        return self._view(fn)

    def flush(self) -> None:
        """Commit the writes that wait for a transaction (before a side effect that
        depends on them: a disposition on the server, the end of a pass)."""
        if self._later:
            self._write(lambda db: None)


class Reports(Store):
    """Counts and the latest of every folder."""

    # hourly(): the hour an ``updated`` time falls in, as an integer timestamp.
    _hour = "CAST(updated / 3600 AS INTEGER) * 3600"

    def summary(self) -> list[tuple[str, str, str, int, float]]:
        """Per account and folder: (account, folder, state or outcome, count, oldest)."""
        return self._read(lambda db: db.all(
            f"SELECT account, folder, CASE WHEN state = '{State.DISPOSED}' THEN outcome "
            "ELSE state END AS what, count(*), min(first_seen) FROM messages "
            "GROUP BY account, folder, what ORDER BY account, folder, what"))

    def targets(self) -> list[tuple[str, int, float | None, str | None, float | None]]:
        """(name, consecutive failures, next try, last error, when) for every target seen."""
        return self._read(lambda db: db.all("SELECT * FROM targets ORDER BY name"))

    def pending(self) -> list[tuple[str, str, float | None, int, int, int, int, str | None]]:
        """Per folder: (account, folder, oldest first_seen still pending, waiting, held,
        failed, quarantined, the latest error); pending is waiting or being posted."""
        return self._read(lambda db: db.all(
            "SELECT account, folder, "
            f"min(CASE WHEN state IN ('{State.WAITING}', '{State.SUBMITTING}') "
            "THEN first_seen END), "
            f"count(*) FILTER (WHERE state = '{State.WAITING}'), "
            f"count(*) FILTER (WHERE outcome = '{Result.HELD}'), "
            f"count(*) FILTER (WHERE outcome IN ('{Result.FAILED}', '{Result.PARTIAL}')), "
            f"count(*) FILTER (WHERE outcome = '{Result.QUARANTINED}'), "
            f"(SELECT reason FROM messages AS m WHERE m.account = messages.account AND "
            f"m.folder = messages.folder AND (m.state = '{State.WAITING}' OR m.outcome IN "
            f"('{Result.FAILED}', '{Result.PARTIAL}', '{Result.QUARANTINED}')) "
            "ORDER BY m.updated DESC LIMIT 1) "
            "FROM messages GROUP BY account, folder"))

    def latest(self, limit: int) -> list[dict[str, object]]:
        """The ``limit`` messages dealt with last, newest first."""
        return self._read(lambda db: db.dicts(
            "SELECT account, folder, uid, message_id, rule, target, state, outcome, "
            "reason, ticket, dispose_to, updated FROM messages "
            "ORDER BY updated DESC LIMIT ?", (limit,)))

    def hourly(self, since: float) -> list[tuple[int, str, int]]:
        """(hour as a timestamp, outcome, messages) of the attempts and decisions since then."""
        return self._read(lambda db: db.all(
            f"SELECT {self._hour} AS hour, coalesce(outcome, state), count(*) FROM messages "
            "WHERE updated >= ? GROUP BY hour, 2 ORDER BY hour", (since,)))


class ArchiveBook(Store):
    """The archive and the tickets messages became."""

    def archived(self, message: int, path: Path) -> None:
        """The message of record ``message`` is archived at ``path``."""
        self._write(lambda db: db.one(
            "INSERT INTO archived (message, path, at) VALUES (?, ?, ?) ON CONFLICT (message) "
            "DO UPDATE SET path = excluded.path, at = excluded.at, exported = NULL, "
            "exported_at = NULL", (message, str(path), time.time())))

    def tickets_found(self, found: dict[int, str]) -> None:
        """The tickets these records became, as the tracker told us after the fact."""
        self._write(lambda db: db.many("UPDATE messages SET ticket = ? WHERE id = ?",
                                       [(ticket, id) for id, ticket in found.items()]))

    def unexported(self, since: float) -> list[Archived]:
        """What is archived since then and not yet exported for training, oldest first."""
        rows = self._read(lambda db: db.all(
            "SELECT m.id, m.message_id, m.hash, m.target, m.ticket, a.path, a.at "
            "FROM archived AS a JOIN messages AS m ON m.id = a.message "
            "WHERE a.exported IS NULL AND a.at >= ? ORDER BY a.at", (since,)))
        return [Archived(id, message_id, digest, target, ticket, Path(path), at)
                for id, message_id, digest, target, ticket, path, at in rows]

    def exported(self, ids: list[int], kind: str) -> None:
        """These archived messages are written out for training as ``kind``."""
        self._write(lambda db: db.many(
            "UPDATE archived SET exported = ?, exported_at = ? WHERE message = ?",
            [(kind, time.time(), id) for id in ids]))

    def unarchive(self, before: float, under: Path) -> list[Path]:
        """Forget what was archived under that directory before then; the paths, for
        their files to go too."""
        prefix = f"{under}/"
        rows = self._write(lambda db: db.all(
            "DELETE FROM archived WHERE at < ? AND substr(path, 1, ?) = ? RETURNING path",
            (before, len(prefix), prefix)))
        return [Path(path) for path, in rows]

    def archive_summary(self) -> tuple[int, int, int, int]:
        """(messages archived, of which with a known ticket, exported as spam, as ham)."""
        row = self._read(lambda db: db.one(
            "SELECT count(*), count(m.ticket), count(*) FILTER (WHERE a.exported = 'spam'), "
            "count(*) FILTER (WHERE a.exported = 'ham') FROM archived AS a "
            "JOIN messages AS m ON m.id = a.message"))
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _all(fns: list[Callable[[Tx], object]]) -> Callable[[Tx], None]:
    """One function running ``fns`` in order."""
    def run(db: Tx) -> None:
        for fn in fns:
            fn(db)
    return run
