"""A safe first run: start: new, since:, max_age:, the backlog warning, and check's count."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from imap_ingest.cli import main
from imap_ingest.config.folders import parse_start
from imap_ingest.firstrun import Started, first_uid, plan
from imap_ingest.ledger import Ledger
from imap_ingest.states import SKIPPED

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine

OLD = datetime.now() - timedelta(days=40)


def test_plan_start_new_keeps_uids_above_the_first_run() -> None:
    """start: new takes the UIDs above those the first run saw, while UIDVALIDITY holds."""
    new = parse_start("new")
    started = Started(7, first_uid(new, [1, 2, 3]), 1000.0, None)
    assert plan(new, started, 7, [1, 2, 3, 4], None, 2000.0).uids == [4]
    changed = plan(new, started, 8, [1, 2], None, 2000.0)
    assert changed.uids == [1, 2] and changed.cutoff == 1000.0


def test_plan_takes_the_later_of_since_and_max_age() -> None:
    """The cutoff is the later of start: since and now - max_age, and says which."""
    started = Started(1, 0, 0.0, 500.0)
    assert plan(parse_start("since:1s"), started, 1, [1], 100.0, 1000.0).cutoff == 900.0
    assert "since" in plan(parse_start("since:1s"), started, 1, [1], None, 1000.0).why


def test_start_new_on_two_thousand_old_messages(tmp_path: Path, imap: ImapAccount,
                                                redmine: FakeRedmine) -> None:
    """start: new leaves 2,000 old messages untouched and ingests only what arrives after."""
    old = [make(subject=f"old {i}") for i in range(2000)]
    with imap.client() as client:
        for chunk in range(0, len(old), 500):
            client.multiappend("INBOX", old[chunk:chunk + 500])
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, folder={"start": "new"})
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert redmine.requests == []
    new = [make(subject="new 1"), make(subject="new 2")]
    for raw in new:
        imap.append("INBOX", raw)
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert [r.field("email") for r in redmine.requests] == new
    left = imap.messages("INBOX")
    assert len(left) == 2000 and all(flags == () for flags, _ in left.values())


def test_max_age_leaves_old_mail_marked_and_counted(tmp_path: Path, imap: ImapAccount,
                                                    redmine: FakeRedmine,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """max_age: old mail is marked skipped, recorded as skipped-by-age, counted in status."""
    old, fresh = make(subject="old"), make(subject="fresh")
    imap.create("INBOX")
    with imap.client() as client:
        client.append("INBOX", old, msg_time=OLD)
        client.append("INBOX", fresh)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, folder={"max_age": "30d"})
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert [r.field("email") for r in redmine.requests] == [fresh]
    [(flags, body)] = imap.messages("INBOX").values()
    assert body == old and flags == (SKIPPED.encode(),)
    capsys.readouterr()
    assert main(["status", "-c", str(path)]) == 0
    assert "1 skipped-by-age" in capsys.readouterr().out


def test_start_since_date(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """start: since:DATE leaves mail that arrived before DATE alone."""
    old, fresh = make(subject="old"), make(subject="fresh")
    with imap.client() as client:
        client.append("INBOX", old, msg_time=OLD)
        client.append("INBOX", fresh)
    since = (datetime.now() - timedelta(days=10)).date().isoformat()
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        folder={"start": f"since:{since}"})
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert [r.field("email") for r in redmine.requests] == [fresh]


def test_big_first_backlog_is_warned_about(tmp_path: Path, imap: ImapAccount,
                                           redmine: FakeRedmine,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A first run over backlog_warning messages warns, and goes on without a terminal."""
    for i in range(4):
        imap.append("INBOX", make(subject=f"m {i}"))
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, backlog_warning=3)
    with caplog.at_level(logging.WARNING):
        assert main(["run", "--once", "-c", str(path)]) == 0
    assert "first run over 4 messages (backlog_warning: 3)" in caplog.text
    assert len(redmine.requests) == 4
    assert Ledger.open(tmp_path / "state").started("test", "INBOX") is not None


def test_check_says_what_a_first_run_would_ingest(tmp_path: Path, imap: ImapAccount,
                                                  redmine: FakeRedmine,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """check counts, per folder, the messages a first run would ingest."""
    with imap.client() as client:
        client.append("INBOX", make(), msg_time=OLD)
        client.append("INBOX", make())
    for folder, count in (({"max_age": "30d"}, 1), ({"start": "new"}, 0), ({}, 2)):
        path = write_config(tmp_path / "config.yaml", imap, redmine.url, folder=folder)
        main(["check", "-c", str(path)])
        assert f"2 new message(s); a first run would ingest {count}" in capsys.readouterr().out
