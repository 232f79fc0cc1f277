"""Per-folder leases in PostgreSQL, so that each folder is worked by one replica at a time.

A lease is a row (account, folder, holder, token, expires); times are the database's, so
the replicas' clocks do not matter. A replica renews its leases every ``ttl / 3``; one that
dies or pauses loses them ``ttl`` after its last renewal, and another takes them over with
the token incremented. Every ledger write for a folder checks, in its transaction, that the
row still has this replica's holder and token and has not expired (the fence), so a
replica that paused past its lease writes nothing more, and its pass stops.

Replicas spread folders: each counts the live replicas (their heartbeat rows younger than
``ttl``), holds at most its fair share (fair_share()), gives back the ones over it (not
while a pass runs there) and takes free or expired ones up to it, in an order of its own
(rendezvous hashing: a replica's folders stay its own across rebalances where they can).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from .records import Folder, LeaseLost

log = logging.getLogger(__name__)

LEASES_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    account TEXT NOT NULL, folder TEXT NOT NULL, holder TEXT NOT NULL,
    token BIGINT NOT NULL, expires TIMESTAMPTZ NOT NULL, PRIMARY KEY (account, folder));
CREATE TABLE IF NOT EXISTS replicas (holder TEXT PRIMARY KEY, seen TIMESTAMPTZ NOT NULL);
"""


def fair_share(folders: int, replicas: int) -> int:
    """How many folders one of ``replicas`` live replicas may hold."""
    return math.ceil(folders / max(1, replicas))


def preference(holder: str, folders: list[Folder]) -> list[Folder]:
    """The folders in ``holder``'s order of preference (rendezvous hashing)."""
    def rank(folder: Folder) -> bytes:
        return hashlib.sha256(f"{holder}\0{folder[0]}\0{folder[1]}".encode()).digest()
    return sorted(folders, key=rank)


class Leases:
    """This replica's leases on its configuration's folders, kept on a session of their own."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], holder: str,
                 folders: list[Folder], ttl: float, balance: bool = True) -> None:
        self.holder, self.ttl, self.balance = holder, ttl, balance
        self.folders = preference(holder, folders)
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._tokens: dict[Folder, int] = {}
        self._valid_until = 0.0  # time.monotonic() at which the leases held run out here
        self._busy: set[Folder] = set()
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_gain: Callable[[Folder], None] = lambda folder: None
        self.on_loss: Callable[[Folder], None] = lambda folder: None

    # -- what the passes ask ---------------------------------------------------------------

    def holds(self, folder: Folder) -> bool:
        """Whether this replica may start a pass over the folder now (renewed in time)."""
        with self._state:
            return folder in self._tokens and time.monotonic() < self._valid_until

    def held(self) -> list[Folder]:
        with self._state:
            return sorted(self._tokens)

    @contextmanager
    def busy(self, folder: Folder) -> Iterator[None]:
        """A pass runs over the folder: not given back to rebalance until it ends."""
        with self._state:
            self._busy.add(folder)
        try:
            yield
        finally:
            with self._state:
                self._busy.discard(folder)

    def fence(self, cursor: psycopg.Cursor[Any], folder: Folder) -> None:
        """In a ledger transaction: raise LeaseLost unless the folder's lease is still ours;
        the row stays locked until the transaction ends, so no take-over overtakes it."""
        with self._state:
            token = self._tokens.get(folder)
        if token is not None:
            cursor.execute("SELECT 1 FROM leases WHERE account = %s AND folder = %s AND "
                           "holder = %s AND token = %s AND expires > now() FOR SHARE",
                           (*folder, self.holder, token))
            if cursor.fetchone() is not None:
                return
        log.error("%s/%s: lease lost (token %s of %s): write refused, the pass stops",
                  *folder, token, self.holder)
        self._lost(folder)
        raise LeaseLost(f"{folder[0]}/{folder[1]}: another replica holds this folder now; "
                        "write refused")

    # -- keeping them ----------------------------------------------------------------------

    def start(self) -> None:
        """Keep the leases in a thread of their own until close()."""
        self._thread = threading.Thread(target=self._keep, name="leases", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self.tick(acquire=not first)
                first = False  # one round of heartbeats before taking: peers starting too
            except psycopg.Error as exc:
                log.warning("leases: %s; trying again", str(exc).strip() or "connection lost")
                self._drop()
            self._stop.wait(self.ttl / 3)

    def _session(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.broken or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def tick(self, acquire: bool = True) -> None:
        """Heartbeat, renew, then give back or take folders towards the fair share."""
        db = self._session()
        started = time.monotonic()
        db.execute("INSERT INTO replicas VALUES (%s, now()) ON CONFLICT (holder) DO UPDATE "
                   "SET seen = now()", (self.holder,))
        renewed = {(a, f): t for a, f, t in db.execute(
            "UPDATE leases SET expires = now() + make_interval(secs => %s) WHERE holder = %s "
            "RETURNING account, folder, token", (self.ttl, self.holder))}
        with self._state:
            lost = [folder for folder, token in self._tokens.items()
                    if renewed.get(folder) != token]
            self._tokens = {f: t for f, t in renewed.items() if f in self.folders}
            self._valid_until = started + self.ttl
        for folder in lost:
            log.warning("%s/%s: lease lost to another replica", *folder)
            self.on_loss(folder)
        if not (acquire and self.balance):
            return
        row = db.execute("SELECT count(*) FROM replicas WHERE seen > now() - "
                         "make_interval(secs => %s)", (self.ttl,)).fetchone()
        share = fair_share(len(self.folders), row[0] if row else 1)
        held = [f for f in reversed(self.folders) if f in renewed]
        for folder in held[:max(0, len(held) - share)]:
            with self._state:
                if folder in self._busy:
                    continue
            self.release(folder)
        for folder in self.folders:
            if len(self._tokens) >= share:
                break
            if folder not in self._tokens and self.acquire(folder):
                self.on_gain(folder)

    def acquire(self, folder: Folder) -> bool:
        """Take the folder's lease if nobody holds it or its holder's ran out."""
        db = self._session()
        started = time.monotonic()
        row = db.execute(
            "INSERT INTO leases VALUES (%s, %s, %s, 1, now() + make_interval(secs => %s)) "
            "ON CONFLICT (account, folder) DO UPDATE SET holder = excluded.holder, "
            "token = leases.token + 1, expires = excluded.expires "
            "WHERE leases.expires <= now() OR leases.holder = excluded.holder "
            "RETURNING token", (*folder, self.holder, self.ttl)).fetchone()
        if row is None:
            return False
        with self._state:
            self._tokens[folder] = row[0]
            # One validity for all: a hint for starting passes; the fence is what counts.
            self._valid_until = max(self._valid_until, started + self.ttl)
        log.info("%s/%s: lease taken (token %d)", *folder, row[0])
        return True

    def release(self, folder: Folder) -> None:
        """Give the folder back (rebalancing, or after a --once pass)."""
        with self._state:
            self._tokens.pop(folder, None)
        self._session().execute("DELETE FROM leases WHERE account = %s AND folder = %s AND "
                                "holder = %s", (*folder, self.holder))
        log.info("%s/%s: lease given back", *folder)
        self.on_loss(folder)

    def _lost(self, folder: Folder) -> None:
        with self._state:
            self._tokens.pop(folder, None)

    def close(self) -> None:
        """Give every lease back and leave: the others take over at their next tick."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.ttl)
        try:
            db = self._session()
            db.execute("DELETE FROM leases WHERE holder = %s", (self.holder,))
            db.execute("DELETE FROM replicas WHERE holder = %s", (self.holder,))
        except psycopg.OperationalError:
            pass  # the leases run out by themselves
        self._drop()

    @staticmethod
    def holders(cursor: psycopg.Cursor[Any]) -> list[tuple[str, str, str, float]]:
        """(account, folder, holder, seconds left) of every live lease."""
        cursor.execute("SELECT account, folder, holder, extract(epoch FROM expires - now()) "
                       "FROM leases WHERE expires > now() ORDER BY account, folder")
        return [(a, f, h, float(left)) for a, f, h, left in cursor.fetchall()]
