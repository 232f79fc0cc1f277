"""Never lose a message, never submit one twice: ledger, dedupe, locks, retries, recovery.

Real dovecot, real HTTP; the ledger is only written directly to stage the state a crashed
run leaves behind (tests/test_crash.py makes real crashes)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imap_ingest.cli import main
from imap_ingest.ledger import Key, SqliteLedger
from imap_ingest.locks import folder_lock
from imap_ingest.message import Message
from imap_ingest.states import Disposition, Result, State

from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import ROOT, backlog, command, write_config
from .support.mail import make
from .support.redmine_server import Answer, FakeRedmine, Request


def once(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, *args: str,
         **config: Any) -> int:
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, **config)
    return main(["run", "--once", "-c", str(path), *args])


def uidvalidity(imap: ImapAccount, folder: str = "INBOX") -> int:
    with imap.client() as client:
        return int(client.select_folder(folder)[b"UIDVALIDITY"])


def stage(tmp_path: Path, key: Key, raw: bytes, state: str) -> None:
    """Leave the ledger as a run that died at ``state`` would have left it."""
    ledger = SqliteLedger(tmp_path / "state" / "ledger.sqlite3")
    message = Message(raw)
    ledger.uidvalidity_changed(key.account, key.folder, key.uidvalidity)
    ledger.begin_submit(key, message.message_id, len(raw), message.digest(), "default",
                        "redmine", "message-id")
    if state == "submitted":
        ledger.answered(key, "redmine", State.SUBMITTED, Result.SUBMITTED, "201", status=201,
                        dispose_to=Disposition("delete"))
    ledger.close()


TWO = [{"name": "INBOX"}, {"name": "Copy"}]


def test_copy_in_two_folders_is_submitted_once(tmp_path: Path, imap: ImapAccount,
                                               redmine: FakeRedmine,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The same message in two folders is submitted once; the copy is a duplicate."""
    raw = make()
    imap.append("INBOX", raw)
    imap.append("Copy", raw)
    # One process: the folders in order (with several, either copy may be first:
    # test_folder_processes.py).
    assert once(tmp_path, imap, redmine, folders=TWO, workers=1) == 0
    assert redmine.emails == [raw]
    assert imap.messages("INBOX") == imap.messages("Copy") == {}
    assert "duplicate: already submitted as test/INBOX uid 1" in capsys.readouterr().err


def test_redelivery_with_other_trace_headers_is_submitted_once(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """The same mail delivered again (new Received: lines, new UID) is not a new ticket."""
    raw = make()
    imap.append("INBOX", b"Received: from a by b; Sat, 21 Nov 2026 10:00:00\r\n" + raw)
    assert once(tmp_path, imap, redmine) == 0
    imap.append("INBOX", b"Received: from c by d; Sat, 21 Nov 2026 11:00:00\r\n"
                b"Delivered-To: other@example.org\r\n" + raw)
    assert once(tmp_path, imap, redmine) == 0
    assert len(redmine.requests) == 1 and imap.messages("INBOX") == {}


def test_dedupe_off_submits_each_copy(tmp_path: Path, imap: ImapAccount,
                                      redmine: FakeRedmine) -> None:
    """With dedupe off, each copy of a message is submitted."""
    raw = make()
    imap.append("INBOX", raw)
    imap.append("Copy", raw)
    assert once(tmp_path, imap, redmine, folders=TWO, dedupe="off") == 0
    assert redmine.emails == [raw, raw]


def test_submitted_before_a_crash_is_disposed_not_resent(tmp_path: Path, imap: ImapAccount,
                                                         redmine: FakeRedmine) -> None:
    """The ledger says submitted (the run died before the delete): delete, do not POST."""
    raw = make()
    uid = imap.append("INBOX", raw)
    stage(tmp_path, Key("test", "INBOX", uidvalidity(imap), uid), raw, "submitted")
    assert once(tmp_path, imap, redmine) == 0
    assert redmine.requests == [] and imap.messages("INBOX") == {}


@pytest.mark.parametrize("dedupe", ["message-id", "off"])
def test_uidvalidity_change_does_not_resubmit(tmp_path: Path, imap: ImapAccount,
                                              dovecot: Dovecot, redmine: FakeRedmine,
                                              capsys: pytest.CaptureFixture[str],
                                              dedupe: str) -> None:
    """A renumbered folder's already submitted mail is disposed of, not resent."""
    # The server renumbers the folder (dovecot lost its uidlist): a message already
    # submitted is recognised by Message-ID and content.
    raw, fresh = make(), make()
    uid = imap.append("INBOX", raw)
    old = uidvalidity(imap)
    stage(tmp_path, Key("test", "INBOX", old, uid), raw, "submitted")
    dovecot.renumber(imap)
    imap.append("INBOX", fresh)
    assert uidvalidity(imap) != old
    assert once(tmp_path, imap, redmine, dedupe=dedupe) == 0
    assert redmine.emails == [fresh]
    assert imap.messages("INBOX") == {}
    assert "UIDVALIDITY changed" in capsys.readouterr().err


def unavailable_once(redmine: FakeRedmine) -> None:
    """The tracker answers 503 to the first request, then 201 as usual."""
    default = redmine.answer
    redmine.answer = lambda request: (503, b"", 0) if len(redmine.requests) == 1 else (
        default(request))


def test_waiting_message_renumbered_is_retried_not_deleted(
        tmp_path: Path, imap: ImapAccount, dovecot: Dovecot, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A waiting message whose folder is renumbered is retried, not deleted as a duplicate."""
    raw = make()
    imap.append("INBOX", raw)
    unavailable_once(redmine)
    assert once(tmp_path, imap, redmine) == 75
    dovecot.renumber(imap)
    assert once(tmp_path, imap, redmine) == 75  # the retry it took over is not due yet
    assert len(redmine.requests) == 1 and len(imap.messages("INBOX")) == 1
    assert once(tmp_path, imap, redmine, "--retry-now") == 0
    assert redmine.emails == [raw, raw] and imap.messages("INBOX") == {}
    err = capsys.readouterr().err
    assert "takes over the retry of test/INBOX uid 1" in err and "already submitted" not in err


def test_waiting_message_refiled_by_a_person_is_retried(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """A waiting message a person re-files is retried from there with its attempts."""
    raw = make()
    imap.append("INBOX", raw)
    imap.create("Copy")
    unavailable_once(redmine)
    assert once(tmp_path, imap, redmine, folders=TWO) == 75
    with imap.client() as person:
        person.select_folder("INBOX")
        person.move(person.search(["ALL"]), "Copy")
    assert once(tmp_path, imap, redmine, "--retry-now", folders=TWO) == 0
    assert redmine.emails == [raw, raw]
    assert imap.messages("INBOX") == imap.messages("Copy") == {}
    ledger = SqliteLedger(tmp_path / "state" / "ledger.sqlite3")
    (old, _), (new, _) = ledger.history(Message(raw).message_id or "")
    ledger.close()
    assert (old["folder"], old["outcome"]) == ("INBOX", Result.SUPERSEDED)
    assert (new["folder"], new["outcome"], new["attempts"]) == ("Copy", Result.SUBMITTED, 2)


def test_copy_of_a_message_in_doubt_is_quarantined(
        tmp_path: Path, imap: ImapAccount, dovecot: Dovecot, redmine: FakeRedmine) -> None:
    """A copy of a message in doubt goes to Quarantine, neither deleted nor posted."""
    raw = make()
    uid = imap.append("INBOX", raw)
    stage(tmp_path, Key("test", "INBOX", uidvalidity(imap), uid), raw, "submitting")
    dovecot.renumber(imap)
    assert once(tmp_path, imap, redmine) == 0
    assert redmine.requests == [] and imap.messages("INBOX") == {}
    assert [body for _, body in imap.messages("Quarantine").values()] == [raw]


def test_one_mail_to_two_desks_reaches_both(tmp_path: Path, imap: ImapAccount,
                                            redmine: FakeRedmine) -> None:
    """One mail Cc'd to two watched mailboxes, each with its own target, reaches both."""
    security = FakeRedmine()
    try:
        raw = make()
        imap.append("INBOX", raw)
        imap.append("Security", raw)
        targets = {name: {"type": "redmine", "url": url, "key": "s3cret-key", "timeout": "5s"}
                   for name, url in (("redmine", redmine.url), ("security", security.url))}
        assert once(tmp_path, imap, redmine, targets=targets, folders=[
            {"name": "INBOX", "target": "redmine"},
            {"name": "Security", "target": "security"}]) == 0
        assert redmine.emails == [raw] and security.emails == [raw]
    finally:
        security.close()


def test_reused_message_id_on_other_content_is_a_new_message(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two different messages with one Message-ID are both submitted, with a warning."""
    first = make(subject="first", message_id="<reused@example.org>")
    second = make(subject="second", message_id="<reused@example.org>")
    imap.append("INBOX", first)
    imap.append("INBOX", second)
    assert once(tmp_path, imap, redmine) == 0
    assert redmine.emails == [first, second]
    assert ("uid 2: <reused@example.org> is also the Message-ID of a different message "
            "(test/INBOX uid 1)") in capsys.readouterr().err


def test_huge_retry_after_is_bounded_and_status_still_reads(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A Retry-After of 10^20 s holds no longer than max_delay; passes and status run."""
    imap.append("INBOX", make())
    redmine.answer = lambda request: (429, b"", 0, {"Retry-After": "1" + "0" * 20})
    assert once(tmp_path, imap, redmine, retry={"max_delay": "1h"}) == 75
    assert once(tmp_path, imap, redmine, retry={"max_delay": "1h"}) == 75
    assert main(["status", "-c", str(tmp_path / "config.yaml")]) == 0
    ledger = SqliteLedger(tmp_path / "state" / "ledger.sqlite3")
    (_, next_try), = [(name, at) for name, _, at, _, _ in ledger.targets()]
    record, = ledger.records("test", "INBOX", uidvalidity(imap), [1]).values()
    ledger.close()
    assert next_try is not None and next_try <= time.time() + 3600
    assert record.next_try is not None and record.next_try <= time.time() + 3600
    assert len(redmine.requests) == 1 and len(imap.messages("INBOX")) == 1
    capsys.readouterr()


@pytest.mark.parametrize("policy", ["quarantine", "resubmit"])
def test_in_doubt_policy(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                         policy: str) -> None:
    """A run died while posting: quarantine (default) sets it aside; resubmit posts again."""
    raw = make()
    uid = imap.append("INBOX", raw)
    stage(tmp_path, Key("test", "INBOX", uidvalidity(imap), uid), raw, "submitting")
    extra = {} if policy == "quarantine" else {"in_doubt": "resubmit"}
    assert once(tmp_path, imap, redmine, **extra) == 0
    if policy == "quarantine":
        assert redmine.requests == []
        assert [body for _, body in imap.messages("Quarantine").values()] == [raw]
    else:
        assert redmine.emails == [raw] and imap.messages("Quarantine") == {}
    assert imap.messages("INBOX") == {}


def test_second_process_on_a_busy_folder(tmp_path: Path, imap: ImapAccount,
                                         redmine: FakeRedmine,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """While another holds the folder's lock, a run touches nothing, says why, and exits 75."""
    imap.append("INBOX", make())
    with folder_lock(tmp_path / "state", "test", "INBOX"):
        assert once(tmp_path, imap, redmine) == 75
    assert redmine.requests == [] and len(imap.messages("INBOX")) == 1
    err = capsys.readouterr().err
    assert "another imap-ingest (pid " in err and "is working this folder" in err


def test_lock_is_held_by_a_real_second_process(tmp_path: Path, imap: ImapAccount,
                                               redmine: FakeRedmine) -> None:
    """Two processes at once on one folder with a slow tracker: every message posted once."""
    # The tracker holds its first answer until the second process has run, however slowly
    # a loaded machine starts it.
    second_done = threading.Event()

    def answer(request: Request) -> Answer:
        second_done.wait(30)
        return 201, b"", 0

    redmine.answer = answer
    raws = backlog(imap, 5)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url)
    argv = command("run", "--once", "-c", str(path))
    first = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    while not redmine.requests:
        time.sleep(0.02)
    second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    second_done.set()
    _, first_err = first.communicate(timeout=30)
    assert first.returncode == 0, first_err
    assert second.returncode == 75 and "is working this folder" in second.stderr
    assert sorted(redmine.emails) == sorted(raws)


def test_gives_up_after_max_attempts(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A message that keeps failing temporarily goes to move_on_failure with its last reason."""
    redmine.answer = lambda request: (503, b"", 0)
    imap.append("INBOX", make())
    config: dict[str, Any] = {"retry": {"max_attempts": 2},
                              "folder": {"move_on_failure": "Failed"}}
    assert once(tmp_path, imap, redmine, **config) == 75
    assert once(tmp_path, imap, redmine, "--retry-now", **config) == 0
    assert len(redmine.requests) == 2 and len(imap.messages("Failed")) == 1
    assert "gave up after 2 attempt(s)" in capsys.readouterr().err


def test_retry_timer_is_honoured_without_contacting_the_tracker(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Once the first retry is due (first_delay), the next run tries again by itself."""
    redmine.answer = lambda request: (500, b"", 0)
    imap.append("INBOX", make())
    config: dict[str, Any] = {"retry": {"first_delay": "1s"}}
    assert once(tmp_path, imap, redmine, **config) == 75
    redmine.answer = lambda request: (201, b"", 0)
    assert once(tmp_path, imap, redmine, **config) == 75  # not due: nobody asked
    assert len(redmine.requests) == 1
    time.sleep(1.1)
    assert once(tmp_path, imap, redmine, **config) == 0
    assert len(redmine.requests) == 2 and imap.messages("INBOX") == {}


def test_tracker_down_then_back_while_the_service_runs(tmp_path: Path, imap: ImapAccount,
                                                       redmine: FakeRedmine) -> None:
    """Redmine answers 503 for the first 1.5 s, then 201: all arrive once, none fails."""
    # Down for 1.5 s from the first request it sees, however slowly the service starts.
    first_seen: list[float] = []

    def answer(request: Request) -> Answer:
        first_seen.append(time.monotonic())
        return (201 if time.monotonic() > first_seen[0] + 1.5 else 503), b"", 0

    redmine.answer = answer
    raws = backlog(imap, 20)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        folder={"interval": "0.2s", "move_on_failure": "Failed"},
                        retry={"first_delay": "0.2s", "max_delay": "0.5s"})
    process = subprocess.Popen(command("run", "-c", str(path)),
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while imap.messages("INBOX") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    # Every message arrived; the only repeats are posts Redmine answered with 503.
    assert sorted(set(redmine.emails)) == sorted(raws)
    assert len(redmine.emails) > len(raws)  # it really was down for a while
    assert imap.messages("INBOX") == {} and imap.messages("Failed") == {}


def test_imap_server_restarted_mid_pass(tmp_path: Path, imap: ImapAccount, dovecot: Dovecot,
                                        redmine: FakeRedmine) -> None:
    """dovecot restarting mid-pass ends the run (75); the next finishes, resending nothing."""
    # dovecot restarts while a --once run works a backlog; messages posted before the
    # restart are disposed of, not posted again.
    redmine.answer = lambda request: (201, b"", 0.15)
    raws = backlog(imap, 10)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url)
    argv = command("run", "--once", "-c", str(path))
    process = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    while len(redmine.requests) < 3:
        time.sleep(0.01)
    dovecot.restart()
    _, err = process.communicate(timeout=30)
    assert process.returncode == 75, err
    redmine.answer = lambda request: (201, b"", 0)
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert sorted(redmine.emails) == sorted(raws)  # each exactly once
    assert imap.messages("INBOX") == {}


@pytest.mark.parametrize("damage", ["corrupt", "newer"])
def test_unusable_ledger_touches_no_mail(tmp_path: Path, imap: ImapAccount,
                                         redmine: FakeRedmine, damage: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt or newer ledger exits 78 naming it, touching no mail or tracker."""
    imap.append("INBOX", make())
    ledger_file = tmp_path / "state" / "ledger.sqlite3"
    ledger_file.parent.mkdir()
    if damage == "corrupt":
        ledger_file.write_bytes(b"\x00garbage" * 512)
    else:
        SqliteLedger(ledger_file).close()
        import sqlite3

        with sqlite3.connect(ledger_file) as db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        db.close()
    assert once(tmp_path, imap, redmine) == 78
    assert redmine.requests == [] and len(imap.messages("INBOX")) == 1
    assert f"ledger {ledger_file}" in capsys.readouterr().err
