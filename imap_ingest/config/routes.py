"""``routes:``: mail an MTA pipes in (``imap-ingest deliver --route NAME``), with a folder's
tracker options, rules and loop settings but no IMAP folder around it."""

from __future__ import annotations

from pathlib import Path

from .archive import Archive
from .folders import FailureFolder, Folder, Rule, SubmitOptions
from .values import Size, parse_size


class Route(SubmitOptions):
    """One MTA delivery route: tracker options and rules as a folder has them; what a folder
    would move aside (refused, held, skipped) is appended to ``failure_folder``, if set and
    reachable, else kept in ``spool_on_failure``."""

    rules: list[Rule] = []
    loops_folder: str | None = None  # named in the spooled record; there is no IMAP here
    max_message_size: Size = parse_size("25M")
    failure_folder: FailureFolder | None = None
    spool_on_failure: Path | None = None  # unset: STATE_DIR/spool/ROUTE
    archive: Archive | None = None  # unset: the top-level archive:, if any

    def as_folder(self, name: str) -> Folder:
        """The route as the folder the rules and policy are compiled for."""
        # The rules as they are: dumped, they would not read back (aliases, defaults).
        return Folder(name=name, rules=self.rules,
                      **self.model_dump(exclude={"rules", "failure_folder",
                                                   "spool_on_failure"}))
