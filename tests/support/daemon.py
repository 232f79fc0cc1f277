"""The service (`imap-ingest run` without --once) with its status listener, and its answers."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from .dovecot import ImapAccount, free_ports
from .ingest_env import ROOT, command, write_config
from .process import wait_for


class Served(Protocol):
    """A tracker the service posts to: the FakeRedmine or the e2e suite's real one."""

    @property
    def url(self) -> str:
        """Its base URL."""


def free_port() -> int:
    """A loopback port free right now."""
    return free_ports(1)[0]


class Daemon:
    """The service running on the config at ``path``; the ``daemon`` fixture kills leftovers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(command("run", "-c", str(path)), cwd=ROOT, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        """SIGTERM, expect exit 0, and return what it logged."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return err


def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the status listener: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount, redmine: Served,
          **config: Any) -> tuple[Daemon, int]:
    """Start the service on a fresh config and wait until it is ready: (daemon, port)."""
    port = free_port()
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        http={"listen": f"127.0.0.1:{port}"}, **config)
    one = Daemon(path)
    daemon.append(one)
    wait_for(lambda: get_quiet(port, "/readyz") == 200)
    return one, port


def get_quiet(port: int, path: str) -> int:
    """The status of GET ``path``, or 0 while nothing listens yet."""
    try:
        return get(port, path)[0]
    except OSError:
        return 0


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
