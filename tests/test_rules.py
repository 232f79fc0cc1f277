"""The rule engine: procmail-style conditions, first match wins, defaults submit."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_ingest.conditions import parse
from imap_ingest.config import Folder
from imap_ingest.message import Message
from imap_ingest.rules import Act, RuleSet

from .mail import make


def folder(*rules: dict[str, Any], **options: Any) -> Folder:
    return Folder.model_validate({"name": "INBOX", "rules": list(rules), **options})


FORM = make(sender="request@example.org", headers={"Auto-Submitted": "auto-generated"})
NOTICE = make(sender="request@example.org",
              headers={"Auto-Submitted": "auto-generated", "X-Mailer": "Redmine"})
LIST = make(sender="bob@lists.example.org")
PLAIN = make()


def test_no_rules_submits_with_folder_options() -> None:
    """A folder without rules submits every message with its own options."""
    decision = RuleSet(folder(project="support", category="request")).evaluate(Message(PLAIN))
    assert decision.act is Act.SUBMIT and decision.rule == "default"
    assert decision.options is not None
    assert (decision.options.project, decision.options.category) == ("support", "request")


SEED: list[dict[str, Any]] = [
    {"if": ["^Auto-Submitted: auto-generated", "!^X-Mailer: Redmine"], "allow": ["auto-submitted"],
     "then": {"submit": {"project": "ops", "category": "bug"}}},
    {"name": "lists", "if": ["^From:.*@lists\\.example\\.org"], "then": {"move": "Lists"}},
    {"then": "skip"},
]


@pytest.mark.parametrize(("raw", "act", "rule"), [
    (FORM, Act.SUBMIT, "rules[0]"),
    (NOTICE, Act.SKIP, "rules[2]"),  # held too: skip is what the rule says anyway
    (LIST, Act.MOVE, "lists"),
    (PLAIN, Act.SKIP, "rules[2]"),
], ids=["form-mail", "redmine-notice", "list", "other"])
def test_issue_example_rules(raw: bytes, act: Act, rule: str) -> None:
    """The issue's example: form mail submitted, Redmine's own mail skipped, lists moved."""
    decision = RuleSet(folder(*SEED, project="support")).evaluate(Message(raw))
    assert (decision.act, decision.rule) == (act, rule)


def test_submit_overrides_only_what_it_names() -> None:
    """A rule's submit options replace the folder's, field by field."""
    decision = RuleSet(folder(*SEED, project="support", tracker="Support")).evaluate(Message(FORM))
    assert decision.options is not None
    assert (decision.options.project, decision.options.category, decision.options.tracker) == (
        "ops", "bug", "Support")


def test_move_names_folder() -> None:
    decision = RuleSet(folder(*SEED)).evaluate(Message(LIST))
    assert decision.folder == "Lists"


def test_no_rule_matches_submits() -> None:
    """Rules that all miss leave the folder's default: submit."""
    ruleset = RuleSet(folder({"if": ["^Subject: never"], "then": "skip"}))
    assert ruleset.evaluate(Message(PLAIN)).act is Act.SUBMIT


@pytest.mark.parametrize(("pattern", "holds"), [
    ("^subject: printer", True),  # case-insensitive
    ("^Subject:.Printer", True),  # procmail's . for the space
    ("^Printer", False),  # anchored at header line starts, not inside a value
    ("^To: .*support@", True),
    ("!^X-Mailer:", True),
    ("^X-Long: first second", True),  # folded header lines are unfolded
    ("Please help", False),  # the body is not searched
])
def test_conditions(pattern: str, holds: bool) -> None:
    raw = make(headers={"X-Long": "first\r\n second"})
    assert parse(pattern).holds(Message(raw)) is holds


def test_header_block_ends_at_first_blank_line_with_bare_lf() -> None:
    message = Message(b"Subject: a\nX-Y: z\n\nX-Body: no\n")
    assert message.header("X-Y") == "z" and message.header("X-Body") is None


def test_eight_bit_headers_still_match() -> None:
    """Latin-1 header bytes do not stop ASCII patterns from matching."""
    message = Message(b"Subject: caf\xe9\r\nFrom: x@example.org\r\n\r\nbody")
    assert parse("^From: x@").holds(message)
    assert message.header("Subject") == "caf\xe9"


@given(st.binary(max_size=2000), st.sampled_from(["^From:", "^Subject:.*a", "x", "^$", "\\d"]))
def test_any_bytes_never_raise_and_negation_is_opposite(raw: bytes, pattern: str) -> None:
    """Arbitrary bytes never make a condition raise; !c is always the opposite of c."""
    message = Message(raw)
    assert message.raw is raw
    assert parse(pattern).holds(message) != parse("!" + pattern).holds(
        message)


@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_first_matching_rule_wins(matches: list[bool]) -> None:
    """Of several rules, the first whose condition holds decides."""
    rules = [{"name": f"r{i}", "if": ["^From:" if hit else "^X-Never:"], "then": "skip"}
             for i, hit in enumerate(matches)]
    decision = RuleSet(folder(*rules)).evaluate(Message(PLAIN))
    expected = f"r{matches.index(True)}" if True in matches else "default"
    assert decision.rule == expected
