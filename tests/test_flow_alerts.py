"""The proof of flow health and alerts: the tracker down for longer than stalled_after makes
one "stalled" mail at a real SMTP server, a red folder on the console and a reason in
/readyz; its return makes one "recovered" mail, and no message is lost. The alert mail,
come back into the watched folder, is held."""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.daemon import Daemon, free_port, get, metric, start
from .support.dovecot import ImapAccount
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine, Request
from .support.smtp import SmtpServer

TOKEN = "console-token-0123456789"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP listener for the alerts."""
    server = SmtpServer()
    yield server
    server.close()


def console_session(port: int) -> urllib.request.OpenerDirector:
    """An opener logged in to the console (its cookie kept)."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(f"http://127.0.0.1:{port}/login",
                urllib.parse.urlencode({"token": TOKEN}).encode(), timeout=10).read()
    return opener


def test_tracker_down_then_back(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount,
                                redmine: FakeRedmine, smtp: SmtpServer) -> None:
    """Redmine down past stalled_after: one stalled alert, then one recovered; none lost."""
    up = False
    taken: list[bytes] = []

    def answer(request: Request) -> tuple[int, bytes, float]:
        if not up:
            return 503, b"down for maintenance", 0
        taken.append(request.field("email"))
        return 201, b"", 0

    redmine.answer = answer
    subjects = [f"printer {i} <script>alert(1)</script>" for i in range(3)]
    for subject in subjects:
        imap.append("INBOX", make(subject=subject))
    (tmp_path / "token").write_text(TOKEN)
    console_port = free_port()
    one, port = start(daemon, tmp_path, imap, redmine, folder={"interval": 1},
                      retry={"first_delay": 1, "max_delay": 1, "max_attempts": 1000},
                      alert={"stalled_after": 2, "check_every": 0.3, "email": {
                          "to": "ops@example.com", "host": "127.0.0.1", "port": smtp.port,
                          "security": "none"}},
                      console={"listen": f"127.0.0.1:{console_port}",
                               "token_file": str(tmp_path / "token")})
    wait_for(lambda: "stalled" in smtp.kinds(), timeout=30)
    code, body = get(port, "/readyz?format=json")
    flow = json.loads(body)
    assert code == 200 and "test/INBOX" in flow["stalled"]
    assert "oldest pending message" in flow["stalled"]["test/INBOX"]
    assert "503" in flow["stalled"]["test/INBOX"]
    assert "stalled: test/INBOX" in get(port, "/readyz")[1]
    page = console_session(console_port).open(f"http://127.0.0.1:{console_port}/",
                                              timeout=30).read().decode()
    assert "<tr class='stalled'><td>test/INBOX</td>" in page
    assert "<script>" not in page
    metrics = get(port, "/metrics")[1]
    assert metric(metrics, "imap_ingest_oldest_pending_seconds", folder="INBOX") > 2
    assert metric(metrics, "imap_ingest_stalled", folder="INBOX") == 1
    assert metric(metrics, "imap_ingest_target_failing", target="redmine") == 1
    time.sleep(2)  # still stalled: no second alert
    assert smtp.kinds().count("stalled") == 1

    up = True
    wait_for(lambda: "recovered" in smtp.kinds(), timeout=30)
    wait_for(lambda: len(taken) == 3, timeout=30)
    time.sleep(1.5)
    kinds = smtp.kinds()
    assert kinds.count("stalled") == 1 and kinds.count("recovered") == 1, kinds
    assert kinds.count("target-failing") == 1 and kinds.count("target-recovered") == 1, kinds
    assert sorted(raw.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for raw in taken) \
        == sorted(subjects)
    assert json.loads(get(port, "/readyz?format=json")[1])["stalled"] == {}

    alert_raw, alert = smtp.messages[kinds.index("stalled")]
    assert alert["To"] == "ops@example.com" and alert["Auto-Submitted"] == "auto-generated"
    imap.append("INBOX", alert_raw)
    wait_for(lambda: metric(get(port, "/metrics")[1], "imap_ingest_messages_total",
                            outcome="held") == 1, timeout=30)
    assert len(taken) == 3
    one.stop()
