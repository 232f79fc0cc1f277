"""Configs for OAuth2 accounts on the oauth2-capable dovecot, with the local token service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .dovecot import ImapAccount
from .ingest_env import write_config
from .token_service import TokenService


def oauth2(issuer: TokenService, token_file: Path, **overrides: Any) -> dict[str, Any]:
    """An ``oauth2:`` block for the refresh-token flow against the local token service."""
    return {"provider": "microsoft", "client_id": issuer.client_id,
            "token_url": f"{issuer.url}/token", "ca_file": issuer.ca_file,
            "refresh_token_file": str(token_file), **overrides}


def oauth_config(tmp_path: Path, imap: ImapAccount, redmine_url: str, issuer: TokenService,
                 *, auth: str = "xoauth2", others: list[dict[str, Any]] | None = None,
                 account: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """One account logging in with a refresh token granted to its user (the token file is
    written on the first call), ``others`` appended to accounts."""
    token_file = tmp_path / "refresh-token.json"
    if not token_file.exists():
        token_file.write_text(issuer.grant(imap.username) + "\n")
    path = write_config(tmp_path / "config.yaml", imap, redmine_url, account={
        "name": "oauth", "auth": auth, "password": None,
        "oauth2": oauth2(issuer, token_file, **overrides), **(account or {})})
    if others:
        data = yaml.safe_load(path.read_text())
        data["accounts"] += others
        path.write_text(yaml.safe_dump(data))
    return path


def password_account(imap: ImapAccount, name: str = "plain") -> dict[str, Any]:
    """An account on the same server logging in with its password."""
    return {"name": name, "host": imap.host, "port": imap.port, "security": "none",
            "username": imap.username, "password": imap.password,
            "folders": [{"name": "INBOX", "project": "support"}]}
