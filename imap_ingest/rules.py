"""Procmail-like rules: the first rule whose conditions all hold decides what happens.

A condition is a regular expression searched in the unfolded header block, case-insensitive
and line-anchored (``^`` starts any header line), as procmail does; a leading ``!`` negates
it. A folder with no matching rule submits the message with the folder's own options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .config import Folder, SubmitOptions
from .message import Message


class Act(Enum):
    SUBMIT = "submit"
    SKIP = "skip"
    MOVE = "move"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message, and which rule said so."""

    act: Act
    rule: str
    options: SubmitOptions | None = None  # for SUBMIT: the folder's options plus overrides
    folder: str | None = None  # for MOVE


@dataclass(frozen=True, slots=True)
class Condition:
    pattern: re.Pattern[str]
    negated: bool

    @classmethod
    def compile(cls, text: str) -> Condition:
        negated = text.startswith("!")
        pattern = re.compile(text.removeprefix("!"), re.IGNORECASE | re.MULTILINE)
        return cls(pattern, negated)

    def holds(self, message: Message) -> bool:
        return (self.pattern.search(message.headers) is not None) != self.negated


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    conditions: tuple[Condition, ...]
    decision: Decision


class RuleSet:
    """A folder's rules, compiled once."""

    def __init__(self, folder: Folder) -> None:
        defaults = folder.options()
        self._default = Decision(Act.SUBMIT, "default", defaults)
        self._rules = tuple(
            _Rule(
                name := rule.name or f"rules[{index}]",
                tuple(Condition.compile(text) for text in rule.if_),
                _decision(name, rule.then.submit, rule.then.move, defaults),
            )
            for index, rule in enumerate(folder.rules)
        )

    def evaluate(self, message: Message) -> Decision:
        """The decision of the first rule whose conditions all hold."""
        for rule in self._rules:
            if all(condition.holds(message) for condition in rule.conditions):
                return rule.decision
        return self._default


def _decision(name: str, submit: SubmitOptions | None, move: str | None,
              defaults: SubmitOptions) -> Decision:
    if submit is not None:
        return Decision(Act.SUBMIT, name, defaults.merged(submit))
    if move is not None:
        return Decision(Act.MOVE, name, folder=move)
    return Decision(Act.SKIP, name)
