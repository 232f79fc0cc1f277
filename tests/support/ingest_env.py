"""Builds a config file that points imap-ingest at the test dovecot and a fake Redmine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from .dovecot import Dovecot, ImapAccount
from .mail import make

ROOT = Path(__file__).parents[2]


def command(*args: str) -> list[str]:
    """``python -m imap_ingest ARGS`` as a process (run with ``cwd=ROOT``)."""
    return [sys.executable, "-m", "imap_ingest", *args]


def backlog(imap: ImapAccount, count: int, folder: str = "INBOX") -> list[bytes]:
    """Append ``count`` distinct messages to ``folder``; returns them in order."""
    raws = [make(subject=f"backlog {i}") for i in range(count)]
    imap.create(folder)
    with imap.client() as client:
        for raw in raws:
            client.append(folder, raw)
    return raws


def write_config(path: Path, imap: ImapAccount, redmine_url: str, *, key: str = "s3cret-key",
                 folder: dict[str, Any] | None = None, account: dict[str, Any] | None = None,
                 target: dict[str, Any] | None = None,
                 folders: list[dict[str, Any]] | None = None, **top: Any) -> Path:
    """One account, one folder (INBOX unless ``folder`` says otherwise; or ``folders``), one
    Redmine target, state next to the file; ``top`` adds top-level keys."""
    data = {
        "accounts": [{
            "name": "test", "host": imap.host, "port": imap.port, "security": "none",
            "username": imap.username, "password": imap.password,
            "folders": folders or [{"name": "INBOX", "project": "support", **(folder or {})}],
            **(account or {}),
        }],
        "targets": {"redmine": {"type": "redmine", "url": redmine_url, "key": key,
                                "timeout": "5s", **(target or {})}},
        "state_dir": str(path.parent / "state"),
        **top,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def pop3_config(path: Path, server: Dovecot, box: ImapAccount, redmine_url: str,
                folder: dict[str, Any] | None = None, top: dict[str, Any] | None = None,
                **account: Any) -> Path:
    """One POP3 account (plain, keep: true unless told), one folder, a Redmine target;
    ``top`` adds top-level keys."""
    data = {
        "accounts": [{"name": "pop", "protocol": "pop3", "host": box.host,
                      "port": server.pop3_port, "security": "none", "username": box.username,
                      "password": box.password,
                      "folders": [{"name": "INBOX", "project": "support", **(folder or {})}],
                      **account}],
        "targets": {"redmine": {"type": "redmine", "url": redmine_url, "key": "s3cret-key",
                                "timeout": "5s"}},
        "state_dir": str(path.parent / "state"),
        **(top or {}),
    }
    path.write_text(yaml.safe_dump(data))
    return path
