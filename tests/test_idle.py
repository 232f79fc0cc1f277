"""IDLE: the service hears of new mail at once, and polls alone when IDLE is off."""

from __future__ import annotations

import time
from pathlib import Path

from .support.daemon import Daemon, start
from .support.dovecot import ImapAccount
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine


def test_idle_brings_mail_in_at_once(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount,
                                     redmine: FakeRedmine) -> None:
    """With IDLE, mail appended during a 60 s poll interval is posted in seconds."""
    # Only IDLE can explain it (bench/latency.py measures it precisely).
    one, _ = start(daemon, tmp_path, imap, redmine, folder={"interval": "60s"})
    time.sleep(0.5)  # the first pass is done; the watcher is in IDLE
    raw = make(subject="idle")
    appended = time.monotonic()
    imap.append("INBOX", raw)
    wait_for(lambda: redmine.emails == [raw], timeout=5)
    assert time.monotonic() - appended < 5
    one.stop()


def test_without_idle_the_poll_still_works(daemon: list[Daemon], tmp_path: Path,
                                           imap: ImapAccount, redmine: FakeRedmine) -> None:
    """With idle off, the poll alone brings mail in and no IDLE is logged."""
    one, _ = start(daemon, tmp_path, imap, redmine, folder={"interval": "1s", "idle": False})
    imap.append("INBOX", make())
    wait_for(lambda: len(redmine.requests) == 1, timeout=10)
    assert "idle" not in one.stop().lower().replace("idle: false", "")
