"""`imap-ingest run` polling on an interval: new mail is picked up, passes never overlap."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from .support.dovecot import ImapAccount
from .support.ingest_env import backlog, write_config
from .support.mail import make
from .support.process import start, stop, wait_for
from .support.redmine_server import FakeRedmine


def test_daemon_polls_and_picks_up_new_mail(tmp_path: Path, imap: ImapAccount,
                                            redmine: FakeRedmine) -> None:
    """Mail that arrives while the service runs is submitted on the next interval; SIGTERM → 0."""
    config = write_config(tmp_path / "c.yaml", imap, redmine.url, folder={"interval": "1s"})
    process = start("run", "-c", str(config))
    try:
        raw = make(subject="arrives later")
        time.sleep(1.5)  # the first pass has run and found nothing
        imap.append("INBOX", raw)
        wait_for(lambda: len(redmine.requests) == 1)
        wait_for(lambda: imap.messages("INBOX") == {})
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert redmine.emails == [raw]
    assert "SIGTERM received" in err


def test_passes_of_one_folder_never_overlap(tmp_path: Path, imap: ImapAccount,
                                            redmine: FakeRedmine) -> None:
    """An interval far shorter than a pass: no message is posted twice."""
    redmine.answer = lambda request: (201, b"", 0.3)
    raws = backlog(imap, 6)
    config = write_config(tmp_path / "c.yaml", imap, redmine.url, folder={"interval": "0.1s"})
    process = start("run", "-c", str(config))
    try:
        wait_for(lambda: imap.messages("INBOX") == {})
        time.sleep(0.5)
    finally:
        code, err = stop(process, signal.SIGINT)
    assert code == 0, err
    assert sorted(redmine.emails) == sorted(raws)
