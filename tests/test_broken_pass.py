"""A pass that meets a bug of ours ends that folder's pass, not the run; the worker says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from imap_ingest import service, worker
from imap_ingest.cli import main
from imap_ingest.config import Folder, load
from imap_ingest.errors import EX_SOFTWARE
from imap_ingest.ingest import Context, PassReport, ingest
from imap_ingest.mailbox import Mailbox
from imap_ingest.worker import FolderWorker

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine


def _broken_for(name: str) -> Callable[[Mailbox, Folder, Context], PassReport]:
    """The pass, raising our kind of bug for folder ``name``."""

    def broken(mailbox: Mailbox, folder: Folder, context: Context) -> PassReport:
        if folder.name == name:
            raise RuntimeError("a bug of ours")
        return ingest(mailbox, folder, context)

    return broken


def test_a_broken_pass_spares_the_other_folders(tmp_path: Path, imap: ImapAccount,
                                                redmine: FakeRedmine,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--once: a folder whose pass raises exits 70; the next folder's mail is still taken."""
    imap.append("Broken", make(subject="stays"))
    imap.append("INBOX", make(subject="taken"))
    monkeypatch.setattr(worker, "ingest", _broken_for("Broken"))
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        folders=[{"name": "Broken"}, {"name": "INBOX"}])
    assert main(["run", "--once", "-c", str(path)]) == EX_SOFTWARE
    assert len(redmine.requests) == 1 and imap.messages("INBOX") == {}
    assert len(imap.messages("Broken")) == 1


def test_a_worker_whose_pass_broke_is_not_ready(tmp_path: Path, imap: ImapAccount,
                                                redmine: FakeRedmine,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose last pass raised is not ready until a pass completes again."""
    config = load(write_config(tmp_path / "config.yaml", imap, redmine.url))
    running = service.Service(config)
    folder = FolderWorker(config.accounts[0], config.accounts[0].folders[0],
                          running.context())
    try:
        monkeypatch.setattr(worker, "ingest", _broken_for("INBOX"))
        assert folder.run() == EX_SOFTWARE
        assert not folder.ready and "pass failed" in folder.unready
        monkeypatch.undo()
        assert folder.run() == 0
        assert folder.ready
    finally:
        folder.close()
        running.close()
