"""`imap-ingest deliver-server`: the MTA's commands without their start-up cost.

One process, single-threaded, imports once what a delivery uses (pydantic, requests, the
trackers) and builds one config per mode so that pydantic's validators are built; then a
child forked per connection delivers the client's message (handoff.py is the client), with
the client's fds, argv, environment and working directory, through the same code as an
in-process delivery (compat.run). Only a client of the server's own uid is served: the
server must never read for a client a key file or a config the client could not read.

Forking is only safe without threads: the HTTP deadline watcher (trackers/_http.py) starts
with the first request, which the server never makes; each child starts its own.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from .errors import EX_CANTCREAT, EX_OK, EX_SOFTWARE
from .handoff import COMMANDS, HEADER_LIMIT, Request, decode, length, peer_uid

log = logging.getLogger("imap_ingest")

IN_FLIGHT = 64  # children at once; past it, connections wait in the listen backlog
HEADER_WAIT = 10.0  # seconds a client has to send its header once connected
_BACKLOG = 128


def preload() -> None:
    """Import what a delivery imports, and build each mode's config once."""
    import argparse

    import pydantic  # noqa: F401
    import requests  # noqa: F401
    import yaml  # noqa: F401  (deliver -c reads a file)

    from . import compat, deliver, logs, rules, tickets  # noqa: F401
    from .config import loader  # noqa: F401
    from .trackers import _http, open_tracker, redmine, rt  # noqa: F401

    parser = argparse.ArgumentParser()
    compat.add_commands(parser.add_subparsers(), "config.yaml")
    for mode, argv in (("rt-mailgate", ["--url", "https://rt.invalid/", "--queue", "q"]),
                       ("rdm-mailhandler", ["--url", "https://rdm.invalid/", "--key", "k"])):
        args = parser.parse_args([mode, *argv, "--state-dir", "/nonexistent"])
        target = compat.rt_target(args) if mode == "rt-mailgate" else \
            compat.redmine_target(args)
        config = compat._compat_config(args, mode, target, {})
        open_tracker(config.targets[mode]).close()  # a session and its pools; no request
    logs.hide(())
    assert _http._WATCHER._thread is None  # no request made: no thread


def serve(path: Path) -> int:
    """Listen on ``path`` until SIGTERM or SIGINT; the exit code."""
    preload()
    gc.freeze()  # the preloaded objects stay out of the children's collections (and pages)
    try:
        listener = _listen(path)
    except OSError as exc:
        log.error("deliver-server: cannot listen on %s: %s", path, exc.strerror or exc)
        return EX_CANTCREAT
    listening = listener.fileno()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.set_wakeup_fd(wake_write)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake select()
    children: set[int] = set()
    log.info("deliver-server: listening on %s (pid %d)", path, os.getpid())
    try:
        while not stopping:
            _reap(children)
            ready = [wake_read] if len(children) >= IN_FLIGHT else [wake_read, listening]
            readable, _, _ = select.select(ready, [], [])
            if wake_read in readable:
                os.read(wake_read, 512)
            if listening in readable and (
                    pid := _accept(listener, (wake_read, wake_write))) is not None:
                children.add(pid)
    finally:
        listener.close()
        path.unlink(missing_ok=True)
        signal.set_wakeup_fd(-1)
        os.close(wake_read)
        os.close(wake_write)
    log.info("deliver-server: stopped; waiting for %d deliveries in hand", len(children))
    for pid in children:
        with contextlib.suppress(ChildProcessError):  # reaped by the last _reap
            os.waitpid(pid, 0)
    return EX_OK


def _listen(path: Path) -> socket.socket:
    """A socket of mode 0600 at ``path``, replacing one a dead server left; OSError when
    another server answers there, or the path is not a socket."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                log.info("deliver-server: replacing %s, left by a server that is gone", path)
                path.unlink()
            else:
                raise OSError(errno.EADDRINUSE, f"another deliver-server is running on {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # 0600 from the start: no moment when others may connect
    try:
        listener.bind(str(path))
    finally:
        os.umask(umask)
    listener.listen(_BACKLOG)
    return listener


def _accept(listener: socket.socket, keep_out: tuple[int, ...]) -> int | None:
    """Fork a child for the next connection; its pid, None when there was none to serve
    (the client gave up, or no fd or process was to be had: its client sees EOF, 75)."""
    try:
        connection, _ = listener.accept()
    except OSError as exc:  # ECONNABORTED, EMFILE: the next connection may do
        log.warning("deliver-server: cannot accept a connection: %s", exc.strerror)
        return None
    with connection:
        if threading.active_count() != 1:  # a thread would be copied mid-way, locks held
            raise RuntimeError("deliver-server has threads: forking is unsafe")
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("deliver-server: cannot fork a child: %s", exc.strerror)
            return None
        if pid == 0:
            signal.set_wakeup_fd(-1)  # before its fd is closed (and its number reused)
            listener.close()  # else a dead server's clients would queue on the child's copy
            for fd in keep_out:
                os.close(fd)
            _child(connection)
    log.debug("deliver-server: child %d delivers for a connection", pid)
    return pid


def _child(connection: socket.socket) -> NoReturn:
    """Serve one client, write its exit code, exit. A crash writes none: the client's EOF."""
    code = EX_SOFTWARE
    try:
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        uid = peer_uid(connection)
        if uid != os.geteuid():
            log.warning("deliver-server: refused a client of uid %d (only uid %d is served: "
                        "it delivers in-process with its own rights)", uid, os.geteuid())
            os._exit(code)
        connection.settimeout(HEADER_WAIT)
        try:
            request = _receive(connection)
        except (OSError, ValueError) as exc:  # too slow, too big, malformed; or its cwd
            log.warning("deliver-server: a client's hand-off failed: %s", exc)
            os._exit(code)
        if request.argv[:1] not in ([command] for command in COMMANDS):
            log.warning("deliver-server: refused a client's command %r", request.argv[:1])
            os._exit(code)
        connection.settimeout(None)
        from . import compat

        code = _exit_code(compat.run, request.argv)
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):  # the client is gone (the MTA killed it)
            connection.sendall(bytes([code & 0xFF]))
    except BaseException:  # whatever it was, the client sees EOF
        traceback.print_exc()
        sys.stderr.flush()
    os._exit(code)


def _receive(connection: socket.socket) -> Request:
    """Take over the client's request: its fds as 0, 1 and 2, its environment and cwd."""
    data, fds, flags, _ = socket.recv_fds(connection, HEADER_LIMIT + 4, 3)
    try:
        if len(fds) != 3 or flags & socket.MSG_CTRUNC:
            raise ValueError(f"hand-off: {len(fds)} fds received, 3 expected")
        data = _read_to(connection, data, 4)
        size = length(data)
        request = decode(_read_to(connection, data, 4 + size)[4:])
        for handler in logging.getLogger().handlers[:]:  # the server's, on its stderr
            logging.getLogger().removeHandler(handler)
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
            if getattr(sys, name) is None:  # the server started with the fd closed
                setattr(sys, name, open(  # noqa: SIM115  (for the child's lifetime)
                    ("stdin", "stdout", "stderr").index(name), mode, closefd=False))
    finally:
        for fd in fds:
            os.close(fd)
    os.environ.clear()
    os.environ.update(request.env)
    os.chdir(request.cwd)
    sys.argv = ["imap-ingest", *request.argv]
    return request


def _read_to(connection: socket.socket, data: bytes, size: int) -> bytes:
    """``data`` and what follows it on ``connection``, ``size`` bytes in all."""
    while len(data) < size:
        more = connection.recv(size - len(data))
        if not more:
            raise ValueError("hand-off: the client closed mid-header")
        data += more
    return data


def _exit_code(run: Callable[[list[str]], int], argv: list[str]) -> int:
    """``run(argv)``'s code, also when it exits (argparse's usage errors, --help)."""
    try:
        code: int = run(argv)
        return code
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def _reap(children: set[int]) -> None:
    """Forget the children that have exited."""
    while children:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if not pid:
            return
        children.discard(pid)
