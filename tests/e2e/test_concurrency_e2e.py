"""Concurrency against Debian's Redmine as it comes: SQLite without the IMMEDIATE patch, under
Passenger with two processes and no Rack::Lock, where concurrent writers get 422 "database
is locked" (docs/concurrency.md). Such a 422 must neither fail a message nor double an issue.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imap_ingest.cli import main
from imap_ingest.message import Message
from imap_ingest.tickets import BATCH, Made, RedmineTickets, Submitted
from imap_ingest.trackers.redmine import Form, RedmineTarget, crlf

from ..support.dovecot import ImapAccount
from ..support.ingest_env import write_config
from ..support.mail import make, make_attached
from .redmine import ADMIN_KEY, MAIL_KEY, PROJECT, ensure_template, passenger

MESSAGES = 60


@pytest.fixture(scope="module")
def stock_passenger() -> Iterator[tuple[str, Path]]:
    """Stock SQLite Redmine under Passenger x2 for this module: (URL, database file)."""
    template, _ = ensure_template()
    with passenger(template) as served:
        yield served


@contextlib.contextmanager
def cold_settings(url: str, database: Path) -> Iterator[None]:
    """Redmine's processes forget their settings again and again: the settings' last change
    put in the future, and pages asked for, whose controller clears a process's cache when
    a setting changed since. An attachment is then written after its issue's commit by a
    transaction that reads the settings it checks first, which is how SQLite may refuse it
    at once when another writer holds the lock (docs/concurrency.md)."""
    with sqlite3.connect(database) as db:
        (changed,) = db.execute("SELECT MAX(updated_on) FROM settings").fetchone()
        db.execute("UPDATE settings SET updated_on = '2999-01-01 00:00:00' "
                   "WHERE updated_on = ?", (changed,))
    stop = threading.Event()

    def ask() -> None:
        with requests.Session() as session:
            while not stop.wait(0.05):
                session.get(f"{url}/login", timeout=60)

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        yield
    finally:
        stop.set()
        asking.join()
        with sqlite3.connect(database) as db:
            db.execute("UPDATE settings SET updated_on = ? WHERE updated_on = "
                       "'2999-01-01 00:00:00'", (changed,))


@pytest.mark.parametrize("api_key", [None, ADMIN_KEY], ids=["no-lookup", "lookup"])
def test_concurrency_8_on_stock_sqlite_files_every_message_once(
        tmp_path: Path, imap: ImapAccount, stock_passenger: tuple[str, Path],
        api_key: str | None) -> None:
    """60 messages, half with attachments, at concurrency 8: 60 issues, none doubled or failed."""
    url, database = stock_passenger
    subjects = [f"stock sqlite {api_key is not None} {i}" for i in range(MESSAGES)]
    with imap.client() as client:
        for i, subject in enumerate(subjects):
            client.append("INBOX", make_attached(subject) if i % 2 else make(subject=subject))
    path = write_config(tmp_path / "config.yaml", imap, url, key=MAIL_KEY,
                        folder={"project": PROJECT, "move_on_failure": "Failed",
                                "batch_size": 20},
                        target={"concurrency": 8, "timeout": "60s",
                                **({"api_key": api_key} if api_key else {})})
    with cold_settings(url, database):
        assert main(["run", "--once", "-c", str(path)]) == 0
    with sqlite3.connect(database) as db:
        issues = Counter(subject for (subject,) in db.execute("SELECT subject FROM issues"))
    issues = Counter({subject: n for subject, n in issues.items() if subject in subjects})
    assert set(issues) == set(subjects) and max(issues.values()) == 1
    assert {folder: len(imap.messages(folder)) for folder in imap.folders()} == {"INBOX": 0}


@pytest.fixture(scope="module")
def crowded_since(stock_passenger: tuple[str, Path]) -> float:
    """More issues than a page of issues.json made just now: when they began."""
    url, _ = stock_passenger
    began = time.time()
    with requests.Session() as session:
        for i in range(BATCH + 10):
            answer = session.post(f"{url}/mail_handler", data=bytes(Form({
                "key": MAIL_KEY, "issue[project]": PROJECT,
                "email": crlf(make(subject=f"crowd {i}"))})), headers={
                "Content-Type": "application/x-www-form-urlencoded"}, timeout=60)
            assert answer.status_code == 201, answer.status_code
    return began


@pytest.mark.parametrize("subject", [
    "100% done_ok", "it's [Support] \"quoted\" a  b", "Ünïcode тема ✓", "~ tilde first",
    "word"], ids=["like-wildcards", "quotes-brackets", "unicode", "operator-like", "one-word"])
def test_a_lookup_finds_the_issue_of_its_subject_and_no_other(
        tmp_path: Path, imap: ImapAccount, stock_passenger: tuple[str, Path],
        crowded_since: float, subject: str) -> None:
    """Redmine's own search: the issue of exactly this subject, not one that contains it."""
    url, _ = stock_passenger
    mine, longer = (make(subject=s, message_id=f"<{n}-{abs(hash(subject))}@example.org>")
                    for n, s in ((1, subject), (2, f"{subject} and more")))
    with imap.client() as client:
        for raw in (longer, mine):
            client.append("INBOX", raw)
    path = write_config(tmp_path / "config.yaml", imap, url, key=MAIL_KEY,
                        folder={"project": PROJECT}, target={"api_key": ADMIN_KEY})
    assert main(["run", "--once", "-c", str(path)]) == 0
    target = RedmineTarget.model_validate({"type": "redmine", "url": url, "key": MAIL_KEY})
    lookup = RedmineTickets(target, ADMIN_KEY)
    try:
        made = lookup.made(Submitted.of(1, Message(mine), "here", at=crowded_since), 0, 0)
        searched = lookup.requests
    finally:
        lookup.close()
    with sqlite3.connect(stock_passenger[1]) as db:
        ids = {s: n for n, s in db.execute("SELECT id, subject FROM issues")}
    assert made == Made(str(ids[subject]))
    assert searched == 1  # one page: the search was narrowed to the subject on the server
