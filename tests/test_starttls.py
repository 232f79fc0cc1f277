"""A STARTTLS certificate the client does not trust is reported as that, not as a socket
error from closing the broken connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_ingest.config import load
from imap_ingest.errors import ConnectionLost
from imap_ingest.mailbox import Mailbox

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config


def test_an_untrusted_starttls_certificate_is_named(imap: ImapAccount, tmp_path: Path) -> None:
    """Dovecot's certificate from a CA not configured: the error says certificate."""
    path = write_config(tmp_path / "c.yaml", imap, "http://127.0.0.1:9",
                        account={"security": "starttls"})
    account = load(path).accounts[0]
    with pytest.raises(ConnectionLost) as lost, Mailbox(account):
        pass
    assert "certificate" in str(lost.value)
    assert "Bad file descriptor" not in str(lost.value)
