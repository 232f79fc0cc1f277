"""One pass over one folder: fetch → rules → submit → dispose → record.

Every decision is recorded in the ledger before it is carried out, so a pass that dies
anywhere is finished by the next one: a message recorded as submitted is disposed of
without being sent again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime

from . import firstrun, flood
from .archive import Keeper
from .config import Config, Folder, HttpTarget, SubmitOptions
from .dispose import Disposal
from .errors import EX_OK, EX_TEMPFAIL, IngestError, TrackerRefused
from .inflight import InFlight
from .ledger import Begun, Earlier, Key, LeaseLost, Ledger, Record
from .locks import working
from .logs import event
from .message import Message
from .metrics import Metrics
from .rules import Decision, RuleSet
from .smime import Gate
from .source import Fetched, Flagged, Serial, Source
from .states import Result, State
from .tickets import SLACK, Lately, LookupFailed, Submitted, Tickets, open_tickets
from .trackers import Envelope, Kind, Lonely, Outcome, Paced, Tracker
from .verdict import (
    Policy,
    Verdict,
    answer,
    breaker_open,
    by_rule,
    copy_of,
    crashed,
    flooded,
    raced,
    resume,
    smime_failed,
    target_down,
    too_old,
    unexpunged,
    unreadable,
    waits,
)

log = logging.getLogger(__name__)

# Bytes of fetched mail the pass reads ahead of the message it is deciding, at most (plus
# one message, and the FETCH the source is reading).
AHEAD_BYTES = 16 * 1024 * 1024
# Mail to be posted alone waits until this many (or AHEAD_BYTES of them) are waiting, then
# goes in a row: the requests in flight run out once for the row, not once for each, and
# while they run out the tracker's other workers idle (docs/concurrency.md).
ALONE_ROW = 8


@dataclass
class PassReport:
    """What one pass did, counted by outcome."""

    account: str
    folder: str
    counts: Counter[str] = field(default_factory=Counter)
    undisposed: int = 0  # decided, but the server refused to move or mark them
    fresh: int = 0  # new UIDs the ledger had never seen

    @property
    def exit_code(self) -> int:
        return (EX_TEMPFAIL if self.counts[Result.DEFERRED] or self.counts["left"]
                or self.undisposed else EX_OK)


@dataclass(frozen=True, slots=True)
class _Sent:
    """A message in flight to its tracker, with what recording the answer needs."""

    key: Key
    id: int  # its ledger record
    message: Message
    rule: str
    record: Record | None  # what the ledger knew before this attempt
    arrived: datetime | None
    target: str
    started: float  # time.monotonic()
    at: float  # time.time(), when it was handed to its tracker
    send: Callable[[], Outcome]
    ties: frozenset[str]  # what it waits for in flight (inflight.py)
    again: bool = False  # sent again among others after a crowded refusal


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A message decided for a tracker that wants it posted alone, waiting for its row."""

    key: Key
    message: Message
    decision: Decision
    record: Record | None
    arrived: datetime | None
    ties: frozenset[str]


# How often a pass looks again at a copy another pass is posting.
_SETTLING = 0.02


class Behind:
    """Which messages of each folder the last pass deferred because their target was
    failing, by UID, kept between a service's passes: while that target still fails, a pass
    does not fetch them again (a backlog behind a failing tracker would cost every pass a
    fetch, a parse and the rules per message)."""

    def __init__(self) -> None:
        self._folders: dict[tuple[str, str], tuple[int, dict[int, str]]] = {}
        self._lock = threading.Lock()  # passes of different folders run in their own threads

    def of(self, account: str, folder: str, uidvalidity: int) -> dict[int, str]:
        """UID: target, as the folder's last pass under this UIDVALIDITY left them."""
        with self._lock:
            kept = self._folders.get((account, folder))
        return dict(kept[1]) if kept is not None and kept[0] == uidvalidity else {}

    def keep(self, account: str, folder: str, uidvalidity: int, behind: dict[int, str]) -> None:
        with self._lock:
            self._folders[(account, folder)] = (uidvalidity, behind)


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
    beat: Callable[[], None] = lambda: None  # called each time the pass gets on
    # Told of every message dealt with (alerts gather those set aside into a digest).
    observe: Callable[[str, Message | None, Verdict], None] | None = None
    tripped: Callable[[str, str], None] | None = None  # the flood breaker held one (alerts)
    behind: Behind = field(default_factory=Behind)
    lately: Lately = field(default_factory=Lately)


def ingest(mailbox: Source, folder: Folder, context: Context) -> PassReport:
    """Deal with every new message in ``folder``; stop between messages when asked to."""
    mailbox.select(folder.name)
    report = _Pass(mailbox, folder, context).run()
    mailbox.commit()  # not after a failed pass: POP3 then leaves every message as it was
    return report


class _Pass:
    """One pass over a folder, in five stages per message: fetch, rules, submit, dispose,
    record. What each answer means is for verdict.py; this carries it out."""

    def __init__(self, mailbox: Source, folder: Folder, context: Context) -> None:
        self.mailbox = mailbox
        self.folder = folder
        self.context = context
        self.config, self.ledger = context.config, context.ledger
        self.rules = RuleSet.for_folder(folder, self.config)
        self.smime = Gate.for_folder(self.config, mailbox.account, folder)
        self.policy = Policy.of(self.config, folder, context.retry_now)
        # A source that does not say it can runs its commands in the pass's own thread.
        self.serial = Serial(threaded=getattr(mailbox, "overlaps", False))
        self.disposal = Disposal(mailbox, self.ledger, self.serial)
        self.ahead: Future[tuple[list[Fetched], list[int] | None]] | None = None
        self.report = PassReport(mailbox.account.name, folder.name)
        self.where = f"{self.report.account}/{folder.name}"
        self.down: set[str] = set()  # targets not to contact again during this pass
        self.failing: dict[str, tuple[int, float]] = {}  # target: (failures, next try)
        self.records: dict[int, Record] = {}  # what the ledger knew of this pass's UIDs
        self.was_behind = context.behind.of(self.report.account, folder.name,
                                            mailbox.uidvalidity)
        self.behind: dict[int, str] = {}  # deferred by this pass for a failing target
        self.unfetched = 0  # answered without their bytes
        self.paces = {name: tracker.pace for name, tracker in context.trackers.items()
                      if isinstance(tracker, Paced)}
        self.inflight: InFlight[_Sent] = InFlight(
            {name: self._limit(name) for name in self.config.targets},
            sum(self.config.concurrency(name) for name in self.config.targets))
        # Refused among others, unless the tracker made it anyway: to be sent again among
        # others once where that cannot double a ticket (a lock conflict is seldom met
        # twice), then alone.
        self.crowded: list[tuple[_Sent, Outcome]] = []
        self.lonely: list[tuple[_Sent, Outcome]] = []
        self.waiting: list[_Waiting] = []  # to be posted alone, in the folder's order
        self.lookups: dict[str, Tickets | None] = {}  # by target, opened when first needed
        self.refused: TrackerRefused | None = None  # a target refused our key: stop the pass
        self.keeper = Keeper(self.config, self.ledger, self.config.archive_for(folder))
        self.plan = firstrun.Plan([])
        self.flood = folder.flood or self.config.flood
        self.flood_folder = (folder.flood_folder or self.config.flood_folder
                             or folder.loops_folder or self.config.loops_folder)
        # A message too large to fetch can still be decided on its header block, unless a
        # rule reads its body or S/MIME must open it first.
        self.by_header = not self.rules.needs_body and folder.smime is None

    def _limit(self, target: str) -> Callable[[], int]:
        """How many may be in flight to ``target`` now: its pace's, or the fixed number."""
        if (pace := self.paces.get(target)) is not None:
            return lambda: pace.limit
        return functools.partial(self.config.concurrency, target)

    def run(self) -> PassReport:
        if self.ledger.uidvalidity_changed(self.report.account, self.folder.name,
                                           self.mailbox.uidvalidity):
            log.warning("%s: UIDVALIDITY changed: every UID is new, so messages are matched "
                        "to earlier ones by Message-ID and content", self.where)
        self._unexpunged()
        uids = self._started(self.mailbox.new_uids())
        self.records = self.ledger.records(self.report.account, self.folder.name,
                                           self.mailbox.uidvalidity, uids)
        if not self.mailbox.keywords:
            # No keyword on the server says a message was set aside: the ledger does.
            uids = [uid for uid in uids if not _set_aside(self.records.get(uid))]
        self.report.fresh = sum(uid not in self.records for uid in uids)
        progress = _Progress(self.where, len(uids)) if self.context.progress else None
        labels = (self.report.account, self.folder.name)
        try:
            for fetched in self._fetch(uids):
                if self.context.stop.is_set() or self.refused:
                    break
                self.context.beat()
                self.context.metrics.fetched.labels(*labels).inc()
                self._guarded(fetched.uid, fetched.size, functools.partial(self._one, fetched))
                self._record(self.inflight.finished())
                self.inflight.check()
                if len(self.disposal) >= self.folder.batch_size:
                    self.disposal.send()
                if progress:
                    progress.show(self.report.counts.total())
            self._post_waiting()  # unless stopped: then they are left for the next pass
        finally:
            # What was sent is recorded, and what was decided carried out, even when the
            # pass is cut short.
            self._settle()
            self.inflight.close()
            for lookup in self.lookups.values():
                if lookup is not None:
                    lookup.close()
            try:
                self.disposal.flush()
            finally:
                # The answers heard are recorded even when the server failed a disposition
                # (they wait for the next write): left unrecorded, a message the tracker
                # took would be in doubt next pass, and sent again under in_doubt: resubmit.
                try:
                    self.serial.close()
                finally:
                    self.ledger.flush()
            self.inflight.check()
            self.context.behind.keep(self.report.account, self.folder.name,
                                     self.mailbox.uidvalidity, self.behind)
            if progress:
                progress.close()
            for sent, ticket in self.keeper.tickets():
                event(log, logging.INFO, f"{sent.where}: became ticket {ticket}",
                      account=self.report.account, folder=self.folder.name,
                      message_id=sent.message_id, ticket=ticket)
        # Answered without their bytes: left for the next pass, so --once exits 75.
        self.report.counts["left"] += self.unfetched
        self.report.undisposed = self.disposal.refused
        if self.refused:
            raise self.refused
        if self.ahead is not None:
            self.ahead.result()  # read ahead for nothing, but its error is the session's
        if self.context.stop.is_set() and (left := len(uids) - self.report.counts.total()):
            # Stopped early: untouched, for the next pass; counted so that --once exits 75.
            self.report.counts["left"] += left
        self.context.metrics.backlog.labels(*labels).set(self.report.counts[Result.DEFERRED]
                                                 + self.report.counts["left"])
        self.context.metrics.last_success.labels(*labels).set_to_current_time()
        counts = ", ".join(f"{n} {what}" for what, n in sorted(self.report.counts.items()))
        # A pass that found nothing is only news when debugging (a service runs one a minute).
        event(log, logging.INFO if uids else logging.DEBUG, f"{self.where}: pass done: "
              f"{len(uids)} new"
              + (f" ({counts})" if counts else ""), account=self.report.account,
              folder=self.folder.name, new=len(uids), **self.report.counts)
        return self.report

    def _unexpunged(self) -> None:
        """Finish the deletions an earlier pass was stopped in, between flagging its messages
        \\Deleted and expunging them: the search for new mail no longer finds those. Costs
        one UID SEARCH, and only while the ledger has deletions not recorded as done; one
        more when some of them are not flagged: those no longer there were expunged by a
        pass stopped before it recorded that, and are recorded now."""
        if not isinstance(self.mailbox, Flagged):
            return  # a source that deletes in one step leaves nothing flagged behind
        account, folder, uidvalidity = (self.report.account, self.folder.name,
                                        self.mailbox.uidvalidity)
        pending = self.ledger.pending_deletes(account, folder, uidvalidity)
        flagged = self.mailbox.among(list(pending), "DELETED") if pending else []
        for uid in flagged:
            if (verdict := unexpunged(pending[uid])) is not None:
                self._decide(Key(account, folder, uidvalidity, uid), None, 0, "-", verdict)
        self.disposal.flush()
        if unflagged := sorted(set(pending) - set(flagged)):
            # Still there and not flagged: the pass's search finds and disposes of them.
            gone = set(unflagged) - set(self.mailbox.among(unflagged))
            self.ledger.disposed([Key(account, folder, uidvalidity, uid) for uid in sorted(gone)])

    def _started(self, uids: list[int]) -> list[int]:
        """The UIDs this pass takes under the folder's start: and max_age:, the first run
        recorded (after a warning, and a question on a terminal, over a big backlog)."""
        account, name, start = self.report.account, self.folder.name, self.folder.start
        started, now = self.ledger.started(account, name), time.time()
        if started is None:
            warning = firstrun.backlog_warning(self.where, len(uids),
                                               self.config.backlog_warning)
            if start.mode == "all" and warning:
                log.warning("%s", warning)
                if self.context.progress and sys.stdin.isatty() and not _confirm(len(uids)):
                    log.warning("%s: left alone for now, as asked", self.where)
                    self.report.counts["left"] += len(uids)
                    return []
            started = self.ledger.start(account, name, firstrun.Started(
                self.mailbox.uidvalidity, firstrun.first_uid(start, uids), now,
                start.since_at(now)))
        self.plan = firstrun.plan(start, started, self.mailbox.uidvalidity, uids,
                                  self.folder.max_age, now)
        return self.plan.uids

    def _fetch(self, uids: list[int]) -> Iterator[Fetched]:
        """The pass's messages, a batch at a time; those that can only wait (as the ledger,
        or the last pass and the target's state, tell without their bytes) are counted as
        deferred, not fetched. The source reads up to AHEAD_BYTES ahead while the pass decides
        and posts, so a batch is judged when the one before it is being read, and each
        message again when its turn comes: mail behind a target that failed meanwhile is
        deferred then, and the batches after it are not fetched."""
        size = self.folder.batch_size
        batches = iter(range(0, len(uids), size))
        reading: Iterator[Fetched] | None = None  # the batch the source is reading

        def read_on() -> Future[tuple[list[Fetched], list[int] | None]] | None:
            nonlocal reading
            if reading is None:
                start = next(batches, None)
                if start is None:
                    return None
                wanted = [uid for uid in uids[start:start + size] if self._wanted(uid)]
                reading = self.mailbox.fetch(wanted, size, self.folder.max_message_size,
                                             self.by_header)
            return self.serial.later(functools.partial(self._read, reading))

        self.ahead = read_on()
        while self.ahead is not None:
            fetched, unfetched = self.ahead.result()
            if unfetched is not None:  # that batch is read
                reading = None
                self.unfetched += len(unfetched)
            self.ahead = read_on()
            yield from (one for one in fetched if self._wanted(one.uid))

    def _read(self, reading: Iterator[Fetched]) -> tuple[list[Fetched], list[int] | None]:
        """The next AHEAD_BYTES of a batch, and when it is all read, what the source could
        not fetch of it (else None)."""
        fetched: list[Fetched] = []
        held = 0
        for one in reading:
            fetched.append(one)
            held += len(one.raw or b"")
            if held >= AHEAD_BYTES:
                return fetched, None
        return fetched, list(self.mailbox.unfetched)

    def _wanted(self, uid: int) -> bool:
        """Whether a message is to be fetched (or, fetched, decided) now; else it is
        counted as deferred."""
        behind = self.was_behind.get(uid)
        if behind is not None and not self._down(behind):
            behind = None
        verdict = waits(self.records.get(uid), behind, self.policy, time.time())
        if verdict is None:
            return True
        if behind is not None:
            self.behind[uid] = behind  # and still does
        self._log(uid, None, "-", verdict)
        return False

    def _down(self, target: str) -> bool:
        """Whether ``target`` is not to be contacted again during this pass."""
        if target not in self.failing:  # read once per pass and target
            self.failing[target] = self.ledger.target_state(target)
        if breaker_open(*self.failing[target], self.policy, time.time()):
            self.down.add(target)
        return target in self.down

    def _guarded(self, uid: int, size: int, work: Callable[[], None]) -> None:
        """``work`` on one message; a bug of ours that it sets off fails that message, not
        the pass."""
        try:
            work()
        except IngestError:
            raise  # the session, the ledger or the config: not this message's doing
        except Exception as exc:
            log.exception("%s uid %d: internal error", self.where, uid)
            key = Key(self.report.account, self.folder.name, self.mailbox.uidvalidity, uid)
            self._decide(key, None, size, "-", crashed(_error(exc), self.policy))

    def _one(self, fetched: Fetched) -> None:
        """Rules, then submit: decide one fetched message, or send it on its way."""
        key = Key(self.report.account, self.folder.name, self.mailbox.uidvalidity, fetched.uid)
        message = Message(fetched.raw) if fetched.raw else None
        record = self.records.get(fetched.uid)
        earlier = resume(record, self.policy, time.time())
        if isinstance(earlier, Verdict):
            self._decide(key, message, fetched.size, "-", earlier)
            return
        if earlier.warning:
            log.warning("%s uid %d: %s", self.where, key.uid, earlier.warning)
        cutoff = self.plan.cutoff
        if (record is None and cutoff is not None and fetched.internaldate is not None
                and fetched.internaldate.timestamp() < cutoff):
            self._decide(key, message, fetched.size, "-", too_old(self.plan.why))
            return
        if message is None:
            head = (Message.header_only(fetched.header, fetched.size)
                    if fetched.header is not None else None)
            if head is not None and self._by_header(key, head):
                return
            self._decide(key, head, fetched.size, "-", unreadable(
                fetched.size, self.folder.max_message_size, fetched.raw is None, self.policy))
            return
        opened = self.smime.open(message)  # before the rules: they may match its verdict
        if opened.failure is not None:
            self._decide(key, message, fetched.size, "smime", smime_failed(opened.failure,
                                                                           self.policy))
            return
        message = opened.message
        decision = self.rules.evaluate(message)
        self.disposal.copy_with(key, decision.copies)
        verdict = by_rule(decision, self.policy)
        if verdict is not None:
            self._decide(key, message, fetched.size, decision.rule, verdict)
            return
        self._submit(key, message, decision, record, fetched.internaldate)

    def _by_header(self, key: Key, head: Message) -> bool:
        """Decide a message too large to fetch by its header block, when the rules skip,
        move, discard or hold it; False when they would submit it (it is too large)."""
        decision = self.rules.evaluate(head)
        verdict = by_rule(decision, self.policy)
        if verdict is None:
            return False
        self.disposal.copy_with(key, decision.copies)
        self._decide(key, head, head.size, decision.rule, verdict)
        return True

    def _submit(self, key: Key, message: Message, decision: Decision, record: Record | None,
                arrived: datetime | None, waited: bool = False) -> None:
        assert decision.options is not None
        target = self.config.target_for(decision.options)
        digest = message.digest()
        ties = message.ties() | {digest}
        tracker = self.context.trackers[target]
        alone = isinstance(tracker, Lonely) and tracker.alone(message.raw)
        if not waited:
            if any(ties & waiting.ties for waiting in self.waiting):
                self._post_waiting()  # what it is tied to first, in the folder's order
            if alone:
                self.waiting.append(_Waiting(key, message, decision, record, arrived, ties))
                if (len(self.waiting) >= ALONE_ROW or sum(
                        len(waiting.message.raw) for waiting in self.waiting) >= AHEAD_BYTES):
                    self._post_waiting()
                return
        self._record(self.inflight.make_room(target, ties))
        self.inflight.check()
        if self.context.stop.is_set() or self.refused:
            return  # left for the next pass
        if self._down(target):
            self.behind[key.uid] = target
            self._decide(key, message, len(message.raw), decision.rule, target_down(target))
            return
        if record is None and (held := self._flooded(message)) is not None:
            self._decide(key, message, len(message.raw), "flood", held)
            return
        begun = self._begin(key, message, decision.rule, target, digest, record)
        if isinstance(begun, Verdict):
            self._decide(key, message, len(message.raw), decision.rule, begun, target)
            return
        record, id = begun
        if (leases := self.ledger.leases) and not leases.holds((key.account, key.folder)):
            # Paused past the lease (the fence refuses the answer): never post it then.
            raise LeaseLost(f"{self.where}: lease ran out before uid {key.uid} was posted")
        envelope = replace(
            Envelope.of(self.mailbox.account, message, key.folder, key.uidvalidity, key.uid),
            ticket=self.ledger.thread_ticket(target, message.replies_to()))
        send = functools.partial(_sending, self.where, key.uid,
                                 self.context.trackers[target].submit,
                                 decision.submission(message.raw), decision.options, envelope)
        if self._lookup(target) is not None:
            self.context.lately.posted(target, id, message.subject or "")
        sent = _Sent(key, id, message, decision.rule, record, arrived, target,
                     time.monotonic(), time.time(), send, ties)
        if alone:
            self._alone(sent)
        else:
            self.inflight.start(target, ties, sent, send)

    def _post_waiting(self) -> None:
        """Post the mail waiting to go alone, one after the other."""
        while self.waiting:
            one = self.waiting.pop(0)
            self._guarded(one.key.uid, len(one.message.raw), functools.partial(
                self._submit, one.key, one.message, one.decision, one.record, one.arrived,
                waited=True))

    def _flooded(self, message: Message) -> Verdict | None:
        """Counted by the flood breaker: None while under its limits, else the hold."""
        if self.flood is None:
            return None
        over = self.ledger.admit(flood.limits(message, self.flood), time.time())
        if over is None:
            return None
        self.context.metrics.flood_held.labels(self.report.account, self.folder.name,
                                               over[0].partition(":")[0]).inc()
        reason = flood.describe(*over, self.flood)
        if self.context.tripped is not None:
            self.context.tripped(over[0], reason)
        return flooded(reason, self.flood_folder)

    def _begin(self, key: Key, message: Message, rule: str, target: str, digest: str,
               record: Record | None) -> Verdict | tuple[Record | None, int]:
        """Record the message as being submitted, and return the record its answer follows
        on, with its id; or the verdict an earlier copy of it makes (a duplicate, in doubt,
        or waiting for a retry this copy takes over and that is not due yet)."""
        size = len(message.raw)
        found = self._settled(functools.partial(
            self.ledger.begin_submit, key, message.message_id, size, digest, rule, target,
            self.config.dedupe), target)
        if isinstance(found, Verdict):
            return found
        if isinstance(found, Earlier):
            verdict = copy_of(found, self.policy)
            if isinstance(verdict, Verdict):
                return verdict
            record = self.ledger.take_over(found, key, message.message_id, size, digest, rule,
                                           target)
            if record is None:
                return raced(found.where)
            log.info("%s uid %d: takes over the retry of %s", self.where, key.uid, found.where)
            resumed = resume(record, self.policy, time.time())
            if isinstance(resumed, Verdict):
                return resumed
            found = self.ledger.begin_submit(key, message.message_id, size, digest, rule, target,
                                             self.config.dedupe)
            if isinstance(found, Earlier):
                return raced(found.where)
        if found.reused:
            log.warning("%s uid %d: %s is also the Message-ID of a different message (%s); "
                        "submitting this one as a new message", self.where, key.uid,
                        message.message_id, found.reused)
        return record, found.id

    def _settled(self, begin: Callable[[], Begun | Earlier], target: str
                 ) -> Begun | Earlier | Verdict:
        """``begin()``, again while the copy it finds is being posted by another folder's
        pass running now (in another process or thread): its answer, not doubt, decides
        this one. Only a copy no pass is posting was left by a run that stopped."""
        timeout = self.config.targets[target]
        deadline = time.monotonic() + 2 * (
            timeout.timeout if isinstance(timeout, HttpTarget) else 60.0)
        while (isinstance(found := begin(), Earlier) and found.state is State.SUBMITTING
               and found.folder != (self.report.account, self.folder.name)
               and self._working(*found.folder)):
            if time.monotonic() > deadline or self.context.stop.wait(_SETTLING):
                return raced(found.where)
            self.context.beat()
        return found

    def _working(self, account: str, folder: str) -> bool:
        """Whether a pass over the folder runs now: its lock file, or a live lease."""
        if self.ledger.leases is None:
            return working(self.config.state_dir, account, folder)
        return any((a, f) == (account, folder) for a, f, _, _ in self.ledger.holders())

    def _record(self, answers: list[tuple[_Sent, Outcome]]) -> None:
        for sent, outcome in answers:
            self.context.beat()
            self._answer(sent, outcome)
        while self.crowded:
            self._again(*self.crowded.pop(0))
        while self.lonely:
            self._alone(*self.lonely.pop(0))

    def _settle(self, target: str | None = None) -> None:
        """Record every answer still to come (from ``target``, or all), until none is in
        flight: recording one may send a crowded refusal again."""
        while answers := self.inflight.drain(target):
            self._record(answers)

    def _again(self, sent: _Sent, refusal: Outcome) -> None:
        """Send a message refused among others again among others, unless the tracker,
        asked first, shows it made the ticket despite its refusal."""
        lookup = self._lookup(sent.target)
        if lookup is not None and (made := self._made(lookup, sent, refusal)) is not None:
            self._answer(sent, made)
            return
        self._record(self.inflight.make_room(sent.target, sent.ties))
        again = replace(sent, again=True)
        self.inflight.start(sent.target, sent.ties, again, again.send)

    def _alone(self, sent: _Sent, refusal: Outcome | None = None) -> None:
        """Send a message with nothing else in flight to its target (from any folder), and
        take that answer as the tracker's word: one the tracker wants so (``Lonely``), or
        one it refused among others (``refusal``), unless the tracker, asked first, shows it
        made the ticket despite its refusal."""
        self._settle(sent.target)
        self.ledger.flush()  # every answer heard is recorded before another POST
        pace = self.paces.get(sent.target)
        lookup = self._lookup(sent.target) if refusal is not None else None
        # Without a question first, the other processes wait only for the post itself, not
        # for its body to be built.
        with pace.alone(lazily=lookup is None) if pace else contextlib.nullcontext():
            # Asked alone too: no post of another folder's is making an issue meanwhile.
            made = (self._made(lookup, sent, refusal)
                    if lookup is not None and refusal is not None else None)
            # Sent alone: whatever the Client saw, it was alone.
            outcome = made or replace(sent.send(), crowded=False)
        if refusal is not None and pace and outcome.kind is Kind.SUCCESS:
            pace.conflicted()  # the refusal was the crowd's doing: fewer at once
        self._answer(sent, outcome)

    def _lookup(self, target: str) -> Tickets | None:
        """The target's lookup for this pass, or None when it has none."""
        if target not in self.lookups:
            self.lookups[target] = open_tickets(self.config.targets[target])
        return self.lookups[target]

    def _made(self, lookup: Tickets, sent: _Sent, refusal: Outcome) -> Outcome | None:
        """What the tracker's tickets say of a message it refused among others: taken
        after all, in doubt, or None (it made nothing: send it again alone)."""
        one = Submitted.of(sent.id, sent.message, f"{self.where} uid {sent.key.uid}",
                           at=sent.at)
        taken, unsure = self.context.lately.alike(sent.target, sent.id, one.subject,
                                                  one.at - 2 * SLACK)
        if (pace := self.paces.get(sent.target)) is not None and pace.shared is not None:
            # The run's other processes post too, and what they posted is not seen here:
            # an issue of its subject may be theirs, so one found is in doubt.
            unsure += 1
        try:
            made = lookup.made(one, taken, unsure)
        except LookupFailed as exc:
            if self.policy.resubmit_in_doubt:
                return None  # in_doubt: resubmit
            return replace(refusal, crowded=False, in_doubt=True, reason=(
                f"{refusal.reason}, with others in flight, and whether it made the ticket "
                f"anyway is unknown: {exc}"))
        if made is None:
            return None
        which = made.ticket or "(which one of its subject is unknown)"
        return Outcome(Kind.SUCCESS, f"the tracker made ticket {which} despite refusing it "
                       "among others", ticket=made.ticket, status=refusal.status)

    def _answer(self, sent: _Sent, outcome: Outcome) -> None:
        """Record what the tracker said of one message, and queue what becomes of it."""
        key, target = sent.key, sent.target
        verdict = answer(outcome, sent.record, self.policy, time.time())
        if verdict.alone:
            log.info("%s uid %d: %s", self.where, key.uid, verdict.reason)
            # Sent again among others once, where that cannot double a ticket: the tracker
            # can be asked, or it is sent alone whatever a refusal may not tell.
            among = not sent.again and (self._lookup(target) is not None or isinstance(
                self.context.trackers[target], Lonely))
            (self.crowded if among else self.lonely).append((sent, outcome))
            return
        if sent.again and outcome.kind is Kind.SUCCESS and (pace := self.paces.get(target)):
            pace.conflicted()  # the refusal was the crowd's doing: fewer at once
        if self.lookups.get(target) is not None:
            self.context.lately.answered(target, sent.id, True if verdict.result is
                                         Result.SUBMITTED else False if verdict.result is
                                         Result.FAILED else None)
        assert verdict.state is not None  # every answer is recorded
        if outcome.kind is Kind.SUCCESS:
            self.context.metrics.submitted(key.account, key.folder, target,
                                           time.monotonic() - sent.started, sent.arrived)
        if verdict.target_ok is False:
            self.down.add(target)
            self.failing[target] = (self.failing[target][0] + 1, self.ledger.target_failed(
                target, outcome.reason, self.policy.backoff,
                at_least=outcome.retry_after or 0.0))
        # Committed with the next message's "submitting", before its POST: a crash between
        # leaves this one in doubt, as a crash before this line would.
        self.ledger.answered(key, target, verdict.state, verdict.result, verdict.reason,
                             status=outcome.status, ticket=verdict.ticket,
                             dispose_to=verdict.to, next_try=verdict.next_try,
                             attempt=verdict.attempt, later=True)
        if verdict.result is Result.SUBMITTED:
            self.keeper.took(sent.id, sent.message, target, verdict.ticket,
                             f"{self.where} uid {key.uid}")
        if verdict.stop:
            self.refused = self.refused or TrackerRefused(
                f"{self.where}: target {target}: {outcome.reason}; no message touched, "
                "folder stopped")
            return
        fields: dict[str, object] = {"target": target, "status": outcome.status}
        if verdict.to is not None:
            self.disposal.add(key, verdict.to)
            fields["ticket"] = verdict.ticket
        self._log(key.uid, sent.message, sent.rule, verdict, **fields)
        if verdict.target_ok and self.failing[target][0]:
            self.ledger.target_ok(target)
            self.failing[target] = (0, 0.0)

    def _decide(self, key: Key, message: Message | None, size: int, rule: str,
                verdict: Verdict, target: str | None = None) -> None:
        """Carry out a verdict reached without the tracker: record, queue, log."""
        if verdict.state is not None:
            assert verdict.to is not None  # a decision always says where the message goes
            self.ledger.decided(key, message.message_id if message else None,
                                message.size if message else size,
                                message.digest() if message and message.whole else "", rule,
                                verdict.result, verdict.reason, verdict.to, target, later=True)
        if verdict.to is not None:
            self.disposal.add(key, verdict.to, verdict.instead)
        self._log(key.uid, message, rule, verdict)

    def _log(self, uid: int, message: Message | None, rule: str, verdict: Verdict,
             **fields: object) -> None:
        outcome = verdict.result.value
        self.report.counts[outcome] += 1
        if self.context.observe is not None:
            self.context.observe(self.where, message, verdict)
        self.context.metrics.messages.labels(self.report.account, self.folder.name,
                                     fields.get("target") or "-", outcome).inc()
        event(log, verdict.level, f"{self.where} uid {uid}: {outcome}: {verdict.text}",
              account=self.report.account, folder=self.folder.name, uid=uid,
              message_id=message.message_id if message else None, rule=rule, outcome=outcome,
              **fields)


def _set_aside(record: Record | None) -> bool:
    """Left in place, marked failed or skipped, by an earlier pass."""
    return (record is not None and record.state is State.DISPOSED
            and record.dispose_to is not None and record.dispose_to.verb == "mark")


def _confirm(count: int) -> bool:
    """Ask on the terminal whether a first run may ingest ``count`` messages."""
    sys.stderr.write(f"Ingest all {count} messages now (each may become a ticket)? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _error(exc: Exception) -> str:
    """An exception as a short reason: its type and the start of its text."""
    return f"{type(exc).__name__}: {str(exc)[:200]}".rstrip(": ")


def _sending(where: str, uid: int, submit: Callable[[bytes, SubmitOptions, Envelope], Outcome],
             raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
    """``submit``, with a bug of ours in the tracker client turned into a refusal in doubt
    (the message may have gone out before it; the target is not to blame)."""
    try:
        return submit(raw, options, envelope)
    except Exception as exc:
        log.exception("%s uid %d: internal error while posting", where, uid)
        return Outcome(Kind.PERMANENT, f"internal error while posting ({_error(exc)})",
                       in_doubt=True)


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
