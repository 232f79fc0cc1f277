"""Backlog throughput against a zero-cost tracker, beside the floor.

N realistic messages (2-20 KB, 10% with a 200 KB attachment) in a dovecot folder; the sink
(bench/sink.py, its own process) answers 201 at once. Measured:
  - imap-ingest run --once (Redmine target; delete on success; ledger on)
  - the floor: the same messages fetched with one UID FETCH per 500 and POSTed, form-encoded
    as Redmine wants them, over one keep-alive connection by a minimal script
Run: python -m bench.backlog [N]     (default 10000)
"""

from __future__ import annotations

import http.client
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from imapclient import IMAPClient

from bench.common import message, sink
from imap_ingest.trackers.redmine import Form
from tests.support.dovecot import Dovecot, ImapAccount
from tests.support.ingest_env import ROOT, command, write_config


def fill(imap: ImapAccount, count: int) -> int:
    rng = random.Random(1)
    size = 0
    with imap.client() as client:
        for i in range(count):
            raw = message(i, rng)
            size += len(raw)
            client.append("INBOX", raw)
    return size


def ours(imap: ImapAccount, url: str, tmp: Path) -> float:
    path = write_config(tmp / "config.yaml", imap, url, folder={"batch_size": 500})
    started = time.perf_counter()
    subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT, check=True,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


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


def main(count: int) -> None:
    with Dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        print(f"{count} messages; dovecot on loopback; a 201 sink in its own process")
        floor_imap, our_imap = dovecot.account(), dovecot.account()
        size = fill(floor_imap, count)
        fill(our_imap, count)
        print(f"  {size / count / 1024:.1f} KiB per message on average")
        with sink() as (url, _):
            base = floor(floor_imap, url)
        with sink() as (url, answered):
            elapsed = ours(our_imap, url, Path(tmp))
        assert answered == [count], answered
        assert our_imap.messages("INBOX") == {}
        print(f"  floor (batched FETCH + keep-alive POST): {count / base:7.0f} msg/s "
              f"({base:.1f} s)")
        print(f"  imap-ingest run --once:                  {count / elapsed:7.0f} msg/s "
              f"({elapsed:.1f} s)  = {base / elapsed:.0%} of the floor")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
