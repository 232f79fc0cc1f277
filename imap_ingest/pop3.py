"""One POP3 session on a maildrop: the mail source for a POP3 account (poplib).

POP3 has one folder and no flags, so a message is known by its UIDL, which the ledger maps
to a UID of its own, and what IMAP remembers on the server (a message refused, skipped,
moved) the ledger remembers here: such a message is left on the server and not looked at
again. Only ``delete`` reaches the server, as DELE, and only with ``keep: false``; QUIT at
the end of a pass commits the DELEs, and a pass that fails never sends it, so the server
keeps every message as it was.

As in mailbox.py, every command has a total deadline, every line and listing a size limit,
and a message is never read past ``max_size + 1`` bytes; every poplib, socket and TLS
error becomes a MailboxError here.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import poplib
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from . import spool
from .config import Account
from .errors import (
    EX_CONFIG,
    AuthFailed,
    ConnectionLost,
    IngestError,
    LoginRefused,
    MailboxError,
)
from .imap_connect import SLOWEST, Reader, lost, server_text, tls_context
from .ledger import Ledger, Record
from .mailbox import append_to
from .message import MAX_HEADER_BYTES
from .oauth import Tokens
from .source import Fetched
from .states import FAILED, Result, State

log = logging.getLogger(__name__)

# POP3 has no UIDVALIDITY: a UIDL is for ever (RFC 1939), and the ledger's UIDs with it.
UIDVALIDITY = 1
# A listing (CAPA, LIST, UIDL) is never read past this.
_MAX_LISTING = 16 * 1024 * 1024
# One read of a message's line; longer lines come in pieces.
_CHUNK = 64 * 1024
# An answer's status line (RFC 2449: 512 octets; poplib takes 2048).
_MAX_LINE = 2048


class NoUidl(MailboxError):
    """The server has no UIDL, so mail left on it cannot be told apart from new mail."""

    exit_code = EX_CONFIG


class Maildrop:
    """A logged-in POP3 session on ``account``; ``select`` its folder before the other
    calls. Each pass after a ``commit`` (QUIT) logs in again: a POP3 session holds the
    maildrop's lock, and its DELEs take effect only at QUIT."""

    keywords = False  # POP3 marks nothing: the ledger remembers what was set aside

    def __init__(self, account: Account, tokens: Tokens | None, ledger: Ledger | None,
                 accounts: Sequence[Account] = ()) -> None:
        self.account = account
        self._accounts = accounts  # where a failure_folder's account is found
        self.uidvalidity = UIDVALIDITY
        self.unfetched: list[int] = []
        if tokens is None and account.uses_token:
            tokens = Tokens(account)
        self._tokens = tokens
        self._ledger = ledger
        self._folder = account.folders[0]
        self._numbers: dict[int, int] = {}  # UID: message number in this session
        self._sizes: dict[int, int] = {}
        self._uidls: dict[int, str] = {}
        self._client: _Client | None = self._connect()

    def __enter__(self) -> Maildrop:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the connection without QUIT: what was not committed is undone."""
        if self._client is not None:
            self._client.drop()
            self._client = None

    def commit(self) -> None:
        """QUIT: the server now removes what was deleted."""
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            with self._errors(client):
                client.quit()
        finally:
            client.drop()

    def select(self, folder: str, readonly: bool = False) -> None:
        """Log in again if the last pass committed, and list the maildrop: its sizes and
        UIDLs, each UIDL given its UID."""
        if self._client is None:
            self._client = self._connect()
        client = self._client
        with self._errors(client):
            sizes = {int(n): int(size) for n, size in _pairs(client.listing("LIST"))}
            uidls = self._list_uidls(client, sorted(sizes), sizes)
        uids = (self._ledger.uids(self.account.name, folder, list(uidls.values()))
                if self._ledger else {uidl: n for n, uidl in uidls.items()})
        self._numbers = {uids[uidl]: n for n, uidl in uidls.items()}
        self._sizes = {uid: sizes[n] for uid, n in self._numbers.items()}
        self._uidls = {uid: uidls[n] for uid, n in self._numbers.items()}

    def new_uids(self) -> list[int]:
        """The UIDs in the maildrop that the ledger has not settled."""
        if self._ledger is None:
            return sorted(self._numbers)
        records = self._ledger.records(self.account.name, self._folder.name, UIDVALIDITY,
                                       list(self._numbers))
        return sorted(uid for uid in self._numbers
                      if not _settled(records.get(uid), self.account.keep))

    def fetch(self, uids: Sequence[int], batch_size: int, max_size: int,
              headers: bool = False) -> Iterator[Fetched]:
        """RETR each message not over ``max_size`` by its LIST size; the others come
        without their bytes (with ``headers``, with their header block: TOP n 0)."""
        self.unfetched = []
        for uid in uids:
            size = self._sizes.get(uid)
            if size is None:
                continue  # not in the maildrop (any more)
            if size > max_size:
                yield Fetched(uid, size, None, header=self._top(uid) if headers else None)
                continue
            raw = self._retr(uid, max_size)
            if raw is None:
                self.unfetched.append(uid)
                continue
            whole = len(raw) <= max_size
            yield Fetched(uid, max(size, len(raw)), raw if whole else None,
                          header=self._top(uid) if headers and not whole else None)

    def delete(self, uids: Sequence[int]) -> None:
        """DELE, committed at QUIT; with ``keep: true`` nothing: the ledger remembers."""
        if self.account.keep or not uids:
            return
        client = self._session()
        with self._errors(client):
            for uid in uids:
                client.command(f"DELE {self._numbers[uid]}")

    def mark(self, uids: Sequence[int], keyword: str) -> None:
        """Left on the server (the ledger remembers); a refused one is copied to the
        folder's ``failure_folder`` when set, else (or when that fails) to its
        ``failure_spool`` when set."""
        folder = self._folder
        if keyword != FAILED or (folder.failure_folder is None and folder.failure_spool is None):
            return
        kept = {uid: raw for uid in uids if (raw := self._retr(
            uid, max(self._sizes[uid], folder.max_message_size))) is not None}
        if folder.failure_folder is not None and kept:
            try:
                append_to(self._accounts, folder.failure_folder, list(kept.values()), [FAILED])
                log.info("account %s: %d refused message(s): a copy is in %s",
                         self.account.name, len(kept), folder.failure_folder)
                return
            except IngestError as exc:  # still on the server: the spool, if any, takes it
                log.warning("account %s: %s: %s%s", self.account.name, folder.failure_folder,
                            exc, "; spooling instead" if folder.failure_spool else "")
        if folder.failure_spool is not None:
            for uid, raw in kept.items():
                self._keep(folder.failure_spool, uid, raw)

    def unmark(self, uids: Sequence[int], keyword: str) -> None:
        """Nothing: ``mark`` set nothing on the server."""

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Left on the server: POP3 has no folders (the ledger remembers where it went)."""
        if uids:
            log.info("account %s: POP3 has no folder %s: %d message(s) left on the server",
                     self.account.name, folder, len(uids))

    def copy(self, uids: Sequence[int], folder: str) -> None:
        """Nothing: POP3 has no folders."""
        self.move(uids, folder)

    def _keep(self, directory: Path, uid: int, raw: bytes) -> None:
        uidl = self._uidls[uid]
        name = f"{self.account.name}-{hashlib.sha256(uidl.encode()).hexdigest()[:16]}"
        spool.keep(directory, name, raw, {"account": self.account.name,
                                          "folder": self._folder.name, "uid": uid,
                                          "uidl": uidl})
        log.info("account %s uid %d: refused: a copy is in %s", self.account.name, uid,
                 directory)

    def _retr(self, uid: int, max_size: int) -> bytes | None:
        """The message's bytes up to ``max_size + 1``; None when the server refuses RETR."""
        client = self._session()
        limit = max_size + 1
        seconds = self.account.timeout + min(self._sizes[uid], limit) / SLOWEST
        with self._errors(client):
            try:
                return client.message(f"RETR {self._numbers[uid]}", limit, seconds)
            except poplib.error_proto as exc:
                if not _is_err(exc):
                    raise
                log.warning("account %s: the server refused RETR of uid %d (%s); trying "
                            "again next pass", self.account.name, uid, server_text(exc))
                return None

    def _top(self, uid: int) -> bytes | None:
        """TOP n 0: the header block (no more of it than the rules read); None when the
        server refuses TOP (optional in RFC 1939)."""
        client = self._session()
        with self._errors(client):
            try:
                return client.message(f"TOP {self._numbers[uid]} 0", MAX_HEADER_BYTES,
                                      self.account.timeout)
            except poplib.error_proto as exc:
                if not _is_err(exc):
                    raise
                log.info("account %s: the server refused TOP of uid %d (%s)",
                         self.account.name, uid, server_text(exc))
                return None

    def _list_uidls(self, client: _Client, numbers: list[int],
                    sizes: dict[int, int]) -> dict[int, str]:
        """Each message's UIDL; without UIDL (keep: false only) a digest of its size and
        headers (TOP n 0) stands for one."""
        try:
            return {int(n): uidl for n, uidl in _pairs(client.listing("UIDL"))}
        except poplib.error_proto as exc:
            if not _is_err(exc):
                raise
        if self.account.keep:
            raise NoUidl("the server has no UIDL, so mail left on it (keep: true) cannot be "
                         "told from new mail; set keep: false to delete what was ingested",
                         account=self.account.name, folder=self._folder.name)
        uidls: dict[int, str] = {}
        for n in numbers:
            head = client.message(f"TOP {n} 0", _MAX_LISTING, self.account.timeout)
            digest = hashlib.sha256(b"%d\n" % sizes[n] + head).hexdigest()[:40]
            uidl = f"top:{digest}"
            while uidl in uidls.values():  # the same message twice: tell them apart
                uidl += "+"
            uidls[n] = uidl
        return uidls

    def _session(self) -> _Client:
        assert self._client is not None, "select() first"
        return self._client

    def _connect(self) -> _Client:
        account = self.account
        context = tls_context(account) if account.security != "none" else None
        try:
            client = _Client(account.host, account.effective_port, account.timeout,
                             context if account.security == "ssl" else None)
        except (OSError, poplib.error_proto) as exc:
            raise ConnectionLost(_lost(exc), account=account.name) from None
        try:
            with self._errors(client):
                if account.security == "starttls":
                    assert context is not None
                    client.starttls(context)
                if self._tokens is None:
                    self._login(client)
                else:
                    self._authenticate(client, self._tokens)
        except BaseException:
            client.drop()
            raise
        return client

    def _login(self, client: _Client) -> None:
        try:
            client.command(f"USER {self.account.username}")
            client.command(f"PASS {self.account.secret.get_secret_value()}")
        except poplib.error_proto as exc:
            if _is_err(exc):
                raise LoginRefused(f"login refused: {server_text(exc)}",
                                   account=self.account.name) from None
            raise

    def _authenticate(self, client: _Client, tokens: Tokens) -> None:
        """AUTH with the account's token; a refused one is refreshed once and tried again."""
        token = tokens.get()
        if client.sasl(self.account.auth, self.account.username, token):
            return
        log.info("account %s: the server refused the token; getting a new one",
                 self.account.name)
        if not client.sasl(self.account.auth, self.account.username, tokens.refresh(token)):
            raise AuthFailed(f"the server refused a token just obtained (is "
                             f"{self.account.username} the mailbox the token is for?)",
                             account=self.account.name)

    @contextmanager
    def _errors(self, client: _Client) -> Iterator[None]:
        """Translate poplib, socket and TLS errors into ConnectionLost; the command within
        is bounded by the account's timeout unless it set its own."""
        client.reader.limit(self.account.timeout, 0)
        try:
            yield
        except MailboxError:
            raise
        except (OSError, poplib.error_proto) as exc:
            client.broken = True
            raise ConnectionLost(_lost(exc), account=self.account.name,
                                 folder=self._folder.name) from None


def _settled(record: Record | None, keep: bool) -> bool:
    """The ledger is done with the message: left on the server on purpose. One to delete
    that is still there (a QUIT that never came) is not: its DELE is sent again."""
    if record is None or record.state is not State.DISPOSED:
        return False
    if record.outcome is Result.RETRIED:  # released by `imap-ingest retry`
        return False
    return keep or record.dispose_to is None or record.dispose_to.verb != "delete"


def _pairs(lines: list[bytes]) -> Iterator[tuple[str, str]]:
    """``N VALUE`` lines of LIST and UIDL."""
    for line in lines:
        number, _, value = line.decode("ascii", "replace").strip().partition(" ")
        if number.isdigit() and value:
            yield number, value.split(" ")[0]


def _is_err(exc: poplib.error_proto) -> bool:
    """The server answered -ERR (the session goes on), rather than breaking the protocol."""
    return str(exc).startswith(("b'-ERR", "-ERR"))


def _lost(exc: OSError | poplib.error_proto) -> str:
    return lost(exc) if isinstance(exc, OSError) else f"server said: {server_text(exc)}"


class _Client:
    """A POP3 connection, read through a bounded reader (from the greeting on, and again
    after STLS), with multi-line answers read to a limit instead of whole as poplib's are;
    a -ERR answer raises poplib.error_proto, as poplib does."""

    def __init__(self, host: str, port: int, timeout: float,
                 tls: ssl.SSLContext | None) -> None:
        self.host, self._timeout, self.broken = host, timeout, False
        sock = socket.create_connection((host, port), min(timeout, 30.0))
        self.sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        self._install()
        self.reader.limit(timeout, 0)
        self._answer()  # the greeting

    def _install(self) -> None:
        self.reader = Reader(self.sock, self._timeout)
        self.file = self.reader.file

    def _send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def _line(self) -> bytes:
        line: bytes = self.file.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise poplib.error_proto("-ERR line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        return line.rstrip(b"\r\n")

    def _answer(self) -> bytes:
        answer = self._line()
        if not answer.startswith(b"+"):
            raise poplib.error_proto(answer)
        return answer

    def starttls(self, context: ssl.SSLContext) -> None:
        self.command("STLS")
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self._install()

    def command(self, line: str) -> bytes:
        """One command with a one-line answer, within the timeout."""
        self.reader.limit(self._timeout, 0)
        self._send(line)
        return self._answer()

    def sasl(self, mechanism: str, username: str, token: str) -> bool:
        """AUTH XOAUTH2 or OAUTHBEARER with an initial response (RFC 5034); False when the
        server refuses the token."""
        if mechanism == "oauthbearer":
            text = f"n,a={username},\x01auth=Bearer {token}\x01\x01"
        else:
            text = f"user={username}\x01auth=Bearer {token}\x01\x01"
        self._send(f"AUTH {mechanism.upper()} {base64.b64encode(text.encode()).decode()}")
        answer = self._line()
        if answer.startswith(b"+ ") or answer == b"+":  # the reason, as a challenge
            self._send("")
            answer = self._line()
        if answer.startswith(b"+OK"):
            return True
        if answer.startswith(b"-ERR"):
            return False
        raise poplib.error_proto(answer)

    def listing(self, line: str) -> list[bytes]:
        """The lines of a multi-line answer, the listing no larger than _MAX_LISTING."""
        return self.message(line, _MAX_LISTING, self._timeout).splitlines()

    def message(self, line: str, limit: int, seconds: float) -> bytes:
        """A multi-line answer's bytes, dot-unstuffed, up to ``limit`` of them (the rest is
        read and dropped, within ``seconds`` for the whole answer)."""
        self.command(line)
        self.reader.limit(seconds, 0)
        parts: list[bytes] = []
        kept, start = 0, True
        while True:
            piece: bytes = self.file.readline(_CHUNK)
            if not piece:
                raise poplib.error_proto("-ERR EOF")
            if start and piece in (b".\r\n", b".\n"):
                return b"".join(parts)
            if start and piece.startswith(b"."):
                piece = piece[1:]
            start = piece.endswith(b"\n")
            if kept < limit:
                parts.append(piece[:limit - kept])
                kept += len(parts[-1])

    def quit(self) -> None:
        self.command("QUIT")

    def drop(self) -> None:
        """Close the socket, with no QUIT."""
        with suppress(OSError):
            self.sock.close()
