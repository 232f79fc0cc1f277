"""A zero-cost tracker: an HTTP/1.1 keep-alive server in its own process that answers every
request at once (201 and an empty body, or STATUS and BODY) and counts them. Prints its
port, then runs until killed; on SIGTERM prints the number of requests it answered.

    python -m bench.sink [STATUS [BODY]]
"""

from __future__ import annotations

import asyncio
import signal
import sys

ANSWERED = 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global ANSWERED
    status = sys.argv[1] if len(sys.argv) > 1 else "201"
    body = sys.argv[2].encode() if len(sys.argv) > 2 else b""
    reply = f"HTTP/1.1 {status} Answered\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            ANSWERED += 1
            writer.write(reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=64 * 1024 * 1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(ANSWERED, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
