"""Connecting to an IMAP server and reading what it sends, on terms the server cannot
stretch: TLS (one context per CA file), LOGIN or AUTHENTICATE (PLAIN in UTF-8, or an OAuth2
token refreshed once when refused), and a reader that gives each command a total deadline
and refuses a literal larger than the command can need."""

from __future__ import annotations

import ast
import contextlib
import functools
import imaplib
import io
import logging
import math
import os
import socket
import ssl
import time
from contextlib import suppress
from typing import Any

from imapclient import IMAPClient, SocketTimeout, imap4, tls
from imapclient.exceptions import IMAPClientError, LoginError

from .config import Account
from .errors import AuthFailed
from .oauth import Tokens

log = logging.getLogger("imap_ingest.mailbox")

# No answer but a message's needs a literal this large (folder names, mostly).
MAX_LITERAL = 1024 * 1024
# A message's download (IMAP FETCH, POP3 RETR) may take its account's timeout plus the time
# its bytes need at this rate (about a 1 Mbit/s line); every other command just the timeout.
SLOWEST = 100 * 1024


def lost(exc: OSError | IMAPClientError) -> str:
    """Why a connection was lost, in words that name the cause (a certificate, a socket)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS failure: the server's certificate is not trusted ({exc.verify_message}; "
                "see ca_file, verify_tls)")
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure: {exc.reason or exc}"
    if isinstance(exc, OSError):  # socket timeouts included
        return f"connection failed: {exc.strerror or exc}"
    return f"server said: {server_text(exc)}"


class Reader(socket.SocketIO):
    """The connection as imaplib reads it: each read waits no longer than what is left
    of the running command's deadline, and a literal over the command's limit is refused
    before anything is allocated for it (a server announcing 50 GB would be a MemoryError)."""

    def __init__(self, sock: socket.socket, read_timeout: float) -> None:
        super().__init__(sock, "rb")
        self._socket = sock
        self._read_timeout = read_timeout
        self._deadline = math.inf
        self._literal = MAX_LITERAL
        self._line_ended = True  # the last byte read ended a line
        self.file = io.BufferedReader(self)

    @classmethod
    def install(cls, imap: Any, read_timeout: float) -> Reader:
        """Read the connection of ``imap`` (an imaplib.IMAP4) through a new reader (again
        after STARTTLS)."""
        reader = cls(imap.sock, read_timeout)
        imap.file = reader.file
        # imaplib reads a literal with read(size), before which the size can be refused.
        imap.read = reader.read_literal
        return reader

    def limit(self, seconds: float, literal: int) -> None:
        """From now on, be done within ``seconds`` and refuse literals over ``literal``."""
        self._deadline = time.monotonic() + seconds
        self._literal = literal
        # A read after the deadline's end must not keep the short timeout of its last read.
        with suppress(OSError):  # closed already
            self._socket.settimeout(self._read_timeout)

    def readinto(self, buffer: memoryview) -> int | None:  # type: ignore[override]
        if self._socket.gettimeout() == 0.0 and not self._line_ended:
            # imapclient's idle_check reads without blocking, and takes a read that would
            # block for the end of the server's news: in the middle of a line (split in two
            # segments) that hands imaplib half a line, and it drops the session. Wait for
            # the rest as any read does.
            self._socket.settimeout(self._read_timeout)
            try:
                read = self._bounded_readinto(buffer)
            finally:
                self._socket.setblocking(False)
        else:
            read = self._bounded_readinto(buffer)
        if read:
            self._line_ended = buffer[read - 1] == ord("\n")
        return read

    def _bounded_readinto(self, buffer: memoryview) -> int | None:
        if self._deadline != math.inf:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server did not finish its answer in time")
            self._socket.settimeout(min(left, self._read_timeout))
        try:
            return super().readinto(buffer)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                raise TimeoutError("the server did not finish its answer in time") from None
            raise

    def read_literal(self, size: int) -> bytes:
        if size > self._literal:
            raise OSError(f"the server announced a {size}-byte literal, more than the "
                          f"{self._literal} bytes asked for")
        data: bytes = self.file.read(size)
        return data


class _Greeted(imaplib.IMAP4):
    """imaplib's connection, reading the server's greeting within ``seconds`` in all: it is
    read in the constructor, before any reader of ours could be installed, and a server
    sending a byte at a time (each within the socket's timeout) would hold the pass for
    ever. (A TLS handshake is bounded already: ssl's timeout covers all of it.)"""

    seconds: float

    def open(self, host: str = "", port: int = 143,
             timeout: float | None = None) -> None:
        super().open(host, port, timeout)
        Reader.install(self, self.seconds).limit(self.seconds, MAX_LITERAL)


# imapclient has no type hints: to mypy its classes are Any.
class _Plain(_Greeted, imap4.IMAP4WithTimeout):  # type: ignore[misc]
    def __init__(self, host: str, port: int, timeout: float | None, seconds: float) -> None:
        self.seconds = seconds
        imap4.IMAP4WithTimeout.__init__(self, host, port, timeout)


class _Tls(_Greeted, tls.IMAP4_TLS):  # type: ignore[misc]
    def __init__(self, host: str, port: int, context: ssl.SSLContext | None,
                 timeout: float | None, seconds: float) -> None:
        self.seconds = seconds
        tls.IMAP4_TLS.__init__(self, host, port, context, timeout)


class _Client(IMAPClient):  # type: ignore[misc]
    """IMAPClient on a connection whose greeting is bounded (:class:`_Greeted`)."""

    def __init__(self, account: Account, context: ssl.SSLContext) -> None:
        self._seconds = account.timeout
        super().__init__(account.host, port=account.effective_port,
                         ssl=account.security == "ssl", ssl_context=context,
                         timeout=SocketTimeout(connect=min(account.timeout, 30.0),
                                               read=account.timeout))

    def _create_IMAP4(self) -> imaplib.IMAP4:
        connect = self._timeout.connect
        if self.ssl:
            return _Tls(self.host, self.port, self.ssl_context, connect, self._seconds)
        return _Plain(self.host, self.port, connect, self._seconds)


def connect(account: Account, tokens: Tokens | None) -> tuple[IMAPClient, Reader]:
    """A logged-in client, and the reader that bounds its commands."""
    context = tls_context(account)
    client = _Client(account, context)
    # imapclient sets imaplib's trace level to 5 and routes it to logging, so imaplib formats
    # every response as text, each fetched message whole, before logging drops it. Trace
    # only when someone reads it (--debug).
    client._imap.debug = 5 if logging.getLogger("imapclient.imaplib").isEnabledFor(
        logging.DEBUG) else 0
    try:
        reader = Reader.install(client._imap, account.timeout)
        reader.limit(account.timeout, MAX_LITERAL)
        if account.security == "starttls":
            client.starttls(context)
            reader = Reader.install(client._imap, account.timeout)
            reader.limit(account.timeout, MAX_LITERAL)
        if tokens is None:
            _login(client, account.username, account.secret.get_secret_value())
        else:
            _authenticate(client, account, tokens)
    except BaseException:
        # A failed STARTTLS handshake leaves a closed socket: shutting it down raises
        # "Bad file descriptor", which must not hide the certificate error.
        with contextlib.suppress(OSError, IMAPClientError):
            client.shutdown()
        raise
    return client, reader


def _login(client: IMAPClient, username: str, password: str) -> None:
    """LOGIN, or AUTHENTICATE PLAIN in UTF-8 (RFC 4616, RFC 6855) for a user name or
    password that is not ASCII: LOGIN's strings are ASCII."""
    if (username + password).isascii():
        client.login(username, password)
    else:
        client.plain_login(username, password)


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
            raise AuthFailed(f"the server refused a token just obtained: {server_text(exc)} (is "
                             f"{account.username} the mailbox the token is for?)",
                             account=account.name) from None


def _present(client: IMAPClient, account: Account, token: str) -> None:
    if account.auth == "oauthbearer":
        client.oauthbearer_login(account.username, token)
    else:
        client.oauth2_login(account.username, token)


def tls_context(account: Account) -> ssl.SSLContext:
    """One context per CA file and verification setting, shared by every connection: each
    holds the CA store (most of a megabyte), and a thousand folders hold 800 connections."""
    ca_file = str(account.ca_file) if account.ca_file else None
    changed = os.stat(ca_file).st_mtime if ca_file else 0.0
    return _shared_context(ca_file, account.verify_tls, changed)


@functools.lru_cache(maxsize=32)
def _shared_context(ca_file: str | None, verify: bool, _changed: float) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def server_text(exc: BaseException) -> str:
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

