"""One pass over one folder: fetch → rules → submit → dispose → record (in the log)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import Config, Folder
from .errors import EX_OK, EX_TEMPFAIL, TrackerRefused
from .logs import event
from .mailbox import FAILED, SKIPPED, Fetched, Mailbox
from .message import Message
from .rules import Act, Decision, RuleSet
from .trackers import Kind, Tracker

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
    """Dispositions collected during a pass and sent as one command per destination."""

    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox
        self._moves: dict[str, list[int]] = {}
        self._marks: dict[str, list[int]] = {}
        self._deletes: list[int] = []

    def __len__(self) -> int:
        return len(self._deletes) + sum(map(len, (*self._moves.values(), *self._marks.values())))

    def move(self, uid: int, folder: str) -> None:
        self._moves.setdefault(folder, []).append(uid)

    def mark(self, uid: int, keyword: str) -> None:
        self._marks.setdefault(keyword, []).append(uid)

    def delete(self, uid: int) -> None:
        self._deletes.append(uid)

    def flush(self) -> None:
        for folder, uids in self._moves.items():
            self._mailbox.move(uids, folder)
        for keyword, uids in self._marks.items():
            self._mailbox.mark(uids, keyword)
        self._mailbox.delete(self._deletes)
        self._moves, self._marks, self._deletes = {}, {}, []


def ingest(mailbox: Mailbox, folder: Folder, config: Config, trackers: Mapping[str, Tracker],
           stop: threading.Event) -> PassReport:
    """Deal with every new message in ``folder``; stop between messages when ``stop`` is set."""
    mailbox.select(folder.name)
    return _Pass(mailbox, folder, config, trackers).run(stop)


class _Pass:
    def __init__(self, mailbox: Mailbox, folder: Folder, config: Config,
                 trackers: Mapping[str, Tracker]) -> None:
        self.mailbox = mailbox
        self.folder = folder
        self.config = config
        self.trackers = trackers
        self.rules = RuleSet(folder)
        self.disposal = _Disposal(mailbox)
        self.report = PassReport(mailbox.account.name, folder.name)
        self.down: set[str] = set()  # targets that failed temporarily during this pass

    def run(self, stop: threading.Event) -> PassReport:
        uids = self.mailbox.new_uids()
        try:
            for fetched in self.mailbox.fetch(uids, self.folder.batch_size,
                                              self.folder.max_message_size):
                if stop.is_set():
                    # Untouched, for the next pass; counted so that --once exits 75.
                    self.report.counts["left"] = len(uids) - self.report.counts.total()
                    break
                self._one(fetched)
                if len(self.disposal) >= self.folder.batch_size:
                    self.disposal.flush()
        finally:
            # What was decided is carried out even when the pass is cut short.
            self.disposal.flush()
        counts = ", ".join(f"{n} {what}" for what, n in sorted(self.report.counts.items()))
        event(log, logging.INFO, f"{self.where}: pass done: {len(uids)} new"
              + (f" ({counts})" if counts else ""), account=self.report.account,
              folder=self.folder.name, new=len(uids), **self.report.counts)
        return self.report

    @property
    def where(self) -> str:
        return f"{self.report.account}/{self.folder.name}"

    def _one(self, fetched: Fetched) -> None:
        if fetched.raw is None:
            self._fail(fetched.uid, None, "-", f"message is {fetched.size} bytes, over "
                       f"max_message_size ({self.folder.max_message_size} bytes)")
            return
        if not fetched.raw:
            self._fail(fetched.uid, None, "-", "empty message (0 bytes): nothing to submit")
            return
        message = Message(fetched.raw)
        decision = self.rules.evaluate(message)
        if decision.act is Act.SKIP:
            self.disposal.mark(fetched.uid, SKIPPED)
            self._done(fetched.uid, message, decision.rule, "skipped")
        elif decision.act is Act.MOVE:
            assert decision.folder is not None
            self.disposal.move(fetched.uid, decision.folder)
            self._done(fetched.uid, message, decision.rule, "moved", f"moved to {decision.folder}")
        else:
            self._submit(fetched.uid, message, decision)

    def _submit(self, uid: int, message: Message, decision: Decision) -> None:
        assert decision.options is not None
        target = self.config.target_for(decision.options)
        if target in self.down:
            self._done(uid, message, decision.rule, "deferred", f"{target} is failing; left for "
                       "the next pass", level=logging.WARNING)
            return
        outcome = self.trackers[target].submit(message.raw, decision.options)
        if outcome.kind is Kind.SUCCESS:
            if self.folder.move_on_success:
                self.disposal.move(uid, self.folder.move_on_success)
            else:
                self.disposal.delete(uid)
            self._done(uid, message, decision.rule, "submitted", outcome.reason,
                       target=target, ticket=outcome.ticket, status=outcome.status)
        elif outcome.kind is Kind.PERMANENT:
            self._fail(uid, message, decision.rule, outcome.reason, target=target,
                       status=outcome.status)
        elif outcome.kind is Kind.TEMPORARY:
            self.down.add(target)
            self._done(uid, message, decision.rule, "deferred", outcome.reason,
                       level=logging.WARNING, target=target, status=outcome.status)
        else:
            raise TrackerRefused(f"{self.where}: target {target}: {outcome.reason}; "
                                 "no message touched, folder stopped")

    def _fail(self, uid: int, message: Message | None, rule: str, reason: str,
              **fields: object) -> None:
        """A permanent failure: aside to move_on_failure, else kept and marked."""
        if self.folder.move_on_failure:
            self.disposal.move(uid, self.folder.move_on_failure)
            where = f"moved to {self.folder.move_on_failure}"
        else:
            self.disposal.mark(uid, FAILED)
            where = "kept in place and marked so it is not tried again"
        self._done(uid, message, rule, "failed", f"{reason}; {where}", level=logging.ERROR,
                   **fields)

    def _done(self, uid: int, message: Message | None, rule: str, outcome: str, reason: str = "",
              level: int = logging.INFO, **fields: object) -> None:
        self.report.counts[outcome] += 1
        message_id = message.message_id if message else None
        event(log, level, f"{self.where} uid {uid}: {outcome}" + (f": {reason}" if reason else ""),
              account=self.report.account, folder=self.folder.name, uid=uid,
              message_id=message_id, rule=rule, outcome=outcome, **fields)
