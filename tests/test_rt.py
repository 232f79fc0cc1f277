"""The RT target: rt-mailgate's request, RT's answers, sub-address extensions, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.config import SubmitOptions
from imap_ingest.message import Message
from imap_ingest.trackers import Envelope, Kind
from imap_ingest.trackers.rt import RequestTracker, RtTarget, classify

from .support.dovecot import ImapAccount
from .support.mail import make
from .support.redmine_server import Answer, FakeRT, Request

ENVELOPE = Envelope("test", "INBOX", 1, 1)


def tracker(url: str, **extra: Any) -> RequestTracker:
    return RequestTracker(RtTarget.model_validate({"type": "rt", "url": url, **extra}))


@pytest.mark.parametrize(("status", "body", "action", "kind", "partial"), [
    (200, "ok\n", "correspond", Kind.SUCCESS, False),
    (200, "not ok - operation unsuccessful\n", "correspond", Kind.PERMANENT, False),
    (200, "not ok - operation unsuccessful\n", "correspond-resolve", Kind.PERMANENT, True),
    (200, "temporary failure - operation unsuccessful\n", "correspond", Kind.TEMPORARY, False),
    (200, "<html><title>Login</title></html>", "correspond", Kind.TEMPORARY, False),
    (500, "", "correspond", Kind.TEMPORARY, False),
    (503, "", "correspond", Kind.TEMPORARY, False),
    (404, "", "correspond", Kind.CONFIG, False),
    (403, "", "correspond", Kind.CONFIG, False),
    (302, "", "correspond", Kind.CONFIG, False),
    (413, "", "correspond", Kind.PERMANENT, False),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_classify(status: int, body: str, action: str, kind: Kind, partial: bool) -> None:
    """RT's status and body map to the expected kind and partial flag."""
    outcome = classify(status, body, action)
    assert (outcome.kind, outcome.partial) == (kind, partial) and outcome.reason


def test_temporary_failure_names_the_likely_cause() -> None:
    """RT's temporary failure names the likely cause, or RT's own detail."""
    reason = classify(200, "temporary failure - operation unsuccessful", "correspond").reason
    assert reason == "RT says temporary failure: check the queue and action names"
    devel = classify(200, "temporary failure - RT couldn't find the queue: Nope", "correspond")
    assert "(RT couldn't find the queue: Nope)" in devel.reason


def test_ticket_only_when_rt_says_it() -> None:
    """Stock RT returns no id: none is guessed. DevelMode's Ticket: line is recorded."""
    assert classify(200, "ok\n", "correspond").ticket is None
    devel = classify(200, "ok\nTicket: 42\nQueue: General\nOwner: Nobody\n", "correspond")
    assert devel.ticket == "42"


def test_posts_what_rt_mailgate_posts(rt: FakeRT) -> None:
    """The post is what rt-mailgate posts, on one keep-alive connection."""
    # multipart/form-data, queue and action fields, the message part with NO filename and
    # the bytes as an MTA pipes them to rt-mailgate: LF line ends (RT keeps a CR it is
    # given), every other byte untouched.
    raw = b"From: a@example.org\nSubject: caf\xe9\n\nbody\r\n\x00"
    client = tracker(rt.url, queue="Support", action="comment")
    outcome = client.submit(raw, SubmitOptions(), ENVELOPE)
    client.submit(make(), SubmitOptions(queue="Billing", action="correspond"), ENVELOPE)
    client.close()
    assert outcome.kind is Kind.SUCCESS
    first, second = rt.requests
    assert (first.method, first.path) == ("POST", "/REST/1.0/NoAuth/mail-gateway")
    assert first.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert first.filenames == {"queue": None, "action": None, "message": None}
    assert first.field("message") == b"From: a@example.org\nSubject: caf\xe9\n\nbody\n\x00"
    assert (first.field("queue"), first.field("action")) == (b"Support", b"comment")
    assert (second.field("queue"), second.field("action")) == (b"Billing", b"correspond")
    assert first.client_port == second.client_port


def test_a_filename_would_lose_the_message(rt: FakeRT) -> None:
    """Why the part has no filename: RT reads the filename as the mail (recorded answer)."""
    import requests

    answer = requests.post(rt.url + "/REST/1.0/NoAuth/mail-gateway",
                           files={"message": ("m.eml", make(), "message/rfc822")}, timeout=5)
    assert answer.text.startswith("not ok") and rt.tickets == {}


def test_redirects_are_posted_again(rt: FakeRT) -> None:
    """Up to 3 redirects, each answered by POSTing the same form again (as rt-mailgate)."""
    def answer(request: Request) -> Answer:
        if request.path != "/b":
            return 302, b"", 0, {"Location": "/b"}
        return FakeRT.default(rt, request)

    rt.answer = answer
    client = tracker(rt.url + "/old")
    outcome = client.submit(make(), SubmitOptions(), ENVELOPE)
    client.close()
    assert outcome.kind is Kind.SUCCESS
    assert [r.method for r in rt.requests] == ["POST", "POST"]
    assert rt.requests[0].field("message") == rt.requests[1].field("message")


@pytest.mark.parametrize(("extension", "subaddress", "field", "value"), [
    ("queue", "Billing", "queue", b"Billing"),
    ("action", "comment", "action", b"comment"),
    ("ticket", "1", "ticket", b"1"),
    (None, "Billing", "queue", None),
])
def test_extension_sets_a_field_and_the_header(rt: FakeRT, extension: str | None,
                                              subaddress: str, field: str,
                                              value: bytes | None) -> None:
    """The sub-address becomes queue, action or ticket; X-RT-Mail-Extension always carries it."""
    rt.tickets[1] = []
    raw = make()
    client = tracker(rt.url, extension=extension)
    outcome = client.submit(raw, SubmitOptions(), Envelope("t", "INBOX", 1, 1, subaddress))
    client.close()
    assert outcome.kind is Kind.SUCCESS
    [request] = rt.requests
    assert request.form.get(field, [None])[0] == value
    # As an MTA pipes it: LF line ends, the extension header first.
    assert request.field("message") == (f"X-RT-Mail-Extension: {subaddress}\n".encode()
                                        + raw.replace(b"\r\n", b"\n"))


def test_a_subaddress_that_cannot_be_a_ticket_is_refused_before_posting(rt: FakeRT) -> None:
    """A subaddress that is no ticket number is refused before posting."""
    client = tracker(rt.url, extension="ticket")
    outcome = client.submit(make(), SubmitOptions(), Envelope("t", "I", 1, 1, "billing"))
    client.close()
    assert outcome.kind is Kind.PERMANENT and rt.requests == []


def test_check_asks_rest_and_creates_nothing(rt: FakeRT) -> None:
    """check() asks RT's REST root and creates nothing."""
    client = tracker(rt.url)
    outcome = client.check()
    client.close()
    assert outcome.kind is Kind.SUCCESS and "RT 5.0.3 answers" in outcome.reason
    assert [(r.method, r.path) for r in rt.requests] == [("GET", "/REST/1.0/")]


@pytest.mark.parametrize(("headers", "separator", "expected"), [
    ({"Delivered-To": "support+Billing@example.org"}, "+", "Billing"),
    ({"To": "Desk <support-billing@example.org>"}, "-", "billing"),
    ({"To": "support@example.org", "Cc": "support+x@example.org"}, "+", None),  # To first
    ({"Delivered-To": "other+x@example.org", "To": "support+Sales@example.org"}, "+", "Sales"),
    ({"To": "someone+x@example.org"}, "+", None),
])
def test_subaddress(headers: dict[str, str], separator: str, expected: str | None) -> None:
    """The subaddress comes from the first header naming the address, in the given order."""
    raw = ("From: a@b.org\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
           + "\r\nbody").encode()
    found = Message(raw).subaddress(["support@example.org"], separator,
                                    ["Delivered-To", "X-Original-To", "To", "Cc"])
    assert found == expected


def write(tmp_path: Path, imap: ImapAccount, url: str, **target: Any) -> Path:
    data = {
        "accounts": [{"name": "test", "host": imap.host, "port": imap.port, "security": "none",
                      "username": imap.username, "password": imap.password,
                      "addresses": ["support@example.org"],
                      "folders": [{"name": "INBOX", "move_on_failure": "Failed"}]}],
        "targets": {"rt": {"type": "rt", "url": url, "timeout": "5s", **target}},
        "state_dir": str(tmp_path / "state"), "retry": {"max_attempts": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_one_mailbox_a_queue_per_address(tmp_path: Path, imap: ImapAccount, rt: FakeRT) -> None:
    """The seed's wish: support+Billing@ → queue Billing, with no mail server change."""
    billing = make().replace(b"To: support@example.org", b"To: support+Billing@example.org")
    imap.append("INBOX", billing)
    imap.append("INBOX", make())
    assert main(["run", "--once", "-c", str(write(tmp_path, imap, rt.url,
                                                  extension="queue"))]) == 0
    queues = [r.form.get("queue", [b"(default)"])[0] for r in rt.requests]
    assert queues == [b"Billing", b"(default)"] and imap.messages("INBOX") == {}


def test_unknown_queue_is_retried_then_set_aside(tmp_path: Path, imap: ImapAccount, rt: FakeRT,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """RT's temporary failure for an unknown queue: retried (not forever), then aside."""
    imap.append("INBOX", make())
    path = write(tmp_path, imap, rt.url, queue="Nope")
    assert main(["run", "--once", "-c", str(path)]) == 75
    assert main(["run", "--once", "--retry-now", "-c", str(path)]) == 0
    assert len(rt.requests) == 2 and len(imap.messages("Failed")) == 1
    assert "gave up after 2 attempt(s)" in capsys.readouterr().err


def test_refused_and_partial(tmp_path: Path, imap: ImapAccount, rt: FakeRT,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """not ok goes to move_on_failure; a chained action's not ok is partial."""
    # A partial message is recorded as such, and `retry` leaves it where it is.
    imap.append("INBOX", make(subject="Re: [rt.example.net #99] gone"))
    path = write(tmp_path, imap, rt.url, action="correspond-comment")
    rt.plugins = ("correspond", "comment")
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert len(imap.messages("Failed")) == 1
    err = capsys.readouterr().err
    assert "partial: RT refused the message" in err and "not sent again" in err
    assert main(["retry", "-c", str(path), "Failed"]) == 0
    assert "already in the tracker (at least in part)" in capsys.readouterr().out
    assert len(imap.messages("Failed")) == 1
