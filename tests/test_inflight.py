"""InFlight: a send that raises does not take the answers beside it with it."""

from __future__ import annotations

import threading

import pytest

from imap_ingest.inflight import InFlight
from imap_ingest.trackers import Kind, Outcome


def test_a_failed_send_keeps_the_others_answers_and_raises_after() -> None:
    """One send raises: the answer that came back beside it is returned, the error after."""
    inflight: InFlight[str] = InFlight({"t": lambda: 2}, 2)
    went = threading.Event()

    def fails() -> Outcome:
        went.wait(5)
        raise RuntimeError("connection lost")

    def takes() -> Outcome:
        went.set()
        return Outcome(Kind.SUCCESS, "created")

    inflight.start("t", frozenset({"a"}), "first", fails)
    inflight.start("t", frozenset({"b"}), "second", takes)
    answers = inflight.drain()
    assert [(tag, outcome.reason) for tag, outcome in answers] == [("second", "created")]
    with pytest.raises(RuntimeError, match="connection lost"):
        inflight.check()
    inflight.check()  # raised once
    inflight.close()
