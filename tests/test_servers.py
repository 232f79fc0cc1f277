"""Folder names, destinations and failures as servers lay them out differently: dovecot
as configured by default (folders at the top, ``.`` between levels) and as Cyrus and
Courier are (``NAMESPACE (("INBOX." "."))``: nothing can be created outside INBOX.)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from imap_ingest.cli import main

from .support.daemon import Daemon, start
from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine


def once(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, **config: Any) -> int:
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, **config)
    return main(["run", "--once", "-c", str(path)])


def bodies(imap: ImapAccount, folder: str) -> list[bytes]:
    return [body for _, body in imap.messages(folder).values()]


def test_readme_names_work_under_an_inbox_prefix(tmp_path: Path, imap_prefixed: ImapAccount,
                                                 redmine: FakeRedmine) -> None:
    """Done, redmine/failed, a rule's move and a second folder land under INBOX. there."""
    done, failed, listed, plain = (make(subject=s) for s in ("done", "fail", "list", "plain"))
    imap_prefixed.append("INBOX", done)
    imap_prefixed.append("INBOX", failed)
    imap_prefixed.append("INBOX", listed)
    imap_prefixed.append("INBOX.Plain", plain)
    redmine.answer = lambda request: (422 if b"Subject: fail" in request.field("email")
                                      else 201, b"", 0)
    rules = [{"if": ["subject: list"], "then": {"move": "Lists"}}, {"then": "submit"}]
    folders = [{"name": "INBOX", "project": "support", "move_on_success": "Done",
                "move_on_failure": "redmine/failed", "rules": rules},
               {"name": "Plain", "project": "support", "move_on_success": "INBOX.Done"}]
    assert once(tmp_path, imap_prefixed, redmine, folders=folders) == 0
    assert bodies(imap_prefixed, "INBOX") == bodies(imap_prefixed, "INBOX.Plain") == []
    assert sorted(bodies(imap_prefixed, "INBOX.Done")) == sorted([done, plain])
    assert bodies(imap_prefixed, "INBOX.redmine.failed") == [failed]
    assert bodies(imap_prefixed, "INBOX.Lists") == [listed]
    assert "Done" not in imap_prefixed.folders()


def test_retry_from_a_failure_folder_under_an_inbox_prefix(
        tmp_path: Path, imap_prefixed: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`retry redmine/failed` moves a refused message back to INBOX, and it then goes in."""
    raw = make(subject="refused")
    imap_prefixed.append("INBOX", raw)
    redmine.answer = lambda request: (422, b"", 0)
    folder = {"move_on_success": "Done", "move_on_failure": "redmine/failed"}
    path = str(write_config(tmp_path / "c.yaml", imap_prefixed, redmine.url, folder=folder))
    assert main(["run", "--once", "-c", path]) == 0
    assert bodies(imap_prefixed, "INBOX.redmine.failed") == [raw]
    capsys.readouterr()
    assert main(["retry", "redmine/failed", "-c", path]) == 0
    assert "moved 1 message(s) back to INBOX" in capsys.readouterr().out
    redmine.answer = lambda request: (201, b"", 0)
    assert main(["run", "--once", "-c", path]) == 0
    assert bodies(imap_prefixed, "INBOX.redmine.failed") == bodies(imap_prefixed, "INBOX") == []
    assert bodies(imap_prefixed, "INBOX.Done") == [raw]


def test_a_folder_the_server_refuses_is_that_folders_failure(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A refused destination fails its folder only (75, said); a config fix then takes."""
    first, second = make(subject="first"), make(subject="second")
    imap.append("INBOX", first)
    imap.append("Plain", second)
    folders = [{"name": "INBOX", "project": "support", "move_on_success": "~Done"},
               {"name": "Plain", "project": "support"}]
    assert once(tmp_path, imap, redmine, folders=folders, workers=1) == 75
    assert len(redmine.requests) == 2  # the second folder's mail was posted all the same
    assert bodies(imap, "INBOX") == [first] and bodies(imap, "Plain") == []
    err = capsys.readouterr().err
    assert "INBOX uid 1: not moved to ~Done: cannot create folder ~Done: server said:" in err
    assert "left in place for the next pass" in err
    folders[0]["move_on_success"] = "Done"
    assert once(tmp_path, imap, redmine, folders=folders, workers=1) == 0
    assert len(redmine.requests) == 2  # not posted again
    assert bodies(imap, "INBOX") == [] and bodies(imap, "Done") == [first]
    err = capsys.readouterr().err
    assert "not moved to ~Done" in err and "moved to Done instead, as configured now" in err
    assert once(tmp_path, imap, redmine, folders=folders, workers=1) == 0


def test_what_the_config_now_says_instead_is_one_command_for_all(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages left by a refused move go where the config now says in one MOVE, not one each."""
    sent = [make(subject=f"m{n}") for n in range(5)]
    for raw in sent:
        imap.append("INBOX", raw)
    folders = [{"name": "INBOX", "project": "support", "move_on_success": "~Done"}]
    assert once(tmp_path, imap, redmine, folders=folders) == 75
    folders[0]["move_on_success"] = "Done"
    moves: list[tuple[object, str]] = []
    move = IMAPClient.move

    def counted(client: IMAPClient, messages: Any, folder: str) -> Any:
        moves.append((messages, folder))
        return move(client, messages, folder)

    monkeypatch.setattr(IMAPClient, "move", counted)
    assert once(tmp_path, imap, redmine, folders=folders) == 0
    assert len(redmine.requests) == 5 and sorted(bodies(imap, "Done")) == sorted(sent)
    assert len(moves) == 1, moves


def test_check_resolves_and_verifies_every_destination(
        tmp_path: Path, imap_prefixed: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """check prints each destination's server name, and whether it exists or may be created."""
    imap_prefixed.create("INBOX.Plain")
    imap_prefixed.create("INBOX.Failed")
    folders = [{"name": "Plain", "project": "support", "move_on_success": "Done",
                "move_on_failure": "Failed",
                "rules": [{"if": ["subject: x"], "then": {"copy": "Archive/2024"}}]}]
    path = write_config(tmp_path / "c.yaml", imap_prefixed, redmine.url, folders=folders)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK    account test folder Plain: 0 new message(s), as INBOX.Plain" in out
    assert ("OK    account test folder Done (Plain move_on_success, as INBOX.Done): does not "
            "exist yet; the server lets us create it (created on first use)") in out
    assert "OK    account test folder Failed (Plain move_on_failure, as INBOX.Failed): exists" \
        in out
    assert "folder Archive/2024 (Plain rules[0] copy, as INBOX.Archive.2024)" in out
    assert "folder Quarantine (quarantine_folder, as INBOX.Quarantine)" in out
    assert imap_prefixed.folders() == ["INBOX", "INBOX.Failed", "INBOX.Plain"]


def test_check_fails_a_destination_the_server_refuses(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A destination the server will not create is a FAIL line with the server's reason."""
    path = write_config(tmp_path / "c.yaml", imap, redmine.url,
                        folder={"move_on_success": "~Done"})
    assert main(["check", "-c", str(path)]) == 75
    out = capsys.readouterr().out
    assert ("FAIL  account test folder ~Done (INBOX move_on_success): does not exist, and "
            "cannot be created: server said: create failed: [CANNOT] Invalid mailbox name")\
        in out


def test_without_keywords_the_ledger_says_what_is_new(
        tmp_path: Path, pymap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without keywords: read mail is new, a failure is not retried, `retry` finds it anyway."""
    read, refused = make(subject="read"), make(subject="refused")
    pymap.append("INBOX", read, flags=[b"\\Seen"])
    pymap.append("INBOX", refused)
    redmine.answer = lambda request: (422 if b"Subject: refused" in request.field("email")
                                      else 201, b"", 0)
    path = write_config(tmp_path / "c.yaml", pymap, redmine.url)
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert [r.field("email") for r in redmine.requests] == [read, refused]
    [(kept_flags, body)] = pymap.messages("INBOX").values()
    assert body == refused and kept_flags == ()
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert len(redmine.requests) == 2  # set aside: the ledger remembers it
    capsys.readouterr()
    assert main(["retry", "INBOX", "-c", str(path)]) == 0
    assert "unmarked 1 message(s) in INBOX" in capsys.readouterr().out
    redmine.answer = lambda request: (201, b"", 0)
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert [r.field("email") for r in redmine.requests][2:] == [refused]
    assert pymap.messages("INBOX") == {}
    pymap.append("INBOX", make(subject="moved"))  # no NAMESPACE: LIST "" "" gives "/"
    path = write_config(tmp_path / "c.yaml", pymap, redmine.url,
                        folder={"move_on_success": "Done/Redmine"})
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert len(pymap.messages("Done/Redmine")) == 1


def test_a_connection_budget_pushes_what_fits_and_polls_the_rest(
        daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Three folders in three connections: two IDLE, one polled, status says so, all posted."""
    folders = [{"name": name, "project": "support", "interval": interval}
               for name, interval in (("INBOX", "60s"), ("A", "60s"), ("B", "1s"))]
    for name in ("A", "B"):
        imap.create(name)
    one, _ = start(daemon, tmp_path, imap, redmine, folders=folders,
                   account={"max_connections": 3})
    assert main(["status", "-c", str(tmp_path / "config.yaml")]) == 0
    assert ("account test: 3 of 3 connection(s) as a service; pushed (IDLE, where the server "
            "has it): INBOX, A; polled: B") in capsys.readouterr().out
    time.sleep(0.5)  # the first passes are done; the watchers are in IDLE
    raws = {name: make(subject=name) for name in ("INBOX", "A", "B")}
    for name, raw in raws.items():
        imap.append(name, raw)
    wait_for(lambda: sorted(redmine.emails) == sorted(raws.values()), timeout=10)
    err = one.stop()
    assert "3 connection(s) at most: IDLE on INBOX, A; polling B" in err
    assert "did not announce" not in err  # dovecot's IDLE is prompt


def test_notify_watches_the_folders_idle_has_no_room_for(
        daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Four folders in three connections: INBOX in IDLE, A, B, C by NOTIFY, long before a poll."""
    names = ("INBOX", "A", "B", "C Post")  # quoted on the wire
    folders = [{"name": name, "project": "support", "interval": "600s"} for name in names]
    for name in names[1:]:
        imap.create(name)
    one, _ = start(daemon, tmp_path, imap, redmine, folders=folders,
                   account={"max_connections": 3})
    assert main(["status", "-c", str(tmp_path / "config.yaml")]) == 0
    assert ("pushed (IDLE, where the server has it): INBOX, A; polled: B, C Post; where the "
            "server has NOTIFY: A, B, C Post pushed (NOTIFY) instead"
            ) in capsys.readouterr().out
    time.sleep(1)  # the first passes are done; the watchers are in IDLE
    raws = {name: make(subject=name) for name in names}
    for name in ("C Post", "A", "INBOX", "B"):
        imap.append(name, raws[name])
        wait_for(lambda raw=raws[name]: raw in redmine.emails, timeout=5)  # type: ignore[misc]
    err = one.stop()
    assert "account test: NOTIFY on A, B, C Post" in err and "NOTIFY refused" not in err
