"""`imap-ingest run` as a service: IDLE, reconnects, reload, and the status listener."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import ROOT, command, write_config
from .support.mail import make
from .support.redmine_server import FakeRedmine
from .test_service import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Daemon:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(command("run", "-c", str(path)), cwd=ROOT, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return err


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.communicate()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
          **config: Any) -> tuple[Daemon, int]:
    port = free_port()
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        http={"listen": f"127.0.0.1:{port}"}, **config)
    one = Daemon(path)
    daemon.append(one)
    wait_for(lambda: get_quiet(port, "/readyz") == 200)
    return one, port


def get_quiet(port: int, path: str) -> int:
    try:
        return get(port, path)[0]
    except OSError:
        return 0


def test_idle_brings_mail_in_at_once(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount,
                                     redmine: FakeRedmine) -> None:
    """With IDLE, mail appended during a 60 s poll interval is posted in seconds."""
    # Only IDLE can explain it (bench/latency.py measures it precisely).
    one, _ = start(daemon, tmp_path, imap, redmine, folder={"interval": "60s"})
    time.sleep(0.5)  # the first pass is done; the watcher is in IDLE
    raw = make(subject="idle")
    appended = time.monotonic()
    imap.append("INBOX", raw)
    wait_for(lambda: redmine.emails == [raw], timeout=5)
    assert time.monotonic() - appended < 5
    one.stop()


def test_without_idle_the_poll_still_works(daemon: list[Daemon], tmp_path: Path,
                                           imap: ImapAccount, redmine: FakeRedmine) -> None:
    """With idle off, the poll alone brings mail in and no IDLE is logged."""
    one, _ = start(daemon, tmp_path, imap, redmine, folder={"interval": "1s", "idle": False})
    imap.append("INBOX", make())
    wait_for(lambda: len(redmine.requests) == 1, timeout=10)
    assert "idle" not in one.stop().lower().replace("idle: false", "")


def test_dovecot_restart_is_recovered(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount,
                                      dovecot: Dovecot, redmine: FakeRedmine) -> None:
    """After dovecot restarts, mail still arrives and the reconnect is counted."""
    # Both connections (the kept one and the IDLE one) die with the server.
    one, port = start(daemon, tmp_path, imap, redmine, folder={"interval": "2s"})
    time.sleep(0.5)
    dovecot.restart()
    raw = make(subject="after restart")
    imap.append("INBOX", raw)
    wait_for(lambda: redmine.emails == [raw], timeout=20)
    wait_for(lambda: "imap_ingest_imap_reconnects_total" in get(port, "/metrics")[1]
             and metric(get(port, "/metrics")[1], "imap_ingest_imap_reconnects_total") >= 1)
    one.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_match_what_happened(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount,
                                     redmine: FakeRedmine) -> None:
    """/healthz, /readyz, and /metrics counting 3 submitted, 1 skipped, 1 failed, 1 held."""
    redmine.answer = lambda request: (422 if b"refuse me" in request.field("email") else 201,
                                      b"", 0)
    for subject in ("a", "b", "c", "skip me", "refuse me"):
        imap.append("INBOX", make(subject=subject))
    imap.append("INBOX", make(headers={"Auto-Submitted": "auto-replied"}))
    one, port = start(daemon, tmp_path, imap, redmine, folder={
        "move_on_failure": "Failed", "rules": [{"if": ["^Subject: skip me"], "then": "skip"}]})
    wait_for(lambda: len(redmine.requests) == 4)
    wait_for(lambda: metric(get(port, "/metrics")[1], "imap_ingest_messages_total") == 6)
    # The counters move as each message is dealt with; the pass completes after that.
    wait_for(lambda: metric(get(port, "/metrics")[1],
                            "imap_ingest_last_success_timestamp_seconds") > 0)
    text = get(port, "/metrics")[1]
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    for outcome, count in {"submitted": 3, "skipped": 1, "failed": 1, "held": 1}.items():
        assert metric(text, "imap_ingest_messages_total", outcome=outcome) == count, outcome
    assert metric(text, "imap_ingest_fetched_messages_total", folder="INBOX") == 6
    assert metric(text, "imap_ingest_submit_seconds_count", target="redmine") == 3
    assert metric(text, "imap_ingest_mail_to_ticket_seconds_count") == 3
    assert metric(text, "imap_ingest_last_success_timestamp_seconds") > time.time() - 60
    assert metric(text, "imap_ingest_backlog_messages") == 0
    assert get(port, "/nope")[0] == 404
    one.stop()


def test_sighup_reloads_and_a_bad_config_keeps_the_old(daemon: list[Daemon], tmp_path: Path,
                                                        imap: ImapAccount,
                                                        redmine: FakeRedmine) -> None:
    """SIGHUP reloads the config; a bad one is refused and the old one stays."""
    one, port = start(daemon, tmp_path, imap, redmine, folder={"interval": "1s"})
    data = yaml.safe_load(one.path.read_text())
    data["accounts"][0]["folders"][0]["name"] = "Other"
    imap.create("Other")
    good = yaml.safe_dump(data)
    one.path.write_text(good.replace("interval: 1s", "interval: soon"))
    one.process.send_signal(signal.SIGHUP)
    time.sleep(1)
    imap.append("INBOX", make(subject="old config"))
    wait_for(lambda: len(redmine.requests) == 1)  # still the old configuration
    one.path.write_text(good)
    one.process.send_signal(signal.SIGHUP)
    raw = make(subject="new config")
    imap.append("Other", raw)
    wait_for(lambda: redmine.emails[-1:] == [raw])
    assert get(port, "/readyz")[0] == 200  # the listener follows the new service
    err = one.stop()
    assert "reload refused, the running configuration stays" in err
    assert "folders[0].interval" in err and "configuration reloaded" in err


def test_progress_line_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """No progress line is shown when stderr is not a terminal."""
    from imap_ingest.ingest import _Progress

    quiet = _Progress("a/INBOX", 500)
    quiet.show(10)
    assert not quiet.shown and capsys.readouterr().err == ""


def test_progress_line_on_a_terminal_for_a_large_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, over 100 messages get a progress bar, cleared at the end."""
    # Fewer than that get none.
    import io
    import sys

    from imap_ingest.ingest import _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    _Progress("a/INBOX", 100).show(50)
    assert screen.getvalue() == ""
    progress = _Progress("a/INBOX", 200)
    progress.show(100)
    assert screen.getvalue() == f"\ra/INBOX [{'#' * 15:<30}] 100/200"
    progress.close()
    assert screen.getvalue().endswith("\r\x1b[K")


def test_a_folder_that_cannot_connect_does_not_stop_the_others(
        daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """An unreachable account does not stop the others; it backs off, ready."""
    # One account's server is unreachable: the other's mail still flows, and the broken
    # one is reported as backing off (ready), not crashed.
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        folder={"interval": "1s"})
    data = yaml.safe_load(path.read_text())
    broken = {**data["accounts"][0], "name": "broken", "port": free_port()}
    data["accounts"].append(broken)
    port = free_port()
    data["http"] = {"listen": f"127.0.0.1:{port}"}
    path.write_text(yaml.safe_dump(data))
    one = Daemon(path)
    daemon.append(one)
    imap.append("INBOX", make())
    wait_for(lambda: len(redmine.requests) == 1)
    wait_for(lambda: get_quiet(port, "/readyz") == 200)
    err = one.stop()
    assert "account broken" in err and "trying again in" in err
