"""The ledger: what happened to every message, in SQLite; the only module with SQL.

A message to submit moves ``submitting`` → ``submitted`` (or ``decided``: refused, given
up; or ``waiting`` for a retry) → ``disposed``, each step committed before the next side
effect (the POST, the MOVE), so a run that dies anywhere leaves a record the next run can
finish from. A message a rule skips or moves is ``decided`` at once, then ``disposed``.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .backoff import Backoff
from .errors import ConfigError, IngestError
from .files import private_file
from .firstrun import Started
from .states import Disposition, Result, State

SCHEMA_VERSION = 2  # 2: the flood, starts and archived tables

Dedupe = Literal["message-id", "content", "off"]

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE folders (
    account TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    PRIMARY KEY (account, folder));
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    message_id TEXT, size INTEGER NOT NULL, hash TEXT NOT NULL,
    rule TEXT, target TEXT,
    state TEXT NOT NULL,          -- submitting | submitted | decided | waiting | disposed
    outcome TEXT,                 -- submitted | failed | partial | skipped | moved | ...
                                  -- duplicate | held | quarantined | retried | superseded
    ticket TEXT, reason TEXT,
    dispose_to TEXT,              -- delete | move:FOLDER | mark:KEYWORD
    attempts INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL, updated REAL NOT NULL, next_try REAL,
    UNIQUE (account, folder, uidvalidity, uid));
CREATE INDEX messages_message_id ON messages (message_id);
CREATE INDEX messages_hash ON messages (hash);
CREATE TABLE attempts (
    message INTEGER NOT NULL REFERENCES messages (id),
    at REAL NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL,
    status INTEGER, ticket TEXT, reason TEXT);
CREATE INDEX attempts_message ON attempts (message);
CREATE TABLE targets (
    name TEXT PRIMARY KEY, failures INTEGER NOT NULL, next_try REAL,
    last_error TEXT, last_error_at REAL);
CREATE TABLE flood (              -- schema 2: one row per message let through, per limit key
    key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX flood_key ON flood (key, at);
CREATE TABLE starts (             -- schema 2: where a folder's first run started
    account TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    first_uid INTEGER NOT NULL, at REAL NOT NULL, since REAL,
    PRIMARY KEY (account, folder));
CREATE TABLE archived (
    message INTEGER PRIMARY KEY REFERENCES messages (id),
    path TEXT NOT NULL, at REAL NOT NULL,
    exported TEXT, exported_at REAL);  -- spam | ham: written out for training, once
CREATE INDEX archived_at ON archived (at);
"""

# Rows in these states stand for a message the tracker has, or may have, or will get;
# verdict.copy_of says what each makes of another copy. A quarantined message may have
# reached the tracker: it counts until `retry` releases it. So does a partial one (RT
# recorded part of a chained action before refusing the rest).
_COUNTS_AS_SENT = (f"(state IN ('{State.SUBMITTING}', '{State.SUBMITTED}', '{State.WAITING}') "
                   f"OR outcome IN ('{Result.SUBMITTED}', '{Result.QUARANTINED}', "
                   f"'{Result.PARTIAL}'))")
# Another row than this key's, for the same target: one mail to two desks is two tickets.
_OTHER_COPY = ("NOT (account = ? AND folder = ? AND uidvalidity = ? AND uid = ?) "
               "AND target IS ?")


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


@dataclass(frozen=True, slots=True)
class Begun:
    """No earlier copy stands for the message: it is recorded as submitting."""

    reused: str | None = None  # where a different message with its Message-ID was seen


@dataclass(frozen=True, slots=True)
class Source:
    """Where a copy of a message was seen, and what became of it."""

    id: int
    folder: str
    outcome: Result | None
    ticket: str | None


class Ledger:
    """One SQLite file shared by every folder, thread and process using the same state_dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            private_file(path)  # SQLite gives its -wal and -shm files the same mode
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL survives a killed process (the case that matters
            # here); only a power cut can lose the last transactions.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {path}: cannot be used ({exc}); move it aside to start "
                              "a new one (the history in it will be lost)") from None
        except OSError as exc:
            raise LedgerError(f"ledger {path}: {exc.strerror}") from None

    @classmethod
    def open(cls, state_dir: Path) -> Ledger:
        """The ledger of a state_dir (its file ledger.sqlite3)."""
        return cls(state_dir / "ledger.sqlite3")

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        # IF NOT EXISTS and one immediate transaction: two processes may start at once.
        schema = _SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS").replace(
            "CREATE INDEX", "CREATE INDEX IF NOT EXISTS")
        # From schema 1, the step to 2 is the tables schema 2 added, which the script just
        # created; so the version is bumped in the same transaction.
        with self._lock:
            self._db.executescript(
                f"BEGIN IMMEDIATE; {schema} INSERT OR IGNORE INTO meta "
                f"VALUES ('schema_version', '{SCHEMA_VERSION}'); UPDATE meta SET value = "
                f"'{SCHEMA_VERSION}' WHERE key = 'schema_version' AND value = '1'; COMMIT;")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(row[0]) > SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.path}: written by a newer imap-ingest (schema "
                              f"{row[0]}, this one knows {SCHEMA_VERSION}); upgrade imap-ingest")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once so that check-then-insert is atomic."""
        with self._lock, _disk_full(self.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on a full disk
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- folders ---------------------------------------------------------------------------

    def uidvalidity_changed(self, account: str, folder: str, uidvalidity: int) -> bool:
        """Remember the folder's UIDVALIDITY; True when it differs from the one seen before."""
        with self._transaction() as db:
            row = db.execute("SELECT uidvalidity FROM folders WHERE account = ? AND folder = ?",
                             (account, folder)).fetchone()
            db.execute("INSERT OR REPLACE INTO folders VALUES (?, ?, ?)",
                       (account, folder, uidvalidity))
        return row is not None and row[0] != uidvalidity

    # -- messages --------------------------------------------------------------------------

    def records(self, account: str, folder: str, uidvalidity: int,
                uids: list[int]) -> dict[int, Record]:
        """The records of these UIDs of one folder, by UID: one query for a whole pass."""
        if not uids:
            return {}
        with self._lock:
            rows = self._db.execute(
                "SELECT uid, id, state, outcome, dispose_to, attempts, first_seen, next_try, "
                "reason, ticket FROM messages WHERE account = ? AND folder = ? AND "
                "uidvalidity = ? AND uid BETWEEN ? AND ?",
                (account, folder, uidvalidity, min(uids), max(uids))).fetchall()
        wanted = set(uids)
        return {uid: Record(id, State(state), _result(outcome), _disposition(dispose_to), *rest)
                for uid, id, state, outcome, dispose_to, *rest in rows if uid in wanted}

    def marked(self, account: str, folder: str, uidvalidity: int, keyword: str) -> list[int]:
        """The UIDs of one folder left in place with ``keyword``, as the ledger remembers
        them (the mark itself, on a server without keywords, is nowhere else)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT uid FROM messages WHERE account = ? AND folder = ? AND uidvalidity = ? "
                "AND state = ? AND dispose_to = ? ORDER BY uid",
                (account, folder, uidvalidity, State.DISPOSED, f"mark:{keyword}")).fetchall()
        return [uid for (uid,) in rows]

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
        with self._transaction() as db:
            row = db.execute(
                f"SELECT id, account, folder, uid, state, outcome, ticket FROM messages "
                f"WHERE {_COUNTS_AS_SENT} AND {_OTHER_COPY} AND {same} "
                # What the tracker accepted first (a plain duplicate), then what is in doubt
                # (the safer reading), then what waits.
                f"ORDER BY CASE WHEN outcome IS '{Result.SUBMITTED}' THEN 0 "
                f"WHEN state = '{State.WAITING}' THEN 2 ELSE 1 END LIMIT 1",
                (*args, *_same_message_args(dedupe, key, message_id, digest))).fetchone()
            if row is not None:
                id, account, folder, uid, state, outcome, ticket = row
                return Earlier(id, f"{account}/{folder} uid {uid}", State(state),
                               _result(outcome), ticket)
            # A different message with this Message-ID: worth a warning, not a dedupe.
            reused = db.execute(
                f"SELECT account, folder, uid FROM messages WHERE {_COUNTS_AS_SENT} AND "
                f"{_OTHER_COPY} AND message_id = ? AND hash IS NOT ? LIMIT 1",
                (*args, message_id, digest)).fetchone() if dedupe == "message-id" else None
            db.execute(
                "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, size, hash, "
                "rule, target, state, first_seen, updated) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{State.SUBMITTING}', ?, ?) "
                "ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET "
                f"state = '{State.SUBMITTING}', rule = excluded.rule, target = excluded.target, "
                "updated = excluded.updated",
                (key.account, key.folder, key.uidvalidity, key.uid, message_id, size, digest,
                 rule, target, now, now))
        return Begun(f"{reused[0]}/{reused[1]} uid {reused[2]}" if reused else None)

    def take_over(self, earlier: Earlier, key: Key, message_id: str | None, size: int,
                  digest: str, rule: str, target: str) -> Record | None:
        """Make this copy the one that waits for the retry ``earlier`` was waiting for, with
        its attempts, first sight and next try; None when ``earlier`` waits no more (another
        pass or process got there first)."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT outcome, reason, attempts, first_seen, next_try FROM messages "
                f"WHERE id = ? AND state = '{State.WAITING}'", (earlier.id,)).fetchone()
            if row is None:
                return None
            outcome, reason, attempts, first_seen, next_try = row
            db.execute(
                f"UPDATE messages SET state = '{State.DISPOSED}', "
                f"outcome = '{Result.SUPERSEDED}', reason = ?, updated = ? WHERE id = ?",
                (f"its retry taken over by {key.account}/{key.folder} uid {key.uid}", now,
                 earlier.id))
            new = db.execute(
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
                 rule, target, outcome, reason, attempts, first_seen, next_try, now)).fetchone()
        return Record(new[0], State.WAITING, _result(outcome), None, attempts, first_seen,
                      next_try, reason, None)

    def answered(self, key: Key, target: str, state: State, outcome: Result, reason: str, *,
                 status: int | None = None, ticket: str | None = None,
                 dispose_to: Disposition | None = None,
                 next_try: float | None = None, attempt: bool = True) -> int:
        """Record the tracker's answer and the message's new state; ``attempt`` counts it
        against the message's max_attempts. Returns the message's record id."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "UPDATE messages SET state = ?, outcome = ?, reason = ?, ticket = ?, "
                "dispose_to = ?, next_try = ?, attempts = attempts + ?, updated = ? "
                "WHERE account = ? AND folder = ? AND uidvalidity = ? AND uid = ? RETURNING id",
                (state, outcome, reason, ticket, _text(dispose_to), next_try, int(attempt), now,
                 key.account, key.folder, key.uidvalidity, key.uid)).fetchone()
            db.execute("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (row[0], now, target, outcome, status, ticket, reason))
        return int(row[0])

    def decided(self, key: Key, message_id: str | None, size: int, digest: str, rule: str,
                outcome: Result, reason: str, dispose_to: Disposition,
                target: str | None = None) -> None:
        """Record a decision made without the tracker (skip, move, duplicate, too large …)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO messages (account, folder, uidvalidity, uid, message_id, size, hash, "
                "rule, target, state, outcome, reason, dispose_to, first_seen, updated) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{State.DECIDED}', ?, ?, ?, ?, ?) "
                "ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET "
                f"state = '{State.DECIDED}', outcome = excluded.outcome, reason = excluded.reason, "
                "dispose_to = excluded.dispose_to, updated = excluded.updated",
                (key.account, key.folder, key.uidvalidity, key.uid, message_id, size, digest,
                 rule, target, outcome, reason, str(dispose_to), now, now))

    def disposed(self, keys: list[Key]) -> None:
        """These messages are gone from their folder (or marked): one transaction."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                f"UPDATE messages SET state = '{State.DISPOSED}', updated = ? "
                "WHERE account = ? AND folder = ? AND uidvalidity = ? AND uid = ?",
                [(now, k.account, k.folder, k.uidvalidity, k.uid) for k in keys])

    def sources(self, account: str, message_id: str | None, digest: str) -> list[Source]:
        """Every record of this message (same Message-ID and content) in this account."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, folder, outcome, ticket FROM messages WHERE account = ? AND "
                "message_id IS ? AND hash = ? ORDER BY updated DESC",
                (account, message_id, digest)).fetchall()
        return [Source(id, folder, _result(outcome), ticket)
                for id, folder, outcome, ticket in rows]

    def thread_ticket(self, target: str, message_ids: list[str]) -> str | None:
        """The ticket the latest of these messages became at ``target``, if known."""
        if not message_ids:
            return None
        marks = ", ".join("?" * len(message_ids))
        with self._lock:
            row = self._db.execute(
                f"SELECT ticket FROM messages WHERE target = ? AND message_id IN ({marks}) "
                "AND ticket IS NOT NULL ORDER BY updated DESC LIMIT 1",
                (target, *message_ids)).fetchone()
        return None if row is None else str(row[0])

    def release(self, ids: list[int]) -> None:
        """Forget that these records may be in the tracker: `retry` sends the message again."""
        with self._transaction() as db:
            db.executemany(f"UPDATE messages SET state = '{State.DISPOSED}', "
                           f"outcome = '{Result.RETRIED}', "
                           "dispose_to = NULL, updated = ? WHERE id = ?",
                           [(time.time(), i) for i in ids])

    # -- reports ---------------------------------------------------------------------------

    def summary(self) -> list[tuple[str, str, str, int, float]]:
        """Per account and folder: (account, folder, state or outcome, count, oldest)."""
        with self._lock:
            return self._db.execute(
                f"SELECT account, folder, CASE WHEN state = '{State.DISPOSED}' THEN outcome "
                "ELSE state END AS what, count(*), min(first_seen) FROM messages "
                "GROUP BY account, folder, what ORDER BY account, folder, what").fetchall()

    def targets(self) -> list[tuple[str, int, float | None, str | None, float | None]]:
        """(name, consecutive failures, next try, last error, when) for every target seen."""
        with self._lock:
            return self._db.execute("SELECT * FROM targets ORDER BY name").fetchall()

    def history(self, message_id: str) -> list[tuple[dict[str, object], list[dict[str, object]]]]:
        """Every record of the message, each with its attempts, oldest first."""
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                rows = self._db.execute("SELECT * FROM messages WHERE message_id = ? "
                                        "ORDER BY first_seen", (message_id,)).fetchall()
                return [({**dict(row), "dispose_to": _disposition(row["dispose_to"])},
                         [dict(attempt) for attempt in self._db.execute(
                             "SELECT * FROM attempts WHERE message = ? ORDER BY at",
                             (row["id"],))])
                        for row in rows]
            finally:
                self._db.row_factory = None

    # -- flood limits and first runs ------------------------------------------------------

    def admit(self, limits: list[tuple[str, int, float]], now: float) -> tuple[str, int] | None:
        """Count a message against each (key, limit, window in seconds): None when it is
        under every limit (then it is counted under each key), else the first key that is at
        its limit and how many it let through in the window. One transaction, so passes and
        processes sharing the ledger share the count."""
        with self._transaction() as db:
            for key, limit, window in limits:
                db.execute("DELETE FROM flood WHERE key = ? AND at <= ?", (key, now - window))
                count = db.execute("SELECT count(*) FROM flood WHERE key = ?",
                                   (key,)).fetchone()[0]
                if count >= limit:
                    return key, count
            db.executemany("INSERT INTO flood VALUES (?, ?)", [(key, now) for key, *_ in limits])
        return None

    def started(self, account: str, folder: str) -> Started | None:
        """Where the folder's first run started; None before it (and for a folder the ledger
        knew before schema 2: then Started(..., 0, ...), see ``start``)."""
        with self._lock:
            row = self._db.execute("SELECT uidvalidity, first_uid, at, since FROM starts "
                                   "WHERE account = ? AND folder = ?",
                                   (account, folder)).fetchone()
            if row is None and self._db.execute(
                    "SELECT 1 FROM messages WHERE account = ? AND folder = ? LIMIT 1",
                    (account, folder)).fetchone():
                return Started(0, 0, 0.0, None)  # ingested before there were starts
        return Started(*row) if row else None

    def start(self, account: str, folder: str, started: Started) -> Started:
        """Record the folder's first run, unless another process did first: what holds."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO starts VALUES (?, ?, ?, ?, ?, ?)",
                       (account, folder, started.uidvalidity, started.first_uid, started.at,
                        started.since))
            row = db.execute("SELECT uidvalidity, first_uid, at, since FROM starts WHERE "
                             "account = ? AND folder = ?", (account, folder)).fetchone()
        return Started(*row)

    def pending(self) -> list[tuple[str, str, float | None, int, int, int, int, str | None]]:
        """Per folder: (account, folder, oldest first_seen still pending, waiting, held,
        failed, quarantined, the latest error); pending is waiting or being posted."""
        with self._lock:
            return self._db.execute(
                "SELECT account, folder, "
                f"min(CASE WHEN state IN ('{State.WAITING}', '{State.SUBMITTING}') "
                "THEN first_seen END), "
                f"sum(state = '{State.WAITING}'), sum(outcome = '{Result.HELD}'), "
                f"sum(outcome IN ('{Result.FAILED}', '{Result.PARTIAL}')), "
                f"sum(outcome = '{Result.QUARANTINED}'), "
                f"(SELECT reason FROM messages AS m WHERE m.account = messages.account AND "
                f"m.folder = messages.folder AND (m.state = '{State.WAITING}' OR m.outcome IN "
                f"('{Result.FAILED}', '{Result.PARTIAL}', '{Result.QUARANTINED}')) "
                "ORDER BY m.updated DESC LIMIT 1) "
                "FROM messages GROUP BY account, folder").fetchall()

    def latest(self, limit: int) -> list[dict[str, object]]:
        """The ``limit`` messages dealt with last, newest first."""
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return [dict(row) for row in self._db.execute(
                    "SELECT account, folder, uid, message_id, rule, target, state, outcome, "
                    "reason, ticket, dispose_to, updated FROM messages "
                    "ORDER BY updated DESC LIMIT ?", (limit,))]
            finally:
                self._db.row_factory = None

    def hourly(self, since: float) -> list[tuple[int, str, int]]:
        """(hour as a timestamp, outcome, messages) of the attempts and decisions since then."""
        with self._lock:
            return self._db.execute(
                "SELECT CAST(updated / 3600 AS INTEGER) * 3600 AS hour, "
                "coalesce(outcome, state), count(*) FROM messages WHERE updated >= ? "
                "GROUP BY hour, 2 ORDER BY hour", (since,)).fetchall()

    # -- targets ---------------------------------------------------------------------------

    def target_state(self, name: str) -> tuple[int, float]:
        """The target's consecutive temporary failures, and when it may be tried again."""
        with self._lock:
            row = self._db.execute("SELECT failures, next_try FROM targets WHERE name = ?",
                                   (name,)).fetchone()
        return (row[0], row[1] or 0.0) if row else (0, 0.0)

    def target_failed(self, name: str, reason: str, backoff: Backoff,
                      at_least: float = 0.0) -> float:
        """Count a temporary failure of the target; returns when to try it next (no sooner
        than ``at_least`` seconds, e.g. a Retry-After)."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT failures FROM targets WHERE name = ?", (name,)).fetchone()
            failures = (row[0] if row else 0) + 1
            next_try = now + max(backoff.delay(failures), backoff.bounded(at_least))
            db.execute("INSERT OR REPLACE INTO targets VALUES (?, ?, ?, ?, ?)",
                       (name, failures, next_try, reason, now))
        return next_try

    def target_ok(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE targets SET failures = 0, next_try = NULL WHERE name = ?",
                       (name,))

    # -- the archive and the tickets messages became ---------------------------------------

    def archived(self, message: int, path: Path) -> None:
        """The message of record ``message`` is archived at ``path``."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO archived (message, path, at) VALUES (?, ?, ?)",
                       (message, str(path), time.time()))

    def tickets_found(self, found: dict[int, str]) -> None:
        """The tickets these records became, as the tracker told us after the fact."""
        with self._transaction() as db:
            db.executemany("UPDATE messages SET ticket = ? WHERE id = ?",
                           [(ticket, id) for id, ticket in found.items()])

    def unexported(self, since: float) -> list[Archived]:
        """What is archived since then and not yet exported for training, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT m.id, m.message_id, m.hash, m.target, m.ticket, a.path, a.at "
                "FROM archived AS a JOIN messages AS m ON m.id = a.message "
                "WHERE a.exported IS NULL AND a.at >= ? ORDER BY a.at", (since,)).fetchall()
        return [Archived(id, message_id, digest, target, ticket, Path(path), at)
                for id, message_id, digest, target, ticket, path, at in rows]

    def exported(self, ids: list[int], kind: str) -> None:
        """These archived messages are written out for training as ``kind``."""
        with self._transaction() as db:
            db.executemany("UPDATE archived SET exported = ?, exported_at = ? WHERE message = ?",
                           [(kind, time.time(), id) for id in ids])

    def unarchive(self, before: float, under: Path) -> list[Path]:
        """Forget what was archived under that directory before then; the paths, for
        their files to go too."""
        prefix = f"{under}/"
        with self._transaction() as db:
            rows = db.execute("DELETE FROM archived WHERE at < ? AND substr(path, 1, ?) = ? "
                              "RETURNING path", (before, len(prefix), prefix)).fetchall()
        return [Path(path) for path, in rows]

    def archive_summary(self) -> tuple[int, int, int, int]:
        """(messages archived, of which with a known ticket, exported as spam, as ham)."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*), count(m.ticket), coalesce(sum(a.exported = 'spam'), 0), "
                "coalesce(sum(a.exported = 'ham'), 0) FROM archived AS a "
                "JOIN messages AS m ON m.id = a.message").fetchone()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])


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


@contextmanager
def _disk_full(path: Path) -> Iterator[None]:
    """A full disk is a LedgerError that says so, not a traceback."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as exc:
        full = (exc.sqlite_errorcode == sqlite3.SQLITE_FULL
                if isinstance(exc, sqlite3.OperationalError) else exc.errno == errno.ENOSPC)
        if not full:
            raise
        raise LedgerError(f"ledger {path}: the disk is full; nothing more can be recorded "
                          "until there is space again") from None


def _same_message(dedupe: Dedupe) -> str:
    """The SQL condition that makes another row the same message under this policy."""
    if dedupe == "message-id":
        # The same Message-ID on other content is another message (IDs do get reused).
        return "(hash = ? AND (message_id = ? OR ? IS NULL))"
    if dedupe == "content":
        return "hash = ?"
    # Even with dedupe off, the same message back in the same folder (a UIDVALIDITY
    # change, or `retry`) is recognised by Message-ID and content together.
    return "(account = ? AND folder = ? AND message_id IS ? AND hash = ?)"


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
