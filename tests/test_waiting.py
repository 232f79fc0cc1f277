"""Mail that can only wait costs a pass nothing per message: it is not fetched again.

A folder's backlog behind a failing tracker, or waiting for its retry, made every pass
fetch, parse and judge each of its messages only to leave it (bench/soak.py: 170,000
deferrals for 1,600 submissions); with a backlog of N, the passes cost O(N) each."""

from __future__ import annotations

from pathlib import Path

from imap_ingest.config import load
from imap_ingest.service import Service
from imap_ingest.worker import FolderWorker

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine

COUNT = 20


def test_mail_that_can_only_wait_is_not_fetched_again(tmp_path: Path, imap: ImapAccount,
                                                      redmine: FakeRedmine) -> None:
    """Behind a failing target a pass fetches nothing; once it works, each is posted once."""
    for _ in range(COUNT):
        imap.append("INBOX", make())
    redmine.answer = lambda request: (503, b"", 0)
    running = Service(load(write_config(tmp_path / "config.yaml", imap, redmine.url,
                                        folder={"batch_size": 5})))
    account = running.config.accounts[0]
    worker = FolderWorker(account, account.folders[0], running.context())

    def fetched() -> float:
        return running.metrics.registry.get_sample_value(
            "imap_ingest_fetched_messages_total", {"account": "test", "folder": "INBOX"}) or 0

    try:
        assert worker.run() == 75
        posted = len(redmine.requests)  # as many as were in flight when the 503 came
        assert 0 < posted < COUNT and fetched() == COUNT
        # The target's retry is not due: neither its mail nor the messages' retries are.
        assert worker.run() == 75
        assert fetched() == COUNT and len(redmine.requests) == posted
        assert len(imap.messages("INBOX")) == COUNT
        redmine.answer = lambda request: (201, b"", 0)
        running.ledger.target_ok("redmine")  # its retry time has come
        assert worker.run() == 75  # those that got the 503 wait for their own retry
        assert len(redmine.requests) == COUNT
        assert len(set(redmine.emails)) == COUNT  # each once
        assert len(imap.messages("INBOX")) == posted
    finally:
        worker.close()
        running.close()
