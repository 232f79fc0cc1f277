"""A read-only view of one raw message: its header block, unfolded, for rules and logs.

The raw bytes are kept exactly as fetched; the tracker gets them untouched (signatures
and RT's own MIME parsing depend on that), except for header edits a rule asks for.
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import hashlib
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses

# Mail is hostile input: rules look at no more header than this, and search no more body.
MAX_HEADER_BYTES = 256 * 1024
# Where the recipient is named: the MTA's envelope headers first, then what the sender wrote.
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "To", "Cc")
MAX_BODY_PARSED = 4 * 1024 * 1024
MAX_BODY_TEXT = 1024 * 1024
# MIME nesting opened at most this deep, as Postfix's mime_nesting_limit.
MAX_DEPTH = 100

_HEADERS = email.parser.BytesParser(policy=email.policy.compat32)
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# Headers added on the way in, which differ between two deliveries of one message.
_TRACE = re.compile(rb"^(?:Received|Return-Path|Delivered-To|X-Original-To|Envelope-To|"
                    rb"X-Envelope-To|X-Delivered-To|X-Spam-[\w-]+|Authentication-Results|"
                    rb"ARC-[\w-]+):.*\n(?:[ \t].*\n)*", re.IGNORECASE | re.MULTILINE)
# The mbox envelope line an MTA puts first ("From sender time_stamp": Postfix's local(8)
# does so for a pipe), with the time of each delivery attempt.
_ENVELOPE = re.compile(rb"\AFrom [^\n]*\n")


# What ties mail to other mail: Message-IDs, and a ticket tag in the subject as Redmine
# ("[Support - Bug #12]") and RT ("[rt.example.net #12]") write it.
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_TICKET_TAG = re.compile(r"\[[^\[\]]*#(\d+)\]")


class Message:
    """Raw bytes plus the unfolded header block as text; decoded views made on demand.
    ``size`` is the message's size, which is more than ``raw`` holds for ``header_only``."""

    __slots__ = ("_body", "_decoded", "_index", "_recipients", "_sender", "headers", "raw",
                 "size")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.size = len(raw)
        self.headers = _header_text(raw)
        self._decoded: str | None = None
        self._body: str | None = None
        self._sender: str | None = None
        self._index: dict[str, list[str]] | None = None
        self._recipients: dict[str, list[tuple[str, str]]] = {}

    @classmethod
    def header_only(cls, head: bytes, size: int) -> Message:
        """The header block of a message of ``size`` bytes that was not fetched whole: for
        rules that need no body, never for a tracker."""
        message = cls(head)
        message.size = max(size, len(head))
        return message

    @property
    def whole(self) -> bool:
        """``raw`` is the whole message, not its header block alone."""
        return len(self.raw) == self.size

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, unfolded and stripped, or None."""
        values = self._fields().get(name.lower())
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name``, in order."""
        return list(self._fields().get(name.lower(), ()))

    def _fields(self) -> dict[str, list[str]]:
        """Values by lower-cased name, the header block split once: a regex per name
        asked for costs more to compile than a short-lived process (an MTA's) asks of it.
        A name is ASCII (RFC 5322), so no other text folds into one."""
        if self._index is None:
            self._index = {}
            for line in self.headers.split("\n"):
                name, colon, value = line.partition(":")
                if colon and name.isascii():
                    self._index.setdefault(name.lower(), []).append(value.strip())
        return self._index

    def subaddress(self, addresses: Collection[str], separator: str,
                   headers: Sequence[str]) -> str | None:
        """The EXT of ``user+EXT@domain`` in the first of ``headers`` that names one of
        ``addresses`` (``user@domain``), as an MTA hands it to rt-mailgate; None without."""
        own = {address.lower() for address in addresses}
        for name in headers:
            for _, address in self.every_address(name):
                local, _, domain = address.rpartition("@")
                base, sep, extension = local.partition(separator)
                if f"{base}@{domain}".lower() in own:
                    return extension if sep and extension else None
        return None

    def every_address(self, name: str) -> list[tuple[str, str]]:
        """(display name, address) in every header ``name``, raw; parsed once, as the rules
        and the envelope both ask for the recipient headers."""
        if name not in self._recipients:
            self._recipients[name] = getaddresses(self.header_values(name))
        return self._recipients[name]

    def decoded_header(self, name: str) -> str | None:
        """A header's value with RFC 2047 words decoded (display names only, in an
        address header)."""
        value = self.header(name)
        return _decode_field(name, value) if value is not None else None

    def addresses(self, name: str) -> list[tuple[str, str]]:
        """(display name, address) of every address in every header ``name``, parsed from
        the raw value: an encoded word is a name, never an address."""
        return [(_decode_words(display), address)
                for display, address in self.every_address(name) if address]

    def fields(self) -> Iterator[tuple[str, str]]:
        """Every header field in order, as (name, decoded value)."""
        for line in self.headers.split("\n"):
            name, colon, value = line.partition(":")
            if colon and name and " " not in name:
                yield name, _decode_field(name, value.strip())

    @property
    def sender(self) -> str:
        """The From address, lower-cased ("" without one); parsed once, as several loop
        checks ask."""
        if self._sender is None:
            addresses = getaddresses([self.header("From") or ""])
            self._sender = addresses[0][1].lower() if addresses else ""
        return self._sender

    @property
    def message_id(self) -> str | None:
        return self.header("Message-ID")

    def replies_to(self) -> list[str]:
        """The Message-IDs it replies to (In-Reply-To, then References)."""
        return _MESSAGE_ID.findall(" ".join(filter(None, (self.header("In-Reply-To"),
                                                          self.header("References")))))

    def ties(self) -> frozenset[str]:
        """Its own Message-ID, those it replies to and the tickets its subject names: mail
        sharing one of these must reach the tracker in order."""
        return frozenset(_MESSAGE_ID.findall(self.message_id or "") + self.replies_to()
                         + [f"#{n}" for n in _TICKET_TAG.findall(self.subject or "")])

    @property
    def subject(self) -> str | None:
        """The Subject with RFC 2047 words decoded."""
        return self.decoded_header("Subject")

    @property
    def decoded_headers(self) -> str:
        """The header block with RFC 2047 encoded words decoded, for rules on real text."""
        if self._decoded is None:
            self._decoded = "\n".join(_decode_line(line) if "=?" in line else line
                                      for line in self.headers.split("\n"))
        return self._decoded

    def body_text(self) -> str:
        """The text parts, transfer-decoded and charset-decoded, at most MAX_BODY_TEXT."""
        if self._body is None:
            self._body = _body_text(self.raw[:MAX_BODY_PARSED])
        return self._body

    def digest(self) -> str:
        """SHA-256 of the message without its envelope line and trace headers, so that the
        same mail delivered twice (other Received: lines, another time stamp) has the same
        digest. The body is hashed in place: a big message is not copied."""
        end = _END_OF_HEADER.search(self.raw[:MAX_HEADER_BYTES])
        split = end.end() if end else min(len(self.raw), MAX_HEADER_BYTES)
        head = self.raw[:split].replace(b"\r\n", b"\n")
        digest = hashlib.sha256(_TRACE.sub(b"", _ENVELOPE.sub(b"", head, count=1)))
        digest.update(memoryview(self.raw)[split:])
        return digest.hexdigest()


def _header_text(raw: bytes) -> str:
    """The header block (up to the first empty line), unfolded, LF line ends."""
    block = raw[:MAX_HEADER_BYTES]
    end = _END_OF_HEADER.search(block)
    if end is not None:
        block = block[: end.start()]
    return _FOLD.sub("", _text(block)).replace("\r\n", "\n")


def _text(data: bytes, charset: str = "utf-8") -> str:
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        # Legacy 8-bit text: latin-1 keeps every byte, so ASCII patterns still match.
        return data.decode("latin-1")


# What str.splitlines() would break on: an encoded word must never start a header line
# of its own (a forged Authentication-Results: in a Subject).
_LINE_BREAKS = re.compile(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _decode_words(value: str) -> str:
    if "=?" not in value:
        return _LINE_BREAKS.sub(" ", value)  # no encoded word: what the email package gives
    try:
        decoded = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        return value  # a malformed or unknown-charset word stays as written
    return _LINE_BREAKS.sub(" ", decoded)


# Headers whose value is addresses: only their display names are decoded.
_ADDRESS_FIELDS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc", "resent-from",
                             "resent-sender", "resent-to", "resent-cc", "resent-bcc"})
_SPECIALS = re.compile(r'[()<>@,;:\\".\[\]]')


def _decode_field(name: str, value: str) -> str:
    """A field's value as rules and documents see it. In an address field, a decoded
    display name is quoted, so that an encoded "<ceo@example.org>," stays part of a name."""
    if name.strip().lower() not in _ADDRESS_FIELDS:
        return _decode_words(value)
    pairs = getaddresses([value])
    if not pairs or not all(address for _, address in pairs):
        return value  # a group or broken syntax: shown as written, undecoded
    return ", ".join(_address(_decode_words(display), address) for display, address in pairs)


def _address(display: str, address: str) -> str:
    if not display:
        return f"<{address}>"
    if _SPECIALS.search(display):
        display = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{display} <{address}>"


def _decode_line(line: str) -> str:
    name, colon, value = line.partition(":")
    if colon and name.strip().lower() in _ADDRESS_FIELDS:
        return f"{name}: {_decode_field(name, value.strip())}"
    return _decode_words(line)


@dataclass(frozen=True, slots=True)
class Part:
    """One leaf of the MIME tree, transfer-decoded."""

    content_type: str
    filename: str | None
    data: bytes
    charset: str | None

    @property
    def is_text(self) -> bool:
        """A text part meant to be read, not an attachment."""
        return self.content_type.startswith("text/") and not self.filename

    def text(self) -> str:
        return _text(self.data, self.charset or "utf-8")


def leaf_parts(raw: bytes) -> Iterator[Part]:
    """Every non-multipart part, decoded from its transfer encoding; broken MIME is read
    as best it can be, never raising. Parts nested deeper than MAX_DEPTH are not opened:
    each comes whole, as one opaque part of its own type."""
    for head, data, _, leaf in _walk(raw):
        if leaf:
            part = _HEADERS.parsebytes(data, headersonly=True)
            part.set_default_type(head.get_default_type())
            payload = part.get_payload(decode=True)
            filename = part.get_filename()
            yield Part(part.get_content_type(), _decode_words(filename) if filename else None,
                       payload if isinstance(payload, bytes) else b"",
                       part.get_content_charset())


def may_attach(raw: bytes) -> bool:
    """Whether Redmine could store an attachment of this message: the mail library it reads
    mail with takes one from any part inside a multipart that has a file name, a name or a
    location, and from the mail an attached message holds. Errs only towards yes: also for
    any other part that is not text, an attached message, and MIME too deep or too broken
    to read whole."""
    for part, _, depth, leaf in _walk(raw):
        maintype = part.get_content_maintype()
        if depth == 0:
            if maintype == "multipart" and not leaf:
                continue
            return maintype in ("multipart", "message")  # a multipart without its parts
        if (depth >= MAX_DEPTH or maintype == "message" or part.get_filename()
                or "Content-Location" in part or (leaf and maintype != "text")):
            return True
    return False


def _walk(raw: bytes) -> Iterator[tuple[email.message.Message, bytes, int, bool]]:
    """Every part of the MIME tree, each before those it holds: (its header block parsed,
    its bytes, its depth, whether it is a leaf). Never raises; parts at MAX_DEPTH are
    leaves, unopened."""
    # The stdlib parser recurses once per level (RecursionError near 1,000), so the tree is
    # walked here with a stack, and the stdlib only reads each part's header block (not a
    # copy of a 200 KB attachment as text).
    stack: list[tuple[bytes, int, str]] = [(raw, 0, "text/plain")]
    while stack:
        data, depth, default = stack.pop()
        head, body = _split(data)
        part = _HEADERS.parsebytes(head, headersonly=True)
        part.set_default_type(default)
        children = _children(part, body, depth + 1) if depth < MAX_DEPTH else []
        yield part, data, depth, not children
        stack.extend(reversed(children))


def _split(data: bytes) -> tuple[bytes, bytes]:
    """A part's header block, with the empty line that ends it, and what follows it."""
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return b"", data[data.index(b"\n") + 1:]  # no header fields at all
    end = _END_OF_HEADER.search(data)
    return (data[:end.end()], data[end.end():]) if end else (data, b"")


def _children(part: email.message.Message, body: bytes, depth: int
              ) -> list[tuple[bytes, int, str]]:
    """The parts a multipart or an attached message holds (``body``: what follows its
    header block), as (bytes, depth, default type); none when it holds none (a leaf, or a
    multipart whose boundary never appears)."""
    maintype = part.get_content_maintype()
    if maintype == "message" and part.get_content_subtype() != "delivery-status":
        return [(body, depth, "text/plain")]
    boundary = part.get_boundary() if maintype == "multipart" else None
    if not boundary:
        return []
    default = "message/rfc822" if part.get_content_subtype() == "digest" else "text/plain"
    # Without a leading ^ the search runs at the speed of a literal's (a ^ with MULTILINE is
    # tried at every byte: a millisecond for a 200 KB attachment); the line's start is
    # checked after.
    delimiter = re.compile(rb"--" + re.escape(boundary.encode("utf-8", "surrogateescape"))
                           + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    children: list[tuple[bytes, int, str]] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if match.start() and body[match.start() - 1] != 0x0A:
            continue  # not at the start of a line
        if start is not None:
            # The line end before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
            children.append((_chomp(body[start:match.start()]), depth, default))
        if match[1]:
            return children
        start = match.end() + 1
    if start is not None:
        children.append((_chomp(body[start:]), depth, default))  # no closing delimiter
    return children


def _chomp(data: bytes) -> bytes:
    return data[:-2] if data.endswith(b"\r\n") else data.removesuffix(b"\n")


def _body_text(raw: bytes) -> str:
    texts: list[str] = []
    size = 0
    for part in leaf_parts(raw):
        if not part.is_text:
            continue
        texts.append(part.text()[: MAX_BODY_TEXT - size])
        size += len(texts[-1])
        if size >= MAX_BODY_TEXT:
            break
    return "\n".join(texts)


def edit_headers(raw: bytes, set_header: Mapping[str, str], remove: Sequence[str],
                 from_header: str | None) -> bytes:
    """The message with header fields removed, set or From replaced; the body is untouched.

    ``from_header`` names a header (e.g. Reply-To) whose address becomes the From, for
    forms that send every request from one list address; the old From is kept as
    X-Original-From.
    """
    newline = b"\r\n" if b"\r\n" in raw[:MAX_HEADER_BYTES] else b"\n"
    end = _END_OF_HEADER.search(raw[:MAX_HEADER_BYTES])
    head, rest = (raw[: end.start()], raw[end.start():]) if end else (raw, b"")
    fields = _fields(head, newline)
    added: list[bytes] = []
    if from_header is not None:
        value = _field_value(fields, from_header)
        if value is not None:
            added += [b"From: " + value]
            if (old := _field_value(fields, "From")) is not None:
                added += [b"X-Original-From: " + old]
            remove = [*remove, "From", "X-Original-From"]
    added += [f"{name}: {value}".encode() for name, value in set_header.items()]
    gone = {name.lower() for name in [*remove, *set_header]}
    kept = [field for field in fields if _field_name(field) not in gone]
    return newline.join([*added, *kept]) + rest


def _fields(head: bytes, newline: bytes) -> list[bytes]:
    """Header fields, each with its continuation lines."""
    fields: list[bytes] = []
    for line in head.split(newline):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += newline + line
        else:
            fields.append(line)
    return fields


def _field_name(field: bytes) -> str:
    return field.partition(b":")[0].strip().decode("latin-1").lower()


def _field_value(fields: list[bytes], name: str) -> bytes | None:
    for field in fields:
        if _field_name(field) == name.lower() and b":" in field:
            return field.partition(b":")[2].strip()
    return None
