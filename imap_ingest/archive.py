"""The archive: the raw bytes of each message a tracker took, in a Maildir (files 0600),
until ``keep_for`` has passed; and, for every message a tracker took, which ticket it
became, asked of the tracker once per pass (see tickets.py)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Archive, Config
from .files import private_dir
from .ledger import Ledger
from .message import Message
from .tickets import LookupFailed, Submitted, look_up

log = logging.getLogger(__name__)

SUBDIRS = ("tmp", "new", "cur")


def put(maildir: Path, name: str, raw: bytes, sub: str = "new") -> Path:
    """Deliver ``raw`` into ``maildir/sub/name`` the Maildir way: written in tmp/, then
    renamed, so a reader (sa-learn, a second export) never sees half a message."""
    for directory in SUBDIRS:
        private_dir(maildir / directory)
    tmp = maildir / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(raw)
        file.flush()
        os.fsync(file.fileno())
    final = maildir / sub / name
    os.replace(tmp, final)
    return final


def prune(config: Config, ledger: Ledger, now: float) -> int:
    """Remove what each archive has kept longer than its keep_for; how many files went."""
    removed = 0
    for archive in archives(config):
        cutoff = now - archive.keep_for
        known = set(ledger.unarchive(cutoff, archive.maildir))
        for sub in ("new", "cur"):
            directory = archive.maildir / sub
            for path in directory.iterdir() if directory.is_dir() else ():
                # By age too: a file whose record a crash never wrote.
                if path in known or path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
    return removed


def archives(config: Config) -> list[Archive]:
    """Every archive the configuration names, once each."""
    found = [config.archive, *(f.archive for a in config.accounts for f in a.folders),
             *(r.archive for r in config.routes.values())]
    return list({a.maildir: a for a in found if a is not None}.values())


@dataclass
class Keeper:
    """Archives what a tracker took, and asks afterwards which tickets it became."""

    config: Config
    ledger: Ledger
    archive: Archive | None

    def __post_init__(self) -> None:
        self.unknown: dict[str, list[Submitted]] = {}  # by target: tickets to look up

    def took(self, record: int, message: Message, target: str, ticket: str | None,
             where: str) -> None:
        """``target`` took ``message`` (ledger record ``record``); ``ticket`` if it said."""
        if self.archive is not None:
            digest = message.digest()
            path = put(self.archive.maildir, f"{int(time.time())}.{digest[:32]}.imap-ingest",
                       message.raw)
            self.ledger.archived(record, path)
        if ticket is None:
            self.unknown.setdefault(target, []).append(Submitted.of(record, message, where))

    def tickets(self) -> list[tuple[Submitted, str]]:
        """Ask the trackers (those with read credentials) which tickets the messages taken
        since the last call became; record and return what they said."""
        unknown, self.unknown = self.unknown, {}
        try:
            found = look_up(self.config, unknown)
        except LookupFailed as exc:
            log.warning("which tickets the messages became is unknown: %s", exc)
            return []
        self.ledger.tickets_found(found)
        return [(one, found[one.record]) for sent in unknown.values() for one in sent
                if one.record in found]
