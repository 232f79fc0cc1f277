"""Fault injection: SIGKILL the ingester at 30 points over a 300-message backlog.

Kill points: when Redmine has received a POST but not answered it; just after Redmine
answered (before or during the ledger write and the MOVE); and at random moments of a run
(login, SEARCH, FETCH, MOVE, ledger writes). After each kill the ingester is started again.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from imap_ingest.message import Message

from .support.dovecot import ImapAccount
from .support.ingest_env import ROOT, backlog, command, write_config
from .support.redmine_server import FakeRedmine, Request

MESSAGES = 300
KILLS = 30


class Killer:
    """Kills the running ingester when its Nth POST of a run arrives, or just after the answer."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.posts = 0
        self.at_post: int | None = None
        self.after_answer = False
        self.lock = threading.Lock()

    def arm(self, process: subprocess.Popen[bytes] | None, at_post: int | None = None,
            after_answer: bool = False) -> None:
        with self.lock:
            self.process, self.posts = process, 0
            self.at_post, self.after_answer = at_post, after_answer

    def answer(self, request: Request) -> tuple[int, bytes, float]:
        with self.lock:
            self.posts += 1
            if self.process is not None and self.posts == self.at_post:
                if self.after_answer:
                    # Lands while the client reads the answer, writes the ledger or moves.
                    threading.Timer(random.uniform(0, 0.004), self.process.kill).start()
                else:
                    self.process.kill()  # Redmine has the mail; the client never hears back
        return 201, b"", 0.002


def test_sigkill_at_30_points_loses_nothing_and_sends_nothing_twice(
        tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """SIGKILL at 30 points loses no message and submits none twice."""
    rng = random.Random(20261121)
    raws = backlog(imap, MESSAGES)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        folder={"move_on_success": "Done", "batch_size": 20})
    argv = command("run", "--once", "-c", str(path))
    killer = Killer()
    redmine.answer = killer.answer
    killed = 0
    for round_ in range(KILLS):
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        mode = round_ % 3
        killer.arm(process, rng.randint(1, 8) if mode < 2 else None, after_answer=mode == 1)
        if mode == 2:
            time.sleep(rng.uniform(0.2, 0.6))
            process.kill()
        process.wait(timeout=60)
        killed += process.returncode == -signal.SIGKILL
    killer.arm(None)
    assert run(argv) == 0

    posted = Counter(Message(raw).message_id for raw in redmine.emails)
    everything = {Message(raw).message_id for raw in raws}
    assert killed >= KILLS * 2 // 3, "most rounds must really have been killed mid-run"
    assert max(posted.values()) == 1, "a message was submitted twice"
    assert imap.messages("INBOX") == {}, "the source folder still holds messages"
    # In doubt (killed between recording "submitting" and hearing Redmine's answer) means
    # quarantined, never resent automatically. The operator checks the tracker, deletes the
    # copies it already has, and retries the rest.
    quarantine = imap.messages("Quarantine")
    assert 0 < len(quarantine) <= killed
    assert set(posted) | {Message(body).message_id for _, body in quarantine.values()} == (
        everything)
    with imap.client() as client:
        client.select_folder("Quarantine")
        have = [uid for uid, (_, body) in quarantine.items()
                if Message(body).message_id in posted]
        deleted = {Message(quarantine[uid][1]).message_id for uid in have}
        client.delete_messages(have)
        client.uid_expunge(have)
    assert run(command("retry", "Quarantine", "-c", str(path))) == 0
    assert run(argv) == 0

    posted = Counter(Message(raw).message_id for raw in redmine.emails)
    assert set(posted) == everything and max(posted.values()) == 1, "not exactly once"
    done = Counter(Message(body).message_id for _, body in imap.messages("Done").values())
    assert set(done) == set(posted) - deleted and max(done.values()) == 1, (
        "Done must hold each submitted message once, but for the copies the operator deleted")
    assert imap.messages("INBOX") == imap.messages("Quarantine") == {}


def run(argv: list[str]) -> int:
    return subprocess.run(argv, cwd=ROOT, capture_output=True).returncode
