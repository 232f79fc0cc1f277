"""A model of ingest: the real passes, ledger and verdicts against a simulated mailbox and
trackers, driven by hypothesis through arrivals, answers, kills, renumbering and people.

After every step: no message was deleted unless its folder's target accepted it, none was
posted twice to one target (but under ``in_doubt: resubmit``, where the tracker took it and
we could not know: a timeout after taking it, or a kill), and every message ingest has seen
is in its target's tracker or still on the server. After ``settle`` (the trackers answer,
time passes) nothing waits in a watched folder any more.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from unittest.mock import patch

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from imap_ingest import ingest as ingest_module
from imap_ingest.config import Account, SubmitOptions, load
from imap_ingest.ingest import Context, ingest
from imap_ingest.ledger import Ledger, SqliteLedger
from imap_ingest.ledger import api as ledger_module
from imap_ingest.metrics import Metrics
from imap_ingest.source import Fetched
from imap_ingest.states import FAILED, SKIPPED
from imap_ingest.trackers import Envelope, Kind, Outcome

from .support.mail import make

WATCHED = {"INBOX": "a", "Copy": "a", "Sec": "b"}  # folder: its target
UNWATCHED = "Archive"
ASIDE = ("Failed", "Quarantine")
MAX_DELAY = 3600.0
# A 503 leaves a message waiting: the start of most loss paths, so it comes up most.
ANSWERS = ("201", "422", "503", "503", "503", "429", "timeout-before", "timeout-after")


class Killed(BaseException):
    """The process died here: nothing after it runs."""


class Clock:
    """The time ingest and the ledger see, moved on by the machine."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class Killer:
    """Counts the calls into the mailbox and trackers; at the chosen one the process dies,
    and every later call dies too."""

    def __init__(self) -> None:
        self.countdown: int | None = None
        self.dead = False

    def tick(self) -> None:
        if self.countdown is not None:
            self.countdown -= 1
            self.dead = self.dead or self.countdown < 0
        if self.dead:
            raise Killed


@dataclass
class Stored:
    letter: int
    raw: bytes
    flags: set[str] = field(default_factory=set)


@dataclass
class SimFolder:
    uidvalidity: int
    next_uid: int = 1
    messages: dict[int, Stored] = field(default_factory=dict)

    def add(self, stored: Stored) -> None:
        self.messages[self.next_uid] = stored
        self.next_uid += 1


class Server:
    """The IMAP server's folders, and what imap-ingest deleted from them."""

    def __init__(self) -> None:
        self.folders: dict[str, SimFolder] = {}
        self.validity = 100
        self.deleted: list[tuple[str, int]] = []  # (folder, letter)
        self.fetched: set[tuple[str, int]] = set()  # (target, letter) ingest has seen

    def folder(self, name: str) -> SimFolder:
        if name not in self.folders:
            self.validity += 1
            self.folders[name] = SimFolder(self.validity)
        return self.folders[name]

    def renumber(self, name: str) -> None:
        """A new UIDVALIDITY: every message gets a new UID, flags kept."""
        old = self.folder(name)
        self.validity += 1
        self.folders[name] = new = SimFolder(self.validity)
        for stored in old.messages.values():
            new.add(stored)

    def letters(self) -> Iterator[tuple[str, Stored]]:
        for name, folder in self.folders.items():
            for stored in folder.messages.values():
                yield name, stored


class SimMailbox:
    """What ingest() uses of imap_ingest.mailbox.Mailbox, on a Server."""

    def __init__(self, server: Server, account: Account, killer: Killer) -> None:
        self.server, self.account, self.killer = server, account, killer
        self.folder = ""
        self.uidvalidity = 0
        self.unfetched: list[int] = []  # the simulated server always answers with the body
        self.keywords = True  # the simulated server keeps our keywords

    def _selected(self) -> SimFolder:
        return self.server.folder(self.folder)

    def select(self, folder: str, readonly: bool = False) -> None:
        self.killer.tick()
        self.folder = folder
        self.uidvalidity = self._selected().uidvalidity

    def new_uids(self) -> list[int]:
        self.killer.tick()
        return sorted(uid for uid, stored in self._selected().messages.items()
                      if not stored.flags & {FAILED, SKIPPED})

    def fetch(self, uids: Sequence[int], batch_size: int, max_size: int,
              headers: bool = False) -> Iterator[Fetched]:
        for uid in uids:
            self.killer.tick()
            stored = self._selected().messages.get(uid)
            if stored is not None:
                self.server.fetched.add((WATCHED[self.folder], stored.letter))
                yield Fetched(uid, len(stored.raw), stored.raw)

    def copy(self, uids: Sequence[int], folder: str) -> None:
        self.killer.tick()
        for uid in uids:
            stored = self._selected().messages[uid]
            self.server.folder(folder).add(Stored(stored.letter, stored.raw, set(stored.flags)))

    def move(self, uids: Sequence[int], folder: str) -> None:
        self.killer.tick()
        for uid in uids:
            self.server.folder(folder).add(self._selected().messages.pop(uid))

    def mark(self, uids: Sequence[int], keyword: str) -> None:
        self.killer.tick()
        for uid in uids:
            self._selected().messages[uid].flags.add(keyword)

    def delete(self, uids: Sequence[int]) -> None:
        self.killer.tick()
        for uid in uids:
            self.server.deleted.append((self.folder, self._selected().messages.pop(uid).letter))

    def commit(self) -> None:
        """Nothing to do: the simulated server, like IMAP, acts at once."""


class SimTracker:
    """A tracker answering what the machine chose (201 when nothing is queued); records the
    letters it took."""

    def __init__(self, name: str, world: Model) -> None:
        self.name, self.world = name, world
        self.answers: list[tuple[str, float]] = []

    def submit(self, raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
        answer, retry_after = self.answers.pop(0) if self.answers else ("201", 0.0)
        letter = self.world.letter_of[raw]
        self.world.killer.tick()  # killed before it reached the tracker
        if answer in ("201", "timeout-after"):
            self.world.taken[self.name, letter] += 1
            if answer == "timeout-after" and self.world.resubmit:
                self.world.doubt[self.name, letter] += 1  # resubmit may send it again
            self.world.posting = (self.name, letter)
            self.world.killer.tick()  # killed after the tracker took it
            self.world.posting = None
        if answer == "201":
            return Outcome(Kind.SUCCESS, "created", ticket="1", status=201)
        if answer == "422":
            return Outcome(Kind.PERMANENT, "refused", status=422)
        if answer == "503":
            return Outcome(Kind.TEMPORARY, "unavailable", status=503)
        if answer == "429":
            return Outcome(Kind.TEMPORARY, "slow down", status=429, retry_after=retry_after)
        return Outcome(Kind.TEMPORARY, "no answer; the tracker may still have taken it",
                       in_doubt=True)

    def preview(self, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> tuple[str, list[tuple[str, str]]]:
        raise NotImplementedError

    def check(self) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _config(directory: Path, in_doubt: str) -> dict[str, Any]:
    target = {"type": "redmine", "url": "http://127.0.0.1:9", "key": "k"}
    return {
        "accounts": [{"name": "acct", "host": "127.0.0.1", "username": "u", "password": "p",
                      "folders": [{"name": name, "target": target_name,
                                   "move_on_failure": "Failed"}
                                  for name, target_name in WATCHED.items()]}],
        "targets": {"a": target, "b": target},
        "retry": {"first_delay": "30s", "max_delay": f"{MAX_DELAY:g}s", "max_attempts": 4,
                  "max_age": "1d"},
        "in_doubt": in_doubt,
        "state_dir": str(directory / "state"),
    }


class Model(RuleBasedStateMachine):
    """One account, three watched folders for two targets, an unwatched one."""

    def __init__(self) -> None:
        super().__init__()
        self._tmp = TemporaryDirectory()
        self.directory = Path(self._tmp.name)
        self.clock, self.killer, self.server = Clock(), Killer(), Server()
        self._clocks = [patch.object(module, "time", self.clock)
                        for module in (ingest_module, ledger_module)]
        for clock in self._clocks:
            clock.start()
        self.letter_of: dict[bytes, int] = {}
        self.message_ids: list[str] = []
        self.taken: Counter[tuple[str, int]] = Counter()
        self.doubt: Counter[tuple[str, int]] = Counter()  # takes we could not know of
        self.trackers = {name: SimTracker(name, self) for name in ("a", "b")}
        self.resubmit = False
        self.posting: tuple[str, int] | None = None  # taken, the answer not yet returned
        self.config_path = self.directory / "config.yaml"
        self.ledger: Ledger | None = None

    @rule(resubmit=st.booleans())
    @precondition(lambda self: self.ledger is None)
    def start(self, resubmit: bool) -> None:
        """Choose the in_doubt policy; the first step of every run."""
        self.resubmit = resubmit
        self.config_path.write_text(yaml.safe_dump(
            _config(self.directory, "resubmit" if resubmit else "quarantine")))
        self.config = load(self.config_path)
        self.ledger = SqliteLedger(self.directory / "state" / "ledger.sqlite3")

    def _arrive(self, raw: bytes, folders: Sequence[str]) -> None:
        letter = self.letter_of.setdefault(raw, len(self.letter_of))
        for name in folders:
            self.server.folder(name).add(Stored(letter, raw))

    @rule(folders=st.lists(st.sampled_from(sorted(WATCHED)), min_size=1, max_size=2,
                           unique=True))
    @precondition(lambda self: self.ledger is not None)
    def mail_arrives(self, folders: list[str]) -> None:
        """A new message, in one folder or (Cc'd) in two."""
        message_id = f"<m{len(self.message_ids)}@example.org>"
        self.message_ids.append(message_id)
        self._arrive(make(subject=f"mail {len(self.letter_of)}", message_id=message_id),
                     folders)

    @rule(data=st.data(), folder=st.sampled_from(sorted(WATCHED)))
    @precondition(lambda self: self.message_ids)
    def message_id_reused(self, data: st.DataObject, folder: str) -> None:
        """A different message carrying a Message-ID already seen."""
        message_id = data.draw(st.sampled_from(self.message_ids))
        self._arrive(make(subject=f"other mail {len(self.letter_of)}", message_id=message_id),
                     [folder])

    @rule(desk=st.sampled_from(["a", "b"]),
          answers=st.lists(st.tuples(st.sampled_from(ANSWERS),
                                     st.sampled_from([0.0, 10.0, 1e6, 1e20])),
                           min_size=1, max_size=4))
    def tracker_will_answer(self, desk: str, answers: list[tuple[str, float]]) -> None:
        """What the tracker answers to the next requests."""
        self.trackers[desk].answers = answers

    @rule(kill_at=st.none() | st.integers(0, 40), retry_now=st.booleans())
    @precondition(lambda self: self.ledger is not None)
    def a_pass_runs(self, kill_at: int | None, retry_now: bool) -> None:
        """One run over every watched folder, the process killed at the chosen call."""
        self.killer.countdown, self.killer.dead = kill_at, False
        self._run(retry_now)

    def _run(self, retry_now: bool) -> None:
        assert self.ledger is not None
        context = Context(self.config, self.trackers, self.ledger, threading.Event(),
                          Metrics(), retry_now=retry_now)
        mailbox = SimMailbox(self.server, self.config.accounts[0], self.killer)
        try:
            for folder in self.config.accounts[0].folders:
                ingest(mailbox, folder, context)  # type: ignore[arg-type]
        except Killed:
            if self.posting and self.resubmit:  # resubmit posts what died in flight again
                self.doubt[self.posting] += 1
            self.posting = None
            # The next run opens the ledger from its file, as a new process would.
            self.ledger.close()
            self.ledger = SqliteLedger(self.directory / "state" / "ledger.sqlite3")
        finally:
            self.killer.countdown, self.killer.dead = None, False

    @rule(seconds=st.sampled_from([1.0, 60.0, MAX_DELAY, 2 * 86400.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(folder=st.sampled_from(sorted(WATCHED)))
    def uidvalidity_changes(self, folder: str) -> None:
        """The server renumbers a folder (a migration, `doveadm force-resync`)."""
        self.server.renumber(folder)

    @rule(data=st.data(), to=st.sampled_from([*sorted(WATCHED), UNWATCHED]))
    def a_person_moves_a_message(self, data: st.DataObject, to: str) -> None:
        """Someone re-files a message between watched and unwatched folders."""
        held = [(name, uid) for name, folder in self.server.folders.items()
                if name in (*WATCHED, UNWATCHED) for uid in folder.messages]
        if held:
            name, uid = data.draw(st.sampled_from(held))
            stored = self.server.folders[name].messages.pop(uid)
            self.server.folder(to).add(stored)

    @rule()
    def a_person_reads_mail(self) -> None:
        for _, stored in self.server.letters():
            stored.flags.add("\\Seen")

    @rule()
    @precondition(lambda self: self.ledger is not None)
    def settle(self) -> None:
        """The trackers take everything and time passes: nothing may stay waiting."""
        for tracker in self.trackers.values():
            tracker.answers = []
        for _ in range(4):
            self.clock.now += 2 * MAX_DELAY
            self._run(retry_now=False)
        stuck = [(name, stored.letter) for name, stored in self.server.letters()
                 if name in WATCHED and not stored.flags & {FAILED, SKIPPED}]
        assert stuck == [], f"left waiting in watched folders after settling: {stuck}"

    @invariant()
    def deleted_only_what_its_target_took(self) -> None:
        wrong = [(folder, letter) for folder, letter in self.server.deleted
                 if not self.taken[WATCHED[folder], letter]]
        assert wrong == [], f"deleted, but never taken by the folder's target: {wrong}"

    @invariant()
    def posted_at_most_once(self) -> None:
        twice = [key for key, n in self.taken.items() if n > 1 + self.doubt[key]]
        assert twice == [], f"posted twice to one target: {twice}"

    @invariant()
    def nothing_lost(self) -> None:
        present = {stored.letter for _, stored in self.server.letters()}
        # By any target: a person may re-file a message to another desk (per desk, deletion
        # is checked above).
        taken = {letter for (_, letter), n in self.taken.items() if n}
        lost = sorted({letter for _, letter in self.server.fetched} - taken - present)
        assert lost == [], f"neither in the tracker nor on the server: {lost}"

    def teardown(self) -> None:
        for clock in self._clocks:
            clock.stop()
        if self.ledger is not None:
            self.ledger.close()
        self._tmp.cleanup()


Model.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
TestModel = Model.TestCase
