"""`imap-ingest from-rake`: a `rake redmine:email:receive_imap ...` line as imap-ingest YAML.

Redmine's option quirks are kept, and said in comments: ``ssl=`` and ``starttls=`` with any
value (even ``ssl=0``) turn TLS on; ``no_permission_check``, ``no_account_notice`` and
``no_notification`` count only when exactly ``1``; ``private=`` with any value makes issues
private; the port stays 143 unless given, even with ssl.
"""

from __future__ import annotations

import json
import re
import shlex

import yaml

_ISSUE = ("project", "status", "tracker", "category", "priority", "assigned_to",
          "fixed_version", "allow_override")
_HANDLER = ("unknown_user", "default_group", "project_from_subaddress")
_ONE_ONLY = ("no_permission_check", "no_account_notice", "no_notification")
_IGNORED = ("RAILS_ENV", "REDMINE_LANG")


def convert(line: str) -> str:
    """The YAML for one rake command line (or just its key=value options)."""
    options: dict[str, str] = {}
    for token in shlex.split(line):
        key, equals, value = token.partition("=")
        if equals and key and key not in _IGNORED:
            options[key] = value
    notes: list[str] = []
    account = [("name", "redmine"), ("host", options.pop("host", "127.0.0.1"))]
    if "port" in options:
        account.append(("port", options.pop("port")))
    if "ssl" in options:
        value = options.pop("ssl")
        account.append(("security", "ssl"))
        notes.append(f"ssl={value}: Redmine turns SSL on for any value, so security: ssl")
        if value == "force":
            account.append(("verify_tls", "false"))
            notes.append("ssl=force skips certificate checks (Redmine 6.1): verify_tls: false;"
                         " prefer ca_file with your CA")
        if "port" not in dict(account):
            notes.append("no port=: rake still used 143 with ssl; imap-ingest uses 993 "
                         "(set port: if your server really speaks TLS on 143)")
    elif "starttls" in options:
        options.pop("starttls")
        account.append(("security", "starttls"))
    else:
        account += [("security", "none"), ("allow_insecure", "true")]
        notes.append("no ssl or starttls: the password went in clear; consider ssl")
    account.append(("username", options.pop("username", "EDIT")))
    if options.pop("password", None) is not None:
        notes.append("the password is not copied: export IMAP_PASSWORD")
    account.append(("password_env", "IMAP_PASSWORD"))

    folder = [("name", options.pop("folder", "INBOX"))]
    folder += [(key, options.pop(key)) for key in ("move_on_success", "move_on_failure")
               if key in options]
    folder += [(key, options.pop(key)) for key in _ISSUE if key in options]
    if "private" in options:
        notes.append(f"private={options.pop('private')}: Redmine makes issues private for any "
                     "value")
        folder.append(("is_private", "true"))

    target = [("type", "redmine"), ("url", "https://redmine.example.org  # EDIT"),
              ("key_env", "REDMINE_MAIL_KEY")]
    target += [(key, options.pop(key)) for key in _HANDLER if key in options]
    for key in _ONE_ONLY:
        if key in options:
            value = options.pop(key)
            target.append((key, "true" if value == "1" else "false"))
            if value != "1":
                notes.append(f"{key}={value}: Redmine counts only 1, so false")
    notes += [f"{key}={value}: not a receive_imap option, left out"
              for key, value in options.items()]
    return _yaml(account, folder, target, notes)


def _yaml(account: list[tuple[str, str]], folder: list[tuple[str, str]],
          target: list[tuple[str, str]], notes: list[str]) -> str:
    lines = ["# Converted from a rake redmine:email:receive_imap line.",
             "# imap-ingest posts to Redmine's incoming-mail web service instead of running",
             "# inside Redmine: enable it (Administration > Settings > Incoming emails), export",
             "# its key as REDMINE_MAIL_KEY, and set the url below.",
             *(f"# - {note}" for note in notes), "", "accounts:"]
    lines += [f"  {'- ' if i == 0 else '  '}{key}: {_value(value)}"
              for i, (key, value) in enumerate(account)]
    lines += ["    folders:"]
    lines += [f"      {'- ' if i == 0 else '  '}{key}: {_value(value)}"
              for i, (key, value) in enumerate(folder)]
    lines += ["", "targets:", "  redmine:"]
    lines += [f"    {key}: {_value(value)}" for key, value in target]
    return "\n".join(lines) + "\n"


def _value(value: str) -> str:
    """Plain when YAML reads it back as meant; quoted otherwise (e.g. "on", "1.0", "a: b")."""
    if value in ("true", "false") or value.isdigit() or "  # " in value:
        return value
    if yaml.safe_load(value) == value and re.fullmatch(r"[\w][\w./@+-]*", value):
        return value
    return json.dumps(value, ensure_ascii=False)
