"""Files holding mail, tokens or the ledger: their owner's only, whatever the umask (022 in
the Docker image and under cron)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` as a directory; what is missing of it, parents too, is created 0700."""
    for directory in reversed([p for p in (path, *path.parents) if not p.exists()]):
        directory.mkdir(mode=0o700, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """``path`` created empty and 0600 when missing, in a private directory; an existing
    file keeps its mode."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once, 0600: a reader or a crash sees the old file
    or the new one, never half of one, and the new one is on disk (renamed too) when this
    returns. The temporary file's name is unpredictable and created O_EXCL (mkstemp): a
    symlink planted beside it is never written through."""
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
