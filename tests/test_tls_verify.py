"""What a target's certificate is checked against, the same for posting and for looking
tickets up: its ca_file, the system's CAs, or nothing when verify_tls: false says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_ingest.trackers._http import verify
from imap_ingest.trackers.redmine import RedmineTarget


@pytest.mark.parametrize(("ca_file", "verify_tls", "expected"), [
    (False, True, True),
    (True, True, "CA"),
    (False, False, False),
    (True, False, False),  # the explicit opt-out wins over a ca_file
])
def test_verify_follows_ca_file_and_verify_tls(tmp_path: Path, ca_file: bool, verify_tls: bool,
                                               expected: bool | str) -> None:
    """ca_file when verifying, True for the system's CAs, False only when told."""
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    target = RedmineTarget.model_validate({
        "type": "redmine", "url": "https://redmine.example", "key": "k",
        "verify_tls": verify_tls, **({"ca_file": str(ca)} if ca_file else {})})
    assert verify(target) == (str(ca) if expected == "CA" else expected)
