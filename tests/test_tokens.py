"""The token cache and the token file without a server (the real provider tests are in
test_oauth.py): one fetch for many threads, renewal before expiry, atomic 0600 writes."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imap_ingest import token_file
from imap_ingest.config import Account
from imap_ingest.logs import REDACTED, redact
from imap_ingest.oauth import EXPIRY_MARGIN, Token, Tokens


class Counting:
    """A token source that counts its fetches and takes a while, as a provider does."""

    def __init__(self, lifetime: float = 3600) -> None:
        self.fetches = 0
        self.lifetime = lifetime

    def fetch(self) -> Token:
        time.sleep(0.05)
        self.fetches += 1
        return Token.lasting(f"token-{self.fetches}", self.lifetime)


ACCOUNT = Account.model_validate({"name": "a", "host": "h", "username": "u", "auth": "xoauth2",
                                  "token_command": ["true"], "folders": [{"name": "INBOX"}]})


def in_threads(count: int, work: Callable[[], str]) -> list[str]:
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(work())) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_many_connections_one_fetch() -> None:
    """Eight connections logging in at once share a single fetched token."""
    source = Counting()
    tokens = Tokens(ACCOUNT, source)
    assert set(in_threads(8, tokens.get)) == {"token-1"} and source.fetches == 1


def test_a_refusal_seen_by_many_refreshes_once() -> None:
    """Many connections refused the same token cause one refresh."""
    # Connections that all saw token-1 refused get token-2 from one refresh; a connection
    # still holding an older refused token gets the current one without another fetch.
    source = Counting()
    tokens = Tokens(ACCOUNT, source)
    refused = tokens.get()
    assert set(in_threads(8, lambda: tokens.refresh(refused))) == {"token-2"}
    assert tokens.refresh("token-0") == "token-2" and source.fetches == 2


def test_renewed_before_expiry() -> None:
    """A token is renewed EXPIRY_MARGIN before it expires, or at half a shorter lifetime."""
    assert Token.lasting("t", 3600).renew_at == pytest.approx(time.time() + 3600 - EXPIRY_MARGIN,
                                                              abs=1)
    source = Counting(lifetime=0.2)
    tokens = Tokens(ACCOUNT, source)
    assert tokens.get() == tokens.get() == "token-1"
    time.sleep(0.15)
    assert tokens.get() == "token-2"


def test_fetched_tokens_are_redacted() -> None:
    """A token is redacted from log text as soon as the cache has it."""
    token = Tokens(Account.model_validate({**ACCOUNT.model_dump(), "name": "b"}),
                   Counting()).get()
    assert redact(f"Bearer {token}") == f"Bearer {REDACTED}"


def test_token_file_round_trip_and_mode(tmp_path: Path) -> None:
    """A written token reads back the same; the file is 0600 and no temporary file stays."""
    path = tmp_path / "state" / "rt.json"
    stored = token_file.StoredToken("rt-1", 100.0, 700.0)
    token_file.write(path, stored)
    assert token_file.read(path) == stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["rt.json"]
    assert stored.days_left(now=700.0 - 86400) == pytest.approx(1)


def test_a_bare_token_file_is_read(tmp_path: Path) -> None:
    """A file holding just the token (another tool's) is read, with no dates known."""
    path = tmp_path / "rt"
    path.write_text("1//0g-bare-token\n")
    assert token_file.read(path) == token_file.StoredToken("1//0g-bare-token")


@pytest.mark.parametrize(("text", "reason"), [
    (None, "cannot read"), ("", "is empty"), ('{"token": "x"}', "not a token file")])
def test_unusable_token_files(tmp_path: Path, text: str | None, reason: str) -> None:
    """Missing, empty and foreign files are named, never echoed."""
    path = tmp_path / "rt.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(token_file.TokenFileError, match=reason) as info:
        token_file.read(path)
    assert '"x"' not in str(info.value)
