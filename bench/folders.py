"""A thousand folders: one `imap-ingest run` watching 1,000 folders over 50 accounts on a
dovecot that allows each user 10 connections (its default mail_max_userip_connections);
print the connections held, RSS, idle CPU, and the time to notice new mail in folders
pushed by IDLE, pushed by NOTIFY (dovecot has it: one connection per account watches the
folders IDLE has no room for) and polled.

Run: python -m bench.folders [ACCOUNTS] [FOLDERS_PER_ACCOUNT] [SAMPLES]   (50, 20, 40)
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from imap_ingest.budget import LIMIT, default_budget, plan
from imap_ingest.config import Folder
from tests.support.dovecot import Dovecot, ImapAccount
from tests.support.ingest_env import ROOT, command
from tests.support.mail import make
from tests.support.redmine_server import FakeRedmine, Request

_LIMIT = ("protocol imap {", f"  mail_max_userip_connections = {LIMIT}", "}")
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _connections(port: int) -> int:
    """Established TCP connections to ``port`` on loopback (the service is the only client)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, _local, remote, state, *_ = line.split()
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def main(accounts: int, per_account: int, samples: int) -> None:
    names = [f"F{i:02d}" for i in range(per_account)]
    budget = default_budget("127.0.0.1")
    fitted = plan([Folder(name=name) for name in names], budget, notify=True)
    arrived: dict[bytes, float] = {}

    def answer(request: Request) -> tuple[int, bytes, float]:
        subject = request.field("email").split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
        arrived[subject] = time.monotonic()
        return 201, b"", 0

    with Dovecot(extra=_LIMIT) as dovecot, tempfile.TemporaryDirectory() as tmp:
        imaps: list[ImapAccount] = [dovecot.account() for _ in range(accounts)]
        for imap in imaps:
            with imap.client() as client:
                for name in names:
                    client.create_folder(name)
        sink = FakeRedmine()
        sink.answer = answer
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump({
            "accounts": [{"name": f"a{n}", "host": imap.host, "port": imap.port,
                          "security": "none", "username": imap.username,
                          "password": imap.password,
                          "folders": [{"name": name, "project": "p"} for name in names]}
                         for n, imap in enumerate(imaps)],
            "targets": {"redmine": {"type": "redmine", "url": sink.url, "key": "k"}},
            "state_dir": str(Path(tmp) / "state")}))
        started = time.monotonic()
        service = subprocess.Popen(command("run", "-c", str(path)), cwd=ROOT,
                                   stderr=subprocess.PIPE, text=True)
        try:
            expected = accounts * fitted.connections
            while _connections(dovecot.port) < expected and time.monotonic() - started < 300:
                time.sleep(1)
            settled = time.monotonic() - started
            time.sleep(10)  # first passes done
            held = _connections(dovecot.port)
            cpu = _cpu_seconds(service.pid)
            time.sleep(30)
            idle_cpu = (_cpu_seconds(service.pid) - cpu) / 30 * 100
            rss = _rss_mib(service.pid)

            rng = random.Random(3)
            sent: dict[bytes, tuple[float, str]] = {}
            for i in range(samples):
                imap, name = rng.choice(imaps), rng.choice(names)
                subject = f"folders {i}".encode()
                imap.append(name, make(subject=subject.decode()))
                sent[subject] = (time.monotonic(), "pushed (IDLE)" if name in fitted.pushed
                                 else "pushed (NOTIFY)" if name in fitted.notified
                                 else "polled")
                time.sleep(rng.uniform(0, 1))
            deadline = time.monotonic() + 120
            while len(arrived) < samples and time.monotonic() < deadline:
                time.sleep(0.2)
            service.send_signal(signal.SIGTERM)
            _, err = service.communicate(timeout=120)
        finally:
            if service.poll() is None:  # the measuring failed: no service left behind
                service.kill()
                service.wait()
        sink.close()
    refused = err.count("Maximum number of connections")
    print(f"{accounts} accounts x {per_account} folders = {accounts * per_account} folders; "
          f"per account {len(fitted.pushed)} pushed by IDLE, {len(fitted.notified)} by "
          f"NOTIFY, {len(fitted.polled)} polled "
          f"(interval 60 s), {fitted.connections} connections (dovecot allows {LIMIT})")
    print(f"connections held: {held} (expected {expected}); refused by dovecot: {refused}; "
          f"all connected after {settled:.0f} s")
    print(f"RSS {rss:.0f} MiB; idle CPU {idle_cpu:.1f}% of one core")
    for label in ("pushed (IDLE)", "pushed (NOTIFY)", "polled"):
        delays = [arrived[s] - t for s, (t, kind) in sent.items()
                  if kind == label and s in arrived]
        if delays:
            print(f"{label}: {len(delays)} messages, p50 {statistics.median(delays):.2f} s, "
                  f"max {max(delays):.2f} s")
    print(f"arrived {len(arrived)} of {samples}")


if __name__ == "__main__":
    args = [int(arg) for arg in sys.argv[1:]]
    main(*(args + [50, 20, 40][len(args):]))
