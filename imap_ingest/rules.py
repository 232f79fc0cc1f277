"""Procmail-like rules after built-in loop checks; the first matching rule decides.

Order: every enabled built-in check (loops.py) runs; a check that fires on mail From a
sender in ``allow_senders`` (the folder's or the top-level list) is lifted when that entry
names it. Then the folder's enabled rules, in order. A rule whose conditions all hold acts
and stops there, as a procmail delivering recipe does; ``copy`` alone records a copy and
goes on to the next rule (procmail's ``c`` flag). A ``submit`` is held when a built-in check
fired that the rule does not name in ``allow:``; so is the default submit of a message no
rule matched. A submit's options and header edits then get their ``{placeholders}``
(captures.py): a value that cannot be used holds the message with the reason. Every step is
kept in the trace that ``imap-ingest explain`` prints.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from . import captures, conditions, loops
from .config import Action, Config, Folder, Rule, SubmitOptions
from .config.folders import AllowSenders
from .message import RECIPIENT_HEADERS, Message, edit_headers

if TYPE_CHECKING:
    from .config import Account


class Act(Enum):
    SUBMIT = "submit"
    SKIP = "skip"
    MOVE = "move"
    DISCARD = "discard"
    HOLD = "hold"  # a built-in check keeps it from the tracker


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the trace: a check or rule, whether it matched, and why."""

    kind: str  # check | rule | capture | value
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
    conditions: tuple[conditions.Condition | conditions.Group, ...]
    allow: frozenset[str]
    action: Action
    enabled: bool = True


class RuleSet:
    """A folder's rules and loop settings, compiled once."""

    def __init__(self, folder: Folder, named: Mapping[str, Rule] | None = None,
                 checks: Collection[str] = loops.NAMES, own: Collection[str] = (),
                 loops_folder: str | None = None, where: str = "folder",
                 account: Account | None = None, allow_senders: Sequence[AllowSenders] = (),
                 targets: Collection[str] | None = None) -> None:
        self._defaults = folder.options()
        self._checks = frozenset(checks)
        self._own = frozenset(own)
        self._loops_folder = folder.loops_folder or loops_folder
        self._folder = folder.name
        self._account = account
        self._allow = (*folder.allow_senders, *allow_senders)
        self._targets = targets
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

    @property
    def needs_body(self) -> bool:
        """Whether a rule looks past the header block (the built-in checks never do), so
        that a message too large to fetch cannot be decided on its header alone."""
        return any(condition.needs_body for rule in self._rules if rule.enabled
                   for condition in rule.conditions)

    @classmethod
    def for_folder(cls, folder: Folder, config: Config) -> RuleSet:
        checks = [name for name in loops.NAMES if config.loop_checks.get(name, True)]
        where = next((f"accounts[{a}].folders[{f}]" for a, account in enumerate(config.accounts)
                      for f, candidate in enumerate(account.folders) if candidate is folder),
                     folder.name)
        account = next((a for a in config.accounts if any(f is folder for f in a.folders)), None)
        return cls(folder, config.rules, checks, config.own_addresses(), config.loops_folder,
                   where, account, config.allow_senders, config.targets)

    def evaluate(self, message: Message) -> Decision:
        """The decision for this message, with the trace of how it was reached."""
        trace: list[Step] = []
        hits: list[loops.Hit] = []
        lifted: list[str] = []
        for check, hit in loops.run(message, self._checks, self._own):
            entry = self._allowed(message.sender, check.name) if hit else None
            why = hit.evidence if hit else f"looks for {check.description}"
            if entry is not None:
                why += f"; lifted: From {message.sender} is in allow_senders ({entry})"
                lifted.append(f"{check.name} by allow_senders {entry}")
            trace.append(Step("check", check.name, hit is not None, why))
            hits += [hit] if hit and entry is None else []
        copies: list[str] = []
        for rule in self._rules:
            if not rule.enabled:
                trace.append(Step("rule", rule.name, False, "disabled (enabled: false)"))
                continue
            matched, why, captured = _conditions_hold(rule, message)
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
            return self._filled(self._decision(rule, action, copies, trace), message,
                                captured, lifted)
        if hits:
            return self._hold(hits, copies, trace)
        return self._filled(Decision(Act.SUBMIT, "default", self._defaults,
                                     copies=tuple(copies), trace=tuple(trace)),
                            message, {}, lifted)

    def _allowed(self, sender: str, check: str) -> str | None:
        """The allow_senders entry that lifts ``check`` for ``sender``, or None."""
        return next((entry for allow in self._allow if check in allow.lift
                     and (entry := allow.matches(sender)) is not None), None) if sender else None

    def _filled(self, decision: Decision, message: Message, captured: Mapping[str, str],
                lifted: list[str]) -> Decision:
        """A submit with its placeholders replaced (held when a value cannot be used), and
        its rule naming what allow_senders lifted."""
        if decision.act is not Act.SUBMIT or decision.options is None:
            return decision
        account = self._account
        values = {**captures.built_ins(message, self._folder,
                                       account.addresses if account else (),
                                       account.subaddress_separator if account else "+",
                                       account.recipient_headers if account
                                       else RECIPIENT_HEADERS),
                  **captured}
        steps = [Step("capture", name, True, repr(value)) for name, value in captured.items()]
        try:
            options = _fill_options(decision.options, values, self._targets, steps)
            edits = decision.edits and _fill_edits(decision.edits, values, steps)
        except captures.Refused as exc:
            trace = (*decision.trace, *steps, Step("value", "refused", False, str(exc)))
            return Decision(Act.HOLD, f"values:{decision.rule}", folder=self._loops_folder,
                            copies=decision.copies, reason=f"held: {exc}", trace=trace)
        rule = decision.rule + (f" [{'; '.join(lifted)}]" if lifted else "")
        return replace(decision, rule=rule, options=options, edits=edits,
                       trace=(*decision.trace, *steps))

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
    return _Rule(name, tuple(conditions.parse(item).keyed(f"{key}.if[{index}]")
                             for index, item in enumerate(rule.if_)),
                 frozenset(rule.allow), rule.action, rule.enabled)


def _conditions_hold(rule: _Rule, message: Message) -> tuple[bool, str, dict[str, str]]:
    """Whether all conditions hold; why (the failing one, or what matched); the captures
    (the first condition's value of a name wins)."""
    reasons = []
    captured: dict[str, str] = {}
    for condition in rule.conditions:
        test = condition.test(message)
        if not test.holds:
            return False, f"{condition.source!r}: {test.why}", {}
        reasons.append(f"{condition.source!r}: {test.why}")
        captured = {**test.captures, **captured}
    return True, "; ".join(reasons) or "no conditions", captured


def _fill_options(options: SubmitOptions, values: Mapping[str, str],
                  targets: Collection[str] | None, steps: list[Step]) -> SubmitOptions:
    """The options with their placeholders replaced; Refused names the first bad value."""
    update: dict[str, str] = {}
    for name, text in options.model_dump(exclude_none=True).items():
        if not isinstance(text, str):
            continue
        value, line = captures.fill(text, values, name, captures.option_pattern(name))
        if line is None:
            continue
        if name == "target" and targets is not None and value not in targets:
            raise captures.Refused(f"target: {value!r} is not one of the targets "
                                   f"({', '.join(targets)})")
        update[name] = value
        steps.append(Step("value", name, True, line))
    return options.model_copy(update=update) if update else options


def _fill_edits(edits: Action, values: Mapping[str, str], steps: list[Step]) -> Action:
    """The header edits with their placeholders replaced."""
    headers: dict[str, str] = {}
    for name, text in edits.set_header.items():
        headers[name], line = captures.fill(text, values, name, captures.header_pattern(name))
        steps += [Step("value", name, True, line)] if line else []
    return edits.model_copy(update={"set_header": headers})


def _only_copies(action: Action) -> bool:
    return not (action.submit is not None or action.skip or action.move or action.discard)


def _names(hits: list[loops.Hit]) -> str:
    return ",".join(hit.name for hit in hits)
