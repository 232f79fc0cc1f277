"""Mail-to-submission delay: APPEND messages at random intervals while `imap-ingest run`
watches the folder, once with IDLE and once with a plain 60 s poll; print p50/p95/p99.

The delay is from the APPEND's completion to the sink receiving the POST. Run:
    python -m bench.latency [COUNT] [MEAN_GAP_SECONDS]      (defaults: 200, 0.3)
"""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import plot
from tests.support.dovecot import Dovecot
from tests.support.ingest_env import ROOT, command, write_config
from tests.support.mail import make
from tests.support.redmine_server import FakeRedmine, Request


def measure(dovecot: Dovecot, idle: bool, count: int, gap: float) -> list[float]:
    imap = dovecot.account()
    imap.create("INBOX")
    arrived: dict[bytes, float] = {}
    sink = FakeRedmine()

    def answer(request: Request) -> tuple[int, bytes, float]:
        subject = request.field("email").split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
        arrived[subject] = time.monotonic()
        return 201, b"", 0

    sink.answer = answer
    with tempfile.TemporaryDirectory() as tmp:
        path = write_config(Path(tmp) / "c.yaml", imap, sink.url,
                            folder={"interval": "60s", "idle": idle})
        service = subprocess.Popen(command("run", "-c", str(path)), cwd=ROOT,
                                   stderr=subprocess.DEVNULL)
        time.sleep(2)  # started, first pass done, watching
        sent: dict[bytes, float] = {}
        rng = random.Random(7)
        with imap.client() as client:
            for i in range(count):
                time.sleep(rng.expovariate(1 / gap))
                subject = f"latency {i}".encode()
                client.append("INBOX", make(subject=subject.decode()))
                sent[subject] = time.monotonic()
        deadline = time.monotonic() + 90
        while len(arrived) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
    sink.close()
    assert len(arrived) == count, f"only {len(arrived)} of {count} arrived"
    return [arrived[s] - sent[s] for s in sent]


def report(name: str, delays: list[float]) -> None:
    q = statistics.quantiles(delays, n=100)
    print(f"{name:>12}: p50 {q[49] * 1000:8.0f} ms   p95 {q[94] * 1000:8.0f} ms   "
          f"p99 {q[98] * 1000:8.0f} ms   max {max(delays) * 1000:8.0f} ms   (n={len(delays)})")


def main(count: int, gap: float) -> None:
    print(f"{count} messages APPENDed at random intervals (mean {gap} s); delay from APPEND "
          "to the tracker receiving the POST")
    with Dovecot() as dovecot:
        idle, poll = measure(dovecot, True, count, gap), measure(dovecot, False, count, gap)
    report("IDLE", idle)
    report("60 s poll", poll)
    chart = plot.distribution("latency.png", "Mail to submission", "seconds (log)",
                              {"IDLE": idle, "60 s poll": poll})
    print(f"chart: {chart}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200,
         float(sys.argv[2]) if len(sys.argv) > 2 else 0.3)
