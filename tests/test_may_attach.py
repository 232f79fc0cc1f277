"""Which mail Redmine could store an attachment of: the over-approximation that decides what
is posted to a Redmine without a lookup with nothing else in flight (docs/concurrency.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_ingest.message import MAX_DEPTH, leaf_parts, may_attach

from .test_poison import POISON, nested

HEAD = b"From: alice@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"


def multipart(*parts: bytes, subtype: str = "mixed", boundary: bytes = b"b") -> bytes:
    """A multipart/SUBTYPE of ``parts`` (each its header block, a blank line, its body)."""
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (f'Content-Type: multipart/{subtype}; boundary="'.encode() + boundary
            + b'"\r\n\r\n' + body + b"--" + boundary + b"--\r\n")


TEXT = b"Content-Type: text/plain\r\n\r\nhello"
HTML = b"Content-Type: text/html\r\n\r\n<p>hello</p>"
PDF = (b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"'
       b"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=")


@pytest.mark.parametrize(("body", "may"), [
    (TEXT, False),
    # Not multipart: the mail library reads the whole body as text, whatever it is called.
    (b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"'
     b"\r\n\r\nJVBERi0=", False),
    (multipart(TEXT, HTML, subtype="alternative"), False),
    (multipart(multipart(TEXT, HTML, subtype="alternative", boundary=b"c"), TEXT), False),
    (b"Content-Type: text/plain\r\nContent-Disposition: inline\r\n\r\nhi", False),
    (multipart(TEXT, PDF), True),
    (multipart(TEXT, b'Content-Type: text/plain; name="notes.txt"\r\n\r\nnotes'), True),
    (multipart(TEXT, b"Content-Type: text/plain\r\nContent-Disposition: attachment; "
               b"filename*=utf-8''%C3%A9t%C3%A9.txt\r\n\r\nnotes"), True),
    (multipart(TEXT, b"Content-Type: text/plain\r\nContent-Location: x.txt\r\n\r\nx"), True),
    (multipart(TEXT, b"Content-Type: image/png\r\n\r\n\x89PNG"), True),  # no name: may
    (multipart(TEXT, b"Content-Type: message/rfc822\r\n\r\n" + HEAD + TEXT), True),
    (multipart(multipart(TEXT, PDF, boundary=b"c"), subtype="alternative"), True),
    (b'Content-Type: multipart/mixed; boundary="never"\r\n\r\nno parts here', True),
    (b"Content-Type: message/rfc822\r\n\r\n" + HEAD + TEXT, True),
], ids=["text", "single-part-pdf", "alternative", "nested-alternative", "inline-text",
        "pdf", "name", "rfc2231-filename", "location", "nameless-image", "attached-message",
        "deep-pdf", "no-boundary", "top-message"])
def test_may_attach(body: bytes, may: bool) -> None:
    """What may carry an attachment, erring only towards yes."""
    assert may_attach(HEAD + body) is may


def test_a_boundary_inside_a_line_is_no_delimiter() -> None:
    """Only a line that starts with the boundary ends a part."""
    raw = HEAD + multipart(b"Content-Type: text/plain\r\n\r\nsee this--b\r\n"
                           b"Content-Type: image/png\r\n\r\nPNG")
    assert may_attach(raw) is False
    assert [part.content_type for part in leaf_parts(raw)] == ["text/plain"]


def test_mime_too_deep_to_read_whole_may_attach() -> None:
    """Past MAX_DEPTH the part is not opened: it may hold anything."""
    assert may_attach(nested(MAX_DEPTH - 1)) is False
    assert may_attach(POISON) is True


@given(st.binary(max_size=2000))
def test_any_bytes_get_an_answer(raw: bytes) -> None:
    """Hostile bytes never raise."""
    assert may_attach(HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                      + raw) in (True, False)
