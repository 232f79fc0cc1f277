"""S/MIME through real parts: dovecot → imap-ingest run --once → the local fake trackers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.message import Message
from imap_ingest.smime import ENCRYPTION, SIGNATURE
from imap_ingest.trackers.rt import as_piped

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.pki import PASSPHRASE, PLAIN, QUEUE, SIGNER, STRANGER, Pki, mail
from .support.redmine_server import FakeRedmine, FakeRT

# The security queue takes only mail with a trusted signature; the rest is looked at by hand.
TRUSTED_ONLY = {"if": [rf"!^{SIGNATURE}:.*\(trusted\)"], "then": {"move": "Untrusted"}}


def smime(pki: Pki, **extra: object) -> dict[str, object]:
    """The folder's smime: the passphrase from the environment, as every secret may be."""
    return {"keyring": str(pki.keyring), "ca_path": str(pki.ca),
            "passphrase_env": "QUEUE_KEY_PASSPHRASE", **extra}


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_KEY_PASSPHRASE", PASSPHRASE)


def test_security_queue_to_redmine(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                                   pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    """Redmine gets the trusted mail decrypted; a rule sets the rest aside; no passphrase."""
    good = mail(pki.encrypt(pki.sign(PLAIN)), subject="good")
    forged = mail(PLAIN, subject="forged", headers={SIGNATURE: f"{SIGNER} (trusted)"})
    tampered = mail(pki.sign(PLAIN), subject="tampered").replace(b"is open", b"is shut")
    stranger = mail(pki.encrypt(PLAIN, STRANGER), subject="stranger")
    for raw in (good, forged, tampered, stranger):
        imap.append("INBOX", raw)
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        account={"addresses": [QUEUE]},
                        folder={"smime": smime(pki), "move_on_failure": "Failed",
                                "rules": [TRUSTED_ONLY]})
    assert main(["run", "--once", "--debug", "-c", str(path)]) == 0
    [posted] = [Message(raw) for raw in redmine.emails]
    assert posted.subject == "good"
    assert posted.header(ENCRYPTION) == "Success"
    assert posted.header(SIGNATURE) == f"{SIGNER} (trusted)"
    assert posted.body_text() == "The server room door is open.\r\n"
    untrusted = [Message(raw) for _, raw in imap.messages("Untrusted").values()]
    assert sorted(m.subject or "" for m in untrusted) == ["forged", "tampered"]
    [failed] = imap.messages("Failed").values()
    assert failed[1] == stranger  # the original, untouched
    err = capsys.readouterr().err
    assert "Missing key" in err and PASSPHRASE not in err


def test_bad_signature_is_submitted_with_the_bad_verdict(tmp_path: Path, imap: ImapAccount,
                                                         redmine: FakeRedmine, pki: Pki) -> None:
    """Without a rule about it, a bad signature is submitted, saying bad."""
    imap.append("INBOX", mail(pki.sign(PLAIN)).replace(b"is open", b"is shut"))
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        account={"addresses": [QUEUE]}, folder={"smime": smime(pki)})
    assert main(["run", "--once", "-c", str(path)]) == 0
    [posted] = [Message(raw) for raw in redmine.emails]
    assert posted.header(SIGNATURE) == f"{SIGNER} (bad)"


def rt_config(tmp_path: Path, imap: ImapAccount, url: str, **settings: object) -> Path:
    data = {
        "accounts": [{"name": "test", "host": imap.host, "port": imap.port, "security": "none",
                      "username": imap.username, "password": imap.password,
                      "addresses": [QUEUE],
                      "folders": [{"name": "INBOX", "move_on_failure": "Failed",
                                   "smime": settings}]}],
        "targets": {"rt": {"type": "rt", "url": url, "timeout": "5s"}},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_rt_gets_the_raw_bytes_by_default(tmp_path: Path, imap: ImapAccount, rt: FakeRT,
                                          pki: Pki) -> None:
    """RT's default is pass-through: what RT gets is what an MTA would pipe it, S/MIME intact."""
    raws = [mail(pki.encrypt(pki.sign(PLAIN))), mail(pki.sign(PLAIN, opaque=True)),
            mail(pki.encrypt(PLAIN, STRANGER))]
    for raw in raws:
        imap.append("INBOX", raw)
    assert main(["run", "--once", "-c", str(rt_config(tmp_path, imap, rt.url,
                                                      **smime(pki)))]) == 0
    assert rt.messages == [as_piped(raw, None) for raw in raws]


def test_rt_decrypt_on_request(tmp_path: Path, imap: ImapAccount, rt: FakeRT, pki: Pki) -> None:
    """mode: decrypt for RT: RT sees plain MIME with our verdict."""
    imap.append("INBOX", mail(pki.encrypt(PLAIN)))
    path = rt_config(tmp_path, imap, rt.url, **smime(pki, mode="decrypt"))
    assert main(["run", "--once", "-c", str(path)]) == 0
    [got] = [Message(raw) for raw in rt.messages]
    assert got.header(ENCRYPTION) == "Success" and b"pkcs7" not in got.raw


def test_explain_shows_each_step(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                                 pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    """explain runs the same step: each layer, the verdict, then the rules on it."""
    eml = tmp_path / "mail.eml"
    eml.write_bytes(mail(pki.encrypt(pki.sign(PLAIN))))
    path = write_config(tmp_path / "config.yaml", imap, redmine.url,
                        account={"addresses": [QUEUE]},
                        folder={"smime": smime(pki), "rules": [TRUSTED_ONLY]})
    assert main(["explain", "-c", str(path), "--folder", "INBOX", str(eml)]) == 0
    out = capsys.readouterr().out
    assert f"layer 1: enveloped-data, decrypted with the key of {QUEUE}" in out
    assert f"layer 2: signed by {SIGNER}: trusted (chains to ca_path)" in out
    assert "decision: submit" in out and PASSPHRASE not in out
