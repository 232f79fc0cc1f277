"""POP3 accounts against a real dovecot-pop3d: UIDL-based new mail, keep and delete modes,
a crash between RETR and DELE, a refused message kept (and spooled), plain, STLS,
implicit TLS and XOAUTH2 logins, and a server without UIDL (a scripted one)."""

from __future__ import annotations

import poplib
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.errors import EX_CONFIG, EX_OK
from imap_ingest.pop3 import Maildrop

from .support.daemon import Daemon
from .support.dovecot import Dovecot, ImapAccount, free_ports
from .support.ingest_env import ROOT, command, pop3_config
from .support.mail import make
from .support.oauth_env import oauth2
from .support.process import wait_for
from .support.redmine_server import FakeRedmine, Request
from .support.scripted_pop3 import ScriptedPop3
from .support.token_service import TokenService


@pytest.fixture
def box(dovecot_pop3: Dovecot) -> ImapAccount:
    """A fresh mailbox on the dovecot that also serves POP3."""
    return dovecot_pop3.account()


def run_once(path: Path) -> int:
    return main(["run", "--once", "-c", str(path)])


def maildrop(server: Dovecot, box: ImapAccount) -> list[bytes]:
    """The messages POP3 shows now, read with poplib itself."""
    client = poplib.POP3(box.host, server.pop3_port, timeout=10)
    try:
        client.user(box.username)
        client.pass_(box.password)
        count = len(client.list()[1])
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        client.quit()


def test_keep_leaves_mail_and_never_ingests_it_twice(tmp_path: Path, dovecot_pop3: Dovecot,
                                                     box: ImapAccount,
                                                     redmine: FakeRedmine) -> None:
    """keep: true submits each message once, by UIDL, and leaves it on the server."""
    box.append("INBOX", make(subject="first"))
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url)
    assert run_once(path) == EX_OK
    box.append("INBOX", make(subject="second"))
    assert run_once(path) == EX_OK
    assert run_once(path) == EX_OK
    assert [b"Subject: first" in e or b"Subject: second" in e for e in redmine.emails] == [
        True, True]
    assert len(redmine.emails) == 2
    assert len(maildrop(dovecot_pop3, box)) == 2


def test_keep_false_deletes_only_what_the_tracker_accepted(tmp_path: Path,
                                                           dovecot_pop3: Dovecot,
                                                           box: ImapAccount,
                                                           redmine: FakeRedmine) -> None:
    """keep: false DELEs the accepted message at QUIT; a refused one stays on the server."""
    box.append("INBOX", make(subject="taken"))
    box.append("INBOX", make(subject="refused"))
    redmine.answer = lambda r: ((422, b"refused", 0) if b"refused" in r.field("email")
                                else (201, b"", 0))
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, keep=False)
    assert run_once(path) == EX_OK
    left = maildrop(dovecot_pop3, box)
    assert len(left) == 1 and b"Subject: refused" in left[0]
    assert run_once(path) == EX_OK  # the refusal is recorded: not tried again
    assert len(redmine.emails) == 2


def test_refused_message_is_kept_spooled_shown_and_retried(tmp_path: Path,
                                                           dovecot_pop3: Dovecot,
                                                           box: ImapAccount,
                                                           redmine: FakeRedmine,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    """A refusal is left on the server, spooled, shown by status, and retried by `retry`."""
    box.append("INBOX", make(subject="refused once"))
    redmine.answer = lambda r: (422, b"no such project", 0)
    spool = tmp_path / "refused"
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, keep=False,
                       folder={"failure_spool": str(spool)})
    assert run_once(path) == EX_OK
    assert len(maildrop(dovecot_pop3, box)) == 1
    kept = list(spool.glob("*.eml"))
    assert len(kept) == 1 and b"Subject: refused once" in kept[0].read_bytes()
    capsys.readouterr()
    assert main(["status", "-c", str(path)]) == EX_OK
    assert "pop/INBOX: 1 failed" in capsys.readouterr().out
    redmine.answer = redmine.default
    assert main(["retry", "-c", str(path), "INBOX"]) == EX_OK
    assert "released 1 message(s)" in capsys.readouterr().out
    assert run_once(path) == EX_OK
    assert len(redmine.emails) == 2
    assert maildrop(dovecot_pop3, box) == []


def with_desk(path: Path, desk: ImapAccount, port: int | None = None) -> Path:
    """``path``'s config plus an IMAP account ``desk`` (its INBOX watched) on ``port``."""
    data = yaml.safe_load(path.read_text())
    data["accounts"].append({"name": "desk", "host": desk.host, "port": port or desk.port,
                             "security": "none", "username": desk.username,
                             "password": desk.password, "timeout": "5s",
                             "folders": [{"name": "INBOX", "project": "support"}]})
    path.write_text(yaml.safe_dump(data))
    return path


def test_refusal_is_copied_to_another_accounts_imap_folder_else_spooled(
        tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount, redmine: FakeRedmine,
        caplog: pytest.LogCaptureFixture) -> None:
    """A refusal is appended to desk's Refused (kept on the server); desk down: spooled."""
    desk = dovecot_pop3.account()
    box.append("INBOX", make(subject="refused"))
    redmine.answer = lambda r: (422, b"no such project", 0)
    refused = {"failure_folder": {"account": "desk", "folder": "Refused"},
               "failure_spool": str(tmp_path / "spool")}
    # One process: caplog sees only this process's records, not a worker process's.
    path = with_desk(pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url,
                                 keep=False, folder=refused, top={"workers": 1}), desk)
    assert run_once(path) == EX_OK
    [(flags, body)] = desk.messages("Refused").values()
    assert b"Subject: refused" in body and b"$ImapIngestFailed" in flags
    assert "a copy is in IMAP folder Refused of account desk" in caplog.text
    assert list((tmp_path / "spool").glob("*.eml")) == []
    assert len(maildrop(dovecot_pop3, box)) == 1
    assert run_once(path) == EX_OK  # recorded: neither tried nor copied again
    assert len(desk.messages("Refused")) == 1

    [closed] = free_ports(1)
    other = dovecot_pop3.account()
    other.append("INBOX", make(subject="refused, IMAP down"))
    (tmp_path / "down").mkdir()
    down = with_desk(pop3_config(tmp_path / "down" / "c.yaml", dovecot_pop3, other, redmine.url,
                                 folder=refused, top={"workers": 1}), desk, port=closed)
    assert run_once(down) != EX_OK  # desk's own INBOX cannot be read
    [eml] = (tmp_path / "spool").glob("*.eml")
    assert b"Subject: refused, IMAP down" in eml.read_bytes()
    assert "spooling instead" in caplog.text

    for wrong in ("nope", "pop"):
        bad = pop3_config(tmp_path / f"{wrong}.yaml", dovecot_pop3, box, redmine.url,
                          folder={"failure_folder": {"account": wrong, "folder": "X"}})
        assert main(["check", "-c", str(bad)]) == EX_CONFIG


def test_crash_between_retr_and_dele_neither_loses_nor_doubles(
        tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount, redmine: FakeRedmine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass dying between RETR and DELE sends no QUIT; the next deletes it, unsent again."""
    box.append("INBOX", make(subject="once only"))
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, keep=False)

    def crash(self: Maildrop, uids: object) -> None:
        raise RuntimeError("killed between RETR and DELE")

    with monkeypatch.context() as patch:
        patch.setattr(Maildrop, "delete", crash)
        assert run_once(path) != EX_OK
    assert len(maildrop(dovecot_pop3, box)) == 1
    assert run_once(path) == EX_OK
    assert len(redmine.emails) == 1
    assert maildrop(dovecot_pop3, box) == []


def test_sigkill_while_posting_leaves_the_message_and_sends_it_once(
        tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount, redmine: FakeRedmine) -> None:
    """A run SIGKILLed mid-post leaves the message on the server; the next sends it not again."""
    box.append("INBOX", make(subject="killed"))
    answered = threading.Event()

    def slow(request: Request) -> tuple[int, bytes, float]:
        answered.set()
        return 201, b"", 3.0

    redmine.answer = slow
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, keep=False)
    proc = subprocess.Popen(command("run", "--once", "-c", str(path)), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert answered.wait(30)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert len(maildrop(dovecot_pop3, box)) == 1  # nothing lost
    redmine.answer = redmine.default
    run_once(path)  # in doubt: quarantined, not sent again (in_doubt: quarantine)
    assert len(redmine.emails) == 1
    assert len(maildrop(dovecot_pop3, box)) == 1


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_logins(tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount,
                    redmine: FakeRedmine, security: str) -> None:
    """POP3S and STLS, trusting the test CA."""
    box.append("INBOX", make(subject="over tls"))
    port = dovecot_pop3.pop3s_port if security == "ssl" else dovecot_pop3.pop3_port
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, port=port,
                       security=security, ca_file=box.ca_file)
    assert run_once(path) == EX_OK
    assert len(redmine.emails) == 1


def test_xoauth2_login(tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount,
                       redmine: FakeRedmine, provider: TokenService) -> None:
    """AUTH XOAUTH2 with a token from the refresh-token flow, as IMAP accounts do."""
    box.append("INBOX", make(subject="with a token"))
    token_file = tmp_path / "refresh-token.json"
    token_file.write_text(provider.grant(box.username) + "\n")
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, auth="xoauth2",
                       password=None, oauth2=oauth2(provider, token_file))
    assert run_once(path) == EX_OK
    assert len(redmine.emails) == 1


def test_check_reads_a_pop3_accounts_refresh_token(
        tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount, redmine: FakeRedmine,
        provider: TokenService, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` on a POP3 XOAUTH2 account says what its stored refresh token is, as for IMAP."""
    token_file = tmp_path / "refresh-token.json"
    token_file.write_text(provider.grant(box.username) + "\n")
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, auth="xoauth2",
                       password=None, oauth2=oauth2(provider, token_file))
    assert main(["check", "-c", str(path)]) == EX_OK
    assert "OK    account pop refresh token: " in capsys.readouterr().out


def scripted_config(path: Path, server: ScriptedPop3, redmine_url: str, keep: bool) -> Path:
    data = {"accounts": [{"name": "old", "protocol": "pop3", "host": "127.0.0.1",
                          "port": server.port, "security": "none", "username": "u",
                          "password": "p", "keep": keep,
                          "folders": [{"name": "INBOX", "project": "support"}]}],
            "targets": {"redmine": {"type": "redmine", "url": redmine_url, "key": "s3cret-key",
                                    "timeout": "5s"}},
            "state_dir": str(path.parent / "state")}
    path.write_text(yaml.safe_dump(data))
    return path


def test_server_without_uidl(tmp_path: Path, redmine: FakeRedmine,
                             caplog: pytest.LogCaptureFixture) -> None:
    """No UIDL: a clear error under keep: true; keep: false submits each once and deletes it."""
    server = ScriptedPop3([make(subject="a"), make(subject="b")])
    try:
        kept = scripted_config(tmp_path / "keep.yaml", server, redmine.url, keep=True)
        assert run_once(kept) == EX_CONFIG
        assert "the server has no UIDL" in caplog.text
        assert redmine.emails == []
        deleting = scripted_config(tmp_path / "delete.yaml", server, redmine.url, keep=False)
        assert run_once(deleting) == EX_OK
        assert len(redmine.emails) == 2 and server.messages == []
        assert "UIDL" in server.commands and "TOP" in server.commands
    finally:
        server.close()


def test_check_logs_in_and_counts_the_maildrop(tmp_path: Path, dovecot_pop3: Dovecot,
                                               box: ImapAccount, redmine: FakeRedmine,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`check` logs in over POP3 and counts the maildrop, creating no ledger."""
    box.append("INBOX", make(subject="waiting"))
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url)
    assert main(["check", "-c", str(path)]) == EX_OK
    out = capsys.readouterr().out
    assert f"logged in as {box.username}" in out and "1 new message(s)" in out
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"folder": {"move_on_failure": "failed"}}, "POP3 has no folders to move or copy into"),
    ({"folder": {"rules": [{"then": {"move": "x"}}]}}, "rules[0]"),
    ({"folder": {"idle": True}}, "POP3 has no IDLE"),
    ({"second": True}, "a POP3 account has one folder"),
], ids=["move-on-failure", "rule-move", "idle", "two-folders"])
def test_what_pop3_cannot_do_is_refused_in_the_config(
        tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount, redmine: FakeRedmine,
        change: dict[str, Any], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Folders to move into, IDLE and a second folder are configuration errors on POP3."""
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url,
                       folder=change.get("folder"))
    if change.get("second"):
        data = yaml.safe_load(path.read_text())
        data["accounts"][0]["folders"].append({"name": "Other"})
        path.write_text(yaml.safe_dump(data))
    assert main(["check", "-c", str(path)]) == EX_CONFIG
    assert message in capsys.readouterr().err


def test_a_message_larger_than_listed_is_read_no_further_than_allowed(
        tmp_path: Path, redmine: FakeRedmine) -> None:
    """LIST understates a 2 MB message: it is refused as too large, never sent cut short."""
    big = make(subject="big", body="x" * 2_000_000)
    server = ScriptedPop3([big], listed_size=100)
    try:
        path = scripted_config(tmp_path / "c.yaml", server, redmine.url, keep=False)
        data = yaml.safe_load(path.read_text())
        data["accounts"][0]["folders"][0]["max_message_size"] = "1M"
        path.write_text(yaml.safe_dump(data))
        assert run_once(path) == EX_OK
        assert redmine.emails == [] and server.messages == [big]
        assert "DELE" not in server.commands
    finally:
        server.close()


def test_the_service_polls_the_maildrop_every_interval(tmp_path: Path, dovecot_pop3: Dovecot,
                                                       box: ImapAccount, redmine: FakeRedmine,
                                                       daemon: list[Daemon]) -> None:
    """`run` polls the maildrop on the folder's interval (no IDLE) and deletes what it took."""
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, keep=False,
                       folder={"interval": "1s"})
    service = Daemon(path)
    daemon.append(service)
    for n in (1, 2):
        box.append("INBOX", make(subject=f"polled {n}"))
        wait_for(lambda n=n: len(redmine.emails) == n)  # type: ignore[misc]
    wait_for(lambda: maildrop(dovecot_pop3, box) == [])
    assert "Traceback" not in service.stop()
    assert len(redmine.emails) == 2


BIG_BODY = ("x" * 76 + "\n") * 300  # 23 KB, over the 10k below


def test_oversized_mail_is_decided_on_its_headers_and_never_retrieved(
        tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount, redmine: FakeRedmine,
        caplog: pytest.LogCaptureFixture) -> None:
    """Over max_message_size, TOP n 0 runs the header rules: discard DELEs, skip leaves, no RETR."""
    box.append("INBOX", make(subject="[spam] big", body=BIG_BODY))
    box.append("INBOX", make(subject="[list] big", body=BIG_BODY))
    box.append("INBOX", make(subject="just big", body=BIG_BODY))
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url, keep=False,
                       folder={"max_message_size": "10k", "rules": [
                           {"name": "spam", "if": [r"^Subject: \[spam\]"], "then": "discard"},
                           {"name": "list", "if": [r"^Subject: \[list\]"], "then": "skip"}]})
    assert run_once(path) == EX_OK
    assert all(f"1 {outcome}" in caplog.text for outcome in ("discarded", "failed", "skipped"))
    assert "over max_message_size" in caplog.text
    wait_for(lambda: dovecot_pop3.commands("pop3", box.username).get("top") == 3)
    assert dovecot_pop3.commands("pop3", box.username) == {"top": 3, "retr": 0, "del": 1}
    assert run_once(path) == EX_OK  # all three settled: not looked at again
    wait_for(lambda: dovecot_pop3.sessions("pop3", box.username) == 2)
    assert dovecot_pop3.commands("pop3", box.username) == {"top": 3, "retr": 0, "del": 1}
    assert redmine.emails == []
    left = maildrop(dovecot_pop3, box)
    assert [b"[list] big" in raw or b"just big" in raw for raw in left] == [True, True]


def test_oversized_mail_with_body_rules_is_refused_without_top(
        tmp_path: Path, dovecot_pop3: Dovecot, box: ImapAccount, redmine: FakeRedmine,
        caplog: pytest.LogCaptureFixture) -> None:
    """A body rule needs the whole message: an oversized one is refused as too large, no TOP."""
    box.append("INBOX", make(subject="[spam] big", body=BIG_BODY))
    path = pop3_config(tmp_path / "c.yaml", dovecot_pop3, box, redmine.url,
                       folder={"max_message_size": "10k", "rules": [
                           {"if": [{"body": "x{70}"}], "then": "discard"}]})
    assert run_once(path) == EX_OK
    assert "over max_message_size" in caplog.text
    wait_for(lambda: bool(dovecot_pop3.commands("pop3", box.username)))
    assert dovecot_pop3.commands("pop3", box.username) == {"top": 0, "retr": 0, "del": 0}
    assert len(maildrop(dovecot_pop3, box)) == 1
