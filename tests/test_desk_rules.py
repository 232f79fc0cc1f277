"""Rules for real desks: captures, groups, address conditions, enabled:, allow_senders."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from imap_ingest.conditions import parse
from imap_ingest.config import Folder
from imap_ingest.config.folders import AllowSenders
from imap_ingest.message import Message
from imap_ingest.rules import Act, RuleSet

from .support.mail import make

QUEUE = r"^TO_rt-(?P<queue>[a-z0-9-]+)@example\.org"
REQUESTER = r"^(?:Requester|申請者): *(?P<requester>\S+@\S+)"


def folder(*rules: dict[str, Any] | str, **options: Any) -> Folder:
    return Folder.model_validate({"name": "INBOX", "rules": list(rules), **options})


def to(address: str, **kwargs: Any) -> bytes:
    return make(**kwargs).replace(b"To: support@example.org", f"To: {address}".encode())


QUEUES = folder({"name": "queues", "if": [QUEUE], "then": {"submit": {"queue": "{to.queue}"}}},
                queue="General")
FORM = folder({"name": "form", "if": [{"body": REQUESTER}],
               "then": {"submit": {}, "set_header": {"From": "{body.requester}"}}})


@pytest.mark.parametrize("queue", ["billing", "ops", "web-team"])
def test_queue_taken_from_the_address(queue: str) -> None:
    """One catch-all mailbox: rt-QUEUE@ becomes queue QUEUE, shown in the trace."""
    decision = RuleSet(QUEUES).evaluate(Message(to(f"rt-{queue}@example.org")))
    assert decision.act is Act.SUBMIT and decision.options is not None
    assert decision.options.queue == queue
    assert ("capture", "to.queue", f"{queue!r}") in [(s.kind, s.name, s.why)
                                                     for s in decision.trace]
    assert any(s.kind == "value" and "-> " + repr(queue) in s.why for s in decision.trace)


@pytest.mark.parametrize("body", ["申請者: taro@example.org\n",
                                  "Form\nRequester: taro@example.org\n"])
def test_form_mail_requester_becomes_from(body: str) -> None:
    """The requester named in a form mail's body becomes the From sent to the tracker."""
    decision = RuleSet(FORM).evaluate(Message(make(sender="forms@example.org", body=body)))
    assert decision.act is Act.SUBMIT
    sent = Message(decision.submission(make(sender="forms@example.org", body=body)))
    assert sent.sender == "taro@example.org"


@pytest.mark.parametrize("body", ["Requester: taro@exa<mple.org\n",
                                  "Requester: " + "a" * 70 + "@example.org\n"])
def test_a_bad_value_holds_the_message(body: str) -> None:
    """A captured value the field cannot take holds the message, with the reason."""
    decision = RuleSet(FORM).evaluate(Message(make(body=body)))
    assert decision.act is Act.HOLD
    assert "not a valid value" in decision.reason


def test_queue_capture_cannot_name_two_queues() -> None:
    """A capture with a comma or a line break is refused as a queue."""
    rules = folder({"if": [r"^Subject: queue (?P<q>.*)"],
                    "then": {"submit": {"queue": "{subject.q}"}}})
    for subject in ("a,b", "ok"):
        decision = RuleSet(rules).evaluate(Message(make(subject=f"queue {subject}")))
        assert decision.act is (Act.HOLD if "," in subject else Act.SUBMIT)


def test_built_in_values() -> None:
    """folder, subaddress, local, sender and sender_domain are always there."""
    rules = folder({"then": {"submit": {"category": "{folder} {local} {sender_domain}"}}})
    decision = RuleSet(rules).evaluate(Message(to("rt-ops@example.org", sender="b@x.example")))
    assert decision.options is not None and decision.options.category == "INBOX rt-ops x.example"


def test_unknown_placeholder_is_a_config_error() -> None:
    """A placeholder no condition of the rule captures is refused when the file is read."""
    with pytest.raises(ValidationError, match=r"\{to\.queue\} is neither built in"):
        folder({"if": ["^Subject: x"], "then": {"submit": {"queue": "{to.queue}"}}})
    with pytest.raises(ValueError, match="captures nothing"):
        parse(r"!^Subject: (?P<x>.*)")


def test_any_and_all_groups() -> None:
    """any: holds when one item does, all: when every item does, nested."""
    condition = parse({"any": ["^Subject: never", {"all": ["^From: alice", "^To: support"]}]})
    assert condition.holds(Message(make()))
    assert not condition.holds(Message(make(sender="bob@example.org")))


def test_disabled_rule_is_passed_over() -> None:
    """enabled: false keeps a rule in the file but out of the decision, said in the trace."""
    decision = RuleSet(folder({"name": "off", "enabled": False, "then": "skip"})).evaluate(
        Message(make()))
    assert decision.act is Act.SUBMIT
    assert ("off", "disabled (enabled: false)") in [(s.name, s.why) for s in decision.trace]


@pytest.mark.parametrize(("sender", "holds"), [
    ("alice@example.org", True),
    ("ALICE@Example.ORG", True),
    ('"alice@example.org" <mallory@evil.example>', False),
    ("mallory@example.org.evil.example", False),
])
def test_from_address_matches_the_parsed_address(sender: str, holds: bool) -> None:
    """from_address matches the address itself, not a display name that looks like one."""
    assert parse({"from_address": "*@example.org"}).holds(Message(make(sender=sender))) is holds


@pytest.mark.parametrize("header", ["To", "Cc"])
def test_to_address_reads_every_recipient_header(header: str) -> None:
    """to_address also finds an address in a second To: or Cc: field, not the first only."""
    raw = make().replace(b"Subject:", f"{header}: someone@else.example\r\n"
                         f"{header}: rt-ops@example.org\r\nSubject:".encode())
    assert parse({"to_address": "rt-ops@*"}).holds(Message(raw))


def test_allow_senders_lifts_named_checks_and_says_so() -> None:
    """Precedence: bulk from an allowlisted domain is submitted, its rule naming the list."""
    raw = make(sender="bot@crm.partner.example", headers={"Precedence": "bulk"})
    assert RuleSet(folder()).evaluate(Message(raw)).act is Act.HOLD
    decision = RuleSet(folder(allow_senders=["*.partner.example"])).evaluate(Message(raw))
    assert decision.act is Act.SUBMIT
    assert "allow_senders *.partner.example" in decision.rule


def test_allow_senders_keeps_own_tracker_checks() -> None:
    """An allowlisted sender's Redmine notification is still held unless named."""
    raw = make(sender="redmine@partner.example", headers={"X-Mailer": "Redmine"})
    assert RuleSet(folder(allow_senders=["partner.example"])).evaluate(
        Message(raw)).act is Act.HOLD
    lifted = folder(allow_senders=[{"senders": ["partner.example"], "lift": ["redmine"]}])
    assert RuleSet(lifted).evaluate(Message(raw)).act is Act.SUBMIT


@pytest.mark.parametrize(("entry", "sender", "match"), [
    ("example.com", "a@example.com", True),
    ("example.com", "a@sub.example.com", False),
    ("*.example.com", "a@sub.example.com", True),
    ("*.example.com", "a@example.com", False),
    ("a@example.com", "b@example.com", False),
])
def test_allow_senders_entries(entry: str, sender: str, match: bool) -> None:
    """An entry is an address, a domain (exactly) or *.domain (its subdomains)."""
    assert (AllowSenders.model_validate(entry).matches(sender) is not None) is match


CONDITIONS = st.sampled_from([
    "^From:", "^Subject:.*a", "size > 1k", {"body": "x"}, {"from_address": "*@example.org"},
    {"any": ["^X-A:", "^Subject:"]}, {"all": ["^From:", {"not": "^To:"}]},
])


@given(st.binary(max_size=2000), CONDITIONS)
def test_groups_never_raise_and_not_is_exact(raw: bytes, condition: Any) -> None:
    """No bytes make a condition or group raise; {not: c} is always the opposite of c."""
    message = Message(raw)
    assert parse(condition).holds(message) != parse({"not": condition}).holds(message)


@given(st.text(max_size=300))
def test_captured_values_never_carry_line_breaks(text: str) -> None:
    """Whatever the mail holds, no value put into an option or header has CR or LF."""
    raw = b"From: a@example.org\r\nSubject: x\r\n\r\nRequester: " + text.encode(
        "utf-8", "surrogateescape")
    rules = folder({"if": [{"body": r"^Requester: (?P<r>[\s\S]*)"}],
                    "then": {"submit": {"category": "{body.r}"},
                             "set_header": {"X-Requester": "{body.r}"}}})
    decision = RuleSet(rules).evaluate(Message(raw))
    if decision.act is Act.SUBMIT:
        assert decision.options is not None and decision.edits is not None
        for value in (decision.options.category or "", *decision.edits.set_header.values()):
            assert "\r" not in value and "\n" not in value
