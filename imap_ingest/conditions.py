"""Rule conditions: header regex (with procmail's ``^TO_``), message size, body regex.

Written in a rule's ``if:`` list as

    "^Subject:.*urgent"        header regex, searched in the unfolded header block
    "!^X-Mailer: Redmine"      leading ! negates any condition
    "^TO_support@example\\.org" procmail's ^TO_: any destination header names the address
    "size > 10M"               RFC822 size, also < and with k/M/G
    {body: "(?i)invoice"}      regex over the decoded text parts (bounded)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config.values import parse_size
from .message import Message

# procmail's ^TO_, widened to the headers MTAs and IMAP servers add for the envelope.
_TO = (r"^(?:(?:Original-)?(?:Resent-)?(?:To|Cc|Bcc)|X-Envelope-To|Apparently(?:-Resent)?-To|"
       r"Delivered-To|X-Original-To|Envelope-To|X-Delivered-To):(?:.*[^-a-zA-Z0-9_.])?")
_SIZE = re.compile(r"size\s*([<>])\s*(\d.*)", re.IGNORECASE)
_FLAGS = re.IGNORECASE | re.MULTILINE


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition; ``check`` says whether it holds and why."""

    source: str
    negated: bool
    kind: str  # header | size | body
    pattern: re.Pattern[str] | None = None
    limit: tuple[str, int] | None = None

    def holds(self, message: Message) -> bool:
        return self.check(message)[0]

    def check(self, message: Message) -> tuple[bool, str]:
        found, evidence = self._test(message)
        why = f"found {evidence!r}" if found else "not found"
        if self.kind == "size":
            why = evidence
        return found != self.negated, why

    def _test(self, message: Message) -> tuple[bool, str]:
        if self.kind == "size":
            assert self.limit is not None
            op, limit = self.limit
            size = len(message.raw)
            return (size > limit if op == ">" else size < limit), f"size is {size} bytes"
        assert self.pattern is not None
        texts = (message.body_text(),) if self.kind == "body" else (
            message.headers, message.decoded_headers)
        for text in texts:
            if match := self.pattern.search(text):
                return True, match[0][:80]
        return False, ""


def parse(item: str | dict[str, str]) -> Condition:
    """A condition from its config form; ValueError says what is wrong with it."""
    if isinstance(item, dict):
        if list(item) != ["body"] or not isinstance(item["body"], str):
            raise ValueError("a condition is a header regex string, \"size > N\", or "
                             "{body: REGEX}")
        return _regex(item["body"], "body", f"body: {item['body']}")
    negated = item.startswith("!")
    size = _SIZE.fullmatch(item.removeprefix("!").strip())
    if size and (limit := _bytes(size[2])) is not None:
        return Condition(item, negated, "size", limit=(size[1], limit))
    return _regex(item, "header", item)


def _bytes(text: str) -> int | None:
    """The size ``text`` says as config sizes are written, or None: then it is a regex."""
    try:
        return parse_size(text)
    except ValueError:
        return None


def _regex(text: str, kind: str, source: str) -> Condition:
    negated = text.startswith("!")
    pattern = text.removeprefix("!").replace("^TO_", _TO)
    try:
        return Condition(source, negated, kind, re.compile(pattern, _FLAGS))
    except re.error as exc:
        raise ValueError(f"bad regular expression {text!r}: {exc}") from None
