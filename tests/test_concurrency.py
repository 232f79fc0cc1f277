"""Bounded concurrent submission: real dovecot, a real HTTP server that takes its time."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from imap_ingest.cli import main
from imap_ingest.message import Message

from .support.dovecot import ImapAccount
from .support.ingest_env import ROOT, backlog, command, write_config
from .support.mail import make, make_attached
from .support.redmine_server import Answer, FakeRedmine, Request


def subject_of(request: Request) -> str:
    """The Subject of the message a request posted."""
    return next(line for line in request.field("email").split(b"\r\n")
                if line.startswith(b"Subject: "))[9:].decode()


@dataclass
class Timeline:
    """When each request (by Subject) was being answered; answers take ``delay`` seconds,
    or what ``delays`` says for a subject, with ``status``."""

    delay: float = 0.1
    status: int = 201
    delays: dict[str, float] = field(default_factory=dict)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Answer:
        subject = subject_of(request)
        started = time.monotonic()
        with self.lock:
            self.order.append(subject)
        time.sleep(self.delays.get(subject, self.delay))
        self.spans[subject] = (started, time.monotonic())
        return self.status, b"", 0

    def most_at_once(self) -> int:
        edges = sorted([(start, 1) for start, _ in self.spans.values()]
                       + [(end, -1) for _, end in self.spans.values()])
        at_once = most = 0
        for _, step in edges:
            at_once += step
            most = max(most, at_once)
        return most

    def overlap(self, first: str, second: str) -> bool:
        (a_start, a_end), (b_start, b_end) = self.spans[first], self.spans[second]
        return a_start < b_end and b_start < a_end


def run(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, **target: Any) -> int:
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, target=target)
    return main(["run", "--once", "-c", str(path)])


@pytest.fixture
def timeline(redmine: FakeRedmine) -> Timeline:
    timeline = Timeline()
    redmine.answer = timeline
    return timeline


def test_one_at_a_time_is_in_uid_order(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """`concurrency: 1`: a target gets one request at a time, in the folder's order."""
    backlog(imap, 5)
    assert run(tmp_path, imap, redmine, concurrency=1) == 0
    assert timeline.order == [f"backlog {i}" for i in range(5)]
    assert timeline.most_at_once() == 1
    assert imap.messages("INBOX") == {}


def test_auto_is_the_default_and_finds_more_than_one(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """Without `concurrency`, a tracker that keeps up gets more than one, up to the maximum."""
    backlog(imap, 60)
    timeline.delay = 0.03
    assert run(tmp_path, imap, redmine, max_concurrency=3) == 0
    assert timeline.most_at_once() == 3
    assert imap.messages("INBOX") == {}


@dataclass
class Locking(Timeline):
    """Answers 422 to a request that overlapped another, as Redmine on SQLite does when
    two writers deadlock; ``refuse`` names subjects refused even alone."""

    refuse: set[str] = field(default_factory=set)
    active: int = 0
    alone: list[str] = field(default_factory=list)

    def __call__(self, request: Request) -> Answer:
        subject = subject_of(request)
        with self.lock:
            self.active += 1
            crowded = self.active > 1
        time.sleep(self.delay)
        with self.lock:
            crowded = crowded or self.active > 1
            self.active -= 1
            if not crowded:
                self.alone.append(subject)
        self.order.append(subject)
        return (422 if crowded or subject in self.refuse else 201), b"", 0


def test_a_refusal_among_others_is_sent_again_alone(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """A 422 among others is sent again (once among others, then alone); only one alone fails."""
    locking = Locking(delay=0.05, refuse={"backlog 3"})
    redmine.answer = locking
    backlog(imap, 12)
    assert run(tmp_path, imap, redmine, concurrency=4) == 0
    created = [subject for subject in locking.alone if subject != "backlog 3"]
    assert sorted(created) == sorted(f"backlog {i}" for i in range(12) if i != 3)
    assert list(imap.messages("INBOX")) == [4]  # backlog 3, kept, marked as failed
    # Crowded, then perhaps crowded again, then alone: the answer alone is what counts.
    assert locking.order.count("backlog 3") <= 3 and "backlog 3" in locking.alone


@dataclass
class Committing(Locking):
    """Locking, where a crowded 422 may come after the issue was made (``anyway``), as
    Redmine on SQLite answers when a write after the issue's commit hits the lock; serves
    the issues made on /issues.json (``lookup``: its status)."""

    anyway: bool = True
    made_anyway: set[str] = field(default_factory=set)  # subjects made when refused crowded
    lookup: int = 200
    issues: list[tuple[int, str]] = field(default_factory=list)
    posts: list[tuple[str, float, float, int]] = field(default_factory=list)
    made: list[str | None] = field(default_factory=list)  # Message-IDs with their issue

    def __call__(self, request: Request) -> Answer:
        if request.method == "GET":
            return self.listed(request)
        started = time.monotonic()
        status = super().__call__(request)[0]
        subject = subject_of(request)
        with self.lock:
            if status == 201 or self.anyway or subject in self.made_anyway:
                self.issues.append((len(self.issues) + 1, subject))
                self.made.append(Message(request.field("email")).message_id)
            self.posts.append((subject, started, time.monotonic(), status))
        return status, b"", 0

    def listed(self, request: Request) -> Answer:
        assert request.path == "/issues.json", request.path
        assert request.headers.get("X-Redmine-API-Key") == "api-read-key"
        if self.lookup != 200:
            return self.lookup, b"", 0
        offset, limit = (int(request.field(name)) for name in ("offset", "limit"))
        stamp = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
        with self.lock:
            issues = [{"id": n, "subject": subject, "created_on": stamp}
                      for n, subject in self.issues]
        return 200, json.dumps({"issues": issues[offset:offset + limit],
                                "total_count": len(issues)}).encode(), 0, {
            "Content-Type": "application/json"}

    def posted(self) -> Counter[str]:
        return Counter(subject for subject, *_ in self.posts)


def ledger_tickets(tmp_path: Path) -> dict[int, str | None]:
    """Each message's ticket in the ledger, by UID."""
    with sqlite3.connect(tmp_path / "state" / "ledger.sqlite3") as db:
        return dict(db.execute("SELECT uid, ticket FROM messages"))


def test_a_refusal_among_others_that_made_the_issue_is_not_sent_again(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """With api_key, a crowded 422 whose issue exists is taken, with its issue; no second POST."""
    committing = Committing(delay=0.05)
    redmine.answer = committing
    backlog(imap, 12)
    assert run(tmp_path, imap, redmine, concurrency=4, api_key="api-read-key") == 0
    refused = [subject for subject, _, _, status in committing.posts if status == 422]
    assert refused  # the test saw what it is about
    assert set(committing.posted().values()) == {1}
    assert sorted(subject for _, subject in committing.issues) == sorted(
        f"backlog {i}" for i in range(12))
    issue = {subject: str(n) for n, subject in committing.issues}
    tickets = ledger_tickets(tmp_path)
    assert {tickets[int(s.split()[1]) + 1] for s in refused} == {issue[s] for s in refused}
    assert imap.messages("INBOX") == {}


def test_a_refusal_among_others_that_made_nothing_is_sent_again_among_others_then_alone(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """With api_key, a crowded 422 that made no issue: once more among others, then alone."""
    committing = Committing(delay=0.05, anyway=False)
    redmine.answer = committing
    backlog(imap, 12)
    assert run(tmp_path, imap, redmine, concurrency=4, api_key="api-read-key") == 0
    posted = committing.posted()
    assert max(posted.values()) <= 3 and any(n > 1 for n in posted.values())
    # A second post of a refused subject overlapped another post: no drain before it.
    refused = {subject for subject, _, _, status in committing.posts if status == 422}
    seconds = [next(itertools.islice(((start, end) for subject, start, end, _ in
                                      committing.posts if subject == s), 1, None))
               for s in refused]
    assert any(start < other_end and other_start < end
               for start, end in seconds for subject, other_start, other_end, _
               in committing.posts if (other_start, other_end) != (start, end))
    assert sorted(subject for _, subject in committing.issues) == sorted(
        f"backlog {i}" for i in range(12))
    assert any(r.method == "GET" for r in redmine.requests)  # it looked first
    assert imap.messages("INBOX") == {}


def test_a_lookup_that_fails_sets_the_refusal_aside_in_doubt(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """The lookup failing: the crowded 422 goes to Quarantine, never posted a second time."""
    committing = Committing(delay=0.05, lookup=500)
    redmine.answer = committing
    backlog(imap, 12)
    assert run(tmp_path, imap, redmine, concurrency=4, api_key="api-read-key") == 0
    refused = {subject for subject, _, _, status in committing.posts if status == 422}
    assert refused and set(committing.posted().values()) == {1}
    assert len(committing.issues) == 12  # none doubled
    assert imap.messages("INBOX") == {}
    assert len(imap.messages("Quarantine")) == len(refused)


def test_worker_processes_never_take_another_folders_issue(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Worker processes, the same subjects in four folders: each message has its issue or waits."""
    committing = Committing(delay=0.05, anyway=False)
    redmine.answer = committing
    folders = ["INBOX", "F1", "F2", "F3"]
    raws = {name: backlog(imap, 6, name) for name in folders}
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, workers=2,
                        target={"concurrency": 4, "api_key": "api-read-key"},
                        folders=[{"name": name, "project": "support"} for name in folders])
    run = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert any(status == 422 for *_, status in committing.posts)
    created = Counter(committing.made)
    waiting = {Message(raw).message_id for _, raw in imap.messages("Quarantine").values()}
    for raw in (raw for each in raws.values() for raw in each):
        message_id = Message(raw).message_id
        assert created[message_id] == 1 or message_id in waiting


@pytest.mark.parametrize("concurrency", ["auto", 4])
def test_without_lookups_mail_that_may_attach_is_posted_alone(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, concurrency: str | int) -> None:
    """No api_key: mail with attachments alone, the rest among others; each issue made once."""
    # As Redmine on SQLite: an attachment written after the issue's commit may meet the lock.
    committing = Committing(delay=0.03, anyway=False)
    redmine.answer = committing
    subjects = [f"backlog {i}" for i in range(48)]
    with imap.client() as client:
        for i, subject in enumerate(subjects):
            client.append("INBOX", make_attached(subject) if i % 6 == 5 else make(subject=subject))
    committing.made_anyway = {s for i, s in enumerate(subjects) if i % 6 == 5}
    assert run(tmp_path, imap, redmine, concurrency=concurrency) == 0
    assert sorted(subject for _, subject in committing.issues) == sorted(subjects)
    spans = sorted((start, end, subject) for subject, start, end, _ in committing.posts)
    alone = {subject for i, (start, end, subject) in enumerate(spans)
             if all(e <= start or s >= end for j, (s, e, _) in enumerate(spans) if j != i)}
    assert committing.made_anyway <= alone
    assert any(status == 422 for *_, status in committing.posts)  # the rest went among others
    assert imap.messages("INBOX") == {}


def test_mail_posted_alone_goes_in_a_row_not_one_drain_each(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """No api_key: mail with attachments is posted alone, several in a row, not one drain each."""
    subjects = [f"backlog {i}" for i in range(48)]
    with imap.client() as client:
        for i, subject in enumerate(subjects):
            client.append("INBOX", make_attached(subject) if i % 6 == 5 else make(subject=subject))
    attached = {s for i, s in enumerate(subjects) if i % 6 == 5}
    timeline.delay = 0.03
    assert run(tmp_path, imap, redmine, concurrency=4) == 0
    assert sorted(timeline.spans) == sorted(subjects)
    spans = sorted((start, end, subject) for subject, (start, end) in timeline.spans.items())
    for i, (start, end, subject) in enumerate(spans):
        if subject in attached:  # still alone
            assert all(e <= start or s >= end for j, (s, e, _) in enumerate(spans) if j != i)
    # Runs of attachments one after the other, in the order they were posted.
    runs = sum(1 for i, (_, _, subject) in enumerate(spans)
               if subject in attached and (i == 0 or spans[i - 1][2] not in attached))
    assert runs <= len(attached) // 2
    assert imap.messages("INBOX") == {}


def test_a_reply_to_mail_waiting_to_go_alone_waits_for_it(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """A reply to mail that waits to be posted alone is posted after it, not before."""
    question = make_attached("question")
    imap.append("INBOX", question)
    asked = Message(question).message_id
    assert asked is not None
    imap.append("INBOX", make(subject="reply", headers={"In-Reply-To": asked}))
    backlog(imap, 6)
    timeline.delay = 0.05
    assert run(tmp_path, imap, redmine, concurrency=4) == 0
    assert timeline.order.index("question") < timeline.order.index("reply")
    assert timeline.spans["question"][1] <= timeline.spans["reply"][0]
    assert imap.messages("INBOX") == {}


def test_concurrency_bounds_the_requests_in_flight(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """`concurrency: 4` keeps four requests in flight, never a fifth."""
    # Every message is submitted once and deleted.
    backlog(imap, 16)
    timeline.delay = 0.2
    assert run(tmp_path, imap, redmine, concurrency=4) == 0
    assert timeline.most_at_once() == 4
    assert sorted(timeline.order) == sorted(f"backlog {i}" for i in range(16))
    assert imap.messages("INBOX") == {}


def test_a_reply_waits_for_the_message_it_answers(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """A reply is posted only after the message it answers got its answer."""
    # A reply in the same backlog waits for the tracker's answer to the message it replies
    # to (so it lands on that ticket); unrelated mail before it goes alongside.
    timeline.delays = {"question": 0.5}
    imap.append("INBOX", make(subject="question", message_id="<q@example.org>"))
    imap.append("INBOX", make(subject="unrelated"))
    imap.append("INBOX", make(subject="reply", headers={"In-Reply-To": "<q@example.org>"}))
    imap.append("INBOX", make(subject="later reply", headers={
        "References": "<other@example.org> <q@example.org>"}))
    assert run(tmp_path, imap, redmine, concurrency=4) == 0
    assert timeline.spans["reply"][0] >= timeline.spans["question"][1]
    assert timeline.spans["later reply"][0] >= timeline.spans["question"][1]
    assert timeline.overlap("question", "unrelated")


def test_mail_about_one_ticket_is_posted_one_at_a_time(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """Two updates naming ticket #12 in the subject never race each other on the tracker."""
    imap.append("INBOX", make(subject="Re: [Support - Bug #12] disk full"))
    imap.append("INBOX", make(subject="[Support - Bug #13] other"))
    imap.append("INBOX", make(subject="[Support - Bug #12] disk full (more)"))
    assert run(tmp_path, imap, redmine, concurrency=3) == 0
    assert not timeline.overlap("Re: [Support - Bug #12] disk full",
                                "[Support - Bug #12] disk full (more)")
    assert timeline.overlap("Re: [Support - Bug #12] disk full", "[Support - Bug #13] other")


def test_the_same_message_twice_is_not_raced(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """Two copies of one message are never in flight together."""
    # Same Message-ID: the second is recognised as a duplicate of the first, which the
    # tracker took.
    raw = make(subject="twice", message_id="<twice@example.org>")
    imap.append("INBOX", raw)
    imap.append("INBOX", raw)
    assert run(tmp_path, imap, redmine, concurrency=2) == 0
    assert timeline.order == ["twice"]
    assert imap.messages("INBOX") == {}


def test_temporary_failure_with_requests_in_flight_loses_nothing(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, timeline: Timeline) -> None:
    """A 503 with requests in flight loses nothing and exits 75."""
    # 503 with three in flight: no more requests once the first answer came back, every
    # message stays for the retry.
    backlog(imap, 10)
    timeline.status = 503
    assert run(tmp_path, imap, redmine, concurrency=3) == 75
    assert 1 <= len(timeline.order) <= 3
    assert len(imap.messages("INBOX")) == 10


def test_refused_key_with_requests_in_flight_touches_nothing(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """403 while others are in flight: the folder stops with exit 77 and no message moved."""
    backlog(imap, 6)
    redmine.answer = lambda request: (403, b"", 0.1)
    assert run(tmp_path, imap, redmine, concurrency=3) == 77
    assert len(redmine.requests) <= 3
    assert len(imap.messages("INBOX")) == 6


@pytest.mark.parametrize("value", [0, 65, "many"])
def test_concurrency_out_of_range_is_a_config_error(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine, value: object,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`concurrency` must be a whole number from 1 to 64; the error names the key."""
    assert run(tmp_path, imap, redmine, concurrency=value) == 78
    assert "targets.redmine.concurrency" in capsys.readouterr().err


def test_ties_are_message_ids_and_ticket_tags() -> None:
    """A message is tied to its Message-IDs and the ticket tags in its subject."""
    # Its own Message-ID, the ones it replies to, and the tickets its subject names in
    # Redmine's or RT's tag format; a bare #7 in prose is not a tag.
    message = Message(make(subject="Re: [rt.example.net #7] disk #9 full",
                           message_id="<c@example.org>",
                           headers={"In-Reply-To": "<b@example.org>",
                                    "References": "<a@example.org>\r\n <b@example.org>"}))
    assert message.ties() == {"<a@example.org>", "<b@example.org>", "<c@example.org>", "#7"}
    assert Message(make(message_id="<solo@example.org>")).ties() == {"<solo@example.org>"}
