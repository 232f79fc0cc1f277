"""status, history and retry: what the ledger tells, and sending set-aside mail again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imap_ingest.cli import main

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine
from .test_reliability import stage, uidvalidity


class Cli:
    def __init__(self, tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.path = tmp_path / "config.yaml"
        self.imap, self.redmine, self.capsys = imap, redmine, capsys
        self.configure()

    def configure(self, **config: Any) -> None:
        write_config(self.path, self.imap, self.redmine.url, **config)

    def __call__(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = main([*args[:1], "-c", str(self.path), *args[1:]])
        return code, self.capsys.readouterr().out


@pytest.fixture
def cli(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, imap, redmine, capsys)


def test_retry_from_failure_folder(cli: Cli, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Refused (422), cause fixed, `retry Failed`: back in INBOX, submitted on the next pass."""
    cli.configure(folder={"move_on_failure": "Failed"})
    raw = make()
    imap.append("INBOX", raw)
    redmine.answer = lambda request: (422, b"", 0)
    assert cli("run", "--once")[0] == 0
    redmine.answer = lambda request: (201, b"", 0)
    code, out = cli("retry", "Failed")
    assert code == 0 and "moved 1 message(s) back to INBOX" in out
    assert cli("run", "--once")[0] == 0
    assert redmine.emails == [raw, raw]  # refused once, taken once
    assert imap.messages("Failed") == imap.messages("INBOX") == {}


def test_retry_in_place_unmarks(cli: Cli, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Without move_on_failure a refused message is marked; `retry INBOX` unmarks it."""
    imap.append("INBOX", make())
    redmine.answer = lambda request: (422, b"", 0)
    assert cli("run", "--once")[0] == 0
    assert cli("run", "--once")[0] == 0 and len(redmine.requests) == 1
    redmine.answer = lambda request: (201, b"", 0)
    code, out = cli("retry", "INBOX")
    assert code == 0 and "unmarked 1 message(s) in INBOX" in out
    assert cli("run", "--once")[0] == 0
    assert len(redmine.requests) == 2 and imap.messages("INBOX") == {}


def test_retry_keeps_what_reached_the_tracker(cli: Cli, imap: ImapAccount,
                                              redmine: FakeRedmine) -> None:
    """A copy of a message the tracker already has is not sent back for a second ticket."""
    cli.configure(folder={"move_on_failure": "Failed"})
    raw = make()
    imap.append("INBOX", raw)
    assert cli("run", "--once")[0] == 0
    imap.append("Failed", raw)  # e.g. a copy filed there by hand
    code, out = cli("retry", "Failed")
    assert code == 0 and "kept uid 1" in out and "already in the tracker (from INBOX)" in out
    assert len(imap.messages("Failed")) == 1 and imap.messages("INBOX") == {}


def test_retry_quarantine_releases_the_in_doubt_record(tmp_path: Path, cli: Cli,
                                                       imap: ImapAccount,
                                                       redmine: FakeRedmine) -> None:
    """Quarantined (in doubt) mail still counts as sent until `retry` releases it."""
    from imap_ingest.ledger import Key

    raw = make()
    uid = imap.append("INBOX", raw)
    stage(tmp_path, Key("test", "INBOX", uidvalidity(imap), uid), raw, "submitting")
    assert cli("run", "--once")[0] == 0
    assert len(imap.messages("Quarantine")) == 1 and redmine.requests == []
    code, out = cli("retry", "Quarantine")
    assert code == 0 and "moved 1 message(s) back to INBOX" in out
    assert cli("run", "--once")[0] == 0
    assert redmine.emails == [raw] and imap.messages("Quarantine") == {}


def test_status_and_history(cli: Cli, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """status counts by outcome and shows the failing target; history lists each attempt."""
    cli.configure(folder={"rules": [{"if": ["^Subject: skip me"], "then": "skip"}]})
    imap.append("INBOX", make(message_id="<first@example.org>"))
    imap.append("INBOX", make(subject="skip me"))
    redmine.answer = lambda request: (503, b"", 0)
    assert cli("run", "--once")[0] == 75
    code, out = cli("status")
    assert code == 0
    assert "test/INBOX: 1 skipped, 1 waiting (oldest since " in out
    assert "target redmine: failing (1 in a row), next try " in out
    assert "Redmine is in trouble (503)" in out
    redmine.answer = lambda request: (201, b"", 0)
    assert cli("run", "--once", "--retry-now")[0] == 0
    code, out = cli("status")
    assert "test/INBOX: 1 skipped, 1 submitted" in out and "target redmine: ok" in out
    code, out = cli("history", "<first@example.org>")
    lines = out.splitlines()
    assert code == 0 and "test/INBOX uid 1" in lines[0] and "submitted" in lines[0]
    assert " redmine deferred 503: Redmine is in trouble (503)" in lines[1]
    assert " redmine submitted 201: " in lines[2]
    assert cli("history", "<nobody@example.org>")[0] == 1
