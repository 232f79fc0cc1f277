"""Bounds at the HTTP boundary: an answer is read as a bounded prefix, a reason is stored
bounded, and a request ends at the target's timeout however slowly the answer comes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imap_ingest.cli import main
from imap_ingest.config import SubmitOptions
from imap_ingest.tickets import LookupFailed, RtTickets, Submitted
from imap_ingest.trackers import REASON_LIMIT, Envelope, Kind, Outcome, Tracker, open_tracker
from imap_ingest.trackers.registry import registered
from imap_ingest.trackers.rt import RtTarget

from .support.dovecot import ImapAccount
from .support.hostile_http import HostileHttp, Script, drip, huge, silent
from .support.ingest_env import ROOT
from .support.redmine_server import RecordingServer
from .test_webhook import write

ENVELOPE = Envelope("test", "INBOX", 1, 1)
RAW = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
TARGETS: dict[str, dict[str, Any]] = {
    "redmine": {"type": "redmine", "key": "k"},
    "rt": {"type": "rt"},
    "webhook": {"type": "webhook", "format": "raw", "id_pointer": "/id"},
}
# The answer each tracker takes as success, followed by zeros.
SUCCESS = {"redmine": (201, b""), "rt": (200, b"ok\n"), "webhook": (200, b"")}


@pytest.fixture
def hostile() -> Iterator[list[HostileHttp]]:
    """Servers started by the test, closed after it."""
    servers: list[HostileHttp] = []
    yield servers
    for server in servers:
        server.close()


def serve(servers: list[HostileHttp], script: Script) -> HostileHttp:
    server = HostileHttp(script)
    servers.append(server)
    return server


def tracker(kind: str, url: str, **extra: Any) -> Tracker:
    return open_tracker(registered()[kind].model.model_validate(
        {**TARGETS[kind], "url": url, **extra}))


PEAK = """
import sys
from imap_ingest.config import SubmitOptions
from imap_ingest.tickets import LookupFailed, RtTickets, Submitted
from imap_ingest.trackers import Envelope
from tests.test_http_bounds import tracker

def peak() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

client = tracker(sys.argv[1], sys.argv[2])
before = peak()
outcome = client.submit(b"Subject: x\\r\\n\\r\\nbody", SubmitOptions(), Envelope("a", "b", 1, 1))
print(outcome.kind.value, peak() - before)
"""


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_a_huge_answer_costs_no_memory(hostile: list[HostileHttp], kind: str) -> None:
    """A 200 MB success answer: the tracker reads a prefix, and its peak RSS grows < 20 MB."""
    status, first = SUCCESS[kind]
    server = serve(hostile, huge(status, 200 * 1024 * 1024, first))
    done = subprocess.run([sys.executable, "-c", PEAK, kind, server.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    outcome, grown = done.stdout.split()
    assert outcome == "success"
    assert int(grown) < 20 * 1024, f"peak RSS grew by {grown} KiB"


def test_an_outcome_reason_is_bounded() -> None:
    """Whatever a tracker put in it, an Outcome's reason is at most REASON_LIMIT chars."""
    reason = Outcome(Kind.PERMANENT, "RT refused the message: " + "x" * 5_000_000).reason
    assert len(reason) <= REASON_LIMIT
    assert reason.startswith("RT refused the message: xxx") and reason.endswith("…")
    assert Outcome(Kind.SUCCESS, "short").reason == "short"


def test_rt_refusal_with_a_5_mb_line_keeps_ledger_and_log_small(
        tmp_path: Path, imap: ImapAccount, hostile: list[HostileHttp],
        capfd: pytest.CaptureFixture[str]) -> None:
    """RT's 'not ok - ' and a 5 MB line: the message fails; the ledger and log stay small."""
    server = serve(hostile, huge(200, 5 * 1024 * 1024, b"not ok - "))
    imap.append("INBOX", RAW)
    path = write(tmp_path, imap, {"rt": {"type": "rt", "url": server.url}},
                 [{"name": "INBOX", "target": "rt"}])
    assert main(["run", "--once", "-c", str(path)]) == 0
    ledger = tmp_path / "state" / "ledger.sqlite3"
    assert ledger.stat().st_size < 200_000
    assert len(capfd.readouterr().err) < 10_000


DRIPS: dict[str, Script] = {
    "head": drip(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 0.2),
    "body": drip(b"x" * 40, 0.2, b"HTTP/1.1 201 Created\r\nContent-Length: 40\r\n\r\n"),
    "nothing": silent,
}


@pytest.mark.parametrize("kind", sorted(TARGETS))
@pytest.mark.parametrize("how", sorted(DRIPS))
def test_a_dripping_answer_ends_at_the_timeout(hostile: list[HostileHttp], kind: str,
                                               how: str) -> None:
    """An answer dripped a byte each 0.2 s (or none) ends as TEMPORARY at the 1 s timeout."""
    server = serve(hostile, DRIPS[how])
    client = tracker(kind, server.url, timeout=1.0)
    started = time.monotonic()
    outcome = client.submit(RAW, SubmitOptions(), ENVELOPE)
    elapsed = time.monotonic() - started
    client.close()
    assert outcome.kind is Kind.TEMPORARY
    assert outcome.reason == (f"no answer from {server.url} within 1 s; the tracker may "
                              "still have taken the message")
    assert 0.9 < elapsed < 2.0


def test_after_a_deadline_the_next_request_is_answered(hostile: list[HostileHttp]) -> None:
    """The connection a deadline cut is not reused: the next request is answered."""
    answers = iter([DRIPS["body"], huge(201, 0)])
    server = serve(hostile, lambda connection: next(answers)(connection))
    client = tracker("redmine", server.url, timeout=1.0)
    first = client.submit(RAW, SubmitOptions(), ENVELOPE)
    second = client.submit(RAW, SubmitOptions(), ENVELOPE)
    client.close()
    assert (first.kind, second.kind) == (Kind.TEMPORARY, Kind.SUCCESS)
    assert server.served == 2


def test_a_small_answer_keeps_the_connection(hostile: list[HostileHttp]) -> None:
    """Answers read to their end leave the connection open for the next request."""
    server = serve(hostile, huge(201, 100))
    client = tracker("redmine", server.url)
    for _ in range(3):
        assert client.submit(RAW, SubmitOptions(), ENVELOPE).kind is Kind.SUCCESS
    client.close()
    assert server.served == 3 and server.connections == 1


def test_requests_start_at_most_one_thread(hostile: list[HostileHttp],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty requests share one deadline watcher: at most one thread started, not one each."""
    server = serve(hostile, huge(201, 100))
    client = tracker("redmine", server.url)
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for _ in range(20):
        assert client.submit(RAW, SubmitOptions(), ENVELOPE).kind is Kind.SUCCESS
    client.close()
    assert len(started) <= 1


def test_a_dripped_ticket_lookup_ends_within_its_timeout() -> None:
    """RT's REST answer dripped a byte a second: the lookup fails at its timeout, not after."""
    body = b'{"items": [], "pages": 1}' + b" " * 60
    server = HostileHttp(drip(body, 1.0, head=b"HTTP/1.1 200 OK\r\nContent-Type: "
                              b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body)))
    target = RtTarget.model_validate({"type": "rt", "url": server.url, "queue": "General",
                                      "allow_insecure": True, "timeout": "2s"})
    tickets = RtTickets(target, "t0ken")
    started = time.monotonic()
    try:
        with pytest.raises(LookupFailed):
            tickets.find([Submitted(1, "<a@example.org>", "s", None, 0.0, "test/INBOX uid 1")])
    finally:
        tickets.close()
        server.close()
    assert time.monotonic() - started < 5


def test_a_failed_ticket_lookup_names_the_server_only() -> None:
    """A refused lookup's reason names scheme, host and port, never the URL's password."""
    server = HostileHttp(huge(500, 10))
    plain = server.url
    url = plain.replace("http://", "http://reader:s3cret-pw@")
    target = RtTarget.model_validate({"type": "rt", "url": url, "queue": "General",
                                      "allow_insecure": True, "timeout": "2s"})
    tickets = RtTickets(target, "t0ken")
    try:
        with pytest.raises(LookupFailed) as failed:
            tickets.find([Submitted(1, "<a@example.org>", "s", None, 0.0, "test/INBOX uid 1")])
    finally:
        tickets.close()
        server.close()
    assert str(failed.value) == f"{plain}: answered 500"


def test_a_ticket_lookup_is_sent_as_posting_is(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup says who it is and keeps its token: a ~/.netrc entry for the host is not read."""
    server = RecordingServer()
    server.answer = lambda request: (200, b'{"items": [], "pages": 1}', 0)
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password netrc-pw\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    target = RtTarget.model_validate({"type": "rt", "url": server.url, "queue": "General",
                                      "allow_insecure": True, "timeout": "2s"})
    tickets = RtTickets(target, "t0ken")
    try:
        tickets.find([Submitted(1, "<a@example.org>", "s", None, 0.0, "test/INBOX uid 1")])
    finally:
        tickets.close()
        server.close()
    [request] = server.requests
    assert request.headers["Authorization"] == "token t0ken"
    assert request.headers["User-Agent"].startswith("imap-ingest/")
