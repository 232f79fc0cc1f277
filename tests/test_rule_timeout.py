"""Every rule regex runs in bounded time: one that runs out does not match, and says where."""

from __future__ import annotations

import time
from typing import Any

import pytest

from imap_ingest import loops
from imap_ingest.conditions import MATCH_SECONDS
from imap_ingest.config import Config
from imap_ingest.message import Message
from imap_ingest.rules import Act, RuleSet

from .support.mail import make

# Backtracks exponentially on a long run of "a" that never ends in "b".
CATASTROPHIC = "^From:.*(a+)+b"
LONG_FROM = make(sender="a" * 10_000 + "@example.org")


def config(*rules: Any, **top: Any) -> Config:
    return Config.model_validate({
        "accounts": [{"name": "a", "host": "imap.example.org", "username": "u",
                      "password": "p", "folders": [{"name": "INBOX", "project": "x",
                                                    "rules": list(rules)}]}],
        "targets": {"redmine": {"type": "redmine", "url": "https://r.example.org",
                                "key": "k"}}, **top})


def evaluate(cfg: Config, raw: bytes) -> tuple[Any, float]:
    folder = cfg.accounts[0].folders[0]
    started = time.process_time()
    decision = RuleSet.for_folder(folder, cfg).evaluate(Message(raw))
    return decision, time.process_time() - started


def test_catastrophic_header_rule_gives_up_in_time(caplog: pytest.LogCaptureFixture) -> None:
    """A catastrophic regex on a 10 KB From line stops in time, misses, and is logged."""
    decision, spent = evaluate(config({"name": "slow", "if": [CATASTROPHIC], "then": "skip"}),
                               LONG_FROM)
    assert spent < 2 * MATCH_SECONDS + 0.5
    assert decision.act is Act.SUBMIT and decision.rule == "default"
    assert "accounts[0].folders[0].rules[0].if[0]" in caplog.text
    assert "gave up" in decision.trace[-1].why


def test_a_negated_rule_that_runs_out_does_not_match() -> None:
    """Negation does not turn a regex that ran out of time into a match."""
    decision, _ = evaluate(config({"name": "slow", "if": [f"!{CATASTROPHIC}"],
                                   "then": "skip"}), LONG_FROM)
    assert decision.act is Act.SUBMIT


def test_named_rule_is_logged_by_its_key(caplog: pytest.LogCaptureFixture) -> None:
    """A rule from the top-level rules: is named there."""
    cfg = config("slow", rules={"slow": {"if": [{"body": "(x+x+)+y"}], "then": "skip"}})
    decision, spent = evaluate(cfg, make(body="x" * 10_000))
    assert decision.rule == "default" and spent < MATCH_SECONDS + 0.5
    assert "rules.slow.if[0]" in caplog.text


def test_builtin_check_that_runs_out_does_not_hit(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A built-in check whose regex runs out counts as no hit, logged by its name."""
    def slow(_message: Message, _own: Any) -> str | None:
        raise TimeoutError("regex timed out")

    check = loops.Check("precedence", "test", slow)
    monkeypatch.setattr(loops, "CHECKS", (check,))
    [(_, hit)] = list(loops.run(Message(LONG_FROM), ["precedence"], ()))
    assert hit is None and "loop_checks.precedence" in caplog.text


@pytest.mark.parametrize("condition", [{"not": CATASTROPHIC}, {"any": [CATASTROPHIC]},
                                       {"all": ["^From:", {"not": CATASTROPHIC}]}],
                         ids=["not", "any", "all-not"])
def test_a_regex_out_of_time_never_holds_in_a_group(condition: Any) -> None:
    """A regex that runs out of time makes no group hold, negated or not."""
    decision, _ = evaluate(config({"name": "g", "if": [condition], "then": "skip"}), LONG_FROM)
    assert decision.rule == "default"
