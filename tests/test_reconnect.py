"""The service rides out IMAP servers that restart or cannot be reached."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from .support.daemon import Daemon, free_port, get, get_quiet, metric, start
from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine


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
