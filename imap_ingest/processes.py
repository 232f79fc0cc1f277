"""run --once over several worker processes, so that an account's folders use every core.

A pass is bound by our own CPU (about 2 ms a message against a quick tracker) and holds the
GIL, so threads would only take turns; processes do not. The parent hands out folders, one
at a time, to ``workers`` processes forked before anything is opened: each has its own IMAP
connection, ledger connection (SQLite in WAL mode, or PostgreSQL) and trackers, keeps its
connection for the next folder of the same account, and asks for another folder when one is
done, so a large folder does not hold up the small ones. An account never has more of these
connections than its budget (budget.py). A target's ``concurrency`` counts the processes
together (limiter.Slots). A worker that dies fails the folder in hand only: its messages are
as a killed run leaves them (each recorded only after its disposition), and the folders not
begun go to the others.

On a terminal, and where there is one folder or one core, the run stays in one process: the
progress line and the question before a large first run need the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkContext
from multiprocessing.process import BaseProcess
from pathlib import Path

from .budget import budget_of
from .config import Config
from .errors import EX_OK, EX_SOFTWARE, IngestError, worst
from .ingest import PassReport
from .ledger import open_ledger
from .limiter import Slots
from .service import AccountRun, Service, log_cautions, signals
from .trackers import Paced

log = logging.getLogger(__name__)

Job = tuple[int, int]  # (account, folder), indexes into the configuration


def once(config: Config, retry_now: bool = False) -> int:
    """run --once: in worker processes where several folders and cores make it pay."""
    folders = sum(len(account.folders) for account in config.accounts)
    count = min(config.worker_processes, folders)
    if count > 1 and not sys.stdin.isatty():
        return _Parent(config, retry_now, count).run()
    service = Service(config, retry_now)
    try:
        return service.run_once()
    finally:
        service.close()


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    account: int | None = None  # whose connection it keeps
    job: Job | None = None  # the folder in hand
    done: bool = False  # told to end, or ended by itself

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class _Parent:
    """Hands the folders out to the worker processes and adds up what they did."""

    def __init__(self, config: Config, retry_now: bool, count: int) -> None:
        self.config, self.retry_now, self.count = config, retry_now, count
        self.pending: deque[Job] = deque((a, f) for a, account in enumerate(config.accounts)
                                         for f in range(len(account.folders)))
        self.caps = [budget_of(account) for account in config.accounts]
        self.workers: list[_Worker] = []
        self.started = 0
        self.codes = [EX_OK]
        self.counts: Counter[str] = Counter()
        self.passes = 0
        self.stop = threading.Event()

    def run(self) -> int:
        log_cautions(self.config)
        # Made (and migrated) once, before the workers: two creating it at once can collide.
        open_ledger(self.config).close()
        context = multiprocessing.get_context("fork")  # nothing is open yet
        with tempfile.TemporaryDirectory(prefix="imap-ingest-slots-") as slots, \
                signals(self.stop):
            for _ in range(min(self.count, len(self.pending))):
                self._start(context, Path(slots))
            forwarded = False
            while self.workers:
                if self.stop.is_set():
                    self.pending.clear()
                    if not forwarded:  # SIGTERM may have come to this process alone
                        forwarded = True
                        for worker in self.workers:
                            with _gone():
                                os.kill(worker.pid, signal.SIGTERM)
                self._hand_out()
                ready = set(wait([w.conn for w in self.workers]
                                 + [w.process.sentinel for w in self.workers], timeout=0.5))
                for worker in list(self.workers):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        self._heard(worker, context, Path(slots))
        counts = ", ".join(f"{n} {what}" for what, n in sorted((+self.counts).items()))
        log.info("run done: %d folder(s) in %d process(es): %s", self.passes, self.started,
                 counts or "nothing new")
        return worst(*self.codes)

    def _start(self, context: ForkContext, slots: Path) -> None:
        ours, theirs = context.Pipe()
        process = context.Process(target=_work, args=(self.config, self.retry_now, theirs,
                                                       slots), name="imap-ingest worker")
        process.start()
        theirs.close()
        self.workers.append(_Worker(process, ours))
        self.started += 1

    def _hand_out(self) -> None:
        """A folder for every idle worker that may take one; an end to those with none left."""
        for worker in self.workers:
            if worker.job is not None or worker.done:
                continue
            job = self._next_for(worker)
            if job is None:
                if not self.pending:
                    worker.done = True
                    _send(worker, None)
                continue
            self.pending.remove(job)
            worker.job, worker.account = job, job[0]
            account = self.config.accounts[job[0]]
            log.info("%s/%s: worker process %d", account.name, account.folders[job[1]].name,
                     worker.pid)
            _send(worker, job)

    def _next_for(self, worker: _Worker) -> Job | None:
        """The first folder of the worker's own account, else of one that has a connection
        to spare."""
        for job in self.pending:
            if job[0] == worker.account:
                return job
        for job in self.pending:
            held = sum(w.account == job[0] and not w.done for w in self.workers
                       if w is not worker)
            if held < self.caps[job[0]]:
                return job
        return None

    def _heard(self, worker: _Worker, context: ForkContext,
               slots: Path) -> None:
        """Take what ``worker`` said; if it ended, note how."""
        ended = False
        try:
            while worker.conn.poll():
                self._answer(worker, worker.conn.recv())
        except (EOFError, OSError):
            ended = True  # its end of the pipe closed as it exited
        if not ended and worker.process.is_alive():
            return
        worker.process.join()
        self.workers.remove(worker)
        worker.conn.close()
        if worker.job is None and worker.done:
            return
        code = worker.process.exitcode or 0
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        self.codes.append(EX_SOFTWARE)
        if worker.job is None:
            log.error("worker process %d died (%s) before it took a folder", worker.pid, how)
            return
        account = self.config.accounts[worker.job[0]]
        log.error("worker process %d died (%s) during %s/%s: that folder's pass failed; its "
                  "messages are as a killed run leaves them, for the next run", worker.pid,
                  how, account.name, account.folders[worker.job[1]].name)
        if self.pending and not self.stop.is_set():
            self._start(context, slots)

    def _answer(self, worker: _Worker, answer: tuple[object, ...]) -> None:
        if answer[0] == "broken":  # it could not start (the ledger, say): it has ended
            worker.done = True
            self.codes.append(int(str(answer[1])))
            return
        _, code, counts, over = answer
        assert worker.job is not None
        if code is not None:
            self.codes.append(int(str(code)))
            self.passes += 1
        assert isinstance(counts, dict)
        self.counts.update(counts)
        if over:  # the login was refused, or no connection could be made
            self.pending = deque(job for job in self.pending if job[0] != worker.job[0])
        worker.job = None


def _send(worker: _Worker, job: Job | None) -> None:
    with _gone():
        worker.conn.send(job)


def _gone() -> contextlib.suppress:
    """Ignore a worker that has ended already: its end is dealt with when it is heard of."""
    return contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionResetError)


def _work(config: Config, retry_now: bool, conn: Connection, slots: Path) -> None:
    """A worker process: the folders the parent sends, one at a time, until it sends None."""
    try:
        service = Service(config, retry_now, cautions=False)
    except IngestError as exc:
        log.error("%s", exc)
        conn.send(("broken", exc.exit_code))
        return
    shared = [Slots(slots, str(n), tracker.pace.most)
              for n, tracker in enumerate(service.trackers.values())
              if isinstance(tracker, Paced)]
    paced = [t for t in service.trackers.values() if isinstance(t, Paced)]
    for tracker, slot in zip(paced, shared, strict=True):
        tracker.pace.shared = slot
    context = service.context()
    runs: dict[int, AccountRun] = {}
    try:
        with signals(service.stop):
            leases = service.once_leases()
            while (job := _receive(conn)) is not None:
                a, f = job
                for other in [n for n in runs if n != a]:  # one connection at a time
                    runs.pop(other).close()
                account = config.accounts[a]
                run = runs.setdefault(a, AccountRun(service, account, context, leases))
                reports: list[PassReport] = []
                code = run.folder(account.folders[f], reports.append)
                counts = {str(what): n for report in reports for what, n in report.counts.items()}
                conn.send(("done", code, counts, run.over))
    finally:
        for run in runs.values():
            run.close()
        service.close()
        for slot in shared:
            slot.close()


def _receive(conn: Connection) -> Job | None:
    try:
        job: Job | None = conn.recv()
    except EOFError:  # the parent is gone
        return None
    return job
