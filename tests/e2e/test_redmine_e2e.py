"""imap-ingest against Debian's real Redmine 5.0.4: a real dovecot, ``run --once``, and every
outcome checked through Redmine's own REST API (the server: tests/e2e/redmine.py).

After every run, ``E2E.run`` checks that nothing was lost or duplicated: each Message-ID that
was delivered is either in Redmine (as an issue or a note, found by the ``ref <Message-ID>``
line each test message carries in its body) or in one of the IMAP folders that keep mail, and
in exactly one place.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from imap_ingest.cli import main
from imap_ingest.states import SKIPPED
from imap_ingest.trackers.redmine import crlf

from ..support.dovecot import ImapAccount
from ..support.ingest_env import write_config
from ..support.mail import make
from .redmine import (
    MAIL_KEY,
    RealRedmine,
)

ALICE = "alice@example.org"  # a Reporter of the private project "support"
MALLORY = "mallory@example.org"  # a Redmine user without any role in "support"
BOB = "bob@example.org"  # not a Redmine user
FORM_SENDER = "request@example.org"  # the form's list address; not a Redmine user either
KEPT = ("INBOX", "Failed", "Loops")  # folders where a message that is not in Redmine may be
ATTACHMENT_SIZE = 6 * 1024 * 1024
_REF = re.compile(r"ref (<[^>\s]+>)")
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class E2E:
    """One test's world: a fresh mailbox, a Redmine reset to the template, a fresh ledger."""

    tmp_path: Path
    imap: ImapAccount
    redmine: RealRedmine
    delivered: list[str] = field(default_factory=list)
    success_folder: str | None = None

    def deliver(self, subject: str = "Printer on fire", sender: str = ALICE,
                headers: Mapping[str, str] | None = None, text: str = "Please help.",
                folder: str = "INBOX") -> str:
        """Append a test message to ``folder``; returns its Message-ID."""
        message_id = f"<e2e-{uuid.uuid4().hex}@example.org>"
        self.append(make(subject=subject, sender=sender, headers=dict(headers or {}),
                         body=f"{text}\nref {message_id}\n", message_id=message_id), folder)
        return message_id

    def append(self, raw: bytes, folder: str = "INBOX") -> str:
        """Append ``raw`` (which must have a Message-ID and a ``ref`` line) to ``folder``."""
        found = _MESSAGE_ID.search(raw)
        assert found, "a test message needs a Message-ID"
        self.imap.append(folder, raw)
        self.delivered.append(found[1].decode())
        return found[1].decode()

    def run(self, *, key: str = MAIL_KEY, **config: Any) -> int:
        """``imap-ingest run --once`` with this config, then the no-loss, no-duplicate check."""
        path = write_config(self.tmp_path / "config.yaml", self.imap, self.redmine.url, key=key,
                            **config)
        code = main(["run", "--once", "-c", str(path)])
        self.assert_accounted()
        return code

    def in_folder(self, folder: str) -> list[str]:
        """Message-IDs of the (not deleted) messages in ``folder``."""
        ids = []
        for _flags, raw in self.imap.messages(folder).values():
            found = _MESSAGE_ID.search(raw.partition(b"\r\n\r\n")[0])
            assert found, raw[:200]
            ids.append(found[1].decode())
        return ids

    def in_redmine(self) -> list[str]:
        """Message-IDs found in the descriptions and notes of every issue in Redmine."""
        ids = []
        for issue in self.redmine.issues_with_journals():
            ids += _REF.findall(issue.get("description") or "")
            for journal in issue.get("journals", []):
                ids += _REF.findall(journal.get("notes") or "")
        return ids

    def assert_accounted(self) -> None:
        """Every delivered message is in exactly one place: Redmine, or a folder that keeps
        mail; and what ``success_folder`` holds is what Redmine has."""
        in_redmine = Counter(self.in_redmine())
        kept = Counter(mid for folder in KEPT for mid in self.in_folder(folder))
        assert [mid for mid, n in in_redmine.items() if n > 1] == [], "duplicated in Redmine"
        assert [mid for mid, n in kept.items() if n > 1] == [], "kept twice in IMAP"
        assert set(in_redmine) & set(kept) == set(), "both in Redmine and kept in IMAP"
        assert set(in_redmine) | set(kept) == set(self.delivered), "lost or unexpected"
        if self.success_folder is not None:
            assert set(self.in_folder(self.success_folder)) == set(in_redmine)

    def flags(self, folder: str = "INBOX") -> list[set[bytes]]:
        return [set(flags) for flags, _ in self.imap.messages(folder).values()]


@pytest.fixture
def e2e(tmp_path: Path, imap: ImapAccount, redmine_stock: RealRedmine) -> E2E:
    """A fresh mailbox and the stock Redmine reset to the template (no issues, ids from 1)."""
    redmine_stock.reset()
    return E2E(tmp_path, imap, redmine_stock)


def big_mail(size: int = ATTACHMENT_SIZE) -> tuple[bytes, bytes]:
    """A message with a short text and a ``size``-byte base64 attachment: (raw, attachment)."""
    blob = os.urandom(size)
    message_id = f"<e2e-{uuid.uuid4().hex}@example.org>"
    encoded = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    raw = b"\r\n".join([
        f"From: {ALICE}".encode(), b"To: support@example.org", b"Subject: Crash dump attached",
        b"Date: Sat, 21 Nov 2026 10:00:00 +0000", f"Message-ID: {message_id}".encode(),
        b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="b0undary"', b"",
        b"--b0undary", b"Content-Type: text/plain; charset=utf-8", b"",
        f"The dump is attached.\r\nref {message_id}".encode(),
        b"--b0undary", b"Content-Type: application/octet-stream; name=dump.bin",
        b"Content-Disposition: attachment; filename=dump.bin",
        b"Content-Transfer-Encoding: base64", b"", encoded + b"--b0undary--", b""])
    return raw, blob


# -- 1, 2: new issues and notes ------------------------------------------------------------


def test_new_mail_becomes_an_issue_in_the_folder_project_and_category(e2e: E2E) -> None:
    """Mail from a member becomes one issue by her in the folder's project and category."""
    message_id = e2e.deliver(subject="Printer on fire")
    assert e2e.run(folder={"project": "support", "category": "request"}) == 0
    [issue] = e2e.redmine.issues_with_journals()
    assert issue["subject"] == "Printer on fire"
    assert issue["project"]["name"] == "Support"
    assert issue["category"]["name"] == "request"
    assert issue["author"]["name"] == "Alice Member"
    assert message_id in issue["description"] and issue["journals"] == []
    assert e2e.imap.messages("INBOX") == {}
    assert e2e.redmine.mail_handler_posts() == 1


def test_reply_with_the_subject_tag_becomes_a_note_not_an_issue(e2e: E2E) -> None:
    """``Re: [Support - Bug #N] ...`` from a member adds a note to issue N; no new issue."""
    e2e.deliver(subject="Printer on fire")
    assert e2e.run(folder={"category": "request"}) == 0
    [issue] = e2e.redmine.issues()
    number, tracker = issue["id"], issue["tracker"]["name"]
    assert tracker == "Bug"  # the project's first tracker
    reply_id = e2e.deliver(subject=f"Re: [Support - {tracker} #{number}] Printer on fire",
                           text="It is still burning.")
    assert e2e.run(folder={"category": "request"}) == 0
    [issue] = e2e.redmine.issues_with_journals()
    assert issue["id"] == number
    [journal] = issue["journals"]
    assert journal["user"]["name"] == "Alice Member"
    assert "It is still burning." in journal["notes"] and reply_id in journal["notes"]
    assert e2e.imap.messages("INBOX") == {}


# -- 3, 6: senders Redmine does not know or does not allow -----------------------------------


# The project is private (a public one would let mallory, a non-member, add issues through the
# Non member role), so the Anonymous user that unknown_user=accept posts as has no rights
# there either: accept needs no_permission_check (DESIGN.md: "public or no_permission_check=1").
@pytest.mark.parametrize(("target", "created"), [
    ({}, False),
    ({"unknown_user": "accept"}, False),
    ({"unknown_user": "accept", "no_permission_check": True}, True),
], ids=["ignore", "accept-private-project", "accept-no-permission-check"])
def test_unknown_sender(e2e: E2E, target: dict[str, Any], created: bool,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown senders get 422 unless unknown_user=accept plus no_permission_check."""
    message_id = e2e.deliver(subject="Where is my order?", sender=BOB)
    assert e2e.run(target=target, folder={"move_on_failure": "Failed"}) == 0
    issues = e2e.redmine.issues_with_journals()
    if created:
        [issue] = issues
        assert issue["author"]["name"] == "Anonymous" and message_id in issue["description"]
        assert e2e.in_folder("Failed") == []
    else:
        assert issues == []
        assert e2e.in_folder("Failed") == [message_id]
        assert "Redmine refused the message (422)" in capsys.readouterr().err
    assert e2e.imap.messages("INBOX") == {}


def test_sender_without_rights_is_refused_to_move_on_failure(
        e2e: E2E, capsys: pytest.CaptureFixture[str]) -> None:
    """A user with no role in the private project gets 422; mail goes to move_on_failure."""
    message_id = e2e.deliver(subject="Let me in", sender=MALLORY)
    assert e2e.run(folder={"move_on_failure": "Failed"}) == 0
    assert e2e.redmine.issues() == []
    assert e2e.in_folder("Failed") == [message_id]
    assert e2e.flags("Failed") == [set()]
    assert e2e.redmine.mail_handler_posts() == 1
    assert "Redmine refused the message (422)" in capsys.readouterr().err


# -- 4, 5: loops ---------------------------------------------------------------------------


def test_auto_reply_is_held_by_our_loop_check_and_never_posted(e2e: E2E) -> None:
    """An auto-reply is held in loops_folder by our check; Redmine is never asked."""
    message_id = e2e.deliver(subject="Out of office", headers={"Auto-Submitted": "auto-replied"})
    assert e2e.run(loops_folder="Loops", folder={"move_on_failure": "Failed"}) == 0
    assert e2e.in_folder("Loops") == [message_id]
    assert e2e.redmine.mail_handler_posts() == 0
    assert e2e.redmine.issues() == []


def test_auto_reply_is_refused_by_redmine_too_when_our_check_is_off(e2e: E2E) -> None:
    """With the auto-submitted check off, Redmine itself refuses the auto-reply with 422."""
    message_id = e2e.deliver(subject="Out of office", headers={"Auto-Submitted": "auto-replied"})
    assert e2e.run(loop_checks={"auto-submitted": False},
                   folder={"move_on_failure": "Failed"}) == 0
    assert e2e.in_folder("Failed") == [message_id]
    assert e2e.redmine.mail_handler_posts() == 1
    assert e2e.redmine.issues() == []


FORM_RULE = {"if": ["^From:.*request@example\\.org"], "allow": ["auto-submitted"],
             "then": {"submit": {}, "remove_header": "Auto-Submitted", "from_header": "Reply-To"}}
FORM_RULE_KEEPING_HEADER = {**FORM_RULE, "then": {"submit": {}, "from_header": "Reply-To"}}


@pytest.mark.parametrize(("rules", "outcome"), [
    ([FORM_RULE], "issue"),
    ([FORM_RULE_KEEPING_HEADER], "refused"),
    ([], "held"),
], ids=["rule-removes-header", "rule-keeps-header", "no-rule"])
def test_form_mail_needs_our_rule_and_the_header_removal(e2e: E2E, rules: list[Any],
                                                         outcome: str) -> None:
    """Auto-generated form mail passes only via a rule that allows it and strips the header."""
    message_id = e2e.deliver(subject="Request: new laptop", sender=FORM_SENDER,
                             headers={"Reply-To": ALICE, "Auto-Submitted": "auto-generated"})
    folder = {"project": "support", "category": "request", "move_on_failure": "Failed",
              "rules": rules}
    assert e2e.run(folder=folder) == 0
    issues = e2e.redmine.issues_with_journals()
    if outcome == "issue":
        [issue] = issues
        assert issue["author"]["name"] == "Alice Member"
        assert issue["category"]["name"] == "request" and message_id in issue["description"]
        assert e2e.imap.messages("INBOX") == {}
    elif outcome == "refused":
        assert issues == [] and e2e.redmine.mail_handler_posts() == 1
        assert e2e.in_folder("Failed") == [message_id]
    else:
        assert issues == [] and e2e.redmine.mail_handler_posts() == 0
        assert e2e.flags("INBOX") == [{SKIPPED.encode()}]  # held in place, marked


# -- 7: our key --------------------------------------------------------------------------------


def test_wrong_key_touches_nothing_and_exits_77(e2e: E2E,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong key (403) exits 77 with no message moved or flagged and nothing created."""
    for subject in ("one", "two"):
        e2e.deliver(subject=subject)
    assert e2e.run(key="not-the-key", folder={"move_on_failure": "Failed"}) == 77
    assert e2e.flags("INBOX") == [set(), set()]
    assert "Failed" not in e2e.imap.folders()
    assert e2e.redmine.issues() == []
    assert e2e.redmine.mail_handler_posts() == 1  # the folder stops at the first answer
    err = capsys.readouterr().err
    assert "Redmine refused the key (403)" in err and "not-the-key" not in err


# -- 8: large mail -----------------------------------------------------------------------------


def test_stock_redmine_answers_500_to_a_form_over_4_mib(redmine_stock: RealRedmine) -> None:
    """Stock Redmine 5.0.4 (Rack 2.2.22) answers 500, not 413, to a form over 4 MiB."""
    redmine_stock.reset()
    raw, _blob = big_mail()
    answer = requests.post(f"{redmine_stock.url}/mail_handler", timeout=60,
                           data={"key": MAIL_KEY, "email": crlf(raw), "issue[project]": "support"})
    assert answer.status_code == 500
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert "Rack::QueryParser::QueryLimitError" in redmine_stock.log_since_reset()
    assert redmine_stock.issues() == []


def test_large_mail_on_stock_redmine_is_a_permanent_failure_with_the_reason(
        e2e: E2E, capsys: pytest.CaptureFixture[str]) -> None:
    """A ~6 MB message the stock server cannot take fails at once, naming the size, alone."""
    raw, _blob = big_mail()
    e2e.append(raw)
    after = e2e.deliver(subject="Small one after the big one")
    code = e2e.run(folder={"move_on_failure": "Failed"})
    err = capsys.readouterr().err
    assert code == 0, f"exit {code}: {err[-800:]}"
    [issue] = e2e.redmine.issues_with_journals()
    assert after in issue["description"]
    assert len(e2e.in_folder("Failed")) == 1
    assert re.search(r"(?i)too large|size|limit|4 ?Mi?B", err), err[-800:]


def test_large_mail_with_raised_limits_becomes_an_issue_with_its_attachment(
        tmp_path: Path, imap: ImapAccount, redmine_roomy: RealRedmine) -> None:
    """With the form and attachment limits raised, a 6 MiB attachment arrives intact."""
    redmine_roomy.reset(settings={"attachment_max_size": "10240"})  # KiB; the default is 5120
    e2e = E2E(tmp_path, imap, redmine_roomy)
    raw, blob = big_mail()
    message_id = e2e.append(raw)
    assert e2e.run(folder={"move_on_failure": "Failed"}) == 0
    [issue] = redmine_roomy.issues_with_journals()
    assert message_id in issue["description"]
    [attachment] = issue["attachments"]
    assert (attachment["filename"], attachment["filesize"]) == ("dump.bin", len(blob))
    content = redmine_roomy.download(attachment["content_url"])
    assert hashlib.sha256(content).digest() == hashlib.sha256(blob).digest()
    assert e2e.imap.messages("INBOX") == {}


def test_attachment_over_redmine_max_size_is_dropped_with_a_201(
        tmp_path: Path, imap: ImapAccount, redmine_roomy: RealRedmine) -> None:
    """Redmine drops a 6 MiB attachment over attachment_max_size and still answers 201."""
    redmine_roomy.reset()
    e2e = E2E(tmp_path, imap, redmine_roomy)
    raw, _blob = big_mail()
    message_id = e2e.append(raw)
    assert e2e.run(folder={"move_on_failure": "Failed"}) == 0
    [issue] = redmine_roomy.issues_with_journals()
    assert message_id in issue["description"] and issue["attachments"] == []
    assert e2e.imap.messages("INBOX") == {} and e2e.in_folder("Failed") == []


# -- 9: no loss, no duplicates -----------------------------------------------------------------


def test_mixed_backlog_no_loss_no_duplicates_across_runs(e2e: E2E) -> None:
    """Every Message-ID is in Redmine or one folder exactly once after each of 3 runs."""
    e2e.success_folder = "Done"
    config: dict[str, Any] = {
        "loops_folder": "Loops",
        "folder": {"project": "support", "category": "request", "move_on_success": "Done",
                   "move_on_failure": "Failed", "rules": [FORM_RULE]},
    }
    first = e2e.deliver(subject="Printer on fire")
    e2e.deliver(subject="Scanner jammed")
    e2e.deliver(subject="Let me in", sender=MALLORY)
    e2e.deliver(subject="Where is my order?", sender=BOB)
    e2e.deliver(subject="Out of office", headers={"Auto-Submitted": "auto-replied"})
    e2e.deliver(subject="Request: new laptop", sender=FORM_SENDER,
                headers={"Reply-To": ALICE, "Auto-Submitted": "auto-generated"})
    [(_flags, copy)] = [m for m in e2e.imap.messages("INBOX").values() if first.encode() in m[1]]
    e2e.append(copy)  # the same message delivered again

    assert e2e.run(**config) == 0
    issues = e2e.redmine.issues()
    assert sorted(issue["subject"] for issue in issues) == [
        "Printer on fire", "Request: new laptop", "Scanner jammed"]
    assert e2e.redmine.mail_handler_posts() == 5  # not the copy, not the auto-reply
    assert len(e2e.in_folder("Failed")) == 2 and len(e2e.in_folder("Loops")) == 1
    assert e2e.imap.messages("INBOX") == {}

    assert e2e.run(**config) == 0
    assert e2e.redmine.issues() == issues
    assert e2e.redmine.mail_handler_posts() == 5

    number = next(issue["id"] for issue in issues if issue["subject"] == "Printer on fire")
    reply = e2e.deliver(subject=f"Re: [Support - Bug #{number}] Printer on fire",
                        text="Fixed, thanks.")
    assert e2e.run(**config) == 0
    assert len(e2e.redmine.issues()) == 3
    [journal] = e2e.redmine.issue(number)["journals"]
    assert reply in journal["notes"]


# -- issue 19: the requester named in the form mail's body -------------------------------------

REQUESTER_RULE = {  # as in config.example.yaml
    "name": "request-form", "allow": ["auto-submitted"],
    "if": ["^From:.*request@example\\.org",
           {"body": "^(?:申請者|Requester): *(?P<requester>[^\\s<>]+@[^\\s<>]+)"}],
    "then": {"submit": {}, "remove_header": "Auto-Submitted",
             "set_header": {"From": "{body.requester}"}}}


@pytest.mark.parametrize("line", [f"申請者: {ALICE}", f"Requester: {ALICE}"],
                         ids=["japanese", "english"])
def test_form_mail_becomes_an_issue_authored_by_the_requester_in_its_body(
        e2e: E2E, line: str) -> None:
    """A form mail From the list address, the requester only in its body: her issue."""
    message_id = e2e.deliver(subject="Request: new laptop", sender=FORM_SENDER,
                             headers={"Auto-Submitted": "auto-generated"},
                             text=f"A new request.\n{line}\n")
    assert e2e.run(folder={"project": "support", "rules": [REQUESTER_RULE]}) == 0
    [issue] = e2e.redmine.issues_with_journals()
    assert issue["author"]["name"] == "Alice Member" and message_id in issue["description"]
