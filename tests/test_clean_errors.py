"""Ordinary trouble outside IMAP ends in an error that says what to fix, not a traceback."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from imap_ingest.config import Http
from imap_ingest.errors import ConfigError
from imap_ingest.health import StatusServer
from imap_ingest.ledger import Key, LedgerError, SqliteLedger
from imap_ingest.states import SKIPPED, Disposition, Result


def test_status_listens_on_ipv6() -> None:
    """http.listen: "[::1]:PORT" serves /healthz over IPv6."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    status = StatusServer(Http(listen=f"[::1]:{port}"))
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=5) as answer:
            assert answer.read() == b"ok\n"
    finally:
        status.close()


def test_busy_status_port_names_the_address() -> None:
    """A port another process holds is a ConfigError naming http.listen and the address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"http.listen: cannot listen on {listen}: "):
            StatusServer(Http(listen=listen))


def test_full_disk_is_a_ledger_error(tmp_path: Path) -> None:
    """A full disk is a LedgerError saying so; the ledger can still be read afterwards."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count = {pages}")
    key = Key("a", "INBOX", 1, 1)
    with pytest.raises(LedgerError, match="the disk is full"):
        ledger.decided(key, "<id@example.org>", 10, "x" * 64, "rule", Result.SKIPPED,
                       "r" * 100_000, Disposition("mark", SKIPPED))
    assert ledger.records("a", "INBOX", 1, [1]) == {}
