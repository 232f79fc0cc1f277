"""One configuration feeding both real trackers: two folders of one account, one --once run."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from imap_ingest.cli import main

from ..support.dovecot import ImapAccount
from ..support.mail import make
from .redmine import MAIL_KEY, RealRedmine
from .rt import RealRT


def test_one_run_feeds_redmine_and_rt(tmp_path: Path, imap: ImapAccount,
                                      redmine_stock: RealRedmine, real_rt: RealRT) -> None:
    """One run files each message in its own tracker only, once."""
    # Mail in ToRedmine becomes Redmine issues, mail in ToRT becomes RT tickets, and both
    # folders end empty.
    redmine_stock.reset()
    sent: dict[str, list[str]] = {"ToRedmine": [], "ToRT": []}
    for folder, ids in sent.items():
        for n in range(3):
            message_id = f"<both-{folder}-{n}@example.org>"
            ids.append(message_id)
            imap.append(folder, make(subject=f"{folder} request {n}", message_id=message_id,
                                     body=f"Please help.\nref {message_id}\n"))
    config = {
        "accounts": [{"name": "desk", "host": imap.host, "port": imap.port,
                      "security": "none", "username": imap.username,
                      "password": imap.password,
                      "folders": [{"name": "ToRedmine", "target": "redmine",
                                   "project": "support", "category": "request"},
                                  {"name": "ToRT", "target": "rt", "queue": "Support"}]}],
        "targets": {"redmine": {"type": "redmine", "url": redmine_stock.url, "key": MAIL_KEY},
                    "rt": {"type": "rt", "url": real_rt.url, "timeout": "30s"}},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--once", "-c", str(path)]) == 0

    in_redmine = [mid for issue in redmine_stock.issues_with_journals()
                  for mid in re.findall(r"ref (<[^>\s]+>)", issue.get("description") or "")]
    assert sorted(in_redmine) == sorted(sent["ToRedmine"])
    for message_id in sent["ToRT"]:
        [record] = real_rt.records(message_id)
        assert real_rt.ticket(record.ticket).queue == "Support"
    for message_id in sent["ToRedmine"]:
        assert real_rt.records(message_id) == []
    assert imap.messages("ToRedmine") == imap.messages("ToRT") == {}
