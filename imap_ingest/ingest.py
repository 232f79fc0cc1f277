"""One pass over one folder: fetch → rules → submit → dispose → record.

Every decision is recorded in the ledger before it is carried out, so a pass that dies
anywhere is finished by the next one: a message recorded as submitted is disposed of
without being sent again.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .backoff import Backoff
from .config import Config, Folder
from .errors import EX_OK, EX_TEMPFAIL, TrackerRefused
from .inflight import InFlight
from .ledger import Key, Ledger, Record
from .logs import event
from .mailbox import FAILED, SKIPPED, Fetched, Mailbox
from .message import Message
from .metrics import Metrics
from .rules import Act, Decision, RuleSet
from .trackers import Envelope, Kind, Outcome, Tracker

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    """What one pass did, counted by outcome."""

    account: str
    folder: str
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        return EX_TEMPFAIL if self.counts["deferred"] or self.counts["left"] else EX_OK


class _Disposal:
    """Dispositions collected during a pass and sent as one command per destination.

    A disposition is ``delete``, ``move:FOLDER`` or ``mark:KEYWORD``, as the ledger stores
    it. A rule's copies go with the message's disposition: a message left for a retry is not
    copied again on every pass.
    """

    def __init__(self, mailbox: Mailbox, ledger: Ledger) -> None:
        self._mailbox = mailbox
        self._ledger = ledger
        self._pending: dict[str, list[Key]] = {}
        self._copies: dict[Key, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._pending.values()))

    def copy_with(self, key: Key, folders: tuple[str, ...]) -> None:
        """Copy the message into ``folders`` if, and when, it is disposed of."""
        self._copies[key] = folders

    def add(self, key: Key, to: str) -> None:
        for folder in self._copies.pop(key, ()):
            self._pending.setdefault(f"copy:{folder}", []).append(key)
        self._pending.setdefault(to, []).append(key)

    def flush(self) -> None:
        # Copies first: a message may be copied and then moved or deleted.
        for to in sorted(self._pending, key=lambda to: not to.startswith("copy:")):
            uids = [key.uid for key in self._pending[to]]
            verb, _, where = to.partition(":")
            if verb == "copy":
                self._mailbox.copy(uids, where)
            elif verb == "move":
                self._mailbox.move(uids, where)
            elif verb == "mark":
                self._mailbox.mark(uids, where)
            else:
                self._mailbox.delete(uids)
        self._ledger.disposed([key for to, keys in self._pending.items() for key in keys
                               if not to.startswith("copy:")])
        self._pending, self._copies = {}, {}


@dataclass(frozen=True, slots=True)
class _Sent:
    """A message in flight to its tracker, with what recording the answer needs."""

    key: Key
    message: Message
    rule: str
    record: Record | None  # what the ledger knew before this attempt
    arrived: datetime | None
    target: str
    started: float  # time.monotonic()


@dataclass(frozen=True)
class Context:
    """What every pass of a run shares."""

    config: Config
    trackers: Mapping[str, Tracker]
    ledger: Ledger
    stop: threading.Event
    metrics: Metrics
    retry_now: bool = False  # ignore the retry timers of messages and targets
    progress: bool = False  # show a progress line on a terminal for a large backlog


def ingest(mailbox: Mailbox, folder: Folder, context: Context) -> PassReport:
    """Deal with every new message in ``folder``; stop between messages when asked to."""
    mailbox.select(folder.name)
    return _Pass(mailbox, folder, context).run()


def _where(to: str) -> str:
    verb, _, where = to.partition(":")
    if verb == "move":
        return f"moved to {where}"
    return "deleted" if verb == "delete" else "kept in place, marked so it is not tried again"


class _Pass:
    def __init__(self, mailbox: Mailbox, folder: Folder, context: Context) -> None:
        self.mailbox = mailbox
        self.folder = folder
        self.context = context
        self.config, self.ledger = context.config, context.ledger
        self.rules = RuleSet.for_folder(folder, self.config)
        self.disposal = _Disposal(mailbox, self.ledger)
        self.backoff = Backoff(self.config.retry.first_delay, self.config.retry.max_delay)
        self.report = PassReport(mailbox.account.name, folder.name)
        self.where = f"{self.report.account}/{folder.name}"
        self.down: set[str] = set()  # targets not to contact again during this pass
        self.failing: dict[str, tuple[int, float]] = {}  # target: (failures, next try)
        self.records: dict[int, Record] = {}  # what the ledger knew of this pass's UIDs
        self.inflight: InFlight[_Sent] = InFlight(
            {name: self.config.concurrency(name) for name in self.config.targets})
        self.refused: TrackerRefused | None = None  # a target refused our key: stop the pass
        self.success_to = (f"move:{folder.move_on_success}" if folder.move_on_success
                           else "delete")
        self.failure_to = (f"move:{folder.move_on_failure}" if folder.move_on_failure
                           else f"mark:{FAILED}")

    def run(self) -> PassReport:
        if self.ledger.uidvalidity_changed(self.report.account, self.folder.name,
                                           self.mailbox.uidvalidity):
            log.warning("%s: UIDVALIDITY changed: every UID is new, so messages are matched "
                        "to earlier ones by Message-ID and content", self.where)
        uids = self.mailbox.new_uids()
        self.records = self.ledger.records(self.report.account, self.folder.name,
                                           self.mailbox.uidvalidity, uids)
        progress = _Progress(self.where, len(uids)) if self.context.progress else None
        labels = (self.report.account, self.folder.name)
        try:
            for fetched in self.mailbox.fetch(uids, self.folder.batch_size,
                                              self.folder.max_message_size):
                if self.context.stop.is_set() or self.refused:
                    break
                self.context.metrics.fetched.labels(*labels).inc()
                self._one(fetched)
                self._record(self.inflight.finished())
                if len(self.disposal) >= self.folder.batch_size:
                    self.disposal.flush()
                if progress:
                    progress.show(self.report.counts.total())
        finally:
            # What was sent is recorded, and what was decided carried out, even when the
            # pass is cut short.
            self._record(self.inflight.drain())
            self.inflight.close()
            self.disposal.flush()
            if progress:
                progress.close()
        if self.refused:
            raise self.refused
        if self.context.stop.is_set() and (left := len(uids) - self.report.counts.total()):
            # Stopped early: untouched, for the next pass; counted so that --once exits 75.
            self.report.counts["left"] = left
        self.context.metrics.backlog.labels(*labels).set(self.report.counts["deferred"]
                                                 + self.report.counts["left"])
        self.context.metrics.last_success.labels(*labels).set_to_current_time()
        counts = ", ".join(f"{n} {what}" for what, n in sorted(self.report.counts.items()))
        # A pass that found nothing is only news when debugging (a service runs one a minute).
        event(log, logging.INFO if uids else logging.DEBUG, f"{self.where}: pass done: "
              f"{len(uids)} new"
              + (f" ({counts})" if counts else ""), account=self.report.account,
              folder=self.folder.name, new=len(uids), **self.report.counts)
        return self.report

    def _one(self, fetched: Fetched) -> None:
        key = Key(self.report.account, self.folder.name, self.mailbox.uidvalidity, fetched.uid)
        message = Message(fetched.raw) if fetched.raw else None
        record = self.records.get(fetched.uid)
        if record is not None and self._resume(key, message, record):
            return
        if message is None:
            reason = (f"message is {fetched.size} bytes, over max_message_size "
                      f"({self.folder.max_message_size} bytes)" if fetched.raw is None
                      else "empty message (0 bytes): nothing to submit")
            self._decide(key, None, fetched.size, "-", "failed", reason, self.failure_to)
            return
        decision = self.rules.evaluate(message)
        self.disposal.copy_with(key, decision.copies)
        if decision.act is Act.SUBMIT:
            self._submit(key, message, decision, record, fetched.internaldate)
            return
        outcome, to, level = {
            Act.SKIP: ("skipped", f"mark:{SKIPPED}", logging.INFO),
            Act.MOVE: ("moved", f"move:{decision.folder}", logging.INFO),
            Act.DISCARD: ("discarded", "delete", logging.WARNING),
            Act.HOLD: ("held", f"move:{decision.folder}" if decision.folder
                       else f"mark:{SKIPPED}", logging.WARNING),
        }[decision.act]
        self._decide(key, message, fetched.size, decision.rule, outcome, decision.reason, to,
                     level=level)

    def _resume(self, key: Key, message: Message | None, record: Record) -> bool:
        """Finish what an earlier pass left; False when the message should be submitted."""
        if record.state in ("submitted", "decided", "disposed") and record.dispose_to:
            self.disposal.add(key, record.dispose_to)
            self._log(key.uid, message, "-", record.outcome or "resumed",
                      f"finishing an earlier pass: {_where(record.dispose_to)}")
            return True
        if record.state == "submitting":
            if self.config.in_doubt == "resubmit":
                log.warning("%s uid %d: an earlier run stopped while posting it; submitting "
                            "it again (in_doubt: resubmit)", self.where, key.uid)
                return False
            quarantine = self.config.quarantine_folder
            self._decide(key, message, 0, "-", "quarantined", "an earlier run stopped while "
                         "posting it, so the tracker may or may not have it; check, then "
                         f"`imap-ingest retry {quarantine}`", f"move:{quarantine}",
                         level=logging.WARNING)
            return True
        if record.state == "waiting":
            if self._given_up(record):
                self._decide(key, message, 0, "-", "failed", self._give_up_reason(record),
                             self.failure_to)
                return True
            if record.next_try and record.next_try > time.time() and not self.context.retry_now:
                self._log(key.uid, message, "-", "deferred", "next try at "
                          + time.strftime("%H:%M:%S", time.localtime(record.next_try)))
                return True
        return False

    def _submit(self, key: Key, message: Message, decision: Decision, record: Record | None,
                arrived: datetime | None) -> None:
        assert decision.options is not None
        target = self.config.target_for(decision.options)
        digest = message.digest()
        ties = message.ties() | {digest}
        self._record(self.inflight.make_room(target, ties))
        if self.context.stop.is_set() or self.refused:
            return  # left for the next pass
        if target not in self.failing:  # read once per pass and target
            self.failing[target] = self.ledger.target_state(target)
        failures, next_try = self.failing[target]
        if not self.context.retry_now and failures and next_try > time.time():
            self.down.add(target)
        if target in self.down:
            self._log(key.uid, message, decision.rule, "deferred",
                      f"target {target} is failing; not contacted until it is due again")
            return
        earlier = self.ledger.begin_submit(key, message.message_id, len(message.raw), digest,
                                           decision.rule, target, self.config.dedupe)
        if earlier is not None:
            self._decide(key, message, len(message.raw), decision.rule, "duplicate",
                         f"already submitted as {earlier}", self.success_to)
            return
        account = self.mailbox.account
        envelope = Envelope(key.account, key.folder, key.uidvalidity, key.uid, message.subaddress(
            account.addresses, account.subaddress_separator, account.recipient_headers))
        self.inflight.start(target, ties, _Sent(key, message, decision.rule, record, arrived,
                                                target, time.monotonic()), functools.partial(
            self.context.trackers[target].submit, decision.submission(message.raw),
            decision.options, envelope))

    def _record(self, answers: list[tuple[_Sent, Outcome]]) -> None:
        for sent, outcome in answers:
            self._answer(sent, outcome)

    def _answer(self, sent: _Sent, outcome: Outcome) -> None:
        """Record what the tracker said of one message and what becomes of it."""
        key, message, rule, record, target = (sent.key, sent.message, sent.rule, sent.record,
                                              sent.target)
        if outcome.kind is Kind.SUCCESS:
            self.context.metrics.submitted(key.account, key.folder, target,
                                           time.monotonic() - sent.started, sent.arrived)
            self._answered(key, message, rule, target, outcome, "submitted", self.success_to)
            if self.failing[target][0]:
                self.ledger.target_ok(target)
                self.failing[target] = (0, 0.0)
        elif outcome.kind is Kind.PERMANENT:
            self._answered(key, message, rule, target, outcome,
                           "partial" if outcome.partial else "failed", self.failure_to)
        elif outcome.kind is Kind.TEMPORARY:
            self.down.add(target)
            wait = outcome.retry_after or 0.0
            self.failing[target] = (self.failing[target][0] + 1, self.ledger.target_failed(
                target, outcome.reason, self.backoff, at_least=wait))
            tried = Record(0, "waiting", None, None, (record.attempts if record else 0) + 1,
                           record.first_seen if record else time.time(), None, outcome.reason,
                           None)
            if self._given_up(tried):
                self._answered(key, message, rule, target, outcome, "failed",
                               self.failure_to, reason=self._give_up_reason(tried))
            else:
                delay = max(self.backoff.delay(tried.attempts), wait)
                self.ledger.answered(key, target, "waiting", "deferred", outcome.reason,
                                     status=outcome.status, next_try=time.time() + delay)
                self._log(key.uid, message, rule, "deferred", outcome.reason,
                          level=logging.WARNING, target=target, status=outcome.status)
        else:
            # Not the message's fault: it waits, with no attempt counted against it.
            self.ledger.answered(key, target, "waiting", "refused-key", outcome.reason,
                                 status=outcome.status, attempt=False)
            self.refused = self.refused or TrackerRefused(
                f"{self.where}: target {target}: {outcome.reason}; no message touched, "
                "folder stopped")

    def _given_up(self, record: Record) -> bool:
        retry = self.config.retry
        return (record.attempts >= retry.max_attempts
                or time.time() - record.first_seen > retry.max_age)

    def _give_up_reason(self, record: Record) -> str:
        hours = (time.time() - record.first_seen) / 3600
        return (f"gave up after {record.attempts} attempt(s) over {hours:.1f} h; last: "
                f"{record.reason}")

    def _answered(self, key: Key, message: Message, rule: str, target: str, outcome: Outcome,
                  name: str, to: str, reason: str | None = None) -> None:
        """Record the tracker's final answer, then queue the message's disposition."""
        reason = reason or outcome.reason
        state = "submitted" if name == "submitted" else "decided"
        self.ledger.answered(key, target, state, name, reason, status=outcome.status,
                             ticket=outcome.ticket, dispose_to=to)
        self.disposal.add(key, to)
        self._log(key.uid, message, rule, name, f"{reason}; {_where(to)}",
                  level=logging.INFO if name == "submitted" else logging.ERROR, target=target,
                  status=outcome.status, ticket=outcome.ticket)

    def _decide(self, key: Key, message: Message | None, size: int, rule: str, outcome: str,
                reason: str, to: str, level: int | None = None) -> None:
        """Record a decision taken without the tracker, then queue its disposition."""
        self.ledger.decided(key, message.message_id if message else None,
                            len(message.raw) if message else size,
                            message.digest() if message else "", rule, outcome, reason, to)
        self.disposal.add(key, to)
        if level is None:
            level = logging.ERROR if outcome == "failed" else logging.INFO
        self._log(key.uid, message, rule, outcome,
                  f"{reason}; {_where(to)}" if reason else _where(to), level=level)

    def _log(self, uid: int, message: Message | None, rule: str, outcome: str, reason: str,
             level: int = logging.INFO, **fields: object) -> None:
        self.report.counts[outcome] += 1
        self.context.metrics.messages.labels(self.report.account, self.folder.name,
                                     fields.get("target") or "-", outcome).inc()
        event(log, level, f"{self.where} uid {uid}: {outcome}: {reason}",
              account=self.report.account, folder=self.folder.name, uid=uid,
              message_id=message.message_id if message else None, rule=rule, outcome=outcome,
              **fields)


class _Progress:
    """A progress line on a terminal, for a --once run through a large backlog."""

    def __init__(self, where: str, total: int) -> None:
        self.where, self.total = where, total
        self.shown = total > 100 and sys.stderr.isatty()

    def show(self, done: int) -> None:
        if self.shown:
            bar = "#" * (30 * done // self.total)
            sys.stderr.write(f"\r{self.where} [{bar:<30}] {done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
