"""The embedded backend: one SQLite file in the state_dir, for one host.

Folders are kept to one process by lock files (locks.py), so there are no leases here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..files import private_file
from .api import Ledger
from .records import Folder, LedgerError, Row, T, Tx
from .schema import MIGRATIONS, SCHEMA_VERSION, steps


class _Tx:
    """A transaction on the SQLite connection (placeholders are already ``?``)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def one(self, sql: str, args: Sequence[object] = ()) -> Row | None:
        row: Row | None = self._db.execute(sql, args).fetchone()
        return row

    def all(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        return self._db.execute(sql, args).fetchall()

    def dicts(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]:
        cursor = self._db.execute(sql, args)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self._db.executemany(sql, rows)


class SqliteLedger(Ledger):
    """One SQLite file shared by every folder, thread and process using the same state_dir."""

    def __init__(self, path: Path) -> None:
        super().__init__()
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
            self._write_lock = os.open(f"{path}.writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                       0o600)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {path}: cannot be used ({exc}); move it aside to start "
                              "a new one (the history in it will be lost)") from None
        except OSError as exc:
            raise LedgerError(f"ledger {path}: {exc.strerror}") from None

    def __str__(self) -> str:
        return f"ledger {self.path}"

    def close(self) -> None:
        self._db.close()
        os.close(self._write_lock)

    def check_lease(self, account: str, folder: str) -> None:
        return None  # the folder's lock file is held for the whole pass

    def holders(self) -> list[tuple[str, str, str, float]]:
        return []

    def _migrate(self) -> None:
        # One immediate transaction: two processes may start at once.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = _version(self._db)
                if version > SCHEMA_VERSION:
                    raise LedgerError(f"ledger {self.path}: written by a newer imap-ingest "
                                      f"(schema {version}, this one knows {SCHEMA_VERSION}); "
                                      "upgrade imap-ingest")
                for step in steps(version):
                    for statement in MIGRATIONS[step].split(";"):
                        self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _transaction(self, fn: Callable[[Tx], T], fence: Folder | None = None) -> T:
        with self._lock, self._writer(), _disk_full(self.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(_Tx(self._db))
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on a full disk
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """Writers of other processes (run --once's workers) in turn: SQLite's own wait for
        its lock polls, sleeping 1 ms and more each time, where a flock wakes the next at
        once."""
        fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    def _view(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            return fn(_Tx(self._db))


def _version(db: sqlite3.Connection) -> int:
    """The file's schema version; 0 for a new file."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


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
