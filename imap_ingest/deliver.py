"""`imap-ingest deliver`: one message an MTA pipes in, through a route's loop checks and
rules, the ledger and the tracker, ending in an exit code the MTA understands.

The policy is verdict.py's, as for a folder; what differs is where a message goes. There
is no folder to leave it in: a message the tracker cannot take now makes the MTA keep it
(EX_TEMPFAIL), and one refused for good, held or skipped is appended to the route's
failure_folder, or written to the spool when that is unset or unreachable, before the MTA
is told it was delivered. The ledger's key is the message's content digest, so
the MTA delivering it again (it retried after our timeout) finds the first record.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import spool
from .archive import Keeper
from .errors import EX_OK, EX_TEMPFAIL, IngestError
from .files import private_dir
from .ledger import Earlier, Key, Ledger, Record, open_ledger
from .logs import event
from .message import Message
from .rules import Act, RuleSet
from .states import FAILED, SKIPPED, Disposition, Result, State
from .verdict import Policy, Verdict, answer, by_rule, copy_of, resume, unreadable

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .config import Config, Route, SubmitOptions
    from .trackers import Outcome

log = logging.getLogger("imap_ingest.deliver")

ACCOUNT = "mta"  # the ledger's account for mail an MTA pipes in; the route is its folder
DELIVERED = Disposition("delete")  # handed to the tracker: nothing left to keep
_LOCKS = 1024  # lock files per route: two deliveries of one message never overlap


@dataclass(frozen=True, slots=True)
class Delivery:
    """The exit code for the MTA, and what became of the message."""

    code: int
    text: str
    kept: str | None = None  # the failure folder or spool entry it is in


def spool_name(route: str) -> str:
    """The route's spool as the ledger names it, and as `imap-ingest retry` takes it."""
    return f"spool/{route}"


def spool_dir(config: Config, route: str) -> Path:
    """Where the route keeps what it does not hand to the tracker."""
    return config.routes[route].spool_on_failure or config.state_dir / "spool" / route


def deliver(config: Config, route: str, raw: bytes, extension: str | None = None,
            deadline: float | None = None) -> Delivery:
    """Deliver ``raw`` through ``route``; ``extension`` is the MTA's $EXTENSION, and
    ``deadline`` (time.monotonic) bounds the tracker's timeout."""
    if not raw.strip():
        return Delivery(EX_OK, "empty message: nothing to deliver")  # as rt-mailgate does
    message = Message(raw)
    digest = message.digest()
    key = Key(ACCOUNT, route, 0, int(digest[:15], 16))
    with _message_lock(config.state_dir, route, key.uid):
        ledger = open_ledger(config)
        try:
            return _Delivery(config, route, ledger, key, message, digest, extension,
                             deadline).run()
        finally:
            ledger.close()


class _Delivery:
    """One message's way through: resume, rules, submit, answer."""

    def __init__(self, config: Config, route: str, ledger: Ledger, key: Key, message: Message,
                 digest: str, extension: str | None, deadline: float | None) -> None:
        self.config, self.name, self.ledger, self.key = config, route, ledger, key
        self.route: Route = config.routes[route]
        self.message, self.digest, self.extension, self.deadline = (message, digest, extension,
                                                                    deadline)
        self.spool = Disposition("move", spool_name(route))
        folder = self.route.as_folder(route)
        # The MTA decides when to try again: its retries are never deferred by our timers.
        self.policy = replace(Policy.of(config, folder, retry_now=True), success_to=DELIVERED,
                              failure_to=self.spool, quarantine=spool_name(route))
        self.rules = RuleSet.for_folder(folder, config)
        self.rule, self.target = "-", "-"

    def run(self) -> Delivery:
        record = self.ledger.records(ACCOUNT, self.name, 0, [self.key.uid]).get(self.key.uid)
        earlier = resume(record, self.policy, time.time())
        if isinstance(earlier, Verdict):
            if earlier.state is None and earlier.to is not None:
                return self._again(earlier, record)
            return self._decide(earlier)
        if earlier.warning:
            log.warning("%s: %s", self.name, earlier.warning)
        size = len(self.message.raw)
        if size > self.route.max_message_size:
            return self._decide(unreadable(size, self.route.max_message_size, True, self.policy))
        decision = self.rules.evaluate(self.message)
        self.rule = decision.rule
        for copy in decision.copies:
            log.warning("%s: rule %s copies to %s: not done, a route has no IMAP folder",
                        self.name, decision.rule, copy)
        verdict = by_rule(decision, self.policy)
        if verdict is not None:
            return self._decide(_kept_by_rule(verdict, decision.act, decision.rule,
                                              decision.folder, self.spool))
        assert decision.options is not None
        self.target = self.config.target_for(decision.options)
        earlier_copy = self.ledger.begin_submit(
            self.key, self.message.message_id, size, self.digest, decision.rule, self.target,
            self.config.dedupe)
        if isinstance(earlier_copy, Earlier):
            standing = copy_of(earlier_copy, self.policy)
            if isinstance(standing, Verdict):
                return self._decide(standing)
            # A copy waits for its retry elsewhere (a watched folder): it goes first, and
            # the MTA asks again later, when this one is a duplicate or takes over.
            return self._done(EX_TEMPFAIL, Verdict(Result.DEFERRED, f"{earlier_copy.where} "
                                                   "waits for a retry of the same message"),
                              "left to the MTA to try again")
        outcome = _submit(self.config, self.target, decision.submission(self.message.raw),
                          decision.options, self.key, self.extension, self.deadline)
        verdict = answer(outcome, record, self.policy, time.time())
        if verdict.target_ok is False:
            self.ledger.target_failed(self.target, outcome.reason, self.policy.backoff)
        elif verdict.target_ok:
            self.ledger.target_ok(self.target)
        assert verdict.state is not None  # every answer is recorded
        kept = self._keep(verdict) if verdict.to == self.spool else None
        self.ledger.answered(self.key, self.target, verdict.state, verdict.result,
                             verdict.reason, status=outcome.status, ticket=verdict.ticket,
                             dispose_to=verdict.to, next_try=verdict.next_try,
                             attempt=verdict.attempt)
        if verdict.result is Result.SUBMITTED:
            keeper = Keeper(self.config, self.ledger, self.config.archive_for(
                self.route.as_folder(self.name)))
            keeper.took(earlier_copy.id, self.message, self.target, verdict.ticket,
                        f"route {self.name}")
            for _, ticket in keeper.tickets():
                verdict = replace(verdict, ticket=ticket, reason=f"{verdict.reason} "
                                  f"(ticket {ticket})")
        if verdict.to is None:  # the tracker cannot take it now, or refused our key
            return self._done(EX_TEMPFAIL, verdict, "left to the MTA to try again")
        self.ledger.disposed([self.key])
        return self._done(EX_OK, verdict, _where(verdict, kept), kept)

    def _again(self, verdict: Verdict, record: Record | None) -> Delivery:
        """Delivered before (the MTA retried after our timeout): finish, submit nothing."""
        assert record is not None and verdict.to is not None
        kept = self._keep(replace(verdict, reason=record.reason or verdict.reason)) \
            if verdict.to == self.spool else None
        self.ledger.disposed([self.key])
        done = replace(verdict, reason=f"delivered before ({record.outcome})")
        return self._done(EX_OK, done, _where(verdict, kept), kept)

    def _decide(self, verdict: Verdict) -> Delivery:
        """A verdict reached without the tracker: keep, record, log."""
        assert verdict.state is not None and verdict.to is not None
        kept = self._keep(verdict) if verdict.to == self.spool else None
        message = self.message
        self.ledger.decided(self.key, message.message_id, len(message.raw), self.digest,
                            self.rule, verdict.result, verdict.reason, verdict.to)
        self.ledger.disposed([self.key])
        return self._done(EX_OK, verdict, _where(verdict, kept), kept)

    def _keep(self, verdict: Verdict) -> str:
        """Keep the message, in the failure folder or else the spool, before the MTA is told
        it is delivered; returns where."""
        message = self.message
        folder = self.route.failure_folder
        if folder is not None:
            from .mailbox import append_to  # the IMAP stack, only for a route that has one

            # A keyword, so that a folder also watched is not ingested again.
            flags = [FAILED if verdict.result is Result.FAILED else SKIPPED]
            try:
                append_to(self.config.accounts, folder, [message.raw], flags, self.deadline)
                return str(folder)
            except IngestError as exc:  # whatever kept it out of IMAP, the spool takes it
                log.warning("route %s: %s: %s; spooling instead", self.name, folder, exc)
        return str(spool.keep(spool_dir(self.config, self.name), f"{self.key.uid:016x}",
                              message.raw, {
                              "route": self.name, "result": str(verdict.result),
                              "reason": verdict.reason, "rule": self.rule,
                              "target": self.target, "message_id": message.message_id,
                              "subject": message.subject, "extension": self.extension}))

    def _done(self, code: int, verdict: Verdict, where: str,
              kept: str | None = None) -> Delivery:
        text = f"{verdict.result}: {verdict.reason}; {where}" if verdict.reason else \
            f"{verdict.result}; {where}"
        event(log, verdict.level, f"route {self.name}: {text}", route=self.name,
              message_id=self.message.message_id, rule=self.rule, outcome=str(verdict.result),
              target=self.target, ticket=verdict.ticket, exit_code=code)
        return Delivery(code, text, kept)


def retry(config: Config, route: str) -> Iterator[str]:
    """Deliver each spooled message of ``route`` again; yields one line per message. A
    message the ledger shows as in the tracker stays: retrying it would make a second
    ticket."""
    for entry in spool.entries(spool_dir(config, route)):
        raw = entry.raw
        message = Message(raw)
        where = f"{entry.eml.name} {message.message_id or '(no Message-ID)'}"
        ledger = open_ledger(config)
        try:
            records = [r for r in ledger.sources(ACCOUNT, message.message_id, message.digest())
                       if r.folder == route]
            if any(r.outcome in (Result.SUBMITTED, Result.PARTIAL) for r in records):
                yield f"kept {where}: already in the tracker, at least in part"
                continue
            ledger.release([record.id for record in records])
        finally:
            ledger.close()
        extension = entry.about.get("extension")
        delivery = deliver(config, route, raw, extension if isinstance(extension, str) else None)
        if delivery.code == EX_OK and delivery.kept is None:
            entry.remove()
            yield f"delivered {where}: {delivery.text}"
        else:
            yield f"kept {where}: {delivery.text}"


def report(config: Config) -> Iterator[str]:
    """A line per route with a failure folder or messages in its spool, for `imap-ingest
    status`."""
    for route, settings in config.routes.items():
        if settings.failure_folder is not None:
            yield (f"{spool_name(route)}: refused and held mail goes to "
                   f"{settings.failure_folder}, the spool only when that is unreachable")
        kept = list(spool.entries(spool_dir(config, route)))
        if kept:
            results: dict[str, int] = {}
            for entry in kept:
                results[str(entry.about.get("result"))] = results.get(
                    str(entry.about.get("result")), 0) + 1
            counts = ", ".join(f"{count} {result}" for result, count in sorted(results.items()))
            yield (f"{spool_name(route)}: {len(kept)} kept in {spool_dir(config, route)} "
                   f"({counts}); last: {kept[-1].about.get('reason')}; `imap-ingest retry "
                   f"{spool_name(route)}` delivers them again")


def _kept_by_rule(verdict: Verdict, act: Act, rule: str, folder: str | None,
                  spool_to: Disposition) -> Verdict:
    """A rule's verdict for a route: what a folder would move or mark is spooled instead;
    only a discard drops the message."""
    if act is Act.DISCARD:
        return verdict
    why = {Act.SKIP: f"skipped by rule {rule}", Act.MOVE: f"rule {rule} moves it to {folder}"}
    reason = verdict.reason or why.get(act, "")
    if act is Act.HOLD and folder:
        reason += f" (loops_folder {folder}: a route spools instead)"
    return replace(verdict, reason=reason, to=spool_to)


def _where(verdict: Verdict, kept: str | None) -> str:
    if kept is not None:
        return f"kept in {kept}"
    if verdict.result is Result.DISCARDED:
        return "dropped"
    return "delivered to the tracker" if verdict.state is not State.WAITING else ""


def _submit(config: Config, target: str, raw: bytes, options: SubmitOptions, key: Key,
             extension: str | None, deadline: float | None) -> Outcome:
    """Open the one tracker this message needs, with a timeout that ends before the MTA's."""
    from .trackers import Envelope, open_tracker  # the HTTP stack, only when posting

    settings = config.targets[target]
    timeout = getattr(settings, "timeout", None)
    if deadline is not None and timeout is not None:
        settings = settings.model_copy(update={
            "timeout": max(1.0, min(timeout, deadline - time.monotonic() - 1))})
    tracker = open_tracker(settings)
    try:
        return tracker.submit(raw, options, Envelope(ACCOUNT, key.folder, 0, key.uid, extension))
    finally:
        tracker.close()


@contextmanager
def _message_lock(state_dir: Path, route: str, uid: int) -> Iterator[None]:
    """Hold one of the route's lock files while delivering: a second delivery of the same
    message waits for the first, then finds its record."""
    directory = private_dir(state_dir / "locks")
    path = directory / f"mta.{route.encode().hex()[:64]}.{uid % _LOCKS}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the --timeout alarm bounds the wait
        yield
    finally:
        os.close(fd)
