"""What goes over the wire to Microsoft's and Google's endpoints, checked on the local token
service: refresh requests per provider, client credentials through MSAL (secret and
certificate), and the refresh token's expiry as `check` reports it."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import ROOT, command, write_config
from .support.mail import make
from .support.oauth_env import oauth_config
from .support.redmine_server import FakeRedmine
from .support.token_service import TokenService

MICROSOFT_SCOPE = "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access"


@pytest.fixture
def mailbox(dovecot_oauth: Dovecot) -> ImapAccount:
    return dovecot_oauth.account()


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command("check", "-c", str(path)), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_microsoft_refresh_request(tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine,
                                   provider: TokenService) -> None:
    """Microsoft's refresh request is a public client's; `check` notes no expiry."""
    # Microsoft (a public client): grant_type, client_id, refresh_token and the IMAP scope
    # with offline_access; no secret. `check` says the provider gives no expiry.
    path = oauth_config(tmp_path, mailbox, redmine.url, provider)
    token = (tmp_path / "refresh-token.json").read_text().strip()
    done = check(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert provider.token_requests() == [{"grant_type": "refresh_token",
                                          "client_id": provider.client_id,
                                          "refresh_token": token, "scope": MICROSOFT_SCOPE}]
    assert "OK    account oauth: logged in as" in done.stdout
    assert ("OK    account oauth refresh token: issued today; Microsoft gives no expiry (90 "
            "days unused; each refresh renews it)") in done.stdout


def test_google_refresh_request_and_expiry(tmp_path: Path, mailbox: ImapAccount,
                                           redmine: FakeRedmine, provider: TokenService) -> None:
    """Google's refresh sends the secret; `check` counts the refresh token's days left."""
    # Google: client_secret in the body, no scope; its refresh_token_expires_in (7 days for
    # an app in testing) is stored and `check` counts the days left.
    provider.client_secret, provider.refresh_expires_in = "g-secret", 604799
    path = oauth_config(tmp_path, mailbox, redmine.url, provider, provider="google",
                        client_secret="g-secret")
    token = (tmp_path / "refresh-token.json").read_text().strip()
    done = check(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert provider.token_requests() == [{"grant_type": "refresh_token",
                                          "client_id": provider.client_id,
                                          "client_secret": "g-secret", "refresh_token": token}]
    stored = json.loads((tmp_path / "refresh-token.json").read_text())
    assert 604700 < stored["expires_at"] - stored["issued_at"] < 604800
    assert ("OK    account oauth refresh token: issued today; expires in 7 days (the provider "
            "says so)") in done.stdout


def test_expired_refresh_token_fails_check(tmp_path: Path, mailbox: ImapAccount,
                                           redmine: FakeRedmine, provider: TokenService) -> None:
    """A stored token past the expiry the provider gave is a FAIL naming `auth login`."""
    path = oauth_config(tmp_path, mailbox, redmine.url, provider)
    token_file = tmp_path / "refresh-token.json"
    token = token_file.read_text().strip()
    token_file.write_text(json.dumps({"refresh_token": token, "issued_at": 1.0,
                                      "expires_at": 2.0}))
    provider.revoke_refresh_tokens(mailbox.username)
    done = check(path)
    assert done.returncode == 77
    assert ("FAIL  account oauth refresh token: expired on 1970-01-01: run `imap-ingest auth "
            "login oauth`") in done.stdout


def client_credentials(tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine,
                       provider: TokenService, **credential: str) -> Path:
    provider.app_mailbox = mailbox.username
    return write_config(tmp_path / "config.yaml", mailbox, redmine.url, account={
        "name": "shared", "auth": "xoauth2", "password": None,
        "oauth2": {"provider": "microsoft", "flow": "client_credentials", "tenant": "contoso",
                   "client_id": provider.client_id, "authority": f"{provider.url}/contoso",
                   "ca_file": provider.ca_file, **credential}})


def test_client_credentials_with_a_secret(tmp_path: Path, mailbox: ImapAccount,
                                          redmine: FakeRedmine, provider: TokenService) -> None:
    """Client credentials with a secret get an app-only token for the shared mailbox."""
    # MSAL finds the token endpoint under the configured authority and asks for
    # outlook.office365.com/.default with the client secret; the app-only token opens the
    # shared mailbox.
    provider.client_secret = "app-secret"
    path = client_credentials(tmp_path, mailbox, redmine, provider, client_secret="app-secret")
    raw = make()
    mailbox.append("INBOX", raw)
    done = subprocess.run(command("run", "--once", "-c", str(path)), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert redmine.emails == [raw]
    [form] = provider.token_requests()
    assert {key: form[key] for key in ("grant_type", "client_id", "client_secret", "scope")} == {
        "grant_type": "client_credentials", "client_id": provider.client_id,
        "client_secret": "app-secret", "scope": "https://outlook.office365.com/.default"}
    paths = [r.path for r in provider.requests if r.path != "/introspect"]
    assert paths == ["/contoso/v2.0/.well-known/openid-configuration",
                     "/contoso/oauth2/v2.0/token"]
    assert "app-secret" not in done.stderr


def app_certificate(tmp_path: Path, key_type: trustme.KeyType) -> tuple[trustme.LeafCert, Path]:
    """A self-signed-like app certificate and its PEM file: private key, then certificate."""
    issued = trustme.CA(key_type=key_type).issue_cert("imap-ingest.example.org",
                                                      key_type=key_type)
    pem = tmp_path / "app.pem"
    pem.write_bytes(issued.private_key_pem.bytes() + issued.cert_chain_pems[0].bytes())
    return issued, pem


def test_certificate_needs_an_rsa_key(tmp_path: Path, mailbox: ImapAccount,
                                      redmine: FakeRedmine, provider: TokenService) -> None:
    """Microsoft Entra takes RSA certificates only: an EC key is auth_failed, saying so."""
    _, pem = app_certificate(tmp_path, trustme.KeyType.ECDSA)
    path = client_credentials(tmp_path, mailbox, redmine, provider, certificate_file=str(pem))
    done = check(path)
    assert done.returncode == 77, done.stdout + done.stderr
    assert "auth_failed: " in done.stdout and "needs an RSA private key" in done.stdout


def test_client_credentials_with_a_certificate(tmp_path: Path, mailbox: ImapAccount,
                                               redmine: FakeRedmine,
                                               provider: TokenService) -> None:
    """Client credentials with a certificate send a signed assertion, no secret."""
    # With certificate_file, MSAL sends a client assertion (RFC 7523) signed by its key,
    # naming the certificate by its SHA-256 thumbprint, for the token endpoint; no secret.
    provider.client_secret = "not-used"
    issued, pem = app_certificate(tmp_path, trustme.KeyType.RSA)
    path = client_credentials(tmp_path, mailbox, redmine, provider, certificate_file=str(pem))
    done = check(path)
    assert done.returncode == 0, done.stdout + done.stderr
    [form] = provider.token_requests()
    assert "client_secret" not in form
    assert form["client_assertion_type"] == ("urn:ietf:params:oauth:client-assertion-type:"
                                             "jwt-bearer")
    certificate = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
    token_url = f"{provider.url}/contoso/oauth2/v2.0/token"
    claims = jwt.decode(form["client_assertion"], certificate.public_key(),  # type: ignore[arg-type]
                        algorithms=["PS256", "RS256"], audience=token_url)
    assert claims["iss"] == claims["sub"] == provider.client_id
    der = certificate.public_bytes(Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header["x5t#S256"].rstrip("=") == thumbprint  # MSAL keeps base64's padding


def test_client_credentials_refused(tmp_path: Path, mailbox: ImapAccount, redmine: FakeRedmine,
                                    provider: TokenService) -> None:
    """A wrong client secret is auth_failed with Microsoft's error, and no secret shown."""
    provider.client_secret = "right"
    path = client_credentials(tmp_path, mailbox, redmine, provider, client_secret="wrong-one")
    done = check(path)
    assert done.returncode == 77
    assert "FAIL  account shared: auth_failed: client credentials refused: invalid_client" in (
        done.stdout)
    assert "wrong-one" not in done.stdout + done.stderr
