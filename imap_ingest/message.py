"""A read-only view of one raw message: its header block, unfolded, for rules and logs.

The raw bytes are kept exactly as fetched; the tracker gets them untouched (signatures
and RT's own MIME parsing depend on that).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

# Mail is hostile input: rules look at no more header than this.
MAX_HEADER_BYTES = 256 * 1024

_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# Headers added on the way in, which differ between two deliveries of one message.
_TRACE = re.compile(rb"^(?:Received|Return-Path|Delivered-To|X-Original-To|Envelope-To|"
                    rb"X-Envelope-To|X-Delivered-To|X-Spam-[\w-]+|Authentication-Results|"
                    rb"ARC-[\w-]+):.*\n(?:[ \t].*\n)*", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Message:
    """Raw bytes plus the unfolded header block as text."""

    raw: bytes
    headers: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _header_text(self.raw))

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, unfolded and stripped, or None."""
        match = re.search(rf"^{re.escape(name)}:[ \t]*(.*)$", self.headers,
                          re.IGNORECASE | re.MULTILINE)
        return match[1].strip() if match else None

    @property
    def message_id(self) -> str | None:
        return self.header("Message-ID")

    def digest(self) -> str:
        """SHA-256 of the message without its trace headers and with LF line ends, so that
        the same mail delivered twice (other Received: lines) has the same digest."""
        head, _, body = self.raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        kept = _TRACE.sub(b"", head + b"\n")
        return hashlib.sha256(kept + b"\n" + body).hexdigest()


def _header_text(raw: bytes) -> str:
    """The header block (up to the first empty line), unfolded, LF line ends."""
    block = raw[:MAX_HEADER_BYTES]
    end = _END_OF_HEADER.search(block)
    if end is not None:
        block = block[: end.start()]
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        # Legacy 8-bit headers: latin-1 keeps every byte, so ASCII patterns still match.
        text = block.decode("latin-1")
    return _FOLD.sub("", text).replace("\r\n", "\n")
