"""A small S/MIME PKI made with the openssl CLI, and S/MIME mail made from it (no network).

Two CAs (one trusted, one not), signers from each, an expired signer, and queue keys with
and without a passphrase, laid out as RT's keyring: ``ADDRESS.pem`` holding key + cert.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

QUEUE = "security@example.org"  # the queue's address; its key has a passphrase
PLAIN_QUEUE = "incident@example.org"  # a queue whose key has none
PASSPHRASE = "queue-key-passphrase-7Zq"
SIGNER = "alice@example.org"
ROGUE = "mallory@example.org"  # signed by a CA nobody trusts
EXPIRED = "old@example.org"
STRANGER = "bob@elsewhere.example"  # a key nobody gave us
_counter = itertools.count(1)


def openssl(*args: str | Path, data: bytes | None = None) -> bytes:
    """Run the openssl CLI; its output, raising on failure."""
    return subprocess.run(["openssl", *map(str, args)], input=data, capture_output=True,
                          check=True, timeout=60).stdout


@dataclass(frozen=True)
class Pki:
    """The files of the test PKI."""

    root: Path

    @property
    def keyring(self) -> Path:
        return self.root / "keyring"

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def cert(self, address: str) -> Path:
        return self.root / f"{address}.crt"

    def key(self, address: str) -> Path:
        return self.root / f"{address}.key"

    def sign(self, mime: bytes, signer: str = SIGNER, opaque: bool = False,
             digest: str = "sha256") -> bytes:
        """``mime`` (an entity: its headers and body) signed, detached or opaque."""
        return openssl("cms", "-sign", "-binary", *(["-nodetach"] if opaque else []),
                       "-signer", self.cert(signer), "-inkey", self.key(signer), "-md", digest,
                       data=mime)

    def encrypt(self, mime: bytes, recipient: str = QUEUE, cipher: str = "-aes256") -> bytes:
        """``mime`` encrypted to ``recipient``'s certificate."""
        return openssl("cms", "-encrypt", "-binary", cipher, self.cert(recipient), data=mime)


PLAIN = b"Content-Type: text/plain; charset=utf-8\r\n\r\nThe server room door is open.\r\n"


def mail(entity: bytes, sender: str = SIGNER, to: str = QUEUE, subject: str = "Incident",
         headers: dict[str, str] | None = None, message_id: str | None = None) -> bytes:
    """A whole message: our headers over an S/MIME entity openssl wrote (CRLF throughout)."""
    message_id = message_id or f"<smime-{next(_counter)}@example.org>"
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             "Date: Tue, 01 Dec 2026 10:00:00 +0000", f"Message-ID: {message_id}",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    entity = re.sub(rb"(?<!\r)\n", b"\r\n", entity)
    if not entity.startswith(b"MIME-Version"):
        lines.append("MIME-Version: 1.0")
    return "\r\n".join(lines).encode() + b"\r\n" + entity


def alternative(text: str) -> bytes:
    """A multipart/alternative entity, as mail clients write: ``text`` as plain and HTML."""
    return (b'Content-Type: multipart/alternative; boundary="_000_alt_"\r\n\r\n'
            b'--_000_alt_\r\nContent-Type: text/plain; charset="us-ascii"\r\n\r\n'
            + text.encode() + b'\r\n--_000_alt_\r\nContent-Type: text/html; '
            b'charset="us-ascii"\r\n\r\n<p>' + text.encode() + b"</p>\r\n--_000_alt_--\r\n")


ALTERNATIVE = alternative("Door open.")


def outlook(pki: Pki, content: bytes = ALTERNATIVE, **fields: str) -> bytes:
    """Outlook's shape: x-pkcs7-mime, 3DES, base64 in 76 columns, its X-MS headers;
    ``fields`` are ``mail``'s (subject, message_id)."""
    entity = pki.encrypt(pki.sign(content, opaque=True), cipher="-des3").decode()
    head, _, body = entity.partition("\n\n")
    joined = "".join(body.split())
    body = "\n".join(joined[i:i + 76] for i in range(0, len(joined), 76))
    head = head.replace("application/pkcs7-mime", "application/x-pkcs7-mime")
    return mail(f"{head}\n\n{body}\n".encode(), headers={
        "Thread-Index": "AdnQ1x2y3z4w5v6u7t8s9r0q==", "X-MS-Has-Attach": "yes",
        "X-MS-TNEF-Correlator": "", "Content-Language": "en-US"}, **fields)


def thunderbird(pki: Pki, content: bytes = ALTERNATIVE, **fields: str) -> bytes:
    """Thunderbird's shape: its preamble and boundary, the signature part described."""
    entity = pki.sign(content).decode()
    boundary = re.search(r'boundary="([^"]+)"', entity)
    assert boundary
    entity = (entity.replace(boundary[1], "------------ms010203040506070809000102")
              .replace("This is an S/MIME signed message",
                       "This is a cryptographically signed message in MIME format.")
              .replace('Content-Type: application/pkcs7-signature; name="smime.p7s"',
                       'Content-Type: application/pkcs7-signature; name="smime.p7s"\n'
                       "Content-Description: S/MIME Cryptographic Signature"))
    return mail(entity.encode(), headers={"User-Agent": "Mozilla/5.0 Thunderbird/115.6.0"},
                **fields)


def _ca(root: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", root / f"{name}.key",
            "-out", root / f"{name}.crt", "-days", "30", "-subj", f"/CN=Test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _leaf(root: Path, address: str, ca: str, *, days: int = 30, expired: bool = False,
          passphrase: str | None = None) -> None:
    key, csr, crt = (root / f"{address}.{ext}" for ext in ("key", "csr", "crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", f"/CN={address}/emailAddress={address}")
    ext = root / f"{address}.ext"
    ext.write_text(f"subjectAltName=email:{address}\nkeyUsage=digitalSignature,"
                   "keyEncipherment\nextendedKeyUsage=emailProtection\n")
    dates = (["-not_before", "20200101000000Z", "-not_after", "20210101000000Z"] if expired
             else ["-days", str(days)])
    openssl("x509", "-req", "-in", csr, "-CA", root / f"{ca}.crt", "-CAkey", root / f"{ca}.key",
            "-CAcreateserial", "-out", crt, "-extfile", ext, *dates) if not expired else openssl(
        "ca", "-batch", "-config", _ca_config(root, ca), "-in", csr, "-out", crt,
        "-extfile", ext, "-startdate", "20200101000000Z", "-enddate", "20210101000000Z",
        "-notext")
    pem = openssl("pkey", "-in", key, *(["-aes256", "-passout", f"pass:{passphrase}"]
                                       if passphrase else []))
    (root / "keyring").mkdir(exist_ok=True)
    (root / "keyring" / f"{address}.pem").write_bytes(pem + crt.read_bytes())


def _ca_config(root: Path, ca: str) -> Path:
    """A minimal `openssl ca` setup, the one tool that backdates a certificate."""
    db = root / f"{ca}-db"
    db.mkdir(exist_ok=True)
    (db / "index.txt").touch()
    (db / "serial").write_text("1000\n")
    config = root / f"{ca}.cnf"
    config.write_text(f"[ca]\ndefault_ca=d\n[d]\ndir={db}\ndatabase=$dir/index.txt\n"
                      f"serial=$dir/serial\nnew_certs_dir=$dir\ncertificate={root}/{ca}.crt\n"
                      f"private_key={root}/{ca}.key\ndefault_md=sha256\npolicy=p\n"
                      "email_in_dn=yes\nunique_subject=no\n"
                      "[p]\ncommonName=supplied\nemailAddress=optional\n")
    return config


def make(root: Path) -> Pki:
    """Create the PKI under ``root``; the keyring holds only the queues' keys."""
    _ca(root, "ca")
    _ca(root, "rogue-ca")
    _leaf(root, QUEUE, "ca", passphrase=PASSPHRASE)
    _leaf(root, PLAIN_QUEUE, "ca")
    for address, ca in ((SIGNER, "ca"), (ROGUE, "rogue-ca"), (STRANGER, "ca")):
        _leaf(root, address, ca)
    _leaf(root, EXPIRED, "ca", expired=True)
    for address in (SIGNER, ROGUE, STRANGER, EXPIRED):  # only the queues' keys are ours
        (root / "keyring" / f"{address}.pem").unlink()
    return Pki(root)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test PKI, made once per session."""
    return make(tmp_path_factory.mktemp("pki"))
