"""S/MIME against Debian's real Redmine and RT: dovecot → imap-ingest → the tracker.

Every mail shape of issue 22 goes to each real tracker: all shapes in one folder, ONE
``run --once`` per tracker and mode (a module-scoped ``Pass``), then one test per shape on what
that pass left: the tracker's issue or ticket, or the message in ``move_on_failure`` with the
ledger's reason and nothing in the tracker.
"""

from __future__ import annotations

import base64
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar

import pytest
import yaml

from imap_ingest.ledger import Ledger
from imap_ingest.smime import ENCRYPTION, SIGNATURE
from imap_ingest.trackers.rt import as_piped

from ..support.dovecot import Dovecot
from ..support.pki import (
    EXPIRED,
    PASSPHRASE,
    PLAIN_QUEUE,
    QUEUE,
    ROGUE,
    SIGNER,
    STRANGER,
    Pki,
    alternative,
    mail,
    outlook,
    thunderbird,
)
from .conftest import fresh
from .redmine import RealRedmine
from .rt import RT_ADDRESS, RealRT, Record
from .test_redmine_e2e import E2E, KEPT, e2e  # noqa: F401  (its fixture)
from .test_rt_e2e import Tally, tally  # noqa: F401  (its fixture)

T = TypeVar("T")


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
    # RT decrypts with its queue's and its own addresses' keys: the comment address gets the
    # key without a passphrase.
    shutil.copy(pki.keyring / f"{PLAIN_QUEUE}.pem", keyring / f"{PLAIN_QUEUE}.pem")
    server = RealRT()
    (server.directory / "RT_SiteConfig.d").mkdir(exist_ok=True)
    (server.directory / "RT_SiteConfig.d" / "smime.pm").write_text(
        f"Set(%SMIME, Enable => 1, OpenSSL => '/usr/bin/openssl', Keyring => '{keyring}',\n"
        f"    CAPath => '{pki.ca}', Passphrase => {{'{RT_ADDRESS}' => '{PASSPHRASE}'}});\n"
        f"Set($CommentAddress, '{PLAIN_QUEUE}');\n"
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
    head, parts = content(rt, record)
    return head, b"".join(data for _, data in parts)


Parts = list[tuple[str, bytes]]  # (content type, decoded content) of each part RT stored


def content(rt: RealRT, record: Record) -> tuple[str, Parts]:
    """The headers RT stored for the message of ``record``, and each of its parts."""
    head = str(rt.rest("GET", f"attachment/{record.attachment}")["Headers"])
    parts = rt.rest("GET", f"transaction/{record.transaction}/attachments")["items"]
    found = [rt.rest("GET", f"attachment/{int(part['id'])}") for part in parts]
    return head, [(str(part["ContentType"]), base64.b64decode(part.get("Content") or ""))
                  for part in found]


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


def with_addresses(config: Path, addresses: list[str]) -> Path:
    """The Tally's config with the account's ``addresses`` (whose keys decrypt) replaced."""
    data = yaml.safe_load(config.read_text())
    data["accounts"][0]["addresses"] = addresses
    config.write_text(yaml.safe_dump(data))
    return config


def test_rt_decrypt_mode_gives_rt_plain_mime(tally: Tally,  # noqa: F811
                                             real_rt: RealRT, pki: Pki) -> None:
    """mode: decrypt for an RT without SMIME: RT stores the plain text and our verdict."""
    message_id, raw = secret_mail(pki)
    tally.deliver(raw)
    smime = {"keyring": str(pki.keyring), "ca_path": str(pki.ca), "passphrase": PASSPHRASE,
             "mode": "decrypt"}
    config = with_addresses(tally.config([{"name": "INBOX", "smime": smime}]), [QUEUE])
    assert tally.run(config) == 0
    head, content = stored(real_rt, message_id)
    assert f"X-Imap-Ingest-Signature: {SIGNER} (trusted)" in head
    assert "X-Imap-Ingest-Encryption: Success" in head
    assert b"The server room door is open." in content


# -- every shape, one pass per tracker and mode ----------------------------------------------

class Fields(TypedDict):
    """The fields of ``mail`` each shape's message sets."""

    subject: str
    message_id: str


Build = Callable[[Pki, bytes, Fields], bytes]  # (pki, text/plain content, fields) → message


@dataclass(frozen=True)
class Shape:
    """One kind of S/MIME mail, and the verdict imap-ingest gives it (decrypt mode)."""

    name: str
    build: Build
    encryption: str = "Not encrypted"
    signature: str = f"{SIGNER} (trusted)"
    failure: str | None = None  # the reason it goes to move_on_failure with, when it does
    text: str = "The server room door is open."  # what the tracker shows of its content
    attached: str | None = "smime.p7m"  # the original's name under keep_original


def _bad_data(pki: Pki, content: bytes, fields: Fields) -> bytes:
    entity = re.sub(rb"\n\n.*", b"\n\nnot base64 at all !!!\n", pki.encrypt(content), flags=re.S)
    return mail(entity, **fields)


FORGED = {SIGNATURE: "ceo@example.org (trusted)", ENCRYPTION: "Success",
          "X-RT-Incoming-Signature": "ceo@example.org", "X-RT-Incoming-Encryption": "Success"}
SHAPES = [
    Shape("signed-detached", lambda pki, c, f: mail(pki.sign(c), **f), attached="smime.p7s"),
    Shape("signed-opaque", lambda pki, c, f: mail(pki.sign(c, opaque=True), **f)),
    Shape("encrypted", lambda pki, c, f: mail(pki.encrypt(c), **f),
          encryption="Success", signature="Not signed"),
    Shape("signed-then-encrypted", lambda pki, c, f: mail(pki.encrypt(pki.sign(c)), **f),
          encryption="Success"),
    Shape("encrypted-then-signed",
          lambda pki, c, f: mail(pki.sign(pki.encrypt(c), opaque=True), **f),
          encryption="Success"),
    Shape("tampered-after-signing",
          lambda pki, c, f: mail(pki.sign(c), **f).replace(b"is open", b"is shut"),
          signature=f"{SIGNER} (bad)", text="The server room door is shut.",
          attached="smime.p7s"),
    Shape("forged-verdict", lambda pki, c, f: mail(c, headers=FORGED, **f),
          signature="Not signed", attached=None),
    # These two are never submitted as plain: signature "Not signed" as nothing was verified.
    Shape("key-for-another-address",
          lambda pki, c, f: mail(pki.encrypt(c, STRANGER), to=STRANGER, **f),
          signature="Not signed",
          failure=f"Missing key: not encrypted to the certificate of {QUEUE}"),
    Shape("bad-data", _bad_data, signature="Not signed",
          failure="Bad data: layer 1 is not S/MIME openssl can read"),
    Shape("untrusted-ca", lambda pki, c, f: mail(pki.sign(c, ROGUE), sender=ROGUE, **f),
          signature=f"{ROGUE} (bad)", attached="smime.p7s"),
    Shape("expired-signer", lambda pki, c, f: mail(pki.sign(c, EXPIRED), sender=EXPIRED, **f),
          signature=f"{EXPIRED} (bad)", attached="smime.p7s"),
    Shape("key-without-passphrase",
          lambda pki, c, f: mail(pki.encrypt(c, PLAIN_QUEUE), to=PLAIN_QUEUE, **f),
          encryption="Success", signature="Not signed"),
    Shape("outlook", lambda pki, c, f: outlook(pki, _alternative(c), **f),
          encryption="Success"),
    Shape("thunderbird", lambda pki, c, f: thunderbird(pki, _alternative(c), **f),
          attached="smime.p7s"),
]
IDS = [shape.name for shape in SHAPES]
# Redmine takes mail from anyone for this test: mallory has no role, old@ is no user there.
ANYONE = {"unknown_user": "accept", "no_permission_check": True}


def _alternative(content: bytes) -> bytes:
    """The text of a text/plain ``content`` as a mail client's multipart/alternative."""
    return alternative(content.partition(b"\r\n\r\n")[2].decode().rstrip("\r\n"))


def shaped(pki: Pki) -> dict[str, tuple[str, bytes]]:
    """By shape name, its Message-ID and message (subject: the name; a ``ref`` line)."""
    made = {}
    for shape in SHAPES:
        message_id = f"<e2e-{uuid.uuid4().hex}@example.org>"
        content = (b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
                   + f"The server room door is open.\r\nref {message_id}\r\n".encode())
        made[shape.name] = message_id, shape.build(pki, content, {"subject": shape.name,
                                                                  "message_id": message_id})
    return made


@dataclass(frozen=True)
class Pass(Generic[T]):
    """What one ``run --once`` over every shape left: by shape name, the message appended, the
    ledger's row, the IMAP folders holding it, and what the tracker stored of it (None:
    nothing)."""

    sent: dict[str, bytes]
    ledger: dict[str, dict[str, object]]
    folders: dict[str, list[str]]
    stored: dict[str, T | None]


def _by_shape(made: dict[str, tuple[str, bytes]],
              state: Path) -> tuple[dict[str, str], dict[str, bytes], dict[str, Any]]:
    """Shape name by Message-ID, and by shape name the message and its row in the ledger."""
    names = {message_id: name for name, (message_id, _) in made.items()}
    ledger = Ledger.open(state)
    try:
        rows = {names[str(row["message_id"])]: row for row in ledger.latest(len(made) * 2)}
    finally:
        ledger.close()
    return names, {name: raw for name, (_, raw) in made.items()}, rows


def _smime(pki: Pki, **extra: object) -> dict[str, object]:
    """The folder's smime: the keyring, the test CA, the queue key's passphrase by address."""
    return {"keyring": str(pki.keyring), "ca_path": str(pki.ca),
            "passphrase": {QUEUE: PASSPHRASE}, **extra}


@pytest.fixture(scope="module")
def redmine_pass(tmp_path_factory: pytest.TempPathFactory, dovecot: Dovecot,
                 redmine_stock: RealRedmine, pki: Pki) -> Pass[dict[str, Any]]:
    """Every shape through dovecot into the real Redmine, decrypted, the verdict in the
    text, the originals kept."""
    redmine_stock.reset()
    tmp = tmp_path_factory.mktemp("smime-redmine")
    world = E2E(tmp, dovecot.account(), redmine_stock)
    made = shaped(pki)
    for _, raw in made.values():
        world.append(raw)
    assert world.run(account={"addresses": [QUEUE]}, target=ANYONE,
                   folder={"smime": _smime(pki, keep_original=True, verdict_in_body=True),
                           "move_on_failure": "Failed"}) == 0
    names, sent, rows = _by_shape(made, tmp / "state")
    folders: dict[str, list[str]] = {name: [] for name in made}
    for folder in KEPT:
        for message_id in world.in_folder(folder):
            folders[names[message_id]].append(folder)
    issues = {issue["subject"]: issue for issue in redmine_stock.issues_with_journals()}
    return Pass(sent, rows, folders, {name: issues.get(name) for name in made})


def _rt_pass(desk: Tally, pki: Pki, smime: dict[str, object],
             addresses: list[str] | None = None) -> Pass[tuple[str, Parts]]:
    """Every shape through dovecot into ``desk``'s RT in one pass: what RT stored."""
    made = shaped(pki)
    for _, raw in made.values():
        desk.deliver(raw)
    config = desk.config([{"name": "INBOX", "smime": smime, "move_on_failure": "Failed"}])
    if addresses:
        with_addresses(config, addresses)
    assert desk.run(config) == 0
    names, sent, rows = _by_shape(made, desk.tmp_path / "state")
    return Pass(sent, rows, {names[mid]: imap for mid, (imap, _) in desk.where.items()},
                {names[mid]: content(desk.rt, records[0]) if records else None
                 for mid, (_, records) in desk.where.items()})


@pytest.fixture(scope="module")
def rt_pass_through(tmp_path_factory: pytest.TempPathFactory, dovecot: Dovecot,
                    rt_with_smime: RealRT, pki: Pki) -> Pass[tuple[str, Parts]]:
    """Every shape passed through, untouched, to the RT whose own SMIME is on."""
    desk = Tally(dovecot.account(), rt_with_smime, tmp_path_factory.mktemp("smime-rt"))
    return _rt_pass(desk, pki, {"keyring": str(pki.keyring), "ca_path": str(pki.ca)})


@pytest.fixture(scope="module")
def rt_decrypted(tmp_path_factory: pytest.TempPathFactory, dovecot: Dovecot,
                 rt_server: RealRT, pki: Pki) -> Pass[tuple[str, Parts]]:
    """Every shape decrypted and verified by imap-ingest for an RT without SMIME."""
    desk = Tally(dovecot.account(), fresh(rt_server), tmp_path_factory.mktemp("smime-rt"))
    return _rt_pass(desk, pki, _smime(pki, mode="decrypt"), [QUEUE])




def _landed(done: Pass[T], shape: Shape) -> T | None:
    """What the tracker stored of the shape's message; None when, as the shape should, it
    went to move_on_failure with its reason and nothing reached the tracker."""
    row = done.ledger[shape.name]
    if shape.failure is not None:
        assert (row["outcome"], done.folders[shape.name]) == ("failed", ["Failed"])
        assert str(row["reason"]).startswith(f"S/MIME: {shape.failure}")
        assert done.stored[shape.name] is None
        return None
    assert (row["outcome"], done.folders[shape.name]) == ("submitted", [])
    stored = done.stored[shape.name]
    assert stored is not None
    return stored


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_redmine_gets_each_shape(redmine_pass: Pass[dict[str, Any]], shape: Shape) -> None:
    """Each shape in Redmine: decrypted, the verdict its first line, the original attached."""
    issue = _landed(redmine_pass, shape)
    if issue is None:
        return
    description = issue["description"]
    assert description.startswith(f"S/MIME (imap-ingest): encryption {shape.encryption}, "
                                  f"signature {shape.signature}\r\n")
    assert shape.text in description
    assert f"ref {redmine_pass.ledger[shape.name]['message_id']}" in description
    assert "pkcs7" not in description and "ceo@example.org" not in description
    assert [a["filename"] for a in issue["attachments"]] == (
        [shape.attached] if shape.attached else [])


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_rt_decrypt_mode_gets_each_shape(rt_decrypted: Pass[tuple[str, Parts]],
                                         shape: Shape) -> None:
    """mode: decrypt to an RT without SMIME: plain MIME under our verdict; or set aside."""
    stored = _landed(rt_decrypted, shape)
    if stored is None:
        return
    head, parts = stored
    assert f"{ENCRYPTION}: {shape.encryption}\n" in head
    assert f"{SIGNATURE}: {shape.signature}\n" in head
    assert "ceo@example.org" not in head
    assert "X-RT-Incoming-Encryption: Not encrypted\n" in head  # plain MIME, for RT too
    assert [kind for kind, _ in parts if "pkcs7" in kind] == []
    assert shape.text.encode() in b"".join(data for _, data in parts)


def rt_statuses(head: str) -> dict[str, str]:
    """RT's X-RT-Smime-Status headers: the status of each operation (Decrypt, Verify)."""
    found = {}
    for value in re.findall(r"^X-RT-Smime-Status: (.*)$", head, re.M):
        fields = dict(field.split(": ", 1) for field in value.split("[SMIME:]") if field)
        found[fields["Operation"]] = fields["Status"]
    return found


def rt_own_verdict(shape: Shape) -> tuple[str, str | None, dict[str, str]]:
    """What RT's own SMIME should make of the shape, derived from our verdict (they agree):
    its X-RT-Incoming-Encryption, X-RT-Incoming-Signature (None: none) and statuses."""
    signer = re.fullmatch(r"(\S+) \((trusted|bad)\)", shape.signature)
    statuses = {"Decrypt": "ERROR" if shape.failure else "DONE"} if (
        shape.failure or shape.encryption == "Success") else {}
    if signer:
        statuses["Verify"] = "DONE" if signer[2] == "trusted" else "BAD"
    return ("Success" if shape.encryption == "Success" else "Not encrypted",
            f'"{signer[1]}" <{signer[1]}>' if signer and signer[2] == "trusted" else None,
            statuses)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_rt_pass_through_each_shape(rt_pass_through: Pass[tuple[str, Parts]],
                                    shape: Shape) -> None:
    """pass-through to an RT with SMIME on: RT gets each shape's bytes; its verdict is ours."""
    row = rt_pass_through.ledger[shape.name]
    # submitted even when RT cannot decrypt it: RT 5.0.3 makes a ticket of it all the same
    assert (row["outcome"], rt_pass_through.folders[shape.name]) == ("submitted", [])
    stored = rt_pass_through.stored[shape.name]
    assert stored is not None
    head, parts = stored
    encryption, signature, statuses = rt_own_verdict(shape)
    assert f"X-RT-Incoming-Encryption: {encryption}\n" in head
    assert re.findall(r"^X-RT-Incoming-Signature: (.*)$", head, re.M) == (
        [signature] if signature else [])
    assert rt_statuses(head) == statuses
    assert "X-Imap-Ingest" not in head and "ceo@example.org" not in head
    originals = [data for kind, data in parts if kind == "application/x-rt-original-message"]
    if statuses and not shape.failure:
        assert originals == [as_piped(rt_pass_through.sent[shape.name], None)]
