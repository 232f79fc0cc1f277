"""A scriptable HTTP server on loopback for what no real tracker does on purpose: answers of
hundreds of megabytes, answers dripped a byte at a time, answers that never come."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

# Sends the answer on the connection, once the request has been read.
Script = Callable[[socket.socket], None]


class HostileHttp:
    """Reads each request (head and Content-Length body), then runs ``script`` on the
    connection; ``served`` counts the requests read, ``connections`` the connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.served = self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                while _read_request(connection):
                    self.served += 1
                    self.script(connection)
            except OSError:
                pass  # the client hung up: what the tests want of it


def _read_request(connection: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def huge(status: int, size: int, first: bytes = b"") -> Script:
    """An answer of ``size`` bytes (``first``, then zeros), sent as fast as it is read."""
    def script(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                           % (status, size, first))
        block = b"0" * 65536
        for _ in range((size - len(first)) // len(block)):
            connection.sendall(block)
        connection.sendall(block[:(size - len(first)) % len(block)])
    return script


def drip(answer: bytes, every: float, head: bytes = b"") -> Script:
    """``head`` at once, then ``answer`` one byte every ``every`` seconds."""
    def script(connection: socket.socket) -> None:
        connection.sendall(head)
        for byte in answer:
            connection.sendall(bytes((byte,)))
            time.sleep(every)
    return script


def silent(connection: socket.socket) -> None:
    """No answer at all, for as long as the client waits."""
    while connection.recv(65536):
        pass
