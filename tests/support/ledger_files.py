"""Ledger files as an older imap-ingest left them, for the migration tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from imap_ingest.ledger import Ledger


def as_left_by(state_dir: Path, script: str) -> Path:
    """A new ledger in ``state_dir`` with ``script`` run on it (tables dropped, the version
    set back); its path."""
    Ledger.open(state_dir).close()
    path = state_dir / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(script)
    return path
