"""Shared pieces of the benchmarks: realistic messages, the sink process, a timer."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from tests.support.ingest_env import ROOT

WORDS = ("printer", "network", "account", "password", "laptop", "server", "access", "folder",
         "request", "please", "invoice", "update", "error", "screen", "meeting", "calendar",
         "license", "backup", "restore", "urgent")


def message(i: int, rng: random.Random) -> bytes:
    """2-20 KB of text; one in ten also carries a 200 KB attachment."""
    words = rng.randint(300, 3000)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    lines = "\r\n".join(text[k:k + 76] for k in range(0, len(text), 76))
    head = (f"From: User {i} <user{i}@example.org>\r\nTo: support@example.org\r\n"
            f"Subject: Request {i}: {rng.choice(WORDS)} {rng.choice(WORDS)}\r\n"
            f"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench-{i}@example.org>\r\n"
            "MIME-Version: 1.0\r\n")
    if i % 10:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + lines).encode()
    attachment = base64.encodebytes(rng.randbytes(150_000)).replace(b"\n", b"\r\n")
    return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + lines + "\r\n--b\r\n"
            "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="scan.pdf"\r\n\r\n').encode() + (
        attachment + b"--b--\r\n")


@contextmanager
def sink(status: int = 201, body: str = "") -> Iterator[tuple[str, list[int]]]:
    """The zero-cost tracker in its own process: (url, [requests answered] once stopped)."""
    process = subprocess.Popen([sys.executable, "-m", "bench.sink", str(status), body],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    answered: list[int] = []
    try:
        yield f"http://127.0.0.1:{port}", answered
    finally:
        process.terminate()
        answered.append(int(process.stdout.read().strip() or 0))
        process.wait()


def timed_threads(work: Callable[[], None], count: int) -> float:
    """Seconds for ``count`` threads running ``work`` until all have finished."""
    threads = [threading.Thread(target=work) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


@contextmanager
def submitted_over_time(ledger: Path, every: float = 0.5) -> Iterator[list[tuple[float, int]]]:
    """(seconds since the start, messages the ledger records as submitted) every ``every``
    seconds while the block runs: how fast a run went, moment by moment. Read-only reads of
    the ledger (WAL: they never hold up its writer)."""
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not done.wait(every):
            try:
                with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1) as db:
                    row = db.execute("SELECT count(*) FROM messages WHERE outcome = "
                                     "'submitted'").fetchone()
            except sqlite3.Error:
                continue  # not made yet, or busy migrating
            samples.append((time.perf_counter() - started, int(row[0])))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def rates(samples: list[tuple[float, int]], window: float = 2.0) -> tuple[list[float],
                                                                          list[float]]:
    """Messages/s over the ``window`` seconds before each of ``samples`` (from
    submitted_over_time): single samples jump with each answer."""
    times, values = [], []
    first = 0
    for t, n in samples:
        while samples[first][0] < t - window:
            first += 1
        t0, n0 = samples[first]
        if t > t0:
            times.append(t)
            values.append((n - n0) / (t - t0))
    return times, values


# BENCH_BASE=DIR: also run the default (auto) from the imap-ingest tree in DIR (say, main
# exported with git archive), beside this one, in the same run.
BASE = os.environ.get("BENCH_BASE")


def run_once(config: Path, base: bool = False) -> tuple[float, str, int]:
    """``imap-ingest run --once`` (this tree's, or BASE's): its seconds, its log (JSON) and
    its exit status."""
    root = Path(BASE) if base and BASE else ROOT
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "imap_ingest", "run", "--once", "--log-format",
                           "json", "-c", str(config)], cwd=root, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(root)}, check=False)
    return time.perf_counter() - started, done.stderr, done.returncode


def log_events(log: str) -> Iterator[tuple[float, str]]:
    """(time, message) of each JSON log line."""
    for line in log.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            yield datetime.fromisoformat(entry["time"]).timestamp(), entry["message"]


def limits_over_time(log: str) -> tuple[list[float], list[float]]:
    """The auto limit from the log's "N requests at once (was M ...)", as a step line from
    the first log line's time; empty before the limiter logged (older trees)."""
    events = list(log_events(log))
    if not events:
        return [], []
    start, times, values = events[0][0], [0.0], [1.0]
    for at, text in events:
        if found := re.search(r": (\d+) requests at once \(was (\d+)", text):
            times += [at - start, at - start]
            values += [values[-1], float(found[1])]
    times.append(events[-1][0] - start)
    values.append(values[-1])
    return times, values


def sent_again(log: str) -> int:
    """How many refusals among others the pass sent again."""
    return sum("sending it again before it counts" in text for _, text in log_events(log))
