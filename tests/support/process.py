"""`imap-ingest run` as a child process of the test: start it, wait on it, signal it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

from .ingest_env import ROOT, command


def start(*args: str) -> subprocess.Popen[str]:
    """``imap-ingest ARGS`` running, its output piped."""
    return subprocess.Popen(command(*args), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def stop(process: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
    """Send ``sig`` and wait for the exit: (exit code, stderr)."""
    process.send_signal(sig)
    _, err = process.communicate(timeout=20)
    return process.returncode, err
