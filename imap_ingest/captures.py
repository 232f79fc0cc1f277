"""Values taken from the mail: ``{KIND.GROUP}`` captures and built-ins, in submit options
and header edits, validated before use.

A placeholder is ``{name}`` in a submit option (``queue: "{to.queue}"``) or a ``set_header``
value. Names with a dot are a rule's captures (conditions.py says how they are named);
names without one are built in:

    folder         the IMAP folder's name
    subaddress     EXT of user+EXT@domain sent to one of the account's addresses
    recipient      the first address in the account's recipient_headers
    local          that address's local part, without its sub-address
    sender         the From address;   sender_domain  its domain

A value is refused, and the message held with the reason, when it holds a control
character (CR, LF ...), is longer than its field allows, or has a character the field does
not take: a captured value can neither inject a header line or a form field nor name a
second queue. Submitting to the wrong queue is worse than holding the message for a person.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from .message import Message

BUILT_INS = ("folder", "subaddress", "recipient", "local", "sender", "sender_domain")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w-]*(?:\.[\w-]+)?)\}")
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
# What each submit option takes once the values are in; others take _TEXT.
_OPTION = {
    "project": re.compile(r"[a-z0-9_-]{1,100}"),  # a Redmine identifier
    "queue": re.compile(r"[\w .-]{1,200}"),  # one RT queue: no comma, no control character
    "action": re.compile(r"[a-z]+(?:-[a-z]+)*"),
    "allow_override": re.compile(r"[a-z_]+(?:,[a-z_]+)*"),
    "target": re.compile(r"[\w.-]{1,100}"),
}
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]{1,64}@[A-Za-z0-9.-]{1,253}")
_ADDRESS_HEADERS = {"from", "sender", "reply-to", "to", "cc", "bcc"}
_HEADER = re.compile(r"[^\x00-\x1f\x7f]{1,998}")


class Refused(ValueError):
    """A value cannot be used where the rule puts it; the message is held with this."""


def placeholders(text: str) -> list[str]:
    """The names ``text`` uses, in order."""
    return _PLACEHOLDER.findall(text)


def unknown(text: str, known: Collection[str]) -> list[str]:
    """The names in ``text`` that are neither built in nor in ``known``."""
    return [name for name in placeholders(text) if name not in known and name not in BUILT_INS]


def built_ins(message: Message, folder: str, addresses: Collection[str], separator: str,
              headers: Collection[str]) -> dict[str, str]:
    """The built-in values of ``message`` in ``folder`` (those the mail has)."""
    values = {"folder": folder, "sender": message.sender,
              "sender_domain": message.sender.rpartition("@")[2]}
    if subaddress := message.subaddress(addresses, separator, list(headers)):
        values["subaddress"] = subaddress
    recipient = next((address.lower() for name in headers
                      for _, address in message.every_address(name) if address),
                     "")
    if recipient:
        values["recipient"] = recipient
        values["local"] = recipient.rpartition("@")[0].partition(separator)[0]
    return {name: value for name, value in values.items() if value}


def fill(text: str, values: Mapping[str, str], where: str, allowed: re.Pattern[str]
         ) -> tuple[str, str | None]:
    """``text`` with its placeholders replaced, and a line for the trace (None without
    any); Refused says why a value cannot be used."""
    names = placeholders(text)
    if not names:
        return text, None
    missing = [name for name in names if name not in values]
    if missing:
        raise Refused(f"{where}: no value for {', '.join('{' + n + '}' for n in missing)} in "
                      "this message")
    result = _PLACEHOLDER.sub(lambda match: values[match[1]], text)
    if not allowed.fullmatch(result):
        raise Refused(f"{where}: {result[:100]!r} (from {text!r}) is not a valid value here "
                      f"({_describe(allowed)})")
    return result, f"{where}: {text!r} -> {result!r}"


def option_pattern(name: str) -> re.Pattern[str]:
    return _OPTION.get(name, _TEXT)


def header_pattern(name: str) -> re.Pattern[str]:
    return _ADDRESS if name.lower() in _ADDRESS_HEADERS else _HEADER


def _describe(pattern: re.Pattern[str]) -> str:
    if pattern is _ADDRESS:
        return "one plain address, user@domain"
    if pattern in (_TEXT, _HEADER):
        return "no control characters, at most " + ("255" if pattern is _TEXT else "998")
    return f"must match {pattern.pattern}"
