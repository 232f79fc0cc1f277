"""Running passes: once over every folder (for cron), or as a service until a signal.

As a service, each folder has a worker: one APScheduler interval job (never two passes of a
folder at once, missed runs coalesced) over a connection kept between passes, and, where
the server has IDLE, a watcher on a second connection that starts a pass as soon as mail
arrives. SIGTERM/SIGINT finish the message in hand; SIGHUP reloads the configuration.

Every step of a pass is bounded (IMAP commands and HTTP requests by their timeouts); a
pass that still makes no progress for longer than ``stall_limit`` is a bug or a hang no
bound foresaw, and /healthz reports it so that the pod is restarted.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .alerts import Alerter
from .backoff import Backoff
from .budget import budget_of, plan
from .config import Account, Config, Folder, HttpTarget, load
from .console import ConsoleServer
from .errors import (
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    AuthFailed,
    ConnectionLost,
    IngestError,
    LoginRefused,
    MailboxError,
    worst,
)
from .flow import Flow, FlowCollector, Worker, assess
from .health import StatusServer
from .ingest import Context, PassReport, ingest
from .ledger import open_ledger
from .locks import folder_lock
from .logs import event, hide
from .mailbox import Mailbox
from .metrics import Metrics
from .oauth import Tokens
from .trackers import Tracker, open_tracker

if TYPE_CHECKING:
    from .ledger.leases import Leases

log = logging.getLogger(__name__)

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


class Service:
    """The trackers, ledger and metrics of one configuration, and the passes that use them."""

    def __init__(self, config: Config, retry_now: bool = False) -> None:
        self.config = config
        for key, caution in config.cautions():  # at each start and reload
            log.warning("%s: %s", key, caution)
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.ledger = open_ledger(config)
        self.replica = replica_id(config)
        self.trackers: dict[str, Tracker] = {
            name: open_tracker(target) for name, target in config.targets.items()
        }
        self.retry_now = retry_now
        self.workers: list[FolderWorker] = []
        # One token cache per account: its folders' connections log in with the same token.
        self.tokens = {account.name: Tokens(account) for account in config.accounts
                       if account.uses_token}
        self.metrics.stuck_workers.set_function(lambda: len(self.stuck()))
        self.started = time.time()
        self.alerter = Alerter(config.alert, self.flow, self.stop)
        self.metrics.registry.register(FlowCollector(self.flow))

    @property
    def pass_connections(self) -> int:
        """How many connections the service's passes hold at most."""
        plans = [plan(account.folders, budget_of(account)) for account in self.config.accounts]
        return sum(1 if fitted.shared else len(fitted.pushed) + len(fitted.polled)
                   for fitted in plans)

    def context(self, progress: bool = False) -> Context:
        return Context(self.config, self.trackers, self.ledger, self.stop, self.metrics,
                       self.retry_now, progress, observe=self.alerter.observe,
                       tripped=self.alerter.tripped)

    def flow(self) -> Flow:
        """Every folder's flow now, from the ledger and the workers."""
        # Another replica's folders are its to report (and to alert on).
        workers = [Worker(w.account.name, w.folder.name, w.ready, w.auth_failed, w.last_pass)
                   for w in self.workers if not w.away.is_set()]
        flow = assess(workers, self.ledger.pending(), self.ledger.targets(),
                      self.config.alert.stalled_after, time.time(), self.started)
        if self.ledger.leases is None:
            return flow
        return replace(flow, replica=self.replica, leases={
            f"{account}/{folder}": holder for account, folder, holder, _ in self.ledger.holders()})

    def not_ready(self) -> list[str]:
        """The folders not ready for /readyz, each with its state where it has one."""
        return [state for worker in self.workers if (state := worker.unready)]

    def stuck(self) -> list[str]:
        """The folders whose pass made no progress within its limit, for /healthz."""
        return [state for worker in self.workers if (state := worker.stuck)]

    def metrics_text(self) -> bytes:
        return self.metrics.text()

    def folders(self) -> list[tuple[str, str]]:
        return [(account.name, folder.name) for account in self.config.accounts
                for folder in account.folders]

    def close(self) -> None:
        if self.ledger.leases is not None:
            self.ledger.leases.close()  # first: the other replicas take over at once
        for worker in self.workers:
            worker.close()
        for tracker in self.trackers.values():
            tracker.close()
        self.ledger.close()

    def run_once(self) -> int:
        """One pass over every folder of every account, one connection per account."""
        codes = [EX_OK]
        context = self.context(progress=True)
        # Several hosts may run --once at the same time: each folder goes to the one that
        # takes its lease first, kept (renewed) only for its pass.
        leases = self.ledger.lease(self.replica, self.folders(), self.config.ledger.lease_ttl,
                                   balance=False)
        if leases is not None:
            leases.start()
        with _signals(self.stop):
            for account in self.config.accounts:
                codes += self._account_once(account, context, leases)
        return worst(*codes)

    def _account_once(self, account: Account, context: Context,
                      leases: Leases | None) -> list[int]:
        """Each folder of ``account`` once. A connection lost during a folder's pass is made
        again for the next folder; one that cannot be made, or a refused login, ends the
        account."""
        codes: list[int] = []
        mailbox: Mailbox | None = None
        try:
            for folder in account.folders:
                if self.stop.is_set():
                    break
                if not _taken(leases, account, folder):
                    continue
                try:
                    mailbox = mailbox or Mailbox(account, self.tokens.get(account.name))
                except MailboxError as exc:
                    log_failure(exc)
                    return [*codes, exc.exit_code]
                try:
                    codes.append(_pass(mailbox, account, folder, context))
                except MailboxError as exc:  # the session is gone (_pass keeps the rest)
                    log_failure(exc)
                    codes.append(exc.exit_code)
                    mailbox.close()
                    mailbox = None
                    if isinstance(exc, LoginRefused):
                        return codes
        finally:
            if mailbox is not None:
                mailbox.close()
        return codes

    def start(self, scheduler: BackgroundScheduler) -> None:
        """Add a worker per folder to the scheduler, and an IDLE watcher where wanted and
        the account's connection budget allows; with leases, each works only while this
        replica holds its folder."""
        context = self.context()
        leases = self.ledger.lease(self.replica, self.folders(), self.config.ledger.lease_ttl,
                                   balance=True)
        for account in self.config.accounts:
            tokens = self.tokens.get(account.name)
            fitted = plan(account.folders, budget_of(account))
            if fitted.shared:  # not every folder has a connection of its own
                log.info("account %s: %d connection(s) at most: IDLE on %s; polling %s",
                         account.name, budget_of(account), ", ".join(fitted.pushed) or "none",
                         ", ".join(fitted.polled))
            shared = Connection(shared=True) if fitted.shared else None
            for folder in account.folders:
                worker = FolderWorker(account, folder, context, tokens,
                                      shared or Connection())
                worker.job = scheduler.add_job(
                    worker.run, IntervalTrigger(seconds=folder.interval),
                    id=worker.name, name=worker.name, max_instances=1, coalesce=True,
                    # A pass that starts late is still worth running, up to one interval late.
                    misfire_grace_time=max(1, int(folder.interval)),
                    next_run_time=datetime.now(UTC))
                self.workers.append(worker)
                if folder.name in fitted.pushed:
                    threading.Thread(target=worker.watch, name=f"idle {worker.name}",
                                     daemon=True).start()
        if leases is not None:
            by_folder = {(w.account.name, w.folder.name): w for w in self.workers}
            for worker in self.workers:
                self.metrics.leased.labels(worker.account.name, worker.folder.name,
                                           self.replica).set_function(worker.leased)
            leases.on_gain = lambda folder: by_folder[folder].gained()
            leases.on_loss = lambda folder: by_folder[folder].lost()
            leases.start()
        self.alerter.start()


def log_failure(exc: MailboxError, then: str = "") -> None:
    """Log a session that failed; auth_failed is a field of its own, for alerts to match."""
    event(log, logging.ERROR, f"{exc}{then}", account=exc.account,
          state=exc.state if isinstance(exc, AuthFailed) else None)


def replica_id(config: Config) -> str:
    """This process's name among the replicas: ledger.replica or the host name, and the pid."""
    return f"{config.ledger.replica or socket.gethostname()}:{os.getpid()}"


def _taken(leases: Leases | None, account: Account, folder: Folder) -> bool:
    """For --once: whether this process got the folder (always, without leases)."""
    if leases is None or leases.acquire((account.name, folder.name)):
        return True
    log.info("%s/%s: another replica is working it; leaving it alone", account.name,
             folder.name)
    return False


def _pass(mailbox: Mailbox, account: Account, folder: Folder, context: Context,
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
        self.mailbox: Mailbox | None = None
        self._guard = threading.Lock()
        self._queued: dict[FolderWorker, None] = {}  # in order, each once

    def take(self, worker: FolderWorker) -> bool:
        """The connection for ``worker``'s pass now, or False: queued for the holder."""
        with self._guard:
            if self.lock.acquire(blocking=False):
                return True
            self._queued[worker] = None
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
        if not self.connection.take(self):
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
                code = _pass(self._connect(), self.account, self.folder, self.context, heard)
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

    def _connect(self) -> Mailbox:
        if self.connection.mailbox is None:
            self.connection.mailbox = Mailbox(self.account, self.tokens)
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
        stop, failures = self.context.stop, 0
        while not stop.is_set():
            if self.away.is_set():
                stop.wait(1)
                continue
            try:
                with Mailbox(self.account, self.tokens) as mailbox:
                    if not mailbox.has_idle:
                        if self.folder.idle:
                            log.warning("%s: the server has no IDLE: polling only", self.name)
                        return
                    mailbox.select(self.folder.name, readonly=True)
                    if failures:
                        # Mail may have come while we were away.
                        self.context.metrics.reconnects.labels(self.account.name).inc()
                        self.poke()
                    failures = 0
                    self._idling_since = time.monotonic()
                    try:  # with leases, until the folder is lost or the worker closed
                        mailbox.idle(self.away if self._leases else stop, self.poke)
                    finally:
                        self._idling_since = None
            except MailboxError as exc:
                failures += 1
                delay = RECONNECT.delay(failures)
                log.warning("%s: IDLE: %s; again in %.0f s", self.name, exc.reason, delay)
                stop.wait(delay)


# IDLE in place this long before a poll: mail it found should have been announced.
IDLE_SETTLED = 5.0
# Polls that found unannounced mail before saying so: one may be mail arriving just then.
_UNANNOUNCED = 2


def idle_missed(announced: bool, idling_since: float | None, now: float) -> bool:
    """Whether a pass that found new mail shows the server's IDLE did not announce it."""
    return not announced and idling_since is not None and now - idling_since > IDLE_SETTLED


def serve(path: str | os.PathLike[str], config: Config, retry_now: bool = False) -> int:
    """Run as a service until SIGTERM or SIGINT; SIGHUP reloads ``path``."""
    stop, reload = threading.Event(), threading.Event()
    status = StatusServer(config.http) if config.http else None
    console = ConsoleServer(config.console) if config.console else None
    with _signals(stop, reload):
        while True:
            service = Service(config, retry_now)
            # A thread per pass connection: a pass waiting for its account's shared
            # connection must not hold up the other accounts' (or a pushed folder's) passes;
            # with replicas a failover hands one replica many folders at once.
            scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(
                max(10, service.pass_connections))})
            service.start(scheduler)
            scheduler.start()
            if status:
                status.serve(service)
            if console:
                console.serve(service)
            log.info("watching %d folder(s); SIGTERM or Ctrl-C stops, SIGHUP reloads",
                     len(service.workers))
            config = _wait(path, config, stop, reload)
            service.stop.set()
            _shut_down(scheduler, service, service.config.shutdown_grace)
            hide(config.secrets())
            if stop.is_set():
                if status:
                    status.close()
                if console:
                    console.close()
                return EX_OK
            log.info("configuration reloaded from %s", path)


def _wait(path: str | os.PathLike[str], config: Config, stop: threading.Event,
          reload: threading.Event) -> Config:
    """Wait for a stop, or for a reload with a valid configuration (returned)."""
    while not stop.is_set():
        if reload.wait(0.5):
            reload.clear()
            try:
                new = load(path)
            except IngestError as exc:
                log.error("reload refused, the running configuration stays: %s", exc)
                continue
            # Both sets while the old service finishes its messages; serve() drops the old.
            hide([*config.secrets(), *new.secrets()])
            return new
    return config


def _shut_down(scheduler: BackgroundScheduler, service: Service, grace: float) -> None:
    """Let passes finish the message in hand, for at most ``grace`` seconds."""
    log.info("stopping: finishing the messages in hand (at most %.0f s)", grace)
    done = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
    done.start()
    done.join(grace)
    if done.is_alive():
        # The ledger has the message in hand as "submitting": the next start deals with it.
        log.error("a pass did not finish within %.0f s; exiting anyway", grace)
        logging.shutdown()
        os._exit(EX_OK)
    service.close()


@contextmanager
def _signals(stop: threading.Event,
             reload: threading.Event | None = None) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop``; SIGHUP sets ``reload``."""
    def handler(signum: int, _frame: object) -> None:
        log.info("%s received", signal.Signals(signum).name)
        (reload if signum == signal.SIGHUP and reload is not None else stop).set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if reload else [])
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
