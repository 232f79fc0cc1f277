"""Against Redmine's own tool and against Redmine's ceiling, on the real Redmine.

Debian's Redmine 5.0.4 (SQLite) served by Passenger with 2 processes, as Debian's package
recommends; the same N messages (default 500, from a member of the project, one in ten with a
200 KB attachment) each time, on a fresh copy of the database, in alternating rounds:
  - rake redmine:email:receive_imap (Redmine's own IMAP reader: one Ruby process, no HTTP)
  - imap-ingest run --once with the default (concurrency: auto) and concurrency at 1, 2, 3,
    4, 8; with BENCH_BASE=DIR, also the default of the imap-ingest tree in DIR ("auto base")
  - the ceiling: the same N form POSTs from a minimal client with 4 threads, 4 keep-alive
    connections, messages already in memory
  - the safe ceiling: the same client keeping the rule that never doubles an issue without
    an api_key (a message that may carry an attachment is posted alone, all of them in one
    row after the rest; a plain one refused among others is sent again once among others,
    then alone): the most any client can make without an api_key and never double an issue
Every run is checked: the number of issues Redmine created (more than N: doubled), the
messages not filed, and the 422s imap-ingest or the safe ceiling sent again ("sent again").

SQLite deadlocks two writers that both began reading (Redmine answers 422 "database is
locked"). By default the server is Debian's as it comes (stock SQLite): imap-ingest sends
such a 422 again before it counts (docs/concurrency.md), the ceiling client counts them as
refused, and the safe ceiling sends a plain message's again as imap-ingest does. With
``immediate`` the server begins every transaction IMMEDIATE (a writer waits for the other,
5 s at most), which is what a Redmine on SQLite needs before other clients can post
concurrently; with PostgreSQL or MySQL neither is needed.

Run: python -m bench.redmine_tools [N] [ROUNDS] [stock|immediate]   (500, 2, stock)
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import plot
from bench.common import (
    BASE,
    limits_over_time,
    message,
    rates,
    run_once,
    sent_again,
    submitted_over_time,
    timed_threads,
)
from imap_ingest.message import may_attach
from imap_ingest.trackers.redmine import Form, crlf
from tests.e2e import redmine as e2e
from tests.support.dovecot import Dovecot, ImapAccount
from tests.support.ingest_env import write_config

PROCESSES = 2
# "auto" is the default config and the fixed numbers are the same config with concurrency
# set; "auto, api_key" also has a lookup, so that a crowded 422 of a message with an
# attachment is looked up before it is sent again instead of that message posted alone.
CONCURRENCY: tuple[int | str, ...] = (
    "auto", "auto, api_key", *(("auto base",) if BASE else ()), 1, 2, 3, 4, 8)
IMMEDIATE = False
CEILING_THREADS = 4
SENDER = b"From: Alice Member <alice@example.org>"
TIMELINES: dict[str, list[tuple[float, int]]] = {}  # the last round's, by concurrency
LIMITS: dict[str, tuple[list[float], list[float]]] = {}  # auto's limit over the last round
Result = tuple[float, int, int, int]  # seconds, issues, messages not filed, sent again

def fill(imap: ImapAccount, raws: list[bytes]) -> None:
    with imap.client() as client:
        for raw in raws:
            client.append("INBOX", raw)


def rake(imap: ImapAccount, template: Path) -> Result:
    """Redmine's own reader, straight into a fresh copy of the database (no web server)."""
    directory = Path(tempfile.mkdtemp(prefix="bench-rake-"))
    database = directory / "db" / "redmine.sqlite3"
    e2e.write_instance(directory, database)
    shutil.copyfile(template, database)
    started = time.perf_counter()
    subprocess.run(
        [e2e.bundle(), "exec", "rake", "redmine:email:receive_imap", f"host={imap.host}",
         f"port={imap.port}", f"username={imap.username}", f"password={imap.password}",
         f"project={e2e.PROJECT}"],
        cwd=e2e.REDMINE_ROOT, env=e2e.ruby_env(directory, {}), check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    created = e2e.issue_count(database)
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed, created, 0, 0


def ours(imap: ImapAccount, url: str, database: Path, concurrency: int | str,
         tmp: Path) -> Result:
    # A fresh ledger each run: the last run's would rightly call these mails duplicates.
    state = Path(tempfile.mkdtemp(dir=tmp))
    path = write_config(state / "config.yaml", imap, url, key=e2e.MAIL_KEY,
                        folder={"project": e2e.PROJECT, "batch_size": 100},
                        target={"timeout": "120s"} | (
                            {"concurrency": concurrency} if isinstance(concurrency, int)
                            else {}) | (
                            {"api_key": e2e.ADMIN_KEY} if "api_key" in str(concurrency)
                            else {}),
                        state_dir=str(state))
    with submitted_over_time(state / "ledger.sqlite3") as samples:
        elapsed, log, _ = run_once(path, base=concurrency == "auto base")
    TIMELINES[str(concurrency)] = samples
    if isinstance(concurrency, str):
        LIMITS[concurrency] = limits_over_time(log)
    # Refused mail is kept there, marked; mail in doubt is moved to Quarantine.
    failed = len(imap.messages("INBOX")) + sum(
        len(imap.messages(folder)) for folder in imap.folders() if folder != "INBOX")
    return elapsed, e2e.issue_count(database), failed, sent_again(log)


Post = Callable[[bytes], int]  # a form's body -> the status of Redmine's answer


def clients(raws: list[bytes], url: str, database: Path,
            deliver: Callable[[Post, bool, bytes], tuple[bool, bool]]) -> Result:
    """The least client work: forms built beforehand, taken in folder order by
    CEILING_THREADS threads, each with its keep-alive connection. ``deliver(post, alone,
    form)`` (alone: the message may carry an attachment) says (filed, sent again)."""
    port = int(url.rsplit(":", 1)[1])
    forms: queue.SimpleQueue[tuple[bool, bytes]] = queue.SimpleQueue()
    for raw in raws:
        forms.put((may_attach(raw), bytes(Form({"key": e2e.MAIL_KEY, "email": crlf(raw),
                                                  "issue[project]": e2e.PROJECT}))))
    refused: list[bool] = []
    again: list[bool] = []

    def send() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def post(body: bytes) -> int:
            connection.request("POST", "/mail_handler", body, {
                "Content-Type": "application/x-www-form-urlencoded"})
            answer = connection.getresponse()
            answer.read()
            return answer.status

        while True:
            try:
                alone, body = forms.get_nowait()
            except queue.Empty:
                break
            filed, retried = deliver(post, alone, body)
            if not filed:
                refused.append(True)
            if retried:
                again.append(True)
        connection.close()

    elapsed = timed_threads(send, CEILING_THREADS)
    return elapsed, e2e.issue_count(database), len(refused), len(again)


def ceiling(raws: list[bytes], url: str, database: Path) -> Result:
    """Every message posted once, among others; a refused one is lost."""
    return clients(raws, url, database, lambda post, _, body: (post(body) == 201, False))


class Gate:
    """Posts among others share it; a post alone waits until none is in flight, and none
    starts until it is done (nor while it waits: it is not starved)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._in_flight = 0
        self._alone = False  # a post alone is waiting or in flight

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone)
            self._alone = True
            self._changed.wait_for(lambda: self._in_flight == 0)
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._changed.notify_all()


def safe_ceiling(raws: list[bytes], url: str, database: Path) -> Result:
    """The most a client can make keeping the rule that never doubles an issue without an
    api_key: a message that may carry an attachment is posted alone (among others it can
    make its issue and still be refused), and all of them in one row after the rest (one
    wait for the posts in flight to run out, the fewest any order can have); a plain one
    refused among others is sent again once among others, then alone."""
    gate = Gate()

    def deliver(post: Post, alone: bool, body: bytes) -> tuple[bool, bool]:
        for attempt in range(0 if alone else 2):
            with gate.shared():
                if post(body) == 201:
                    return True, attempt > 0
        with gate.alone():
            return post(body) == 201, not alone

    return clients(sorted(raws, key=may_attach), url, database, deliver)


def main(count: int, rounds: int) -> None:
    template, _ = e2e.ensure_template()
    rng = random.Random(3)
    raws = [message(i, rng).replace(f"From: User {i} <user{i}@example.org>".encode(), SENDER, 1)
            for i in range(count)]
    print(f"{count} messages ({sum(map(len, raws)) / count / 1024:.1f} KiB on average); "
          f"Redmine {e2e.require_installed()} on SQLite, Passenger with {PROCESSES} processes")
    runs: dict[str, list[Result]] = {}
    print(f"load average {load()}")
    with Dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        def record(name: str, run: Callable[[ImapAccount], Result]) -> None:
            imap = dovecot.account()
            imap.create("INBOX")
            fill(imap, raws)
            before = load()
            runs.setdefault(name, []).append(run(imap))
            elapsed, created, failed, retried = runs[name][-1]
            print(f"  {name:<34} {count / elapsed:6.1f} msg/s  {created} issues, "
                  f"{failed} refused, {retried} sent again; load {before} -> {load()}",
                  flush=True)

        for round_ in range(rounds):
            print(f"round {round_ + 1}")
            record("rake receive_imap", lambda imap: rake(imap, template))
            for concurrency in CONCURRENCY:
                def run(imap: ImapAccount, concurrency: int | str = concurrency) -> Result:
                    with e2e.passenger(template, PROCESSES, IMMEDIATE) as (url, database):
                        return ours(imap, url, database, concurrency, Path(tmp))
                record(f"imap-ingest concurrency {concurrency}", run)

            for name, client in (("ceiling", ceiling), ("safe ceiling", safe_ceiling)):
                def top(imap: ImapAccount, client: Callable[
                        [list[bytes], str, Path], Result] = client) -> Result:
                    with e2e.passenger(template, PROCESSES, IMMEDIATE) as (url, database):
                        return client(raws, url, database)
                record(f"{name} ({CEILING_THREADS} threads)", top)
    print(f"load average {load()}")
    summarise(count, runs)


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def summarise(count: int, runs: dict[str, list[Result]]) -> None:
    rate = {name: count / statistics.median(elapsed for elapsed, *_ in results)
            for name, results in runs.items()}
    best = rate[f"ceiling ({CEILING_THREADS} threads)"]
    tool = rate["rake receive_imap"]
    print(f"\nmedian of {len(next(iter(runs.values())))} rounds:")
    fixed = max(value for name, value in rate.items()
                if name.removeprefix("imap-ingest concurrency ").isdigit())
    print(f"  {'':<34} {'msg/s':>6}  {'of ceiling':>10}  {'of best fixed':>13}  {'vs rake':>7}"
          "  issues/refused/sent again")
    for name, value in rate.items():
        outcomes = ", ".join(f"{created}/{failed}/{retried}"
                             for _, created, failed, retried in runs[name])
        print(f"  {name:<34} {value:6.1f}  {value / best:10.0%}  {value / fixed:13.0%}  "
              f"{value / tool:6.2f}x  {outcomes}")
    levels = [c for c in CONCURRENCY if isinstance(c, int)]
    plot.line("redmine-throughput.png", f"Redmine 5.0.4 (SQLite, Passenger, {PROCESSES} "
              f"processes), {count} messages", "concurrency (requests in flight)", "messages/s", {
                  "imap-ingest run --once": (
                      [float(c) for c in levels],
                      [rate[f"imap-ingest concurrency {c}"] for c in levels]),
                  **{f"{name} ({CEILING_THREADS} threads)": (
                      [1.0, float(levels[-1])], [rate[f"{name} ({CEILING_THREADS} threads)"]] * 2)
                     for name in ("ceiling", "safe ceiling")},
                  "rake receive_imap": ([1.0, float(levels[-1])], [tool, tool]),
              })
    (plot.DOCS / "redmine-throughput.json").write_text(json.dumps(rate, indent=1) + "\n")
    plot.timeline("redmine-auto.png", f"Redmine (stock SQLite, Passenger x{PROCESSES}): "
                  "throughput over a run",
                  {f"concurrency: {name}": rates(samples) for name, samples in TIMELINES.items()
                   if name in ("auto", "auto, api_key", "auto base", "2", "4")},
                  {f"{name}: limit": steps for name, steps in LIMITS.items()
                   if name != "auto base"})  # an older tree does not log its limit


if __name__ == "__main__":
    IMMEDIATE = sys.argv[3:4] == ["immediate"]
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500,
         int(sys.argv[2]) if len(sys.argv) > 2 else 2)
