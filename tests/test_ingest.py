"""End to end with real parts: dovecot on loopback, imap-ingest run --once, a real HTTP server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from imap_ingest.cli import main
from imap_ingest.config import SubmitOptions
from imap_ingest.message import Message
from imap_ingest.rules import Decision, RuleSet
from imap_ingest.states import FAILED, SKIPPED
from imap_ingest.trackers import Envelope, Outcome
from imap_ingest.trackers.redmine import Redmine, crlf

from .support.dovecot import Dovecot, ImapAccount
from .support.ingest_env import backlog, write_config
from .support.mail import make
from .support.process import wait_for
from .support.redmine_server import FakeRedmine


class Run:
    """Runs `imap-ingest run --once` against the test account with a given folder config."""

    def __init__(self, tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> None:
        self.tmp_path, self.imap, self.redmine = tmp_path, imap, redmine

    def __call__(self, *args: str, **config: Any) -> int:
        path = write_config(self.tmp_path / "config.yaml", self.imap, self.redmine.url, **config)
        return main(["run", "--once", "-c", str(path), *args])


@pytest.fixture
def run(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine) -> Run:
    return Run(tmp_path, imap, redmine)


def answer(status: int, delay: float = 0) -> Any:
    return lambda request: (status, b"", delay)


def flags(imap: ImapAccount, folder: str = "INBOX") -> list[set[bytes]]:
    return [set(f) for f, _ in imap.messages(folder).values()]


def test_success_deletes_exactly_the_submitted_messages(run: Run, imap: ImapAccount,
                                                        redmine: FakeRedmine) -> None:
    """Three messages become three posts with their exact bytes; the folder is left empty."""
    raws = backlog(imap, 3)
    assert run() == 0
    assert redmine.emails == [crlf(raw) for raw in raws]
    assert imap.messages("INBOX") == {}


def test_other_clients_deleted_mail_is_not_expunged(run: Run, imap: ImapAccount) -> None:
    """We expunge by UID: a message another client flagged \\Deleted stays (no plain EXPUNGE)."""
    imap.append("INBOX", make(), flags=[b"\\Deleted"])
    imap.append("INBOX", make())
    assert run() == 0
    with imap.client() as client:
        client.select_folder("INBOX")
        assert len(client.search(["DELETED"])) == 1


def test_success_moves_to_move_on_success(run: Run, imap_any: ImapAccount,
                                          redmine: FakeRedmine, tmp_path: Path) -> None:
    """move_on_success is created and receives the message, with and without MOVE."""
    raw = make()
    imap_any.append("INBOX", raw)
    code = main(["run", "--once", "-c", str(write_config(
        tmp_path / "c.yaml", imap_any, redmine.url, folder={"move_on_success": "Done"}))])
    assert code == 0
    assert imap_any.messages("INBOX") == {}
    assert [body for _, body in imap_any.messages("Done").values()] == [raw]


def test_refused_goes_to_move_on_failure_created_if_missing(
        run: Run, imap_any: ImapAccount, redmine: FakeRedmine, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """422 moves the message to move_on_failure (created), with the reason logged; exit 0."""
    redmine.answer = answer(422)
    raw = make()
    imap_any.append("INBOX", raw)
    assert "Failed" not in imap_any.folders()
    code = main(["run", "--once", "-c", str(write_config(
        tmp_path / "c.yaml", imap_any, redmine.url, folder={"move_on_failure": "Failed"}))])
    assert code == 0
    assert imap_any.messages("INBOX") == {}
    [(msg_flags, body)] = imap_any.messages("Failed").values()
    assert body == raw and b"\\Seen" not in msg_flags
    assert "failed: Redmine refused the message (422)" in capsys.readouterr().err


def test_refused_without_failure_folder_is_kept_marked_not_retried(
        run: Run, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Without move_on_failure the message stays, marked (not \\Seen), and is not tried again."""
    redmine.answer = answer(422)
    imap.append("INBOX", make())
    assert run() == 0
    assert flags(imap) == [{FAILED.encode()}]
    assert run() == 0
    assert len(redmine.requests) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_leaves_mail_unseen_and_stops_the_target(
        run: Run, imap: ImapAccount, redmine: FakeRedmine, status: int) -> None:
    """A 5xx leaves every message unflagged, stops the target and exits 75."""
    # The target is not hammered; a run before the retry timer is due does not contact it;
    # --retry-now (or the timer) gets them through.
    redmine.answer = answer(status)
    for _ in range(3):
        imap.append("INBOX", make())
    assert run() == 75
    assert len(redmine.requests) == 1
    assert flags(imap) == [set(), set(), set()]
    redmine.answer = answer(201)
    assert run() == 75
    assert len(redmine.requests) == 1
    assert run("--retry-now") == 0
    assert len(redmine.requests) == 4
    assert imap.messages("INBOX") == {}


def test_tracker_unreachable_leaves_mail(tmp_path: Path, imap: ImapAccount) -> None:
    """Connection refused: exit 75, nothing touched."""
    imap.append("INBOX", make())
    path = write_config(tmp_path / "c.yaml", imap, "http://127.0.0.1:9")
    assert main(["run", "--once", "-c", str(path)]) == 75
    assert flags(imap) == [set()]


def test_timeout_leaves_mail_under_resubmit(run: Run, imap: ImapAccount,
                                            redmine: FakeRedmine) -> None:
    """With in_doubt: resubmit, a tracker timeout leaves the message unflagged and exits 75."""
    redmine.answer = answer(201, delay=2)
    imap.append("INBOX", make())
    assert run(target={"timeout": "0.5s"}, in_doubt="resubmit") == 75
    assert flags(imap) == [set()]


def test_timeout_quarantines_mail(run: Run, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """A tracker that took the message but answered too late: quarantined, never sent twice."""
    redmine.answer = answer(201, delay=2)
    imap.append("INBOX", make())
    assert run(target={"timeout": "0.5s"}) == 0
    assert run("--retry-now", target={"timeout": "0.5s"}) == 0
    assert len(redmine.requests) == 1
    assert imap.messages("INBOX") == {} and len(imap.messages("Quarantine")) == 1


def test_wrong_key_touches_nothing_and_exits_77(run: Run, imap: ImapAccount,
                                                redmine: FakeRedmine,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """403: the folder stops at the first message, nothing moves or is flagged; exit 77."""
    for _ in range(2):
        imap.append("INBOX", make())
    assert run(key="wrong-key", folder={"move_on_failure": "Failed"}) == 77
    assert len(redmine.requests) == 1
    assert flags(imap) == [set(), set()]
    assert "Failed" not in imap.folders()
    err = capsys.readouterr().err
    assert "Redmine refused the key (403)" in err and "wrong-key" not in err


RULES = [
    {"name": "form", "if": ["^Auto-Submitted:.auto-generated", "!^X-Mailer:.Redmine"],
     "allow": ["auto-submitted"],
     "then": {"submit": {"project": "ops", "category": "request"},
              "remove_header": "Auto-Submitted"}},
    {"name": "lists", "if": ["^List-Id:"], "then": {"move": "Lists"}},
    {"name": "rest", "then": "skip"},
]


def test_rules_submit_move_and_skip(run: Run, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Each rule form acts: submit with overrides, move to a folder, skip."""
    # Submit with overrides: the allowed form mail, its Auto-Submitted removed; a skipped
    # message is never looked at again.
    form = make(headers={"Auto-Submitted": "auto-generated"})
    notice = make(headers={"Auto-Submitted": "auto-generated", "X-Mailer": "Redmine"})
    listed = make(headers={"List-Id": "<users.lists.example.org>"})
    for raw in (form, notice, listed):
        imap.append("INBOX", raw)
    assert run(folder={"rules": RULES}) == 0
    [request] = redmine.requests
    assert request.field("email") == form.replace(b"Auto-Submitted: auto-generated\r\n", b"")
    assert (request.field("issue[project]"), request.field("issue[category]")) == (b"ops",
                                                                                   b"request")
    assert [body for _, body in imap.messages("Lists").values()] == [listed]
    [(skip_flags, body)] = imap.messages("INBOX").values()
    assert body == notice and set(skip_flags) == {SKIPPED.encode()}
    assert run(folder={"rules": RULES}) == 0
    assert len(redmine.requests) == 1


def _broken_mime() -> bytes:
    return (b"From: x@example.org\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n--never-closed\r\n"
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!not base64")


def _eight_bit() -> bytes:
    return ("From: Jürgen <j@example.org>\r\nSubject: Größe — 日本語\r\n"
            "Message-ID: <8bit@example.org>\r\n\r\nKörper\r\n").encode() + b"\xff\xfe latin \xe9"


@pytest.mark.parametrize("raw", [_broken_mime(), _eight_bit(), b"no header at all\r\n"],
                         ids=["broken-mime", "8bit-headers", "no-header"])
def test_odd_messages_are_submitted_untouched(run: Run, imap: ImapAccount, redmine: FakeRedmine,
                                              raw: bytes) -> None:
    """Broken MIME, raw 8-bit headers, no header block: posted byte for byte, none crashes."""
    imap.append("INBOX", raw)
    assert run() == 0
    assert redmine.emails == [crlf(raw)]


def test_empty_message_is_moved_aside_not_posted(run: Run, imap: ImapAccount,
                                                 dovecot: Dovecot, redmine: FakeRedmine,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A 0-byte message is set aside with its reason; the one beside it is submitted."""
    # dovecot refuses to APPEND a 0-byte message, so it is written into the Maildir as an MDA
    # would.
    imap.append("INBOX", make())  # creates the Maildir
    empty = dovecot.directory / "home" / imap.username / "Maildir" / "new" / "1700000000.M1.t"
    empty.write_bytes(b"")
    os.chown(empty, dovecot.users.mail_uid, dovecot.users.mail_gid)
    assert run(folder={"move_on_failure": "Failed"}) == 0
    assert len(redmine.requests) == 1
    assert [body for _, body in imap.messages("Failed").values()] == [b""]
    assert "empty message" in capsys.readouterr().err


def test_huge_message_is_moved_aside_without_being_fetched(
        run: Run, imap: ImapAccount, redmine: FakeRedmine,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A 30 MB message over max_message_size goes to move_on_failure, unfetched."""
    # The reason is given, and the messages around it are submitted.
    big = make(body=("x" * 76 + "\n") * 400_000)
    assert len(big) > 30_000_000
    imap.append("INBOX", make())
    imap.append("INBOX", big)
    imap.append("INBOX", make())
    assert run(folder={"move_on_failure": "Failed"}) == 0
    assert len(redmine.requests) == 2
    assert [len(body) for _, body in imap.messages("Failed").values()] == [len(big)]
    assert "over max_message_size" in capsys.readouterr().err


def test_oversized_message_is_moved_by_a_header_rule_without_fetching_its_body(
        run: Run, dovecot: Dovecot, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Over max_message_size, a header rule still moves the message: only its header is read."""
    big = make(subject="[list] big", body=("x" * 76 + "\n") * 300)
    imap.append("INBOX", big)
    assert run(folder={"max_message_size": "10k", "rules": [
        {"if": [r"^Subject: \[list\]"], "then": {"move": "Lists"}}]}) == 0
    wait_for(lambda: dovecot.commands("imap", imap.username).get("hdr_count", 0) >= 1)
    assert dovecot.commands("imap", imap.username)["body_count"] == 0
    assert redmine.requests == []
    assert [body for _, body in imap.messages("Lists").values()] == [big]


def test_huge_message_within_a_raised_limit_is_submitted(run: Run, imap: ImapAccount,
                                                         redmine: FakeRedmine) -> None:
    """A big message within a raised max_message_size is submitted whole."""
    big = make(body=("y" * 76 + "\n") * 400_000)
    imap.append("INBOX", big)
    assert run(folder={"max_message_size": "40M"}) == 0
    assert redmine.emails == [crlf(big)]


def test_sizes_are_fetched_in_batches(run: Run, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """More messages than batch_size: all submitted in order, folder empty."""
    raws = backlog(imap, 7)
    assert run(folder={"batch_size": 3}) == 0
    assert redmine.emails == raws
    assert imap.messages("INBOX") == {}


def test_missing_source_folder_exits_78(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing source folder exits 78 naming the folder."""
    assert run(folder={"name": "Nope"}) == 78
    assert "folder Nope: the folder does not exist" in capsys.readouterr().err


def test_login_refused_exits_77(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused login exits 77 without showing the password."""
    assert run(account={"password": "not-the-password"}) == 77
    err = capsys.readouterr().err
    assert "login refused" in err and "not-the-password" not in err


def test_imap_unreachable_exits_75(run: Run) -> None:
    """An unreachable IMAP server exits 75."""
    assert run(account={"port": 9}) == 75


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_verified_with_ca_file(run: Run, imap: ImapAccount, redmine: FakeRedmine,
                                   security: str) -> None:
    """Implicit TLS and STARTTLS work with the private CA given as ca_file."""
    imap.append("INBOX", make())
    port = imap.ssl_port if security == "ssl" else imap.port
    account = {"security": security, "port": port, "ca_file": imap.ca_file, "host": "localhost"}
    assert run(account=account) == 0
    assert len(redmine.requests) == 1


def test_untrusted_certificate_is_refused(run: Run, imap: ImapAccount,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Without the CA the certificate is not trusted: no login, exit 75, TLS named."""
    imap.append("INBOX", make())
    assert run(account={"security": "ssl", "port": imap.ssl_port, "host": "localhost"}) == 75
    assert "TLS failure" in capsys.readouterr().err
    assert flags(imap) == [set()]


def test_debug_shows_exchanges_but_no_secret(run: Run, imap: ImapAccount, redmine: FakeRedmine,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--debug logs the IMAP commands and HTTP requests; the password and key never appear."""
    imap.append("INBOX", make())
    assert run("--debug") == 0
    err = capsys.readouterr().err
    assert "FETCH" in err and "/mail_handler" in err
    assert imap.password not in err and redmine.key not in err


def test_json_log_lines(run: Run, imap: ImapAccount, capsys: pytest.CaptureFixture[str]) -> None:
    """--log-format json gives one object per line with the message's fields."""
    import json

    imap.append("INBOX", make(message_id="<json-1@example.org>"))
    assert run("--log-format", "json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [submitted] = [line for line in lines if line.get("outcome") == "submitted"]
    assert submitted["message_id"] == "<json-1@example.org>"
    assert (submitted["folder"], submitted["rule"], submitted["target"]) == ("INBOX", "default",
                                                                             "redmine")


def test_check_reports_each_part(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """check logs in, opens each folder, tests the key, creates nothing."""
    imap.append("INBOX", make())
    path = write_config(tmp_path / "c.yaml", imap, redmine.url)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK    account test: logged in" in out
    assert "OK    account test folder INBOX: 1 new message(s)" in out
    assert "OK    target redmine:" in out
    # The key goes in a POST without an email (Redmine answers 422, creating nothing).
    assert {r.method for r in redmine.requests} == {"POST"}
    assert not any("email" in r.form or "key" in r.path for r in redmine.requests)
    assert len(imap.messages("INBOX")) == 1


def test_check_names_each_failure(tmp_path: Path, imap: ImapAccount, redmine: FakeRedmine,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`check` names each failing folder and target and exits 78."""
    path = write_config(tmp_path / "c.yaml", imap, redmine.url, key="bad",
                        folder={"name": "Missing"})
    assert main(["check", "-c", str(path)]) == 78
    out = capsys.readouterr().out
    assert "FAIL  account test folder Missing: the folder does not exist" in out
    assert "FAIL  target redmine: Redmine refused the key (403)" in out


def test_bad_config_exits_78_naming_file_and_key(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config exits 78 naming the file and each bad key."""
    path = tmp_path / "c.yaml"
    path.write_text("accounts: []\ntargets: {}\nfoo: 1\n")
    assert main(["run", "--once", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{path}: accounts: List should have at least 1 item" in err
    assert "foo: unknown key" in err




def test_copy_discard_and_header_edits_end_to_end(run: Run, imap_any: ImapAccount,
                                                  redmine: FakeRedmine, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """copy, submit with header edits, and discard each do their part in one run."""
    # copy then submit (as the Reply-To sender, with a header set), and discard: the archive
    # gets the original bytes, Redmine the edited ones, the discarded one is gone.
    rules = [
        {"then": {"copy": "Archive"}},
        {"name": "spam", "if": ["^Subject: buy now"], "then": "discard"},
        {"name": "form", "if": ["^Reply-To:"],
         "then": {"submit": {}, "from_header": "Reply-To", "set_header": {"X-Form": "yes"}}},
    ]
    form = make(sender="list@example.org", headers={"Reply-To": "taro@example.org"})
    spam = make(subject="buy now")
    imap_any.append("INBOX", form)
    imap_any.append("INBOX", spam)
    path = write_config(tmp_path / "c.yaml", imap_any, redmine.url, folder={"rules": rules})
    assert main(["run", "--once", "-c", str(path)]) == 0
    [email] = redmine.emails
    assert email.startswith(b"From: taro@example.org\r\nX-Original-From: list@example.org\r\n"
                            b"X-Form: yes\r\nTo: support@example.org\r\n")
    assert email.endswith(form[form.index(b"\r\n\r\n"):])
    assert sorted(body for _, body in imap_any.messages("Archive").values()) == sorted(
        [form, spam])
    assert imap_any.messages("INBOX") == {}
    assert "uid 2: discarded: discarded by rule spam" in capsys.readouterr().err


def test_a_deferred_message_is_copied_once_when_it_is_finally_dealt_with(
        run: Run, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """A deferred message is copied once, when it is finally dealt with."""
    # copy goes with the message's disposition: passes that leave it for a retry copy
    # nothing, so the archive ends up with exactly one copy.
    rules = [{"then": {"copy": "Archive"}}, {"then": "submit"}]
    raw = make()
    imap.append("INBOX", raw)
    redmine.answer = answer(503)
    assert run(folder={"rules": rules}) == 75
    assert run("--retry-now", folder={"rules": rules}) == 75
    assert imap.messages("Archive") == {}
    redmine.answer = answer(201)
    assert run("--retry-now", folder={"rules": rules}) == 0
    assert [body for _, body in imap.messages("Archive").values()] == [raw]


def test_mail_another_client_takes_during_a_pass_is_not_counted_left(
        run: Run, imap: ImapAccount, redmine: FakeRedmine) -> None:
    """Mail another client deletes mid-pass is not counted left: the pass exits 0."""
    # A message another client deletes between our search and our fetch is simply not ours
    # any more: the pass ends 0, not 75 as if it had left mail for later. The pass reads a
    # batch ahead: the second is fetched while the first is posted, the third is not yet.
    imap.append("INBOX", make())
    imap.append("INBOX", make())
    third = imap.append("INBOX", make())

    def answer(request: object) -> tuple[int, bytes, float]:
        with imap.client() as other:
            other.select_folder("INBOX")
            other.delete_messages([third])
            other.expunge()
        return 201, b"", 0

    redmine.answer = answer
    assert run(folder={"batch_size": 1}) == 0
    assert len(redmine.requests) == 2
    assert imap.messages("INBOX") == {}


def test_a_message_our_code_chokes_on_fails_alone(
        run: Run, imap: ImapAccount, redmine: FakeRedmine, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Our bug on one message fails that message (with a traceback); the next is submitted."""
    evaluate = RuleSet.evaluate

    def choke(self: RuleSet, message: Message) -> Decision:
        if message.subject == "poison":
            raise RuntimeError("a bug of ours")
        return evaluate(self, message)

    monkeypatch.setattr(RuleSet, "evaluate", choke)
    imap.append("INBOX", make(subject="poison"))
    imap.append("INBOX", make(subject="fine"))
    assert run(folder={"move_on_failure": "Failed"}) == 0
    assert len(redmine.requests) == 1 and imap.messages("INBOX") == {}
    assert len(imap.messages("Failed")) == 1
    assert "internal error (RuntimeError: a bug of ours)" in caplog.text
    assert "Traceback" in caplog.text


def test_a_tracker_client_that_raises_quarantines_that_message(
        run: Run, imap: ImapAccount, redmine: FakeRedmine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracker client that raises mid-send leaves its message in doubt: quarantined."""
    submit = Redmine.submit

    def explode(self: Redmine, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> Outcome:
        if b"Subject: poison" in raw:
            raise RuntimeError("a bug of ours")
        return submit(self, raw, options, envelope)

    monkeypatch.setattr(Redmine, "submit", explode)
    imap.append("INBOX", make(subject="poison"))
    imap.append("INBOX", make(subject="fine"))
    assert run() == 0
    assert len(redmine.requests) == 1 and imap.messages("INBOX") == {}
    assert len(imap.messages("Quarantine")) == 1
