"""`imap-ingest auth login ACCOUNT`: the first refresh token, by the device code flow (RFC 8628)
or in a browser (authorization code with PKCE and a loopback redirect), against the local
token service; then the account logs in with it."""

from __future__ import annotations

import json
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from imap_ingest.cli import main

from .support.daemon import free_port
from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import ROOT, command
from .support.mail import make
from .support.oauth_env import oauth_config
from .support.redmine_server import FakeRedmine
from .support.token_service import GRANT_DEVICE, TokenService


@pytest.fixture
def mailbox(dovecot_oauth: Dovecot) -> ImapAccount:
    return dovecot_oauth.account()


def without_token(path: Path) -> Path:
    """The config, with its refresh token file removed: nobody has logged in yet."""
    (path.parent / "refresh-token.json").unlink()
    return path


def test_device_login_stores_the_first_refresh_token(
        tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine, provider: TokenService,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The device login flow stores the first refresh token; mail then flows."""
    # The device flow asks for a code with client_id and scope, tells the user where to
    # enter it, polls until approved, and stores the refresh token (0600).
    path = without_token(oauth_config(tmp_path, mailbox, redmine.url, provider,
                                      device_url=f"{provider.url}/devicecode"))
    provider.expect_device_login(mailbox.username, polls=2)
    assert main(["auth", "login", "oauth", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{provider.url}/activate" in err and "WDJB-MJHT" in err
    device = [r for r in provider.requests if r.path == "/devicecode"]
    assert [{k: v[0].decode() for k, v in r.form.items()} for r in device] == [
        {"client_id": provider.client_id,
         "scope": "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access"}]
    polls = provider.token_requests(GRANT_DEVICE)
    assert len(polls) == 3 and {p["client_id"] for p in polls} == {provider.client_id}
    token_file = tmp_path / "refresh-token.json"
    stored = json.loads(token_file.read_text())
    assert provider.refresh_tokens[stored["refresh_token"]] == mailbox.username
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stored["refresh_token"] not in err
    raw = make()
    mailbox.append("INBOX", raw)
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert redmine.emails == [raw]


def test_device_login_refused(tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine,
                              provider: TokenService, capsys: pytest.CaptureFixture[str]) -> None:
    """A device code that expires unapproved ends the command with 77 and stores nothing."""
    path = without_token(oauth_config(tmp_path, mailbox, redmine.url, provider,
                                      device_url=f"{provider.url}/devicecode"))
    provider.expect_device_login(mailbox.username, polls=1)
    provider.pending.clear()  # the code expires at once
    provider.answer = lambda request: (
        (400, b'{"error": "expired_token"}', 0) if request.path == "/token"
        else provider.default(request))
    assert main(["auth", "login", "oauth", "-c", str(path)]) == 77
    assert "auth_failed: device login refused: expired_token" in capsys.readouterr().err
    assert not (tmp_path / "refresh-token.json").exists()


def browser_login(tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine,
                  provider: TokenService) -> tuple[subprocess.Popen[str], int]:
    """`auth login --browser` for a Gmail account, as a process; and its loopback port."""
    provider.client_secret = "g-secret"
    path = without_token(oauth_config(tmp_path, mailbox, redmine.url, provider,
                                      provider="google", client_secret="g-secret",
                                      authorize_url=f"{provider.url}/authorize"))
    port = free_port()
    process = subprocess.Popen(
        command("auth", "login", "oauth", "--browser", "--no-browser", "--port", str(port),
                "-c", str(path)), cwd=ROOT, text=True, stderr=subprocess.PIPE)
    return process, port


def test_browser_login_with_pkce(tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine,
                                 provider: TokenService) -> None:
    """The browser login with PKCE (Google's way) stores the refresh token."""
    # The authorize URL asks for https://mail.google.com/ offline with a PKCE challenge; the
    # redirect to 127.0.0.1 brings the code, exchanged with the verifier and the client
    # secret.
    process, port = browser_login(tmp_path, mailbox, redmine, provider)
    try:
        assert process.stderr is not None
        url = next(word for line in process.stderr for word in line.split()
                   if word.startswith(f"{provider.url}/authorize?"))
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        redirect = f"http://127.0.0.1:{port}/"
        assert {k: query[k] for k in ("response_type", "client_id", "redirect_uri", "scope",
                                      "code_challenge_method", "access_type", "prompt")} == {
            "response_type": "code", "client_id": provider.client_id, "redirect_uri": redirect,
            "scope": "https://mail.google.com/", "code_challenge_method": "S256",
            "access_type": "offline", "prompt": "consent"}
        code = provider.approve(mailbox.username, query["code_challenge"], redirect)
        back = urlencode({"code": code, "state": query["state"]})
        with urllib.request.urlopen(f"{redirect}?{back}", timeout=10) as page:
            assert b"imap-ingest" in page.read()
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        err = process.communicate()[1]
    assert process.returncode == 0, err
    [exchange] = provider.token_requests("authorization_code")
    assert exchange["redirect_uri"] == redirect and exchange["client_secret"] == "g-secret"
    assert "code_verifier" in exchange
    stored = json.loads((tmp_path / "refresh-token.json").read_text())
    assert provider.refresh_tokens[stored["refresh_token"]] == mailbox.username


def test_browser_login_rejects_a_forged_redirect(tmp_path: Path, mailbox: ImapAccount,
                                                 redmine: FakeRedmine,
                                                 provider: TokenService) -> None:
    """A redirect whose state is not ours is refused and nothing is exchanged or stored."""
    process, port = browser_login(tmp_path, mailbox, redmine, provider)
    try:
        assert process.stderr is not None
        next(line for line in process.stderr if "/authorize?" in line)
        forged = urlencode({"code": "stolen", "state": "not-ours"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/?{forged}", timeout=10)
        assert process.wait(timeout=20) == 77
    finally:
        if process.poll() is None:
            process.kill()
        err = process.communicate()[1]
    assert "state" in err
    assert provider.token_requests() == [] and not (tmp_path / "refresh-token.json").exists()


def test_login_needs_a_refresh_token_account(tmp_path: Path, mailbox: ImapAccount,
                                             redmine: FakeRedmine, provider: TokenService,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown account, or one without the refresh-token flow, is a usage error (64)."""
    path = oauth_config(tmp_path, mailbox, redmine.url, provider)
    assert main(["auth", "login", "nope", "-c", str(path)]) == 64
    assert "no account named 'nope' (configured: oauth)" in capsys.readouterr().err


def test_auth_help_teaches_by_example() -> None:
    """`auth --help` and `auth login --help` show examples for Microsoft and Gmail."""
    for args in (["auth", "--help"], ["auth", "login", "--help"]):
        out = subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        assert "imap-ingest auth login" in out and "example" in out
    out = subprocess.run(command("auth", "login", "--help"), cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "--device" in out and "--browser" in out and "Gmail" in out
