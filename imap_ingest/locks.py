"""One worker per folder: an exclusive lock file per account/folder under the state dir."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MailboxError
from .files import private_dir


class FolderBusy(MailboxError):
    """Another imap-ingest is working this folder right now."""


@contextmanager
def folder_lock(state_dir: Path, account: str, folder: str) -> Iterator[None]:
    """Hold the folder's lock while inside; raise FolderBusy at once if another holds it."""
    path = _lock_path(state_dir, account, folder)
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise FolderBusy(f"another imap-ingest (pid {holder}) is working this folder with "
                             f"the same state ({state_dir}); leaving it alone", account=account,
                             folder=folder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def working(state_dir: Path, account: str, folder: str) -> bool:
    """Whether a pass over the folder runs now (in any process, this one included)."""
    try:
        fd = os.open(_lock_path(state_dir, account, folder), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _lock_path(state_dir: Path, account: str, folder: str) -> Path:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{account}--{folder}")[:80]
    digest = hashlib.sha256(f"{account}\0{folder}".encode()).hexdigest()[:12]
    return state_dir / "locks" / f"{readable}.{digest}.lock"
