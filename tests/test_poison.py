"""Poison mail: MIME nested far too deep is read as a bounded tree on every path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imap_ingest.cli import main
from imap_ingest.config import Folder, SubmitOptions
from imap_ingest.message import MAX_DEPTH, Message, leaf_parts
from imap_ingest.rules import Act, RuleSet
from imap_ingest.trackers import Envelope, Kind
from imap_ingest.trackers.directory import Directory, DirectoryTarget
from imap_ingest.trackers.webhook import document

from .test_explain import EXAMPLE

ENVELOPE = Envelope("test", "INBOX", 7, 3, None)


def nested(levels: int, text: bytes = b"invoice no. 42") -> bytes:
    """A message whose text part sits inside ``levels`` multipart/mixed parts."""
    inner = b"Content-Type: text/plain\r\n\r\n" + text + b"\r\n"
    for level in range(levels):
        boundary = b"b%d" % level
        inner = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--'
                 + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"--\r\n")
    return (b"From: mallory@example.org\r\nSubject: deep\r\nMessage-ID: <deep@example.org>\r\n"
            b"MIME-Version: 1.0\r\n" + inner)


POISON = nested(1200)


def test_poison_is_the_size_the_issue_names() -> None:
    """1,200 levels make about 82 KB, as in the issue."""
    assert 80_000 < len(POISON) < 90_000


def test_leaf_parts_stop_at_max_depth() -> None:
    """Past MAX_DEPTH the rest comes whole as one opaque multipart part."""
    parts = list(leaf_parts(POISON))
    assert [part.content_type for part in parts] == ["multipart/mixed"]
    assert not parts[0].is_text


def test_text_within_the_depth_is_read() -> None:
    """A text part just inside the bound is still found by body rules."""
    assert Message(nested(MAX_DEPTH - 1)).body_text().strip() == "invoice no. 42"
    assert Message(nested(MAX_DEPTH + 1)).body_text() == ""


def test_body_rule_on_poison() -> None:
    """A body rule evaluates the poison without RecursionError (and does not match)."""
    folder = Folder.model_validate({"name": "INBOX", "rules": [
        {"name": "invoices", "if": [{"body": "invoice"}], "then": "skip"}]})
    decision = RuleSet(folder).evaluate(Message(POISON))
    assert decision.act is Act.SUBMIT and decision.rule == "default"


def test_webhook_document_of_poison() -> None:
    """The webhook document is built, the deep rest listed as an attachment."""
    doc = document(POISON, SubmitOptions(), ENVELOPE, 1024)
    assert doc["text"] is None
    assert [a["content_type"] for a in doc["attachments"]] == ["multipart/mixed"]


def test_directory_document_of_poison(tmp_path: Path) -> None:
    """The directory target writes the poison and its summary."""
    outcome = Directory(DirectoryTarget(type="directory", path=tmp_path)).submit(
        POISON, SubmitOptions(), ENVELOPE)
    assert outcome.kind is Kind.SUCCESS
    summary = json.loads((tmp_path / f"{outcome.ticket}.json").read_text())
    assert summary["subject"] == "deep"


def test_explain_poison(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`explain` reaches the example's body rule on the poison and prints a decision."""
    (tmp_path / "pw").write_text("imap-password")
    monkeypatch.setenv("REDMINE_MAIL_KEY", "redmine-key")
    monkeypatch.setenv("IMAP_INGEST_ACCOUNTS__0__PASSWORD_FILE", str(tmp_path / "pw"))
    (tmp_path / "deep.eml").write_bytes(POISON)
    code = main(["explain", "-c", str(EXAMPLE), "--folder", "redmine.request",
                 str(tmp_path / "deep.eml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "miss  invoices" in out and "decision:" in out
