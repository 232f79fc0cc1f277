"""SIGHUP: the service reloads its configuration, and keeps the old one if the new is bad."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import yaml

from .support.daemon import Daemon, get, start
from .support.dovecot import ImapAccount
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine


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
