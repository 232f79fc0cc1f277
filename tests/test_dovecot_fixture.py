"""The Dovecot test fixture itself works: logins, TLS, helpers, capability override, restart."""

from __future__ import annotations

import contextlib
import ssl
import time

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from .support.dovecot import Dovecot, ImapAccount

RAW = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: support@example.org\r\n"
    b"Subject: =?utf-8?q?Dr=C3=BCcker_kaputt?=\r\n"
    b"Message-ID: <fixture-1@example.org>\r\n"
    b"Content-Type: text/plain; charset=latin-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Der Dr\xfccker druckt nicht.\r\n"
    b"\r\n"
    b".\r\n"
    b"From the end\r\n"
)


def test_login_over_plain_port(imap: ImapAccount) -> None:
    """A plain-port login sees IDLE, MOVE and UIDPLUS and an INBOX alone."""
    with imap.client() as client:
        capabilities = client.capabilities()
        assert b"IDLE" in capabilities
        assert b"MOVE" in capabilities
        assert b"UIDPLUS" in capabilities
        names = [name for _flags, _delim, name in client.list_folders()]
    assert names == ["INBOX"]


def test_starttls_verifies_against_test_ca(imap: ImapAccount) -> None:
    """STARTTLS verifies the server against the test CA, then login works."""
    with IMAPClient(imap.host, port=imap.port, ssl=False, timeout=10) as client:
        assert b"STARTTLS" in client.capabilities()
        client.starttls(imap.ssl_context())
        assert isinstance(client.socket(), ssl.SSLSocket)
        client.login(imap.username, imap.password)
        assert b"MOVE" in client.capabilities()


def test_starttls_rejects_unknown_ca(imap: ImapAccount) -> None:
    """STARTTLS with the system CAs fails certificate verification."""
    client = IMAPClient(imap.host, port=imap.port, ssl=False, timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(ssl.create_default_context())
    finally:
        with contextlib.suppress(OSError):  # the failed handshake already closed the socket
            client.shutdown()


def test_implicit_tls_verifies_against_test_ca(imap: ImapAccount) -> None:
    """Implicit TLS verifies the server against the test CA, then login works."""
    context = ssl.create_default_context(cafile=imap.ca_file)
    with IMAPClient(imap.host, port=imap.ssl_port, ssl=True, ssl_context=context, timeout=10) as c:
        sock = c.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.getpeercert() is not None
        c.login(imap.username, imap.password)
        assert c.select_folder("INBOX")[b"EXISTS"] == 0


def test_append_and_messages_round_trip_raw_bytes(imap: ImapAccount) -> None:
    """append() and messages() round-trip raw bytes and flags, creating folders."""
    uid = imap.append("INBOX", RAW, flags=[r"\Seen"])
    assert imap.messages("INBOX") == {uid: ((b"\\Seen",), RAW)}

    uid2 = imap.append("Archive", RAW)  # created on demand
    uid3 = imap.append("Archive", RAW + b"more\r\n", flags=[b"\\Flagged", "$Ticketed"])
    assert uid3 > uid2
    assert imap.messages("Archive") == {
        uid2: ((), RAW),
        uid3: ((b"$Ticketed", b"\\Flagged"), RAW + b"more\r\n"),
    }
    assert imap.folders() == ["Archive", "INBOX"]
    assert imap.messages("Missing") == {}

    imap.create("Done")
    imap.create("Done")  # idempotent
    assert imap.folders() == ["Archive", "Done", "INBOX"]


def test_messages_hides_deleted(imap: ImapAccount) -> None:
    """messages() leaves out messages flagged \\Deleted."""
    keep = imap.append("INBOX", RAW)
    gone = imap.append("INBOX", RAW, flags=[r"\Deleted"])
    assert gone != keep
    assert set(imap.messages("INBOX")) == {keep}


def test_every_username_is_a_fresh_mailbox(dovecot: Dovecot, imap: ImapAccount) -> None:
    """Each account() is a fresh, empty mailbox of its own."""
    assert imap.folders() == ["INBOX"]
    assert imap.messages("INBOX") == {}
    imap.append("INBOX", RAW)
    other = dovecot.account()
    assert other.username != imap.username
    assert other.messages("INBOX") == {}
    assert len(imap.messages("INBOX")) == 1


def test_wrong_password_fails_fast(imap: ImapAccount) -> None:
    """A wrong password is refused quickly, with no growing auth penalty."""
    for _ in range(2):  # no growing per-IP auth penalty (the 2nd would wait 4+ s)
        started = time.monotonic()
        with (
            IMAPClient(imap.host, port=imap.port, ssl=False, timeout=10) as client,
            pytest.raises(LoginError),
        ):
            client.login(imap.username, "wrong")
        assert time.monotonic() - started < 2


def _capabilities(account: ImapAccount) -> set[bytes]:
    with account.client() as client:
        return set(client.capabilities())


def test_nomove_server_lacks_only_move(dovecot: Dovecot, dovecot_nomove: Dovecot) -> None:
    """The no-MOVE server offers every capability of the full one but MOVE."""
    full = _capabilities(dovecot.account())
    nomove = _capabilities(dovecot_nomove.account())
    assert b"MOVE" in full
    assert b"MOVE" not in nomove
    assert {b"UIDPLUS", b"IDLE", b"UNSELECT", b"LITERAL+"} <= nomove
    assert nomove == full - {b"MOVE"}


def test_imap_any_covers_both_servers(
    imap_any: ImapAccount, request: pytest.FixtureRequest
) -> None:
    """imap_any runs once on the MOVE server and once on the no-MOVE one."""
    uid = imap_any.append("INBOX", RAW)
    assert imap_any.messages("INBOX") == {uid: ((), RAW)}
    has_move = b"MOVE" in _capabilities(imap_any)
    assert has_move == (request.node.callspec.id == "move")


def test_restart_keeps_ports_and_mail() -> None:
    """restart() drops connections but keeps ports and mail; exit cleans up."""
    with Dovecot() as server:
        account = server.account()
        uid = account.append("INBOX", RAW)
        ports = (server.port, server.ssl_port)
        old = account.client()
        try:
            server.restart()
            with pytest.raises((OSError, IMAPClient.AbortError, IMAPClient.Error)):
                old.noop()
        finally:
            old.shutdown()
        assert (server.port, server.ssl_port) == ports
        assert account.messages("INBOX") == {uid: ((), RAW)}
        with account.client() as client:
            assert client.noop()
    assert not server.running
    assert not server.directory.exists()
