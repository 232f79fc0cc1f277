"""S/MIME against Debian's real Redmine and RT: dovecot → imap-ingest → the tracker."""

from __future__ import annotations

import base64
import shutil
import uuid
from collections.abc import Iterator

import pytest
import yaml

from ..support.pki import PASSPHRASE, QUEUE, SIGNER, STRANGER, Pki, mail
from .rt import RT_ADDRESS, RealRT
from .test_redmine_e2e import E2E, e2e  # noqa: F401  (its fixture)
from .test_rt_e2e import Tally, tally  # noqa: F401  (its fixture)


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


@pytest.fixture(scope="module")
def rt_with_smime(pki: Pki) -> Iterator[RealRT]:
    """A second real RT, with its own SMIME on, its keyring holding its address's key."""
    keyring = pki.root / "rt-keyring"
    keyring.mkdir(exist_ok=True)
    shutil.copy(pki.keyring / f"{QUEUE}.pem", keyring / f"{RT_ADDRESS}.pem")
    server = RealRT()
    (server.directory / "RT_SiteConfig.d").mkdir(exist_ok=True)
    (server.directory / "RT_SiteConfig.d" / "smime.pm").write_text(
        f"Set(%SMIME, Enable => 1, OpenSSL => '/usr/bin/openssl', Keyring => '{keyring}',\n"
        f"    CAPath => '{pki.ca}', Passphrase => '{PASSPHRASE}');\n"
        "Set(%GnuPG, Enable => 0);\n"
        "Set(%Crypt, Incoming => ['SMIME'], Outgoing => 'SMIME');\n"
        "Set(@MailPlugins, qw(Auth::MailFrom Auth::Crypt));\n1;\n")
    try:
        server.start()
        yield server
    finally:
        server.close()


def stored(rt: RealRT, message_id: str) -> tuple[str, bytes]:
    """The headers and the decoded content RT stored for the message's Create."""
    [record] = [r for r in rt.records(message_id) if r.type == "Create"]
    head = str(rt.rest("GET", f"attachment/{record.attachment}")["Headers"])
    parts = rt.rest("GET", f"transaction/{record.transaction}/attachments")["items"]
    contents = [rt.rest("GET", f"attachment/{int(part['id'])}").get("Content") or ""
                for part in parts]
    return head, b"".join(base64.b64decode(content) for content in contents)


def test_rt_pass_through_lets_rts_own_smime_decrypt(
        tally: Tally,  # noqa: F811
        rt_with_smime: RealRT, pki: Pki) -> None:
    """pass-through to an RT with SMIME on: RT itself decrypts and verifies the raw mail."""
    tally.rt = rt_with_smime
    message_id, raw = secret_mail(pki, to=QUEUE)
    tally.deliver(raw.replace(f"To: {QUEUE}".encode(), f"To: {RT_ADDRESS}".encode()))
    smime = {"keyring": str(pki.keyring), "ca_path": str(pki.ca)}  # mode: RT's pass-through
    assert tally.run(tally.config([{"name": "INBOX", "smime": smime}])) == 0
    head, content = stored(rt_with_smime, message_id)
    assert "X-RT-Incoming-Encryption: Success" in head
    # RT's own verdict on the inner signature: trusted signers are shown without a mark
    assert f'X-RT-Incoming-Signature: "{SIGNER}" <{SIGNER}>\n' in head
    assert "X-Imap-Ingest" not in head
    assert b"The server room door is open." in content


def test_rt_decrypt_mode_gives_rt_plain_mime(tally: Tally,  # noqa: F811
                                             real_rt: RealRT, pki: Pki) -> None:
    """mode: decrypt for an RT without SMIME: RT stores the plain text and our verdict."""
    message_id, raw = secret_mail(pki)
    tally.deliver(raw)
    smime = {"keyring": str(pki.keyring), "ca_path": str(pki.ca), "passphrase": PASSPHRASE,
             "mode": "decrypt"}
    config = tally.config([{"name": "INBOX", "smime": smime}])
    data = yaml.safe_load(config.read_text())
    data["accounts"][0]["addresses"] = [QUEUE]
    config.write_text(yaml.safe_dump(data))
    assert tally.run(config) == 0
    head, content = stored(real_rt, message_id)
    assert f"X-Imap-Ingest-Signature: {SIGNER} (trusted)" in head
    assert "X-Imap-Ingest-Encryption: Success" in head
    assert b"The server room door is open." in content
