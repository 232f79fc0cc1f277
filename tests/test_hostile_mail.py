"""Hostile mail: encoded words forge no header line and no address, and the directory
target writes through no planted symlink."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from email.header import decode_header, make_header
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from imap_ingest.conditions import parse
from imap_ingest.config import SubmitOptions
from imap_ingest.message import _LINE_BREAKS, Message, _decode_words
from imap_ingest.trackers import Envelope, Kind
from imap_ingest.trackers.directory import Directory, DirectoryTarget, name_for
from imap_ingest.trackers.webhook import document

from .support.ingest_env import ROOT
from .support.mail import make

ENVELOPE = Envelope("test", "INBOX", 1, 1)
FORGED_LINE = make(subject="=?utf-8?q?Wire_transfer=0AAuthentication-Results:_mx.example.org;"
                           "_dmarc=pass?=")
FORGED_FROM = make(sender="=?utf-8?q?Jane_=3Cceo=40example=2Eorg=3E=2C?= "
                          "<attacker@evil.example>")


def test_an_encoded_newline_forges_no_header_line() -> None:
    """A rule on ^Authentication-Results: does not match a line hidden in a Subject."""
    rule = parse(r"^Authentication-Results: mx\.example\.org;.*dmarc=pass")
    assert rule.check(Message(FORGED_LINE))[0] is False
    message = Message(FORGED_LINE)
    assert message.subject == "Wire transfer Authentication-Results: mx.example.org; dmarc=pass"
    assert all("\n" not in value for _, value in message.fields())


def test_every_line_separator_in_a_decoded_word_becomes_a_space() -> None:
    """CR, VT, FF, NEL and U+2028 decode to spaces as well."""
    raw = make(subject="=?utf-8?q?a=0Db=0Bc=0Cd=C2=85e=E2=80=A8f?=")
    assert Message(raw).subject == "a b c d e f"


# Header text is decoded from bytes (UTF-8, else Latin-1): never a lone surrogate.
@given(st.text(st.characters(blacklist_categories=["Cs"])).filter(lambda t: "=?" not in t))
def test_text_without_an_encoded_word_reads_as_the_email_package_reads_it(text: str) -> None:
    """Text with no encoded word decodes as the email package decodes it."""
    expected = _LINE_BREAKS.sub(" ", str(make_header(decode_header(text))))
    assert _decode_words(text) == expected


def test_addresses_come_from_the_raw_header() -> None:
    """An encoded display name holding an address is a name: the sender stays the real one."""
    message = Message(FORGED_FROM)
    assert message.sender == "attacker@evil.example"
    summary = document(FORGED_FROM, SubmitOptions(), ENVELOPE, 0)
    assert summary["from"] == [{"name": "Jane <ceo@example.org>,",
                                "address": "attacker@evil.example"}]
    assert "ceo@example.org" not in str(summary["to"])


def test_decoded_address_headers_quote_the_display_name() -> None:
    """Rules and the JSON headers see the decoded name quoted, next to the real address."""
    message = Message(FORGED_FROM)
    shown = dict(message.fields())["From"]
    assert shown == '"Jane <ceo@example.org>," <attacker@evil.example>'
    assert parse(r"^From: .*<ceo@example\.org>$").check(message)[0] is False


def _directory(path: Path) -> Directory:
    return Directory(DirectoryTarget.model_validate({"type": "directory", "path": str(path)}))


def test_directory_writes_through_no_planted_symlink(tmp_path: Path) -> None:
    """A symlink at the predictable NAME.eml.part is neither followed nor written to."""
    archive, victim = tmp_path / "archive", tmp_path / "victim"
    archive.mkdir()
    victim.write_text("keep me")
    stem = name_for(ENVELOPE)
    for suffix in (".eml.part", ".json.part"):
        (archive / f"{stem}{suffix}").symlink_to(victim)
    outcome = _directory(archive).submit(make(), SubmitOptions(), ENVELOPE)
    assert outcome.kind is Kind.SUCCESS
    assert victim.read_text() == "keep me"
    assert not (archive / f"{stem}.eml").is_symlink()


_UMASK_022 = """
import os, sys
from pathlib import Path
os.umask(0o022)
from imap_ingest import token_file
from imap_ingest.config import SubmitOptions
from imap_ingest.trackers.directory import DirectoryTarget
from imap_ingest.ledger import Ledger, SqliteLedger
from imap_ingest.locks import folder_lock
from imap_ingest.trackers import Envelope
from imap_ingest.trackers.directory import Directory
base = Path(sys.argv[1])
target = DirectoryTarget.model_validate({"type": "directory", "path": str(base / "archive")})
Directory(target).submit(b"From: a@b.org\\r\\n\\r\\nhi", SubmitOptions(),
                         Envelope("a", "INBOX", 1, 1))
SqliteLedger(base / "state" / "ledger.sqlite3").close()
with folder_lock(base / "state2", "a", "INBOX"):
    pass
token_file.write(base / "tokens" / "a.json", token_file.StoredToken("t"))
"""


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 022, archived mail, ledger, lock and token files are 0600 in 0700 dirs."""
    subprocess.run([sys.executable, "-c", _UMASK_022, str(tmp_path)], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    created = [p for p in tmp_path.rglob("*")]
    assert len(created) >= 9
    for path in created:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
