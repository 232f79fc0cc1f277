"""The spool: mail an MTA piped in that the tracker refused, or a rule or loop check kept
back, kept as ``NAME.eml`` + ``NAME.json`` (0600) until `imap-ingest retry --route` tries it
again. An MTA pipe has no failure folder, and mail it handed over must never be lost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .files import private_dir, write_atomic


@dataclass(frozen=True, slots=True)
class Spooled:
    """One kept message: its file and what the ``.json`` says of it."""

    eml: Path
    about: dict[str, object]

    @property
    def raw(self) -> bytes:
        return self.eml.read_bytes()

    def remove(self) -> None:
        """Forget it: the ``.json`` first, so a half-removed entry is no entry."""
        self.eml.with_suffix(".json").unlink(missing_ok=True)
        self.eml.unlink(missing_ok=True)


def keep(directory: Path, name: str, raw: bytes, about: dict[str, object]) -> Path:
    """Write ``raw`` and ``about`` (with the time) as NAME.eml and NAME.json, each complete
    before it appears; the same NAME again replaces the entry. Returns the .eml path."""
    private_dir(directory)
    eml = directory / f"{name}.eml"
    write_atomic(eml, raw)
    write_atomic(eml.with_suffix(".json"),
           json.dumps({**about, "at": time.time()}, indent=1).encode())
    return eml


def entries(directory: Path) -> Iterator[Spooled]:
    """Every complete entry (a .json beside its .eml), oldest first."""
    if not directory.is_dir():
        return
    found = []
    for about in directory.glob("*.json"):
        eml = about.with_suffix(".eml")
        try:
            data = json.loads(about.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being written or removed right now
        if eml.is_file() and isinstance(data, dict):
            found.append(Spooled(eml, data))
    yield from sorted(found, key=lambda entry: float(str(entry.about.get("at", 0))))
