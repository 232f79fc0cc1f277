"""Which step of Redmine's ``POST /mail_handler`` fails when a crowded 422 still made an issue.

Debian's Redmine on stock SQLite under Passenger x2, with bench/redmine_probe.rb appended to
config.ru (it logs, for every message, the exception, Redmine's frames, the request's last SQL
statements and whether the issue had been committed). The ceiling client's load: 4 threads,
keep-alive, the bench's messages (from Alice, a member; one in ten with a 200 KB attachment),
each never sent twice. Redmine is started afresh ``STARTS`` times with ``COUNT`` messages each:
every start has cold processes, whose Setting cache is empty. With ``mix``, each start's
attachments come first, two plain messages between them.

Run: python -m bench.redmine_probe [COUNT] [STARTS] [mix]   (60, 20)
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import sqlite3
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import message, timed_threads
from bench.redmine_tools import CEILING_THREADS, SENDER, load
from imap_ingest.trackers.redmine import Form, crlf
from tests.e2e import redmine as e2e

PROBE = Path(__file__).with_name("redmine_probe.rb")
# Read inside Attachment.create's transaction when the process has not cached them.
COLD = "attachment_max_size"


@dataclass(frozen=True, slots=True)
class Answer:
    number: int  # the message's number: "Request N:" in its subject
    status: int
    seconds: float
    crowded: bool  # another POST was in flight at some moment of this one


def post_all(url: str, raws: list[tuple[int, bytes]]) -> list[Answer]:
    """Each message POSTed once by CEILING_THREADS keep-alive senders."""
    port = int(url.rsplit(":", 1)[1])
    bodies: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
    for number, raw in raws:
        bodies.put((number, bytes(Form({"key": e2e.MAIL_KEY, "email": crlf(raw),
                                        "issue[project]": e2e.PROJECT}))))
    lock = threading.Lock()
    flying: set[int] = set()
    beside: dict[int, bool] = {}
    answers: list[Answer] = []

    def send() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            try:
                number, body = bodies.get_nowait()
            except queue.Empty:
                break
            with lock:
                beside[number] = bool(flying)
                beside.update(dict.fromkeys(flying, True))
                flying.add(number)
            started = time.perf_counter()
            connection.request("POST", "/mail_handler", body, {
                "Content-Type": "application/x-www-form-urlencoded"})
            answer = connection.getresponse()
            answer.read()
            seconds = time.perf_counter() - started
            with lock:
                flying.discard(number)
                answers.append(Answer(number, answer.status, seconds, beside[number]))
        connection.close()

    timed_threads(send, CEILING_THREADS)
    return answers


def mixed(chunk: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The attachments first, two plain messages after each."""
    files = [item for item in chunk if item[0] % 10 == 0]
    plain = [item for item in chunk if item[0] % 10]
    return [item for k, first in enumerate(files) for item in (first, *plain[2 * k:2 * k + 2])
            ] + plain[2 * len(files):]


def number(subject: str) -> int:
    return int(subject.split()[1].rstrip(":"))


def main(count: int, starts: int, mix: bool) -> None:
    template, _ = e2e.ensure_template()
    rng = random.Random(3)
    raws = [(i, message(i, rng).replace(f"From: User {i} <user{i}@example.org>".encode(),
                                        SENDER, 1)) for i in range(count * starts)]
    answers: list[Answer] = []
    made: Counter[int] = Counter()
    probes: dict[int, dict[str, Any]] = {}
    print(f"load average {load()}")
    for start in range(starts):
        chunk = raws[start * count:(start + 1) * count]
        with e2e.passenger(template, 2, ruby=PROBE.read_text()) as (url, database):
            answers += post_all(url, mixed(chunk) if mix else chunk)
            with sqlite3.connect(database) as db:
                made.update(number(subject) for subject, in db.execute(
                    "SELECT subject FROM issues"))
            log = database.parent.parent / "log" / "probe.jsonl"
            for line in log.read_text().splitlines():
                probe = json.loads(line)
                probes[number(probe["subject"])] = probe
    print(f"load average {load()}; {len(answers)} messages, {starts} starts")
    report(answers, made, probes)


def report(answers: list[Answer], made: Counter[int], probes: dict[int, dict[str, Any]]
           ) -> None:
    def kind(answer: Answer) -> str:
        attached = "attachment" if answer.number % 10 == 0 else "plain"
        return f"{answer.status} {'crowded' if answer.crowded else 'alone'} {attached}, " + (
            f"{made[answer.number]} issue(s)")

    def spread(values: list[float]) -> str:
        return (f"median {statistics.median(values):.3f} s, {min(values):.3f}-"
                f"{max(values):.3f}") if values else "-"

    kinds: dict[str, list[Answer]] = {}
    for answer in answers:
        kinds.setdefault(kind(answer), []).append(answer)
    for name, group in sorted(kinds.items()):
        failing = Counter(next((s["name"] for s in probes[a.number].get("sql", [])
                                if s["error"]), "-") for a in group)
        print(f"  {name}: {len(group)}; client {spread([a.seconds for a in group])}; "
              f"server {spread([probes[a.number]['seconds'] for a in group])}; "
              f"failing statement {dict(failing)}")
    cold = [p for p in probes.values() if any(COLD in line for line in p["after"])]
    print(f"  attachments stored by a process with no Setting cache: {len(cold)}, "
          f"{sum('error' in p for p in cold)} of them failed")
    writes = Counter(line for n, p in probes.items() if n % 10 for line in p["after"]
                     if line.split(": ", 1)[-1].split()[0] in ("INSERT", "UPDATE", "DELETE",
                                                                "begin", "commit"))
    print(f"  writes or transactions after the issue's commit, plain messages: {dict(writes)}")
    for answer in answers:
        if answer.status != 201 and made[answer.number]:
            probe = probes[answer.number]
            print(f"\n  Request {answer.number}: 422 in {answer.seconds:.3f} s, issue "
                  f"#{probe['issue']} committed at {probe['commit_at']} s, "
                  f"{probe['error']}: {probe['message']}")
            print("\n".join(f"    {frame}" for frame in probe["frames"][:4]))
            print("\n".join(f"    {s['at']:.3f} {s['name']}: {s['sql'][:60]}"
                            f"{' <- ' + s['error'] if s['error'] else ''}"
                            for s in probe["sql"][-6:]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60,
         int(sys.argv[2]) if len(sys.argv) > 2 else 20, sys.argv[3:4] == ["mix"])
