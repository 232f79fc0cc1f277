"""allow_senders through dovecot and a real HTTP server: lifted checks, said in history."""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_ingest.cli import main

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine


def test_bulk_mail_from_an_allowed_domain_is_submitted_and_history_says_why(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Bulk mail from *.partner.example passes, the rest is held; history names the entry."""
    allowed = make(sender="crm@tickets.partner.example", headers={"Precedence": "bulk"},
                   message_id="<allowed@example.org>")
    other = make(sender="news@other.example", headers={"Precedence": "bulk"})
    own = make(sender="redmine@tickets.partner.example", headers={"X-Mailer": "Redmine"})
    for raw in (allowed, other, own):
        imap.append("INBOX", raw)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, loops_folder="Loops",
                        allow_senders=["*.partner.example"])
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert [r.field("email") for r in redmine.requests] == [allowed]
    assert sorted(body for _, body in imap.messages("Loops").values()) == sorted([other, own])
    capsys.readouterr()
    assert main(["history", "-c", str(path), "<allowed@example.org>"]) == 0
    assert "precedence by allow_senders *.partner.example" in capsys.readouterr().out
