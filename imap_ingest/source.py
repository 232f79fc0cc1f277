"""The mail source a pass talks to: IMAP's Mailbox is one, POP3's Maildrop another.

The pass, its dispositions and the ledger see only this: UIDs of new messages, their
bytes, and what to do with them. How a source remembers what it was told (IMAP keywords
and folders; POP3 only DELE, and the ledger for the rest) is its own business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from .config import Account
    from .ledger import Ledger
    from .oauth import Tokens


@dataclass(frozen=True, slots=True)
class Fetched:
    """One message as the server gave it; ``raw`` is None when it was too large to fetch,
    and then ``header`` is its header block, if asked for and the server gave it."""

    uid: int
    size: int
    raw: bytes | None
    internaldate: datetime | None = None
    header: bytes | None = None


class Source(Protocol):
    """A logged-in session on one account; ``select`` a folder before the other calls."""

    account: Account
    uidvalidity: int
    unfetched: list[int]  # UIDs the last fetch() found but could not read: the next pass's

    @property
    def keywords(self) -> bool:
        """Whether the server keeps our keywords; without them the ledger alone remembers
        what was set aside."""

    def select(self, folder: str, readonly: bool = False) -> None: ...
    def new_uids(self) -> list[int]: ...
    def fetch(self, uids: Sequence[int], batch_size: int, max_size: int,
              headers: bool = False) -> Iterator[Fetched]:
        """The messages; those over ``max_size`` without their bytes, and with ``headers``
        with their header block instead (IMAP: BODY.PEEK[HEADER]; POP3: TOP n 0)."""
    def copy(self, uids: Sequence[int], folder: str) -> None: ...
    def move(self, uids: Sequence[int], folder: str) -> None: ...
    def mark(self, uids: Sequence[int], keyword: str) -> None: ...
    def unmark(self, uids: Sequence[int], keyword: str) -> None: ...
    def delete(self, uids: Sequence[int]) -> None: ...
    def commit(self) -> None:
        """Make the pass's dispositions final (IMAP's are at once; POP3's at QUIT)."""

    def close(self) -> None: ...
    def __enter__(self) -> Source: ...
    def __exit__(self, *_: object) -> None: ...


T = TypeVar("T")


class Serial:
    """A pass's commands to its source, carried out one at a time in the order given: on a
    thread of their own when ``threaded`` (the pass decides and posts one batch while the
    next is fetched and the last one's dispositions carried out: the GIL is free while the
    server answers), else at once. The order is the same either way."""

    def __init__(self, threaded: bool) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="source") if threaded else None

    def later(self, work: Callable[[], T]) -> Future[T]:
        """``work``'s result (or its error) to come, after everything given before it."""
        if self._thread is not None:
            return self._thread.submit(work)
        done: Future[T] = Future()
        try:
            done.set_result(work())
        except BaseException as exc:  # a simulated kill too: raised where it is waited for
            done.set_exception(exc)
        return done

    def close(self) -> None:
        """Wait for what was given; nothing may be given afterwards."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)


@runtime_checkable
class Flagged(Protocol):
    """A source whose deletion takes two steps, flag and expunge (IMAP), so that a pass
    stopped between them leaves messages flagged \\Deleted for the next one to expunge."""

    def among(self, uids: Sequence[int], criterion: str = "ALL") -> list[int]:
        """Which of these UIDs are still there and match the SEARCH ``criterion``."""


def open_source(account: Account, tokens: Tokens | None, ledger: Ledger | None,
                accounts: Sequence[Account] = ()) -> Source:
    """A session on ``account`` by its protocol; POP3 keeps what it knows in ``ledger``
    (without one, as for `check`, every message in the maildrop counts as new) and finds
    its failure_folder's account among ``accounts``."""
    if account.protocol == "pop3":
        from .pop3 import Maildrop
        return Maildrop(account, tokens, ledger, accounts)
    from .mailbox import Mailbox
    return Mailbox(account, tokens)
