"""Built-in loop protection: mail that must not become a ticket, each check with a name.

They run before the user's rules. A message one of them holds goes to ``loops_folder``
(or is skipped and kept) unless the rule that submits it names the check in ``allow:``.
Deliberately not here: ``X-Auto-Response-Suppress`` (Outlook sets it on ordinary mail, and
Redmine dropped it for that reason) and subjects such as "Automatic reply:".
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import regex

from . import conditions
from .message import Message

ALERT_HEADER = "X-Imap-Ingest-Alert"  # on every alert mail we send (alerts.py)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    description: str
    test: Callable[[Message, Collection[str]], str | None]  # the evidence, or None


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    evidence: str


def _header(name: str, pattern: str = "") -> Callable[[Message, Collection[str]], str | None]:
    """Holds when header ``name`` is present and its value matches ``pattern``."""
    value_re = regex.compile(pattern, regex.IGNORECASE)

    def test(message: Message, _own: Collection[str]) -> str | None:
        value = message.header(name)
        found = value is not None and conditions.search_header(value_re, value)
        return f"{name}: {value}" if found else None

    return test


def _any_header(prefix: str) -> Callable[[Message, Collection[str]], str | None]:
    pattern = regex.compile(rf"^{regex.escape(prefix)}[^:]*:.*$",
                            regex.IGNORECASE | regex.MULTILINE)

    def test(message: Message, _own: Collection[str]) -> str | None:
        match = conditions.search_header(pattern, message.headers)
        return match[0][:120] if match else None

    return test


def _either(*tests: Callable[[Message, Collection[str]], str | None]
            ) -> Callable[[Message, Collection[str]], str | None]:
    return lambda message, own: next(filter(None, (t(message, own) for t in tests)), None)


def _daemon(message: Message, _own: Collection[str]) -> str | None:
    local = message.sender.partition("@")[0]
    return f"From: {message.sender}" if local in ("mailer-daemon", "postmaster") else None


def _own_address(message: Message, own: Collection[str]) -> str | None:
    sender = message.sender
    return f"From: {sender} is a tracker's own address" if sender and sender in own else None


CHECKS: tuple[Check, ...] = (
    Check("auto-submitted", "RFC 3834 Auto-Submitted other than \"no\"",
          _header("Auto-Submitted", r"^(?!no\s*(;|$))")),
    Check("x-autoreply", "an X-Autoreply header", _header("X-Autoreply")),
    Check("x-autorespond", "an X-Autorespond header", _header("X-Autorespond")),
    Check("precedence", "Precedence: bulk, junk, list or auto_reply",
          _header("Precedence", r"^\s*(bulk|junk|list|auto_reply)\s*$")),
    Check("exchange-loop", "Exchange's X-MS-Exchange-Inbox-Rules-Loop",
          _header("X-MS-Exchange-Inbox-Rules-Loop")),
    Check("dsn", "a delivery or read report (Content-Type: multipart/report)",
          _header("Content-Type", r"^\s*multipart/report\b")),
    Check("mailer-daemon", "mail from MAILER-DAEMON or postmaster", _daemon),
    Check("empty-return-path", "an empty Return-Path: <> (a bounce)",
          _header("Return-Path", r"^<\s*>$")),
    Check("redmine", "Redmine's own mail (X-Mailer: Redmine, X-Redmine-*)",
          _either(_header("X-Mailer", r"^Redmine\b"), _any_header("X-Redmine-"))),
    Check("rt", "Request Tracker's own mail (X-RT-Loop-Prevention, X-RT-Ticket, RT-Ticket)",
          _either(_header("X-RT-Loop-Prevention"), _header("X-RT-Ticket"),
                  _header("RT-Ticket"))),
    Check("own-address", "mail From one of the targets' own addresses", _own_address),
    Check("imap-ingest-alert", "imap-ingest's own alert mail (X-Imap-Ingest-Alert)",
          _header(ALERT_HEADER)),
)
NAMES = tuple(check.name for check in CHECKS)
# The checks that catch a tracker's own mail: lifting them is the loop itself, so
# allow_senders lifts them only when it names them.
OWN_CHECKS = ("redmine", "rt", "own-address")


def run(message: Message, enabled: Collection[str], own: Collection[str]
        ) -> Iterator[tuple[Check, Hit | None]]:
    """Each enabled check with its hit (or None, also when its regex ran out of time), in
    order."""
    for check in CHECKS:
        if check.name in enabled:
            try:
                evidence = check.test(message, own)
            except TimeoutError:
                conditions.gave_up(f"loop_checks.{check.name}")
                evidence = None
            yield check, Hit(check.name, evidence) if evidence is not None else None
