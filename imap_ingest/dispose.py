"""The dispose stage: what a pass decided to do to its messages, sent in batches."""

from __future__ import annotations

import logging
from concurrent.futures import Future

from .errors import CommandRefused
from .ledger import Key, Ledger
from .source import Serial, Source
from .states import Disposition

log = logging.getLogger(__name__)


class Disposal:
    """Dispositions collected during a pass and sent as one command per destination.

    A rule's copies go with the message's disposition: a message left for a retry is not
    copied again on every pass. A disposition the server refuses (a folder it will not
    create) leaves its messages in place for the next pass, or sends them where the
    configuration says now when an earlier pass had planned it.
    """

    def __init__(self, mailbox: Source, ledger: Ledger, serial: Serial | None = None) -> None:
        self._mailbox = mailbox
        self._ledger = ledger
        self._serial = serial or Serial(threaded=False)
        self._pending: dict[Disposition, list[Key]] = {}
        self._copies: dict[Key, tuple[str, ...]] = {}
        self._instead: dict[Key, Disposition] = {}
        self._sent: Future[list[Key]] | None = None  # carried out, not yet recorded
        self.refused = 0  # messages left in place because the server refused their disposition

    def __len__(self) -> int:
        return sum(map(len, self._pending.values()))

    def copy_with(self, key: Key, folders: tuple[str, ...]) -> None:
        """Copy the message into ``folders`` if, and when, it is disposed of."""
        self._copies[key] = folders

    def add(self, key: Key, to: Disposition, instead: Disposition | None = None) -> None:
        """Queue ``to`` for the message; ``instead`` if the server refuses ``to``."""
        for folder in self._copies.pop(key, ()):
            self._pending.setdefault(Disposition("copy", folder), []).append(key)
        self._pending.setdefault(to, []).append(key)
        if instead is not None:
            self._instead[key] = instead

    def flush(self) -> None:
        """Carry out what was queued, and record it done."""
        self.send()
        self.settle()

    def send(self) -> None:
        """Carry out what was queued, after the source's earlier commands (on its thread,
        if it has one); it is recorded done by the next ``send`` or ``settle``."""
        self.settle()
        pending, instead = self._pending, self._instead
        self._pending, self._copies, self._instead = {}, {}, {}
        if not pending:
            return
        # What a message's disposition follows from is recorded before it is carried out.
        self._ledger.flush()
        # IMAP has no fence: a replica that lost the folder must not touch its messages.
        first = next(iter(pending.values()))[0]
        self._ledger.check_lease(first.account, first.folder)
        self._sent = self._serial.later(lambda: self._carry_out_all(pending, instead))

    def settle(self) -> None:
        """Record what was sent as done, once the server has done it (its error raised)."""
        if self._sent is not None:
            sent, self._sent = self._sent, None
            self._ledger.disposed(sent.result(), later=True)

    def _carry_out_all(self, pending: dict[Disposition, list[Key]],
                       instead: dict[Key, Disposition]) -> list[Key]:
        """The keys disposed of; those whose disposition the server refused stay."""
        done: list[Key] = []
        kept: set[Key] = set()  # a refused copy keeps the message where it is
        # Copies first: a message may be copied and then moved or deleted.
        for to in sorted(pending, key=lambda to: to.verb != "copy"):
            keys = [key for key in pending[to] if key not in kept]
            try:
                self._carry_out(to, keys)
            except CommandRefused as exc:
                kept.update(self._refused(to, keys, exc, done, instead))
                continue
            if to.verb != "copy":
                done += keys
        return done

    def _carry_out(self, to: Disposition, keys: list[Key]) -> None:
        uids = [key.uid for key in keys]
        if to.verb == "copy":
            self._mailbox.copy(uids, to.where)
        elif to.verb == "move":
            self._mailbox.move(uids, to.where)
        elif to.verb == "mark":
            self._mailbox.mark(uids, to.where)
        else:
            self._mailbox.delete(uids)

    def _refused(self, to: Disposition, keys: list[Key], exc: CommandRefused,
                 done: list[Key], planned: dict[Key, Disposition]) -> list[Key]:
        """Send what the configuration now says instead, one command per destination;
        return the keys left in place."""
        left: list[Key] = []
        instead: dict[Disposition, list[Key]] = {}
        for key in keys:
            if (other := planned.get(key)) is not None:
                instead.setdefault(other, []).append(key)
            else:
                left.append(key)
        for other, some in instead.items():
            try:
                self._carry_out(other, some)
            except CommandRefused:
                left += some
                continue
            log.warning("%s/%s uid %s: not %s (%s); %s instead, as configured now",
                        some[0].account, some[0].folder, _uids(some), to.describe(),
                        exc.reason, other.describe())
            done += some
        if left:
            self.refused += len(left)
            log.error("%s/%s uid %s: not %s: %s; left in place for the next pass",
                      keys[0].account, keys[0].folder, _uids(left), to.describe(), exc.reason)
        return left


def _uids(keys: list[Key]) -> str:
    return ",".join(str(key.uid) for key in sorted(keys, key=lambda key: key.uid))
