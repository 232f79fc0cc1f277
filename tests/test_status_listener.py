"""The service's status listener: /healthz, /readyz and /metrics; it holds out against slow and
half-open clients (a timeout per connection, bounded handler threads)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

from imap_ingest.config import Http
from imap_ingest.health import StatusServer

from .support.daemon import Daemon, free_port, get, metric, start
from .support.dovecot import ImapAccount
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine


def test_metrics_match_what_happened(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount,
                                     redmine: FakeRedmine) -> None:
    """/healthz, /readyz, and /metrics counting 3 submitted, 1 skipped, 1 failed, 1 held."""
    redmine.answer = lambda request: (422 if b"refuse me" in request.field("email") else 201,
                                      b"", 0)
    for subject in ("a", "b", "c", "skip me", "refuse me"):
        imap.append("INBOX", make(subject=subject))
    imap.append("INBOX", make(headers={"Auto-Submitted": "auto-replied"}))
    one, port = start(daemon, tmp_path, imap, redmine, folder={
        "move_on_failure": "Failed", "rules": [{"if": ["^Subject: skip me"], "then": "skip"}]})
    wait_for(lambda: len(redmine.requests) == 4)
    wait_for(lambda: metric(get(port, "/metrics")[1], "imap_ingest_messages_total") == 6)
    # The counters move as each message is dealt with; the pass completes after that.
    wait_for(lambda: metric(get(port, "/metrics")[1],
                            "imap_ingest_last_success_timestamp_seconds") > 0)
    text = get(port, "/metrics")[1]
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    for outcome, count in {"submitted": 3, "skipped": 1, "failed": 1, "held": 1}.items():
        assert metric(text, "imap_ingest_messages_total", outcome=outcome) == count, outcome
    assert metric(text, "imap_ingest_fetched_messages_total", folder="INBOX") == 6
    assert metric(text, "imap_ingest_submit_seconds_count", target="redmine") == 3
    assert metric(text, "imap_ingest_mail_to_ticket_seconds_count") == 3
    assert metric(text, "imap_ingest_last_success_timestamp_seconds") > time.time() - 60
    assert metric(text, "imap_ingest_backlog_messages") == 0
    assert get(port, "/nope")[0] == 404
    one.stop()


def _silent(port: int) -> socket.socket:
    """A client that connects and never sends its request."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_a_silent_connection_is_closed_after_the_timeout() -> None:
    """A half-open client is dropped after the per-connection timeout."""
    status = StatusServer(Http(listen=f"127.0.0.1:{free_port()}"), timeout=0.5)
    try:
        client = _silent(status.port)
        started = time.monotonic()
        assert client.recv(1) == b""  # the server hung up
        assert time.monotonic() - started < 5
        client.close()
    finally:
        status.close()


def test_handler_threads_are_bounded_and_probes_answer_after() -> None:
    """Fifty silent clients hold at most ``threads`` handlers; then /healthz answers again."""
    before = threading.active_count()
    status = StatusServer(Http(listen=f"127.0.0.1:{free_port()}"), timeout=1, threads=4)
    try:
        clients = [_silent(status.port) for _ in range(50)]
        time.sleep(0.3)
        assert threading.active_count() - before <= 1 + 4  # the serving thread + handlers
        for client in clients:
            client.close()
        time.sleep(1.5)
        url = f"http://127.0.0.1:{status.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.read() == b"ok\n"
    finally:
        status.close()
