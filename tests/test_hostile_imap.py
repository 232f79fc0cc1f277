"""IMAP servers that misbehave: each ends in a clean error or a message left for later,
never a hang, a MemoryError or a traceback."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.config import Account
from imap_ingest.errors import ConnectionLost, MailboxError
from imap_ingest.locks import folder_lock
from imap_ingest.mailbox import Mailbox
from imap_ingest.worker import IDLE_SETTLED

from .support.daemon import Daemon
from .support.dovecot import ImapAccount
from .support.hostile_imap import HostileImap, Script
from .support.mail import make
from .support.process import wait_for

TIMEOUT = 2.0
MESSAGE = make(subject="hostile")
SECOND = make(subject="second")


def account(server: HostileImap | ImapAccount, **extra: Any) -> Account:
    return Account.model_validate({
        "name": "hostile", "host": server.host, "port": server.port, "security": "none",
        "username": "user", "password": "pw", "timeout": TIMEOUT,
        "folders": [{"name": "INBOX"}], **extra})


@pytest.fixture
def script() -> Script:
    return Script(messages={1: MESSAGE, 2: SECOND})


@pytest.fixture
def server(script: Script) -> Iterator[HostileImap]:
    with HostileImap(script) as hostile:
        yield hostile


def fetch_all(server: HostileImap, max_size: int = 1024 * 1024) -> list[Any]:
    with Mailbox(account(server)) as mailbox:
        mailbox.select("INBOX")
        return list(mailbox.fetch(mailbox.new_uids(), 10, max_size))


def test_a_normal_answer_is_read(server: HostileImap) -> None:
    """The scripted server, behaving, gives both messages whole (the script is sound)."""
    assert [(f.uid, f.raw) for f in fetch_all(server)] == [(1, MESSAGE), (2, SECOND)]


def test_fetch_without_body_is_left_for_next_pass(server: HostileImap, script: Script,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A FETCH answer without BODY[] is not an empty message: that UID is not yielded."""
    script.body_fetch = "no-body"
    with Mailbox(account(server)) as mailbox:
        mailbox.select("INBOX")
        assert [f.uid for f in mailbox.fetch(mailbox.new_uids(), 10, 1024)] == [2]
        assert mailbox.unfetched == [1]
    assert "without its body" in caplog.text


def test_under_reported_size_is_caught_by_the_bytes(server: HostileImap, script: Script) -> None:
    """An under-reported size is caught by the bytes; no more than max_size + 1 are asked for."""
    script.sizes[1] = 10
    del script.messages[2]
    [fetched] = fetch_all(server, max_size=100)
    assert fetched.uid == 1 and fetched.raw is None and fetched.size > 100
    assert any(b"BODY.PEEK[]<0.101>" in command for command in script.commands)


def test_huge_literal_is_a_lost_connection(server: HostileImap, script: Script) -> None:
    """A 50 GB literal ends in ConnectionLost at once, not MemoryError."""
    script.body_fetch = "huge-literal"
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="50000000000-byte literal"):
        fetch_all(server)
    assert time.monotonic() - started < TIMEOUT


@pytest.mark.parametrize("mode", ["drip", "flood"])
def test_endless_answer_ends_within_the_timeout(server: HostileImap, script: Script,
                                                mode: str) -> None:
    """A dripped or flooded FETCH ends in ConnectionLost within the account's timeout."""
    script.body_fetch = mode  # type: ignore[assignment]
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="in time"):
        fetch_all(server)
    assert time.monotonic() - started < TIMEOUT + 1.5


def test_select_without_uidvalidity(server: HostileImap, script: Script) -> None:
    """A SELECT without UIDVALIDITY is that folder's MailboxError, not a lost connection."""
    script.select_uidvalidity = False
    with Mailbox(account(server)) as mailbox, pytest.raises(MailboxError) as caught:
        mailbox.select("INBOX")
    assert "UIDVALIDITY" in str(caught.value)
    assert not isinstance(caught.value, ConnectionLost)


def test_non_ascii_password_authenticates_plain(server: HostileImap, script: Script) -> None:
    """A password that is not ASCII goes as AUTHENTICATE PLAIN in UTF-8, not LOGIN."""
    with Mailbox(account(server, password="pässwörd")):
        pass
    assert script.logins == ["\0user\0pässwörd".encode()]


def once(tmp_path: Path, *servers: HostileImap | ImapAccount) -> int:
    """``run --once`` over one account per server, each into a directory target."""
    accounts = [{"name": f"a{index}", "host": server.host, "port": server.port,
                 "security": "none", "username": getattr(server, "username", "user"),
                 "password": getattr(server, "password", "pw"), "timeout": TIMEOUT,
                 "folders": [{"name": "INBOX"}]} for index, server in enumerate(servers)]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "accounts": accounts, "state_dir": str(tmp_path / "state"),
        "targets": {"files": {"type": "directory", "path": str(tmp_path / "out")}}}))
    return main(["run", "--once", "-c", str(path)])


@pytest.mark.parametrize(("greeting", "security"), [
    ("drip", "none"), ("tls-drip", "ssl"), ("starttls-drip", "starttls")])
def test_a_dripped_greeting_or_handshake_ends_within_the_timeout(
        server: HostileImap, script: Script, greeting: str, security: str) -> None:
    """A greeting, TLS handshake or STARTTLS handshake dripped a byte at a time ends in time."""
    script.greeting = greeting  # type: ignore[assignment]
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        Mailbox(account(server, security=security))
    assert time.monotonic() - started < TIMEOUT + 1.5


def test_once_that_cannot_finish_frees_its_lock(server: HostileImap, script: Script,
                                                tmp_path: Path) -> None:
    """--once on a dripping server exits 75 in time and leaves the folder lock free."""
    script.body_fetch = "drip"
    started = time.monotonic()
    assert once(tmp_path, server) == 75
    assert time.monotonic() - started < TIMEOUT + 3
    with folder_lock(tmp_path / "state", "a0", "INBOX"):
        pass


def test_select_without_uidvalidity_spares_other_accounts(
        server: HostileImap, script: Script, imap: ImapAccount, tmp_path: Path) -> None:
    """A server without UIDVALIDITY exits 75; the next account's mail is still taken."""
    script.select_uidvalidity = False
    imap.append("INBOX", MESSAGE)
    assert once(tmp_path, server, imap) == 75
    assert [p.suffix for p in sorted((tmp_path / "out").iterdir())] == [".eml", ".json"]


def test_once_with_a_body_left_out_exits_75(server: HostileImap, script: Script,
                                            tmp_path: Path) -> None:
    """`run --once` takes the message it got and exits 75 for the one answered without a body."""
    script.body_fetch = "no-body"
    assert once(tmp_path, server) == 75
    assert len(list((tmp_path / "out").glob("*.eml"))) == 1


def test_idle_that_announces_nothing_is_said_once_and_the_poll_goes_on(
        script: Script, tmp_path: Path, daemon: list[Daemon]) -> None:
    """A silent IDLE: the polls bring the mail in, and the log says so once, with the fix."""
    script.messages, script.idle = {}, True
    with HostileImap(script) as server:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "accounts": [{"name": "a", "host": server.host, "port": server.port,
                          "security": "none", "username": "user", "password": "pw",
                          "folders": [{"name": "INBOX", "interval": "1s"}]}],
            "state_dir": str(tmp_path / "state"),
            "targets": {"files": {"type": "directory", "path": str(tmp_path / "out")}}}))
        one = Daemon(path)
        daemon.append(one)
        wait_for(lambda: b"IDLE" in script.commands, timeout=10)
        for uid, raw in ((1, MESSAGE), (2, SECOND), (3, make(subject="third"))):
            time.sleep(IDLE_SETTLED + 1)  # the watcher is settled in IDLE
            script.messages[uid] = raw
            wait_for(functools.partial(_written, tmp_path / "out", uid), timeout=10)
        err = one.stop()
    assert err.count("the server's IDLE did not announce new mail that a poll then found") \
        == 1
    assert "On Cyrus run idled" in err and "IMAP_ENHANCEDIDLE=1" in err


def test_idle_news_split_mid_line_is_read_whole(script: Script) -> None:
    """An IDLE announcement that arrives in two segments is one EXISTS, not a lost session."""
    script.idle = script.idle_split = True
    heard = threading.Event()
    with HostileImap(script) as server, Mailbox(account(server)) as mailbox:
        mailbox.select("INBOX", readonly=True)
        mailbox.idle(heard, heard.set)
    assert heard.is_set()


def _written(directory: Path, count: int) -> bool:
    return len(list(directory.glob("*.eml"))) == count


def test_notify_refused_is_said_once_and_the_folders_are_polled(
        script: Script, tmp_path: Path, daemon: list[Daemon]) -> None:
    """NOTIFY refused: said once, not asked again on reconnecting; IDLE on one, rest polled."""
    script.messages, script.idle, script.notify, script.idle_bye = {}, True, True, True
    with HostileImap(script) as server:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "accounts": [{"name": "a", "host": server.host, "port": server.port,
                          "security": "none", "username": "user", "password": "pw",
                          "max_connections": 2,
                          "folders": [{"name": name, "interval": "1s"}
                                      for name in ("INBOX", "A", "B")]}],
            "state_dir": str(tmp_path / "state"),
            "targets": {"files": {"type": "directory", "path": str(tmp_path / "out")}}}))
        one = Daemon(path)
        daemon.append(one)
        wait_for(lambda: b"IDLE" in script.commands, timeout=10)
        script.messages[1] = MESSAGE
        wait_for(functools.partial(_written, tmp_path / "out", 1), timeout=10)
        wait_for(lambda: script.commands.count(b"IDLE") >= 2, timeout=10)  # reconnected
        err = one.stop()
    notify = [c for c in script.commands if c.startswith(b"NOTIFY")]
    assert notify == [b'NOTIFY SET (mailboxes ("INBOX" "A" "B") (MessageNew MessageExpunge))']
    assert script.commands.index(b'EXAMINE "INBOX"') > script.commands.index(notify[0])
    assert err.count("NOTIFY refused") == 1 and "IDLE on INBOX; polling A, B" in err
