"""Our own cost per message, counted rather than timed: ledger transactions and FETCH
commands of one pass over a backlog (the machine's speed drifts; counts do not)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from imap_ingest.cli import main

from .support.dovecot import ImapAccount
from .support.ingest_env import backlog, write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine

MESSAGES = 60
BATCH = 20


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement the ledger runs from now on."""
    seen: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = connect(*args, **kwargs)
        db.set_trace_callback(seen.append)
        return db

    monkeypatch.setattr("imap_ingest.ledger.sqlite.sqlite3.connect", traced)
    return seen


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The data items of every FETCH sent from now on."""
    seen: list[list[str]] = []
    fetch = IMAPClient.fetch

    def counted(client: IMAPClient, messages: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(list(data))
        return fetch(client, messages, data, *args, **kwargs)

    monkeypatch.setattr(IMAPClient, "fetch", counted)
    return seen


def _pass(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        folder={"batch_size": BATCH}, target={"concurrency": 1})
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert len(redmine.emails) == MESSAGES and imap.messages("INBOX") == {}


def test_a_posted_message_costs_one_ledger_transaction(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, statements: list[str]) -> None:
    """60 posted messages in batches of 20: one transaction each, plus a few per batch."""
    # The answer and the disposition ride in the next message's "submitting" transaction.
    backlog(imap, MESSAGES)
    _pass(tmp_path, imap, redmine)
    transactions = sum(statement.startswith("BEGIN") for statement in statements)
    assert MESSAGES <= transactions <= MESSAGES + 2 * MESSAGES // BATCH + 6, transactions


def test_one_fetch_per_batch(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                             fetches: list[list[str]]) -> None:
    """60 messages in batches of 20: per batch, one FETCH of sizes, then one of bodies."""
    # Each batch is judged just before it is fetched (mail behind a target that failed
    # meanwhile is not fetched at all), so its sizes come with it, not for the whole pass.
    backlog(imap, MESSAGES)
    _pass(tmp_path, imap, redmine)
    bodies = [items for items in fetches if any(item.startswith("BODY") for item in items)]
    assert len(bodies) == MESSAGES // BATCH
    assert fetches == [["RFC822.SIZE"], bodies[0]] * (MESSAGES // BATCH)


def test_headers_of_oversized_mail_in_one_fetch(tmp_path: Path, imap: ImapAccount,
                                                redmine: FakeRedmine,
                                                fetches: list[list[str]]) -> None:
    """Five messages over max_message_size, decided by a header rule: one FETCH of headers."""
    for i in range(5):
        imap.append("INBOX", make(subject=f"[list] big {i}", body="x" * 20_000))
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, folder={
        "max_message_size": "10k",
        "rules": [{"name": "list", "if": [r"^Subject: \[list\]"], "then": "discard"}]})
    assert main(["run", "--once", "-c", str(path)]) == 0
    headers = [items for items in fetches if any("HEADER" in item for item in items)]
    assert len(headers) == 1
    assert imap.messages("INBOX") == {} and redmine.emails == []
