"""Files that hold mail: written whole, their owner's only, never through a planted link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imap_ingest import spool
from imap_ingest.files import write_atomic


def test_a_spooled_entry_is_not_written_through_a_planted_link(tmp_path: Path) -> None:
    """A symlink at the name a spool write would once have used leaves its target alone."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    for suffix in ("eml", "json"):
        (directory / f".m.{suffix}.{os.getpid()}").symlink_to(victim)
    eml = spool.keep(directory, "m", b"Subject: x\r\n\r\nbody", {"reason": "not ok"})
    assert victim.read_bytes() == b"untouched"
    assert eml.read_bytes() == b"Subject: x\r\n\r\nbody"


def test_write_atomic_replaces_whole_and_private(tmp_path: Path) -> None:
    """The file is replaced at once, 0600 whatever the umask, with no partial left over."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    old = os.umask(0o022)
    try:
        write_atomic(path, b"new" * 1000)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new" * 1000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway keeps the old content and removes its temporary file."""
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
