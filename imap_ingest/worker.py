"""One folder as a service: its passes over a kept (or shared) connection, its IDLE watcher,
its readiness and progress, and the reconnect backoff; service.py runs the workers."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .backoff import Backoff
from .config import Account, Config, Folder, HttpTarget
from .errors import (
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    AuthFailed,
    CommandRefused,
    ConnectionLost,
    IngestError,
    LoginRefused,
    MailboxError,
)
from .ingest import Context, PassReport, ingest
from .locks import folder_lock
from .logs import event
from .mailbox import Mailbox
from .oauth import Tokens
from .source import Source, open_source

if TYPE_CHECKING:
    from apscheduler.job import Job

    from .ledger.leases import Leases

log = logging.getLogger("imap_ingest.service")

# Reconnecting after a lost or refused connection: 1 s, doubling, at most 5 minutes.
RECONNECT = Backoff(first=1.0, cap=300.0)
# Between two signs of progress a pass does at most a few IMAP commands (a FETCH, then the
# COPY, STORE and EXPUNGE of a disposal) or waits for one tracker answer.
STALL_FACTOR = 4


def stall_limit(config: Config, account: Account) -> float:
    """How long a pass over one of ``account``'s folders may go without progress before
    it counts as stuck: ``http.stuck_after``, else STALL_FACTOR times the longest of the
    account's and the HTTP targets' timeouts."""
    if config.http is not None and config.http.stuck_after is not None:
        return config.http.stuck_after
    timeouts = [target.timeout for target in config.targets.values()
                if isinstance(target, HttpTarget)]
    return STALL_FACTOR * max([account.timeout, *timeouts])


def log_failure(exc: MailboxError, then: str = "") -> None:
    """Log a session that failed; auth_failed is a field of its own, for alerts to match."""
    event(log, logging.ERROR, f"{exc}{then}", account=exc.account,
          state=exc.state if isinstance(exc, AuthFailed) else None)


def leased_here(leases: Leases | None, account: Account, folder: Folder) -> bool:
    """For --once: whether this process got the folder (always, without leases)."""
    if leases is None or leases.acquire((account.name, folder.name)):
        return True
    log.info("%s/%s: another replica is working it; leaving it alone", account.name,
             folder.name)
    return False


def folder_pass(mailbox: Source, account: Account, folder: Folder, context: Context,
          done: Callable[[PassReport], None] | None = None) -> int:
    """One pass over one folder, under its lease or else its lock file, its report given
    to ``done``; an error in it ends that folder only."""
    leases = context.ledger.leases
    try:
        with (folder_lock(context.config.state_dir, account.name, folder.name)
              if leases is None else leases.busy((account.name, folder.name))):
            report = ingest(mailbox, folder, context)
            if done is not None:
                done(report)
            return report.exit_code
    except IngestError as exc:
        if isinstance(exc, ConnectionLost | LoginRefused):
            raise  # the session itself is gone: no other folder will work
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        # A bug of ours outside any one message: this folder's pass ends, the run goes on.
        log.exception("account %s, folder %s: pass failed: internal error", account.name,
                      folder.name)
        return EX_SOFTWARE


class Connection:
    """A kept IMAP connection for passes, used by one pass at once. A pass that finds it
    busy is queued, and run by the thread that holds it: no scheduler thread waits for a
    connection while another account's passes could run."""

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared  # by all the account's folders
        self.lock = threading.Lock()
        self.mailbox: Source | None = None
        self._guard = threading.Lock()
        self._queued: dict[FolderWorker, None] = {}  # in order, each once

    def take(self, worker: FolderWorker, announced: bool = False) -> bool:
        """The connection for ``worker``'s pass now, or False: queued for the holder, at
        the head if IDLE ``announced`` mail (a push must not wait behind the polls)."""
        with self._guard:
            if self.lock.acquire(blocking=False):
                return True
            if announced:
                self._queued = {worker: None, **{w: None for w in self._queued if w is not worker}}
            else:
                self._queued.setdefault(worker, None)
            return False

    def next_or_release(self) -> FolderWorker | None:
        """The next queued worker, still holding the connection; else let it go."""
        with self._guard:
            if self._queued:
                worker = next(iter(self._queued))
                del self._queued[worker]
                return worker
            self.lock.release()
            return None

    def drop(self) -> None:
        if self.mailbox is not None:
            self.mailbox.close()
            self.mailbox = None


class FolderWorker:
    """One folder as a service: its passes, its kept connection, its IDLE watcher."""

    def __init__(self, account: Account, folder: Folder, context: Context,
                 tokens: Tokens | None = None, connection: Connection | None = None) -> None:
        self.account, self.folder, self.tokens = account, folder, tokens
        self.context = replace(context, beat=self._beat)
        self.name = f"{account.name}/{folder.name}"
        self.limit = stall_limit(context.config, account)
        self._progress_at: float | None = None  # time.monotonic() while a pass runs
        context.metrics.stalled.labels(account.name, folder.name).set_function(
            lambda: self.stalled)
        self.job: Job | None = None
        # The passes' connection: the folder's own, or one all the account's folders share.
        self.connection = connection or Connection()
        self._failures = 0
        self._retry_at = 0.0
        self._state = threading.Lock()
        self._running = False
        self._again = False
        self.auth_failed = False  # no usable token: not ready until a login works again
        self._broken = False  # the last pass failed on a bug of ours
        self.last_pass: float | None = None  # when a pass last completed
        # Set while another replica holds the folder (never, without leases): the IDLE
        # watcher leaves, the kept connection is dropped.
        self.away = threading.Event()
        self._leases = context.ledger.leases
        if self._leases is not None:
            self.away.set()

        # Whether the server's IDLE reports new mail: when the watcher went into IDLE, whether
        # it announced mail since the last pass, how often a poll found mail it did not.
        self._idling_since: float | None = None
        self._announced = False
        self._unannounced = 0

    @property
    def ready(self) -> bool:
        """Connected, or backing off after a lost connection, or another replica's folder;
        never while auth_failed, nor after a pass that failed on a bug of ours until one
        completes again."""
        return not self.auth_failed and not self._broken and (
            self.connection.mailbox is not None or self.away.is_set() or (
                self._failures > 0 and self._retry_at > time.time()))
    def leased(self) -> float:
        """1 while this replica holds the folder, for the metrics."""
        return 0.0 if self.away.is_set() else 1.0

    def gained(self) -> None:
        """This replica holds the folder now: a pass at once (mail may have waited)."""
        self.away.clear()
        self.poke()

    def lost(self) -> None:
        """Another replica works the folder now (or will): let go of it."""
        self.away.set()

    @property
    def unready(self) -> str:
        """The folder's name with its state when it is not ready, else nothing."""
        if self.ready:
            return ""
        return self.name + (" (auth_failed)" if self.auth_failed else
                            " (pass failed: internal error)" if self._broken else "")

    @property
    def stalled(self) -> float:
        """Seconds since the running pass last got on; 0 between passes."""
        at = self._progress_at
        return 0.0 if at is None else time.monotonic() - at

    @property
    def stuck(self) -> str:
        """The folder's name and how long it has stalled, when over its limit; else nothing."""
        stalled = self.stalled
        return f"{self.name} (no progress for {stalled:.0f} s)" if stalled > self.limit else ""

    def _beat(self) -> None:
        self._progress_at = time.monotonic()

    def poke(self) -> None:
        """New mail: run a pass now, or right after the one running."""
        with self._state:
            self._again = True
            self._announced = True
            if not self._running and self.job is not None:
                from apscheduler.jobstores.base import JobLookupError  # loaded by the service

                with suppress(JobLookupError):  # the scheduler is shutting down
                    self.job.modify(next_run_time=datetime.now(UTC))

    def run(self) -> int:
        """The scheduled job: a pass, and another while mail arrived during one."""
        with self._state:
            self._running = True
        try:
            while True:
                with self._state:
                    self._again = False
                self._beat()
                code = self._pass()
                with self._state:
                    if not self._again or self.context.stop.is_set():
                        self._running = False
                        return code
        finally:
            self._progress_at = None
            with self._state:
                self._running = False

    def _pass(self) -> int:
        if self._leases is not None and not self._leases.holds(
                (self.account.name, self.folder.name)):
            if not self.connection.shared:  # the account's other folders may still use it
                with self.connection.lock:
                    self._drop()
            return EX_OK  # another replica's folder, or none's until the leases are renewed
        if not self.connection.take(self, self._announced):
            return EX_OK  # the pass holding the connection runs ours next
        held = True
        try:
            code = self._pass_on_connection()
            while (queued := self.connection.next_or_release()) is not None:
                queued._pass_on_connection()
            held = False
            return code
        finally:
            if held:
                self.connection.lock.release()

    def _pass_on_connection(self) -> int:
        if time.time() < self._retry_at:
            return EX_OK  # waiting out a reconnect backoff
        with self._state:
            announced, self._announced = self._announced, False
        heard = functools.partial(self._heard, idle_missed(announced, self._idling_since,
                                                           time.monotonic()))
        # A kept connection may have died since the last pass: then one fresh try at once.
        for kept in (self.connection.mailbox is not None, False):
            try:
                code = folder_pass(self._connect(), self.account, self.folder, self.context, heard)
                self._broken = code == EX_SOFTWARE
                if code in (EX_OK, EX_TEMPFAIL):  # done, or done with some messages deferred
                    self.last_pass = time.time()
                return code
            except (ConnectionLost, LoginRefused) as exc:
                self._drop()
                if kept and isinstance(exc, ConnectionLost):
                    continue
                self._failures += 1
                delay = RECONNECT.delay(self._failures)
                self._retry_at = time.time() + delay
                self._set_auth_failed(isinstance(exc, AuthFailed))
                log_failure(exc, f"; trying again in {delay:.0f} s")
                return exc.exit_code
        raise AssertionError("unreachable")

    def _heard(self, missed: bool, report: PassReport) -> None:
        """Count a poll that found mail IDLE did not announce (``missed``, if it found any);
        say so once, at the second."""
        if not report.fresh:
            return
        if not missed:
            self._unannounced = 0
            return
        self._unannounced += 1
        if self._unannounced == _UNANNOUNCED:
            log.warning("%s: the server's IDLE did not announce new mail that a poll then "
                        "found (%d times): mail waits for the poll every %.0f s. On Cyrus run "
                        "idled (cyrus.conf START); on Courier set IMAP_ENHANCEDIDLE=1 (imapd); "
                        "a lower interval polls sooner", self.name, _UNANNOUNCED,
                        self.folder.interval)

    def _connect(self) -> Source:
        if self.connection.mailbox is None:
            self.connection.mailbox = open_source(self.account, self.tokens,
                                                  self.context.ledger,
                                                  self.context.config.accounts)
            if self._failures:
                self.context.metrics.reconnects.labels(self.account.name).inc()
                log.info("%s: connected again", self.name)
            self._failures, self._retry_at = 0, 0.0
            self._set_auth_failed(False)
        return self.connection.mailbox

    def _set_auth_failed(self, failed: bool) -> None:
        self.auth_failed = failed
        self.context.metrics.auth_failed.labels(self.account.name).set(int(failed))

    def _drop(self) -> None:
        self.connection.drop()

    def close(self) -> None:
        self.away.set()
        with self.connection.lock:
            self._drop()

    def watch(self) -> None:
        """The IDLE watcher, on a connection of its own, until the service stops."""
        Watcher([self]).run()


class Watcher:
    """IDLE on a connection of its own until the service stops: on the first of
    ``workers``' folders, or, with ``notify`` where the server has NOTIFY (RFC 5465), on all
    of them at once. A server without NOTIFY, or one that refuses it, leaves the others to
    their polls."""

    def __init__(self, workers: Sequence[FolderWorker], notify: bool = False) -> None:
        self.workers, self.first = workers, workers[0]
        self.notify = notify  # still to be tried: False once the server lacks or refused it

    def run(self) -> None:
        first = self.first
        stop, failures = first.context.stop, 0
        while not stop.is_set():
            if all(worker.away.is_set() for worker in self.workers):
                stop.wait(1)
                continue
            try:
                with Mailbox(first.account, first.tokens) as mailbox:
                    if not mailbox.has_idle:
                        if first.folder.idle:
                            log.warning("%s: the server has no IDLE: polling only", first.name)
                        return
                    heard = self._notify(mailbox)
                    if heard is None:
                        mailbox.select(first.folder.name, readonly=True)
                    if failures:
                        # Mail may have come while we were away.
                        first.context.metrics.reconnects.labels(first.account.name).inc()
                        for worker in self.workers if heard else [first]:
                            worker.poke()
                    failures = 0
                    if heard is None:
                        first._idling_since = time.monotonic()
                    try:  # with leases, until the folder is lost or the worker closed
                        mailbox.idle(first.away if first._leases and heard is None else stop,
                                     first.poke, on_status=heard)
                    finally:
                        first._idling_since = None
            except MailboxError as exc:
                failures += 1
                delay = RECONNECT.delay(failures)
                log.warning("%s: IDLE: %s; again in %.0f s", f"account {first.account.name} "
                            "(NOTIFY)" if self.notify else first.name, exc.reason, delay)
                stop.wait(delay)

    def _notify(self, mailbox: Mailbox) -> Callable[[str], None] | None:
        """NOTIFY SET for every folder, and what to do with the server's news of one; None
        where the server lacks NOTIFY or refuses it (said once: it is not asked again)."""
        if not self.notify:
            return None
        account, folders = self.first.account.name, [w.folder.name for w in self.workers]
        if mailbox.has_notify:
            try:
                names = mailbox.notify(folders)
            except CommandRefused as exc:
                log.warning("account %s: NOTIFY refused (%s): IDLE on %s; polling %s",
                            account, exc.reason, folders[0], ", ".join(folders[1:]))
            else:
                log.info("account %s: NOTIFY on %s", account, ", ".join(folders))
                by_name = dict(zip(names, self.workers, strict=True))
                return lambda name: by_name[name].poke() if name in by_name else None
        else:
            log.info("account %s: the server has no NOTIFY: IDLE on %s; polling %s",
                     account, folders[0], ", ".join(folders[1:]))
        self.notify = False
        return None


# IDLE in place this long before a poll: mail it found should have been announced.
IDLE_SETTLED = 5.0
# Polls that found unannounced mail before saying so: one may be mail arriving just then.
_UNANNOUNCED = 2


def idle_missed(announced: bool, idling_since: float | None, now: float) -> bool:
    """Whether a pass that found new mail shows the server's IDLE did not announce it."""
    return not announced and idling_since is not None and now - idling_since > IDLE_SETTLED


