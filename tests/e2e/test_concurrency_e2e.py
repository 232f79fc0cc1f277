"""Concurrency against Debian's Redmine as it comes: SQLite without the IMMEDIATE patch, under
Passenger with two processes and no Rack::Lock, where concurrent writers get 422 "database
is locked" (docs/concurrency.md). Such a 422 must neither fail a message nor double an issue.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from imap_ingest.cli import main

from ..support.dovecot import ImapAccount
from ..support.ingest_env import write_config
from ..support.mail import make
from .redmine import ADMIN_KEY, MAIL_KEY, PROJECT, ensure_template, passenger

MESSAGES = 60


@pytest.fixture(scope="module")
def stock_passenger() -> Iterator[tuple[str, Path]]:
    """Stock SQLite Redmine under Passenger x2 for this module: (URL, database file)."""
    template, _ = ensure_template()
    with passenger(template) as served:
        yield served


@pytest.mark.parametrize("api_key", [None, ADMIN_KEY], ids=["no-lookup", "lookup"])
def test_concurrency_8_on_stock_sqlite_files_every_message_once(
        tmp_path: Path, imap: ImapAccount, stock_passenger: tuple[str, Path],
        api_key: str | None) -> None:
    """60 messages at concurrency 8: 60 issues, none doubled, none failed or in doubt."""
    url, database = stock_passenger
    subjects = [f"stock sqlite {api_key is not None} {i}" for i in range(MESSAGES)]
    with imap.client() as client:
        for subject in subjects:
            client.append("INBOX", make(subject=subject))
    path = write_config(tmp_path / "config.yaml", imap, url, key=MAIL_KEY,
                        folder={"project": PROJECT, "move_on_failure": "Failed",
                                "batch_size": 20},
                        target={"concurrency": 8, "timeout": "60s",
                                **({"api_key": api_key} if api_key else {})})
    assert main(["run", "--once", "-c", str(path)]) == 0
    with sqlite3.connect(database) as db:
        issues = Counter(subject for (subject,) in db.execute("SELECT subject FROM issues"))
    issues = Counter({subject: n for subject, n in issues.items() if subject in subjects})
    assert set(issues) == set(subjects) and max(issues.values()) == 1
    assert {folder: len(imap.messages(folder)) for folder in imap.folders()} == {"INBOX": 0}
