"""The status listener holds out against slow and half-open clients: each connection times
out, and handler threads are bounded."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

from imap_ingest.config import Http
from imap_ingest.health import StatusServer

from .test_daemon import free_port


def _silent(port: int) -> socket.socket:
    """A client that connects and never sends its request."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_a_silent_connection_is_closed_after_the_timeout() -> None:
    """A half-open client is dropped after the per-connection timeout."""
    status = StatusServer(Http(listen=f"127.0.0.1:{free_port()}"), timeout=0.5)
    try:
        client = _silent(status.port)
        started = time.monotonic()
        assert client.recv(1) == b""  # the server hung up
        assert time.monotonic() - started < 5
        client.close()
    finally:
        status.close()


def test_handler_threads_are_bounded_and_probes_answer_after() -> None:
    """Fifty silent clients hold at most ``threads`` handler threads; once they time out,
    /healthz answers again."""
    before = threading.active_count()
    status = StatusServer(Http(listen=f"127.0.0.1:{free_port()}"), timeout=1, threads=4)
    try:
        clients = [_silent(status.port) for _ in range(50)]
        time.sleep(0.3)
        assert threading.active_count() - before <= 1 + 4  # the serving thread + handlers
        for client in clients:
            client.close()
        time.sleep(1.5)
        url = f"http://127.0.0.1:{status.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.read() == b"ok\n"
    finally:
        status.close()
