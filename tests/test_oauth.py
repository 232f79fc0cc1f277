"""OAuth2 logins against a real dovecot whose oauth2 passdb asks the local token service:
refresh, rotation written back, expiry, a refused token, a revoked refresh token
(auth_failed), token_command, one token for all folders, and no token in any log."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.config import load
from imap_ingest.service import Service

from .support.daemon import Daemon, free_port, get, get_quiet, metric
from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import ROOT, command, write_config
from .support.mail import make
from .support.oauth_env import oauth_config, password_account
from .support.process import wait_for
from .support.redmine_server import FakeRedmine
from .support.token_service import TokenService


@pytest.fixture
def mailbox(dovecot_oauth: Dovecot) -> ImapAccount:
    """A fresh mailbox on the dovecot that takes OAuth2 logins."""
    return dovecot_oauth.account()


def run_once(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command("run", "--once", "-c", str(path), *args), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_refresh_flow_logs_in_and_writes_back_the_rotated_token(
        tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine, provider: TokenService,
        auth: str) -> None:
    """A refresh token logs in, and the rotated one is written back for the next run."""
    # The refresh token gets an access token the server takes; the rotated refresh token is
    # written back (JSON, mode 0600), so the next run, a new process, logs in with it.
    path = oauth_config(tmp_path, mailbox, redmine.url, provider, auth=auth)
    first, second = make(subject="first"), make(subject="second")
    mailbox.append("INBOX", first)
    done = run_once(path)
    assert done.returncode == 0, done.stderr
    token_file = tmp_path / "refresh-token.json"
    stored = json.loads(token_file.read_text())
    assert provider.refresh_tokens == {stored["refresh_token"]: mailbox.username}
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    mailbox.append("INBOX", second)
    done = run_once(path)
    assert done.returncode == 0, done.stderr
    assert redmine.emails == [first, second] and mailbox.messages("INBOX") == {}
    assert len(provider.token_requests("refresh_token")) == 2


def test_expired_token_is_refreshed_between_passes(tmp_path: Path, mailbox: ImapAccount,
                                                   redmine: FakeRedmine,
                                                   provider: TokenService) -> None:
    """A token about to expire is refreshed before the next login; one still good is kept."""
    # Ingestion carries on across the refresh.
    # Refreshed once less than half of it is left; long enough that two passes on a loaded
    # machine still fit in the first half.
    provider.lifetime = 8
    service = Service(load(oauth_config(tmp_path, mailbox, redmine.url, provider)))
    try:
        for subject in ("one", "two"):
            mailbox.append("INBOX", make(subject=subject))
            assert service.run_once() == 0
        assert len(provider.token_requests("refresh_token")) == 1
        time.sleep(4.2)
        mailbox.append("INBOX", make(subject="three"))
        assert service.run_once() == 0
    finally:
        service.close()
    assert len(provider.token_requests("refresh_token")) == 2
    assert len(redmine.emails) == 3 and mailbox.messages("INBOX") == {}


def test_refused_token_is_refreshed_once_and_retried(tmp_path: Path, mailbox: ImapAccount,
                                                     redmine: FakeRedmine,
                                                     provider: TokenService) -> None:
    """A token the server refuses costs one refresh and one more AUTHENTICATE."""
    # The cache still holds the token valid but the server refuses it (revoked); the pass
    # goes on.
    service = Service(load(oauth_config(tmp_path, mailbox, redmine.url, provider)))
    try:
        assert service.run_once() == 0
        provider.revoke_access_tokens(mailbox.username)
        mailbox.append("INBOX", make())
        assert service.run_once() == 0
    finally:
        service.close()
    assert len(provider.token_requests("refresh_token")) == 2
    assert len(redmine.emails) == 1


def test_revoked_refresh_token_is_auth_failed_and_other_accounts_go_on(
        tmp_path: Path, dovecot_oauth: Dovecot, redmine: FakeRedmine,
        provider: TokenService) -> None:
    """A revoked refresh token is auth_failed (77); the other account is ingested."""
    # That account logs auth_failed and exits 77 with its mail untouched; the password
    # account beside it is ingested; the token is in no output.
    oauth_box, plain_box = dovecot_oauth.account(), dovecot_oauth.account()
    path = oauth_config(tmp_path, oauth_box, redmine.url, provider,
                        others=[password_account(plain_box)])
    token = (tmp_path / "refresh-token.json").read_text().strip()
    provider.revoke_refresh_tokens(oauth_box.username)
    kept, taken = make(subject="kept"), make(subject="taken")
    oauth_box.append("INBOX", kept)
    plain_box.append("INBOX", taken)
    done = run_once(path)
    assert done.returncode == 77, done.stderr
    assert "account oauth: auth_failed: token refresh refused: invalid_grant" in done.stderr
    assert "state=auth_failed" in done.stderr
    assert redmine.emails == [taken]
    assert [(flags, raw) for flags, raw in oauth_box.messages("INBOX").values()] == [((), kept)]
    assert token not in done.stderr + done.stdout


def test_auth_failed_in_readyz_metrics_and_check(tmp_path: Path, dovecot_oauth: Dovecot,
                                                 redmine: FakeRedmine, provider: TokenService,
                                                 daemon: list[Daemon]) -> None:
    """auth_failed shows on /readyz, in the metrics and in `check` (77)."""
    # The service reports auth_failed for that account on /readyz (503) and in the
    # imap_ingest_auth_failed gauge, keeps ingesting the other, and `check` exits 77.
    oauth_box, plain_box = dovecot_oauth.account(), dovecot_oauth.account()
    port = free_port()
    path = oauth_config(tmp_path, oauth_box, redmine.url, provider,
                        others=[password_account(plain_box)])
    data = yaml.safe_load(path.read_text())
    data["http"] = {"listen": f"127.0.0.1:{port}"}
    path.write_text(yaml.safe_dump(data))
    provider.revoke_refresh_tokens(oauth_box.username)
    daemon.append(one := Daemon(path))
    wait_for(lambda: get_quiet(port, "/readyz") == 503
             and "auth_failed" in get(port, "/readyz")[1])
    text = get(port, "/readyz")[1]
    assert "oauth/INBOX (auth_failed)" in text and "plain/INBOX" not in text
    metrics = get(port, "/metrics")[1]
    assert metric(metrics, "imap_ingest_auth_failed", account="oauth") == 1
    assert metric(metrics, "imap_ingest_auth_failed", account="plain") == 0
    raw = make()
    plain_box.append("INBOX", raw)
    wait_for(lambda: redmine.emails == [raw])
    assert "state=auth_failed" in one.stop()
    checked = subprocess.run(command("check", "-c", str(path)), cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 77
    assert "FAIL  account oauth: auth_failed: token refresh refused" in checked.stdout
    assert "OK    account plain: logged in" in checked.stdout


def test_token_endpoint_in_trouble_is_temporary(tmp_path: Path, mailbox: ImapAccount,
                                                 redmine: FakeRedmine,
                                                 provider: TokenService) -> None:
    """A token endpoint answering 503 is not auth_failed: exit 75, to be tried again."""
    path = oauth_config(tmp_path, mailbox, redmine.url, provider)
    provider.answer = lambda request: (503, b"busy", 0)
    done = run_once(path)
    assert done.returncode == 75, done.stderr
    assert "token endpoint: " in done.stderr and "answered 503" in done.stderr
    assert "auth_failed" not in done.stderr


def test_one_token_for_all_folders_of_an_account(tmp_path: Path, mailbox: ImapAccount,
                                                 redmine: FakeRedmine, provider: TokenService,
                                                 daemon: list[Daemon]) -> None:
    """Two folders, each with a kept connection and an IDLE watcher: four logins, one refresh."""
    path = oauth_config(tmp_path, mailbox, redmine.url, provider)
    data = yaml.safe_load(path.read_text())
    data["accounts"][0]["folders"] = [{"name": "INBOX", "interval": "1s"},
                                      {"name": "Other", "interval": "1s"}]
    path.write_text(yaml.safe_dump(data))
    mailbox.append("INBOX", make(subject="a"))
    mailbox.append("Other", make(subject="b"))
    daemon.append(one := Daemon(path))
    wait_for(lambda: len(redmine.emails) == 2)
    time.sleep(1)  # the IDLE watchers have logged in too
    one.stop()
    assert len(provider.token_requests("refresh_token")) == 1
    assert len([t for t, a in provider.access.items() if a.username == mailbox.username]) == 1


def test_token_command(tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine,
                       provider: TokenService) -> None:
    """token_command's first output line is the token; a failing one is auth_failed."""
    # A failing command is reported with its exit status and last line of stderr.
    token = provider.mint(mailbox.username)
    helper = tmp_path / "helper.py"
    helper.write_text(f"import sys\nprint({token!r})\n")
    path = write_config(tmp_path / "config.yaml", mailbox, redmine.url, account={
        "auth": "xoauth2", "password": None, "token_command": [sys.executable, str(helper)]})
    raw = make()
    mailbox.append("INBOX", raw)
    done = run_once(path)
    assert done.returncode == 0, done.stderr
    assert redmine.emails == [raw]
    helper.write_text("import sys\nsys.exit('no cached token: run oama authorize')\n")
    done = run_once(path)
    assert done.returncode == 77
    assert ("auth_failed: token_command exited with status 1: no cached token: run oama "
            "authorize") in done.stderr


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_token_or_secret_in_debug_output(tmp_path: Path, mailbox: ImapAccount,
                                            redmine: FakeRedmine, provider: TokenService,
                                            log_format: str) -> None:
    """--debug shows the IMAP exchange and token requests but no token or secret."""
    # No access token, refresh token (old or rotated) or client secret; neither does a
    # refused, retried login.
    provider.client_secret = "google-client-secret"
    path = oauth_config(tmp_path, mailbox, redmine.url, provider, provider="google",
                        client_secret=provider.client_secret)
    mailbox.append("INBOX", make())
    assert run_once(path).returncode == 0
    provider.revoke_access_tokens(mailbox.username)
    mailbox.append("INBOX", make())
    done = run_once(path, "--debug", "--log-format", log_format)
    assert done.returncode == 0, done.stderr
    assert "AUTHENTICATE" in done.stderr and "/token" in done.stderr
    output = done.stderr + done.stdout
    leaks = [secret for secret in [*provider.issued(), provider.client_secret]
             if secret in output]
    assert leaks == []


def test_main_in_process_redacts_tokens(tmp_path: Path, mailbox: ImapAccount,
                                        redmine: FakeRedmine, provider: TokenService,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A refresh failure's exception text carries the provider's words, not the token."""
    path = oauth_config(tmp_path, mailbox, redmine.url, provider)
    token = (tmp_path / "refresh-token.json").read_text().strip()
    provider.revoke_refresh_tokens(mailbox.username)
    assert main(["run", "--once", "-c", str(path), "--debug"]) == 77
    captured = capsys.readouterr()
    assert "Token has been expired or revoked." in captured.err
    assert token not in captured.err + captured.out
