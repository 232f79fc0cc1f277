"""Alerts: which state changes make which alert (pure), the digest, the alert mail's marks,
and the addresses alerts may not go to."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from imap_ingest.alerts import CALM, Alert, Alerter, State, changes, digest, mail, set_aside
from imap_ingest.config import Alert as AlertConfig
from imap_ingest.config import EmailAlert, Folder, WebhookAlert, load
from imap_ingest.errors import ConfigError
from imap_ingest.flow import Flow, Worker, assess
from imap_ingest.message import Message
from imap_ingest.rules import Act, RuleSet
from imap_ingest.states import Disposition, Result
from imap_ingest.verdict import Verdict

from .support.dovecot import ImapAccount
from .support.ingest_env import write_config
from .support.redmine_server import RecordingServer

STALLED = State({"a/INBOX": "old"}, {}, frozenset())
FAILING = State({}, {"redmine": "503"}, frozenset())
AUTH = State({}, {}, frozenset({"a"}))
BOTH = State({"a/INBOX": "old", "a/Sales": "old"}, {"redmine": "503"}, frozenset({"a"}))


@pytest.mark.parametrize(("before", "after", "kinds"), [
    (CALM, CALM, []),
    (CALM, STALLED, ["stalled"]),
    (STALLED, STALLED, []),
    (STALLED, State({"a/INBOX": "older still"}, {}, frozenset()), []),
    (STALLED, CALM, ["recovered"]),
    (CALM, FAILING, ["target-failing"]),
    (FAILING, FAILING, []),
    (FAILING, CALM, ["target-recovered"]),
    (CALM, AUTH, ["auth-failed"]),
    (AUTH, CALM, ["auth-recovered"]),
    (CALM, BOTH, ["stalled", "stalled", "target-failing", "auth-failed"]),
    (BOTH, STALLED, ["recovered", "target-recovered", "auth-recovered"]),
], ids=["calm", "stalls", "stays-stalled", "reason-changes", "recovers", "target-fails",
        "target-stays-failing", "target-recovers", "auth-fails", "auth-recovers", "all-at-once",
        "most-recover"])
def test_changes(before: State, after: State, kinds: list[str]) -> None:
    """One alert per folder, target or account whose state changed; none while it stays."""
    assert [alert.kind for alert in changes(before, after)] == kinds


def test_digest_lists_each_message_in_one_alert() -> None:
    """Messages set aside make one digest with subject, sender and reason of each."""
    moved = Verdict(Result.FAILED, "422 project not found", to=Disposition("move", "Failed"))
    raw = b"From: Ann <ann@example.com>\r\nSubject: printer <b>on fire</b>\r\n\r\nhi\r\n"
    items = [set_aside("a/INBOX", Message(raw), moved), set_aside("a/INBOX", None, moved)]
    alert = digest(filter(None, items))
    assert alert is not None and alert.kind == "set-aside"
    assert "2 message(s)" in alert.subject
    assert "'printer <b>on fire</b>' from ann@example.com: 422 project not found" in alert.body
    assert "(unreadable)" in alert.body
    assert digest([]) is None


def test_only_messages_moved_aside_go_into_the_digest() -> None:
    """Submitted, or failed but marked in place, is no digest entry."""
    message = Message(b"Subject: x\r\n\r\n")
    assert set_aside("a/I", message, Verdict(Result.SUBMITTED, "", to=Disposition("delete"))
                     ) is None
    assert set_aside("a/I", message, Verdict(Result.FAILED, "", to=Disposition(
        "mark", "$Failed"))) is None
    assert set_aside("a/I", message, Verdict(Result.QUARANTINED, "in doubt", to=Disposition(
        "move", "Quarantine"))) is not None


def test_alert_mail_is_held_by_the_loop_checks() -> None:
    """The alert mail carries Auto-Submitted and X-Imap-Ingest-Alert; our checks hold it."""
    sent = mail(Alert("stalled", "mail stalled", "why"), EmailAlert(to="ops@example.com"))
    assert sent["Auto-Submitted"] == "auto-generated"
    assert sent["X-Imap-Ingest-Alert"] == "stalled"
    decision = RuleSet(Folder(name="INBOX")).evaluate(Message(sent.as_bytes()))
    assert decision.act is Act.HOLD and "imap-ingest-alert" in decision.rule
    only_ours = RuleSet(Folder(name="INBOX"), checks=["imap-ingest-alert"])
    assert only_ours.evaluate(Message(sent.as_bytes())).act is Act.HOLD


@pytest.mark.parametrize("to", ["redmine@example.org", "Support@Example.com", "me@example.com"],
                         ids=["tracker", "watched-address", "login"])
def test_alerts_to_a_tracker_or_a_watched_mailbox_are_refused(
        tmp_path: Path, imap: ImapAccount, to: str) -> None:
    """alert.email.to may not be a tracker's own address nor a watched mailbox's."""
    path = write_config(tmp_path / "c.yaml", imap, "http://127.0.0.1:1",
                        target={"addresses": ["redmine@example.org"]},
                        account={"addresses": ["support@example.com"],
                                 "username": "me@example.com"},
                        alert={"email": {"to": to}})
    with pytest.raises(ConfigError, match="alerts must go to a person") as caught:
        load(path)
    assert caught.value.key == "alert.email.to"


def test_a_folder_is_stalled_by_its_oldest_pending_message_or_by_no_pass() -> None:
    """Stalled: a pending message older than stalled_after, or no pass for that long."""
    now = 1000.0
    workers = [Worker("a", "INBOX", True, False, now - 1), Worker("a", "Sales", True, False,
                                                                  now - 1),
               Worker("a", "Old", False, True, None)]
    pending = [("a", "INBOX", now - 30, 2, 1, 0, 0, "503 Service Unavailable"),
               ("a", "Sales", now - 5, 1, 0, 0, 0, None)]
    flow = assess(workers, pending, [("redmine", 3, None, "503", None)], 10, now, now - 60)
    inbox, sales, old = flow.folders
    assert inbox.stalled and "30 s old" in inbox.stalled and "503" in inbox.stalled
    assert inbox.waiting == 2 and inbox.held == 1 and inbox.oldest_pending == 30
    assert sales.stalled is None
    assert old.stalled and "auth_failed" in old.stalled and old.since_pass is None
    assert flow.failing == {"redmine": "503"}
    assert flow.json()["stalled"] == {"a/INBOX": inbox.stalled, "a/Old": old.stalled}


def test_a_flood_trip_is_alerted_once_per_limit_until_the_next_digest() -> None:
    """The flood breaker tripping for a sender is one alert, however many mails it holds."""
    hook = RecordingServer()
    try:
        alerter = Alerter(AlertConfig(webhook=WebhookAlert(url=hook.url)), Flow,
                          threading.Event())
        for _ in range(3):
            alerter.tripped("sender:a@example.org", "over 20 per hour")
        alerter.tripped("subject:printer on fire", "over 50 per hour")
        texts = [json.loads(request.body)["text"] for request in hook.requests]
        assert len(texts) == 2 and "sender:a@example.org" in texts[0]
        assert "subject:printer on fire" in texts[1]
    finally:
        hook.close()


@pytest.mark.parametrize("status", [302, 307, 308])
def test_an_alert_hook_that_redirects_is_not_followed(status: int,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A hook answering with a redirect gets no second POST: the alert (mail subjects) stays."""
    elsewhere = RecordingServer()
    hook = RecordingServer()
    hook.answer = lambda request: (status, b"", 0, {"Location": f"{elsewhere.url}/x"})
    try:
        alerter = Alerter(AlertConfig(webhook=WebhookAlert(url=hook.url)), Flow,
                          threading.Event())
        alerter.tripped("sender:a@example.org", "over 20 per hour")
        assert len(hook.requests) == 1
        assert elsewhere.requests == []
        assert "could not be sent by webhook" in caplog.text
    finally:
        hook.close()
        elsewhere.close()
