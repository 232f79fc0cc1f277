"""`imap-ingest export-training`: the archived messages whose tickets staff have judged,
written as Maildirs ``spam/`` and ``ham/`` for ``sa-learn --spam DIR`` / ``--ham DIR``.

The tracker is asked about the archived tickets a hundred at a time; the filters are in its
own terms (``queue=Spam status=rejected`` for RT, ``tracker=Spam status=Rejected`` for
Redmine), matched without case, ``*`` and ``?`` as in shell patterns, ``!=`` negating. What
is exported is recorded in the ledger, so a second run exports nothing twice; a message
whose ticket is undecided yet waits for a later run, until its archive's ``keep_for``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path

from .archive import prune, put
from .config import Config
from .errors import ConfigError
from .ledger import Archived, Ledger, open_ledger
from .locks import folder_lock
from .message import Message
from .tickets import Fields, Submitted, Tickets, open_tickets

KINDS = ("spam", "ham")
_LEARNED = re.compile(r"Learned tokens from (\d+) message\(s\) \((\d+) message\(s\) examined\)")


@dataclass(frozen=True, slots=True)
class Term:
    field: str
    pattern: str  # lower-case shell pattern
    negated: bool = False


Filter = tuple[Term, ...]


def parse_filter(text: str) -> Filter:
    """``queue=spam status=rejected`` → terms that must all hold."""
    terms = []
    for word in shlex.split(text):
        term = re.fullmatch(r"([A-Za-z_]+)(!?=)(.*)", word)
        if term is None:
            raise ValueError(f"{word!r} is not FIELD=VALUE or FIELD!=VALUE")
        terms.append(Term(term[1].lower(), term[3].lower(), term[2] == "!="))
    if not terms:
        raise ValueError("an empty filter would match every ticket")
    return tuple(terms)


def matches(terms: Filter, fields: Fields) -> bool:
    """Every term holds for the ticket (a field holds when its name or id matches)."""
    return all(any(fnmatchcase(value.lower(), term.pattern)
                   for value in fields.get(term.field, [])) != term.negated for term in terms)


def judge(fields: Fields, spam: Filter, ham: Filter) -> str | None:
    """spam, ham, or None: undecided (or matched by both, which only a wrong filter does)."""
    found = [kind for kind, terms in (("spam", spam), ("ham", ham)) if matches(terms, fields)]
    return found[0] if len(found) == 1 else None


@dataclass
class Report:
    """What one export did."""

    exported: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    undecided: int = 0  # the ticket is neither yet
    unknown: int = 0  # no ticket found (or the target has no read credentials)
    missing: int = 0  # the archived file is gone
    pruned: int = 0
    requests: int = 0  # made to the trackers
    learned: dict[str, str] = field(default_factory=dict)  # sa-learn's counts by kind

    def lines(self) -> list[str]:
        done = ", ".join(f"{n} {kind}" for kind, n in self.exported.items())
        lines = [f"exported {done}; {self.undecided} undecided, {self.unknown} without a "
                 f"known ticket, {self.missing} missing, {self.pruned} pruned; "
                 f"{self.requests} tracker requests"]
        lines += [f"sa-learn --{kind}: {said}" for kind, said in self.learned.items()]
        return lines


def export(config: Config, since: float, spam: Filter, ham: Filter, out: Path,
           target: str | None = None, learn: list[str] | None = None) -> Report:
    """Export what was archived in the last ``since`` seconds and is judged now; prune
    every archive by its keep_for; with ``learn`` (the sa-learn command), learn it."""
    if target is not None and target not in config.targets:
        raise ConfigError(f"export-training --target {target}: no such target")
    report = Report()
    # One export at a time; the service goes on archiving meanwhile (the ledger is shared).
    with folder_lock(config.state_dir, "export-training", "-"):
        ledger = open_ledger(config)
        try:
            now = time.time()
            report.pruned = prune(config, ledger, now)
            waiting: dict[str, list[Archived]] = {}
            for one in ledger.unexported(now - since):
                if target in (None, one.target):
                    waiting.setdefault(one.target, []).append(one)
            for name, archived in waiting.items():
                tickets = open_tickets(config.targets[name])
                if tickets is None:
                    report.unknown += len(archived)
                    continue
                try:
                    _export(ledger, tickets, archived, spam, ham, out, report)
                finally:
                    report.requests += tickets.requests
                    tickets.close()
        finally:
            ledger.close()
    if learn is not None:
        report.learned = {kind: sa_learn(learn, kind, out / kind) for kind in KINDS}
    return report


def _export(ledger: Ledger, tickets: Tickets, archived: list[Archived], spam: Filter,
            ham: Filter, out: Path, report: Report) -> None:
    present = [one for one in archived if one.path.is_file()]
    report.missing += len(archived) - len(present)
    unknown = [one for one in present if one.ticket is None]
    if unknown:  # taken while the tracker could not say, or before credentials were set
        found = tickets.find([Submitted.of(one.id, Message(_headers(one.path)), str(one.path),
                                           one.at) for one in unknown])
        ledger.tickets_found(found)
        present = [replace(one, ticket=found.get(one.id, one.ticket)) for one in present]
    known = [one for one in present if one.ticket is not None]
    report.unknown += len(present) - len(known)
    now = tickets.fields(sorted({str(one.ticket) for one in known}))
    judged: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for one in known:
        kind = judge(now.get(str(one.ticket), {}), spam, ham)
        if kind is None:
            report.undecided += 1
            continue
        # Named by content: a run cut short after writing writes the same file again.
        put(out / kind, f"{one.digest[:32]}.imap-ingest:2,S", one.path.read_bytes(), "cur")
        judged[kind].append(one.id)
    for kind, ids in judged.items():
        ledger.exported(ids, kind)
        report.exported[kind] += len(ids)


def _headers(path: Path) -> bytes:
    """The head of an archived message: enough for its Message-ID and Subject."""
    with path.open("rb") as file:
        return file.read(64 * 1024)


def sa_learn(command: list[str], kind: str, directory: Path) -> str:
    """Run ``sa-learn --spam|--ham DIRECTORY``; its count, or why it failed."""
    if not directory.is_dir():
        return "nothing to learn"
    try:
        done = subprocess.run([*command, f"--{kind}", str(directory)], capture_output=True,
                              text=True, timeout=3600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run {shlex.join(command)}: {exc}"
    counted = _LEARNED.search(done.stdout)
    if done.returncode != 0 or not counted:
        return f"failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:300]}"
    return f"learned from {counted[1]} message(s), {counted[2]} examined"
