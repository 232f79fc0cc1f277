"""Rule conditions: header regex (with procmail's ``^TO_``), size, body regex, addresses,
and ``any:``/``all:``/``not:`` groups of them.

Written in a rule's ``if:`` list as

    "^Subject:.*urgent"        header regex, searched in the unfolded header block
    "!^X-Mailer: Redmine"      leading ! negates a string condition
    "^TO_support@example\\.org" procmail's ^TO_: any destination header names the address
    "size > 10M"               RFC822 size, also < and with k/M/G
    {body: "(?i)invoice"}      regex over the decoded text parts (bounded)
    {from_address: "*@example.org"}  glob on the parsed From address(es), not the raw text
    {to_address: "rt-*@example.org"} glob on the parsed To and Cc addresses
    {any: [C, ...]} {all: [C, ...]} {not: C}   groups, nested freely

A regex's named groups are captures, named ``KIND.GROUP``: KIND is ``body`` for a body
regex, ``to`` for a ``^TO_`` regex, the header's name lower-cased for one that starts
``^Name:`` (``subject``, ``x-original-to``), else ``header``. A negated condition captures
nothing, so it may not name groups.

Mail is hostile input and a backtracking regex can take minutes on one long line, so every
search, the built-in checks' too, runs with the ``regex`` package's timeout: one that runs
out counts as not matched (negated or not, in a group or not), and is logged with the
rule's key path. (RE2 would be linear, but has no lookarounds or backreferences, which the
built-in checks and procmail-style rules use.)
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import regex

from .message import Message

log = logging.getLogger(__name__)

# CPU time one regex may spend on one text of one message.
MATCH_SECONDS = 0.5
# A captured value is cut here (and refused where it is used when it is longer).
MAX_CAPTURE = 1000

# procmail's ^TO_, widened to the headers MTAs and IMAP servers add for the envelope.
_TO = (r"^(?:(?:Original-)?(?:Resent-)?(?:To|Cc|Bcc)|X-Envelope-To|Apparently(?:-Resent)?-To|"
       r"Delivered-To|X-Original-To|Envelope-To|X-Delivered-To):(?:.*[^-a-zA-Z0-9_.])?")
_SIZE = re.compile(r"size\s*([<>])\s*(\d.*)", re.IGNORECASE)
_HEADER_NAME = re.compile(r"\^([A-Za-z0-9-]+):")
_FLAGS = regex.IGNORECASE | regex.MULTILINE
_ADDRESS_HEADERS = {"from_address": ("From",), "to_address": ("To", "Cc")}
_FORMS = ("a condition is a header regex string, \"size > N\", {body: REGEX}, "
          "{from_address: GLOB}, {to_address: GLOB}, {any: [...]}, {all: [...]} or {not: ...}")

Item = str | Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Test:
    """What a condition made of a message: whether it holds, why, and what it captured."""

    holds: bool
    why: str
    captures: Mapping[str, str] = field(default_factory=dict)
    gave_up: bool = False  # a regex ran out of time: never holds, negated or not


class _Tested:
    """``holds`` and ``check`` from a ``test`` method."""

    __slots__ = ()

    def test(self, message: Message) -> Test:
        raise NotImplementedError

    def holds(self, message: Message) -> bool:
        return self.test(message).holds

    def check(self, message: Message) -> tuple[bool, str]:
        """Whether it holds and why."""
        test = self.test(message)
        return test.holds, test.why


@dataclass(frozen=True, slots=True)
class Condition(_Tested):
    """One compiled condition; ``check`` says whether it holds and why."""

    source: str
    negated: bool
    kind: str  # header | size | body | from_address | to_address
    pattern: regex.Pattern[str] | None = None
    limit: tuple[str, int] | None = None
    key: str = ""  # where in the configuration, for the log
    name: str = ""  # the KIND of its captures' KIND.GROUP

    @property
    def captures(self) -> frozenset[str]:
        """The KIND.GROUP names this condition can capture."""
        groups = self.pattern.groupindex if self.pattern is not None else {}
        return frozenset(f"{self.name}.{group}" for group in groups)

    @property
    def needs_body(self) -> bool:
        """Whether it looks past the header block."""
        return self.kind == "body"

    def keyed(self, key: str) -> Condition:
        """This condition with its place in the configuration, for the log."""
        return replace(self, key=key)

    def test(self, message: Message) -> Test:
        """Whether it holds, why, and its captures; a regex that runs out of time never
        holds, negated or not."""
        try:
            found, evidence, captured = self._search(message)
        except TimeoutError:
            return Test(False, gave_up(self.key or self.source), gave_up=True)
        why = evidence if self.kind == "size" else (
            f"found {evidence!r}" if found else "not found")
        if self.negated:
            return Test(not found, why)
        return Test(found, why, captured if found else {})

    def _search(self, message: Message) -> tuple[bool, str, dict[str, str]]:
        if self.kind == "size":
            assert self.limit is not None
            op, limit = self.limit
            size = message.size
            return (size > limit if op == ">" else size < limit), f"size is {size} bytes", {}
        assert self.pattern is not None
        if self.kind in _ADDRESS_HEADERS:
            texts = tuple(address.lower() for name in _ADDRESS_HEADERS[self.kind]
                          for _, address in message.addresses(name))
        else:
            texts = (message.body_text(),) if self.kind == "body" else (
                message.headers, message.decoded_headers)
        for text in texts:
            if match := (self.pattern.search(text, timeout=MATCH_SECONDS)
                         if self.kind == "body" else search_header(self.pattern, text)):
                captured = {f"{self.name}.{group}": value.strip()[:MAX_CAPTURE]
                            for group, value in match.groupdict().items() if value is not None}
                return True, match[0][:80], captured
        return False, "", {}


@dataclass(frozen=True, slots=True)
class Group(_Tested):
    """``any:``, ``all:`` or ``not:`` over conditions (a ``not`` has one item)."""

    source: str
    mode: Literal["any", "all", "not"]
    items: tuple[Condition | Group, ...]
    key: str = ""

    @property
    def captures(self) -> frozenset[str]:
        if self.mode == "not":
            return frozenset()
        return frozenset().union(*(item.captures for item in self.items))

    @property
    def needs_body(self) -> bool:
        return any(item.needs_body for item in self.items)

    def test(self, message: Message) -> Test:
        """all: every item holds (captures merged, the first of a name kept); any: the first
        item that holds, with its captures; not: the item does not hold."""
        tests: list[Test] = []
        for item in self.items:
            tests.append(item.test(message))
            if self.mode == "any" and tests[-1].holds:
                return Test(True, f"any: {item.source!r}: {tests[-1].why}", tests[-1].captures)
            if self.mode != "any" and not tests[-1].holds:
                break
        gave = any(test.gave_up for test in tests)
        whys = "; ".join(f"{item.source!r}: {test.why}"
                         for item, test in zip(self.items, tests, strict=False))
        if self.mode == "not":
            return Test(not gave and not tests[0].holds, f"not ({whys})", gave_up=gave)
        if self.mode == "any":
            return Test(False, f"any: none holds ({whys})", gave_up=gave)
        if len(tests) < len(self.items) or gave:
            return Test(False, f"all: {whys}", gave_up=gave)
        captured: dict[str, str] = {}
        for test in tests:
            captured = {**test.captures, **captured}
        return Test(True, f"all: {whys}", captured)

    def keyed(self, key: str) -> Group:
        """This group with its place in the configuration, and its items' under it."""
        return replace(self, key=key, items=tuple(
            item.keyed(f"{key}.{self.mode}[{index}]") for index, item in enumerate(self.items)))


def search_header(pattern: regex.Pattern[str], text: str) -> regex.Match[str] | None:
    """``pattern`` searched in a header's text, within MATCH_SECONDS, keeping the GIL: with a
    timeout the regex package lets the GIL go on short texts too, then waits up to a switch
    interval (5 ms) to get it back from the thread reading the next batch, for a search of a
    few microseconds (a body's search still lets it go)."""
    return pattern.search(text, timeout=MATCH_SECONDS, concurrent=False)


def gave_up(key: str) -> str:
    """Log a regex that ran out of MATCH_SECONDS; the reason for the trace."""
    log.warning("%s: the regular expression ran out of its %s s on this message; counted "
                "as not matched", key, MATCH_SECONDS)
    return f"gave up after {MATCH_SECONDS} s (counted as not matched)"


def parse(item: Item) -> Condition | Group:
    """A condition from its config form; ValueError says what is wrong with it."""
    if not isinstance(item, str):
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ValueError(_FORMS)
        ((form, value),) = item.items()
        if form in ("any", "all"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"{form}: takes a non-empty list of conditions")
            mode: Literal["any", "all"] = "any" if form == "any" else "all"
            return Group(f"{form}: [...]", mode, tuple(parse(each) for each in value))
        if form == "not":
            return Group("not: ...", "not", (parse(value),))  # type: ignore[arg-type]
        if not isinstance(value, str):
            raise ValueError(_FORMS)
        if form == "body":
            return _regex(value, "body", f"body: {value}", "body")
        if form in _ADDRESS_HEADERS:
            return _glob(value, form)
        raise ValueError(_FORMS)
    negated = item.startswith("!")
    size = _SIZE.fullmatch(item.removeprefix("!").strip())
    if size and (limit := _bytes(size[2])) is not None:
        return Condition(item, negated, "size", limit=(size[1], limit))
    text = item.removeprefix("!")
    name = _HEADER_NAME.match(text)
    return _regex(item, "header", item, "to" if text.startswith("^TO_") else
                  name[1].lower() if name else "header")


def _bytes(text: str) -> int | None:
    """The size ``text`` says as config sizes are written, or None: then it is a regex."""
    from .config.values import parse_size  # the config package imports this module

    try:
        return parse_size(text)
    except ValueError:
        return None


def _regex(text: str, kind: str, source: str, name: str) -> Condition:
    negated = text.startswith("!")
    pattern = text.removeprefix("!").replace("^TO_", _TO)
    try:
        compiled = regex.compile(pattern, _FLAGS)
    except regex.error as exc:
        raise ValueError(f"bad regular expression {text!r}: {exc}") from None
    if negated and compiled.groupindex:
        raise ValueError(f"{text!r}: a negated condition captures nothing, so it cannot name "
                         "groups")
    return Condition(source, negated, kind, compiled, name=name)


def _glob(text: str, kind: str) -> Condition:
    """A shell-style glob (``*``, ``?``, ``[...]``) on whole addresses, case-insensitive."""
    negated = text.startswith("!")
    glob = text.removeprefix("!").strip().lower()
    if not glob:
        raise ValueError(f"{kind}: needs an address or a glob such as *@example.org")
    return Condition(f"{kind}: {text}", negated, kind,
                     regex.compile(fnmatch.translate(glob), regex.IGNORECASE), name=kind)
