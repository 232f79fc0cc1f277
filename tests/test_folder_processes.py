"""run --once over an account's folders in several worker processes (processes.py)."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from imap_ingest.message import Message

from .support.dovecot import ImapAccount
from .support.ingest_env import ROOT, backlog, command, write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine, Request

FOLDERS = ["INBOX", "F1", "F2", "F3"]
_WORKER = re.compile(r"test/(\S+): worker process (\d+)")


def _fill(imap: ImapAccount, each: int) -> list[bytes]:
    return [raw for name in FOLDERS for raw in backlog(imap, each, name)]


def _config(tmp_path: Path, imap: ImapAccount, url: str, workers: int,
            **account: object) -> Path:
    return write_config(tmp_path / "config.yaml", imap, url, workers=workers,
                        account=account or None,
                        folders=[{"name": name, "project": "support"} for name in FOLDERS])


def _ids(raws: list[bytes]) -> Counter[str]:
    return Counter(Message(raw).message_id or "" for raw in raws)


def test_folders_run_in_worker_processes_each_message_once(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Four folders with workers: 2 go to two processes; each message is posted once."""
    raws = _fill(imap, 5)
    path = _config(tmp_path, imap, redmine.url, workers=2)
    run = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    workers = dict(_WORKER.findall(run.stderr))
    assert sorted(workers) == sorted(FOLDERS)
    assert len(set(workers.values())) == 2
    assert _ids(redmine.emails) == _ids(raws)
    assert all(imap.messages(name) == {} for name in FOLDERS)
    assert "run done: 4 folder(s) in 2 process(es): 20 submitted" in run.stderr


class _Hold:
    """Holds the first POST of the marked message unanswered until released."""

    def __init__(self, mark: bytes) -> None:
        self.mark, self.arrived, self.release = mark, threading.Event(), threading.Event()

    def answer(self, request: Request) -> tuple[int, bytes, float]:
        if self.mark in request.field("email") and not self.arrived.is_set():
            self.arrived.set()
            self.release.wait(30)
        return 201, b"", 0


def test_a_worker_killed_mid_run_fails_its_folder_only_and_loses_nothing(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """A worker killed mid-POST fails its folder only; the next run loses and doubles none."""
    raws = _fill(imap, 4)
    hold = _Hold((Message(raws[5]).message_id or "").encode())  # F1's second
    redmine.answer = hold.answer
    path = _config(tmp_path, imap, redmine.url, workers=2)
    with subprocess.Popen(command("run", "--once", "-c", str(path)), cwd=ROOT,
                          stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as process:
        assert process.stderr is not None
        lines: list[str] = []
        pid = None
        for line in process.stderr:
            lines.append(line)
            if (found := _WORKER.search(line)) and found[1] == "F1":
                pid = int(found[2])
                break
        assert pid is not None and hold.arrived.wait(30), "".join(lines)
        os.kill(pid, signal.SIGKILL)
        hold.release.set()
        rest = process.stderr.read()
        assert process.wait(60) == 70, rest
    assert f"worker process {pid} died (signal 9) during test/F1" in rest
    assert all(imap.messages(name) == {} for name in FOLDERS if name != "F1")

    again = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    assert _ids(redmine.emails) == _ids(raws)  # the held one was posted, and only once
    assert imap.messages("F1") == {}
    assert len(imap.messages("Quarantine")) == 1  # in doubt: a person decides


class _Counting:
    """A TCP proxy to the IMAP server that counts the most connections open at once."""

    def __init__(self, port: int) -> None:
        self.port, self.open, self.most = port, 0, 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> int:
        return int(self._listener.getsockname()[1])

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self.port))
            with self._lock:
                self.open += 1
                self.most = max(self.most, self.open)
            done = threading.Barrier(2, action=self._closed)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b, done), daemon=True).start()

    def _closed(self) -> None:
        with self._lock:
            self.open -= 1

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket, done: threading.Barrier) -> None:
        while data := _recv(a):
            b.sendall(data)
        for s in (a, b):
            s.close() if s is a else _shutdown(s)
        done.wait()


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def _shutdown(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_WR)


def test_worker_processes_stay_within_the_connection_budget(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """workers: 4 on an account with max_connections: 2: two IMAP connections at most."""
    raws = _fill(imap, 5)
    proxy = _Counting(imap.port)
    path = _config(tmp_path, imap, redmine.url, workers=4, port=proxy.address,
                   max_connections=2)
    run = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert proxy.most == 2
    assert len(set(dict(_WORKER.findall(run.stderr)).values())) == 2
    assert _ids(redmine.emails) == _ids(raws)


class _Overlap:
    """Answers 201 after a short wait, counting the most requests in flight at once."""

    def __init__(self) -> None:
        self.open, self.most, self._lock = 0, 0, threading.Lock()

    def answer(self, request: Request) -> tuple[int, bytes, float]:
        with self._lock:
            self.open += 1
            self.most = max(self.most, self.open)
        time.sleep(0.03)
        with self._lock:
            self.open -= 1
        return 201, b"", 0


def test_a_targets_concurrency_counts_every_worker_process(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """concurrency: 1 with two worker processes posting: one request in flight at a time."""
    raws = _fill(imap, 5)
    overlap = _Overlap()
    redmine.answer = overlap.answer
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, workers=2,
                        target={"concurrency": 1},
                        folders=[{"name": name, "project": "support"} for name in FOLDERS])
    run = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert len(set(dict(_WORKER.findall(run.stderr)).values())) == 2
    assert _ids(redmine.emails) == _ids(raws)
    assert overlap.most == 1


def test_a_run_on_a_terminal_stays_in_one_process(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """With a terminal on stdin (the first run may ask there), the folders share one process."""
    raws = _fill(imap, 2)
    path = _config(tmp_path, imap, redmine.url, workers=2)
    terminal, other = pty.openpty()
    try:
        run = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                             capture_output=True, text=True, timeout=60, stdin=other)
    finally:
        os.close(terminal)
        os.close(other)
    assert run.returncode == 0, run.stderr
    assert not _WORKER.search(run.stderr)
    assert _ids(redmine.emails) == _ids(raws)


def test_a_copy_another_process_is_posting_waits_for_its_answer(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """A copy whose twin another process is posting waits: a duplicate, not in doubt."""
    raw = make()
    imap.append("INBOX", raw)
    imap.append("Copy", raw)
    first = threading.Event()

    def slow_first(request: Request) -> tuple[int, bytes, float]:
        delay = 0.0 if first.is_set() else 1.0
        first.set()
        return 201, b"", delay

    redmine.answer = slow_first
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, workers=2,
                        folders=[{"name": "INBOX"}, {"name": "Copy"}])
    run = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert len(set(dict(_WORKER.findall(run.stderr)).values())) == 2
    assert redmine.emails == [raw]
    assert re.search(r"duplicate: already submitted as test/(INBOX|Copy) uid 1", run.stderr)
    assert imap.messages("INBOX") == imap.messages("Copy") == imap.messages("Quarantine") == {}
