"""Backlog throughput: N messages in a dovecot folder, `imap-ingest run --once`, a 201 sink.

Prints messages per second. The sink is the tests' fake Redmine (a threaded HTTP server in
this process; imap-ingest runs as its own process). Run: python -m bench.backlog [N]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.dovecot import Dovecot
from tests.ingest_env import write_config
from tests.mail import make
from tests.redmine_server import FakeRedmine


def main(count: int) -> None:
    body = "A line of a realistic support request, wrapped at seventy-odd characters.\n" * 60
    with Dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        imap = dovecot.account()
        with imap.client() as client:
            for i in range(count):
                client.append("INBOX", make(subject=f"request {i}", body=body))
        sink = FakeRedmine()
        config = write_config(Path(tmp) / "config.yaml", imap, sink.url)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "imap_ingest", "run", "--once", "-c", str(config)],
                       check=True, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        sink.close()
        assert len(sink.requests) == count and imap.messages("INBOX") == {}
        size = len(make(body=body))
        print(f"{count} messages of {size} bytes: {elapsed:.2f} s, {count / elapsed:.0f} msg/s "
              "(imap-ingest run --once, dovecot on loopback, HTTP sink answering 201)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
