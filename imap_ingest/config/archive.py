"""``archive:``: keep the raw bytes of what became a ticket, for training a spam filter."""

from __future__ import annotations

from pathlib import Path

from .values import Duration, Model, parse_duration


class Archive(Model):
    """A local Maildir (files 0600) that keeps every message a tracker took, ``keep_for``
    long, for ``imap-ingest export-training``."""

    maildir: Path
    keep_for: Duration = parse_duration("90d")
