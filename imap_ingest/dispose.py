"""The dispose stage: what a pass decided to do to its messages, sent in batches."""

from __future__ import annotations

from .ledger import Key, Ledger
from .mailbox import Mailbox
from .states import Disposition


class Disposal:
    """Dispositions collected during a pass and sent as one command per destination.

    A rule's copies go with the message's disposition: a message left for a retry is not
    copied again on every pass.
    """

    def __init__(self, mailbox: Mailbox, ledger: Ledger) -> None:
        self._mailbox = mailbox
        self._ledger = ledger
        self._pending: dict[Disposition, list[Key]] = {}
        self._copies: dict[Key, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._pending.values()))

    def copy_with(self, key: Key, folders: tuple[str, ...]) -> None:
        """Copy the message into ``folders`` if, and when, it is disposed of."""
        self._copies[key] = folders

    def add(self, key: Key, to: Disposition) -> None:
        for folder in self._copies.pop(key, ()):
            self._pending.setdefault(Disposition("copy", folder), []).append(key)
        self._pending.setdefault(to, []).append(key)

    def flush(self) -> None:
        if not self._pending:
            self._copies = {}
            return
        # IMAP has no fence: a replica that lost the folder must not touch its messages.
        first = next(iter(self._pending.values()))[0]
        self._ledger.check_lease(first.account, first.folder)
        # Copies first: a message may be copied and then moved or deleted.
        for to in sorted(self._pending, key=lambda to: to.verb != "copy"):
            uids = [key.uid for key in self._pending[to]]
            if to.verb == "copy":
                self._mailbox.copy(uids, to.where)
            elif to.verb == "move":
                self._mailbox.move(uids, to.where)
            elif to.verb == "mark":
                self._mailbox.mark(uids, to.where)
            else:
                self._mailbox.delete(uids)
        self._ledger.disposed([key for to, keys in self._pending.items() for key in keys
                               if to.verb != "copy"])
        self._pending, self._copies = {}, {}
