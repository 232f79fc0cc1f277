"""Idle poll cost: the time and bytes of a pass that finds nothing new, in a folder that
holds 1k, 10k, 100k messages already handled (marked skipped by a rule, so they stay).

The messages are written straight into dovecot's Maildir (appending 100k over IMAP would
take minutes), then indexed and marked once. Run: python -m bench.poll [SIZES...]
"""

from __future__ import annotations

import imaplib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import plot
from imap_ingest.config import Config
from imap_ingest.ingest import Context, ingest
from imap_ingest.ledger import SqliteLedger
from imap_ingest.mailbox import Mailbox
from imap_ingest.metrics import Metrics
from imap_ingest.states import SKIPPED
from tests.support.dovecot import Dovecot, ImapAccount
from tests.support.mail import make

_read = imaplib.IMAP4._get_line  # type: ignore[attr-defined]
_sent = imaplib.IMAP4.send
BYTES = [0]


def counting_get_line(self: imaplib.IMAP4) -> bytes:
    line: bytes = _read(self)
    BYTES[0] += len(line) + 2
    return line


def counting_send(self: imaplib.IMAP4, data: bytes) -> None:
    BYTES[0] += len(data)
    _sent(self, data)


def fill(dovecot: Dovecot, imap: ImapAccount, count: int) -> None:
    imap.append("INBOX", make(subject="first"))  # makes the Maildir
    cur = dovecot.directory / "home" / imap.username / "Maildir" / "cur"
    users = dovecot.users
    body = make(subject="old, handled")
    for i in range(count):
        path = cur / f"{1700000000 + i}.M{i}P1.bench:2,"
        path.write_bytes(body)
        os.chown(path, users.mail_uid, users.mail_gid)
    with imap.client(timeout=600) as client:
        client.select_folder("INBOX")
        client.add_flags("1:*", [SKIPPED], silent=True)


def config(imap: ImapAccount, state: Path) -> Config:
    return Config.model_validate({
        "accounts": [{"name": "bench", "host": imap.host, "port": imap.port,
                      "security": "none", "username": imap.username,
                      "password": imap.password, "folders": [{"name": "INBOX"}]}],
        "targets": {"sink": {"type": "directory", "path": str(state / "out")}},
        "state_dir": str(state)})


def main(sizes: list[int]) -> None:
    imaplib.IMAP4._get_line = counting_get_line  # type: ignore[attr-defined]
    imaplib.IMAP4.send = counting_send  # type: ignore[assignment]
    print("size      poll p50   poll max   bytes per poll   (a pass on a kept connection "
          "that finds nothing new)")
    results: list[tuple[int, float, float]] = []
    with Dovecot() as dovecot:
        for size in sizes:
            imap = dovecot.account()
            fill(dovecot, imap, size)
            with tempfile.TemporaryDirectory() as tmp:
                cfg = config(imap, Path(tmp))
                ledger = SqliteLedger(Path(tmp) / "ledger.sqlite3")
                context = Context(cfg, {}, ledger, threading.Event(), Metrics())
                account, folder = cfg.accounts[0], cfg.accounts[0].folders[0]
                with Mailbox(account) as mailbox:
                    ingest(mailbox, folder, context)  # warm: the server's index is built
                    times, sizes_read = [], []
                    for _ in range(20):
                        BYTES[0] = 0
                        started = time.perf_counter()
                        report = ingest(mailbox, folder, context)
                        times.append(time.perf_counter() - started)
                        sizes_read.append(BYTES[0])
                        assert not report.counts
                ledger.close()
            print(f"{size:>7}   {statistics.median(times) * 1000:6.1f} ms  "
                  f"{max(times) * 1000:6.1f} ms   {statistics.median(sizes_read):8.0f}")
            results.append((size, statistics.median(times) * 1000, max(times) * 1000))
    chart = plot.line("poll-cost.png", "A pass that finds nothing new", "messages in the folder",
                      "ms", {"median": ([r[0] for r in results], [r[1] for r in results]),
                             "max": ([r[0] for r in results], [r[2] for r in results])},
                      logx=True)
    print(f"chart: {chart}")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1_000, 10_000, 100_000])
