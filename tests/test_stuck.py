"""A folder whose pass makes no progress for longer than its limit is reported by /healthz
(503, so that Kubernetes restarts the pod) and by the metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imap_ingest.config import load
from imap_ingest.worker import stall_limit

from .support.daemon import Daemon, free_port, get, get_quiet, metric
from .support.dovecot import ImapAccount
from .support.hostile_http import HostileHttp, silent
from .support.ingest_env import write_config
from .support.mail import make
from .support.process import wait_for


@pytest.fixture
def mute() -> Iterator[HostileHttp]:
    """A tracker that takes each request and never answers."""
    server = HostileHttp(silent)
    yield server
    server.close()


def test_a_stuck_pass_fails_healthz(daemon: list[Daemon], tmp_path: Path, imap: ImapAccount,
                                    mute: HostileHttp) -> None:
    """A pass waiting on a tracker past stuck_after: /healthz 503 names it, and the metric."""
    imap.append("INBOX", make(subject="never answered"))
    port = free_port()
    path = write_config(tmp_path / "config.yaml", imap, mute.url, target={"timeout": "60s"},
                        http={"listen": f"127.0.0.1:{port}", "stuck_after": "3s"},
                        shutdown_grace="1s")
    one = Daemon(path)
    daemon.append(one)
    wait_for(lambda: get_quiet(port, "/readyz") == 200 and mute.served == 1)
    assert get(port, "/healthz") == (200, "ok\n")
    wait_for(lambda: get(port, "/healthz")[0] == 503, timeout=10)
    body = get(port, "/healthz")[1]
    assert body.startswith("stuck: test/INBOX (no progress for ")
    text = get(port, "/metrics")[1]
    assert metric(text, "imap_ingest_stuck_workers") == 1
    assert metric(text, "imap_ingest_pass_stalled_seconds", folder="INBOX") >= 3
    one.stop()


def test_the_default_limit_covers_the_slowest_step(tmp_path: Path, imap: ImapAccount) -> None:
    """Without stuck_after, the limit is 4 times the longest account or target timeout."""
    path = write_config(tmp_path / "config.yaml", imap, "http://127.0.0.1:1",
                        target={"timeout": "90s"}, account={"timeout": "20s"},
                        http={"listen": "127.0.0.1:1"})
    config = load(path)
    assert stall_limit(config, config.accounts[0]) == 360
    explicit = write_config(tmp_path / "explicit.yaml", imap, "http://127.0.0.1:1",
                            http={"listen": "127.0.0.1:1", "stuck_after": "10m"})
    config = load(explicit)
    assert stall_limit(config, config.accounts[0]) == 600
