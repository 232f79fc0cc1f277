"""Peak memory (RSS) of `imap-ingest run --once` for one 50 MB message and for a backlog of
10,000 realistic messages (2-20 KB, 10% with a 200 KB attachment).

Run: python -m bench.memory [BACKLOG]     (default 10000)
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import message, sink
from tests.support.dovecot import Dovecot, ImapAccount
from tests.support.ingest_env import ROOT, command, write_config
from tests.support.mail import make


def peak_rss_mib(imap: ImapAccount, url: str, tmp: Path, **folder: object) -> float:
    """Run the ingester under a fresh launcher process, whose only child it is, and read
    that child's peak RSS from the kernel."""
    path = write_config(tmp / "config.yaml", imap, url, folder={"batch_size": 100, **folder})
    launcher = ("import resource, subprocess, sys; "
                "subprocess.run(sys.argv[1:], check=True, stderr=subprocess.DEVNULL); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", launcher,
                          *command("run", "--once", "-c", str(path))],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return int(out) / 1024


def main(count: int) -> None:
    with Dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        imap = dovecot.account()
        big = make(body=("x" * 76 + "\n") * (50 * 1024 * 1024 // 77))
        imap.append("INBOX", big)
        with sink() as (url, answered):
            rss = peak_rss_mib(imap, url, Path(tmp), max_message_size="60M")
        assert answered == [1]
        print(f"one message of {len(big) / 2**20:.0f} MiB: peak RSS {rss:.0f} MiB")
        imap = dovecot.account()
        rng = random.Random(1)
        with imap.client() as client:
            for i in range(count):
                client.append("INBOX", message(i, rng))
        with sink() as (url, answered):
            rss = peak_rss_mib(imap, url, Path(tmp))
        assert answered == [count]
        print(f"backlog of {count} messages: peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
