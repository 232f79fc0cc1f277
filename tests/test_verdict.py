"""The pass's policy without a server: earlier record, rule or tracker answer → verdict."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from imap_ingest.backoff import Backoff
from imap_ingest.ledger import Earlier, Record
from imap_ingest.rules import Act, Decision
from imap_ingest.states import FAILED, SKIPPED, Disposition, Result, State
from imap_ingest.trackers import Kind, Outcome
from imap_ingest.verdict import (
    Policy,
    Resubmit,
    TakeOver,
    Verdict,
    answer,
    breaker_open,
    by_rule,
    copy_of,
    crashed,
    raced,
    resume,
    target_down,
    unexpunged,
    unreadable,
    waits,
)

NOW = 1_000_000.0
HOUR = 3600.0
DELETE = Disposition("delete")
MARK_FAILED = Disposition("mark", FAILED)
QUARANTINE = Disposition("move", "Quarantine")
POLICY = Policy(success_to=DELETE, failure_to=MARK_FAILED, max_attempts=3, max_age=HOUR,
                backoff=Backoff(first=30, cap=3600))
RESUBMIT = Policy(DELETE, MARK_FAILED, 3, HOUR, Backoff(30, 3600), resubmit_in_doubt=True)
RETRY_NOW = Policy(DELETE, MARK_FAILED, 3, HOUR, Backoff(30, 3600), retry_now=True)


def record(state: State, outcome: Result | None = None, to: Disposition | None = None,
           attempts: int = 0, age: float = 60.0, next_try: float | None = None) -> Record:
    return Record(1, state, outcome, to, attempts, NOW - age, next_try, "earlier reason", None)


SUBMITTING = record(State.SUBMITTING)
WAITING_DUE = record(State.WAITING, Result.DEFERRED, attempts=1, next_try=NOW - 1)
WAITING_NOT_DUE = record(State.WAITING, Result.DEFERRED, attempts=1, next_try=NOW + 60)
WAITING_LAST = record(State.WAITING, Result.DEFERRED, attempts=2, next_try=NOW - 1)
WAITING_OLD = record(State.WAITING, Result.DEFERRED, attempts=1, age=2 * HOUR,
                     next_try=NOW - 1)
REFUSED_KEY = record(State.WAITING, Result.REFUSED_KEY)
RELEASED = record(State.DISPOSED, Result.RETRIED)

# (result, state, to, level) of a verdict; a Resubmit means: run the rules, submit.
Expected = tuple[Result, State | None, Disposition | None, int] | Resubmit


def seen(verdict: Verdict | Resubmit) -> Expected:
    if isinstance(verdict, Resubmit):
        return Resubmit(warning="..." if verdict.warning else None)
    return verdict.result, verdict.state, verdict.to, verdict.level


@pytest.mark.parametrize(("policy", "earlier", "expected"), [
    (POLICY, None, Resubmit()),
    (POLICY, SUBMITTING,
     (Result.QUARANTINED, State.DECIDED, QUARANTINE, logging.WARNING)),
    (RESUBMIT, SUBMITTING, Resubmit(warning="...")),
    (POLICY, record(State.SUBMITTED, Result.SUBMITTED, DELETE),
     (Result.SUBMITTED, None, DELETE, logging.INFO)),
    (POLICY, record(State.DECIDED, Result.FAILED, MARK_FAILED),
     (Result.FAILED, None, MARK_FAILED, logging.INFO)),
    (POLICY, record(State.DECIDED, None, DELETE), (Result.RESUMED, None, DELETE, logging.INFO)),
    (POLICY, record(State.DISPOSED, Result.SKIPPED, Disposition("mark", SKIPPED)),
     (Result.SKIPPED, None, Disposition("mark", SKIPPED), logging.INFO)),
    (POLICY, RELEASED, Resubmit()),
    (POLICY, WAITING_DUE, Resubmit()),
    (POLICY, WAITING_NOT_DUE, (Result.DEFERRED, None, None, logging.INFO)),
    (RETRY_NOW, WAITING_NOT_DUE, Resubmit()),
    (POLICY, record(State.WAITING, Result.DEFERRED, attempts=3, next_try=NOW + 60),
     (Result.FAILED, State.DECIDED, MARK_FAILED, logging.ERROR)),
    (POLICY, WAITING_OLD, (Result.FAILED, State.DECIDED, MARK_FAILED, logging.ERROR)),
    (POLICY, REFUSED_KEY, Resubmit()),
], ids=["none", "submitting", "submitting-resubmit", "submitted", "decided",
        "decided-no-outcome", "disposed", "released-by-retry", "waiting-due", "waiting-not-due",
        "waiting-not-due-retry-now", "waiting-out-of-attempts", "waiting-too-old",
        "refused-key"])
def test_resume(policy: Policy, earlier: Record | None, expected: Expected) -> None:
    """An earlier pass's record finishes, defers, quarantines or gives up the message."""
    assert seen(resume(earlier, policy, NOW)) == expected


def test_resume_reasons() -> None:
    """The reasons say what happened and what to do about it."""
    quarantined = resume(SUBMITTING, POLICY, NOW)
    assert isinstance(quarantined, Verdict)
    assert "`imap-ingest retry Quarantine`" in quarantined.reason
    gave_up = resume(WAITING_OLD, POLICY, NOW)
    assert isinstance(gave_up, Verdict)
    assert gave_up.reason == "gave up after 1 attempt(s) over 2.0 h; last: earlier reason"
    finished = resume(record(State.SUBMITTED, Result.SUBMITTED, QUARANTINE), POLICY, NOW)
    assert isinstance(finished, Verdict)
    assert finished.text == "finishing an earlier pass: moved to Quarantine"


SUCCESS = Outcome(Kind.SUCCESS, "created", ticket="42", status=201)
PERMANENT = Outcome(Kind.PERMANENT, "refused", status=422)
PARTIAL = Outcome(Kind.PERMANENT, "comment refused", ticket="7", status=400, partial=True)
TEMPORARY = Outcome(Kind.TEMPORARY, "unavailable", status=503)
SLOW_DOWN = Outcome(Kind.TEMPORARY, "too many requests", status=429, retry_after=600)
CONFIG = Outcome(Kind.CONFIG, "key refused", status=403)
NO_ANSWER = Outcome(Kind.TEMPORARY, "no answer within 60 s", in_doubt=True)
OUR_BUG = Outcome(Kind.PERMANENT, "internal error while posting", in_doubt=True)

SUBMITTED = (Result.SUBMITTED, State.SUBMITTED, DELETE, logging.INFO, "42", True, False)
FAILED_NOW = (Result.FAILED, State.DECIDED, MARK_FAILED, logging.ERROR, None, None, False)
GAVE_UP = (Result.FAILED, State.DECIDED, MARK_FAILED, logging.ERROR, None, False, False)
DEFERRED = (Result.DEFERRED, State.WAITING, None, logging.WARNING, None, False, False)
STOPPED = (Result.REFUSED_KEY, State.WAITING, None, logging.INFO, None, None, True)
IN_DOUBT = (Result.QUARANTINED, State.DECIDED, QUARANTINE, logging.WARNING, None, False, False)

# Only records that resume() leaves to be submitted reach the tracker.
EARLIER = {"none": None, "submitting": SUBMITTING, "waiting-due": WAITING_DUE,
           "released": RELEASED, "last-try": WAITING_LAST, "too-old": WAITING_OLD}


@pytest.mark.parametrize(("outcome", "earlier", "expected"), [
    (SUCCESS, "none", SUBMITTED),
    (SUCCESS, "submitting", SUBMITTED),
    (SUCCESS, "waiting-due", SUBMITTED),
    (SUCCESS, "released", SUBMITTED),
    (SUCCESS, "last-try", SUBMITTED),
    (PERMANENT, "none", FAILED_NOW),
    (PERMANENT, "waiting-due", FAILED_NOW),
    (PARTIAL, "none", (Result.PARTIAL, State.DECIDED, MARK_FAILED, logging.ERROR, "7", None,
                       False)),
    (TEMPORARY, "none", DEFERRED),
    (TEMPORARY, "submitting", DEFERRED),
    (TEMPORARY, "waiting-due", DEFERRED),
    (TEMPORARY, "released", DEFERRED),
    (TEMPORARY, "last-try", GAVE_UP),
    (TEMPORARY, "too-old", GAVE_UP),
    (SLOW_DOWN, "none", DEFERRED),
    (NO_ANSWER, "none", IN_DOUBT),
    (NO_ANSWER, "waiting-due", IN_DOUBT),
    (NO_ANSWER, "last-try", IN_DOUBT),
    (OUR_BUG, "none", (Result.QUARANTINED, State.DECIDED, QUARANTINE, logging.WARNING, None,
                       None, False)),
    (CONFIG, "none", STOPPED),
    (CONFIG, "waiting-due", STOPPED),
    (CONFIG, "last-try", STOPPED),
], ids=lambda v: v if isinstance(v, str) else None)
def test_answer(outcome: Outcome, earlier: str, expected: tuple[object, ...]) -> None:
    """Each kind of answer, after each earlier record a submission can follow."""
    verdict = answer(outcome, EARLIER[earlier], POLICY, NOW)
    assert (verdict.result, verdict.state, verdict.to, verdict.level, verdict.ticket,
            verdict.target_ok, verdict.stop) == expected
    if expected is GAVE_UP:
        assert verdict.reason.startswith("gave up")
    elif outcome.in_doubt:
        assert verdict.reason.startswith(outcome.reason) and "retry Quarantine" in verdict.reason
    else:
        assert verdict.reason == outcome.reason
    assert verdict.attempt is not (outcome.kind is Kind.CONFIG)


@pytest.mark.parametrize(("outcome", "alone"), [
    (replace(PERMANENT, crowded=True), True),
    (PERMANENT, False),
    (replace(PARTIAL, crowded=True), False),
    (replace(SUCCESS, crowded=True), False),
    (replace(TEMPORARY, crowded=True), False),
    (replace(NO_ANSWER, crowded=True), False),
    (replace(OUR_BUG, crowded=True), False),
    (replace(CONFIG, crowded=True), False),
], ids=["refused-crowded", "refused-alone", "partial-crowded", "success-crowded",
        "temporary-crowded", "no-answer-crowded", "our-bug-crowded", "config-crowded"])
def test_a_refusal_among_others_is_tried_again_alone(outcome: Outcome, alone: bool) -> None:
    """Only a whole refusal given while others were in flight is sent again alone, unrecorded."""
    verdict = answer(outcome, None, POLICY, NOW)
    assert verdict.alone is alone
    if alone:
        assert (verdict.result, verdict.state, verdict.to) == (Result.DEFERRED, None, None)
        assert verdict.reason.startswith(outcome.reason) and "sending it again" in verdict.reason


def test_no_answer_is_retried_under_resubmit() -> None:
    """With in_doubt: resubmit, a request that got no answer waits for a retry instead."""
    verdict = answer(NO_ANSWER, None, RESUBMIT, NOW)
    assert (verdict.result, verdict.state, verdict.to) == (Result.DEFERRED, State.WAITING, None)


@pytest.mark.parametrize(("outcome", "earlier", "low", "high"), [
    (TEMPORARY, None, 15, 30),
    (TEMPORARY, WAITING_DUE, 30, 60),
    (SLOW_DOWN, None, 600, 600),
], ids=["first-failure", "second-failure", "retry-after"])
def test_deferred_next_try(outcome: Outcome, earlier: Record | None, low: float,
                           high: float) -> None:
    """A deferred message waits the backoff for its attempts, or longer if asked to."""
    next_try = answer(outcome, earlier, POLICY, NOW).next_try
    assert next_try is not None and low <= next_try - NOW <= high


def test_give_up_reason_counts_this_attempt() -> None:
    """The reason of a last failed try counts it and quotes the tracker."""
    assert answer(TEMPORARY, WAITING_LAST, POLICY, NOW).reason == (
        "gave up after 3 attempt(s) over 0.0 h; last: unavailable")


@pytest.mark.parametrize(("decision", "expected"), [
    (Decision(Act.SUBMIT, "default"), None),
    (Decision(Act.SKIP, "newsletters", reason="list mail"),
     (Result.SKIPPED, State.DECIDED, Disposition("mark", SKIPPED), logging.INFO)),
    (Decision(Act.MOVE, "spam", folder="Junk"),
     (Result.MOVED, State.DECIDED, Disposition("move", "Junk"), logging.INFO)),
    (Decision(Act.DISCARD, "noise"),
     (Result.DISCARDED, State.DECIDED, DELETE, logging.WARNING)),
    (Decision(Act.HOLD, "loop", folder="Loops"),
     (Result.HELD, State.DECIDED, Disposition("move", "Loops"), logging.WARNING)),
    (Decision(Act.HOLD, "loop"),
     (Result.HELD, State.DECIDED, Disposition("mark", SKIPPED), logging.WARNING)),
], ids=["submit", "skip", "move", "discard", "hold-to-folder", "hold-in-place"])
def test_by_rule(decision: Decision, expected: Expected | None) -> None:
    """A rule's act becomes an outcome and a disposition; SUBMIT goes on to the tracker."""
    verdict = by_rule(decision, POLICY)
    assert (verdict and seen(verdict)) == expected
    assert verdict is None or verdict.reason == decision.reason


@pytest.mark.parametrize(("over_limit", "reason"), [
    (True, "message is 500 bytes, over max_message_size (100 bytes)"),
    (False, "empty message (0 bytes): nothing to submit"),
], ids=["too-large", "empty"])
def test_unreadable(over_limit: bool, reason: str) -> None:
    """A message with nothing to submit fails, marked in place by default."""
    verdict = unreadable(500, 100, over_limit, POLICY)
    assert seen(verdict) == (Result.FAILED, State.DECIDED, MARK_FAILED, logging.ERROR)
    assert verdict.text == f"{reason}; kept in place, marked so it is not tried again"


@pytest.mark.parametrize(("failures", "next_try", "policy", "open_"), [
    (0, 0.0, POLICY, False),
    (2, NOW + 60, POLICY, True),
    (2, NOW - 1, POLICY, False),
    (2, NOW + 60, RETRY_NOW, False),
], ids=["never-failed", "failing", "due-again", "retry-now"])
def test_breaker(failures: int, next_try: float, policy: Policy, open_: bool) -> None:
    """A failing target is left alone until it is due again, unless told to retry now."""
    assert breaker_open(failures, next_try, policy, NOW) is open_


def test_target_down_records_nothing() -> None:
    """A message held back by a failing target stays, unrecorded, for the next pass."""
    assert seen(target_down("redmine")) == (Result.DEFERRED, None, None, logging.INFO)


@pytest.mark.parametrize(("earlier", "behind", "policy", "expected"), [
    (None, None, POLICY, None),
    (None, "redmine", POLICY, (Result.DEFERRED, None, None, logging.DEBUG)),
    (WAITING_NOT_DUE, None, POLICY, (Result.DEFERRED, None, None, logging.DEBUG)),
    (WAITING_NOT_DUE, None, RETRY_NOW, None),
    (WAITING_DUE, None, POLICY, None),
    (WAITING_OLD, None, POLICY, None),
    (SUBMITTING, None, POLICY, None),
    (record(State.SUBMITTED, Result.SUBMITTED, DELETE), None, POLICY, None),
    (WAITING_DUE, "redmine", POLICY, None),
], ids=["new", "behind-a-failing-target", "retry-not-due", "retry-now", "retry-due",
        "too-old", "in-doubt", "to-dispose", "recorded-behind"])
def test_what_waits_without_being_fetched(earlier: Record | None, behind: str | None,
                                          policy: Policy, expected: Expected | None) -> None:
    """Only a retry not due, or unrecorded mail behind a failing target, waits unfetched."""
    verdict = waits(earlier, behind, policy, NOW)
    assert (None if verdict is None else seen(verdict)) == expected


DONE = Policy(Disposition("move", "Done"), MARK_FAILED, 3, HOUR, Backoff(30, 3600))


@pytest.mark.parametrize(("state", "outcome", "expected"), [
    (State.SUBMITTED, Result.SUBMITTED,
     (Result.DUPLICATE, State.DECIDED, Disposition("move", "Done"), logging.INFO)),
    (State.DISPOSED, Result.SUBMITTED,
     (Result.DUPLICATE, State.DECIDED, Disposition("move", "Done"), logging.INFO)),
    (State.WAITING, Result.DEFERRED, TakeOver()),
    (State.WAITING, Result.REFUSED_KEY, TakeOver()),
    (State.SUBMITTING, None, (Result.QUARANTINED, State.DECIDED, QUARANTINE, logging.WARNING)),
    (State.DISPOSED, Result.QUARANTINED,
     (Result.QUARANTINED, State.DECIDED, QUARANTINE, logging.WARNING)),
    (State.DISPOSED, Result.PARTIAL,
     (Result.QUARANTINED, State.DECIDED, QUARANTINE, logging.WARNING)),
], ids=["submitted", "submitted-disposed", "waiting", "waiting-refused-key", "submitting",
        "quarantined", "partial"])
def test_copy_of(state: State, outcome: Result | None, expected: Expected | TakeOver) -> None:
    """An accepted copy makes a duplicate, a waiting one hands over, one in doubt quarantines."""
    verdict = copy_of(Earlier(1, "acct/INBOX uid 1", state, outcome, None), DONE)
    assert (verdict if isinstance(verdict, TakeOver) else seen(verdict)) == expected


def test_copy_reasons() -> None:
    """A duplicate names the copy and its ticket; a quarantined copy says what to do."""
    duplicate = copy_of(Earlier(1, "acct/INBOX uid 1", State.SUBMITTED, Result.SUBMITTED,
                                "42"), DONE)
    assert isinstance(duplicate, Verdict)
    assert duplicate.text == "already submitted as acct/INBOX uid 1 (ticket 42); moved to Done"
    doubt = copy_of(Earlier(1, "acct/INBOX uid 1", State.SUBMITTING, None, None), DONE)
    assert isinstance(doubt, Verdict)
    assert doubt.reason.startswith("a copy of acct/INBOX uid 1 (submitting), so the tracker "
                                   "may or may not have it")
    assert "`imap-ingest retry Quarantine`" in doubt.reason


def test_crashed() -> None:
    """Our bug while deciding a message fails that message alone, with the error named."""
    verdict = crashed("RecursionError", POLICY)
    assert seen(verdict) == (Result.FAILED, State.DECIDED, MARK_FAILED, logging.ERROR)
    assert "internal error (RecursionError)" in verdict.reason


def test_raced_records_nothing() -> None:
    """A copy whose earlier one changed meanwhile stays, unrecorded, for the next pass."""
    assert seen(raced("acct/INBOX uid 1")) == (Result.DEFERRED, None, None, logging.INFO)


@pytest.mark.parametrize("retry_after", [1e300, float("inf"), float("nan"), -5.0, 7200.0],
                         ids=["huge", "inf", "nan", "negative", "over-cap"])
def test_retry_after_is_clamped_to_max_delay(retry_after: float) -> None:
    """Whatever Retry-After a tracker sends, the message is due again within max_delay."""
    verdict = answer(Outcome(Kind.TEMPORARY, "429", status=429, retry_after=retry_after),
                     None, POLICY, NOW)
    assert verdict.next_try is not None and NOW < verdict.next_try <= NOW + 3600


@pytest.mark.parametrize("next_try", [1e300, float("inf")], ids=["huge", "inf"])
def test_out_of_range_next_try_still_reads(next_try: float) -> None:
    """A ledger's next try beyond the clock's range defers with "-", without raising."""
    verdict = resume(record(State.WAITING, Result.DEFERRED, attempts=1, next_try=next_try),
                     POLICY, NOW)
    assert isinstance(verdict, Verdict) and verdict.reason == "next try at -"


@pytest.mark.parametrize(("earlier", "expected"), [
    (None, None),  # not ours: a person's \\Deleted
    (record(State.SUBMITTED, Result.SUBMITTED, DELETE), Result.SUBMITTED),
    (record(State.DECIDED, Result.DUPLICATE, DELETE), Result.DUPLICATE),
    (record(State.DECIDED, Result.DISCARDED, DELETE), Result.DISCARDED),
    (record(State.SUBMITTED, None, DELETE), Result.RESUMED),
    (record(State.DISPOSED, Result.SUBMITTED, DELETE), None),  # done (a server sans UIDPLUS)
    (record(State.SUBMITTED, Result.SUBMITTED, Disposition("move", "Done")), None),
    (record(State.DECIDED, Result.FAILED, MARK_FAILED), None),
    (record(State.DECIDED, Result.QUARANTINED, QUARANTINE), None),
    (SUBMITTING, None),  # in doubt: a person deleted it, not us
    (WAITING_DUE, None),
    (RELEASED, None),
])
def test_unexpunged(earlier: Record | None, expected: Result | None) -> None:
    """Flagged \\Deleted mail is expunged only where the ledger has our pending delete."""
    verdict = unexpunged(earlier)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None
        assert (verdict.result, verdict.state, verdict.to) == (expected, None, DELETE)
