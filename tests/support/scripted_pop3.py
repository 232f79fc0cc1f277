"""A tiny scripted POP3 server for what no real server does: no UIDL (RFC 1939 makes it
optional), a LIST that understates sizes. It serves a list of messages to USER/PASS,
LIST, TOP, RETR, DELE and QUIT."""

from __future__ import annotations

import socketserver
import threading


class ScriptedPop3:
    """POP3 on a free loopback port, with ``messages`` as the maildrop; DELEs take effect
    at QUIT, as RFC 1939 says."""

    def __init__(self, messages: list[bytes], listed_size: int | None = None) -> None:
        self.messages = list(messages)
        self.listed_size = listed_size  # what LIST claims every message's size is
        self.commands: list[str] = []
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                fake._session(self)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _session(self, handler: socketserver.StreamRequestHandler) -> None:
        def send(data: bytes) -> None:
            handler.wfile.write(data)

        def multi(data: bytes) -> None:
            lines = [b"." + line if line.startswith(b".") else line
                     for line in data.removesuffix(b"\r\n").split(b"\r\n")]
            send(b"+OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n")

        send(b"+OK scripted POP3 without UIDL\r\n")
        deleted: set[int] = set()
        while line := handler.rfile.readline():
            words = line.decode().split()
            verb = words[0].upper() if words else ""
            self.commands.append(verb)
            number = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
            if verb in ("USER", "PASS", "NOOP"):
                send(b"+OK\r\n")
            elif verb == "LIST":
                multi(b"".join(b"%d %d\r\n" % (n, self.listed_size or len(m))
                               for n, m in enumerate(self.messages, 1)))
            elif verb == "RETR":
                multi(self.messages[number - 1])
            elif verb == "TOP":
                multi(self.messages[number - 1].split(b"\r\n\r\n")[0] + b"\r\n")
            elif verb == "DELE":
                deleted.add(number)
                send(b"+OK\r\n")
            elif verb == "QUIT":
                self.messages = [m for n, m in enumerate(self.messages, 1) if n not in deleted]
                send(b"+OK\r\n")
                return
            else:
                send(b"-ERR unknown command\r\n")
