"""The flood breaker: per-sender and per-subject limits counted in the ledger."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from imap_ingest.cli import main
from imap_ingest.config.folders import Flood
from imap_ingest.flood import limits, thread_subject
from imap_ingest.ledger import SCHEMA_VERSION, Ledger
from imap_ingest.message import Message

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.ledger_files import as_left_by
from .support.mail import make
from .support.redmine_server import FakeRedmine

LIMITS = [("sender:a@example.org", 20, 3600.0)]


def test_twenty_of_five_hundred_admitted_then_the_window_slides(tmp_path: Path) -> None:
    """Of 500 mails at once 20 are let through; after the window the count starts again."""
    ledger = Ledger.open(tmp_path)
    admitted = [ledger.admit(LIMITS, 1000.0 + i / 1000) is None for i in range(500)]
    assert admitted.count(True) == 20 and admitted[:20] == [True] * 20
    assert ledger.admit(LIMITS, 1000.0 + 3599) == ("sender:a@example.org", 20)
    assert ledger.admit(LIMITS, 1000.0 + 3600.1) is None


def test_count_is_shared_by_two_ledger_handles(tmp_path: Path) -> None:
    """Two processes' handles on one ledger share one count."""
    first, second = Ledger.open(tmp_path), Ledger.open(tmp_path)
    for i in range(20):
        assert (first if i % 2 else second).admit(LIMITS, 5.0) is None
    assert first.admit(LIMITS, 5.0) is not None and second.admit(LIMITS, 5.0) is not None


def test_schema_one_ledger_is_migrated(tmp_path: Path) -> None:
    """A ledger of schema 1 (no flood or starts table) opens and is brought to the new one."""
    as_left_by(tmp_path, "DROP TABLE flood; DROP TABLE starts; "
                         "UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    ledger = Ledger.open(tmp_path)
    assert ledger.admit(LIMITS, 1.0) is None
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION) == "2"


def test_thread_subject_drops_prefixes_and_tags() -> None:
    """Re:, Fwd:, AW: and [tags] do not make a thread's mails count apart."""
    assert thread_subject("Re: AW: [Support] Fwd:  Printer   on fire") == "printer on fire"
    assert thread_subject(None) == ""
    flood = Flood.model_validate({"per_sender": "20/h", "per_subject": "50/2s"})
    assert limits(Message(make(subject="Re: x")), flood) == [
        ("sender:alice@example.org", 20, 3600.0), ("subject:x", 50, 2.0)]


def test_five_hundred_mails_from_one_sender(tmp_path: Path, imap: ImapAccount,
                                            redmine: FakeRedmine) -> None:
    """500 mails from one sender: 20 tickets, 480 held in Loops, none lost; later mail flows."""
    window = 20.0
    raws = [make(subject=f"flood {i}") for i in range(500)]
    with imap.client() as client:
        for raw in raws:
            client.append("INBOX", raw)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, loops_folder="Loops",
                        flood={"per_sender": f"20/{window:g}s"})
    started = time.monotonic()
    assert main(["run", "--once", "-c", str(path)]) == 0
    took = time.monotonic() - started
    assert took < window, f"the pass took {took:.1f} s, longer than the test's window"
    held = [body for _, body in imap.messages("Loops").values()]
    assert len(redmine.requests) == 20 and len(held) == 480
    assert imap.messages("INBOX") == {}
    assert sorted([r.field("email") for r in redmine.requests] + held) == sorted(raws)
    time.sleep(window - took + 0.5)
    later = [make(subject=f"later {i}") for i in range(20)]
    for raw in later:
        imap.append("INBOX", raw)
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert sorted(r.field("email") for r in redmine.requests[20:]) == sorted(later)
