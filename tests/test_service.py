"""`imap-ingest run` as a process: polling on an interval, signals, no overlapping passes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .support.dovecot import ImapAccount
from .support.ingest_env import ROOT, backlog, command, write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(command(*args), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def stop(process: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(sig)
    _, err = process.communicate(timeout=20)
    return process.returncode, err


def test_daemon_polls_and_picks_up_new_mail(tmp_path: Path, imap: ImapAccount,
                                            redmine: FakeRedmine) -> None:
    """Mail that arrives while the service runs is submitted on the next interval; SIGTERM → 0."""
    config = write_config(tmp_path / "c.yaml", imap, redmine.url, folder={"interval": "1s"})
    process = start("run", "-c", str(config))
    try:
        raw = make(subject="arrives later")
        time.sleep(1.5)  # the first pass has run and found nothing
        imap.append("INBOX", raw)
        wait_for(lambda: len(redmine.requests) == 1)
        wait_for(lambda: imap.messages("INBOX") == {})
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert redmine.emails == [raw]
    assert "SIGTERM received" in err


@pytest.mark.parametrize("once", [True, False], ids=["once", "daemon"])
def test_sigterm_finishes_the_message_in_hand(tmp_path: Path, imap: ImapAccount,
                                              redmine: FakeRedmine, once: bool) -> None:
    """SIGTERM mid-backlog finishes the post in flight and exits 0."""
    # The post in flight completes and is disposed of, the rest stay untouched — nothing
    # lost, nothing sent twice.
    redmine.answer = lambda request: (201, b"", 0.4)
    raws = backlog(imap, 10)
    config = write_config(tmp_path / "c.yaml", imap, redmine.url, folder={"batch_size": 100})
    process = start("run", *(["--once"] if once else []), "-c", str(config))
    wait_for(lambda: len(redmine.requests) >= 2)
    code, err = stop(process)
    # --once stopped early has left mail for the next run: 75, as cron expects.
    assert code == (75 if once else 0), err
    submitted = redmine.emails
    remaining = [body for _, body in imap.messages("INBOX").values()]
    assert 2 <= len(submitted) < 10
    assert sorted(submitted + remaining) == sorted(raws)  # each exactly once, in one place


def test_passes_of_one_folder_never_overlap(tmp_path: Path, imap: ImapAccount,
                                            redmine: FakeRedmine) -> None:
    """An interval far shorter than a pass: no message is posted twice."""
    redmine.answer = lambda request: (201, b"", 0.3)
    raws = backlog(imap, 6)
    config = write_config(tmp_path / "c.yaml", imap, redmine.url, folder={"interval": "0.1s"})
    process = start("run", "-c", str(config))
    try:
        wait_for(lambda: imap.messages("INBOX") == {})
        time.sleep(0.5)
    finally:
        code, err = stop(process, signal.SIGINT)
    assert code == 0, err
    assert sorted(redmine.emails) == sorted(raws)


def test_console_script_and_module_help() -> None:
    """`imap-ingest --help` and `python -m imap_ingest run --help` teach, with examples."""
    script = shutil.which("imap-ingest")
    assert script, "pip install -e . provides the imap-ingest console script"
    top = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "imap-ingest run --once -c config.yaml" in top and "exit codes" in top
    for name in ("run", "check"):
        out = subprocess.run(command(name, "--help"),
                             capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ}).stdout
        assert "example" in out and "--config" in out and "--log-format" in out


def test_no_command_is_a_usage_error() -> None:
    """No subcommand is a usage error exiting 64."""
    result = subprocess.run(command(), capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 64 and "usage:" in result.stderr
