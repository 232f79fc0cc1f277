"""Replicas sharing a PostgreSQL ledger: throughput over a backlog, and failover time.

For 1, 2 and 3 replicas (`imap-ingest run` processes): 100 folders with a backlog of
PER_FOLDER messages each in the suite's dovecot; a local Redmine stand-in answers 201 after
DELAY seconds (a tracker's cost). Measured: the time until every message is in (throughput),
then, with two or more, one replica is SIGKILLed, one new message lands in every folder,
and the time until all of them are in (failover: the lease running out, the take-over and
the passes). The machine's load average is printed with the figures.
Run: python -m bench.replicas [PER_FOLDER] [DELAY]     (default 5 and 0.02)
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.support.dovecot import Dovecot
from tests.support.postgres import Postgres
from tests.support.redmine_server import FakeRedmine
from tests.support.replicas import Replicas, fill, message_id, write_replica_config

FOLDERS = [f"B{i:03d}" for i in range(100)]
TTL = 5.0


def _received(redmine: FakeRedmine) -> set[str]:
    return {message_id(raw) for raw in redmine.emails}


def _wait(redmine: FakeRedmine, wanted: set[str], limit: float = 600) -> float:
    started = time.monotonic()
    while not wanted <= _received(redmine):
        if time.monotonic() - started > limit:
            raise SystemExit(f"only {len(wanted & _received(redmine))} of {len(wanted)} in")
        time.sleep(0.1)
    return time.monotonic() - started


def run(count: int, dovecot: Dovecot, postgres: Postgres, per_folder: int,
        delay: float) -> None:
    imap = dovecot.account()
    redmine = FakeRedmine()
    redmine.answer = lambda request: (201, b"", delay)
    for folder in FOLDERS:
        imap.create(folder)
    backlog = {message_id(raw) for raw in fill(imap, FOLDERS, per_folder, "backlog")}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_replica_config(Path(tmp) / "config.yaml", imap, redmine.url,
                                      postgres.database(), FOLDERS, TTL, 1.0)
        group = Replicas(config, postgres.password)
        try:
            for i in range(count):
                group.start(f"r{i + 1}")
            took = _wait(redmine, backlog)
            line = (f"{count} replica(s): {len(backlog)} messages in {took:.1f} s, "
                    f"{len(backlog) / took:.1f} msg/s")
            if count > 1:
                group.signal("r1", signal.SIGKILL)
                fresh = {message_id(raw) for raw in fill(imap, FOLDERS, 1, "failover")}
                line += f"; failover (SIGKILL, lease_ttl {TTL:.0f} s): every folder again " \
                        f"in {_wait(redmine, fresh):.1f} s"
            print(line, flush=True)
        finally:
            group.stop_all()
            redmine.close()


def main() -> None:
    per_folder = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
    with Dovecot() as dovecot, Postgres() as postgres:
        for count in (1, 2, 3):
            run(count, dovecot, postgres, per_folder, delay)
    one, five, fifteen = os.getloadavg()
    print(f"load average: {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
