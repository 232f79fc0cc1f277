"""A TCP relay on a fixed loopback port in front of a real tracker: the network between an
MTA's pipe and the tracker, scripted. Not a fake tracker: every byte that passes is the
real tracker's.

Before ``start()`` nothing listens on the port (connection refused: the tracker is down).
Each connection is handled as ``mode`` says when it is accepted:
PASS forwards both ways; HOLD forwards the request but never the answer (the tracker takes
the message, the answer is lost on the way back); SWALLOW reads the request and forwards
nothing (the tracker never sees it). Connections are held until the client closes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from enum import Enum

_CHUNK = 65536


class Mode(Enum):
    PASS = "pass"
    HOLD = "hold"
    SWALLOW = "swallow"


class Relay:
    """127.0.0.1:``port`` relayed to 127.0.0.1:``upstream``."""

    def __init__(self, port: int, upstream: int, mode: Mode = Mode.PASS) -> None:
        self.port, self.upstream, self.mode = port, upstream, mode
        self.accepted = 0  # connections taken, whatever became of them
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Listen on the port from now on (SO_REUSEADDR: it may have been used just now)."""
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.2)  # so that close() ends the accept loop soon
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name=f"relay {self.port}").start()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            client.settimeout(None)
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client, self.mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: Mode) -> None:
        self._track(client)
        if mode is Mode.SWALLOW:
            self._pump(client, None)
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, None if mode is Mode.HOLD
                                                  else client), daemon=True).start()
        self._pump(client, upstream)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket | None) -> None:
        """Copy ``source`` to ``sink`` (None: drop it) until ``source`` ends."""
        with contextlib.suppress(OSError):
            while data := source.recv(_CHUNK):
                if sink is not None:
                    sink.sendall(data)
            if sink is not None:
                sink.shutdown(socket.SHUT_WR)


def closed_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports with nothing listening on them (yet)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:  # all bound at once, so the kernel gives each its own
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()
