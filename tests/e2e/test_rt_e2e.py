"""imap-ingest against a real RT 5.0.3 (Debian's request-tracker5, SQLite): see tests/e2e/rt.py.

One RT server serves the whole session; each test starts from the freshly seeded database
(``RealRT.reset``) and a fresh, empty dovecot mailbox (the ``imap`` fixture). Every outcome is
read back through RT's own REST 2.0 API. After every run, ``Tally.run`` accounts for each
message the test delivered: it is in exactly one place, still in IMAP (source, failure or
loops folder) or recorded once in RT; in both only when RT carried out a chained action in part.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_ingest.cli import main

from ..support.dovecot import ImapAccount
from ..support.mail import make
from .rt import RT_ADDRESS, RTNAME, STAFF, RealRT, Record

ALICE = "alice@example.org"  # unprivileged: may open tickets, reply and comment, nothing more
INCOMING = ("Create", "Correspond", "Comment")  # the transactions that store a received mail
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)

Where = tuple[list[str], list[Record]]  # the IMAP folders holding a message, RT's records of it


@dataclass
class Tally:
    """What a test delivered, accounted for after every run: no loss, no duplicate."""

    imap: ImapAccount
    rt: RealRT
    tmp_path: Path
    delivered: list[str] = field(default_factory=list)
    partial: set[str] = field(default_factory=set)  # expected both in RT and in IMAP
    where: dict[str, Where] = field(default_factory=dict)

    def deliver(self, raw: bytes, folder: str = "INBOX", *, partial: bool = False) -> str:
        """APPEND ``raw`` to ``folder``; its Message-ID."""
        found = _MESSAGE_ID.search(raw)
        assert found, "test messages carry a Message-ID"
        message_id = found[1].decode()
        assert message_id not in self.delivered
        self.imap.append(folder, raw)
        self.delivered.append(message_id)
        if partial:
            self.partial.add(message_id)
        return message_id

    def config(self, folders: list[dict[str, Any]], name: str = "config.yaml", *,
               loop_checks: dict[str, bool] | None = None, **target: Any) -> Path:
        """One account (sub-addresses of support@example.org), one RT target, shared state."""
        data = {
            "accounts": [{
                "name": "e2e", "host": self.imap.host, "port": self.imap.port,
                "security": "none", "username": self.imap.username,
                "password": self.imap.password, "addresses": ["support@example.org"],
                "folders": folders,
            }],
            "targets": {"rt": {"type": "rt", "url": self.rt.url, "queue": "Support",
                               "action": "correspond", "timeout": "30s",
                               "addresses": [RT_ADDRESS], **target}},
            "state_dir": str(self.tmp_path / "state"),
            "retry": {"max_attempts": 2},
            "loop_checks": loop_checks or {},
        }
        path = self.tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    def run(self, config: Path, *extra: str, command: str = "run") -> int:
        """``imap-ingest run --once`` (or another command); then account for every message."""
        argv = [command, "--once", *extra] if command == "run" else [command, *extra]
        code = main([*argv, "-c", str(config)])
        self.check()
        return code

    def check(self) -> None:
        """Each delivered message is in IMAP once or in RT once (in both when partial)."""
        folders: dict[str, list[str]] = {}
        for name in self.imap.folders():
            for _flags, raw in self.imap.messages(name).values():
                found = _MESSAGE_ID.search(raw)
                if found:
                    folders.setdefault(found[1].decode(), []).append(name)
        for message_id in self.delivered:
            in_imap = folders.get(message_id, [])
            in_rt = [r for r in self.rt.records(message_id) if r.type in INCOMING]
            assert len(in_imap) <= 1, f"{message_id} is in IMAP twice: {in_imap}"
            assert len(in_rt) <= 1, f"{message_id} is in RT twice: {in_rt}"
            expected = 2 if message_id in self.partial else 1
            assert len(in_imap) + len(in_rt) == expected, (
                f"{message_id}: in IMAP {in_imap}, in RT {in_rt}")
            self.where[message_id] = (in_imap, in_rt)

    def new_ticket(self, subject: str) -> int:
        """Open a ticket in Support from alice, through imap-ingest; its number."""
        before = {t.id for t in self.rt.tickets()}
        self.deliver(make(subject=subject, sender=ALICE), "Open")
        assert self.run(self.config([{"name": "Open"}], "open.yaml")) == 0
        [ticket] = [t for t in self.rt.tickets() if t.id not in before]
        return ticket.id


@pytest.fixture
def tally(imap: ImapAccount, real_rt: RealRT, tmp_path: Path) -> Tally:
    """A tally of this test's messages over its fresh mailbox and the reset RT."""
    return Tally(imap, real_rt, tmp_path)


def tagged(number: int, subject: str) -> str:
    return f"Re: [{RTNAME} #{number}] {subject}"


def headers(raw: bytes) -> Message:
    return BytesHeaderParser().parsebytes(raw)


def changes(rt: RealRT, number: int, since: int) -> list[tuple[str, str, str, str]]:
    """(type, field, new status or "", creator) of the transactions after the first ``since``."""
    # EmailRecord transactions are RT's copies of the mail it sent: not changes
    return [(t.type, t.field, t.new if t.field == "Status" else "", t.creator)
            for t in rt.history(number)[since:] if t.type != "EmailRecord"]


def test_new_mail_becomes_a_ticket_in_the_folders_queue(tally: Tally,
                                                        real_rt: RealRT) -> None:
    """A new message in a folder mapped to Support becomes one ticket there, from its sender."""
    config = tally.config([{"name": "INBOX", "queue": "Support"}], queue="General")
    message_id = tally.deliver(make(subject="Printer on fire", sender=ALICE))
    assert tally.run(config) == 0
    [ticket] = real_rt.tickets()
    assert (ticket.queue, ticket.subject, ticket.requestors, ticket.status) == (
        "Support", "Printer on fire", (ALICE,), "new")
    in_imap, [record] = tally.where[message_id]
    assert in_imap == [] and (record.ticket, record.type) == (ticket.id, "Create")


def test_reply_with_the_subject_tag_is_correspondence(tally: Tally, real_rt: RealRT) -> None:
    """A reply with the subject tag of RT's real autoreply is correspondence on that ticket."""
    number = tally.new_ticket("Toner low")
    [autoreply] = [m for m in real_rt.outgoing() if b"AutoReply" in m]
    subject = str(headers(autoreply)["Subject"])
    assert subject == f"[{RTNAME} #{number}] AutoReply: Toner low"
    reply = tally.deliver(make(subject="Re: " + subject, sender=ALICE))
    assert tally.run(tally.config([{"name": "INBOX"}])) == 0
    assert [t.id for t in real_rt.tickets()] == [number]
    [record] = tally.where[reply][1]
    assert (record.ticket, record.type) == (number, "Correspond")


@pytest.mark.parametrize(("action", "sender", "owner", "status", "expected"), [
    ("comment", ALICE, "Nobody", "new", [("Comment", "", "", ALICE)]),
    # RT's Take plugin calls SetOwner: a "Set Owner" transaction (and the role's SetWatcher)
    ("take-comment", STAFF, STAFF, "new",
     [("Set", "Owner", "", STAFF), ("SetWatcher", "Owner", "", STAFF),
      ("Comment", "", "", STAFF)]),
    # the correspondence makes RT open the new ticket, then the Resolve plugin resolves it
    ("correspond-resolve", STAFF, "Nobody", "resolved",
     [("Correspond", "", "", STAFF), ("Status", "Status", "open", "RT_System"),
      ("Status", "Status", "resolved", STAFF)]),
], ids=["comment", "take-comment", "correspond-resolve"])
def test_actions_take_effect(tally: Tally, real_rt: RealRT, action: str, sender: str,
                             owner: str, status: str,
                             expected: list[tuple[str, str, str, str]]) -> None:
    """A folder's action (comment, take, resolve, chained) takes effect on the tagged ticket."""
    number = tally.new_ticket("Desk lamp")
    before = len(real_rt.history(number))
    config = tally.config([{"name": "INBOX", "action": action, "move_on_failure": "Failed"}])
    message_id = tally.deliver(make(subject=tagged(number, "Desk lamp"), sender=sender))
    assert tally.run(config) == 0
    ticket = real_rt.ticket(number)
    assert (ticket.owner, ticket.status) == (owner, status)
    assert changes(real_rt, number, before) == expected
    [record] = tally.where[message_id][1]
    assert record.ticket == number


def test_a_chained_action_refused_in_part(tally: Tally, real_rt: RealRT,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A chained action RT carries out in part is set aside as partial and never sent again."""
    # correspond-resolve from alice, who lacks ModifyTicket: RT records the correspondence,
    # then refuses the resolve and answers "not ok"
    number = tally.new_ticket("Broken chair")
    before = len(real_rt.history(number))
    config = tally.config([{"name": "INBOX", "action": "correspond-resolve",
                            "move_on_failure": "Failed"}])
    message_id = tally.deliver(make(subject=tagged(number, "Broken chair"), sender=ALICE),
                               partial=True)
    capsys.readouterr()
    assert tally.run(config) == 0
    err = capsys.readouterr().err
    assert "partial: RT refused the message" in err and "not sent again" in err
    assert "Ticket not resolved: Permission Denied" in real_rt.log_text()
    assert real_rt.ticket(number).status == "open"  # opened by the reply, never resolved
    assert changes(real_rt, number, before) == [
        ("Correspond", "", "", ALICE), ("Status", "Status", "open", "RT_System")]
    in_imap, [record] = tally.where[message_id]
    assert in_imap == ["Failed"] and (record.ticket, record.type) == (number, "Correspond")
    after = real_rt.history(number)
    assert tally.run(config, "Failed", command="retry") == 0
    assert "already in the tracker (at least in part)" in capsys.readouterr().out
    assert tally.run(config) == 0
    assert real_rt.history(number) == after and tally.where[message_id][0] == ["Failed"]


def test_ticket_subaddress_comments_on_that_ticket(tally: Tally, real_rt: RealRT) -> None:
    """Mail to support+N@ (extension: ticket) is a comment on ticket N, with no subject tag."""
    number = tally.new_ticket("VPN down")
    config = tally.config([{"name": "INBOX", "action": "comment"}], extension="ticket")
    message_id = tally.deliver(make(subject="more on the VPN", sender=ALICE).replace(
        b"To: support@example.org", f"To: support+{number}@example.org".encode()))
    assert tally.run(config) == 0
    assert [t.id for t in real_rt.tickets()] == [number]
    [record] = tally.where[message_id][1]
    assert (record.ticket, record.type) == (number, "Comment")
    stored = real_rt.rest("GET", f"attachment/{record.attachment}")["Headers"]
    assert f"X-RT-Mail-Extension: {number}" in stored


def test_queue_subaddress_opens_a_ticket_in_that_queue(tally: Tally, real_rt: RealRT) -> None:
    """support+Billing@ (extension: queue) opens a ticket in Billing; plain support@ in Support."""
    tally.deliver(make(subject="Invoice 42", sender=ALICE).replace(
        b"To: support@example.org", b"To: support+Billing@example.org"))
    tally.deliver(make(subject="Password reset", sender=ALICE))
    assert tally.run(tally.config([{"name": "INBOX"}], extension="queue")) == 0
    queues = {t.subject: t.queue for t in real_rt.tickets()}
    assert queues == {"Invoice 42": "Billing", "Password reset": "Support"}


def test_unknown_queue_is_retried_then_set_aside(tally: Tally, real_rt: RealRT,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown queue's temporary failure is retried (75), then set aside with the reason."""
    config = tally.config([{"name": "INBOX", "queue": "Nope", "move_on_failure": "Failed"}])
    message_id = tally.deliver(make(subject="Lost queue", sender=ALICE))
    assert tally.run(config) == 75
    assert tally.where[message_id][0] == ["INBOX"]
    [(flags, _raw)] = tally.imap.messages("INBOX").values()
    assert b"\\Seen" not in flags
    assert "RT couldn't find the queue: Nope" in real_rt.log_text()  # RT's log, not ours
    capsys.readouterr()
    assert tally.run(config, "--retry-now") == 0
    assert "RT says temporary failure: check the queue and action names" in (
        capsys.readouterr().err)
    assert tally.where[message_id][0] == ["Failed"] and real_rt.tickets() == []


@pytest.mark.parametrize("checks", [{}, {"auto-submitted": False, "precedence": False,
                                         "own-address": False}],
                         ids=["all-checks", "rt-check-alone"])
def test_rt_own_notifications_are_never_submitted(tally: Tally, real_rt: RealRT,
                                                  checks: dict[str, bool],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """RT's own autoreply and notification are held by the loop checks, never sent to RT."""
    number = tally.new_ticket("Coffee machine")
    staff = tally.config([{"name": "Staff"}], "staff.yaml")
    tally.deliver(make(subject=tagged(number, "Coffee machine"), sender=STAFF,
                       body="On it.\n"), "Staff")
    assert tally.run(staff) == 0
    sent = real_rt.outgoing()
    [autoreply] = [m for m in sent if b"Auto-Submitted: auto-replied" in m]
    [notification] = [m for m in sent if b"On it." in m]
    for mail in (autoreply, notification):
        found = headers(mail)
        assert parseaddr(found["From"])[1] == RT_ADDRESS
        assert (found["X-RT-Loop-Prevention"], found["X-RT-Ticket"], found["Precedence"]) == (
            RTNAME, f"{RTNAME} #{number}", "bulk")
    # staff's reply goes out without Auto-Submitted: only Precedence and RT's headers tell
    assert "Auto-Submitted" not in headers(notification)
    before = real_rt.history(number)
    held = [tally.deliver(mail) for mail in (autoreply, notification)]
    config = tally.config([{"name": "INBOX", "loops_folder": "Loops",
                            "move_on_failure": "Failed"}], loop_checks=checks)
    capsys.readouterr()
    assert tally.run(config) == 0
    assert capsys.readouterr().err.count(f"rt (X-RT-Loop-Prevention: {RTNAME})") == 2
    assert real_rt.history(number) == before and [t.id for t in real_rt.tickets()] == [number]
    assert [tally.where[message_id][0] for message_id in held] == [["Loops"], ["Loops"]]
    # RT's only record of these is its own copy of what it sent
    assert {r.type for message_id in held for r in real_rt.records(message_id)} == {
        "EmailRecord"}


def test_rt_stores_what_rt_mailgate_would(tally: Tally, real_rt: RealRT) -> None:
    """RT stores the same text part through imap-ingest (IMAP's CRLF) as through rt-mailgate."""
    body = "Line one of a plain 7-bit text part.\nLine two.\n\nAnd a last one.\n"
    piped = make(subject="Line endings", sender=ALICE, body=body,
                 message_id="<line-endings-mta@example.org>").replace(b"\r\n", b"\n")
    subprocess.run(["/usr/bin/rt-mailgate", "--url", real_rt.url, "--queue", "Support",
                    "--action", "correspond"], input=piped, check=True, timeout=60)
    message_id = tally.deliver(make(subject="Line endings", sender=ALICE, body=body))
    assert tally.run(tally.config([{"name": "INBOX"}])) == 0
    [ours] = tally.where[message_id][1]
    [theirs] = real_rt.records("<line-endings-mta@example.org>")
    stored = [real_rt.attachment_content(record.attachment) for record in (ours, theirs)]
    assert stored[0] == stored[1] and b"\r" not in stored[0]
    assert b"Line two.\n\nAnd a last one." in stored[0]


# -- issue 19: one catch-all mailbox for every queue ------------------------------------------


def test_three_queues_from_one_mailbox_by_a_capture(tally: Tally, real_rt: RealRT) -> None:
    """rt-QUEUE@example.org, captured by one rule, opens each ticket in queue QUEUE."""
    rule = {"name": "queue-by-address", "if": [r"^TO_rt-(?P<queue>[a-z0-9-]+)@example\.org"],
            "then": {"submit": {"queue": "{to.queue}"}}}
    for queue in ("Billing", "Support", "General"):
        tally.deliver(make(subject=f"For {queue}", sender=ALICE).replace(
            b"To: support@example.org", f"To: rt-{queue}@example.org".encode()))
    assert tally.run(tally.config([{"name": "INBOX", "rules": [rule]}])) == 0
    queues = {t.subject: t.queue for t in real_rt.tickets()}
    assert queues == {"For Billing": "Billing", "For Support": "Support",
                      "For General": "General"}
