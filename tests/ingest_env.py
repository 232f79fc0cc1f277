"""Builds a config file that points imap-ingest at the test dovecot and a fake Redmine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .dovecot import ImapAccount


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
