"""The pure parts of spam training: filters in the tracker's terms, judging, Redmine matching."""

from __future__ import annotations

import pytest

from imap_ingest.message import Message
from imap_ingest.tickets import Submitted, match_new_issues, redmine_reply_to
from imap_ingest.training import judge, matches, parse_filter

from .support.mail import make

RT_SPAM = {"queue": ["Spam", "3"], "status": ["rejected"]}
RT_HAM = {"queue": ["help-desk", "1"], "status": ["resolved"]}


@pytest.mark.parametrize(("text", "fields", "expected"), [
    ("queue=spam status=rejected", RT_SPAM, True),
    ("queue=spam status=rejected", RT_HAM, False),
    ("queue=help* status=resolved", RT_HAM, True),
    ("queue!=spam status=resolved", RT_HAM, True),
    ("queue=3", RT_SPAM, True),
    ("tracker=spam", RT_SPAM, False),
], ids=["all-hold", "one-fails", "glob", "negated", "by-id", "field-absent"])
def test_filter_matches_in_the_trackers_terms(text: str, fields: dict[str, list[str]],
                                              expected: bool) -> None:
    """Terms match names or ids without case, with shell patterns and != negation."""
    assert matches(parse_filter(text), fields) is expected


@pytest.mark.parametrize("text", ["", "queue", "=spam"], ids=["empty", "no-value", "no-field"])
def test_bad_filters_are_refused(text: str) -> None:
    """An empty filter or a word that is not FIELD=VALUE is an error, not match-all."""
    with pytest.raises(ValueError):
        parse_filter(text)


def test_a_ticket_matched_by_both_filters_is_undecided() -> None:
    """Spam, ham, or neither: a ticket both filters match is left alone."""
    spam, ham = parse_filter("queue=spam"), parse_filter("status=*")
    assert judge(RT_SPAM, spam, ham) is None
    assert judge(RT_HAM, spam, ham) == "ham"
    assert judge({"queue": ["x"]}, spam, parse_filter("status=resolved")) is None


def test_redmine_reply_names_its_issue_as_redmine_reads_it() -> None:
    """References redmine.issue-N, then a [#N] subject tag; a new message names none."""
    by_reference = Message(make(headers={"References": "<redmine.issue-42.20260101@host>"}))
    assert redmine_reply_to(by_reference) == "42"
    assert redmine_reply_to(Message(make(subject="Re: [Support - Bug #7] oops"))) == "7"
    assert redmine_reply_to(Message(make(subject="Printer #7 on fire"))) is None


def test_new_redmine_issues_are_paired_by_subject_in_order() -> None:
    """Same subjects pair oldest with oldest; an issue is paired once; others stay unknown."""
    sent = [Submitted.of(1, Message(make(subject="Hello")), "a", at=10.0),
            Submitted.of(2, Message(make(subject="Hello")), "b", at=11.0),
            Submitted.of(3, Message(make(subject="Other")), "c", at=12.0)]
    assert match_new_issues(sent, [("5", "Hello"), ("6", "Unrelated"), ("8", "Hello")]) == {
        1: "5", 2: "8"}
