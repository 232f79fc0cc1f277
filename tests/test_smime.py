"""The S/MIME step on bytes: each mail shape against a PKI the suite makes with openssl."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imap_ingest.config.smime import SMime
from imap_ingest.message import Message
from imap_ingest.smime import ENCRYPTION, SIGNATURE, Gate, Opened

from .support.pki import (
    ALTERNATIVE,
    EXPIRED,
    PASSPHRASE,
    PLAIN,
    PLAIN_QUEUE,
    QUEUE,
    ROGUE,
    SIGNER,
    STRANGER,
    Pki,
    mail,
    outlook,
    thunderbird,
)


def gate(pki: Pki, mode: str = "decrypt", **settings: Any) -> Gate:
    """The security queue's step: its keyring, the test CA, the queue key's passphrase."""
    given = {"keyring": pki.keyring, "ca_path": pki.ca,
             "passphrase": {QUEUE: PASSPHRASE}, **settings}
    return Gate(SMime.model_validate(given), mode, own=[QUEUE])  # type: ignore[arg-type]


def run(pki: Pki, raw: bytes, mode: str = "decrypt", **settings: Any) -> Opened:
    return gate(pki, mode, **settings).open(Message(raw))


def verdict(opened: Opened) -> tuple[str | None, str | None]:
    return opened.message.header(ENCRYPTION), opened.message.header(SIGNATURE)


def test_detached_signature_of_trusted_signer(pki: Pki) -> None:
    """multipart/signed from a signer of the trusted CA: trusted, and the content unwrapped."""
    opened = run(pki, mail(pki.sign(PLAIN)))
    assert opened.failure is None
    assert verdict(opened) == ("Not encrypted", f"{SIGNER} (trusted)")
    assert b"pkcs7-signature" not in opened.message.raw
    assert opened.message.raw.endswith(PLAIN)
    assert opened.message.header("Subject") == "Incident"


def test_opaque_signature_is_unwrapped(pki: Pki) -> None:
    """Opaque signed-data: verified and opened, so Redmine gets text, not a .p7m blob."""
    opened = run(pki, mail(pki.sign(PLAIN, opaque=True)))
    assert verdict(opened) == ("Not encrypted", f"{SIGNER} (trusted)")
    assert opened.message.raw.endswith(PLAIN)


@pytest.mark.parametrize("queue", [QUEUE, PLAIN_QUEUE], ids=["passphrase", "no-passphrase"])
def test_encrypted_mail_is_decrypted_with_the_recipients_key(pki: Pki, queue: str) -> None:
    """enveloped-data to the queue is decrypted with its key, with or without a passphrase."""
    opened = run(pki, mail(pki.encrypt(PLAIN, queue), to=queue))
    assert opened.failure is None
    assert verdict(opened) == ("Success", "Not signed")
    assert opened.message.raw.endswith(PLAIN)


def test_signed_then_encrypted(pki: Pki) -> None:
    """Signed inside encrypted: decrypted, then the inner signature verified."""
    opened = run(pki, mail(pki.encrypt(pki.sign(PLAIN))))
    assert verdict(opened) == ("Success", f"{SIGNER} (trusted)")
    assert opened.message.raw.endswith(PLAIN)


def test_encrypted_then_signed(pki: Pki) -> None:
    """Encrypted inside signed: the outer signature verified, then decrypted."""
    opened = run(pki, mail(pki.sign(pki.encrypt(PLAIN), opaque=True)))
    assert verdict(opened) == ("Success", f"{SIGNER} (trusted)")
    assert opened.message.raw.endswith(PLAIN)


def test_tampered_after_signing_is_bad_but_submitted(pki: Pki) -> None:
    """Content changed after signing: the bad verdict, no failure (a rule may decide)."""
    raw = mail(pki.sign(PLAIN)).replace(b"door is open", b"door is shut")
    opened = run(pki, raw)
    assert opened.failure is None
    assert verdict(opened) == ("Not encrypted", f"{SIGNER} (bad)")
    assert any("changed after signing" in step for step in opened.steps)


def test_forged_verdict_headers_are_removed(pki: Pki) -> None:
    """A sender's own X-Imap-Ingest-* headers are gone; only ours are left."""
    raw = mail(PLAIN, headers={SIGNATURE: "ceo@example.org (trusted)",
                               ENCRYPTION: "Success"})
    opened = run(pki, raw)
    assert opened.message.header_values(SIGNATURE) == ["Not signed"]
    assert opened.message.header_values(ENCRYPTION) == ["Not encrypted"]
    assert b"ceo@example.org" not in opened.message.raw


def test_headers_inside_the_encryption_do_not_reach_the_message_header(pki: Pki) -> None:
    """A verdict or From written inside the encrypted entity stays out of the header."""
    inner = (f"{SIGNATURE}: ceo@example.org (trusted)\r\nFrom: ceo@example.org\r\n"
             .encode() + PLAIN)
    opened = run(pki, mail(pki.encrypt(inner)))
    assert opened.message.header_values(SIGNATURE) == ["Not signed"]
    assert opened.message.header_values("From") == [SIGNER]
    assert opened.message.raw.endswith(PLAIN)


def test_forged_verdict_removed_in_pass_through_too(pki: Pki) -> None:
    """pass-through adds nothing, but still drops a forged verdict the rules would see."""
    opened = run(pki, mail(PLAIN, headers={SIGNATURE: "x (trusted)"}), "pass-through")
    assert opened.message.header(SIGNATURE) is None


def test_key_for_another_address_is_missing_key(pki: Pki) -> None:
    """Encrypted to a certificate whose key is not ours: Missing key, a failure."""
    raw = mail(pki.encrypt(PLAIN, STRANGER), to=STRANGER)
    opened = run(pki, raw)
    assert opened.failure == f"Missing key: not encrypted to the certificate of {QUEUE}"
    assert opened.message.raw == raw  # what goes to move_on_failure is the original


def test_no_key_for_any_recipient_is_missing_key(pki: Pki) -> None:
    """A folder whose addresses have no key in the keyring: Missing key, naming them."""
    step = Gate(SMime.model_validate({"keyring": pki.keyring}), own=["help@example.org"])
    opened = step.open(Message(mail(pki.encrypt(PLAIN, STRANGER), to=STRANGER)))
    assert opened.failure == ("Missing key: the keyring has no key for help@example.org, "
                              f"{STRANGER}")


def test_wrong_passphrase_says_so_without_the_passphrase(pki: Pki) -> None:
    """A wrong passphrase is named as the likely cause; neither passphrase is shown."""
    opened = run(pki, mail(pki.encrypt(PLAIN)), passphrase="not-the-one")
    assert opened.failure == f"Missing key: cannot read the key of {QUEUE} (wrong passphrase?)"
    assert "not-the-one" not in " ".join(opened.steps) and PASSPHRASE not in opened.failure


def test_fallback_passphrase(pki: Pki) -> None:
    """The map's '' passphrase serves an address the map does not name (RT's fallback)."""
    opened = run(pki, mail(pki.encrypt(PLAIN)), passphrase={"": PASSPHRASE})
    assert verdict(opened) == ("Success", "Not signed")


@pytest.mark.parametrize("header", ["Delivered-To", "To", "Cc"])
def test_recipient_headers_name_the_key(pki: Pki, header: str) -> None:
    """Without the folder's addresses, Delivered-To, To and Cc say whose key decrypts."""
    to = PLAIN_QUEUE if header == "To" else "list@example.org"  # a To without a key
    raw = mail(pki.encrypt(PLAIN, PLAIN_QUEUE), to=to,
               headers={} if header == "To" else {header: PLAIN_QUEUE})
    opened = Gate(SMime.model_validate({"keyring": pki.keyring})).open(Message(raw))
    assert opened.failure is None
    assert f"layer 1: enveloped-data, decrypted with the key of {PLAIN_QUEUE}" in opened.steps


@pytest.mark.parametrize(("settings", "reason"), [
    ({"max_size": 100}, "Bad data: {size} bytes, over smime max_size (100 bytes)"),
    ({"max_layers": 1}, "Bad data: more than smime max_layers (1) S/MIME layers"),
], ids=["max_size", "max_layers"])
def test_limits_are_bad_data(pki: Pki, settings: dict[str, Any], reason: str) -> None:
    """Over max_size, or more layers than max_layers: Bad data, a failure."""
    raw = mail(pki.encrypt(pki.sign(PLAIN)))
    assert run(pki, raw, **settings).failure == reason.format(size=len(raw))


def test_openssl_over_the_timeout_is_bad_data(pki: Pki, tmp_path: Path) -> None:
    """An openssl run over ``timeout`` is stopped: Bad data, a failure."""
    slow = tmp_path / "openssl"
    slow.write_text("#!/bin/sh\nsleep 10\n")
    slow.chmod(0o755)
    opened = run(pki, mail(pki.encrypt(PLAIN)), openssl=str(slow), timeout=0.2)
    assert opened.failure == "Bad data: openssl cms took over 0.2s (smime timeout)"


def test_bad_data_fails(pki: Pki) -> None:
    """An enveloped-data whose base64 is garbage: Bad data, a failure."""
    entity = re.sub(rb"\n\n.*", b"\n\nnot base64 at all !!!\n", pki.encrypt(PLAIN), flags=re.S)
    opened = run(pki, mail(entity))
    assert opened.failure is not None and opened.failure.startswith("Bad data")


@pytest.mark.parametrize(("signer", "settings", "expected"), [
    (ROGUE, {}, "bad"),
    (ROGUE, {"accept_untrusted_cas": True}, "untrusted"),
    (SIGNER, {"ca_path": None}, "bad"),
    (SIGNER, {"ca_path": None, "accept_untrusted_cas": True}, "untrusted"),
    (EXPIRED, {}, "bad"),
    (EXPIRED, {"accept_untrusted_cas": True}, "bad"),
], ids=["untrusted-ca", "untrusted-ca-accepted", "no-ca-path", "no-ca-path-accepted",
        "expired", "expired-accepted"])
def test_trust(pki: Pki, signer: str, settings: dict[str, Any], expected: str) -> None:
    """RT's trust rules: an unknown CA is bad unless accepted; expired is always bad."""
    opened = run(pki, mail(pki.sign(PLAIN, signer), sender=signer), **settings)
    assert verdict(opened)[1] == f"{signer} ({expected})"


def test_ca_path_directory(pki: Pki, tmp_path: Path) -> None:
    """ca_path as a c_rehash directory works as the PEM file does."""
    (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
    subprocess.run(["openssl", "rehash", str(tmp_path)], check=True, capture_output=True)
    opened = run(pki, mail(pki.sign(PLAIN)), ca_path=tmp_path)
    assert verdict(opened)[1] == f"{SIGNER} (trusted)"


def test_signer_is_not_from(pki: Pki) -> None:
    """A good signature by someone other than From is bad."""
    opened = run(pki, mail(pki.sign(PLAIN), sender="ceo@example.org"))
    assert verdict(opened)[1] == f"{SIGNER} (bad)"
    assert any("not From ceo@example.org" in step for step in opened.steps)


@pytest.mark.parametrize(("allowed", "expected"), [(False, "bad"), (True, "trusted")])
def test_sha1_only_when_allowed(pki: Pki, allowed: bool, expected: str) -> None:
    """A SHA-1 signature is bad unless allow_weak_digests."""
    opened = run(pki, mail(pki.sign(PLAIN, digest="sha1")), allow_weak_digests=allowed)
    assert verdict(opened)[1] == f"{SIGNER} ({expected})"


def test_pass_through_changes_no_byte(pki: Pki) -> None:
    """pass-through: the bytes out are the bytes in, for every shape."""
    for raw in (mail(pki.encrypt(pki.sign(PLAIN))), mail(pki.sign(PLAIN))):
        assert run(pki, raw, "pass-through").message.raw == raw


def test_verify_mode_keeps_the_original_under_the_verdict(pki: Pki) -> None:
    """verify: the original bytes after the verdict headers; encrypted mail left closed."""
    raw = mail(pki.sign(PLAIN))
    opened = run(pki, raw, "verify")
    assert opened.message.raw.endswith(raw)
    assert verdict(opened) == ("Not encrypted", f"{SIGNER} (trusted)")
    encrypted = run(pki, mail(pki.encrypt(PLAIN)), "verify")
    assert verdict(encrypted) == ("Not decrypted", "Not signed")


def test_keep_original_attaches_the_p7m(pki: Pki) -> None:
    """keep_original: the opened content first, the S/MIME original as smime.p7m."""
    opened = run(pki, mail(pki.encrypt(PLAIN)), keep_original=True)
    parts = list(opened.message.raw.split(b"--imap-ingest-"))
    assert len(parts) == 4
    assert PLAIN in parts[1]
    assert b'filename="smime.p7m"' in parts[2] and b"enveloped-data" in parts[2]


def test_verdict_in_body_is_the_first_text_part(pki: Pki) -> None:
    """verdict_in_body: the verdict also as a first text part (Redmine keeps no headers)."""
    raw = mail(pki.encrypt(pki.sign(PLAIN)))
    opened = run(pki, raw, verdict_in_body=True, keep_original=True)
    note, text = opened.message.body_text().split("\n", 1)
    assert note == f"S/MIME (imap-ingest): encryption Success, signature {SIGNER} (trusted)"
    assert text == "The server room door is open.\r\n"
    assert verdict(opened) == ("Success", f"{SIGNER} (trusted)")
    assert b'filename="smime.p7m"' in opened.message.raw


@pytest.mark.parametrize("content", [PLAIN, PLAIN.partition(b"\r\n")[2]],
                         ids=["content-type", "none"])
def test_verdict_in_body_of_plain_mail_keeps_its_content(pki: Pki, content: bytes) -> None:
    """Plain mail gets the note too (a forged verdict gone), its own content unchanged."""
    raw = mail(content, headers={SIGNATURE: "ceo@example.org (trusted)"})
    opened = run(pki, raw.replace(b"MIME-Version: 1.0\r\n", b""), verdict_in_body=True)
    assert opened.message.header("MIME-Version") == "1.0"  # it is a multipart now
    assert opened.message.body_text() == ("S/MIME (imap-ingest): encryption Not encrypted, "
                                          "signature Not signed\nThe server room door is "
                                          "open.\r\n")
    assert b"ceo@example.org" not in opened.message.raw
    assert opened.message.header("Subject") == "Incident"


@pytest.mark.parametrize("mode", ["verify", "pass-through"])
def test_verdict_in_body_only_when_decrypting(pki: Pki, mode: str) -> None:
    """verify and pass-through keep the original bytes: no note is written into them."""
    raw = mail(pki.sign(PLAIN))
    assert run(pki, raw, mode, verdict_in_body=True).message.raw.endswith(raw)


def test_no_smime_configured_changes_nothing(pki: Pki) -> None:
    """A folder without smime: the message object itself goes on, forged header and all."""
    message = Message(mail(PLAIN, headers={SIGNATURE: "x (trusted)"}))
    assert Gate(None).open(message).message is message


@pytest.mark.parametrize("shape", [outlook, thunderbird], ids=["outlook", "thunderbird"])
def test_client_shapes(pki: Pki, shape: Any) -> None:
    """Outlook's signed-and-encrypted and Thunderbird's signed mail open as RT's would."""
    opened = run(pki, shape(pki))
    assert opened.failure is None
    assert opened.message.header(SIGNATURE) == f"{SIGNER} (trusted)"
    assert opened.message.raw.endswith(ALTERNATIVE)
    assert opened.message.header("Content-Type") == (
        'multipart/alternative; boundary="_000_alt_"')


def test_passphrases_are_secrets_for_the_redactor(pki: Pki) -> None:
    """Every passphrase of every folder is among Config.secrets(), for the log redactor."""
    from imap_ingest.config import Config
    config = Config.model_validate({
        "accounts": [{"name": "a", "host": "localhost", "username": "u", "password": "p",
                      "folders": [{"name": "INBOX", "smime": {
                          "keyring": str(pki.keyring),
                          "passphrase": {QUEUE: PASSPHRASE, "": "fallback-pass"}}}]}],
        "targets": {"r": {"type": "webhook", "url": "http://127.0.0.1:1/"}}})
    assert {PASSPHRASE, "fallback-pass"} <= set(config.secrets())
