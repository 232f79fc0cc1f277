"""A hostile IMAP server no real one imitates: it refuses every LOGIN and AUTHENTICATE and
echoes the credentials it was sent in its refusal."""

from __future__ import annotations

import socketserver
import threading


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] echo ready\r\n")
        while line := self.rfile.readline():
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            command, _, args = rest.partition(b" ")
            verb = command.upper()
            if verb == b"CAPABILITY":
                self.wfile.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
            elif verb in (b"LOGIN", b"AUTHENTICATE"):
                self.wfile.write(tag + b" NO [AUTHENTICATIONFAILED] refused: " + verb + b" "
                                 + args + b"\r\n")
            elif verb == b"LOGOUT":
                self.wfile.write(b"* BYE echo\r\n" + tag + b" OK bye\r\n")
                return
            else:
                self.wfile.write(tag + b" BAD unknown\r\n")


class EchoImap:
    """The server on a loopback port, until ``close``."""

    def __init__(self) -> None:
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
