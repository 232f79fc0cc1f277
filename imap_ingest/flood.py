"""The flood breaker's policy: which counts a message goes under, and what over means.

A loop with a system that sets none of the headers loops.py looks for, a broken script or
an attacker can send thousands of mails; ``flood: {per_sender: 20/h, per_subject: 50/h}``
lets that many through in any sliding window and holds the rest. The counts live in the
ledger (``Ledger.admit``), so every pass and process sharing it shares them, and a limit
lifts on its own as the window slides past.
"""

from __future__ import annotations

import re

from .config.folders import Flood, Rate
from .message import Message

# Reply and forward prefixes (English, German, Nordic, Dutch; a full-width colon too) and
# [list] / [tracker] tags.
_NOISE = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw)\s*(?:\[\d+\])?\s*[:\uff1a]"
                    r"|\[[^\]]*\])\s*", re.IGNORECASE)


def thread_subject(subject: str | None) -> str:
    """The subject as a thread's mails share it: prefixes and tags off, spaces collapsed."""
    text = subject or ""
    while (match := _NOISE.match(text)) and match.end():
        text = text[match.end():]
    return " ".join(text.lower().split())


def limits(message: Message, flood: Flood) -> list[tuple[str, int, float]]:
    """(key, limit, window) for every limit the message counts against."""
    rates: list[tuple[str, Rate | None]] = [
        (f"sender:{message.sender}", flood.per_sender),
        (f"subject:{thread_subject(message.subject)}", flood.per_subject)]
    return [(key, rate.limit, rate.seconds) for key, rate in rates if rate is not None]


def describe(key: str, count: int, flood: Flood) -> str:
    """The reason a message over the limit of ``key`` is held."""
    kind, _, value = key.partition(":")
    rate = flood.per_sender if kind == "sender" else flood.per_subject
    return (f"held by the flood breaker: {count} mails from the same {kind} {value!r} "
            f"already let through within per_{kind}: {rate} (it lifts on its own)")
