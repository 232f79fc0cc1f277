"""Folder names as the configuration writes them, and as the server wants them.

Servers keep personal folders in different places: dovecot and Gmail at the top
(``NAMESPACE (("" "/"))``), Cyrus and Courier under ``INBOX.`` (``(("INBOX." "."))``).
A configured name is resolved once, here, for every use (source folders, move and copy
destinations, loops, quarantine, retry):

- ``INBOX``, in any case, is the inbox;
- ``/`` written in a name separates levels, and becomes the server's separator;
- a name that already starts with one of the server's namespace prefixes is left alone
  (``INBOX.Done``, ``[Gmail]/Spam``, ``Other Users/...``);
- any other name goes under the personal namespace's prefix: ``Done`` is ``INBOX.Done``
  on Cyrus and ``Done`` on dovecot.

``.`` is not translated: on a server whose separator is ``.`` it is a level anyway, and
on one whose separator is ``/`` a name may contain a dot (``redmine.failed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INBOX = "INBOX"


@dataclass(frozen=True, slots=True)
class Namespace:
    """The server's personal prefix and separator, and every namespace prefix it has."""

    prefix: str = ""
    separator: str = "/"  # empty: a flat server, no levels
    prefixes: tuple[str, ...] = ()  # personal, other users' and shared, as announced

    @classmethod
    def of(cls, *kinds: Sequence[tuple[str, str | None]] | None) -> Namespace:
        """From NAMESPACE's personal, other users' and shared lists (each may be None)."""
        pairs = [pair for kind in kinds for pair in kind or ()]
        if not pairs:
            return cls()
        prefix, separator = pairs[0]
        return cls(prefix, separator or "", tuple(p for p, _ in pairs if p))

    def resolve(self, name: str) -> str:
        """The server's name for the configured folder ``name``."""
        if name.upper() == INBOX:
            return INBOX
        if self.separator and self.separator != "/":
            name = name.replace("/", self.separator)
        if any(prefix and _starts(name, prefix) for prefix in (self.prefix, *self.prefixes)):
            return _inbox_upper(name, self.prefix)
        return self.prefix + name

    def parents(self, name: str) -> tuple[str, ...]:
        """The levels above the server name ``name`` below its namespace's prefix, outermost
        first: what creating ``name`` may make on the way (Cyrus makes them real folders)."""
        if not self.separator:
            return ()
        prefix = next((p for p in (self.prefix, *self.prefixes) if p and _starts(name, p)), "")
        levels = name[len(prefix):].split(self.separator)
        return tuple(prefix + self.separator.join(levels[:n]) for n in range(1, len(levels)))


def _starts(name: str, prefix: str) -> bool:
    # The inbox's name is case-insensitive (RFC 3501 5.1), so is a prefix that begins with it.
    if prefix.upper().startswith(INBOX):
        return name.upper().startswith(prefix.upper())
    return name.startswith(prefix)


def _inbox_upper(name: str, prefix: str) -> str:
    """``inbox.Done`` as the server's ``INBOX.Done``."""
    if prefix and _starts(name, prefix) and prefix.upper().startswith(INBOX):
        return prefix + name[len(prefix):]
    return name
