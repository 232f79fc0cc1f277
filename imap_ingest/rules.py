"""Procmail-like rules after built-in loop checks; the first matching rule decides.

Order: every enabled built-in check (loops.py) runs, then the folder's rules in order. A
rule whose conditions all hold acts (``copy`` alone records a copy and goes on to the next
rule). A ``submit`` is held when a built-in check fired that the rule does not name in
``allow:``; so is the default submit of a message no rule matched. Every step is kept in
the trace that ``imap-ingest explain`` prints.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from . import conditions, loops
from .config import Action, Config, Folder, Rule, SubmitOptions
from .message import Message, edit_headers


class Act(Enum):
    SUBMIT = "submit"
    SKIP = "skip"
    MOVE = "move"
    DISCARD = "discard"
    HOLD = "hold"  # a built-in check keeps it from the tracker


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the trace: a check or rule, whether it matched, and why."""

    kind: str  # check | rule
    name: str
    matched: bool
    why: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message, which rule said so, and how it was reached."""

    act: Act
    rule: str
    options: SubmitOptions | None = None  # SUBMIT: the folder's options plus overrides
    folder: str | None = None  # MOVE: where; HOLD: loops_folder (None: keep and skip)
    copies: tuple[str, ...] = ()
    edits: Action | None = None  # SUBMIT: header edits to apply first
    reason: str = ""
    trace: tuple[Step, ...] = ()

    def submission(self, raw: bytes) -> bytes:
        """The bytes to hand the tracker: the raw message with this rule's header edits."""
        if self.edits is None:
            return raw
        return edit_headers(raw, self.edits.set_header, self.edits.remove_header,
                            self.edits.from_header)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    conditions: tuple[conditions.Condition, ...]
    allow: frozenset[str]
    action: Action


class RuleSet:
    """A folder's rules and loop settings, compiled once."""

    def __init__(self, folder: Folder, named: Mapping[str, Rule] | None = None,
                 checks: Collection[str] = loops.NAMES, own: Collection[str] = (),
                 loops_folder: str | None = None, where: str = "folder") -> None:
        self._defaults = folder.options()
        self._checks = frozenset(checks)
        self._own = frozenset(own)
        self._loops_folder = folder.loops_folder or loops_folder
        named = named or {}
        self._rules = tuple(
            _compile(rule.use or rule.name or f"rules[{index}]",
                     named[rule.use] if rule.use else rule,
                     f"rules.{rule.use}" if rule.use else f"{where}.rules[{index}]")
            for index, rule in enumerate(folder.rules))

    @property
    def names(self) -> tuple[str, ...]:
        """The rules' names, in order."""
        return tuple(rule.name for rule in self._rules)

    @classmethod
    def for_folder(cls, folder: Folder, config: Config) -> RuleSet:
        checks = [name for name in loops.NAMES if config.loop_checks.get(name, True)]
        where = next((f"accounts[{a}].folders[{f}]" for a, account in enumerate(config.accounts)
                      for f, candidate in enumerate(account.folders) if candidate is folder),
                     folder.name)
        return cls(folder, config.rules, checks, config.own_addresses(), config.loops_folder,
                   where)

    def evaluate(self, message: Message) -> Decision:
        """The decision for this message, with the trace of how it was reached."""
        trace: list[Step] = []
        hits: list[loops.Hit] = []
        for check, hit in loops.run(message, self._checks, self._own):
            trace.append(Step("check", check.name, hit is not None,
                              hit.evidence if hit else f"looks for {check.description}"))
            hits += [hit] if hit else []
        copies: list[str] = []
        for rule in self._rules:
            matched, why = _conditions_hold(rule, message)
            if not matched:
                trace.append(Step("rule", rule.name, False, why))
                continue
            action = rule.action
            if action.copy_to:
                copies.append(action.copy_to)
            if action.copy_to and _only_copies(action):
                trace.append(Step("rule", rule.name, True, f"{why}; copy to {action.copy_to}, "
                                  "then the next rules"))
                continue
            held = [hit for hit in hits if hit.name not in rule.allow]
            if action.submit is not None and held:
                trace.append(Step("rule", rule.name, True, f"{why}; would submit, but "
                                  f"{_names(held)} holds it (name it in allow: to lift)"))
                return self._hold(held, copies, trace)
            trace.append(Step("rule", rule.name, True, why))
            return self._decision(rule, action, copies, trace)
        if hits:
            return self._hold(hits, copies, trace)
        return Decision(Act.SUBMIT, "default", self._defaults, copies=tuple(copies),
                        trace=tuple(trace))

    def _decision(self, rule: _Rule, action: Action, copies: list[str],
                  trace: list[Step]) -> Decision:
        skip = Decision(Act.SKIP, rule.name, copies=tuple(copies), trace=tuple(trace))
        if action.submit is not None:
            return replace(skip, act=Act.SUBMIT, options=self._defaults.merged(action.submit),
                           edits=action if action.edits_headers else None)
        if action.move is not None:
            return replace(skip, act=Act.MOVE, folder=action.move)
        if action.discard:
            return replace(skip, act=Act.DISCARD, reason=f"discarded by rule {rule.name}")
        return skip

    def _hold(self, held: list[loops.Hit], copies: list[str], trace: list[Step]) -> Decision:
        reason = "held by built-in check " + ", ".join(f"{h.name} ({h.evidence})" for h in held)
        return Decision(Act.HOLD, f"loop:{_names(held)}", folder=self._loops_folder,
                        copies=tuple(copies), reason=reason, trace=tuple(trace))


def _compile(name: str, rule: Rule, key: str) -> _Rule:
    """The rule compiled; ``key`` is its place in the configuration, for the log."""
    return _Rule(name, tuple(replace(conditions.parse(item), key=f"{key}.if[{index}]")
                             for index, item in enumerate(rule.if_)),
                 frozenset(rule.allow), rule.action)


def _conditions_hold(rule: _Rule, message: Message) -> tuple[bool, str]:
    """Whether all conditions hold; why (the failing one, or what matched)."""
    reasons = []
    for condition in rule.conditions:
        holds, why = condition.check(message)
        if not holds:
            return False, f"{condition.source!r}: {why}"
        reasons.append(f"{condition.source!r}: {why}")
    return True, "; ".join(reasons) or "no conditions"


def _only_copies(action: Action) -> bool:
    return not (action.submit is not None or action.skip or action.move or action.discard)


def _names(hits: list[loops.Hit]) -> str:
    return ",".join(hit.name for hit in hits)
