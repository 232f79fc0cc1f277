"""A directory as a tracker: each accepted message is written as ``NAME.eml`` (the raw bytes)
and ``NAME.json`` (the webhook document without the raw copy).

Useful as an archive of every accepted message (e.g. for spam training) and for trying the
tool without a tracker. The name comes from where the message was (account, folder,
UIDVALIDITY, UID), so writing the same message again replaces its files instead of adding
a second copy.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from ..config import SubmitOptions, Target
from ..files import private_dir, write_atomic
from . import Envelope, Kind, Outcome
from .registry import register
from .webhook import document


class DirectoryTarget(Target):
    """A directory: each message as NAME.eml plus a NAME.json summary (an archive, a demo)."""

    type: Literal["directory"]
    path: Path


def name_for(envelope: Envelope) -> str:
    """A file name stem that is the same each time one message is written."""
    where = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{envelope.account}-{envelope.folder}")
    return f"{where}-{envelope.uidvalidity}-{envelope.uid}"


class Directory:
    def __init__(self, target: DirectoryTarget) -> None:
        self._path = target.path

    def submit(self, raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
        stem = name_for(envelope)
        summary = document(raw, options, envelope, attachment_limit=0)
        del summary["raw_base64"]  # the .eml beside it is the raw message
        try:
            private_dir(self._path)
            write_atomic(self._path / f"{stem}.eml", raw)
            write_atomic(self._path / f"{stem}.json",
                         json.dumps(summary, ensure_ascii=False, indent=2).encode())
        except OSError as exc:
            return Outcome(Kind.TEMPORARY, f"cannot write to {self._path}: {exc.strerror}")
        return Outcome(Kind.SUCCESS, f"written to {self._path / stem}.eml", ticket=stem)

    def preview(self, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> tuple[str, list[tuple[str, str]]]:
        stem = name_for(envelope)
        return f"write into {self._path}", [("files", f"{stem}.eml, {stem}.json")]

    def check(self) -> Outcome:
        if os.access(self._path if self._path.exists() else self._path.parent, os.W_OK):
            return Outcome(Kind.SUCCESS, f"{self._path} is writable")
        return Outcome(Kind.CONFIG, f"{self._path} is not writable")

    def close(self) -> None:
        pass


register(DirectoryTarget, Directory)
