"""How many IMAP connections an account's folders may hold, and how they share them.

A folder on its own holds two: its passes' connection and its IDLE watcher's. When that
would exceed the account's budget (``max_connections``, else the provider's limit), the
folders' passes share one connection, and as many folders as the rest allows are watched
in IDLE; the others are polled at their interval. Where the server has NOTIFY (RFC 5465),
the last of those watchers watches all the folders left over instead of one (those with
ASCII names: see ``plan``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import Account, Folder

# Simultaneous IMAP connections per account, by provider (see README, "Your IMAP server").
_PROVIDERS = (
    (("imap.gmail.com", "imap.googlemail.com"), 15),  # Gmail
    (("outlook.office365.com", "outlook.office.com"), 20),  # Exchange Online
)
# dovecot's default mail_max_userip_connections, and a modest guess for any other server.
LIMIT = 10
# Left for the account's other clients (a person's mail program, `imap-ingest check`): a
# budget that fills the limit locks them out.
ROOM = 2


def default_budget(host: str) -> int:
    """The connection limit a provider is known for (else dovecot's default), less ROOM."""
    host = host.lower().rstrip(".")
    return next((limit for hosts, limit in _PROVIDERS if host in hosts), LIMIT) - ROOM


def budget_of(account: Account) -> int:
    """The account's ``max_connections``, else its provider's."""
    return account.max_connections or default_budget(account.host)


@dataclass(frozen=True, slots=True)
class Plan:
    """Which folders are watched in IDLE (pushed), which by one NOTIFY watcher, and which
    only polled."""

    shared: bool  # the passes of all folders share one connection
    pushed: tuple[str, ...]
    polled: tuple[str, ...]
    notified: tuple[str, ...] = ()

    @property
    def connections(self) -> int:
        passes = 1 if self.shared else len(self.pushed) + len(self.polled) + len(self.notified)
        return passes + len(self.pushed) + (1 if self.notified else 0)

    def summary(self, form: str) -> str:
        """``form`` filled with the folders pushed by IDLE and those polled on a server
        without NOTIFY, then which would be pushed by NOTIFY instead where it has it."""
        plain = self.without_notify()
        text = form.format(", ".join(plain.pushed) or "none", ", ".join(plain.polled) or "none")
        if self.notified:
            text += (f"; where the server has NOTIFY: {', '.join(self.notified)} pushed "
                     f"(NOTIFY) instead")
        return text

    def without_notify(self) -> Plan:
        """The plan for a server without NOTIFY: its watcher IDLEs on the first folder it
        had, the others are polled."""
        return Plan(self.shared, self.pushed + self.notified[:1],
                    self.notified[1:] + self.polled)


def plan(folders: Sequence[Folder], budget: int, idles: bool = True,
         notify: bool = False) -> Plan:
    """Fit the folders into ``budget`` connections, pushing those that want IDLE first in
    configuration order (none when the protocol has no IDLE: POP3); with ``notify``, the
    last watcher's connection watches all those left over."""
    wanting = [f.name for f in folders if idles and f.idle is not False]
    never = [f.name for f in folders if f.name not in wanting]
    if len(folders) + len(wanting) <= budget:
        return Plan(False, tuple(wanting), tuple(never))
    room = max(0, budget - 1)
    over = wanting[room - 1:]
    # dovecot 2.3.19 sends no NOTIFY news of a name sent in modified UTF-7 (RFC 5465), and
    # its news of a UTF-8 name comes as a literal, which imapclient cannot read in IDLE.
    notifiable = [name for name in over if name.isascii()]
    if notify and room > 0 and len(over) > 1 and notifiable:
        return Plan(True, tuple(wanting[:room - 1]),
                    tuple([name for name in over if not name.isascii()] + never),
                    tuple(notifiable))
    return Plan(True, tuple(wanting[:room]), tuple(wanting[room:] + never))
