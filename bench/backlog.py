"""Backlog throughput against a zero-cost tracker, beside the floor.

N realistic messages (2-20 KB, 10% with a 200 KB attachment) in a dovecot folder; the sink
(bench/sink.py, its own process) answers 201 at once. Measured:
  - imap-ingest run --once (Redmine target; delete on success; ledger on)
  - the floor: the same messages fetched with one UID FETCH per 500 and POSTed, form-encoded
    as Redmine wants them, over one keep-alive connection by a minimal script
  - the same N messages spread over 2 and 4 folders of the account (one run --once, with
    the default workers: auto, a process per core)
  - the HTTP layer alone: the same POSTs through http.client (the floor's) and through
    imap-ingest's Client (requests, the limiter's slot, the deadline), and what the difference
    leaves of the floor for one folder even if every other step of the pass cost nothing
Prints each run's CPU time per message too (the machine's speed drifts; CPU time less).
Run: python -m bench.backlog [N]     (default 10000)
"""

from __future__ import annotations

import http.client
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from imapclient import IMAPClient

from bench.common import message, sink
from imap_ingest.trackers._http import Client
from imap_ingest.trackers.redmine import Form, RedmineTarget
from tests.support.dovecot import Dovecot, ImapAccount
from tests.support.ingest_env import ROOT, command, write_config


def fill(imap: ImapAccount, count: int, folders: int = 1) -> int:
    """``count`` messages, dealt in turn into INBOX and folders F1 … F(folders - 1)."""
    rng = random.Random(1)
    names = _folders(folders)
    for name in names[1:]:
        imap.create(name)
    size = 0
    with imap.client() as client:
        for i in range(count):
            raw = message(i, rng)
            size += len(raw)
            client.append(names[i % folders], raw)
    return size


def _folders(count: int) -> list[str]:
    return ["INBOX", *(f"F{n}" for n in range(1, count))]


def ours(imap: ImapAccount, url: str, tmp: Path, folders: int = 1) -> tuple[float, float]:
    """run --once over the account's ``folders``: (seconds, CPU seconds of the process)."""
    # A ledger of its own: the runs' messages are the same, so a shared one would call them
    # duplicates.
    path = write_config(tmp / f"config{folders}.yaml", imap, url, folders=[
        {"name": name, "project": "support", "batch_size": 500} for name in _folders(folders)],
        state_dir=str(tmp / f"state{folders}"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # No terminal: a run on one stays in one process (processes.py).
    subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT, check=True,
                   stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def floor(imap: ImapAccount, url: str) -> float:
    """The least work that moves the same bytes: batched FETCH, one keep-alive POST each."""
    target = urlsplit(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
    with IMAPClient(imap.host, port=imap.port, ssl=False) as client:
        client.login(imap.username, imap.password)
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        for start in range(0, len(uids), 500):
            for item in client.fetch(uids[start:start + 500], ["BODY.PEEK[]"]).values():
                body = bytes(Form({"key": "k", "email": item[b"BODY[]"]}))
                connection.request("POST", "/mail_handler", body, {
                    "Content-Type": "application/x-www-form-urlencoded"})
                connection.getresponse().read()
    connection.close()
    return time.perf_counter() - started


def http_layers(url: str, count: int) -> tuple[float, float]:
    """Seconds a POST of a form-encoded message takes through http.client and through our
    Client, on the same keep-alive sink, ``count`` of each (alternating halves)."""
    rng = random.Random(1)
    bodies = [bytes(Form({"key": "k", "email": message(i, rng)})) for i in range(100)]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    target = urlsplit(url)
    plain = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
    ours = Client(RedmineTarget.model_validate({"type": "redmine", "url": url, "key": "k"}))

    def by_http_client(body: bytes) -> None:
        plain.request("POST", "/mail_handler", body, headers)
        plain.getresponse().read()

    def by_ours(body: bytes) -> None:
        ours.request("POST", url + "/mail_handler", data=body, headers=headers)

    spent = {by_http_client: 0.0, by_ours: 0.0}
    for _ in range(2):
        for post in spent:
            started = time.perf_counter()
            for i in range(count // 2):
                post(bodies[i % len(bodies)])
            spent[post] += time.perf_counter() - started
    plain.close()
    ours.close()
    return spent[by_http_client] / count, spent[by_ours] / count


def main(count: int) -> None:
    with Dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        print(f"{count} messages; dovecot on loopback; a 201 sink in its own process; "
              f"load average {os.getloadavg()[0]:.1f}")
        floor_imap = dovecot.account()
        size = fill(floor_imap, count)
        accounts = {n: dovecot.account() for n in (1, 2, 4)}
        for folders, imap in accounts.items():
            fill(imap, count, folders)
        print(f"  {size / count / 1024:.1f} KiB per message on average")
        with sink() as (url, _):
            base = floor(floor_imap, url)
            plain, client = http_layers(url, min(count, 2000))
        print(f"  floor (batched FETCH + keep-alive POST): {count / base:7.0f} msg/s "
              f"({base:.1f} s)")
        bound = base / (base + count * (client - plain))
        print(f"  a POST alone: http.client {plain * 1000:.3f} ms, imap-ingest's Client "
              f"{client * 1000:.3f} ms: with every other step free, one folder would make "
              f"at most {bound:.0%} of the floor")
        one = 0.0
        for folders, imap in accounts.items():
            with sink() as (url, answered):
                elapsed, cpu = ours(imap, url, Path(tmp), folders)
            assert answered == [count], answered
            assert all(imap.messages(name) == {} for name in _folders(folders))
            one = one or elapsed
            print(f"  imap-ingest run --once, {folders} folder(s): {count / elapsed:7.0f} msg/s "
                  f"({elapsed:.1f} s, {cpu / count * 1000:.2f} ms CPU per message)  = "
                  f"{base / elapsed:.0%} of the floor, {one / elapsed:.2f}x one folder")
        print(f"  load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
