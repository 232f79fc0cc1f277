"""Rule conditions: header regex (with procmail's ``^TO_``), message size, body regex.

Written in a rule's ``if:`` list as

    "^Subject:.*urgent"        header regex, searched in the unfolded header block
    "!^X-Mailer: Redmine"      leading ! negates any condition
    "^TO_support@example\\.org" procmail's ^TO_: any destination header names the address
    "size > 10M"               RFC822 size, also < and with k/M/G
    {body: "(?i)invoice"}      regex over the decoded text parts (bounded)

Mail is hostile input and a backtracking regex can take minutes on one long line, so every
search, the built-in checks' too, runs with the ``regex`` package's timeout: one that runs
out counts as not matched, and is logged with the rule's key path. (RE2 would be linear,
but has no lookarounds or backreferences, which the built-in checks and procmail-style
rules use.)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import regex

from .message import Message

log = logging.getLogger(__name__)

# CPU time one regex may spend on one text of one message.
MATCH_SECONDS = 0.5

# procmail's ^TO_, widened to the headers MTAs and IMAP servers add for the envelope.
_TO = (r"^(?:(?:Original-)?(?:Resent-)?(?:To|Cc|Bcc)|X-Envelope-To|Apparently(?:-Resent)?-To|"
       r"Delivered-To|X-Original-To|Envelope-To|X-Delivered-To):(?:.*[^-a-zA-Z0-9_.])?")
_SIZE = re.compile(r"size\s*([<>])\s*(\d.*)", re.IGNORECASE)
_FLAGS = regex.IGNORECASE | regex.MULTILINE


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition; ``check`` says whether it holds and why."""

    source: str
    negated: bool
    kind: str  # header | size | body
    pattern: regex.Pattern[str] | None = None
    limit: tuple[str, int] | None = None
    key: str = ""  # where in the configuration, for the log

    def holds(self, message: Message) -> bool:
        return self.check(message)[0]

    def check(self, message: Message) -> tuple[bool, str]:
        """Whether it holds and why; a regex that runs out of time never holds, negated
        or not."""
        try:
            found, evidence = self._test(message)
        except TimeoutError:
            return False, gave_up(self.key or self.source)
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
            if match := self.pattern.search(text, timeout=MATCH_SECONDS):
                return True, match[0][:80]
        return False, ""


def gave_up(key: str) -> str:
    """Log a regex that ran out of MATCH_SECONDS; the reason for the trace."""
    log.warning("%s: the regular expression ran out of its %s s on this message; counted "
                "as not matched", key, MATCH_SECONDS)
    return f"gave up after {MATCH_SECONDS} s (counted as not matched)"


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
    from .config.values import parse_size  # the config package imports this module

    try:
        return parse_size(text)
    except ValueError:
        return None


def _regex(text: str, kind: str, source: str) -> Condition:
    negated = text.startswith("!")
    pattern = text.removeprefix("!").replace("^TO_", _TO)
    try:
        return Condition(source, negated, kind, regex.compile(pattern, _FLAGS))
    except regex.error as exc:
        raise ValueError(f"bad regular expression {text!r}: {exc}") from None
