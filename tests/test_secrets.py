"""Secrets stay out of the logs in every form they travel in, and log lines cannot be forged."""

from __future__ import annotations

import base64
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from imap_ingest import logs
from imap_ingest.logs import REDACTED, redact

from .support.daemon import Daemon, free_port, get_quiet
from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine

SECRET = "pa ss/wörd+\"&=\\key>>??"


@pytest.fixture(autouse=True)
def _hidden() -> Iterator[None]:
    logs.hide([SECRET])
    yield
    logs.hide(())


@pytest.mark.parametrize("form", [
    SECRET, quote(SECRET), quote(SECRET, safe=""), quote_plus(SECRET),
    json.dumps(SECRET)[1:-1], json.dumps(SECRET, ensure_ascii=False)[1:-1],
    base64.b64encode(SECRET.encode()).decode(),
    base64.urlsafe_b64encode(SECRET.encode()).decode(),
], ids=["raw", "quote", "quote-all", "quote_plus", "json", "json-unicode", "base64",
        "base64url"])
def test_every_form_of_a_secret_is_redacted(form: str) -> None:
    """The raw, URL-encoded, JSON-escaped and base64 forms of a secret are all hidden."""
    assert form not in redact(f"GET /x?key={form} failed")
    assert REDACTED in redact(f"GET /x?key={form} failed")


@pytest.mark.parametrize("prefix", ["", "u", "us", "user:"])
def test_a_secret_inside_longer_base64_is_redacted(prefix: str) -> None:
    """A password inside Basic auth's base64 is hidden whatever its alignment."""
    encoded = base64.b64encode(f"{prefix}{SECRET}".encode()).decode()
    shown = redact(f"Authorization: Basic {encoded}")
    assert encoded not in shown and REDACTED in shown
    assert len(shown) < len(f"Authorization: Basic {encoded}")


def test_hide_replaces_the_set() -> None:
    """After a reload the new secrets are hidden and the old set is gone."""
    logs.hide(["new-secret-value"])
    assert redact("new-secret-value and " + SECRET) == f"{REDACTED} and {SECRET}"


def test_a_short_secret_is_redacted_as_a_token_only() -> None:
    """A 3-character secret is hidden where it stands alone, not inside every word."""
    logs.hide(["abc"])
    assert redact("key=abc; abcdef xabc") == f"key={REDACTED}; abcdef xabc"


def test_tracked_tokens_are_redacted_in_every_form() -> None:
    """Tokens obtained at run time are hidden URL-encoded too."""
    redact.track("a/access", "tok/en+value==")
    assert redact(quote("tok/en+value==", safe="")) == REDACTED


def _text_line(message: str, **fields: object) -> str:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "%s", (message,), None)
    record.fields = fields
    return logs._Text().format(record)


def test_control_characters_are_escaped_in_text_logs() -> None:
    """ESC, CR, a bare LF, DEL and C1 controls from mail are shown as escapes."""
    line = _text_line("subject \x1b[2J\x9b1m\x7f", subject="a\x1b]0;pwned\x07\rb\nc")
    assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in line)
    assert "\\x1b[2J" in line


def test_a_newline_cannot_forge_a_log_record() -> None:
    """A line break in message text never starts a line of its own."""
    line = _text_line("x\n2026-01-01T00:00:00 ERROR forged", uid="1\n2026 ERROR forged")
    assert "\n2026" not in line
    assert len(line.splitlines()) == 1


def test_indented_continuation_lines_stay() -> None:
    """Multi-problem config errors keep their indented lines."""
    assert _text_line("bad config:\n  - one\n  - two").count("\n") == 2


def test_after_a_reload_the_new_secrets_are_redacted(tmp_path: Path, imap: ImapAccount) -> None:
    """SIGHUP with a new key: a tracker echoing that key in its refusal is logged redacted."""
    new = "new-secret-key-after-reload"
    redmine = FakeRedmine("old-secret-key-first")
    echo = redmine.default
    redmine.answer = lambda request: (
        (403, b"Access denied for key " + request.field("key"), 0)
        if request.method == "POST" and request.field("key") == new.encode() else echo(request))
    port = free_port()
    path = write_config(tmp_path / "config.yaml", imap, redmine.url, key=redmine.key,
                        folder={"interval": "1s"}, http={"listen": f"127.0.0.1:{port}"})
    daemon = Daemon(path)
    try:
        wait_for(lambda: get_quiet(port, "/readyz") == 200)
        path.write_text(path.read_text().replace(redmine.key, new))
        daemon.process.send_signal(signal.SIGHUP)
        imap.append("INBOX", make(subject="after the reload"))
        wait_for(lambda: any(r.form.get("key") == [new.encode()] for r in redmine.requests))
        time.sleep(0.5)
        err = daemon.stop()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
        redmine.close()
    assert "configuration reloaded" in err and "Access denied for key ***" in err
    assert new not in err


def test_a_secret_mis_decoded_as_latin_1_is_redacted() -> None:
    """A server echoing the UTF-8 key in an answer without charset (read as Latin-1)."""
    assert redact(SECRET.encode().decode("latin-1")) == REDACTED


def test_text_log_fields_are_redacted_before_they_are_quoted() -> None:
    """A field holding a secret's escaped form is redacted before quoting escapes it again."""
    escaped = SECRET.replace("\\", "\\\\").replace('"', '\\"')  # an IMAP quoted string
    line = _text_line("refused", reason=f'LOGIN user "{escaped}"')
    assert REDACTED in line and "wörd" not in line and "key>>" not in line


def test_tracker_and_mailbox_reasons_never_hold_a_secret() -> None:
    """An Outcome's and a MailboxError's reason are redacted where they are made."""
    from imap_ingest.errors import LoginRefused
    from imap_ingest.trackers import Kind, Outcome

    assert Outcome(Kind.CONFIG, f"Access denied for key {SECRET}").reason == (
        f"Access denied for key {REDACTED}")
    error = LoginRefused(f"login refused: {SECRET}", account="a")
    assert SECRET not in error.reason and SECRET not in str(error)


def test_a_secret_in_an_imap_quoted_string_or_a_bytes_repr_is_redacted() -> None:
    """A server echoing LOGIN's quoted string, as imaplib's --debug lines show it (repr)."""
    quoted = SECRET.replace("\\", "\\\\").replace('"', '\\"')
    for shown in (quoted, repr(SECRET.encode()), repr(f'a LOGIN u "{quoted}"'.encode())):
        assert REDACTED in redact(shown) and "ss/w" not in redact(shown)
