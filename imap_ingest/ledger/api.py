"""The ledger's API, the same over every backend: what happened to every message.

A message to submit moves ``submitting`` → ``submitted`` (or ``decided``: refused, given
up; or ``waiting`` for a retry) → ``disposed``, each step committed before the next side
effect (the POST, the MOVE), so a run that dies anywhere leaves a record the next run can
finish from. A message a rule skips or moves is ``decided`` at once, then ``disposed``.

The SQL here is the one both dialects speak (SQLite ≥ 3.39 and PostgreSQL ≥ 13): ``?``
placeholders, ``IS [NOT] DISTINCT FROM``, ``ON CONFLICT``, ``RETURNING``, ``FILTER``. A
backend (sqlite.py, postgres.py) brings the connection, the transactions and the
migrations; it runs each transaction's function again when its connection was lost.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..backoff import Backoff
from ..firstrun import Started
from ..states import Disposition, Result, State
from .records import (
    Begun,
    Dedupe,
    Earlier,
    Folder,
    Key,
    Record,
    Row,
    Source,
    Tx,
)
from .reports import ArchiveBook, Reports

if TYPE_CHECKING:
    from .leases import Leases

# Rows in these states stand for a message the tracker has, or may have, or will get;
# verdict.copy_of says what each makes of another copy. A quarantined message may have
# reached the tracker: it counts until `retry` releases it. So does a partial one (RT
# recorded part of a chained action before refusing the rest).
_COUNTS_AS_SENT = (f"(state IN ('{State.SUBMITTING}', '{State.SUBMITTED}', '{State.WAITING}') "
                   f"OR outcome IN ('{Result.SUBMITTED}', '{Result.QUARANTINED}', "
                   f"'{Result.PARTIAL}'))")
# Another row than this key's, for the same target: one mail to two desks is two tickets.
_OTHER_COPY = ("NOT (account = ? AND folder = ? AND uidvalidity = ? AND uid = ?) "
               "AND target IS NOT DISTINCT FROM ?")
_KEY = "account = ? AND folder = ? AND uidvalidity = ? AND uid = ?"


class Ledger(Reports, ArchiveBook):
    """The ledger of one configuration, shared by every folder, thread and process using
    it; a backend subclass brings the database."""

    # This process's leases on folders, when the backend shares folders between replicas;
    # without, a folder's lock file keeps it to one process (locks.py).
    leases: Leases | None = None

    @staticmethod
    def open(state_dir: Path) -> Ledger:
        """The state_dir's SQLite ledger (open_ledger() follows the configuration)."""
        from .sqlite import SqliteLedger
        return SqliteLedger(state_dir / "ledger.sqlite3")

    def lease(self, holder: str, folders: list[Folder], ttl: float,
              balance: bool) -> Leases | None:
        """Start taking leases on ``folders`` as ``holder`` (spreading them between the
        replicas when ``balance``); None where the backend has no leases."""
        return None

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def check_lease(self, account: str, folder: str) -> None:
        """Raise LeaseLost unless this process may still work the folder (before an IMAP
        disposition, which no transaction can fence); a backend without leases always may."""

    @abstractmethod
    def holders(self) -> list[tuple[str, str, str, float]]:
        """(account, folder, replica, seconds left) of every live lease; none without."""

    # -- folders ---------------------------------------------------------------------------

    def uidvalidity_changed(self, account: str, folder: str, uidvalidity: int) -> bool:
        """Remember the folder's UIDVALIDITY; True when it differs from the one seen before."""
        def fn(db: Tx) -> Row | None:
            row = db.one("SELECT uidvalidity FROM folders WHERE account = ? AND folder = ?",
                         (account, folder))
            db.one("INSERT INTO folders VALUES (?, ?, ?) ON CONFLICT (account, folder) "
                   "DO UPDATE SET uidvalidity = excluded.uidvalidity",
                   (account, folder, uidvalidity))
            return row
        row = self._write(fn, (account, folder))
        return row is not None and row[0] != uidvalidity

    def uids(self, account: str, folder: str, uidls: list[str]) -> dict[str, int]:
        """The UID each POP3 UIDL stands under, a new one for a UIDL never seen: one
        transaction for a whole maildrop."""
        def fn(db: Tx) -> list[Row]:
            db.many("INSERT INTO uidls (account, folder, uidl) VALUES (?, ?, ?) "
                    "ON CONFLICT (account, folder, uidl) DO NOTHING",
                    [(account, folder, uidl) for uidl in uidls])
            return db.all("SELECT uidl, uid FROM uidls WHERE account = ? AND folder = ?",
                          (account, folder))
        wanted = set(uidls)
        return {uidl: uid for uidl, uid in self._write(fn, (account, folder)) if uidl in wanted}

    # -- messages --------------------------------------------------------------------------

    def records(self, account: str, folder: str, uidvalidity: int,
                uids: list[int]) -> dict[int, Record]:
        """The records of these UIDs of one folder, by UID: one query for a whole pass."""
        if not uids:
            return {}
        rows = self._read(lambda db: db.all(
            f"SELECT {_RECORD} FROM messages WHERE account = ? AND folder = ? AND "
            "uidvalidity = ? AND uid BETWEEN ? AND ?",
            (account, folder, uidvalidity, min(uids), max(uids))))
        wanted = set(uids)
        return {uid: record for uid, record in _records(rows) if uid in wanted}

    def marked(self, account: str, folder: str, uidvalidity: int, keyword: str) -> list[int]:
        """The UIDs of one folder left in place with ``keyword``, as the ledger remembers
        them (the mark itself, on a server without keywords, is nowhere else)."""
        rows = self._read(lambda db: db.all(
            "SELECT uid FROM messages WHERE account = ? AND folder = ? AND uidvalidity = ? "
            "AND state = ? AND dispose_to = ? ORDER BY uid",
            (account, folder, uidvalidity, State.DISPOSED, f"mark:{keyword}")))
        return [uid for (uid,) in rows]

    def pending_deletes(self, account: str, folder: str, uidvalidity: int) -> dict[int, Record]:
        """The records of one folder whose decided deletion is not yet recorded as done, by
        UID (a pass stopped between flagging them \\Deleted and expunging them leaves these)."""
        # The states as literals, as the partial index messages_pending spells them: SQLite
        # uses it only for a query whose terms imply its own.
        rows = self._read(lambda db: db.all(
            f"SELECT {_RECORD} FROM messages WHERE account = ? AND folder = ? AND "
            f"uidvalidity = ? AND state IN ('{State.SUBMITTED}', '{State.DECIDED}') "
            "AND dispose_to = ? ORDER BY uid",
            (account, folder, uidvalidity, str(Disposition("delete")))))
        return dict(_records(rows))

    def begin_submit(self, key: Key, message_id: str | None, size: int, digest: str, rule: str,
                     target: str, dedupe: Dedupe) -> Begun | Earlier:
        """Record the message as ``submitting`` unless an earlier copy of it, for the same
        target, stands for it (sent, waiting or in doubt): then that copy, nothing recorded.

        Check and insert are one transaction, so two folders or two processes holding copies
        of one message never both submit it.
        """
        now = time.time()
        same = _same_message(dedupe)
        args = (key.account, key.folder, key.uidvalidity, key.uid, target)

        def fn(db: Tx) -> Begun | Earlier:
            row = db.one(
                f"SELECT id, account, folder, uid, state, outcome, ticket FROM messages "
                f"WHERE {_COUNTS_AS_SENT} AND {_OTHER_COPY} AND {same} "
                # What the tracker accepted first (a plain duplicate), then what is in doubt
                # (the safer reading), then what waits.
                f"ORDER BY CASE WHEN outcome IS NOT DISTINCT FROM '{Result.SUBMITTED}' THEN 0 "
                f"WHEN state = '{State.WAITING}' THEN 2 ELSE 1 END LIMIT 1",
                (*args, *_same_message_args(dedupe, key, message_id, digest)))
            if row is not None:
                id, account, folder, uid, state, outcome, ticket = row
                return Earlier(id, f"{account}/{folder} uid {uid}", State(state),
                               _result(outcome), ticket, (account, folder))
            # A different message with this Message-ID: worth a warning, not a dedupe.
            reused = db.one(
                f"SELECT account, folder, uid FROM messages WHERE {_COUNTS_AS_SENT} AND "
                f"{_OTHER_COPY} AND message_id = ? AND hash IS DISTINCT FROM ? LIMIT 1",
                (*args, message_id, digest)) if dedupe == "message-id" else None
            row = db.one(
                "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, size, hash, "
                "rule, target, state, first_seen, updated) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{State.SUBMITTING}', ?, ?) "
                "ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET "
                f"state = '{State.SUBMITTING}', rule = excluded.rule, target = excluded.target, "
                "updated = excluded.updated RETURNING id",
                (key.account, key.folder, key.uidvalidity, key.uid, message_id, size, digest,
                 rule, target, now, now))
            assert row is not None
            return Begun(f"{reused[0]}/{reused[1]} uid {reused[2]}" if reused else None,
                         int(row[0]))
        return self._write(fn, (key.account, key.folder))

    def take_over(self, earlier: Earlier, key: Key, message_id: str | None, size: int,
                  digest: str, rule: str, target: str) -> Record | None:
        """Make this copy the one that waits for the retry ``earlier`` was waiting for, with
        its attempts, first sight and next try; None when ``earlier`` waits no more (another
        pass or process got there first)."""
        now = time.time()

        def fn(db: Tx) -> Record | None:
            row = db.one(
                "SELECT outcome, reason, attempts, first_seen, next_try FROM messages "
                f"WHERE id = ? AND state = '{State.WAITING}'", (earlier.id,))
            if row is None:
                return None
            outcome, reason, attempts, first_seen, next_try = row
            db.one(
                f"UPDATE messages SET state = '{State.DISPOSED}', "
                f"outcome = '{Result.SUPERSEDED}', reason = ?, updated = ? WHERE id = ?",
                (f"its retry taken over by {key.account}/{key.folder} uid {key.uid}", now,
                 earlier.id))
            new = db.one(
                "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, size, hash, "
                "rule, target, state, outcome, reason, attempts, first_seen, next_try, updated) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{State.WAITING}', ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET "
                f"state = '{State.WAITING}', outcome = excluded.outcome, "
                "reason = excluded.reason, rule = excluded.rule, target = excluded.target, "
                "attempts = excluded.attempts, first_seen = excluded.first_seen, "
                "next_try = excluded.next_try, dispose_to = NULL, updated = excluded.updated "
                "RETURNING id",
                (key.account, key.folder, key.uidvalidity, key.uid, message_id, size, digest,
                 rule, target, outcome, reason, attempts, first_seen, next_try, now))
            assert new is not None
            return Record(new[0], State.WAITING, _result(outcome), None, attempts, first_seen,
                          next_try, reason, None)
        return self._write(fn, (key.account, key.folder))

    def answered(self, key: Key, target: str, state: State, outcome: Result, reason: str, *,
                 status: int | None = None, ticket: str | None = None,
                 dispose_to: Disposition | None = None,
                 next_try: float | None = None, attempt: bool = True,
                 later: bool = False) -> None:
        """Record the tracker's answer and the message's new state; ``attempt`` counts it
        against the message's max_attempts. ``later``: with the next write (the message is
        in doubt until then: a crash leaves it "submitting")."""
        now = time.time()

        def fn(db: Tx) -> None:
            row = db.one(
                "UPDATE messages SET state = ?, outcome = ?, reason = ?, ticket = ?, "
                "dispose_to = ?, next_try = ?, attempts = attempts + ?, updated = ? "
                f"WHERE {_KEY} RETURNING id",
                (state, outcome, reason, ticket, _text(dispose_to), next_try, int(attempt), now,
                 key.account, key.folder, key.uidvalidity, key.uid))
            assert row is not None
            db.one("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (row[0], now, target, outcome, status, ticket, reason))
        if later:
            self._write_later(fn, (key.account, key.folder))
        else:
            self._write(fn, (key.account, key.folder))

    def decided(self, key: Key, message_id: str | None, size: int, digest: str, rule: str,
                outcome: Result, reason: str, dispose_to: Disposition,
                target: str | None = None, later: bool = False) -> None:
        """Record a decision made without the tracker (skip, move, duplicate, too large …);
        ``later``: with the next write (a crash before it leaves the message undecided, and
        still in its folder, for the next pass)."""
        now = time.time()
        (self._write_later if later else self._write)(lambda db: db.one(
            "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, size, hash, "
            "rule, target, state, outcome, reason, dispose_to, first_seen, updated) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{State.DECIDED}', ?, ?, ?, ?, ?) "
            "ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET "
            f"state = '{State.DECIDED}', outcome = excluded.outcome, reason = excluded.reason, "
            "dispose_to = excluded.dispose_to, updated = excluded.updated",
            (key.account, key.folder, key.uidvalidity, key.uid, message_id, size, digest,
             rule, target, outcome, reason, str(dispose_to), now, now)),
            (key.account, key.folder))

    def disposed(self, keys: list[Key], later: bool = False) -> None:
        """These messages, all of one folder, are gone from it (or marked): one transaction;
        ``later``: with the next write (a crash before it leaves their dispositions to be
        carried out again, which finds them done)."""
        if not keys:
            return
        now = time.time()
        (self._write_later if later else self._write)(lambda db: db.many(
            f"UPDATE messages SET state = '{State.DISPOSED}', updated = ? WHERE {_KEY}",
            [(now, k.account, k.folder, k.uidvalidity, k.uid) for k in keys]),
            (keys[0].account, keys[0].folder))

    def sources(self, account: str, message_id: str | None, digest: str) -> list[Source]:
        """Every record of this message (same Message-ID and content) in this account."""
        rows = self._read(lambda db: db.all(
            "SELECT id, folder, outcome, ticket FROM messages WHERE account = ? AND "
            "message_id IS NOT DISTINCT FROM ? AND hash = ? ORDER BY updated DESC",
            (account, message_id, digest)))
        return [Source(id, folder, _result(outcome), ticket)
                for id, folder, outcome, ticket in rows]

    def set_aside(self, account: str, folder: str, uidvalidity: int) -> dict[int, Record]:
        """The records of a folder's messages refused, quarantined or held, by UID: all that
        a server without folders or marks (POP3) shows of them."""
        rows = self._read(lambda db: db.all(
            f"SELECT {_RECORD} FROM messages WHERE account = ? AND folder = ? AND "
            "uidvalidity = ? AND outcome IN (?, ?, ?) ORDER BY uid",
            (account, folder, uidvalidity, Result.FAILED, Result.QUARANTINED, Result.HELD)))
        return dict(_records(rows))

    def thread_ticket(self, target: str, message_ids: list[str]) -> str | None:
        """The ticket the latest of these messages became at ``target``, if known."""
        if not message_ids:
            return None
        marks = ", ".join("?" * len(message_ids))
        row = self._read(lambda db: db.one(
            f"SELECT ticket FROM messages WHERE target = ? AND message_id IN ({marks}) "
            "AND ticket IS NOT NULL ORDER BY updated DESC LIMIT 1", (target, *message_ids)))
        return None if row is None else str(row[0])

    def release(self, ids: list[int]) -> None:
        """Forget that these records may be in the tracker: `retry` sends the message again."""
        self._write(lambda db: db.many(
            f"UPDATE messages SET state = '{State.DISPOSED}', outcome = '{Result.RETRIED}', "
            "dispose_to = NULL, updated = ? WHERE id = ?", [(time.time(), i) for i in ids]))

    # -- reports ---------------------------------------------------------------------------

    def history(self, message_id: str) -> list[tuple[dict[str, object], list[dict[str, object]]]]:
        """Every record of the message, each with its attempts, oldest first."""
        def fn(db: Tx) -> list[tuple[dict[str, object], list[dict[str, object]]]]:
            rows = db.dicts("SELECT * FROM messages WHERE message_id = ? ORDER BY first_seen",
                            (message_id,))
            return [({**row, "dispose_to": _disposition(row["dispose_to"])},
                     db.dicts("SELECT * FROM attempts WHERE message = ? ORDER BY at",
                              (row["id"],)))
                    for row in rows]
        return self._read(fn)

    # -- targets ---------------------------------------------------------------------------

    def target_state(self, name: str) -> tuple[int, float]:
        """The target's consecutive temporary failures, and when it may be tried again."""
        row = self._read(lambda db: db.one(
            "SELECT failures, next_try FROM targets WHERE name = ?", (name,)))
        return (row[0], row[1] or 0.0) if row else (0, 0.0)

    def target_failed(self, name: str, reason: str, backoff: Backoff,
                      at_least: float = 0.0) -> float:
        """Count a temporary failure of the target; returns when to try it next (no sooner
        than ``at_least`` seconds, e.g. a Retry-After)."""
        now = time.time()

        def fn(db: Tx) -> float:
            row = db.one("SELECT failures FROM targets WHERE name = ?", (name,))
            failures = (row[0] if row else 0) + 1
            next_try = now + max(backoff.delay(failures), backoff.bounded(at_least))
            db.one("INSERT INTO targets VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                   "SET failures = excluded.failures, next_try = excluded.next_try, "
                   "last_error = excluded.last_error, last_error_at = excluded.last_error_at",
                   (name, failures, next_try, reason, now))
            return next_try
        return self._write(fn)

    def target_ok(self, name: str) -> None:
        self._write(lambda db: db.one(
            "UPDATE targets SET failures = 0, next_try = NULL WHERE name = ?", (name,)))


    # -- flood limits and first runs ------------------------------------------------------

    def admit(self, limits: list[tuple[str, int, float]], now: float) -> tuple[str, int] | None:
        """Count a message against each (key, limit, window in seconds): None when it is
        under every limit (then it is counted under each key), else the first key that is at
        its limit and how many it let through in the window. One transaction, so passes and
        processes sharing the ledger share the count."""
        def fn(db: Tx) -> tuple[str, int] | None:
            for key, limit, window in limits:
                db.one("DELETE FROM flood WHERE key = ? AND at <= ?", (key, now - window))
                row = db.one("SELECT count(*) FROM flood WHERE key = ?", (key,))
                count = int(row[0]) if row else 0
                if count >= limit:
                    return key, count
            db.many("INSERT INTO flood VALUES (?, ?)", [(key, now) for key, *_ in limits])
            return None
        return self._write(fn)

    def started(self, account: str, folder: str) -> Started | None:
        """Where the folder's first run started; None before it (and for a folder the ledger
        knew before schema 2: then Started(..., 0, ...), see ``start``)."""
        def fn(db: Tx) -> Started | None:
            row = db.one("SELECT uidvalidity, first_uid, at, since FROM starts "
                         "WHERE account = ? AND folder = ?", (account, folder))
            if row is None and db.one("SELECT 1 FROM messages WHERE account = ? AND "
                                      "folder = ? LIMIT 1", (account, folder)):
                return Started(0, 0, 0.0, None)  # ingested before there were starts
            return Started(*row) if row else None
        return self._read(fn)

    def start(self, account: str, folder: str, started: Started) -> Started:
        """Record the folder's first run, unless another process did first: what holds."""
        def fn(db: Tx) -> Started:
            db.one("INSERT INTO starts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (account, folder, started.uidvalidity, started.first_uid, started.at,
                    started.since))
            row = db.one("SELECT uidvalidity, first_uid, at, since FROM starts WHERE "
                         "account = ? AND folder = ?", (account, folder))
            assert row is not None
            return Started(*row)
        return self._write(fn, (account, folder))

def _same_message(dedupe: Dedupe) -> str:
    """The SQL condition that makes another row the same message under this policy."""
    if dedupe == "message-id":
        # The same Message-ID on other content is another message (IDs do get reused).
        return "(hash = ? AND (message_id = ? OR CAST(? AS TEXT) IS NULL))"
    if dedupe == "content":
        return "hash = ?"
    # Even with dedupe off, the same message back in the same folder (a UIDVALIDITY
    # change, or `retry`) is recognised by Message-ID and content together.
    return ("(account = ? AND folder = ? AND message_id IS NOT DISTINCT FROM ? "
            "AND hash = ?)")


def _same_message_args(dedupe: Dedupe, key: Key, message_id: str | None,
                       digest: str) -> tuple[object, ...]:
    if dedupe == "message-id":
        return (digest, message_id, message_id)
    if dedupe == "content":
        return (digest,)
    return (key.account, key.folder, message_id, digest)


# Conversions at the SQL boundary, and only there.

def _result(text: str | None) -> Result | None:
    return Result(text) if text is not None else None


def _disposition(text: str | None) -> Disposition | None:
    return Disposition.parse(text) if text is not None else None


def _text(disposition: Disposition | None) -> str | None:
    return str(disposition) if disposition is not None else None


# The columns a Record is made of, after the UID (_records).
_RECORD = ("uid, id, state, outcome, dispose_to, attempts, first_seen, next_try, reason, "
           "ticket")


def _records(rows: list[Row]) -> Iterator[tuple[int, Record]]:
    """(UID, Record) of rows read as _RECORD."""
    for uid, id, state, outcome, dispose_to, *rest in rows:
        yield uid, Record(id, State(state), _result(outcome), _disposition(dispose_to), *rest)
