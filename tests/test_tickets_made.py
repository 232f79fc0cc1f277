"""Whether Redmine made an issue of a message it refused among others: pure, then over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from imap_ingest.message import Message
from imap_ingest.tickets import Lately, LookupFailed, Made, RedmineTickets, Submitted, made_of
from imap_ingest.trackers.redmine import RedmineTarget

from .support.mail import make
from .support.redmine_server import Answer, RecordingServer, Request


@pytest.mark.parametrize(("issues", "taken", "unsure", "made"), [
    ([], 0, 0, None),  # nothing of its subject: it made none
    (["7"], 0, 0, Made("7")),
    (["7"], 1, 0, None),  # the one issue is the message taken meanwhile
    (["7", "9"], 1, 0, Made(None)),  # one more than taken: its, but which one is unknown
    (["7"], 0, 1, LookupFailed),  # another post of its subject may have made it
    (["7", "9"], 0, 0, LookupFailed),  # two issues for one message: someone else's too
    ([], 0, 2, None),
], ids=["none", "one", "taken", "one-more", "unsure", "two", "none-unsure"])
def test_an_issue_is_only_taken_for_its_when_no_other_can_be(
        issues: list[str], taken: int, unsure: int, made: Made | type | None) -> None:
    """An issue of its subject is the message's only if no other message can claim it."""
    if made is LookupFailed:
        with pytest.raises(LookupFailed):
            made_of(issues, taken, unsure)
    else:
        assert made_of(issues, taken, unsure) == made


def test_lately_counts_other_posts_of_the_subject() -> None:
    """Taken and unanswered posts of a subject count; refused ones and old ones do not."""
    now = [1000.0]
    lately = Lately(clock=lambda: now[0])
    for record, subject in enumerate(["Hello", "Hello ", "Hello", "Other", "Hello"]):
        lately.posted("redmine", record, subject)
    lately.answered("redmine", 0, True)
    lately.answered("redmine", 1, False)  # a refusal trusted: it made nothing
    lately.answered("redmine", 3, True)
    assert lately.alike("redmine", 4, "Hello", 900.0) == (1, 1)  # 0 taken, 2 unanswered
    assert lately.alike("redmine", 4, "Hello", 1001.0) == (0, 1)  # 0 taken before since
    assert lately.alike("rt", 4, "Hello", 0.0) == (0, 0)
    now[0] += Lately.KEEP + 1
    lately.posted("redmine", 5, "x")  # forgets what was answered long ago
    assert lately.alike("redmine", 4, "Hello", 0.0) == (0, 1)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    served = RecordingServer()
    yield served
    served.close()


def tickets(server: RecordingServer) -> RedmineTickets:
    target = RedmineTarget.model_validate({"type": "redmine", "url": server.url, "key": "k",
                                           "timeout": "5s"})
    return RedmineTickets(target, "api-key")


def test_a_reply_with_a_note_since_it_was_posted_is_in_doubt(server: RecordingServer) -> None:
    """A reply: no note on its issue since it was posted, none made; a note: cannot tell."""
    notes: list[dict[str, str]] = [{"created_on": "2020-01-01T00:00:00Z"}]

    def answer(request: Request) -> Answer:
        assert request.path == "/issues/42.json" and request.field("include") == b"journals"
        return 200, json.dumps({"issue": {"id": 42, "journals": notes}}).encode(), 0

    server.answer = answer
    one = Submitted.of(1, Message(make(subject="Re: [Support #42] help")), "here")
    lookup = tickets(server)
    assert lookup.made(one, 0, 0) is None
    notes.append({"created_on": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"})
    with pytest.raises(LookupFailed, match="note"):
        lookup.made(one, 0, 0)
    lookup.close()
