"""The thin client of `imap-ingest deliver-server`: an MTA's command hands its stdin, stdout,
stderr, argv, environment and working directory to the running server, whose forked child
delivers, and exits with the code the child sends back (as spamc does to spamd).

Standard library only, and little of it: this runs in every process an MTA starts, before
anything heavy is imported. No server (no socket, or a stale one), or one that is not ours
to use: the caller delivers in-process, as without a server.

The frame, client to server: 4 bytes of big-endian length, then that many bytes of JSON
``{"argv": [...], "env": {...}, "cwd": "..."}``, sent with fds 0, 1 and 2 (SCM_RIGHTS).
Server to client: one byte, the exit code. EOF before it (the child crashed, or was
killed) is EX_TEMPFAIL: the MTA tries again, and the ledger dedupes that retry.
"""

from __future__ import annotations

import _socket  # socket.py's enums of every constant cost 5-10 ms a process
import array
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple

SOCKET_VARIABLE = "IMAP_INGEST_DELIVER_SOCKET"
# A fixed path: an MTA's pipe runs with an environment of its own making (Postfix: a few
# variables), so none can tell it where a per-user socket is. /run is emptied at boot,
# and systemd's RuntimeDirectory= makes /run/imap-ingest the server's user's, mode 0700.
DEFAULT_SOCKET = "/run/imap-ingest/deliver.sock"
HEADER_LIMIT = 64 * 1024  # argv and an MTA's environment are a few hundred bytes
COMMANDS = ("deliver", "rt-mailgate", "rdm-mailhandler")
RT_TIMEOUT = 180.0  # rt-mailgate's default, and deliver's
RDM_TIMEOUT = 60.0  # rdm-mailhandler has none: Net::HTTP's open and read timeouts
GRACE = 5.0  # past --timeout, for the child's own alarm to end it first
EX_TEMPFAIL = 75  # errors.EX_TEMPFAIL (errors imports logging)
_LENGTH = 4


class Request(NamedTuple):  # not a dataclass: dataclasses imports inspect, 10 ms
    """What a client hands over besides its fds."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


def socket_path(environ: Mapping[str, str]) -> str:
    """The server's socket: $IMAP_INGEST_DELIVER_SOCKET, else DEFAULT_SOCKET."""
    return environ.get(SOCKET_VARIABLE) or DEFAULT_SOCKET


def encode(request: Request) -> bytes:
    """The frame for ``request``; ValueError when it is over HEADER_LIMIT."""
    body = json.dumps({"argv": request.argv, "env": request.env, "cwd": request.cwd},
                      separators=(",", ":")).encode()
    if len(body) > HEADER_LIMIT:
        raise ValueError(f"hand-off header of {len(body)} bytes, over {HEADER_LIMIT}")
    return len(body).to_bytes(_LENGTH, "big") + body


def length(prefix: bytes) -> int:
    """The body length a frame's first bytes announce; ValueError past HEADER_LIMIT."""
    size = int.from_bytes(prefix[:_LENGTH], "big")
    if size > HEADER_LIMIT:
        raise ValueError(f"hand-off header of {size} bytes announced, over {HEADER_LIMIT}")
    return size


def decode(body: bytes) -> Request:
    """The request a frame's body holds; ValueError for anything but the expected shape."""
    data = json.loads(body)
    if not isinstance(data, dict) or set(data) != {"argv", "env", "cwd"}:
        raise ValueError("hand-off header: not an object of argv, env and cwd")
    argv, env, cwd = data["argv"], data["env"], data["cwd"]
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)
            and isinstance(env, dict) and all(isinstance(v, str) for v in env.values())
            and isinstance(cwd, str)):
        raise ValueError("hand-off header: argv, env or cwd of the wrong type")
    return Request(argv, env, cwd)


def wait_seconds(argv: Sequence[str]) -> float:
    """How long the command may take: its --timeout (the last one, as argparse reads it,
    also abbreviated or as --timeout=S), else the command's default."""
    seconds = RDM_TIMEOUT if argv[:1] == ["rdm-mailhandler"] else RT_TIMEOUT
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if len(flag) < 4 or not "--timeout".startswith(flag):
            continue
        if not equals:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        try:
            seconds = float(value)
        except ValueError:
            continue  # argparse refuses it; the child says so
    return seconds


def peer_uid(connection: _socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED's struct ucred: pid, uid, gid)."""
    credentials = connection.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(credentials[4:8], sys.byteorder)  # in the host's byte order


def hand_over(argv: Sequence[str]) -> int | None:
    """Deliver through the server: the exit code, or None when there is no server of ours
    to hand over to (the caller then delivers in-process)."""
    try:
        for fd in (0, 1, 2):  # each open, else the socket would take its number
            os.fstat(fd)
        frame = encode(Request(list(argv), dict(os.environ), os.getcwd()))
    except (OSError, ValueError):  # a closed fd, the cwd gone, or a huge environment
        return None
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.settimeout(wait_seconds(argv) + GRACE)
        try:
            connection.connect(socket_path(os.environ))
        except OSError:  # no server, a dead one's socket, a full backlog, or not ours
            return None
        if peer_uid(connection) != os.geteuid():
            return None  # our stdin and environment go to no one else's process
        try:
            sent = connection.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                                 array.array("i", (0, 1, 2)))])
        except OSError:  # nothing went: deliver it here
            return None
        try:
            while sent < len(frame):
                sent += connection.send(frame[sent:])
            code = connection.recv(1)
        except OSError:  # the child died, or took longer than its own --timeout
            return EX_TEMPFAIL
    finally:
        connection.close()
    return code[0] if code else EX_TEMPFAIL
