"""`imap-ingest check`: everything a run needs, tested one line at a time, creating nothing
(a destination folder that does not exist yet is created and deleted again, to know the
server allows it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from . import token_file
from .config import Config, Folder, OAuth2
from .errors import EX_NOPERM, EX_OK, EX_TEMPFAIL, CommandRefused, MailboxError, worst
from .mailbox import Mailbox
from .source import Source, open_source
from .trackers import Kind, open_tracker

# IMAP's month names, not the locale's.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_NO_EXPIRY = {
    "microsoft": "Microsoft gives no expiry (90 days unused; each refresh renews it)",
    "google": "Google gives no expiry (a published app's token lasts until revoked)",
}


def check(config: Config, path: str | os.PathLike[str]) -> int:
    """Log in to each account and folder, read each refresh token, reach each tracker;
    print OK or FAIL per step and return the worst exit code."""
    codes = [EX_OK]

    def report(ok: bool, what: str, detail: str, code: int = EX_OK) -> None:
        print(f"{'OK  ' if ok else 'FAIL'}  {what}: {detail}", flush=True)
        codes.append(code)

    report(True, "config", f"{os.fspath(path)} is valid")
    for key, caution in config.cautions():
        print(f"WARN  {key}: {caution}", flush=True)
    for account in config.accounts:
        what = f"account {account.name}"
        try:
            with open_source(account, None, None) as mailbox:
                report(True, what, f"logged in as {account.username} on {account.host}:"
                       f"{account.effective_port} ({account.security})")
                for folder in account.folders:
                    try:
                        mailbox.select(folder.name)
                        uids = mailbox.new_uids()
                        report(True, f"{what} folder {folder.name}", f"{len(uids)} new "
                               f"message(s){_as(mailbox, folder.name)}; "
                               f"{_first_run(mailbox, folder, uids)}")
                    except MailboxError as exc:
                        report(False, f"{what} folder {folder.name}", exc.reason, exc.exit_code)
                if isinstance(mailbox, Mailbox):  # POP3: no folders to move or copy into
                    for name, setting in destinations(account.folders, config).items():
                        _destination(mailbox, name, f"{what} folder {name} ({setting}"
                                     f"{_as(mailbox, name)})", report)
        except MailboxError as exc:
            report(False, what, exc.reason, exc.exit_code)
        if account.oauth2 is not None and account.oauth2.refresh_token_file is not None:
            ok, detail = _refresh_token_state(account.name, account.oauth2)
            report(ok, f"{what} refresh token", detail, EX_OK if ok else EX_NOPERM)
    for name, target in config.targets.items():
        tracker = open_tracker(target)
        try:
            outcome = tracker.check()
        finally:
            tracker.close()
        code = {Kind.SUCCESS: EX_OK, Kind.CONFIG: EX_NOPERM}.get(outcome.kind, EX_TEMPFAIL)
        report(outcome.kind is Kind.SUCCESS, f"target {name}", outcome.reason, code)
    return worst(*codes)


def destinations(folders: list[Folder], config: Config) -> dict[str, str]:
    """Every folder mail from ``folders`` may be moved or copied into, each with the first
    setting that names it."""
    found: dict[str, str] = {}
    for folder in folders:
        named = [("move_on_success", folder.move_on_success),
                 ("move_on_failure", folder.move_on_failure),
                 ("loops_folder", folder.loops_folder or config.loops_folder)]
        for index, rule in enumerate(folder.rules):
            action = (config.rules[rule.use] if rule.use else rule).action
            named += [(f"rules[{index}] move", action.move), (f"rules[{index}] copy",
                                                               action.copy_to)]
        for setting, name in named:
            if name:
                found.setdefault(name, f"{folder.name} {setting}")
    found.setdefault(config.quarantine_folder, "quarantine_folder")
    return found


def _as(mailbox: Source, name: str) -> str:
    """How the server calls a configured folder, when not as written (POP3: as written)."""
    if not isinstance(mailbox, Mailbox):
        return ""
    resolved = mailbox.resolve(name)
    return "" if resolved == name else f", as {resolved}"


def _first_run(mailbox: Source, folder: Folder, uids: list[int]) -> str:
    """How many of ``uids`` a first run would ingest under the folder's start: and max_age:
    (by IMAP's SEARCH SINCE, which counts whole days; POP3 has no dates to search)."""
    now = time.time()
    since = [when for when in (folder.start.since_at(now),
                               now - folder.max_age if folder.max_age else None) if when]
    count = 0 if folder.start.mode == "new" else len(uids)
    if since and count and isinstance(mailbox, Mailbox):
        day = time.localtime(max(since))
        count = len(set(uids) & set(mailbox.search(
            ["SINCE", f"{day.tm_mday}-{_MONTHS[day.tm_mon - 1]}-{day.tm_year}"])))
    return f"a first run would ingest {count} (start: {folder.start.mode}" + (
        f", max_age: {folder.max_age / 86400:g} days)" if folder.max_age else ")")


def _destination(mailbox: Mailbox, name: str, where: str,
                 report: Callable[[bool, str, str, int], None]) -> None:
    """Whether mail can be moved or copied into folder ``name``: there, or creatable."""
    try:
        if mailbox.exists(name):
            report(True, where, "exists", EX_OK)
        else:
            mailbox.try_create(name)
            report(True, where, "does not exist yet; the server lets us create it (created "
                   "on first use)", EX_OK)
    except CommandRefused as exc:
        report(False, where, f"does not exist, and cannot be created: {exc.reason}",
               exc.exit_code)


def _refresh_token_state(name: str, oauth2: OAuth2) -> tuple[bool, str]:
    """Whether the stored refresh token is still good, as far as the provider said."""
    assert oauth2.refresh_token_file is not None
    login = f"run `imap-ingest auth login {name}`"
    try:
        stored = token_file.read(oauth2.refresh_token_file)
    except token_file.TokenFileError as exc:
        return False, f"{exc}: {login}"
    issued = f"issued {_day(stored.issued_at)}" if stored.issued_at else "issue date unknown"
    days = stored.days_left()
    if days is None:
        return True, f"{issued}; {_NO_EXPIRY.get(oauth2.provider, 'the provider gives no expiry')}"
    if days < 0:
        return False, f"expired on {_day(stored.expires_at)}: {login}"
    return True, f"{issued}; expires in {days:.0f} days (the provider says so)"


def _day(stamp: float | None) -> str:
    """A date, or today."""
    day = time.strftime("%Y-%m-%d", time.localtime(stamp))
    return "today" if day == time.strftime("%Y-%m-%d") else day
