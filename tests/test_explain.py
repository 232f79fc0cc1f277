"""`imap-ingest explain`: every check and rule with why, and the form that would be sent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imap_ingest.cli import main

from .support.ingest_env import ROOT, command

EXAMPLE = ROOT / "config.example.yaml"
FORM = (b"From: Confluence <request@example.org>\r\nReply-To: Taro <taro@example.org>\r\n"
        b"Subject: =?UTF-8?B?55Sz6KuL77ya44K144O844OQ5YaN6LW35YuV?=\r\n"
        b"Message-ID: <form-1@example.org>\r\nAuto-Submitted: auto-generated\r\n\r\nRestart A.\r\n")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pw").write_text("imap-password")
    monkeypatch.setenv("REDMINE_MAIL_KEY", "redmine-key-not-to-show")
    monkeypatch.setenv("IMAP_INGEST_ACCOUNTS__0__PASSWORD_FILE", str(tmp_path / "pw"))
    return tmp_path


def explain(path: Path, capsys: pytest.CaptureFixture[str], folder: str = "redmine.request"
            ) -> tuple[int, str]:
    code = main(["explain", "-c", str(EXAMPLE), "--folder", folder, str(path)])
    return code, capsys.readouterr().out


def test_form_mail_allowed_and_edited(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """explain shows the seed's form mail allowed and edited, with no secret."""
    # auto-submitted fires, request-form lifts it, edits are listed, the form fields are
    # shown with the key masked.
    (env / "form.eml").write_bytes(FORM)
    code, out = explain(env / "form.eml", capsys)
    assert code == 0
    assert "subject '申請\uff1aサーバ再起動'" in out  # a full-width colon
    assert "HIT   auto-submitted: Auto-Submitted: auto-generated" in out
    assert "miss  dsn: looks for a delivery or read report" in out
    assert "HIT   request-form: '^From:.*request@example\\\\.org': found" in out
    assert "----  mailing-lists: not reached" in out
    assert "decision: submit (rule request-form)" in out
    assert "header edits: removed Auto-Submitted; From taken from Reply-To" in out
    assert "POST https://redmine.example.org/mail_handler" in out
    assert "    key = ***" in out and "    issue[project] = project" in out
    assert "redmine-key-not-to-show" not in out and "imap-password" not in out


def test_auto_reply_is_held_and_says_how_to_lift(env: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """explain shows an auto-reply skipped by the catch-all rule."""
    raw = FORM.replace(b"request@example.org", b"alice@example.org").replace(
        b"auto-generated", b"auto-replied")
    (env / "ooo.eml").write_bytes(raw)
    code, out = explain(env / "ooo.eml", capsys)
    assert code == 0
    assert "miss  request-form: '^From:.*request@example\\\\.org': not found" in out
    assert "HIT   everything-else: no conditions" in out
    assert "decision: skip (rule everything-else)" in out


def test_stdin_and_errors(env: Path) -> None:
    """- reads the message from stdin; a wrong folder or file is a clear usage error."""
    args = ["explain", "-c", str(EXAMPLE), "--folder", "redmine.request"]
    result = subprocess.run(command(*args, "-"), input=FORM, capture_output=True, cwd=ROOT)
    assert result.returncode == 0 and b"decision: submit" in result.stdout
    wrong = subprocess.run(command("explain", "-c", str(EXAMPLE), "--folder", "Nope", "-"),
                           input=FORM, capture_output=True, cwd=ROOT)
    assert wrong.returncode == 64 and b"configured: support/redmine.request" in wrong.stderr
    missing = subprocess.run(command(*args, str(env / "none.eml")), capture_output=True,
                             cwd=ROOT)
    assert missing.returncode == 66 and b"cannot read" in missing.stderr


def test_captures_and_substitutions_shown(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """explain shows the requester captured from the body and put into From."""
    (env / "form.eml").write_bytes(FORM.replace(b"Restart A.", "申請者: hanako@example.org"
                                                .encode()))
    code, out = explain(env / "form.eml", capsys)
    assert code == 0 and "decision: submit (rule request-form-requester)" in out
    assert "capture  body.requester = 'hanako@example.org'" in out
    assert "put      From: '{body.requester}' -> 'hanako@example.org'" in out


def test_refused_value_shown(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """explain shows a value refused for its field, and the message held."""
    (env / "form.eml").write_bytes(FORM.replace(b"Restart A.", b"Requester: a@b@c"))
    code, out = explain(env / "form.eml", capsys)
    assert code == 0 and "decision: hold (rule values:request-form-requester)" in out
    assert "REFUSED  From: 'a@b@c' (from '{body.requester}') is not a valid value" in out
