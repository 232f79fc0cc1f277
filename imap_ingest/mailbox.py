"""One IMAP session: connect, find new mail, fetch it in batches, move or delete it.

Every imapclient, socket and TLS error is turned into a MailboxError here; none leaves
this module (imap_connect.py makes the connection). Nothing here marks a message seen:
bodies are read with BODY.PEEK[].

The server is not trusted to end what it starts: each command has a total deadline (a
server that drips its answer or floods untagged lines loses the connection), a literal
larger than the command can need is refused, and a message is never read past
``max_size + 1`` bytes, whatever size the server announced.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError, ProtocolError
from imapclient.imap_utf7 import decode as decode_utf7

from .config import Account
from .config.folders import FailureFolder
from .errors import (
    CommandRefused,
    ConnectionLost,
    FolderMissing,
    LoginRefused,
    MailboxError,
)
from .imap_connect import MAX_LITERAL, SLOWEST, Reader, connect, lost, server_text
from .message import MAX_HEADER_BYTES
from .namespace import Namespace
from .oauth import Tokens
from .source import Fetched
from .states import FAILED, SKIPPED

log = logging.getLogger(__name__)

_DELETED = "\\Deleted"

# RFC 2177: servers may drop an IDLE after 29 minutes; renew well before.
IDLE_RENEW = 25 * 60.0
# How often a watcher in IDLE looks at its stop event.
IDLE_WAKE = 3.0
# One FETCH never carries more than this many bytes of bodies.
_BATCH_BYTES = 64 * 1024 * 1024
# IMAP numbers are 32-bit (RFC 3501): the largest partial FETCH one can ask for.
_LARGEST = 2**32 - 2


class Mailbox:
    """A logged-in session on one account; ``select`` a folder before the other calls.
    A token login takes its token from ``tokens``, shared by the account's sessions (a
    cache of its own when not given)."""

    # A pass may give this session its commands from a thread of their own (source.Serial),
    # never two at once.
    overlaps = True

    def __init__(self, account: Account, tokens: Tokens | None = None) -> None:
        self.account = account
        self.folder: str | None = None
        self._readonly = False
        self.uidvalidity = 0
        self._known_folders: set[str] = set()
        # What the last search of the selected folder left to look at: every UID above
        # _seen_up_to, and those in _unsettled (found but not yet deleted, moved or marked).
        self._search_all = True
        self._seen_up_to = 0
        self._unsettled: set[int] = set()
        # UIDs the last fetch() found but the server answered without their body.
        self.unfetched: list[int] = []
        self._reader: Reader | None = None
        self._broken = False  # a command failed half-way: the session cannot go on
        if tokens is None and account.uses_token:
            tokens = Tokens(account)
        try:
            with self._errors():
                self._client, self._reader = connect(account, tokens)
            with self._errors():
                caps = self._client.capabilities()
        except CommandRefused as exc:  # STARTTLS or CAPABILITY refused: no session at all
            raise ConnectionLost(exc.reason, account=account.name) from None
        self._has_move = b"MOVE" in caps
        self._has_uidplus = b"UIDPLUS" in caps
        self._has_idle = b"IDLE" in caps
        self._has_notify = b"NOTIFY" in caps
        self._keywords = False
        self._namespace: Namespace | None = None
        log.debug("account %s: moving with %s", account.name,
                  "MOVE" if self._has_move else "COPY + \\Deleted + UID EXPUNGE")
        if not self._has_uidplus:
            log.warning("account %s: server lacks UIDPLUS, so deleted messages are flagged "
                        "\\Deleted but not expunged (a plain EXPUNGE would remove other "
                        "clients' messages too)", account.name)

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Log out, or just drop the connection if it is already broken."""
        if not self._broken:
            try:
                with self._errors():
                    self._client.logout()
                return
            except MailboxError:
                pass
        self._client.shutdown()

    def commit(self) -> None:
        """Nothing to do: IMAP carries out each disposition at once."""

    @property
    def has_idle(self) -> bool:
        return self._has_idle

    @property
    def has_notify(self) -> bool:
        return self._has_notify

    def notify(self, folders: Sequence[str]) -> list[str]:
        """Ask for news of new mail in the configured ``folders`` while in IDLE (RFC 5465
        NOTIFY SET); their names on the server, which its STATUS news will carry.
        CommandRefused if the server will not."""
        names = [self.resolve(folder) for folder in folders]
        # imapclient has no NOTIFY: a raw command, the names quoted and encoded as it does.
        quoted = b" ".join(self._client._normalise_folder(name) for name in names)
        with self._errors():
            typ, data = self._client._raw_command(
                b"NOTIFY", [b"SET", b"(mailboxes (" + quoted + b")",
                            b"(MessageNew MessageExpunge))"], uid=False)
            self._client._checkok("NOTIFY", typ, data)
        return names

    @property
    def keywords(self) -> bool:
        """Whether the selected folder keeps our keywords (``\\*`` in PERMANENTFLAGS);
        without them only the ledger remembers what was set aside."""
        return self._keywords

    @property
    def namespace(self) -> Namespace:
        """The server's personal namespace and separator, asked once per session."""
        if self._namespace is None:
            with self._errors():
                if self._client.has_capability("NAMESPACE"):
                    self._namespace = Namespace.of(*self._client.namespace())
                else:
                    # LIST "" "" answers with the separator alone (RFC 3501 6.3.8).
                    listed = self._client.list_folders("", "")
                    separator = listed[0][1] if listed else None
                    self._namespace = Namespace.of([("", separator.decode() if isinstance(
                        separator, bytes) else separator)])
            log.debug("account %s: namespace %r, separator %r", self.account.name,
                      self._namespace.prefix, self._namespace.separator)
        return self._namespace

    def resolve(self, folder: str) -> str:
        """The server's name for a configured folder name (see namespace.py)."""
        return self.namespace.resolve(folder)

    def exists(self, folder: str) -> bool:
        """Whether the configured ``folder`` exists on the server."""
        with self._errors(folder):
            return bool(self._client.folder_exists(self.resolve(folder)))

    def select(self, folder: str, readonly: bool = False) -> None:
        """Open ``folder``, read-write unless ``readonly``. On a kept connection where it is
        already open, a NOOP brings its news instead: re-opening costs the server a scan of
        the whole folder (300 ms at 10,000 messages with dovecot's Maildir)."""
        if folder == self.folder and readonly == self._readonly:
            with self._errors(folder):
                _, news = self._client.noop()
            if any(item[1:2] == (b"FETCH",) for item in news):
                # Another client changed flags (took our mark off, for a retry): those
                # messages may be below what we have seen, so the next search covers all.
                self._search_all = True
            return
        name = self.resolve(folder)
        with self._errors(folder):
            try:
                state = self._client.select_folder(name, readonly=readonly)
            except IMAPClientAbortError:
                raise  # the connection is gone, not the folder
            except IMAPClientError:
                # A refused SELECT leaves no folder open (RFC 3501 6.3.1); only now does
                # a LIST tell a missing folder from another refusal, not before every SELECT.
                self.folder = None
                if not self._client.folder_exists(name):
                    raise FolderMissing(_missing(folder, name), account=self.account.name,
                                        folder=folder) from None
                raise
        if b"UIDVALIDITY" not in state:
            # Without it no UID can be remembered safely; the other folders may still work.
            raise MailboxError("the server's SELECT answer has no UIDVALIDITY (RFC 3501 "
                               "requires one), so its UIDs cannot be trusted; leaving the "
                               "folder alone", account=self.account.name, folder=folder)
        self.folder, self._readonly = folder, readonly
        self.uidvalidity = int(state[b"UIDVALIDITY"])
        # Every message up to UIDNEXT - 1 is there now, so the first search sees them all.
        self._search_all = True
        self._seen_up_to = int(state.get(b"UIDNEXT", 1)) - 1
        # A server that takes custom keywords (\* in PERMANENTFLAGS) lets us leave \Seen alone.
        self._keywords = b"\\*" in state.get(b"PERMANENTFLAGS", ())

    def new_uids(self) -> list[int]:
        """UIDs not deleted and not marked failed or skipped (on a server without keywords:
        not deleted; the ledger says which of them were set aside), found by one UID SEARCH.
        On a kept connection it covers only what the last one left unsettled and the UIDs
        above it: the server does not look at every message of a big folder for each poll.
        \\Seen means nothing here: mail a person has read is still new."""
        criteria = (["UNDELETED", "UNKEYWORD", FAILED, "UNKEYWORD", SKIPPED]
                    if self._keywords else ["UNDELETED"])
        unsettled = _uid_set(self._unsettled)
        # Past a few hundred runs the set would outgrow the server's command line (dovecot
        # takes 64 KB): search the whole folder instead.
        if not self._search_all and unsettled.count(",") < _MAX_RUNS:
            wanted = filter(None, (unsettled, f"{self._seen_up_to + 1}:*"))
            criteria = ["UID", ",".join(wanted), *criteria]
        uids = self.search(criteria)
        self._search_all = False
        self._seen_up_to = max([self._seen_up_to, *uids])
        self._unsettled = set(uids)
        return uids

    def search(self, criteria: list[str]) -> list[int]:
        """UIDs matching an IMAP SEARCH, in order."""
        with self._errors(self.folder):
            return sorted(self._client.search(criteria))

    def among(self, uids: Sequence[int], criterion: str = "ALL") -> list[int]:
        """Which of these UIDs are still there and match ``criterion`` (DELETED: flagged
        \\Deleted, not yet expunged), by one UID SEARCH (over them alone, unless the set
        would outgrow the command line)."""
        if not uids:
            return []
        wanted = _uid_set(uids)
        criteria = ["UID", wanted, criterion] if wanted.count(",") < _MAX_RUNS else [criterion]
        return sorted(set(self.search(criteria)).intersection(uids))

    def fetch(self, uids: Sequence[int], batch_size: int, max_size: int,
              headers: bool = False) -> Iterator[Fetched]:
        """The messages, a batch per FETCH; those over ``max_size`` come without their bytes
        (with ``headers``, with their header block), whether the server said so in
        RFC822.SIZE or only their bytes show it. A message the server answers without its
        body is left for the next pass."""
        self.unfetched = []
        if not uids:
            return
        with self._errors(self.folder):
            answer = self._client.fetch(uids, ["RFC822.SIZE"])
        # Expunged by another client meanwhile: no size.
        sizes = {uid: size for uid in uids
                 if (size := answer.get(uid, {}).get(b"RFC822.SIZE")) is not None}
        large = [uid for uid, size in sizes.items() if size > max_size]
        heads = self._headers(large) if headers else {}
        batch: list[int] = []
        batch_bytes = 0
        for uid, size in sizes.items():
            if size > max_size:
                yield Fetched(uid, size, None, header=heads.get(uid))
                continue
            if batch and (len(batch) >= batch_size or batch_bytes + size > _BATCH_BYTES):
                yield from self._bodies(batch, sizes, max_size, headers)
                batch, batch_bytes = [], 0
            batch.append(uid)
            batch_bytes += size
        yield from self._bodies(batch, sizes, max_size, headers)

    def _bodies(self, uids: list[int], sizes: Mapping[int, int], max_size: int,
                headers: bool) -> Iterator[Fetched]:
        if not uids:
            return
        # One byte more than allowed: enough to know a message is too large.
        limit = min(max_size, _LARGEST) + 1
        # The time for the bytes announced, but never for more than are asked for.
        expected = sum(sizes[uid] for uid in uids)
        seconds = self.account.timeout + min(expected, len(uids) * limit) / SLOWEST
        with self._errors(self.folder, seconds=seconds, literal=limit):
            data = self._client.fetch(uids, [f"BODY.PEEK[]<0.{limit}>", "INTERNALDATE",
                                             "FLAGS"])
        raws: dict[int, bytes] = {}
        for uid in uids:
            item = data.get(uid)
            # Gone, or deleted by another client since the search: not ours any more.
            if item is None or _DELETED.encode() in item.get(b"FLAGS", ()):
                continue
            raw = item.get(b"BODY[]<0>", item.get(b"BODY[]"))  # some servers omit the <0>
            if raw is None:
                self.unfetched.append(uid)
                log.warning("account %s folder %s: the server answered uid %d without its "
                            "body; trying again next pass", self.account.name, self.folder, uid)
                continue
            raws[uid] = raw
        # Larger than the server said: their headers, for the rules, in one FETCH.
        heads = self._headers([uid for uid, raw in raws.items()
                               if len(raw) > max_size]) if headers else {}
        for uid, raw in raws.items():
            whole = len(raw) <= max_size
            yield Fetched(uid, max(sizes[uid], len(raw)), raw if whole else None,
                          data[uid].get(b"INTERNALDATE"), heads.get(uid))

    def _headers(self, uids: list[int]) -> dict[int, bytes]:
        """The header blocks of messages too large to fetch (no more of each than the rules
        read), by one FETCH; a message the server gives none of is left out."""
        if not uids:
            return {}
        with self._errors(self.folder, seconds=self.account.timeout
                          + len(uids) * MAX_HEADER_BYTES / SLOWEST, literal=MAX_HEADER_BYTES):
            data = self._client.fetch(uids, [f"BODY.PEEK[HEADER]<0.{MAX_HEADER_BYTES}>"])
        heads = {uid: item.get(b"BODY[HEADER]<0>", item.get(b"BODY[HEADER]"))
                 for uid, item in data.items()}
        return {uid: head for uid, head in heads.items() if isinstance(head, bytes)}

    def delete(self, uids: Sequence[int]) -> None:
        """Flag \\Deleted and expunge exactly these UIDs."""
        if not uids:
            return
        with self._errors(self.folder):
            self._client.add_flags(uids, [_DELETED], silent=True)
            if self._has_uidplus:
                self._client.uid_expunge(uids)
        self._unsettled.difference_update(uids)

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move these UIDs to ``folder``, creating it if missing."""
        if not uids:
            return
        if self._has_move:
            self._ensure(folder)
            with self._errors(self.folder):
                self._client.move(uids, self.resolve(folder))
            self._unsettled.difference_update(uids)
            return
        self.copy(uids, folder)
        self.delete(uids)

    def copy(self, uids: Sequence[int], folder: str) -> None:
        """Copy these UIDs into ``folder``, creating it if missing."""
        if uids:
            self._ensure(folder)
            with self._errors(self.folder):
                self._client.copy(uids, self.resolve(folder))

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> None:
        """Add ``raw`` to ``folder`` with ``flags``, creating the folder if missing."""
        self._ensure(folder)
        # Sending the bytes gets the time a body FETCH of them would.
        with self._errors(folder, seconds=self.account.timeout + len(raw) / SLOWEST):
            self._client.append(self.resolve(folder), raw, flags=tuple(flags))

    def mark(self, uids: Sequence[int], keyword: str) -> None:
        """Remember on the server not to look at these again, where it keeps keywords (else
        the ledger's record is the mark)."""
        if uids and self._keywords:
            with self._errors(self.folder):
                self._client.add_flags(uids, [keyword], silent=True)
        self._unsettled.difference_update(uids)

    def unmark(self, uids: Sequence[int], keyword: str) -> None:
        """Take a keyword set by ``mark`` off again."""
        if uids and self._keywords:
            with self._errors(self.folder):
                self._client.remove_flags(uids, [keyword], silent=True)

    def idle(self, stop: threading.Event, on_new_mail: Callable[[], None],
             renew_after: float = IDLE_RENEW,
             on_status: Callable[[str], None] | None = None) -> None:
        """Wait in IMAP IDLE until ``stop``; call ``on_new_mail`` when the server announces
        mail in the selected folder, ``on_status`` with a folder's server name when NOTIFY
        news of it comes (a STATUS). IDLE is re-issued before RFC 2177's 29 minutes run out."""
        assert self._reader is not None
        with self._errors(self.folder):
            self._client.idle()
            started = time.monotonic()
            while not stop.is_set():
                waited = time.monotonic()
                # Waiting in IDLE takes as long as it likes; the commands around it do not.
                self._reader.limit(math.inf, MAX_LITERAL)
                # A short wait keeps the thread responsive to stop; not too short, for a
                # thousand watchers waking each time cost a core's tenth (bench/folders.py).
                responses = self._client.idle_check(timeout=IDLE_WAKE)
                self._reader.limit(self.account.timeout, MAX_LITERAL)
                if any(response[:1] == (b"BYE",) for response in responses):
                    raise ConnectionLost("the server ended the session (BYE)",
                                         account=self.account.name, folder=self.folder)
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    on_new_mail()
                if on_status is not None:
                    for name in {n for r in responses if (n := status_name(r)) is not None}:
                        on_status(name)
                # imapclient answers an EOF with no responses at once: a round trip (DONE,
                # IDLE) then either proves the connection alive or raises.
                early = not responses and time.monotonic() - waited < 0.5
                if early or time.monotonic() - started > renew_after:
                    self._client.idle_done()
                    self._client.idle()
                    started = time.monotonic()
            self._client.idle_done()

    def try_create(self, folder: str) -> None:
        """Create the configured ``folder`` and delete it again at once (if it is still
        empty), with the levels above it the server made: the only sure way to know the
        server allows it. CommandRefused if not."""
        name = self.resolve(folder)
        with self._errors(folder):
            made = [parent for parent in self.namespace.parents(name)
                    if not self._client.folder_exists(parent)]
            self._client.create_folder(name)
            if self._client.folder_status(name, ["MESSAGES"]).get(b"MESSAGES") == 0:
                self._client.delete_folder(name)
                for parent in reversed(made):
                    if self._client.folder_exists(parent):
                        self._client.delete_folder(parent)

    def _ensure(self, folder: str) -> None:
        if folder in self._known_folders:
            return
        name = self.resolve(folder)
        try:
            with self._errors(folder):
                if not self._client.folder_exists(name):
                    self._client.create_folder(name)
                    log.info("account %s: created folder %s", self.account.name, name)
        except CommandRefused as exc:
            # Another session (a worker process of ours, a person) may have made it meanwhile.
            with self._errors(folder):
                made = self._client.folder_exists(name)
            if not made:
                raise CommandRefused(f"cannot create folder {name}: {exc.reason}",
                                     account=self.account.name, folder=folder) from None
        self._known_folders.add(folder)

    @contextmanager
    def _errors(self, folder: str | None = None, seconds: float | None = None,
                literal: int = MAX_LITERAL) -> Iterator[None]:
        """Translate library errors into MailboxError, naming account and folder; what is
        inside must be done within ``seconds`` (default: the account's timeout) and read
        no literal over ``literal`` bytes."""
        name = self.account.name
        if self._reader is not None:
            self._reader.limit(self.account.timeout if seconds is None else seconds, literal)
        try:
            yield
        except MailboxError:
            raise
        except LoginError as exc:
            raise LoginRefused(f"login refused: {server_text(exc)}", account=name) from None
        except (OSError, IMAPClientAbortError, ProtocolError) as exc:
            # What the server sends next may be the rest of an answer: log out no more.
            self._broken = True
            raise ConnectionLost(lost(exc), account=name, folder=folder) from None
        except IMAPClientError as exc:
            # A tagged NO or BAD ends its command, not the session.
            raise CommandRefused(f"server said: {server_text(exc)}", account=name,
                                 folder=folder) from None
        finally:
            if self._reader is not None:
                self._reader.limit(math.inf, MAX_LITERAL)


def status_name(response: tuple[object, ...]) -> str | None:
    """The folder an untagged ``STATUS name (...)`` is about, decoded as imapclient decodes
    LIST's names (modified UTF-7; a name of digits parses as a number); else None."""
    if len(response) < 2 or response[0] != b"STATUS":
        return None
    name = response[1]
    if isinstance(name, int):
        return str(name)
    return decode_utf7(name) if isinstance(name, bytes) else None


def _missing(folder: str, name: str) -> str:
    if name == folder:
        return "the folder does not exist"
    return f"the folder does not exist (as {name} on this server)"


_MAX_RUNS = 500


def _uid_set(uids: Iterable[int]) -> str:
    """An IMAP UID set, runs of consecutive UIDs written as ranges: 3,7:9,12."""
    runs: list[list[int]] = []
    for uid in sorted(uids):
        if runs and uid == runs[-1][1] + 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)




def append_to(accounts: Sequence[Account], to: FailureFolder, raws: Sequence[bytes],
              flags: Sequence[str], deadline: float | None = None) -> None:
    """Append each of ``raws`` to ``to``, an IMAP folder of one of ``accounts``, in a session
    of its own; with ``deadline`` (time.monotonic) each command ends before it, so that a
    caller's own fallback (a spool) is still reached."""
    account = next(account for account in accounts if account.name == to.account)
    if deadline is not None:
        account = account.model_copy(update={
            "timeout": max(1.0, min(account.timeout, deadline - time.monotonic() - 1))})
    with Mailbox(account) as mailbox:
        for raw in raws:
            mailbox.append(to.folder, raw, flags)
