"""S/MIME before the rules: decrypt enveloped mail, verify signed mail, say so in headers.

Bytes in, (bytes out, verdict) out; the only I/O is running the openssl CLI and reading
the keyring. The openssl CLI rather than the ``cryptography`` package: cryptography can
decrypt PKCS#7 but has no verify, and ``openssl cms`` is what RT::Crypt::SMIME itself runs,
so a verdict here and one of RT's own agree. Each run is bounded by ``timeout``, the input
by ``max_size``, the nesting by ``max_layers``. The passphrase reaches openssl through a
pipe (``-passin fd:N``): never in its arguments, environment, or any message.

The verdict headers (``X-Imap-Ingest-Encryption``, ``X-Imap-Ingest-Signature``) a sender
put in the mail are removed first, in every mode: a rule must never see a forged verdict.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import getaddresses
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from .config import Account, Config, Folder
from .config.smime import Mode, SMime
from .message import MAX_HEADER_BYTES, RECIPIENT_HEADERS, Message, edit_headers

ENCRYPTION = "X-Imap-Ingest-Encryption"
SIGNATURE = "X-Imap-Ingest-Signature"
VERDICT_HEADERS = (ENCRYPTION, SIGNATURE)

_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_SMIME_TYPE = re.compile(r"^(?:application/(?:x-)?pkcs7-mime|multipart/signed)\b", re.I)
_CONTENT_TYPE = re.compile(r"contentType: (\S+)")
_DIGEST = re.compile(r"digestAlgorithm: *\n *algorithm: (\S+)")
_WEAK_DIGESTS = frozenset({"md5", "sha1", "md2", "md4"})
_UNSAFE = re.compile(r"[^\w.@+=-]")  # a certificate's name is the sender's text: no header breaks


@dataclass(frozen=True, slots=True)
class Opened:
    """A message after the S/MIME step: what the rules see and the tracker gets."""

    message: Message
    failure: str | None = None  # Missing key / Bad data: it must not go on as if plain
    steps: tuple[str, ...] = ()  # what was done, for explain


class _Failed(Exception):
    """A layer that cannot be opened: the message fails with this reason."""


@dataclass(frozen=True, slots=True)
class _Signature:
    signer: str
    verdict: str  # trusted | untrusted | bad
    why: str


class Gate:
    """A folder's S/MIME step; without ``smime:`` configured it changes nothing."""

    def __init__(self, settings: SMime | None, mode: Mode = "decrypt",
                 own: Sequence[str] = (),
                 recipient_headers: Sequence[str] = RECIPIENT_HEADERS) -> None:
        self.settings, self.mode = settings, mode
        self.own, self.recipient_headers = tuple(own), tuple(recipient_headers)

    @classmethod
    def for_folder(cls, config: Config, account: Account, folder: Folder) -> Gate:
        """The folder's step: its mode defaults to pass-through when its target is RT."""
        settings = folder.smime
        target = config.targets[config.target_for(folder.options())]
        mode = (settings.mode if settings and settings.mode
                else "pass-through" if target.type == "rt" else "decrypt")
        return cls(settings, mode, account.addresses, account.recipient_headers)

    def open(self, message: Message) -> Opened:
        """The message with its S/MIME layers opened (as the mode says) and the verdict
        headers on top; ``failure`` set when it cannot be opened."""
        if self.settings is None:
            return Opened(message)
        steps: list[str] = []
        raw = message.raw
        forged = [name for name in VERDICT_HEADERS if message.header(name) is not None]
        if forged:
            raw = edit_headers(raw, {}, forged, None)
            steps.append(f"removed {', '.join(forged)} found in the incoming mail (forged)")
        if self.mode == "pass-through":
            steps.append("pass-through: the raw bytes go to the tracker, whose own S/MIME runs")
            return Opened(Message(raw), None, tuple(steps))
        try:
            return self._open(raw, message, steps)
        except _Failed as exc:
            steps.append(f"failed: {exc}")
            return Opened(message, str(exc), tuple(steps))

    def _open(self, raw: bytes, message: Message, steps: list[str]) -> Opened:
        settings = self.settings
        assert settings is not None
        if len(raw) > settings.max_size:
            raise _Failed(f"Bad data: {len(raw)} bytes, over smime max_size "
                          f"({settings.max_size} bytes)")
        encryption, signatures, entity = "Not encrypted", list[_Signature](), raw
        original: bytes | None = None
        for layer in range(1, settings.max_layers + 1):
            if not _SMIME_TYPE.match(Message(entity).header("Content-Type") or ""):
                break
            printed = self._run(["cms", "-cmsout", "-print", "-noout", "-inform", "SMIME"],
                                entity)
            if printed.returncode:
                raise _Failed(f"Bad data: layer {layer} is not S/MIME openssl can read "
                              f"({_error(printed.stderr)})")
            kind = _CONTENT_TYPE.search(printed.stdout.decode("latin-1"))
            content = kind[1] if kind else "?"
            if content == "pkcs7-envelopedData":
                if self.mode == "verify":
                    encryption = "Not decrypted"
                    steps.append(f"layer {layer}: enveloped-data, left closed (mode verify)")
                    break
                inner, address = self._decrypt(entity, message)
                encryption = "Success"
                steps.append(f"layer {layer}: enveloped-data, decrypted with the key of "
                             f"{address}")
            elif content == "pkcs7-signedData":
                signature, inner = self._verify(entity, printed.stdout.decode("latin-1"),
                                                message.sender)
                signatures.append(signature)
                steps.append(f"layer {layer}: signed by {signature.signer}: "
                             f"{signature.verdict} ({signature.why})")
            else:
                raise _Failed(f"Bad data: layer {layer} is CMS {content}, which is neither "
                              "enveloped-data nor signed-data")
            original = original or entity
            entity = inner
        else:
            if _SMIME_TYPE.match(Message(entity).header("Content-Type") or ""):
                raise _Failed(f"Bad data: more than smime max_layers "
                              f"({settings.max_layers}) S/MIME layers")
        verdict = {ENCRYPTION: encryption, SIGNATURE: ", ".join(
            f"{s.signer} ({s.verdict})" for s in signatures) or "Not signed"}
        steps.append("; ".join(f"{name}: {value}" for name, value in verdict.items()))
        if self.mode == "verify" or (original is None and not settings.verdict_in_body):
            return Opened(Message(edit_headers(raw, verdict, (), None)), None, tuple(steps))
        note = (f"S/MIME (imap-ingest): encryption {verdict[ENCRYPTION]}, signature "
                f"{verdict[SIGNATURE]}") if settings.verdict_in_body else None
        opened = _replace_body(raw, entity, original if settings.keep_original else None, note)
        return Opened(Message(edit_headers(opened, verdict, (), None)), None, tuple(steps))

    def _decrypt(self, entity: bytes, message: Message) -> tuple[bytes, str]:
        """The content, decrypted with the first key of the recipients that fits."""
        settings = self.settings
        assert settings is not None
        if settings.keyring is None:
            raise _Failed("Missing key: no keyring configured")
        keys = {path.name[:-4].lower(): path for path in settings.keyring.glob("*.pem")}
        wanted = [*self.own, *(address for _, address in getaddresses(
            [value for name in self.recipient_headers for value in message.header_values(name)]))]
        candidates = list(dict.fromkeys(a.lower() for a in wanted if a.lower() in keys))
        if not candidates:
            raise _Failed("Missing key: the keyring has no key for "
                          + (", ".join(dict.fromkeys(a.lower() for a in wanted))
                             or "the message's recipients"))
        tried = []
        for address in candidates:
            key = str(keys[address])
            done = self._run(["cms", "-decrypt", "-inform", "SMIME", "-inkey", key, "-recip",
                              key], entity, settings.passphrase_for(address) or "")
            if done.returncode == 0:
                return done.stdout, address
            tried.append(f"cannot read the key of {address} (wrong passphrase?)"
                         if b"Could not read" in done.stderr
                         else f"not encrypted to the certificate of {address}")
        raise _Failed("Missing key: " + "; ".join(tried))

    def _verify(self, entity: bytes, printed: str, sender: str) -> tuple[_Signature, bytes]:
        """The signature's verdict and the signed content."""
        settings = self.settings
        assert settings is not None
        with tempfile.TemporaryDirectory(prefix="imap-ingest-smime-") as tmp:
            signer, certs = Path(tmp, "signer.pem"), Path(tmp, "certs.pem")
            files = ["-signer", str(signer), "-certsout", str(certs)]
            done = self._run(["cms", "-verify", "-noverify", "-inform", "SMIME", *files],
                             entity)
            intact = done.returncode == 0
            if not intact:  # read the content and signer anyway, to say who signed what
                done = self._run(["cms", "-verify", "-noverify", "-nosigs", "-inform", "SMIME",
                                  *files], entity)
            if done.returncode or not signer.exists():
                raise _Failed(f"Bad data: cannot read the signed content "
                              f"({_error(done.stderr)})")
            cert = x509.load_pem_x509_certificates(signer.read_bytes())[0]
            chained = self._chains(signer, certs) if settings.ca_path else "no ca_path is set"
        problems = [] if intact else ["the content was changed after signing"]
        weak = sorted({d for d in _DIGEST.findall(printed)} & _WEAK_DIGESTS)
        if weak and not settings.allow_weak_digests:
            problems.append(f"digest {', '.join(weak)} is not allowed (allow_weak_digests)")
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            problems.append(f"the certificate is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                            f"{cert.not_valid_after_utc:%Y-%m-%d} only")
        addresses = _addresses(cert)
        if sender not in addresses:
            problems.append(f"the certificate is for {', '.join(addresses) or 'no address'}, "
                            f"not From {sender or '(none)'}")
        name = _UNSAFE.sub("?", (addresses or [_common_name(cert)])[0])[:200] or "(unnamed)"
        if problems:
            return _Signature(name, "bad", "; ".join(problems)), done.stdout
        if chained == "":
            return _Signature(name, "trusted", "chains to ca_path"), done.stdout
        if settings.accept_untrusted_cas:
            return _Signature(name, "untrusted", f"{chained}; accept_untrusted_cas"), done.stdout
        return _Signature(name, "bad", f"{chained}; accept_untrusted_cas is off"), done.stdout

    def _chains(self, signer: Path, certs: Path) -> str:
        """"" when the signer's certificate chains to ca_path for S/MIME signing, else why."""
        settings = self.settings
        assert settings is not None and settings.ca_path is not None
        trust = "-CApath" if settings.ca_path.is_dir() else "-CAfile"
        done = self._run(["verify", trust, str(settings.ca_path), "-purpose", "smimesign",
                          "-untrusted", str(certs), str(signer)], b"")
        return "" if done.returncode == 0 else f"not trusted: {_error(done.stderr)}"

    def _run(self, args: list[str], data: bytes,
             passphrase: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """openssl ARGS on ``data``, bounded by the timeout; the passphrase through a pipe."""
        settings = self.settings
        assert settings is not None
        fds: tuple[int, ...] = ()
        if passphrase is not None:
            read, write = os.pipe()
            os.write(write, passphrase.encode() + b"\n")  # far below a pipe's buffer
            os.close(write)
            args, fds = [*args, "-passin", f"fd:{read}"], (read,)
        try:
            return subprocess.run([settings.openssl, *args], input=data, capture_output=True,
                                  timeout=settings.timeout, pass_fds=fds, check=False)
        except subprocess.TimeoutExpired:
            raise _Failed(f"Bad data: openssl {args[0]} took over {settings.timeout:g}s "
                          "(smime timeout)") from None
        except OSError as exc:
            raise _Failed(f"cannot run {settings.openssl}: {exc.strerror}") from None
        finally:
            for fd in fds:
                os.close(fd)


def _replace_body(raw: bytes, entity: bytes, original: bytes | None,
                  note: str | None = None) -> bytes:
    """The message's own headers (without its Content-* ones) over the opened ``entity``;
    with ``note`` or ``original``, in a multipart/mixed: the note as a text part first, then
    the entity, then the S/MIME original as an attachment."""
    newline = b"\r\n" if b"\r\n" in raw[:MAX_HEADER_BYTES] else b"\n"
    end = _END_OF_HEADER.search(raw[:MAX_HEADER_BYTES])
    head = raw[: end.start()] if end else raw
    content = [name for name, _ in Message(raw).fields() if name.lower().startswith("content-")]
    kept = edit_headers(head, {}, content, None)
    # Of the opened entity's own header only its Content-* fields go on, as RT keeps them: a
    # From or verdict written inside the encryption must not join the message's header.
    end = _END_OF_HEADER.search(entity[:MAX_HEADER_BYTES])
    if end is not None:
        inner = Message(entity).fields()
        others = [name for name, _ in inner if not name.lower().startswith("content-")]
        head = edit_headers(entity[: end.start()], {}, others, None)
        # No Content-* field left (plain mail without any): the part starts with its empty line.
        entity = head + entity[end.start():] if head else entity[end.start():].lstrip(b"\r")[1:]
    parts = [entity]
    if note is not None:
        parts.insert(0, newline.join([b"Content-Type: text/plain; charset=utf-8",
                                      b"Content-Transfer-Encoding: 8bit", b"",
                                      note.encode()]))
    if original is not None:
        parts.append(_attachment(original, newline))
    if len(parts) == 1:
        return kept + newline + entity
    if Message(raw).header("MIME-Version") is None:  # plain mail may lack it; multipart needs it
        kept = edit_headers(kept, {"MIME-Version": "1.0"}, (), None)
    boundary = f"imap-ingest-{uuid.uuid4().hex}".encode()
    return newline.join([kept, b"Content-Type: multipart/mixed; boundary=\"" + boundary + b'"',
                         b"", *(line for part in parts for line in (b"--" + boundary, part)),
                         b"--" + boundary + b"--", b""])


def _attachment(original: bytes, newline: bytes) -> bytes:
    """The outermost S/MIME entity as an attachment: the .p7m itself, or a multipart/signed
    message's signature part (the signed content is the part beside it)."""
    entity = Message(original)
    end = _END_OF_HEADER.search(original[:MAX_HEADER_BYTES])
    body = original[end.end():] if end else b""
    if (entity.header("Content-Type") or "").lower().startswith("multipart/signed"):
        parts = email.message_from_bytes(original, policy=email.policy.compat32).get_payload()
        signature = parts[1] if isinstance(parts, list) and len(parts) == 2 else None
        return signature.as_bytes() if isinstance(signature, email.message.Message) else b""
    encoding = entity.header("Content-Transfer-Encoding") or "base64"
    return newline.join([
        f"Content-Type: {entity.header('Content-Type')}".encode(),
        f"Content-Transfer-Encoding: {encoding}".encode(),
        b'Content-Disposition: attachment; filename="smime.p7m"', b"", body])


def _addresses(cert: x509.Certificate) -> list[str]:
    """The certificate's mail addresses, lower-cased: its SAN, then its subject's."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = [str(a) for a in san.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        found = []
    found += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    return list(dict.fromkeys(a.lower() for a in found))


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _error(stderr: bytes) -> str:
    """openssl's reason, without its hex codes and source paths: short, and never a secret
    (openssl prints no key material)."""
    reasons = re.findall(rb"error:[0-9A-F]+:[^:]*:[^:]*:([^:\n]+)", stderr)
    lines = reasons or [line for line in stderr.splitlines() if line.strip()][:1]
    return "; ".join(dict.fromkeys(r.decode("latin-1").strip() for r in lines))[:200] or "?"
