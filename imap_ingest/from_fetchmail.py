"""`imap-ingest from-fetchmail ~/.fetchmailrc`: its poll entries as imap-ingest YAML.

Each ``poll HOST … user …`` becomes an account (``protocol pop3`` or ``imap``, ``port``,
``ssl``, ``sslcertfile``, ``keep``, ``folder``, ``timeout``; ``set daemon`` the folders'
interval). What has no counterpart (an ``mda``, ``smtphost``, ``fetchall`` …) is said in a
comment: imap-ingest posts to the tracker itself, and procmail's recipes become rules.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

# fetchmail's noise words: they may appear anywhere and mean nothing.
_NOISE = {"and", "with", "has", "wants", "options", "here", "there", "using", "for", ",",
          ";", ":"}
# Keywords with one argument that have no counterpart: skipped, and said.
_WITH_ARGUMENT = {"smtphost", "smtphosts", "smtpname", "fetchlimit", "limit", "batchlimit",
                  "expunge", "preconnect", "postconnect", "plugin", "plugout", "sslproto",
                  "sslkey", "sslcert", "sslfingerprint", "principal", "envelope", "qvirtual",
                  "aka", "interface", "monitor", "warnings", "antispam", "bsmtp", "lmtp",
                  "smtpaddress", "fetchsizelimit", "fastuidl", "idle", "tracepolls",
                  "localdomains", "via", "esmtpname", "esmtppassword", "pidfile", "logfile",
                  "postmaster", "properties"}
_PROTOCOLS = {"pop3": "pop3", "apop": "pop3", "rpop": "pop3", "kpop": "pop3", "sdps": "pop3",
              "imap": "imap", "auto": "imap"}


@dataclass
class _Entry:
    """One poll entry's user, as read so far."""

    host: str
    protocol: str = "auto"
    port: str | None = None
    username: str | None = None
    password: bool = False
    keep: bool | None = None
    ssl: bool = False
    ca_file: str | None = None
    verify: bool = True
    folders: list[str] = field(default_factory=list)
    timeout: str | None = None
    notes: list[str] = field(default_factory=list)


def convert(text: str) -> str:
    """The YAML for a .fetchmailrc's poll entries, with comments on what does not carry."""
    tokens = shlex.split(text, comments=True)
    entries: list[_Entry] = []
    general: list[str] = []
    interval: str | None = None
    entry: _Entry | None = None
    i = 0

    def take() -> str:
        nonlocal i
        i += 1
        return tokens[i] if i < len(tokens) else ""

    while i < len(tokens):
        word = tokens[i].lower()
        if word in _NOISE:
            pass
        elif word == "set":
            what = take().lower()
            if what == "daemon":
                interval = take()
            else:
                value = "" if what in ("no", "syslog", "invisible") else take()
                general.append(f"set {what} {value}".strip() + ": not translated")
        elif word in ("poll", "skip", "server"):
            entry = _Entry(take())
            entries.append(entry)
            if word == "skip":
                entry.notes.append("skip: this entry was not polled; delete it if unwanted")
        elif word == "defaults":
            general.append("defaults: not translated; repeat its options in each account")
        elif entry is None:
            general.append(f"{tokens[i]}: outside a poll entry, not translated")
        else:
            _option(entry, word, take, entries)
            entry = entries[-1]
        i += 1
    if not entries:
        general.append("no poll entry found")
    return _yaml(entries, interval, general)


def _option(entry: _Entry, word: str, take: Callable[[], str], entries: list[_Entry]) -> None:
    """One keyword of a poll entry (and its argument, through ``take``)."""
    if word in ("proto", "protocol"):
        name = take().lower()
        entry.protocol = _PROTOCOLS.get(name, name)
        if name not in _PROTOCOLS:
            entry.notes.append(f"protocol {name}: not POP3 or IMAP, so not supported")
        elif name not in ("pop3", "imap", "auto"):
            entry.notes.append(f"protocol {name}: read as plain POP3 with a password")
    elif word in ("port", "service"):
        entry.port = take()
    elif word in ("user", "username"):
        if entry.username is not None:  # a second user of the same server: another account
            entries.append(_Entry(entry.host, entry.protocol, entry.port, ssl=entry.ssl))
            entry = entries[-1]
        entry.username = take()
    elif word in ("is", "to"):
        take()  # the local user the mail went to: imap-ingest delivers to the tracker
    elif word in ("pass", "password"):
        take()
        entry.password = True
    elif word in ("keep", "nokeep"):
        entry.keep = word == "keep"
    elif word == "ssl":
        entry.ssl = True
    elif word == "sslcertck":
        entry.verify = True
    elif word == "sslcertfile":
        entry.ca_file = take()
    elif word in ("folder", "folders"):
        entry.folders += [name for name in take().split(",") if name]
    elif word == "timeout":
        entry.timeout = take()
    elif word == "no":
        negated = take().lower()
        if negated == "sslcertck":
            entry.verify = False
        elif negated == "keep":
            entry.keep = False
        else:
            entry.notes.append(f"no {negated}: not translated")
    elif word == "mda":
        entry.notes.append(f"mda {take()}: imap-ingest posts to the tracker itself; the "
                           "procmail recipes that picked the tracker's mail become this "
                           "folder's rules (README: Migrating from fetchmail + procmail)")
    elif word in ("fetchall", "nofetchall", "flush", "noflush", "rewrite", "norewrite",
                  "mimedecode", "stripcr", "forcecr", "pass8bits", "dropstatus",
                  "dropdelivered", "uidl", "nouidl", "dns", "nodns", "checkalias"):
        entry.notes.append(f"{word}: not translated (imap-ingest takes each message once, "
                           "unchanged)")
    elif word == "auth":
        kind = take().lower()
        if kind in ("oauthbearer", "xoauth2"):
            entry.notes.append(f"auth {kind}: set auth: {kind} and an oauth2: section "
                               "(README: OAuth2)")
        elif kind not in ("password", "any"):
            entry.notes.append(f"auth {kind}: not supported; a password login is assumed")
    elif word in _WITH_ARGUMENT:
        entry.notes.append(f"{word} {take()}: not translated")
    else:
        entry.notes.append(f"{word}: not understood, not translated")


def _yaml(entries: list[_Entry], interval: str | None, general: list[str]) -> str:
    lines = ["# Converted from a .fetchmailrc.",
             "# imap-ingest reads the mailbox and posts each message to the tracker itself:",
             "# no MDA, no local IMAP server, no cron'd rake task. Set the target's url, and",
             "# each folder's project (or queue) and rules.",
             *(f"# - {note}" for note in general)]
    accounts: list[dict[str, Any]] = []
    for n, entry in enumerate(entries):
        name = re.sub(r"[^\w.-]", "-", entry.host) + (f"-{n + 1}" if n else "")
        variable = re.sub(r"\W", "_", name).upper() + "_PASSWORD"
        notes = list(entry.notes)
        account: dict[str, Any] = {"name": name}
        protocol = "imap" if entry.protocol == "auto" else entry.protocol
        if entry.protocol == "auto":
            notes.append("no protocol: fetchmail tried IMAP, then POP3; IMAP is assumed")
        if protocol == "pop3":
            account["protocol"] = "pop3"
        account["host"] = entry.host
        if entry.port:
            account["port"] = int(entry.port) if entry.port.isdigit() else entry.port
        account["security"] = "ssl" if entry.ssl else "starttls"
        if not entry.ssl:
            notes.append("no ssl: fetchmail may have sent the password in clear; STARTTLS "
                         "is assumed (security: none with allow_insecure: true if the "
                         "server has no TLS at all)")
        if entry.ca_file:
            account["ca_file"] = entry.ca_file
        if not entry.verify:
            account["verify_tls"] = False
        account["username"] = entry.username or "EDIT"
        account["password_env"] = variable
        if entry.password:
            notes.append(f"the password is not copied: export {variable}")
        if entry.timeout:
            account["timeout"] = int(entry.timeout) if entry.timeout.isdigit() else entry.timeout
        if protocol == "pop3":
            account["keep"] = bool(entry.keep)
            if entry.keep is None:
                notes.append("no keep: fetchmail deleted what it fetched, so keep: false "
                             "(imap-ingest deletes only what the tracker accepted)")
        elif entry.keep is False:
            notes.append("nokeep on IMAP: accepted mail is deleted (no move_on_success)")
        names = entry.folders if protocol == "imap" and entry.folders else ["INBOX"]
        if protocol == "pop3" and entry.folders:
            notes.append("folder: POP3 has none; the maildrop is read")
        account["folders"] = [{"name": folder, "project": "EDIT",
                               **({"interval": f"{interval}s"} if interval else {})}
                              for folder in names]
        accounts.append(account)
        lines += [f"# - account {name}: {note}" for note in notes]
    data = {"accounts": accounts,
            "targets": {"redmine": {"type": "redmine", "url": "https://redmine.example.org",
                                    "key_env": "REDMINE_MAIL_KEY"}}}
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return "\n".join(lines) + "\n\n" + body
