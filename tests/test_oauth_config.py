"""The auth: keys of an account: password, OAuth2 (refresh token or client credentials) or a
token command; provider defaults, and mistakes named by key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imap_ingest.config import load
from imap_ingest.errors import ConfigError

from .test_config import base, error, write


def oauth(**account: Any) -> dict[str, Any]:
    data = base()
    del data["accounts"][0]["password"]
    data["accounts"][0].update(account)
    return data


def test_password_is_the_default() -> None:
    """Without auth: an account logs in with its password, as before."""
    assert "auth" not in base()["accounts"][0]


@pytest.mark.parametrize(("oauth2", "token_url", "scope"), [
    ({"provider": "microsoft", "tenant": "contoso.onmicrosoft.com"},
     "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
     "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access"),
    ({"provider": "google", "client_secret": "gs"}, "https://oauth2.googleapis.com/token",
     "https://mail.google.com/"),
    ({"provider": "generic", "token_url": "https://idp.example.org/token", "scope": "mail"},
     "https://idp.example.org/token", "mail"),
], ids=["microsoft", "google", "generic"])
def test_refresh_flow_provider_defaults(tmp_path: Path, oauth2: dict[str, Any], token_url: str,
                                        scope: str) -> None:
    """Each provider brings its token endpoint and IMAP scope; generic names its own."""
    data = oauth(auth="xoauth2", oauth2={"client_id": "cid", "refresh_token_file": "rt.json",
                                         **oauth2})
    account = load(write(tmp_path, data), {}).accounts[0]
    assert account.oauth2 is not None
    assert (account.oauth2.flow, account.oauth2.effective_token_url,
            account.oauth2.effective_scope) == ("refresh_token", token_url, scope)


def test_microsoft_endpoints(tmp_path: Path) -> None:
    """Microsoft's endpoints sit under the tenant, 'organizations' when unset."""
    # Device code and authorize endpoints are under the tenant; client credentials ask for
    # outlook.office365.com/.default at the tenant's authority.
    data = oauth(auth="xoauth2", oauth2={"provider": "microsoft", "client_id": "cid",
                                         "refresh_token_file": "rt.json"})
    oauth2 = load(write(tmp_path, data), {}).accounts[0].oauth2
    assert oauth2 is not None
    base_url = "https://login.microsoftonline.com/organizations/oauth2/v2.0"
    assert (oauth2.effective_device_url, oauth2.effective_authorize_url) == (
        f"{base_url}/devicecode", f"{base_url}/authorize")
    data = oauth(auth="xoauth2", oauth2={"provider": "microsoft", "flow": "client_credentials",
                                         "tenant": "t-1", "client_id": "cid",
                                         "client_secret": "s"})
    oauth2 = load(write(tmp_path, data), {}).accounts[0].oauth2
    assert oauth2 is not None
    assert (oauth2.effective_authority, oauth2.effective_scope) == (
        "https://login.microsoftonline.com/t-1", "https://outlook.office365.com/.default")


def test_google_device_and_browser_endpoints(tmp_path: Path) -> None:
    """Google: its device code endpoint, and the browser flow's authorize endpoint."""
    data = oauth(auth="oauthbearer", oauth2={"provider": "google", "client_id": "cid",
                                             "client_secret": "gs",
                                             "refresh_token_file": "rt.json"})
    oauth2 = load(write(tmp_path, data), {}).accounts[0].oauth2
    assert oauth2 is not None
    assert (oauth2.effective_device_url, oauth2.effective_authorize_url) == (
        "https://oauth2.googleapis.com/device/code", "https://accounts.google.com/o/oauth2/v2/auth")


def test_token_command(tmp_path: Path) -> None:
    """token_command is a program and its arguments, run without a shell."""
    data = oauth(auth="xoauth2", token_command=["oama", "access", "me@example.org"])
    account = load(write(tmp_path, data), {}).accounts[0]
    assert account.token_command == ["oama", "access", "me@example.org"]


def test_client_secret_is_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """client_secret_env is read at load time and is among the secrets logging redacts."""
    monkeypatch.setenv("MS_SECRET", "the-client-secret")
    data = oauth(auth="xoauth2", oauth2={"provider": "microsoft", "flow": "client_credentials",
                                         "tenant": "t", "client_id": "cid",
                                         "client_secret_env": "MS_SECRET"})
    config = load(write(tmp_path, data), {})
    assert "the-client-secret" in set(config.secrets())


OAUTH_BAD = [
    ({"auth": "xoauth2"}, "accounts[0]", "give one of oauth2, token_command"),
    ({"auth": "xoauth2", "password": "pw", "token_command": ["x"]}, "accounts[0]",
     "password goes with auth: password"),
    ({"token_command": ["x"]}, "accounts[0]", "give one of password"),
    ({"auth": "xoauth2", "token_command": []}, "accounts[0].token_command", "at least 1"),
    ({"auth": "xoauth2", "token_command": ["x"],
      "oauth2": {"provider": "google", "client_id": "c", "client_secret": "s",
                 "refresh_token_file": "f"}}, "accounts[0]", "give one of oauth2, token_command"),
    ({"auth": "kerberos", "token_command": ["x"]}, "accounts[0].auth", "'xoauth2'"),
    ({"auth": "xoauth2", "oauth2": {"provider": "google", "client_id": "c",
                                    "refresh_token_file": "f"}},
     "accounts[0].oauth2", "Google's token endpoint needs client_secret"),
    ({"auth": "xoauth2", "oauth2": {"provider": "microsoft", "client_id": "c"}},
     "accounts[0].oauth2", "refresh_token_file"),
    ({"auth": "xoauth2", "oauth2": {"provider": "generic", "client_id": "c",
                                    "refresh_token_file": "f"}},
     "accounts[0].oauth2", "token_url"),
    ({"auth": "xoauth2", "oauth2": {"provider": "microsoft", "flow": "client_credentials",
                                    "client_id": "c", "client_secret": "s"}},
     "accounts[0].oauth2", "tenant"),
    ({"auth": "xoauth2", "oauth2": {"provider": "microsoft", "flow": "client_credentials",
                                    "tenant": "t", "client_id": "c"}},
     "accounts[0].oauth2", "give one of client_secret, client_secret_file, client_secret_env, "
     "certificate_file"),
    ({"auth": "xoauth2", "oauth2": {"provider": "google", "flow": "client_credentials",
                                    "client_id": "c", "client_secret": "s"}},
     "accounts[0].oauth2", "client_credentials is for provider: microsoft"),
    ({"auth": "xoauth2", "oauth2": {"provider": "generic", "client_id": "c",
                                    "token_url": "http://idp.example.org/token",
                                    "refresh_token_file": "f"}},
     "accounts[0].oauth2.token_url", "https://"),
]


@pytest.mark.parametrize(("account", "key", "reason"), OAUTH_BAD,
                         ids=[b[1] + ":" + b[2] for b in OAUTH_BAD])
def test_bad_auth_config_names_key_and_reason(tmp_path: Path, account: dict[str, Any], key: str,
                                              reason: str) -> None:
    """Each auth mistake is one message naming the key path, exit 78."""
    exc = error(tmp_path, oauth(**account))
    assert isinstance(exc, ConfigError) and exc.exit_code == 78
    assert f"{key}: " in str(exc) and reason in str(exc), str(exc)
