"""S/MIME against Debian's real Redmine: dovecot → imap-ingest (decrypt, verify) → Redmine."""

from __future__ import annotations

import uuid

from ..support.pki import PASSPHRASE, QUEUE, STRANGER, Pki, mail
from .test_redmine_e2e import E2E, e2e  # noqa: F401  (its fixture)


def secret_mail(pki: Pki, to: str = QUEUE) -> tuple[str, bytes]:
    """Signed by alice (a Reporter of "support"), then encrypted to ``to``."""
    message_id = f"<e2e-{uuid.uuid4().hex}@example.org>"
    text = f"The server room door is open.\r\nref {message_id}\r\n".encode()
    content = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text
    return message_id, mail(pki.encrypt(pki.sign(content), to), message_id=message_id)


def test_redmine_gets_the_decrypted_issue(e2e: E2E, pki: Pki) -> None:  # noqa: F811
    """The issue's text is the decrypted content, the original attached; no key: Failed."""
    message_id, raw = secret_mail(pki)
    e2e.append(raw)
    _, stranger = secret_mail(pki, STRANGER)
    e2e.append(stranger)
    smime = {"keyring": str(pki.keyring), "ca_path": str(pki.ca), "passphrase": PASSPHRASE,
             "keep_original": True}
    assert e2e.run(account={"addresses": [QUEUE]},
                   folder={"smime": smime, "move_on_failure": "Failed"}) == 0
    [issue] = e2e.redmine.issues()
    assert issue["subject"] == "Incident"
    assert "The server room door is open." in issue["description"]
    assert f"ref {message_id}" in issue["description"]
    attachments = e2e.redmine.issue(issue["id"]).get("attachments", [])
    assert [a["filename"] for a in attachments] == ["smime.p7m"]
    assert len(e2e.in_folder("Failed")) == 1
