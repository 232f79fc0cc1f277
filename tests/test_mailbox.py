"""The IMAP session against a real dovecot: what it costs to fetch."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import pytest

from imap_ingest.config import load
from imap_ingest.mailbox import Mailbox

from .dovecot import ImapAccount
from .ingest_env import write_config
from .mail import make

MIB = 1024 * 1024


def fetch_peak(imap: ImapAccount, tmp_path: Path) -> tuple[bytes, bytes, int]:
    """(the message, what was fetched, the peak of Python allocations while fetching)."""
    raw = make(body=("x" * 76 + "\n") * (5 * MIB // 77))
    imap.append("INBOX", raw)
    account = load(write_config(tmp_path / "c.yaml", imap, "http://127.0.0.1:9")).accounts[0]
    with Mailbox(account) as mailbox:
        mailbox.select("INBOX")
        uids = mailbox.new_uids()
        tracemalloc.start()
        try:
            fetched = [item.raw for item in mailbox.fetch(uids, 10, 60 * MIB)]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return raw, fetched[0] or b"", peak


def test_a_fetched_message_is_not_formatted_for_a_debug_log_that_is_off(
        imap: ImapAccount, tmp_path: Path) -> None:
    """imapclient turns imaplib's protocol trace on and hands it to logging, so every
    response, a 5 MiB message included, was formatted as text even with debug logging off:
    fetching holds the message and little else."""
    raw, fetched, peak = fetch_peak(imap, tmp_path)
    assert fetched == raw
    assert peak < 1.5 * len(raw)


def test_with_debug_logging_the_protocol_trace_is_kept(
        imap: ImapAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With --debug (the imapclient logger at DEBUG), the server's responses are logged."""
    caplog.set_level(logging.DEBUG, logger="imapclient")
    fetch_peak(imap, tmp_path)
    assert any("FETCH" in record.getMessage() and record.name == "imapclient.imaplib"
               for record in caplog.records)
