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

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .alerts import Alerter
from .budget import budget_of, plan
from .config import Account, Config, Folder, load
from .console import ConsoleServer
from .errors import (
    EX_OK,
    IngestError,
    LoginRefused,
    MailboxError,
    worst,
)
from .flow import Flow, FlowCollector, Worker, assess
from .health import StatusServer
from .ingest import Context, PassReport
from .ledger import open_ledger
from .logs import hide
from .metrics import Metrics
from .oauth import Tokens
from .source import Source, open_source
from .trackers import Tracker, open_tracker
from .worker import Connection, FolderWorker, Watcher, folder_pass, leased_here, log_failure

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from .ledger.leases import Leases

log = logging.getLogger(__name__)

class Service:
    """The trackers, ledger and metrics of one configuration, and the passes that use them."""

    def __init__(self, config: Config, retry_now: bool = False, cautions: bool = True) -> None:
        self.config = config
        if cautions:  # at each start and reload; by the parent of worker processes
            log_cautions(config)
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
        plans = [plan(account.folders, budget_of(account), account.idles)
                 for account in self.config.accounts]
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
        leases = self.once_leases()
        with signals(self.stop):
            for account in self.config.accounts:
                codes += self._account_once(account, context, leases)
        return worst(*codes)

    def once_leases(self) -> Leases | None:
        """For --once, with leases: several hosts may run --once at the same time, and each
        folder goes to the one that takes its lease first, kept (renewed) only for its pass."""
        leases = self.ledger.lease(self.replica, self.folders(), self.config.ledger.lease_ttl,
                                   balance=False)
        if leases is not None:
            leases.start()
        return leases

    def _account_once(self, account: Account, context: Context,
                      leases: Leases | None) -> list[int]:
        """Each folder of ``account`` once, on one connection."""
        codes: list[int] = []
        run = AccountRun(self, account, context, leases)
        try:
            for folder in account.folders:
                if self.stop.is_set() or run.over:
                    break
                if (code := run.folder(folder)) is not None:
                    codes.append(code)
        finally:
            run.close()
        return codes

    def start(self, scheduler: BackgroundScheduler) -> None:
        """Add a worker per folder to the scheduler, and an IDLE watcher where wanted and
        the account's connection budget allows; with leases, each works only while this
        replica holds its folder."""
        from apscheduler.triggers.interval import IntervalTrigger

        context = self.context()
        leases = self.ledger.lease(self.replica, self.folders(), self.config.ledger.lease_ttl,
                                   balance=True)
        for account in self.config.accounts:
            tokens = self.tokens.get(account.name)
            fitted = plan(account.folders, budget_of(account), account.idles, notify=True)
            if fitted.shared:  # not every folder has a connection of its own
                log.info("account %s: %d connection(s) at most: %s", account.name,
                         budget_of(account), fitted.summary("IDLE on {}; polling {}"))
            shared = Connection(shared=True) if fitted.shared else None
            notified: list[FolderWorker] = []
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
                elif folder.name in fitted.notified:
                    notified.append(worker)
            if notified:
                threading.Thread(target=Watcher(notified, notify=True).run,
                                 name=f"notify {account.name}", daemon=True).start()
        if leases is not None:
            by_folder = {(w.account.name, w.folder.name): w for w in self.workers}
            for worker in self.workers:
                self.metrics.leased.labels(worker.account.name, worker.folder.name,
                                           self.replica).set_function(worker.leased)
            leases.on_gain = lambda folder: by_folder[folder].gained()
            leases.on_loss = lambda folder: by_folder[folder].lost()
            leases.start()
        self.alerter.start()


class AccountRun:
    """An account's folders in a --once run, on one connection: made when first needed, and
    again for the next folder after a lost one. One that cannot be made, or a refused
    login, ends the account (``over``)."""

    def __init__(self, service: Service, account: Account, context: Context,
                 leases: Leases | None) -> None:
        self.service, self.account, self.context, self.leases = service, account, context, leases
        self.mailbox: Source | None = None
        self.over = False

    def folder(self, folder: Folder, done: Callable[[PassReport], None] | None = None
               ) -> int | None:
        """One pass over ``folder``, its report given to ``done``: its exit code; None when
        another replica has it."""
        if not leased_here(self.leases, self.account, folder):
            return None
        service = self.service
        try:
            self.mailbox = self.mailbox or open_source(
                self.account, service.tokens.get(self.account.name), service.ledger,
                service.config.accounts)
        except MailboxError as exc:
            log_failure(exc)
            self.over = True
            return exc.exit_code
        try:
            return folder_pass(self.mailbox, self.account, folder, self.context, done)
        except MailboxError as exc:  # the session is gone (folder_pass keeps the rest)
            log_failure(exc)
            self.close()
            self.over = isinstance(exc, LoginRefused)
            return exc.exit_code

    def close(self) -> None:
        if self.mailbox is not None:
            self.mailbox.close()
            self.mailbox = None


def log_cautions(config: Config) -> None:
    """Say what the configuration lets cross the network unprotected."""
    for key, caution in config.cautions():
        log.warning("%s: %s", key, caution)


def replica_id(config: Config) -> str:
    """This process's name among the replicas: ledger.replica or the host name, and the pid."""
    return f"{config.ledger.replica or socket.gethostname()}:{os.getpid()}"


def serve(path: str | os.PathLike[str], config: Config, retry_now: bool = False) -> int:
    """Run as a service until SIGTERM or SIGINT; SIGHUP reloads ``path``."""
    stop, reload = threading.Event(), threading.Event()
    status = StatusServer(config.http) if config.http else None
    console = ConsoleServer(config.console) if config.console else None
    # APScheduler only here: run --once starts without it.
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    with signals(stop, reload):
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
def signals(stop: threading.Event,
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
