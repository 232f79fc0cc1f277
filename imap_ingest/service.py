"""Running passes: once over every folder (for cron), or on a schedule until a signal."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .config import Account, Config, Folder
from .errors import EX_OK, IngestError, MailboxError, worst
from .ingest import ingest
from .ledger import Ledger
from .locks import folder_lock
from .mailbox import Mailbox
from .trackers import Tracker, open_tracker

log = logging.getLogger(__name__)


class Service:
    """The trackers of one configuration and the passes that use them."""

    def __init__(self, config: Config, retry_now: bool = False) -> None:
        self.config = config
        self.retry_now = retry_now
        self.stop = threading.Event()
        self.ledger = Ledger(config.state_dir / "ledger.sqlite3")
        self.trackers: dict[str, Tracker] = {
            name: open_tracker(target) for name, target in config.targets.items()
        }

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        self.ledger.close()

    def run_folders(self, account: Account, folders: Sequence[Folder]) -> int:
        """One pass over each of ``folders`` on one connection; the worst exit code."""
        codes = [EX_OK]
        try:
            with Mailbox(account) as mailbox:
                for folder in folders:
                    if self.stop.is_set():
                        break
                    try:
                        with folder_lock(self.config.state_dir, account.name, folder.name):
                            report = ingest(mailbox, folder, self.config, self.trackers,
                                            self.ledger, self.stop, self.retry_now)
                        codes.append(report.exit_code)
                    except IngestError as exc:
                        if isinstance(exc, MailboxError) and exc.folder is None:
                            raise  # the session itself is gone: no other folder will work
                        log.error("%s", exc)
                        codes.append(exc.exit_code)
        except MailboxError as exc:
            log.error("%s", exc)
            codes.append(exc.exit_code)
        return worst(*codes)

    def run_once(self) -> int:
        """One pass over every folder of every account."""
        with _signals_set(self.stop):
            return worst(*(self.run_folders(account, account.folders)
                           for account in self.config.accounts if not self.stop.is_set()))

    def run_forever(self) -> int:
        """Poll each folder on its interval until SIGTERM or SIGINT."""
        folders = [(a, f) for a in self.config.accounts for f in a.folders]
        scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True})
        for account, folder in folders:
            scheduler.add_job(
                self.run_folders, IntervalTrigger(seconds=folder.interval),
                args=(account, [folder]), id=f"{account.name}/{folder.name}",
                name=f"{account.name}/{folder.name}",
                # A pass that starts late is still worth running, up to one interval late.
                misfire_grace_time=max(1, int(folder.interval)),
                next_run_time=datetime.now(UTC),
            )
        with _signals_set(self.stop):
            scheduler.start()
            log.info("polling %d folder(s); stop with SIGTERM or Ctrl-C", len(folders))
            self.stop.wait()
            log.info("stopping: finishing the messages in hand")
            scheduler.shutdown(wait=True)
        return EX_OK


@contextmanager
def _signals_set(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop``: passes finish the message in hand, then end."""
    def handler(signum: int, _frame: object) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
