"""SIGTERM: `imap-ingest run` (with or without --once) finishes the message in hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support.dovecot import ImapAccount
from .support.ingest_env import backlog, write_config
from .support.process import start, stop, wait_for
from .support.redmine_server import FakeRedmine


@pytest.mark.parametrize("once", [True, False], ids=["once", "daemon"])
def test_sigterm_finishes_the_message_in_hand(tmp_path: Path, imap: ImapAccount,
                                              redmine: FakeRedmine, once: bool) -> None:
    """SIGTERM mid-backlog finishes the post in flight and exits 0."""
    # The post in flight completes and is disposed of, the rest stay untouched — nothing
    # lost, nothing sent twice.
    redmine.answer = lambda request: (201, b"", 0.4)
    raws = backlog(imap, 10)
    config = write_config(tmp_path / "c.yaml", imap, redmine.url, folder={"batch_size": 100})
    process = start("run", *(["--once"] if once else []), "-c", str(config))
    wait_for(lambda: len(redmine.requests) >= 2)
    code, err = stop(process)
    # --once stopped early has left mail for the next run: 75, as cron expects.
    assert code == (75 if once else 0), err
    submitted = redmine.emails
    remaining = [body for _, body in imap.messages("INBOX").values()]
    assert 2 <= len(submitted) < 10
    assert sorted(submitted + remaining) == sorted(raws)  # each exactly once, in one place
