"""Files holding mail, tokens or the ledger: their owner's only, whatever the umask (022 in
the Docker image and under cron)."""

from __future__ import annotations

import os
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
