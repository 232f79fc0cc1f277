"""Hostile mail: encoded words forge no header line and no address, and the directory
target writes through no planted symlink."""

from __future__ import annotations

from imap_ingest.conditions import parse
from imap_ingest.config import SubmitOptions
from imap_ingest.message import Message
from imap_ingest.trackers import Envelope
from imap_ingest.trackers.webhook import document

from .mail import make

ENVELOPE = Envelope("test", "INBOX", 1, 1)
FORGED_LINE = make(subject="=?utf-8?q?Wire_transfer=0AAuthentication-Results:_mx.example.org;"
                           "_dmarc=pass?=")
FORGED_FROM = make(sender="=?utf-8?q?Jane_=3Cceo=40example=2Eorg=3E=2C?= "
                          "<attacker@evil.example>")


def test_an_encoded_newline_forges_no_header_line() -> None:
    """A rule on ^Authentication-Results: does not match a line hidden in a Subject."""
    rule = parse(r"^Authentication-Results: mx\.example\.org;.*dmarc=pass")
    assert rule.check(Message(FORGED_LINE))[0] is False
    message = Message(FORGED_LINE)
    assert message.subject == "Wire transfer Authentication-Results: mx.example.org; dmarc=pass"
    assert all("\n" not in value for _, value in message.fields())


def test_every_line_separator_in_a_decoded_word_becomes_a_space() -> None:
    """CR, VT, FF, NEL and U+2028 decode to spaces as well."""
    raw = make(subject="=?utf-8?q?a=0Db=0Bc=0Cd=C2=85e=E2=80=A8f?=")
    assert Message(raw).subject == "a b c d e f"


def test_addresses_come_from_the_raw_header() -> None:
    """An encoded display name holding an address is a name: the sender stays the real one."""
    message = Message(FORGED_FROM)
    assert message.sender == "attacker@evil.example"
    summary = document(FORGED_FROM, SubmitOptions(), ENVELOPE, 0)
    assert summary["from"] == [{"name": "Jane <ceo@example.org>,",
                                "address": "attacker@evil.example"}]
    assert "ceo@example.org" not in str(summary["to"])


def test_decoded_address_headers_quote_the_display_name() -> None:
    """Rules and the JSON headers see the decoded name quoted, next to the real address."""
    message = Message(FORGED_FROM)
    shown = dict(message.fields())["From"]
    assert shown == '"Jane <ceo@example.org>," <attacker@evil.example>'
    assert parse(r"^From: .*<ceo@example\.org>$").check(message)[0] is False
