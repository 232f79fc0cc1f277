"""What becomes of a message: the pass's policy as pure functions, values in, a Verdict out.

Each function takes what is known (the ledger's earlier record, the rule's decision, the
tracker's answer, the folder's Policy, the time) and says what to record, where the message
goes and how loudly to say so; ingest.py carries that out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from .backoff import Backoff
from .config import Config, Folder
from .ledger import Earlier, Record
from .rules import Act, Decision
from .stamps import local
from .states import FAILED, SKIPPED, Disposition, Result, State
from .trackers import Kind, Outcome

_DELETE = Disposition("delete")


@dataclass(frozen=True, slots=True)
class Policy:
    """A folder's settings, as far as deciding what becomes of its messages goes."""

    success_to: Disposition
    failure_to: Disposition
    max_attempts: int
    max_age: float  # seconds since the message was first seen
    backoff: Backoff
    resubmit_in_doubt: bool = False  # in_doubt: resubmit
    quarantine: str = "Quarantine"
    retry_now: bool = False  # ignore the retry timers of messages and targets

    @classmethod
    def of(cls, config: Config, folder: Folder, retry_now: bool = False) -> Policy:
        retry = config.retry
        return cls(
            Disposition("move", folder.move_on_success) if folder.move_on_success
            else Disposition("delete"),
            Disposition("move", folder.move_on_failure) if folder.move_on_failure
            else Disposition("mark", FAILED),
            retry.max_attempts, retry.max_age, Backoff(retry.first_delay, retry.max_delay),
            config.in_doubt == "resubmit", config.quarantine_folder, retry_now)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of one message: what to record, where it goes, what to log."""

    result: Result  # counted, logged, and stored as the outcome
    reason: str  # stored; never a secret
    state: State | None = None  # the state to record; None: nothing to record
    to: Disposition | None = None  # None: the message stays where it is
    level: int = logging.INFO
    next_try: float | None = None  # WAITING: when the message is due again
    attempt: bool = True  # counted against max_attempts
    ticket: str | None = None
    target_ok: bool | None = None  # True: the target works again; False: it failed for now
    stop: bool = False  # the target refused our key: stop the folder, log nothing
    instead: Disposition | None = None  # where it goes if ``to`` cannot be carried out
    alone: bool = False  # send it again before it counts (alone, or first among others)

    @property
    def text(self) -> str:
        """The log line: a disposition decided now is said after the reason."""
        if self.state is None or self.to is None:
            return self.reason
        return f"{self.reason}; {self.to.describe()}" if self.reason else self.to.describe()


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Nothing earlier decides the message: run the rules and submit it."""

    warning: str | None = None  # why submitting it again is worth a warning


def resume(record: Record | None, policy: Policy, now: float) -> Verdict | Resubmit:
    """What the ledger's record of an earlier pass makes of the message."""
    if record is None:
        return Resubmit()
    if (record.state in (State.SUBMITTED, State.DECIDED, State.DISPOSED)
            and record.dispose_to):
        # The configuration may have changed since (a folder renamed after a refused move):
        # where it sends the message now is the way out when the recorded way fails.
        instead = _configured(record.outcome, policy)
        return Verdict(record.outcome or Result.RESUMED,
                       f"finishing an earlier pass: {record.dispose_to.describe()}",
                       to=record.dispose_to,
                       instead=instead if instead != record.dispose_to else None)
    if record.state is State.SUBMITTING:
        if policy.resubmit_in_doubt:
            return Resubmit("an earlier run stopped while posting it; submitting it again "
                            "(in_doubt: resubmit)")
        return in_doubt("an earlier run stopped while posting it", policy)
    if record.state is State.WAITING:
        if _given_up(record.attempts, record.first_seen, policy, now):
            return _failed(_give_up_reason(record.attempts, record.first_seen, record.reason,
                                           now), policy)
        if record.next_try and record.next_try > now and not policy.retry_now:
            return Verdict(Result.DEFERRED, f"next try at {local(record.next_try, '%H:%M:%S')}")
    return Resubmit()


def unexpunged(record: Record | None) -> Verdict | None:
    """What becomes of a message found flagged \\Deleted: when the ledger says a pass of
    ours decided to delete it (its target took it, or a rule discarded it) and was stopped
    before recording it gone, the deletion is finished; None otherwise, for then the flag
    is a person's, or another client's, and their choice (never expunged by us)."""
    if (record is None or record.state not in (State.SUBMITTED, State.DECIDED)
            or record.dispose_to != _DELETE):
        return None
    return Verdict(record.outcome or Result.RESUMED,
                   "finishing an earlier pass: flagged \\Deleted, not yet expunged",
                   to=_DELETE)


def waits(record: Record | None, behind: str | None, policy: Policy,
          now: float) -> Verdict | None:
    """What a message can only wait for, known without its bytes: a retry the ledger says is
    not due yet, or (for one the ledger has no record of) ``behind``, the target the last
    pass deferred it for, still failing; None when it is to be fetched. Said at DEBUG: the
    pass counts them, one line for all."""
    if record is None:
        verdict = None if behind is None else target_down(behind)
    else:
        # Only the retry not due: whatever else the record makes of it needs its bytes.
        resumed = resume(record, policy, now)
        verdict = (resumed if isinstance(resumed, Verdict) and resumed.result is Result.DEFERRED
                   else None)
    return None if verdict is None else replace(verdict, level=logging.DEBUG)


def unreadable(size: int, limit: int, over_limit: bool, policy: Policy) -> Verdict:
    """A message with nothing to submit: over ``limit`` bytes (not fetched), or empty."""
    reason = (f"message is {size} bytes, over max_message_size ({limit} bytes)" if over_limit
              else "empty message (0 bytes): nothing to submit")
    return _failed(reason, policy)


def smime_failed(reason: str, policy: Policy) -> Verdict:
    """S/MIME mail that cannot be opened (Missing key, Bad data): never submitted as plain."""
    return _failed(f"S/MIME: {reason}", policy)


def by_rule(decision: Decision, policy: Policy) -> Verdict | None:
    """What a rule's decision makes of the message; None when it is to be submitted."""
    if decision.act is Act.SUBMIT:
        return None
    result, to, level = {
        Act.SKIP: (Result.SKIPPED, Disposition("mark", SKIPPED), logging.INFO),
        Act.MOVE: (Result.MOVED, Disposition("move", decision.folder or ""), logging.INFO),
        Act.DISCARD: (Result.DISCARDED, Disposition("delete"), logging.WARNING),
        Act.HOLD: (Result.HELD, Disposition("move", decision.folder) if decision.folder
                   else Disposition("mark", SKIPPED), logging.WARNING),
    }[decision.act]
    return Verdict(result, decision.reason, State.DECIDED, to, level)


def too_old(why: str) -> Verdict:
    """Left alone by start: or max_age: marked, so no later pass looks at it again."""
    return Verdict(Result.TOO_OLD, f"left alone: {why}", State.DECIDED,
                   Disposition("mark", SKIPPED))


def flooded(reason: str, folder: str | None) -> Verdict:
    """Held by the flood breaker: to ``folder`` (else marked and kept), loudly."""
    return Verdict(Result.HELD, reason, State.DECIDED,
                   Disposition("move", folder) if folder else Disposition("mark", SKIPPED),
                   logging.WARNING)


def breaker_open(failures: int, next_try: float, policy: Policy, now: float) -> bool:
    """Whether a target that failed ``failures`` times in a row is to be left alone."""
    return not policy.retry_now and failures > 0 and next_try > now


def target_down(target: str) -> Verdict:
    """The message waits, untouched and unrecorded, for a failing target."""
    return Verdict(Result.DEFERRED,
                   f"target {target} is failing; not contacted until it is due again")


@dataclass(frozen=True, slots=True)
class TakeOver:
    """An earlier copy waits for a retry: this copy carries it on (its attempts, first sight
    and next try), and the earlier one no longer counts."""


def copy_of(earlier: Earlier, policy: Policy) -> Verdict | TakeOver:
    """What an earlier copy of the message, for the same target, makes of this one: only a
    copy the tracker accepted makes it a duplicate; nothing else may delete it."""
    if earlier.outcome is Result.SUBMITTED or earlier.state is State.SUBMITTED:
        ticket = f" (ticket {earlier.ticket})" if earlier.ticket else ""
        return Verdict(Result.DUPLICATE, f"already submitted as {earlier.where}{ticket}",
                       State.DECIDED, policy.success_to)
    if earlier.state is State.WAITING:
        return TakeOver()
    # Submitting (a run stopped while posting it), quarantined or partial: in doubt.
    return in_doubt(f"a copy of {earlier.where} ({earlier.outcome or earlier.state})", policy)


def raced(earlier: str) -> Verdict:
    """Another pass or process changed what ``earlier`` stands for while this one looked:
    the message waits, untouched and unrecorded, for the next pass to look again."""
    return Verdict(Result.DEFERRED, f"{earlier} changed meanwhile; looked at again next pass")


def answer(outcome: Outcome, record: Record | None, policy: Policy, now: float) -> Verdict:
    """What the tracker's answer makes of the message; ``record`` is what the ledger knew
    before this attempt."""
    if outcome.kind is Kind.SUCCESS:
        return Verdict(Result.SUBMITTED, outcome.reason, State.SUBMITTED, policy.success_to,
                       ticket=outcome.ticket, target_ok=True)
    if outcome.crowded and outcome.kind is Kind.PERMANENT and not (
            outcome.partial or outcome.in_doubt):
        # Refused while others were in flight: maybe their conflict, not the message (on
        # SQLite, Redmine answers 422 to "database is locked"), so only a refusal alone
        # counts. A refusal means the tracker kept nothing of it, except Redmine on SQLite
        # for mail with an attachment (docs/concurrency.md): the pass asks it first where it
        # can look, and posts such mail alone where it cannot. A partial refusal is excluded.
        return Verdict(Result.DEFERRED, f"{outcome.reason}, with others in flight: "
                       "sending it again before it counts", alone=True)
    if outcome.in_doubt and not policy.resubmit_in_doubt:
        return replace(in_doubt(outcome.reason, policy),
                       target_ok=False if outcome.kind is Kind.TEMPORARY else None)
    if outcome.kind is Kind.PERMANENT:
        return Verdict(Result.PARTIAL if outcome.partial else Result.FAILED, outcome.reason,
                       State.DECIDED, policy.failure_to, logging.ERROR, ticket=outcome.ticket)
    if outcome.kind is Kind.TEMPORARY:
        attempts = (record.attempts if record else 0) + 1
        first_seen = record.first_seen if record else now
        if _given_up(attempts, first_seen, policy, now):
            return Verdict(Result.FAILED, _give_up_reason(attempts, first_seen, outcome.reason,
                                                          now),
                           State.DECIDED, policy.failure_to, logging.ERROR,
                           ticket=outcome.ticket, target_ok=False)
        delay = max(policy.backoff.delay(attempts),
                    policy.backoff.bounded(outcome.retry_after or 0.0))
        return Verdict(Result.DEFERRED, outcome.reason, State.WAITING, level=logging.WARNING,
                       next_try=now + delay, target_ok=False)
    # Not the message's fault: it waits, with no attempt counted against it.
    return Verdict(Result.REFUSED_KEY, outcome.reason, State.WAITING, attempt=False, stop=True)


def _configured(outcome: Result | None, policy: Policy) -> Disposition | None:
    """Where the folder's settings send a message with this outcome; None where a rule
    decided it."""
    if outcome in (Result.SUBMITTED, Result.DUPLICATE):
        return policy.success_to
    if outcome in (Result.FAILED, Result.PARTIAL):
        return policy.failure_to
    if outcome is Result.QUARANTINED:
        return Disposition("move", policy.quarantine)
    return None


def in_doubt(why: str, policy: Policy) -> Verdict:
    """The tracker may or may not have the message: set aside for a person, never deleted
    and never sent again on its own."""
    return Verdict(Result.QUARANTINED, f"{why}, so the tracker may or may not have it; check, "
                   f"then `imap-ingest retry {policy.quarantine}`", State.DECIDED,
                   Disposition("move", policy.quarantine), logging.WARNING)


def crashed(error: str, policy: Policy) -> Verdict:
    """Our own bug, met while deciding one message: that message is set aside, the pass goes
    on. (One met while sending it is an answer in doubt: see ``answer``.)"""
    return _failed(f"internal error ({error})", policy)


def _failed(reason: str, policy: Policy) -> Verdict:
    return Verdict(Result.FAILED, reason, State.DECIDED, policy.failure_to, logging.ERROR)


def _given_up(attempts: int, first_seen: float, policy: Policy, now: float) -> bool:
    return attempts >= policy.max_attempts or now - first_seen > policy.max_age


def _give_up_reason(attempts: int, first_seen: float, last: str | None, now: float) -> str:
    return (f"gave up after {attempts} attempt(s) over {(now - first_seen) / 3600:.1f} h; "
            f"last: {last}")
