"""`imap-ingest from-fetchmail`: a .fetchmailrc's poll entries as YAML, table-tested, with
what does not translate said in comments; the seed desk's file loads as a valid config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_ingest.config import load
from imap_ingest.from_fetchmail import convert

SEED = """\
poll mail.example.org with protocol pop3
  user user@example.org is user password "xxxxxxxxx"
  keep ssl mda "/usr/bin/procmail"
"""


def account(text: str) -> dict[str, Any]:
    accounts: list[dict[str, Any]] = yaml.safe_load(convert(text))["accounts"]
    return accounts[0]


@pytest.mark.parametrize(("rc", "expected"), [
    (SEED, {"protocol": "pop3", "host": "mail.example.org", "security": "ssl",
            "username": "user@example.org", "keep": True}),
    ("poll pop.example.org proto POP3 user u pass p", {"keep": False, "security": "starttls"}),
    ("poll pop.example.org proto pop3 user u no keep", {"keep": False}),
    ("poll mx port 1995 protocol pop3 username u ssl sslcertfile /etc/ca.pem no sslcertck",
     {"port": 1995, "ca_file": "/etc/ca.pem", "verify_tls": False}),
    ("poll imap.example.org protocol imap user u folder INBOX,support ssl",
     {"folders": [{"name": "INBOX", "project": "EDIT"}, {"name": "support", "project": "EDIT"}]}),
    ("set daemon 240\npoll h protocol pop3 user u keep",
     {"folders": [{"name": "INBOX", "project": "EDIT", "interval": "240s"}]}),
    ("poll h protocol pop3 user u timeout 30 keep", {"timeout": 30}),
], ids=["seed", "no-keep-deletes", "no-keep", "port-ca", "imap-folders", "daemon", "timeout"])
def test_options_translate(rc: str, expected: dict[str, Any]) -> None:
    """Each fetchmail option lands on its imap-ingest key."""
    got = account(rc)
    assert {key: got.get(key) for key in expected} == expected


@pytest.mark.parametrize(("rc", "note"), [
    (SEED, "mda /usr/bin/procmail: imap-ingest posts to the tracker itself"),
    (SEED, "the password is not copied: export MAIL_EXAMPLE_ORG_PASSWORD"),
    ("poll h protocol pop3 user u smtphost localhost", "smtphost localhost: not translated"),
    ("poll h protocol pop3 user u fetchall", "fetchall: not translated"),
    ("poll h protocol pop3 user u", "no keep: fetchmail deleted what it fetched"),
    ("poll h user u", "no protocol: fetchmail tried IMAP, then POP3"),
    ("poll h protocol etrn user u", "protocol etrn: not POP3 or IMAP"),
    ("set postmaster admin\npoll h protocol pop3 user u keep", "set postmaster admin"),
], ids=["mda", "password", "smtphost", "fetchall", "no-keep", "no-protocol", "etrn",
        "set"])
def test_what_does_not_translate_is_said(rc: str, note: str) -> None:
    """Options without a counterpart are named in a comment."""
    comments = [line for line in convert(rc).splitlines() if line.startswith("#")]
    assert any(note in line for line in comments), comments


def test_two_users_of_one_server_are_two_accounts() -> None:
    """Each user line of a poll entry is an account of its own."""
    accounts = yaml.safe_load(convert("poll h protocol pop3 user a keep user b"))["accounts"]
    assert [(a["name"], a["username"]) for a in accounts] == [("h", "a"), ("h-2", "b")]


def test_the_seed_converts_to_a_config_that_loads(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed desk's .fetchmailrc gives a valid configuration once a project is set."""
    path = tmp_path / "config.yaml"
    path.write_text(convert(SEED).replace("EDIT", "project"))
    monkeypatch.setenv("MAIL_EXAMPLE_ORG_PASSWORD", "xxxxxxxxx")
    monkeypatch.setenv("REDMINE_MAIL_KEY", "k")
    config = load(path)
    assert config.accounts[0].protocol == "pop3" and config.accounts[0].keep
