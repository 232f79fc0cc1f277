"""Spam training from the tracker, against the real RT (tests/e2e/rt.py) and SpamAssassin,
and against the real Redmine (tests/e2e/redmine.py): mail in through IMAP, archived; staff
judge the tickets through the tracker's REST API; export-training writes exactly the judged
ones, once, and a real sa-learn learns them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from imap_ingest.cli import main
from imap_ingest.ledger import Ledger

from ..support.dovecot import ImapAccount
from ..support.ingest_env import write_config
from ..support.mail import make
from .redmine import ADMIN_KEY, MAIL_KEY, RealRedmine
from .rt import RT_ADDRESS, RealRT

SPAM, HAM = "queue=spam status=rejected", "queue=general status=resolved"


def _config(imap: ImapAccount, rt: RealRT, tmp_path: Path, token: str | None) -> Path:
    data = {
        "accounts": [{"name": "e2e", "host": imap.host, "port": imap.port, "security": "none",
                      "username": imap.username, "password": imap.password,
                      "addresses": ["support@example.org"], "folders": [{"name": "INBOX"}]}],
        "targets": {"rt": {"type": "rt", "url": rt.url, "queue": "General", "timeout": "30s",
                           "addresses": [RT_ADDRESS],
                           **({"rest_token": token} if token else {})}},
        "archive": {"maildir": str(tmp_path / "archive"), "keep_for": "90d"},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _export(config: Path, out: Path, *extra: str, spam: str = SPAM, ham: str = HAM) -> int:
    return main(["export-training", "-c", str(config), "--since", "30d", "--spam", spam,
                 "--ham", ham, "--out", str(out), *extra])


def _judge(rt: RealRT) -> None:
    """Staff's part: 10 tickets to a Spam queue and rejected, 15 resolved, 5 left open."""
    rt.rest("POST", "queue", body={"Name": "Spam"})
    tickets = [t.id for t in rt.tickets()]
    assert len(tickets) == 30
    for number in tickets[:10]:
        rt.rest("PUT", f"ticket/{number}", body={"Queue": "Spam", "Status": "rejected"})
    for number in tickets[10:25]:
        rt.rest("PUT", f"ticket/{number}", body={"Status": "resolved"})


def _files(directory: Path) -> list[Path]:
    return sorted((directory / "cur").iterdir()) if directory.is_dir() else []


def test_judged_rt_tickets_are_exported_once_and_learned(
        imap: ImapAccount, real_rt: RealRT, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """30 mails, 10 spam and 15 ham in RT → 10 and 15 exported, 0 again, sa-learn counts."""
    config = _config(imap, real_rt, tmp_path, real_rt.auth_token())
    ids = []
    for n in range(30):
        raw = make(subject=f"training message {n}", body=f"words {n} of message number {n}\n")
        ids.append(re.search(rb"Message-ID: (<[^>]+>)", raw)[1].decode())  # type: ignore[index]
        imap.append("INBOX", raw)
    assert main(["run", "--once", "-c", str(config)]) == 0
    archived = list((tmp_path / "archive" / "new").iterdir())
    assert len(archived) == 30 and all(p.stat().st_mode & 0o777 == 0o600 for p in archived)
    [record] = real_rt.records(ids[0])
    capsys.readouterr()
    assert main(["history", "-c", str(config), ids[0]]) == 0
    assert f"ticket {record.ticket}" in capsys.readouterr().out

    _judge(real_rt)
    out = tmp_path / "training"
    assert _export(config, out) == 0
    assert "exported 10 spam, 15 ham; 5 undecided" in capsys.readouterr().out
    spam, ham = _files(out / "spam"), _files(out / "ham")
    assert (len(spam), len(ham)) == (10, 15)
    assert _export(config, out) == 0
    assert "exported 0 spam, 0 ham; 5 undecided" in capsys.readouterr().out
    assert (_files(out / "spam"), _files(out / "ham")) == (spam, ham)

    sa_learn = shutil.which("sa-learn")
    assert sa_learn, "Debian's spamassassin (scripts/test installs it)"
    learn = f"{sa_learn} --dbpath {tmp_path / 'bayes'}"
    assert _export(config, out, "--learn", "--sa-learn", learn) == 0
    said = capsys.readouterr().out
    assert "sa-learn --spam: learned from 10 message(s)" in said
    assert "sa-learn --ham: learned from 15 message(s)" in said
    magic = subprocess.run([sa_learn, "--dbpath", str(tmp_path / "bayes"), "--dump", "magic"],
                           capture_output=True, text=True, check=True).stdout
    assert re.search(r"\b10\s+0\s+non-token data: nspam", magic), magic
    assert re.search(r"\b15\s+0\s+non-token data: nham", magic), magic


def test_without_a_token_nothing_is_looked_up_and_mail_still_flows(
        imap: ImapAccount, real_rt: RealRT, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No rest_token: tickets are made and archived, export-training exports nothing."""
    config = _config(imap, real_rt, tmp_path, None)
    imap.append("INBOX", make(subject="no token"))
    assert main(["run", "--once", "-c", str(config)]) == 0
    assert len(real_rt.tickets()) == 1
    assert _export(config, tmp_path / "training") == 0
    assert "exported 0 spam, 0 ham; 0 undecided, 1 without a known ticket" in \
        capsys.readouterr().out


REDMINE_SPAM, REDMINE_HAM = "tracker=support status=rejected", "status=closed"


def test_judged_redmine_issues_are_exported_once(
        imap: ImapAccount, redmine_stock: RealRedmine, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """30 mails, each paired with its issue; 10 spam, 15 ham, 5 open → 10 and 15, 0 again."""
    # Staff move spam to the Support tracker and reject it, close ham, leave the rest open.
    redmine = redmine_stock
    redmine.reset()
    # Spam often shares a subject: six mails pair with six issues only in their order.
    subjects = ["Invoice overdue" if n % 5 == 0 else f"training message {n}" for n in range(30)]
    refs = []
    for n, subject in enumerate(subjects):
        raw = make(subject=subject, body=f"words {n} of message number {n}\nref <{n}>\n")
        refs.append(re.search(rb"Message-ID: (<[^>]+>)", raw)[1].decode())  # type: ignore[index]
        imap.append("INBOX", raw)
    config = write_config(
        tmp_path / "config.yaml", imap, redmine.url, key=MAIL_KEY,
        target={"api_key": ADMIN_KEY, "timeout": "30s", "concurrency": 1},
        archive={"maildir": str(tmp_path / "archive"), "keep_for": "90d"})
    assert main(["run", "--once", "-c", str(config)]) == 0

    issues = {re.search(r"ref <(\d+)>", issue["description"])[1]: str(issue["id"])  # type: ignore[index]
              for issue in redmine.issues()}
    assert len(issues) == 30
    ledger = Ledger.open(tmp_path / "state")
    try:
        tickets = {one.message_id: one.ticket for one in ledger.unexported(0)}
    finally:
        ledger.close()
    assert tickets == {mid: issues[str(n)] for n, mid in enumerate(refs)}

    statuses, trackers = redmine.ids("issue_statuses"), redmine.ids("trackers")
    numbers = [int(issues[str(n)]) for n in range(30)]
    for number in numbers[:10]:
        redmine.update_issue(number, tracker_id=trackers["support"],
                             status_id=statuses["rejected"])
    for number in numbers[10:25]:
        redmine.update_issue(number, status_id=statuses["closed"])
    out = tmp_path / "training"
    capsys.readouterr()
    judged = {"spam": REDMINE_SPAM, "ham": REDMINE_HAM}
    assert _export(config, out, **judged) == 0
    assert "exported 10 spam, 15 ham; 5 undecided" in capsys.readouterr().out
    spam, ham = _files(out / "spam"), _files(out / "ham")
    assert (len(spam), len(ham)) == (10, 15)
    assert {n for n in range(30) if f"ref <{n}>".encode() in b"".join(
        p.read_bytes() for p in spam)} == set(range(10))
    assert _export(config, out, **judged) == 0
    assert "exported 0 spam, 0 ham; 5 undecided" in capsys.readouterr().out
    assert (_files(out / "spam"), _files(out / "ham")) == (spam, ham)
