"""Raw test messages, built as bytes so that tests control every header."""

from __future__ import annotations

import itertools

_counter = itertools.count(1)


def make(subject: str = "Printer on fire", sender: str = "alice@example.org",
         headers: dict[str, str] | None = None, body: str = "Please help.\n",
         message_id: str | None = None) -> bytes:
    """A small plain-text message with a unique Message-ID."""
    n = next(_counter)
    lines = [
        f"From: {sender}",
        "To: support@example.org",
        f"Subject: {subject}",
        "Date: Sat, 21 Nov 2026 10:00:00 +0000",
        f"Message-ID: {message_id or f'<test-{n}@example.org>'}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()


def make_attached(subject: str) -> bytes:
    """``make``'s message with a small PDF attached, which Redmine stores as an attachment."""
    return make(subject=subject).replace(
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease help.\r\n",
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nPlease help.\r\n--b\r\n"
        b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"'
        b"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n")

