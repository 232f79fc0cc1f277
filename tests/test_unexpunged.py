"""A pass stopped between flagging its messages \\Deleted and expunging them (SIGKILL, or the
connection dropped) is finished by the next pass, with real dovecot; a person's \\Deleted
mail, unknown to the ledger, stays."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from imap_ingest.cli import main
from imap_ingest.errors import EX_TEMPFAIL
from imap_ingest.ledger import Ledger
from imap_ingest.message import Message

from .support.dovecot import ImapAccount
from .support.ingest_env import backlog, write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine
from .test_model import Killed

DELETED = b"\\Deleted"


def faults(kind: str) -> BaseException:
    """What stops a pass between STORE and EXPUNGE: a SIGKILL (nothing after it runs, as
    test_model's Killed) or a dropped connection."""
    return Killed() if kind == "killed" else ConnectionResetError("connection reset by peer")


@pytest.fixture
def searched(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The criteria of every SEARCH the run sends, in order."""
    search, criteria_sent = IMAPClient.search, []

    def counted(client: IMAPClient, criteria: Any = "ALL", charset: str | None = None) -> Any:
        criteria_sent.append(list(criteria))
        return search(client, criteria, charset)

    monkeypatch.setattr(IMAPClient, "search", counted)
    return criteria_sent


def finished(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The UIDs whose deletion a pass finished, as its log lines name them."""
    return sorted(r.getMessage().split(":")[0] for r in caplog.records
                  if "not yet expunged" in r.getMessage())


@pytest.mark.parametrize("kind", ["killed", "dropped"])
def test_next_pass_expunges_what_a_stopped_pass_flagged(
        kind: str, tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        searched: list[list[Any]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stopped after STORE \\Deleted: the next pass expunges and logs each once; theirs stays."""
    raws = backlog(imap, 3)
    theirs = make(subject="a person deleted this")
    imap.append("INBOX", theirs, flags=[DELETED])
    path = write_config(tmp_path / "config.yaml", imap, redmine.url)
    expunge = IMAPClient.uid_expunge

    def stopped(client: IMAPClient, messages: Any) -> Any:
        raise faults(kind)

    monkeypatch.setattr(IMAPClient, "uid_expunge", stopped)
    if kind == "killed":
        with pytest.raises(Killed):
            main(["run", "--once", "-c", str(path)])
    else:
        assert main(["run", "--once", "-c", str(path)]) == EX_TEMPFAIL
    left = present(imap)
    assert len(left) == 4 and all(DELETED in flags for flags, _ in left.values()), (
        "the stopped pass flagged every message \\Deleted and expunged none")
    assert len(redmine.emails) == 3

    monkeypatch.setattr(IMAPClient, "uid_expunge", expunge)
    searched.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imap_ingest"):
        assert main(["run", "--once", "-c", str(path)]) == 0
    assert [body for _, body in present(imap).values()] == [theirs]
    assert len(redmine.emails) == 3, "nothing is sent again"
    assert finished(caplog) == [f"test/INBOX uid {uid}" for uid in (1, 2, 3)]
    assert sum("DELETED" in criteria for criteria in searched) == 1

    searched.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imap_ingest"):
        assert main(["run", "--once", "-c", str(path)]) == 0
    assert finished(caplog) == []
    assert sum("DELETED" in criteria for criteria in searched) == 0, (
        "a pass with no deletion pending costs no search")
    assert [(DELETED in flags, body) for flags, body in present(imap).values()] == [
        (True, theirs)], "a person's \\Deleted mail stays, flagged, unexpunged"
    assert {Message(raw).message_id for raw in raws} == {
        Message(raw).message_id for raw in redmine.emails}



def test_a_deletion_done_but_not_recorded_is_recorded_by_the_next_pass(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        searched: list[list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after EXPUNGE, before the ledger's write: the next pass records them gone, once."""
    backlog(imap, 3)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url)
    expunge = IMAPClient.uid_expunge

    def expunged_then_killed(client: IMAPClient, messages: Any) -> Any:
        expunge(client, messages)
        raise Killed()

    monkeypatch.setattr(IMAPClient, "uid_expunge", expunged_then_killed)
    with pytest.raises(Killed):
        main(["run", "--once", "-c", str(path)])
    assert present(imap) == {} and len(redmine.emails) == 3
    monkeypatch.setattr(IMAPClient, "uid_expunge", expunge)
    for _ in range(2):
        assert main(["run", "--once", "-c", str(path)]) == 0
    searched.clear()
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert sum("DELETED" in criteria for criteria in searched) == 0, (
        "a deletion already done is looked for again on every pass")
    assert len(redmine.emails) == 3


def test_without_uidplus_a_stopped_delete_is_finished_as_dispose_does(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, searched: list[list[Any]],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Without UIDPLUS the flag stays, as dispose leaves it, and the ledger's row is done."""
    backlog(imap, 2)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url)
    capabilities, disposed = IMAPClient.capabilities, Ledger.disposed
    monkeypatch.setattr(IMAPClient, "capabilities", lambda client: tuple(
        cap for cap in capabilities(client) if cap != b"UIDPLUS"))

    def killed(*_: object, **__: object) -> None:
        raise Killed  # after STORE, before the ledger heard of it

    monkeypatch.setattr(Ledger, "disposed", killed)
    with pytest.raises(Killed):
        main(["run", "--once", "-c", str(path)])
    monkeypatch.setattr(Ledger, "disposed", disposed)
    for expected, searches in ((["test/INBOX uid 1", "test/INBOX uid 2"], 1), ([], 0)):
        searched.clear()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="imap_ingest"):
            assert main(["run", "--once", "-c", str(path)]) == 0
        assert finished(caplog) == expected
        assert sum("DELETED" in criteria for criteria in searched) == searches
        assert [DELETED in flags for flags, _ in present(imap).values()] == [True, True]
    assert len(redmine.emails) == 2


def test_pending_deletes_read_only_the_rows_not_yet_disposed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The every-pass ledger read goes by the partial index, not the folder's every row."""
    steps: list[int] = []
    connect = sqlite3.connect

    def counted(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = connect(*args, **kwargs)
        db.set_progress_handler(lambda: steps.append(1), 100)  # every 100 VM instructions
        return db

    monkeypatch.setattr("imap_ingest.ledger.sqlite.sqlite3.connect", counted)
    ledger = Ledger.open(tmp_path)
    with connect(tmp_path / "ledger.sqlite3") as db:
        db.executemany(
            "INSERT INTO messages (account, folder, uidvalidity, uid, size, hash, state, "
            "dispose_to, first_seen, updated) VALUES ('test', 'INBOX', 7, ?, 1, '', ?, "
            "'delete', 0, 0)",
            [(uid, "submitted" if uid == 5_000 else "disposed") for uid in range(1, 20_001)])
    steps.clear()
    assert list(ledger.pending_deletes("test", "INBOX", 7)) == [5_000]
    assert len(steps) < 20, "the read went through the folder's 20,000 rows"
    with connect(tmp_path / "ledger.sqlite3") as db:
        db.execute("DROP INDEX messages_pending")
    steps.clear()
    assert list(ledger.pending_deletes("test", "INBOX", 7)) == [5_000]
    assert len(steps) >= 20, "without the index the count above could not have failed"


def present(imap: ImapAccount) -> dict[int, tuple[set[bytes], bytes]]:
    """Every message still in INBOX, \\Deleted or not: UID -> (flags, raw)."""
    with imap.client() as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"]) if uids else {}
    return {int(uid): ({bytes(f) for f in data[b"FLAGS"]}, bytes(data[b"BODY[]"]))
            for uid, data in fetched.items()}
