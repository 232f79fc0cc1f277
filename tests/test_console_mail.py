"""The console's mail side against a real dovecot: what a page reads, and from where."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from imap_ingest.config import load
from imap_ingest.console import mail
from imap_ingest.ledger import open_ledger

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make


def test_one_message_is_looked_up_in_its_own_account_only(tmp_path: Path,
                                                           imap: ImapAccount) -> None:
    """A message's page reads its account and folder, never logging into the others."""
    silent = socket.create_server(("127.0.0.1", 0))  # another account's server: never greets
    path = write_config(tmp_path / "c.yaml", imap, "http://127.0.0.1:9/",
                        folder={"loops_folder": "Held"})
    data = yaml.safe_load(path.read_text())
    data["accounts"].append({**data["accounts"][0], "name": "other",
                             "port": silent.getsockname()[1], "timeout": "30s"})
    path.write_text(yaml.safe_dump(data))
    imap.create("Held")
    imap.append("Held", make(subject="held one"))
    config = load(path)
    ledger = open_ledger(config)
    try:
        items = mail.set_aside(config, ledger, {}, only=("test", "Held"))
    finally:
        ledger.close()
    assert [(i.account, i.folder, i.subject, i.kind) for i in items] == [
        ("test", "Held", "held one", "held")]
    silent.setblocking(False)
    with pytest.raises(BlockingIOError):
        silent.accept()  # nobody connected
    silent.close()
