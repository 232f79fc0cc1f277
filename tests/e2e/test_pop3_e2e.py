"""The seed desk's set-up, read straight from POP3 into Debian's real Redmine: no
fetchmail, no procmail, no local IMAP server, no cron'd rake task.

Its .fetchmailrc polled ``mail.example.org with protocol pop3 … keep ssl mda procmail``; its
.procmailrc sent form mail (From the list, ``Auto-Submitted: auto-generated``, no
``X-Mailer: Redmine``) to the folder rake read with ``project=… category=request``, and left
the rest to the user's own mail client. Here that is one POP3 account with one folder.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml

from imap_ingest.cli import main

from ..support.dovecot import Dovecot
from ..support.mail import make
from .redmine import MAIL_KEY, RealRedmine

ALICE = "alice@example.org"  # a Reporter of the project; the form's Reply-To
LIST = "request@example.org"  # the form's list address

SEED_FOLDER = {
    "name": "INBOX", "project": "support", "category": "request",  # the seed's rake options
    "rules": [
        # :0 * ^From:.request@example.org * ^Auto-Submitted:.auto-generated
        #    * ! ^X-Mailer:.Redmine  → the folder Redmine read
        {"name": "form mail",
         "if": ["^From:.*request@example\\.org", "^Auto-Submitted:.auto-generated",
                "!^X-Mailer:.Redmine"],
         "allow": ["auto-submitted"],
         "then": {"submit": {}, "remove_header": "Auto-Submitted", "from_header": "Reply-To"}},
        # everything else was for the user's own mail client: left on the server (keep)
        {"name": "not for the tracker", "then": "skip"},
    ],
}


def test_seed_desk_pop3_into_real_redmine(tmp_path: Path, dovecot_pop3: Dovecot,
                                          redmine_stock: RealRedmine) -> None:
    """Form mail becomes one issue in project and category; the rest stays on the server."""
    redmine_stock.reset()
    box = dovecot_pop3.account()
    ids = {}
    for name, sender, headers in (
            ("form", LIST, {"Reply-To": ALICE, "Auto-Submitted": "auto-generated"}),
            ("notification", LIST, {"Auto-Submitted": "auto-generated",
                                    "X-Mailer": "Redmine"}),
            ("personal", "bob@example.org", {})):
        ids[name] = f"<e2e-{uuid.uuid4().hex}@example.org>"
        box.append("INBOX", make(subject=f"Request: {name}", sender=sender, headers=headers,
                                 body=f"ref {ids[name]}\n", message_id=ids[name]))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "accounts": [{"name": "mail.example.org", "protocol": "pop3", "host": box.host,
                      "port": dovecot_pop3.pop3s_port, "security": "ssl",
                      "ca_file": box.ca_file, "username": box.username,
                      "password": box.password, "keep": True, "folders": [SEED_FOLDER]}],
        "targets": {"redmine": {"type": "redmine", "url": redmine_stock.url, "key": MAIL_KEY}},
        "state_dir": str(tmp_path / "state")}))
    assert main(["run", "--once", "-c", str(path)]) == 0
    [issue] = redmine_stock.issues_with_journals()
    assert issue["author"]["name"] == "Alice Member"
    assert issue["category"]["name"] == "request" and ids["form"] in issue["description"]
    assert main(["run", "--once", "-c", str(path)]) == 0
    assert len(redmine_stock.issues()) == 1 and redmine_stock.mail_handler_posts() == 1
    assert len(box.messages("INBOX")) == 3  # keep: all of it still on the server
