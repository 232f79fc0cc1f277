"""What a folder says: its tracker options, its rules and their actions."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from .. import captures, conditions, loops
from .archive import Archive
from .smime import SMime
from .values import Duration, Model, Size, parse_duration, parse_size


def _check_condition(item: str | dict[str, Any]) -> str | dict[str, Any]:
    conditions.parse(item)
    return item


def _check_name(name: str) -> str:
    if name not in loops.NAMES:
        raise ValueError(f"{name!r} is not a built-in check: {', '.join(loops.NAMES)}")
    return name


Condition = Annotated[str | dict[str, Any], AfterValidator(_check_condition)]
CheckName = Annotated[str, AfterValidator(_check_name)]


class Rate(NamedTuple):
    """At most ``limit`` in any ``seconds``."""

    limit: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.limit} per {self.seconds:g} s"


def parse_rate(value: object) -> Rate:
    """``"20/h"``, ``"50/1h"``, ``"20/2s"`` → Rate."""
    if isinstance(value, Rate):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\S+)\s*", str(value))
    if not match or int(match[1]) < 1:
        raise ValueError(f"{value!r} is not a rate such as 20/h, 50/1h or 20/2s")
    window = match[2]
    return Rate(int(match[1]), parse_duration(window if window[0].isdigit() else "1" + window))


# Dumped as written, so that a dumped configuration validates again.
RateValue = Annotated[Rate, BeforeValidator(parse_rate),
                      PlainSerializer(lambda rate: f"{rate.limit}/{rate.seconds:g}s")]


class Flood(Model):
    """Ingest-side rate limits: mail beyond them is held (flood_folder, else loops_folder)."""

    per_sender: RateValue | None = None  # per From address
    per_subject: RateValue | None = None  # per subject without Re:/Fwd: and [tags]


_DOMAIN = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")


def _check_sender(value: str) -> str:
    entry = value.strip().lower()
    local, at, domain = entry.rpartition("@")
    if (at and (not local or any(c in local for c in " *<>,"))) or not _DOMAIN.fullmatch(
            domain.removeprefix("*.") if not at else domain):
        raise ValueError(f"{value!r} is not an address, a domain or *.domain")
    return entry


class AllowSenders(Model):
    """Mail From these senders passes the named built-in checks (``lift``); by default all
    of them but the own-tracker ones (redmine, rt, own-address), which are the loop itself."""

    senders: Annotated[list[Annotated[str, AfterValidator(_check_sender)]],
                       Field(min_length=1)]
    lift: list[CheckName] = Field(default_factory=lambda: [
        name for name in loops.NAMES if name not in loops.OWN_CHECKS])

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        return {"senders": [value]} if isinstance(value, str) else value

    def matches(self, sender: str) -> str | None:
        """The entry ``sender`` (a lower-cased address) matches, or None."""
        domain = sender.rpartition("@")[2]
        for entry in self.senders:
            if entry in (sender, domain) or (
                    entry.startswith("*.") and domain.endswith(entry[1:])):
                return entry
        return None


class Start(NamedTuple):
    """Where a folder's first run starts: ``all``, ``new``, or ``since`` a time."""

    mode: str  # all | new | since
    since: float | None = None  # since: an absolute time; None with a duration
    ago: float | None = None  # since: a duration before the first run

    def since_at(self, first_run: float) -> float | None:
        """The time before which mail is left alone, for a first run at ``first_run``."""
        return self.since if self.since is not None else (
            first_run - self.ago if self.ago is not None else None)


def parse_start(value: object) -> Start:
    """``all``, ``new``, ``since:2024-05-01`` (ISO date or time, local without a zone) or
    ``since:7d``."""
    if isinstance(value, Start):
        return value
    text = str(value).strip()
    if text in ("all", "new"):
        return Start(text)
    if text.startswith("since:"):
        when = text.removeprefix("since:").strip()
        try:
            return Start("since", ago=parse_duration(when))
        except ValueError:
            pass
        try:
            return Start("since", since=datetime.fromisoformat(when).timestamp())
        except ValueError:
            pass
    raise ValueError(f"{text!r}: start is all, new, since:DATE (2024-05-01) or since:DURATION "
                     "(7d)")


def _start_text(start: Start) -> str:
    if start.mode != "since":
        return start.mode
    return f"since:{start.ago:g}s" if start.ago is not None else (
        f"since:{datetime.fromtimestamp(start.since or 0).isoformat()}")


StartValue = Annotated[Start, BeforeValidator(parse_start), PlainSerializer(_start_text)]


class SubmitOptions(Model):
    """Per-message tracker options: set on a folder, overridden by a rule's ``submit``."""

    target: str | None = None
    project: str | None = None
    tracker: str | None = None
    category: str | None = None
    priority: str | None = None
    status: str | None = None
    assigned_to: str | None = None
    fixed_version: str | None = None
    allow_override: str | None = None
    is_private: bool | None = None  # Redmine: issue[is_private]
    queue: str | None = None  # RT
    action: str | None = None  # RT: correspond, comment, take, resolve, chained with -

    @field_validator("allow_override", mode="before")
    @classmethod
    def _join_list(cls, value: object) -> object:
        return ",".join(map(str, value)) if isinstance(value, list) else value

    def merged(self, overrides: SubmitOptions) -> SubmitOptions:
        """These options with every field ``overrides`` sets replacing ours."""
        return self.model_copy(update=overrides.model_dump(exclude_none=True))

    def options(self) -> SubmitOptions:
        """Just the tracker options, without whatever a subclass adds."""
        fields = set(SubmitOptions.model_fields)
        return SubmitOptions.model_validate(self.model_dump(include=fields))


class Action(Model):
    """What a matching rule does: one of submit, skip, move, discard (copy may stand alone,
    then the next rules are tried); header edits go with submit."""

    model_config = ConfigDict(populate_by_name=True)

    submit: SubmitOptions | None = None
    skip: bool = False
    move: str | None = None
    discard: bool = False
    copy_to: str | None = Field(None, alias="copy")
    set_header: dict[str, str] = {}
    remove_header: list[str] = []
    from_header: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: object) -> object:
        if value in ("submit", "skip", "discard"):
            return {value: {} if value == "submit" else True}
        if isinstance(value, str):
            raise ValueError(f"{value!r} is not an action: use submit, skip, discard, "
                             "{submit: {OPTION: VALUE}}, {move: FOLDER} or {copy: FOLDER}")
        if isinstance(value, dict):
            if value.get("submit", 0) is None:
                value = {**value, "submit": {}}
            if isinstance(value.get("remove_header"), str):
                value = {**value, "remove_header": [value["remove_header"]]}
        return value

    @model_validator(mode="after")
    def _one_outcome(self) -> Action:
        final = sum((self.submit is not None, self.skip, self.move is not None, self.discard))
        if final > 1 or (final == 0 and self.copy_to is None):
            raise ValueError("give one of submit, skip, move, discard (copy may stand alone)")
        if self.submit is None and (self.set_header or self.remove_header or self.from_header):
            raise ValueError("set_header, remove_header and from_header go with submit")
        return self

    @property
    def edits_headers(self) -> bool:
        return bool(self.set_header or self.remove_header or self.from_header)


class Rule(Model):
    """``if`` all conditions hold (none: always), ``then`` act; ``allow`` lifts the named
    built-in loop checks for this rule's submit. ``use: NAME`` (or just the name) stands
    for a rule of the top-level ``rules:``."""

    model_config = ConfigDict(populate_by_name=True)

    name: str | None = None
    use: str | None = None
    enabled: bool = True
    if_: list[Condition] = Field(default=[], alias="if")
    allow: list[CheckName] = []
    then: Action | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        return {"use": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _use_or_then(self) -> Rule:
        if self.use is not None and (self.then or self.if_ or self.allow or self.name
                                     or not self.enabled):
            raise ValueError("a rule with use: takes nothing else")
        if self.use is None and self.then is None:
            raise ValueError("a rule needs then: (or use: NAME of a top-level rule)")
        if self.then is not None:
            known = frozenset().union(*(conditions.parse(item).captures for item in self.if_))
            submit = self.then.submit
            _check_placeholders([*_texts(submit), *self.then.set_header.values()] if submit
                                else [], known, "this rule's if: captures")
        return self

    @property
    def action(self) -> Action:
        assert self.then is not None  # checked by _use_or_then, for rules without use:
        return self.then


def _check_placeholders(texts: list[str], known: frozenset[str], where: str) -> None:
    """Every {name} in ``texts`` is built in or in ``known``."""
    for text in texts:
        if bad := captures.unknown(text, known):
            raise ValueError(f"{text!r}: {{{bad[0]}}} is neither built in "
                             f"({', '.join(captures.BUILT_INS)}) nor one of {where} "
                             f"({', '.join(sorted(known)) or 'none'})")


def _texts(options: SubmitOptions) -> list[str]:
    """The options' text values, where placeholders may be."""
    return [value for value in options.model_dump(exclude_none=True).values()
            if isinstance(value, str)]


class FailureFolder(Model):
    """An IMAP folder (created if missing) of one of the config's IMAP accounts."""

    account: str
    folder: str

    def __str__(self) -> str:
        return f"IMAP folder {self.folder} of account {self.account}"


class Folder(SubmitOptions):
    """One IMAP folder to ingest, with its tracker options and rules."""

    name: str
    interval: Duration = 60.0
    move_on_success: str | None = None
    move_on_failure: str | None = None
    failure_spool: Path | None = None  # POP3: a copy of each refused message, kept here
    failure_folder: FailureFolder | None = None  # POP3: ... or appended here (spool: fallback)
    max_message_size: Size = parse_size("25M")
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100
    loops_folder: str | None = None
    idle: bool | None = None  # IMAP IDLE for mail within a second; unset: when the server has it
    rules: list[Rule] = []
    smime: SMime | None = None  # S/MIME decrypt and verify before the rules
    archive: Archive | None = None  # unset: the top-level archive:, if any
    allow_senders: list[AllowSenders] = []  # with the top-level ones
    flood: Flood | None = None  # unset: the top-level flood:
    flood_folder: str | None = None
    start: StartValue = Start("all")
    max_age: Duration | None = None  # older mail (INTERNALDATE) is left alone, marked

    @model_validator(mode="after")
    def _built_ins_only(self) -> Folder:
        _check_placeholders(_texts(self.options()), frozenset(), "captures (a folder has none)")
        return self
