"""The service's status listener: /healthz, /readyz and /metrics."""

from __future__ import annotations

import time
from pathlib import Path

from .support.daemon import Daemon, get, metric, start
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
