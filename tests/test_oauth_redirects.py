"""Token, device and code requests never follow a redirect: the refresh token and the
client secret go to the configured endpoint only."""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_ingest.config import OAuth2
from imap_ingest.errors import AuthFailed
from imap_ingest.oauth import Endpoint

from .support.redmine_server import RecordingServer


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_token_endpoint_redirect_is_not_followed(tmp_path: Path, status: int) -> None:
    """A token endpoint's 3xx is an error naming scheme://host:port; its target gets nothing."""
    sink, front = RecordingServer(), RecordingServer()
    front.answer = lambda request: (status, b"", 0,
                                    {"Location": f"{sink.url}/steal?x=1"})
    oauth2 = OAuth2.model_validate({"provider": "microsoft", "client_id": "app",
                                    "token_url": f"{front.url}/tenant/token",
                                    "refresh_token_file": str(tmp_path / "token")})
    endpoint = Endpoint("acct", oauth2)
    try:
        with pytest.raises(AuthFailed) as refused:
            endpoint.post(oauth2.effective_token_url, {
                "grant_type": "refresh_token", "refresh_token": "refresh-secret-value",
                "client_secret": "client-secret-value"})
    finally:
        endpoint.close()
        front.close()
        sink.close()
    assert sink.requests == [] and len(front.requests) == 1
    reason = str(refused.value)
    assert front.url in reason and str(status) in reason
    assert "/tenant" not in reason and "steal" not in reason and "secret-value" not in reason
