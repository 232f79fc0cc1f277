"""What a folder says: its tracker options, its rules and their actions."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from .. import conditions, loops
from .smime import SMime
from .values import Duration, Model, Size, parse_size


def _check_condition(item: str | dict[str, str]) -> str | dict[str, str]:
    conditions.parse(item)
    return item


def _check_name(name: str) -> str:
    if name not in loops.NAMES:
        raise ValueError(f"{name!r} is not a built-in check: {', '.join(loops.NAMES)}")
    return name


Condition = Annotated[str | dict[str, str], AfterValidator(_check_condition)]
CheckName = Annotated[str, AfterValidator(_check_name)]
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
    if_: list[Condition] = Field(default=[], alias="if")
    allow: list[CheckName] = []
    then: Action | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        return {"use": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _use_or_then(self) -> Rule:
        if self.use is not None and (self.then or self.if_ or self.allow or self.name):
            raise ValueError("a rule with use: takes nothing else")
        if self.use is None and self.then is None:
            raise ValueError("a rule needs then: (or use: NAME of a top-level rule)")
        return self

    @property
    def action(self) -> Action:
        assert self.then is not None  # checked by _use_or_then, for rules without use:
        return self.then


class Folder(SubmitOptions):
    """One IMAP folder to ingest, with its tracker options and rules."""

    name: str
    interval: Duration = 60.0
    move_on_success: str | None = None
    move_on_failure: str | None = None
    max_message_size: Size = parse_size("25M")
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100
    loops_folder: str | None = None
    idle: bool | None = None  # IMAP IDLE for mail within a second; unset: when the server has it
    rules: list[Rule] = []
    smime: SMime | None = None  # S/MIME decrypt and verify before the rules
