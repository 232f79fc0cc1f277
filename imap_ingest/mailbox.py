"""One IMAP session: connect, find new mail, fetch it in batches, move or delete it.

Every imapclient, socket and TLS error is turned into a MailboxError here; none leaves
this module. Nothing here marks a message seen: bodies are read with BODY.PEEK[].
"""

from __future__ import annotations

import ast
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError

from .config import Account
from .errors import AuthFailed, ConnectionLost, FolderMissing, LoginRefused, MailboxError
from .oauth import Tokens

log = logging.getLogger(__name__)

# Keywords that remember, on the server, a message we must not look at again.
FAILED = "$ImapIngestFailed"
SKIPPED = "$ImapIngestSkipped"
SEEN = "\\Seen"
_DELETED = "\\Deleted"

# RFC 2177: servers may drop an IDLE after 29 minutes; renew well before.
IDLE_RENEW = 25 * 60.0
# One FETCH never carries more than this many bytes of bodies.
_BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Fetched:
    """One message as the server gave it; ``raw`` is None when it was too large to fetch."""

    uid: int
    size: int
    raw: bytes | None
    internaldate: datetime | None = None


class Mailbox:
    """A logged-in session on one account; ``select`` a folder before the other calls.
    A token login takes its token from ``tokens``, shared by the account's sessions (a
    cache of its own when not given)."""

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
        if tokens is None and account.uses_token:
            tokens = Tokens(account)
        with self._errors():
            self._client = _connect(account, tokens)
            caps = self._client.capabilities()
        self._has_move = b"MOVE" in caps
        self._has_uidplus = b"UIDPLUS" in caps
        self._has_idle = b"IDLE" in caps
        self._keywords = False
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
        try:
            self._client.logout()
        except (IMAPClientError, OSError):
            self._client.shutdown()

    @property
    def has_idle(self) -> bool:
        return self._has_idle

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
        with self._errors(folder):
            if not self._client.folder_exists(folder):
                raise FolderMissing("the folder does not exist", account=self.account.name,
                                    folder=folder)
            state = self._client.select_folder(folder, readonly=readonly)
        self.folder, self._readonly = folder, readonly
        self.uidvalidity = int(state[b"UIDVALIDITY"])
        # Every message up to UIDNEXT - 1 is there now, so the first search sees them all.
        self._search_all = True
        self._seen_up_to = int(state.get(b"UIDNEXT", 1)) - 1
        # A server that takes custom keywords (\* in PERMANENTFLAGS) lets us leave \Seen alone.
        self._keywords = b"\\*" in state.get(b"PERMANENTFLAGS", ())

    def new_uids(self) -> list[int]:
        """UIDs not deleted and not marked failed or skipped, found by one UID SEARCH. On a
        kept connection it covers only what the last one left unsettled and the UIDs above
        it: the server does not look at every message of a big folder for each poll."""
        criteria = (["UNDELETED", "UNKEYWORD", FAILED, "UNKEYWORD", SKIPPED]
                    if self._keywords else ["UNDELETED", "UNSEEN"])
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

    def fetch(self, uids: Sequence[int], batch_size: int, max_size: int) -> Iterator[Fetched]:
        """The messages, a batch per FETCH; those over ``max_size`` come without their bytes."""
        if not uids:
            return
        with self._errors(self.folder):
            sizes = self._client.fetch(uids, ["RFC822.SIZE"])
        batch: list[int] = []
        batch_bytes = 0
        for uid in uids:
            size = sizes.get(uid, {}).get(b"RFC822.SIZE")
            if size is None:
                continue  # expunged by another client meanwhile
            if size > max_size:
                yield Fetched(uid, size, None)
                continue
            if batch and (len(batch) >= batch_size or batch_bytes + size > _BATCH_BYTES):
                yield from self._bodies(batch)
                batch, batch_bytes = [], 0
            batch.append(uid)
            batch_bytes += size
        yield from self._bodies(batch)

    def _bodies(self, uids: list[int]) -> Iterator[Fetched]:
        if not uids:
            return
        with self._errors(self.folder):
            data = self._client.fetch(uids, ["BODY.PEEK[]", "RFC822.SIZE", "INTERNALDATE",
                                             "FLAGS"])
        for uid in uids:
            item = data.get(uid)
            # Gone, or deleted by another client since the search: not ours any more.
            if item is None or _DELETED.encode() in item.get(b"FLAGS", ()):
                continue
            raw = item.get(b"BODY[]") or b""
            yield Fetched(uid, item.get(b"RFC822.SIZE", len(raw)), raw, item.get(b"INTERNALDATE"))

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
                self._client.move(uids, folder)
            self._unsettled.difference_update(uids)
            return
        self.copy(uids, folder)
        self.delete(uids)

    def copy(self, uids: Sequence[int], folder: str) -> None:
        """Copy these UIDs into ``folder``, creating it if missing."""
        if uids:
            self._ensure(folder)
            with self._errors(self.folder):
                self._client.copy(uids, folder)

    def mark(self, uids: Sequence[int], keyword: str) -> None:
        """Remember on the server not to look at these again: a keyword, else \\Seen."""
        if uids:
            with self._errors(self.folder):
                self._client.add_flags(uids, [keyword if self._keywords else SEEN], silent=True)
            self._unsettled.difference_update(uids)

    def unmark(self, uids: Sequence[int], keyword: str) -> None:
        """Take a keyword set by ``mark`` off again."""
        if uids:
            with self._errors(self.folder):
                self._client.remove_flags(uids, [keyword], silent=True)

    def idle(self, stop: threading.Event, on_new_mail: Callable[[], None],
             renew_after: float = IDLE_RENEW) -> None:
        """Wait in IMAP IDLE until ``stop``; call ``on_new_mail`` when the server announces
        mail. IDLE is re-issued before RFC 2177's 29 minutes run out."""
        with self._errors(self.folder):
            self._client.idle()
            started = time.monotonic()
            while not stop.is_set():
                waited = time.monotonic()
                # A short wait keeps the thread responsive to stop.
                responses = self._client.idle_check(timeout=1)
                if any(response[:1] == (b"BYE",) for response in responses):
                    raise ConnectionLost("the server ended the session (BYE)",
                                         account=self.account.name, folder=self.folder)
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    on_new_mail()
                # imapclient answers an EOF with no responses at once: a round trip (DONE,
                # IDLE) then either proves the connection alive or raises.
                early = not responses and time.monotonic() - waited < 0.5
                if early or time.monotonic() - started > renew_after:
                    self._client.idle_done()
                    self._client.idle()
                    started = time.monotonic()
            self._client.idle_done()

    def _ensure(self, folder: str) -> None:
        if folder in self._known_folders:
            return
        with self._errors(folder):
            if not self._client.folder_exists(folder):
                self._client.create_folder(folder)
                log.info("account %s: created folder %s", self.account.name, folder)
        self._known_folders.add(folder)

    @contextmanager
    def _errors(self, folder: str | None = None) -> Iterator[None]:
        """Translate library errors into MailboxError, naming account and folder."""
        name = self.account.name
        try:
            yield
        except MailboxError:
            raise
        except LoginError as exc:
            raise LoginRefused(f"login refused: {_text(exc)}", account=name) from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectionLost(f"TLS failure: the server's certificate is not trusted "
                                 f"({exc.verify_message}; see ca_file, verify_tls)",
                                 account=name, folder=folder) from None
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS failure: {exc.reason or exc}", account=name,
                                 folder=folder) from None
        except OSError as exc:  # socket timeouts included
            raise ConnectionLost(f"connection failed: {exc.strerror or exc}", account=name,
                                 folder=folder) from None
        except IMAPClientError as exc:
            raise ConnectionLost(f"server said: {_text(exc)}", account=name,
                                 folder=folder) from None


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


def _connect(account: Account, tokens: Tokens | None) -> IMAPClient:
    timeout = SocketTimeout(connect=min(account.timeout, 30.0), read=account.timeout)
    context = _tls_context(account)
    client = IMAPClient(account.host, port=account.effective_port,
                        ssl=account.security == "ssl", ssl_context=context, timeout=timeout)
    # imapclient sets imaplib's trace level to 5 and routes it to logging, so imaplib formats
    # every response as text, each fetched message whole, before logging drops it. Trace
    # only when someone reads it (--debug).
    client._imap.debug = 5 if logging.getLogger("imapclient.imaplib").isEnabledFor(
        logging.DEBUG) else 0
    try:
        if account.security == "starttls":
            client.starttls(context)
        if tokens is None:
            client.login(account.username, account.secret.get_secret_value())
        else:
            _authenticate(client, account, tokens)
    except BaseException:
        # A failed STARTTLS handshake leaves a closed socket: shutting it down raises
        # "Bad file descriptor", which must not hide the certificate error.
        with contextlib.suppress(OSError, IMAPClientError):
            client.shutdown()
        raise
    return client


def _authenticate(client: IMAPClient, account: Account, tokens: Tokens) -> None:
    """AUTHENTICATE with the account's token; a refused one is refreshed once and tried
    again (it may have been revoked, or have expired early)."""
    token = tokens.get()
    try:
        _present(client, account, token)
    except LoginError:
        log.info("account %s: the server refused the token; getting a new one", account.name)
        try:
            _present(client, account, tokens.refresh(token))
        except LoginError as exc:
            raise AuthFailed(f"the server refused a token just obtained: {_text(exc)} (is "
                             f"{account.username} the mailbox the token is for?)",
                             account=account.name) from None


def _present(client: IMAPClient, account: Account, token: str) -> None:
    if account.auth == "oauthbearer":
        client.oauthbearer_login(account.username, token)
    else:
        client.oauth2_login(account.username, token)


def _tls_context(account: Account) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(account.ca_file) if account.ca_file else None)
    if not account.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _text(exc: BaseException) -> str:
    """The server's words: imaplib puts them in its errors as the repr of bytes, whose
    doubled backslashes would hide a credential the server echoed from the redactor."""
    text = str(exc)
    if text.startswith(("b'", 'b"')):
        try:
            words = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text[2:-1]
        return words.decode("utf-8", "replace") if isinstance(words, bytes) else text
    return text

