"""The Redmine target: what it sends (as rdm-mailhandler) and how it reads each answer."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_ingest.config import SubmitOptions
from imap_ingest.trackers import Envelope, Kind
from imap_ingest.trackers.redmine import (
    LOCK_WAIT,
    SLICE,
    Form,
    Redmine,
    RedmineTarget,
    classify,
    crlf,
    crowded,
)

from .support.mail import make
from .support.redmine_server import FORBIDDEN, FakeRedmine, Request

ENVELOPE = Envelope("test", "INBOX", 1, 1)


def target(url: str, **extra: object) -> RedmineTarget:
    return RedmineTarget.model_validate({"type": "redmine", "url": url, "key": "s3cret-key",
                                         "timeout": 2, **extra})


@pytest.mark.parametrize(("status", "body", "kind"), [
    (201, "", Kind.SUCCESS),
    (422, "", Kind.PERMANENT),
    (403, FORBIDDEN.decode(), Kind.CONFIG),
    (413, "", Kind.PERMANENT),
    (404, "", Kind.CONFIG),
    (302, "", Kind.CONFIG),
    (500, "", Kind.TEMPORARY),
    (502, "<html>Bad gateway</html>", Kind.TEMPORARY),
    (503, "", Kind.TEMPORARY),
    (429, "", Kind.TEMPORARY),
    (400, "", Kind.PERMANENT),
    (200, "<html>login</html>", Kind.TEMPORARY),
], ids=lambda v: str(v) if isinstance(v, int) else None)
def test_classify(status: int, body: str, kind: Kind) -> None:
    """Redmine's status and body map to the expected kind, with a reason."""
    outcome = classify(status, body)
    assert outcome.kind is kind and outcome.status == status and outcome.reason


@pytest.mark.parametrize(("status", "among_others", "seconds", "in_doubt"), [
    (422, True, 0.3, False),
    (422, True, LOCK_WAIT, True),
    (422, False, LOCK_WAIT + 5, False),
    (201, True, LOCK_WAIT + 5, False),
], ids=["fast-among-others", "slow-among-others", "slow-alone", "success"])
def test_a_refusal_among_others_after_the_lock_wait_is_in_doubt(
        status: int, among_others: bool, seconds: float, in_doubt: bool) -> None:
    """A 422 among others that took SQLite's lock wait is in doubt (never sent again alone)."""
    outcome = crowded(classify(status, ""), among_others, seconds)
    assert (outcome.crowded, outcome.in_doubt) == (among_others, in_doubt)


def test_too_large_for_rack_is_permanent() -> None:
    """Rack's bare 500 for a form over 4 MiB is permanent, naming the size."""
    # A 500 to a small form stays temporary.
    big = classify(500, "500 Internal Server Error", sent=5_000_000)
    assert big.kind is Kind.PERMANENT and "5000000 bytes, over Rack's 4 MiB" in big.reason
    assert classify(500, "", sent=1000).kind is Kind.TEMPORARY


def test_forbidden_reason_quotes_redmine() -> None:
    """A 403's reason quotes Redmine's own message."""
    assert "Incoming emails WS is disabled" in classify(403, FORBIDDEN.decode()).reason


def test_posts_what_rdm_mailhandler_posts(redmine: FakeRedmine) -> None:
    """Form fields, flags as exactly "1", issue[...] options, email with CRLF, raw bytes kept."""
    raw = b"From: a@example.org\nSubject: caf\xe9\n\nline\rline2\r\n\x00\xff end"
    tracker = Redmine(target(redmine.url, unknown_user="accept", no_permission_check=True,
                             default_group="clients"))
    options = SubmitOptions(project="support", category="request", tracker="Bug",
                            allow_override="project,tracker")
    outcome = tracker.submit(raw, options, ENVELOPE)
    tracker.close()
    assert outcome.kind is Kind.SUCCESS
    [request] = redmine.requests
    assert (request.method, request.path) == ("POST", "/mail_handler")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["User-Agent"].startswith("imap-ingest/")
    assert request.field("email") == crlf(raw) == (
        b"From: a@example.org\r\nSubject: caf\xe9\r\n\r\nline\r\nline2\r\n\x00\xff end")
    sent = {name: values[0] for name, values in request.form.items() if name != "email"}
    assert sent == {
        "key": b"s3cret-key", "unknown_user": b"accept", "default_group": b"clients",
        "no_permission_check": b"1", "allow_override": b"project,tracker",
        "issue[project]": b"support", "issue[category]": b"request", "issue[tracker]": b"Bug",
    }


def test_keep_alive_one_connection(redmine: FakeRedmine) -> None:
    """Several submissions reuse one connection."""
    tracker = Redmine(target(redmine.url))
    for _ in range(5):
        assert tracker.submit(make(), SubmitOptions(), ENVELOPE).kind is Kind.SUCCESS
    tracker.close()
    assert len(redmine.requests) == 5
    assert len({request.client_port for request in redmine.requests}) == 1


def test_wrong_key_is_config(redmine: FakeRedmine) -> None:
    """A wrong API key is a CONFIG outcome with status 403."""
    tracker = Redmine(target(redmine.url, key="wrong"))
    outcome = tracker.submit(make(), SubmitOptions(), ENVELOPE)
    tracker.close()
    assert outcome.kind is Kind.CONFIG and outcome.status == 403


def test_timeout_is_temporary_and_says_it_may_have_arrived(redmine: FakeRedmine) -> None:
    """A timeout is temporary and says Redmine may still have taken the message."""
    redmine.answer = lambda request: (201, b"", 3.0)
    tracker = Redmine(target(redmine.url, timeout=0.5))
    outcome = tracker.submit(make(), SubmitOptions(), ENVELOPE)
    tracker.close()
    assert outcome.kind is Kind.TEMPORARY
    assert "within 0.5 s" in outcome.reason and "may still have taken" in outcome.reason


def test_connection_refused_is_temporary() -> None:
    """A refused connection is temporary."""
    tracker = Redmine(target("http://127.0.0.1:9"))
    outcome = tracker.submit(make(), SubmitOptions(), ENVELOPE)
    tracker.close()
    assert outcome.kind is Kind.TEMPORARY and "cannot connect" in outcome.reason


def test_redirect_is_not_followed(redmine: FakeRedmine) -> None:
    """A redirect would turn the POST into a GET that 'succeeds': it is a URL problem."""
    def moved(request: Request) -> tuple[int, bytes, float]:
        return 301, b"", 0
    redmine.answer = moved
    tracker = Redmine(target(redmine.url))
    outcome = tracker.submit(make(), SubmitOptions(), ENVELOPE)
    tracker.close()
    assert outcome.kind is Kind.CONFIG and len(redmine.requests) == 1


def test_check_tests_the_key_without_posting(redmine: FakeRedmine) -> None:
    """check() tells a good key from a bad one with GETs only."""
    good, bad = Redmine(target(redmine.url)), Redmine(target(redmine.url, key="nope"))
    assert good.check().kind is Kind.SUCCESS
    assert bad.check().kind is Kind.CONFIG
    good.close()
    bad.close()
    assert {r.method for r in redmine.requests} == {"POST"}
    assert not any("email" in r.form or "key" in r.path for r in redmine.requests)


@given(st.dictionaries(st.text(max_size=10), st.binary(max_size=300) | st.text(max_size=50),
                       max_size=5))
def test_form_is_exactly_urlencode(fields: dict[str, str | bytes]) -> None:
    """Our faster form encoding gives the bytes urllib's urlencode gives, for any input."""
    assert bytes(Form(fields)) == urlencode(fields).encode()


def test_a_big_form_is_kept_in_pieces_with_the_exact_bytes() -> None:
    """A big form is kept escaped in slices that make urlencode's exact bytes."""
    # A message over a slice is escaped slice by slice and not joined (no copy of it), with
    # escapes falling on the slice boundaries; len() is the pieces' length, which requests
    # sends as Content-Length.
    email = (b"x" * (SLICE - 1) + b"\r\n%+ =&\xff") * 3
    fields: dict[str, str | bytes] = {"key": "k&y", "email": email, "project": "support"}
    form = Form(fields)
    assert len(list(form)) > 3
    assert b"".join(form) == b"".join(form) == urlencode(fields).encode()
    assert len(form) == len(urlencode(fields))


def test_a_big_message_reaches_redmine_whole(redmine: FakeRedmine) -> None:
    """A message of several slices arrives byte for byte, with the right Content-Length."""
    raw = make(body="line with % and +\n" * (3 * SLICE // 18))
    tracker = Redmine(target(redmine.url))
    assert tracker.submit(raw, SubmitOptions(), ENVELOPE).kind is Kind.SUCCESS
    tracker.close()
    assert redmine.emails == [crlf(raw)]
    assert int(redmine.requests[0].headers["Content-Length"]) == len(redmine.requests[0].body)


@given(st.binary(max_size=200))
def test_crlf_normalises_every_line_end(raw: bytes) -> None:
    """Every CR, LF or CRLF becomes one CRLF; nothing else changes."""
    import re

    assert crlf(raw) == re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
