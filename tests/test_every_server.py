"""One scenario on every IMAP server our users have, each as its package configures it:
dovecot (folders at the top), Debian's Cyrus IMAP 3.6 and Courier-IMAP 5.0 (personal folders
under ``INBOX.``; IDLE that only polls every 60 s), and pymap (no custom keywords)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from imap_ingest.cli import main
from imap_ingest.states import FAILED

from .support.daemon import Daemon, start
from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import Answer, FakeRedmine, Request


@dataclass(frozen=True)
class Server:
    """A fresh mailbox on one server, and what the scenario expects of that server."""

    imap: ImapAccount
    prefix: str  # where the server keeps personal folders
    keywords: bool  # PERMANENTFLAGS has \*
    prompt_idle: bool  # IDLE announces new mail at once, as configured by default

    def folder(self, name: str) -> str:
        """The server's name for the configured folder ``name``."""
        return name if name == "INBOX" else self.prefix + name

    def bodies(self, folder: str) -> list[bytes]:
        return sorted(body for _, body in self.imap.messages(self.folder(folder)).values())


@pytest.fixture(params=["dovecot", "cyrus", "courier", "pymap"])
def server(request: pytest.FixtureRequest) -> Server:
    """A fresh mailbox on each server in turn."""
    name = request.param
    if name == "pymap":
        return Server(request.getfixturevalue("pymap"), "", keywords=False, prompt_idle=True)
    imap = request.getfixturevalue(name).account()
    if name == "dovecot":
        return Server(imap, "", keywords=True, prompt_idle=True)
    return Server(imap, "INBOX.", keywords=True, prompt_idle=False)


def answering(redmine: FakeRedmine, statuses: dict[str, int]) -> Callable[[Request], Answer]:
    """Redmine's answer: to a mail, the status ``statuses`` names for its subject, else 201."""
    def answer(request: Request) -> Answer:
        for subject, status in statuses.items():
            if f"Subject: {subject}\r\n".encode() in request.form.get("email", [b""])[0]:
                return status, b"", 0
        return redmine.default(request)
    return answer


FOLDERS = [{"name": name, "project": "support", "move_on_success": "Done"}
           for name in ("INBOX", "Plain")]


def test_posted_moved_marked_retried_and_checked(
        tmp_path: Path, server: Server, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """201 moves to a created Done, 422 marks, 500 stays then goes, retry and check work."""
    imap = server.imap
    ok, refused, flaky = (make(subject=s) for s in ("ok", "refused", "flaky"))
    imap.append("INBOX", ok)
    imap.append("INBOX", refused)
    imap.append(server.folder("Plain"), flaky)  # last: a 500 defers what comes after it
    statuses = {"refused": 422, "flaky": 500}
    redmine.answer = answering(redmine, statuses)
    # One process: the POSTs in the folders' order (worker processes would interleave them).
    path = str(write_config(tmp_path / "c.yaml", imap, redmine.url, folders=FOLDERS,
                            retry={"first_delay": 0.1}, workers=1))
    named = f", as {server.folder('Done')}" if server.prefix else ""

    assert main(["check", "-c", path]) == 0
    assert (f"folder Done (INBOX move_on_success{named}): does not exist yet; the server lets "
            "us create it") in capsys.readouterr().out
    assert main(["run", "--once", "-c", path]) == 75  # the 500 is tried again
    assert redmine.emails == [ok, refused, flaky]
    assert server.bodies("Done") == [ok]
    [(flags, body)] = imap.messages("INBOX").values()
    assert body == refused and flags == ((FAILED.encode(),) if server.keywords else ())
    assert server.bodies("Plain") == [flaky]

    del statuses["flaky"]
    time.sleep(0.1)  # its retry is due
    assert main(["run", "--once", "-c", path]) == 0
    assert redmine.emails[3:] == [flaky]  # the refused one is not tried again
    assert server.bodies("INBOX") == [refused] and server.bodies("Plain") == []
    capsys.readouterr()
    assert main(["retry", "INBOX", "-c", path]) == 0
    assert "unmarked 1 message(s) in INBOX" in capsys.readouterr().out
    statuses.clear()
    assert main(["run", "--once", "-c", path]) == 0
    assert redmine.emails[4:] == [refused]
    assert server.bodies("INBOX") == []
    assert server.bodies("Done") == sorted([ok, refused, flaky])
    assert main(["check", "-c", path]) == 0
    assert f"folder Done (INBOX move_on_success{named}): exists" in capsys.readouterr().out


def test_idle_on_two_watched_folders(daemon: list[Daemon], tmp_path: Path, server: Server,
                                     redmine: FakeRedmine) -> None:
    """Mail in either folder is posted: at once with prompt IDLE, else by poll, logged once."""
    interval = 60 if server.prompt_idle else 2
    folders = [{**folder, "interval": f"{interval}s"} for folder in FOLDERS]
    server.imap.create(server.folder("Plain"))
    one, _ = start(daemon, tmp_path, server.imap, redmine, folders=folders)
    # Without prompt IDLE, a poll's find counts as missed once the watcher idled a while.
    time.sleep(0.5 if server.prompt_idle else 5.5)
    sent: list[bytes] = []
    for round_ in range(1 if server.prompt_idle else 2):  # the second miss is logged
        for folder in ("INBOX", "Plain"):
            sent.append(make(subject=f"{folder} {round_}"))
            server.imap.append(server.folder(folder), sent[-1])
        wait_for(lambda: sorted(redmine.emails) == sorted(sent),
                 timeout=5 if server.prompt_idle else interval + 5)
    err = one.stop()
    assert ": IDLE: " not in err  # both watchers kept their IDLE
    for folder in ("INBOX", "Plain"):
        missed = f"{folder}: the server's IDLE did not announce new mail that a poll then found"
        assert err.count(missed) == (0 if server.prompt_idle else 1)
