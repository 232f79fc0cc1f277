"""A scriptable IMAP server on loopback that misbehaves as no real server does.

It greets, takes LOGIN or AUTHENTICATE PLAIN with any password (or refuses it, echoing
the credentials), and answers SELECT, UID
SEARCH and UID FETCH from a ``Script``: it can leave UIDVALIDITY out of SELECT, announce
sizes of its choosing, leave BODY[] out of a FETCH, announce a huge literal, drip its FETCH
answer a byte at a time, or flood untagged ``* OK still thinking`` lines. Every other
command is answered OK. With ``idle``, it offers IDLE and never reports anything in it, as
Cyrus without idled and Courier without enhanced IDLE do, or (``idle_split``) announces
mail in two TCP segments split mid-line. With ``notify``, it offers NOTIFY and refuses
it; with ``idle_bye``, it ends the session in IDLE. With ``greeting``, it drips its greeting
a byte at a time without end, or the start of a TLS handshake (at once, or after agreeing to
STARTTLS). It records the commands it received.
"""

from __future__ import annotations

import base64
import re
import socketserver
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

_PARTIAL = re.compile(rb"<0\.(\d+)>")

Mode = Literal["normal", "no-body", "huge-literal", "drip", "flood"]
Greeting = Literal["normal", "drip", "tls-drip", "starttls-drip"]
# A TLS record header announcing a 16 KB handshake record, whose bytes then come one by one.
_TLS_RECORD = b"\x16\x03\x03\x40\x00"


@dataclass
class Script:
    """What the server holds and how it misbehaves."""

    messages: dict[int, bytes] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)  # announced RFC822.SIZE, if not true
    body_fetch: Mode = "normal"
    select_uidvalidity: bool = True
    idle: bool = False  # offer IDLE, and stay silent in it
    idle_split: bool = False  # in IDLE, announce mail in two segments, mid-line (as pymap may)
    notify: bool = False  # offer NOTIFY, and answer NOTIFY SET with NO
    idle_bye: bool = False  # in IDLE, say BYE and hang up
    drip_delay: float = 0.05
    greeting: Greeting = "normal"
    commands: list[bytes] = field(default_factory=list)
    logins: list[bytes] = field(default_factory=list)
    echo_logins: bool = False  # refuse every login, echoing the credentials it was sent


class HostileImap:
    """The server on a free loopback port, serving ``script``, as a context manager."""

    def __init__(self, script: Script) -> None:
        self.script = script
        handler = type("Handler", (_Handler,), {"script": script})
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(socketserver.StreamRequestHandler):
    script: Script

    @property
    def capabilities(self) -> bytes:
        return (b"IMAP4rev1 AUTH=PLAIN UIDPLUS" + (b" IDLE" if self.script.idle else b"")
                + (b" NOTIFY" if self.script.notify else b"")
                + (b" STARTTLS" if self.script.greeting == "starttls-drip" else b""))

    def handle(self) -> None:
        try:
            if self.script.greeting in ("drip", "tls-drip"):
                self.drip_forever(b"* OK " if self.script.greeting == "drip" else _TLS_RECORD)
            self.send(b"* OK [CAPABILITY %s] hostile ready\r\n" % self.capabilities)
            while line := self.rfile.readline():
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                self.script.commands.append(rest)
                if not self.answer(tag, rest):
                    return
        except OSError:
            return  # the client gave up on us: that is what the tests want

    def drip_forever(self, head: bytes) -> None:
        """``head``, then a byte at a time until the client hangs up (an OSError here)."""
        self.send(head)
        while True:
            time.sleep(self.script.drip_delay)
            self.send(b"x" if head.startswith(b"*") else b"\x00")

    def send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def answer(self, tag: bytes, command: bytes) -> bool:
        """Answer one command; False ends the session."""
        verb = command.split(b" ", 2)
        name = b" ".join(verb[:2]).upper() if verb[0].upper() == b"UID" else verb[0].upper()
        if name == b"CAPABILITY":
            self.send(b"* CAPABILITY %s\r\n" % self.capabilities)
        elif name == b"IDLE":
            self.send(b"+ idling\r\n")
            if self.script.idle_bye:
                self.send(b"* BYE going away\r\n")
                return False
            if self.script.idle_split:
                time.sleep(0.2)
                self.send(b"* 1 EXI")
                time.sleep(0.2)
                self.send(b"STS\r\n")
            self.rfile.readline()  # DONE
        elif name == b"STARTTLS":
            self.send(tag + b" OK begin TLS\r\n")
            self.drip_forever(_TLS_RECORD)
        elif name == b"NOTIFY":
            self.send(tag + b" NO [NOTIFICATIONOVERFLOW] not today\r\n")
            return True
        elif name == b"LOGIN":
            self.script.logins.append(command)
        elif name == b"AUTHENTICATE":
            self.send(b"+ \r\n")
            self.script.logins.append(base64.b64decode(self.rfile.readline().strip()))
        if name in (b"LOGIN", b"AUTHENTICATE") and self.script.echo_logins:
            self.send(tag + b" NO [AUTHENTICATIONFAILED] refused: " + command + b" "
                      + self.script.logins[-1] + b"\r\n")
            return True
        elif name == b"LIST":
            self.send(b'* LIST () "/" INBOX\r\n')
        elif name in (b"SELECT", b"EXAMINE"):
            uids = sorted(self.script.messages)
            self.send(b"* %d EXISTS\r\n* FLAGS (\\Seen \\Deleted)\r\n"
                      b"* OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] ok\r\n"
                      b"* OK [UIDNEXT %d] ok\r\n" % (len(uids), (uids or [0])[-1] + 1))
            if self.script.select_uidvalidity:
                self.send(b"* OK [UIDVALIDITY 7] ok\r\n")
        elif name == b"UID SEARCH":
            self.send(b"* SEARCH " + b" ".join(b"%d" % uid for uid in self.script.messages)
                      + b"\r\n")
        elif name == b"UID FETCH":
            return self.fetch(tag, command)
        elif name == b"LOGOUT":
            self.send(b"* BYE bye\r\n" + tag + b" OK done\r\n")
            return False
        self.send(tag + b" OK done\r\n")
        return True

    def fetch(self, tag: bytes, command: bytes) -> bool:
        if b"BODY" not in command.upper():
            for seq, (uid, raw) in enumerate(sorted(self.script.messages.items()), 1):
                size = self.script.sizes.get(uid, len(raw))
                self.send(b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (seq, uid, size))
            self.send(tag + b" OK done\r\n")
            return True
        mode = self.script.body_fetch
        if mode == "flood":
            while True:
                self.send(b"* OK still thinking\r\n")
                time.sleep(0.01)
        partial = _PARTIAL.search(command)
        answer = b""
        for seq, (uid, raw) in enumerate(sorted(self.script.messages.items()), 1):
            size = self.script.sizes.get(uid, len(raw))
            body = raw[: int(partial[1])] if partial else raw
            item = b"* %d FETCH (UID %d RFC822.SIZE %d FLAGS () " % (seq, uid, size)
            if mode == "huge-literal":
                self.send(item + b"BODY[]<0> {50000000000}\r\n" + body)
                time.sleep(5)
                return False
            if mode != "no-body" or uid != min(self.script.messages):
                item += b"BODY[]%s {%d}\r\n%s" % (b"<0>" if partial else b"", len(body), body)
            answer += item.rstrip(b" ") + b")\r\n"
        answer += tag + b" OK done\r\n"
        if mode == "drip":
            for byte in answer:
                self.send(bytes([byte]))
                time.sleep(self.script.drip_delay)
        else:
            self.send(answer)
        return True

