"""The rule engine: procmail-style conditions, first match wins, defaults submit."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_ingest import loops
from imap_ingest.conditions import parse
from imap_ingest.config import Folder, Rule
from imap_ingest.message import Message, edit_headers
from imap_ingest.rules import Act, RuleSet

from .support.mail import make


def folder(*rules: dict[str, Any] | str, **options: Any) -> Folder:
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
    """A move rule's decision names its folder."""
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
    """procmail-style conditions match header lines as procmail does."""
    raw = make(headers={"X-Long": "first\r\n second"})
    assert parse(pattern).holds(Message(raw)) is holds


def test_header_block_ends_at_first_blank_line_with_bare_lf() -> None:
    """With bare LF line ends the header block ends at the first blank line."""
    message = Message(b"Subject: a\nX-Y: z\n\nX-Body: no\n")
    assert message.header("X-Y") == "z" and message.header("X-Body") is None


def test_header_names_match_in_any_ascii_case_only() -> None:
    """A header is found in any ASCII case; the Kelvin sign's K does not fold into one."""
    message = Message("SUBJECT: a\r\nx-y:  1 \r\nX-Y: 2\r\n\u212aeywords: k\r\n\r\n"
                      .encode())
    assert message.header("Subject") == "a" and message.header_values("X-y") == ["1", "2"]
    assert message.header("Keywords") is None and message.header("No-Such") is None


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


# -- issue 4: the full rule language ------------------------------------------------------

@pytest.mark.parametrize(("header", "holds"), [
    ("To: Support <support@example.org>", True),
    ("Cc: a@x.org, support@example.org", True),
    ("Delivered-To: support@example.org", True),
    ("X-Original-To: support@example.org", True),
    ("Resent-To: support@example.org", True),
    ("To: notsupport@example.org", False),  # procmail's ^TO_ wants a word boundary
    ("Reply-To: support@example.org", False),
    ("Subject: support@example.org", False),
])
def test_procmail_to_shorthand(header: str, holds: bool) -> None:
    """^TO_ matches the destination headers, at a word boundary."""
    raw = f"From: a@b.org\r\n{header}\r\nSubject: x\r\n\r\nbody".encode()
    assert parse("^TO_support@example\\.org").holds(Message(raw)) is holds


@pytest.mark.parametrize(("condition", "holds"), [
    ("size > 1k", True), ("size < 1k", False), ("size > 1M", False), ("!size > 1M", True),
    ("size < 2048", True), ("size > 1.5k", False)])
def test_size(condition: str, holds: bool) -> None:
    """Size conditions compare the message size with k/M suffixes."""
    raw = make(body="x" * 1200)
    assert 1024 < len(raw) < 1536
    assert parse(condition).holds(Message(raw)) is holds


def test_body_is_searched_decoded_and_headers_are_not() -> None:
    """body: looks in transfer- and charset-decoded text parts, not in attachments."""
    import base64

    text = "請求書番号 4711 をご確認ください".encode("iso-2022-jp")
    raw = (b"From: a@b.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           b"Content-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: base64"
           b"\r\n\r\n" + base64.b64encode(text) + b"\r\n--XX\r\nContent-Type: text/plain\r\n"
           b"Content-Disposition: attachment; filename=a.txt\r\n\r\nsecret word\r\n--XX--\r\n")
    message = Message(raw)
    assert parse({"body": "請求書番号 \\d+"}).holds(message)
    assert not parse({"body": "secret word"}).holds(message)  # an attachment
    assert not parse({"body": "^Subject: invoice"}).holds(message)
    assert parse({"body": "!secret"}).holds(message)


def test_header_regex_also_matches_decoded_words() -> None:
    """A rule written in Japanese matches an RFC 2047 encoded Subject."""
    raw = b"Subject: =?ISO-2022-JP?B?GyRCPz1AQRsoQg==?=\r\nFrom: a@b.org\r\n\r\nx"
    message = Message(raw)
    assert message.subject == "申請"
    assert parse("^Subject: 申請").holds(message)
    assert parse("^Subject: =\\?ISO-2022-JP").holds(message)  # the raw text still matches


def test_copy_then_continue() -> None:
    """copy alone records a copy and the next rules decide; copies accumulate."""
    ruleset = RuleSet(folder({"then": {"copy": "Archive"}}, {"if": ["^From:"],
                                                            "then": {"copy": "B", "move": "C"}}))
    decision = ruleset.evaluate(Message(PLAIN))
    assert (decision.act, decision.folder, decision.copies) == (Act.MOVE, "C", ("Archive", "B"))


def test_discard_only_when_written() -> None:
    """A discard rule discards, naming the rule in the reason."""
    decision = RuleSet(folder({"if": ["^Subject: Printer"], "then": "discard"})).evaluate(
        Message(PLAIN))
    assert decision.act is Act.DISCARD and "rules[0]" in decision.reason


HELD = make(headers={"Auto-Submitted": "auto-replied", "Precedence": "bulk"})


def test_catch_all_submit_never_lifts_a_builtin_check() -> None:
    """A catch-all submit rule never lifts a built-in loop check."""
    for ruleset in (RuleSet(folder()), RuleSet(folder({"then": "submit"}))):
        decision = ruleset.evaluate(Message(HELD))
        assert decision.act is Act.HOLD and decision.rule == "loop:auto-submitted,precedence"
        assert "Auto-Submitted: auto-replied" in decision.reason


def test_allow_lifts_only_the_checks_it_names() -> None:
    """allow: [auto-submitted] is not enough when precedence fires too."""
    one = RuleSet(folder({"allow": ["auto-submitted"], "then": "submit"}))
    both = RuleSet(folder({"allow": ["auto-submitted", "precedence"], "then": "submit"}))
    assert one.evaluate(Message(HELD)).act is Act.HOLD
    assert both.evaluate(Message(HELD)).act is Act.SUBMIT


def test_held_mail_goes_to_loops_folder() -> None:
    """Held mail goes to the loops folder when one is set."""
    decision = RuleSet(folder(loops_folder="Loops")).evaluate(Message(HELD))
    assert (decision.act, decision.folder) == (Act.HOLD, "Loops")


def test_other_actions_still_apply_to_held_mail() -> None:
    """Checks keep mail out of the tracker; a rule may still move it where the user wants."""
    ruleset = RuleSet(folder({"if": ["^Precedence: bulk"], "then": {"move": "Bulk"}}))
    assert ruleset.evaluate(Message(HELD)).act is Act.MOVE


def test_switched_off_check_and_own_addresses() -> None:
    """Own addresses are caught, case-blind; a switched-off check holds nothing."""
    own = make(sender="Redmine <Redmine@Example.org>")
    assert RuleSet(folder(), own={"redmine@example.org"}).evaluate(
        Message(own)).rule == "loop:own-address"
    checks = [name for name in loops.NAMES if name not in ("auto-submitted", "precedence")]
    assert RuleSet(folder(), checks=checks).evaluate(Message(HELD)).act is Act.SUBMIT


def test_named_top_level_rules() -> None:
    """A folder can use a named top-level rule."""
    named = {"lists": Rule.model_validate({"if": ["^List-Id:"], "then": {"move": "Lists"}})}
    decision = RuleSet(folder("lists"), named=named).evaluate(Message(
        make(headers={"List-Id": "<a.b>"})))
    assert (decision.act, decision.rule, decision.folder) == (Act.MOVE, "lists", "Lists")


def test_trace_tells_each_step() -> None:
    """The trace lists each check and rule with whether it matched and why."""
    ruleset = RuleSet(folder(*SEED))
    decision = ruleset.evaluate(Message(NOTICE))
    checks = {step.name: step.matched for step in decision.trace if step.kind == "check"}
    assert checks["auto-submitted"] and checks["redmine"] and not checks["dsn"]
    rules = [(step.name, step.matched) for step in decision.trace if step.kind == "rule"]
    assert rules == [("rules[0]", False), ("lists", False), ("rules[2]", True)]
    assert "'!^X-Mailer: Redmine': found 'X-Mailer: Redmine'" in decision.trace[
        len(loops.NAMES)].why


def test_header_edits() -> None:
    """remove, set and From-from-Reply-To change only those header fields, byte for byte."""
    raw = (b"From: list@example.org\r\nReply-To: Taro <taro@example.org>\r\n"
           b"Auto-Submitted: auto-generated\r\nX-Long: a\r\n b\r\nSubject: x\r\n\r\nbody\r\n")
    edited = edit_headers(raw, {"X-Priority": "1"}, ["Auto-Submitted", "X-Long"], "Reply-To")
    assert edited == (b"From: Taro <taro@example.org>\r\nX-Original-From: list@example.org\r\n"
                      b"X-Priority: 1\r\nReply-To: Taro <taro@example.org>\r\nSubject: x\r\n"
                      b"\r\nbody\r\n")
    assert edit_headers(raw, {}, [], None) == raw


CONDITIONS = ["^From:", "^Subject:.*a", "x", "^$", "\\d", "^TO_a@b", "size > 100",
              "size < 10", {"body": "a"}, {"body": "^\\w+$"}]


@given(st.binary(max_size=3000), st.sampled_from(CONDITIONS))
def test_negation_is_always_the_opposite(raw: bytes, condition: str | dict[str, str]) -> None:
    """For every kind of condition, !c holds exactly when c does not, on any bytes."""
    message = Message(raw)
    negated: str | dict[str, str] = ({"body": "!" + condition["body"]}
                                     if isinstance(condition, dict) else "!" + condition)
    assert parse(condition).holds(message) != parse(negated).holds(message)


HEADER_LINES = st.lists(st.tuples(
    st.sampled_from([b"From", b"Subject", b"Auto-Submitted", b"Precedence", b"Content-Type",
                     b"Return-Path", b"X-Redmine-Host", b"To", b"Reply-To", b"X", b""]),
    st.binary(max_size=80)), max_size=12)


@given(HEADER_LINES, st.binary(max_size=500))
def test_engine_never_raises_on_any_header_bytes(lines: list[tuple[bytes, bytes]],
                                                 body: bytes) -> None:
    """Built-in checks, every condition kind and header edits survive arbitrary headers."""
    raw = b"\r\n".join(name + b": " + value for name, value in lines) + b"\r\n\r\n" + body
    message = Message(raw)
    ruleset = RuleSet(folder({"if": [c for c in CONDITIONS if isinstance(c, str)][:3],
                              "allow": list(loops.NAMES),
                              "then": {"submit": {}, "from_header": "Reply-To",
                                       "remove_header": "Subject"}}),
                      own={"a@b.org"})
    decision = ruleset.evaluate(message)
    assert decision.act in (Act.SUBMIT, Act.HOLD)
    assert decision.submission(raw).endswith(body)
    assert isinstance(message.subject, str | None) and isinstance(message.body_text(), str)


@pytest.mark.parametrize(("condition", "needs"), [
    ("^Subject: x", False), ("size > 1M", False), ({"from_address": "*@example.org"}, False),
    ({"body": "invoice"}, True), ({"any": ["^Subject: x", {"not": {"body": "y"}}]}, True),
], ids=["header", "size", "address", "body", "body-in-a-group"])
def test_rules_say_whether_they_need_the_body(condition: Any, needs: bool) -> None:
    """A body condition anywhere, nested in groups too, makes the rules need the whole message."""
    rules = RuleSet(folder({"if": [condition], "then": "skip"}))
    assert rules.needs_body is needs
    assert RuleSet(folder({"if": [condition], "then": "skip", "enabled": False})).needs_body \
        is False


def test_a_header_only_message_keeps_the_size_the_server_gave() -> None:
    """Rules on a header block see the message's real size, and an empty body."""
    head = Message.header_only(make(subject="big").split(b"\r\n\r\n")[0] + b"\r\n\r\n",
                               30_000_000)
    decision = RuleSet(folder({"if": ["size > 25M", "^Subject: big"], "then": "discard"})
                       ).evaluate(head)
    assert decision.act is Act.DISCARD and head.size == 30_000_000 and head.body_text() == ""
    assert Message(PLAIN).size == len(PLAIN)
