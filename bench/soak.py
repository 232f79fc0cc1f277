"""Soak: N messages over two folders and two targets, with faults injected at random.

Dovecot on loopback; the service (``imap-ingest run``) with a webhook target per folder,
each a local sink that answers 201, or at random 503, too late (it took the message, the
answer comes after the timeout) or dripped a byte a second. Meanwhile, at random: IMAP
connections dropped (``doveadm kick``), the service SIGKILLed and started again, a folder
renumbered (new UIDVALIDITY: dovecot loses its uidlist). Then the faults stop and the
service finishes. Printed: messages lost, duplicated (and how many of those after an
answer that never came, which is retried by design) and set aside, and the run time.

Run: python -m bench.soak [N]     (default 10000); a progress line every 10 s on stderr.
"""

from __future__ import annotations

import imaplib
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from tests.support.dovecot import Dovecot, ImapAccount
from tests.support.ingest_env import ROOT, command

FOLDERS = {"Support": "a", "Security": "b"}
ASIDE = ("Quarantine", "Failed")
TIMEOUT = 2.0  # the targets' timeout
_ID = re.compile(rb"^X-Soak-Id: (\d+)", re.MULTILINE)


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up on a dripped answer is one of the faults."""


class Sink:
    """A tracker that takes each message (raw webhook) and records it, with faults."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.faulty = rng, True
        self.taken: Counter[int] = Counter()
        self.doubt: set[int] = set()  # taken, but the answer came too late or not at all
        self.lock = threading.Lock()
        self._server = _Quiet(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def close(self) -> None:
        self._server.shutdown()

    def _fault(self) -> str:
        with self.lock:
            roll = self.rng.random() if self.faulty else 1.0
        return "5xx" if roll < 0.03 else "late" if roll < 0.04 else "drip" if roll < 0.05 else ""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                found = _ID.search(body)
                fault = sink._fault()
                if fault == "5xx" or found is None:
                    self._reply(503)
                    return
                with sink.lock:
                    sink.taken[int(found[1])] += 1
                    if fault:
                        sink.doubt.add(int(found[1]))
                if fault == "late":
                    time.sleep(TIMEOUT + 1)
                    self._reply(201)
                elif fault == "drip":
                    for byte in b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n":
                        self.wfile.write(bytes((byte,)))
                        self.wfile.flush()
                        time.sleep(1)
                else:
                    self._reply(201)

            def _reply(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def fill(imap: ImapAccount, count: int) -> None:
    """Messages 0..count-1, alternately in each folder."""
    names = list(FOLDERS)
    with imap.client(timeout=60) as client:
        for name in (*names, *ASIDE):
            client.create_folder(name)
        for i in range(count):
            client.append(names[i % 2], (
                f"From: user{i}@example.org\r\nTo: support@example.org\r\n"
                f"Subject: soak {i}\r\nMessage-ID: <soak-{i}@example.org>\r\nX-Soak-Id: {i}\r\n"
                f"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nmessage {i}\r\n").encode())


def ids(imap: ImapAccount, folder: str, which: str = "ALL") -> list[int]:
    """The soak ids of the messages in ``folder`` that match the SEARCH key ``which``."""
    for attempt in range(10):
        try:
            with imap.client(timeout=60) as client:
                client.select_folder(folder, readonly=True)
                fetched = client.fetch(client.search([which]),
                                       ["BODY.PEEK[HEADER.FIELDS (X-SOAK-ID)]"])
            break
        except (imaplib.IMAP4.abort, OSError):
            # Our own look is hit by the faults too: a renumbering makes dovecot end the
            # session ("state is inconsistent, please relogin"), a kick drops it.
            if attempt == 9:
                raise
            time.sleep(1)
    return [int(m[1]) for item in fetched.values()
            if (m := _ID.search(item[b"BODY[HEADER.FIELDS (X-SOAK-ID)]"]))]


class Progress:
    """A line on stderr every ``every`` seconds: how far the run is, to see where time goes."""

    def __init__(self, count: int, sinks: dict[str, Sink], faults: Counter[str],
                 every: float = 10.0) -> None:
        self.count, self.sinks, self.faults, self.every = count, sinks, faults, every
        self.left, self.counting = count, 0.0  # in the folders, and what counting them took
        self.started = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def left_in(self, imap: ImapAccount) -> int:
        """The messages still to deal with in the watched folders (remembered for the progress
        line). Not those flagged \\Deleted: the service deleted them, and a kill or a dropped
        connection between its STORE and its EXPUNGE leaves them so (it expunges only the
        UIDs it has just flagged). Had it deleted one the sinks never took, that one is
        counted lost."""
        started = time.monotonic()
        self.left = sum(len(ids(imap, f, "UNDELETED")) for f in FOLDERS)
        self.counting = time.monotonic() - started
        return self.left

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            posts = distinct = 0
            for sink in self.sinks.values():
                with sink.lock:
                    posts += sink.taken.total()
                    distinct += len(sink.taken)
            elapsed = time.monotonic() - self.started
            print(f"  {elapsed:5.0f} s: {self.left} of {self.count} left in the folders, "
                  f"{distinct} taken ({posts} posts, {distinct / elapsed:.1f} msg/s); "
                  f"faults {dict(self.faults)}; counting took {self.counting:.1f} s",
                  file=sys.stderr, flush=True)


def write_config(path: Path, imap: ImapAccount, sinks: dict[str, Sink]) -> None:
    folders = [{"name": name, "target": target, "interval": "2s", "batch_size": 100,
                "move_on_failure": "Failed"} for name, target in FOLDERS.items()]
    path.write_text(yaml.safe_dump({
        "accounts": [{"name": "soak", "host": imap.host, "port": imap.port, "security": "none",
                      "username": imap.username, "password": imap.password, "timeout": "10s",
                      "folders": folders}],
        "targets": {name: {"type": "webhook", "url": sink.url, "format": "raw",
                           "timeout": f"{TIMEOUT}s", "concurrency": 2}
                    for name, sink in sinks.items()},
        "retry": {"first_delay": "1s", "max_delay": "4s", "max_attempts": 1000,
                  "max_age": "1d"},
        "state_dir": str(path.parent / "state"),
    }))


class Service:
    """``imap-ingest run`` that can be SIGKILLed and started again."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(command("run", "-c", str(self.config)), cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=log)

    def kill_and_restart(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = self._start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def renumber(dovecot: Dovecot, imap: ImapAccount, folder: str) -> None:
    """A new UIDVALIDITY for ``folder``: dovecot forgets its uidlist and indexes."""
    maildir = dovecot.directory / "home" / imap.username / "Maildir" / f".{folder}"
    for path in [maildir / "dovecot-uidlist", *maildir.glob("dovecot.index*")]:
        path.unlink(missing_ok=True)
    kick(dovecot, imap)


def kick(dovecot: Dovecot, imap: ImapAccount) -> None:
    subprocess.run(["doveadm", "-c", str(dovecot.config_file), "kick", imap.username],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def main(count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with Dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        imap = dovecot.account()
        fill(imap, count)
        sinks = {target: Sink(random.Random(rng.random())) for target in FOLDERS.values()}
        config = Path(tmp) / "config.yaml"
        write_config(config, imap, sinks)
        print(f"{count} messages in {len(FOLDERS)} folders, {len(sinks)} targets; seed {seed}")
        started = time.monotonic()
        service = Service(config, Path(tmp) / "service.log")
        faults: Counter[str] = Counter()
        progress = Progress(count, sinks, faults)
        try:
            # Faults until half the mail is dealt with, then none until all of it is.
            while progress.left_in(imap) > count // 2:
                time.sleep(rng.uniform(2, 6))
                fault = rng.choice(("kick", "kick", "sigkill", "renumber"))
                faults[fault] += 1
                if fault == "kick":
                    kick(dovecot, imap)
                elif fault == "sigkill":
                    service.kill_and_restart()
                else:
                    renumber(dovecot, imap, rng.choice(list(FOLDERS)))
            for sink in sinks.values():
                with sink.lock:
                    sink.faulty = False
            while progress.left_in(imap):
                time.sleep(1)
            elapsed = time.monotonic() - started
        finally:
            progress.stop()
            service.stop()
        taken = sum((sink.taken for sink in sinks.values()), Counter[int]())
        doubt = set().union(*(sink.doubt for sink in sinks.values()))
        aside = Counter(i for folder in ASIDE for i in ids(imap, folder))
        lost = [i for i in range(count) if not taken[i] and not aside[i]]
        duplicated = [i for i, n in taken.items() if n > 1]
        print(f"  faults: {dict(faults)}; tracker faults (5xx, late, dripped): "
              f"{sum(s.taken.total() for s in sinks.values()) - len(taken)} re-posts")
        print(f"  lost: {len(lost)} {lost[:10]}")
        print(f"  duplicated: {len(duplicated)} ({len(set(duplicated) & doubt)} after an "
              f"answer that never came) {sorted(set(duplicated) - doubt)[:10]}")
        where = ", ".join(f"{folder}: {len(ids(imap, folder))}" for folder in ASIDE)
        print(f"  set aside: {aside.total()} ({where}); taken and set aside: "
              f"{sum(1 for i in aside if taken[i])}")
        deleted = sum(len(ids(imap, f, "DELETED")) for f in FOLDERS)
        print(f"  left flagged \\Deleted, not expunged: {deleted}")
        # Every child waited for: each service process, killed or stopped (and the kicks).
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        log = (Path(tmp) / "service.log").read_text(errors="replace")
        print(f"  fetched and judged only to be deferred: {log.count(': deferred: ')} times")
        print(f"  run time: {elapsed:.0f} s ({count / elapsed:.0f} msg/s); the service's CPU: "
              f"{used.ru_utime + used.ru_stime:.0f} s")
        for sink in sinks.values():
            sink.close()
        if lost or set(duplicated) - doubt:
            kept = Path("soak-service.log")
            kept.write_bytes((Path(tmp) / "service.log").read_bytes())
            print(f"  the service's log: {kept.resolve()}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
