"""Exceptions raised by imap-ingest, each carrying the sysexits code the CLI returns.

A tracker's answer is never an exception (see ``trackers.Outcome``); these mean bad
configuration, a refused login, or a broken IMAP session.

    IngestError (70, EX_SOFTWARE)
    ├── ConfigError (78, EX_CONFIG)        file, key path and reason
    ├── ledger.LedgerError (78)            corrupt, from a newer version, or not writable
    ├── TrackerRefused (77, EX_NOPERM)     wrong key or URL: the folder stops
    └── MailboxError (75, EX_TEMPFAIL)     account and folder
        ├── LoginRefused (77, EX_NOPERM)
        │   └── AuthFailed (77)            no usable OAuth2 token: "auth_failed"
        ├── FolderMissing (78, EX_CONFIG)
        ├── CommandRefused (75)            NO or BAD to one command: the session goes on
        ├── locks.FolderBusy (75)          another imap-ingest is working the folder
        └── ConnectionLost (75, EX_TEMPFAIL)

    token_file.TokenFileError (Exception)  no stored refresh token; its readers turn it
                                           into AuthFailed, or a FAIL line of check
"""

from __future__ import annotations

import os

from .logs import redact

EX_OK = 0
EX_NOT_FOUND = 1  # history: the ledger has no record of it (as grep finding nothing)
EX_USAGE = 64
EX_NOINPUT = 66
EX_NOUSER = 67  # deliver: no such route, as an MTA's unknown local user
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

# When several folders end differently, the run reports the most serious of them.
_SEVERITY = {EX_OK: 0, EX_TEMPFAIL: 1, EX_SOFTWARE: 2, EX_NOPERM: 3, EX_CONFIG: 4}


def worst(*codes: int) -> int:
    """The most serious of several exit codes."""
    return max(codes, key=lambda code: _SEVERITY.get(code, 2), default=EX_OK)


class IngestError(Exception):
    """Base class: an error that ends a folder's pass or the whole run."""

    exit_code = EX_SOFTWARE


class ConfigError(IngestError):
    """The configuration is wrong: names the file, the key path and the reason."""

    exit_code = EX_CONFIG

    def __init__(self, reason: str, *, file: str | os.PathLike[str] | None = None,
                 key: str | None = None) -> None:
        self.file = os.fspath(file) if file is not None else None
        self.key = key
        self.reason = reason
        where = ": ".join(part for part in (self.file, key) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class MailboxError(IngestError):
    """The IMAP session failed; names the account and folder."""

    exit_code = EX_TEMPFAIL

    def __init__(self, reason: str, *, account: str, folder: str | None = None) -> None:
        self.account = account
        self.folder = folder
        # A reason may quote the server's refusal, and a hostile one echoes the LOGIN.
        self.reason = reason = redact(reason)
        where = f"account {account}" + (f", folder {folder}" if folder else "")
        super().__init__(f"{where}: {reason}")


class LoginRefused(MailboxError):
    """The IMAP server refused the credentials."""

    exit_code = EX_NOPERM


class AuthFailed(LoginRefused):
    """No usable token: the provider refused the refresh (or the client), the token command
    failed, or the server refused a token just obtained. It needs a person (``imap-ingest
    auth login``, a new secret), as a refused password does; hence 77, not 75."""

    state = "auth_failed"

    def __init__(self, reason: str, *, account: str) -> None:
        super().__init__(f"{self.state}: {reason}", account=account)


class FolderMissing(MailboxError):
    """A configured source folder does not exist."""

    exit_code = EX_CONFIG


class CommandRefused(MailboxError):
    """The server answered one command NO or BAD (a CREATE it does not allow, say): that
    folder's pass ends, the connection and the account's other folders go on."""

    exit_code = EX_TEMPFAIL


class ConnectionLost(MailboxError):
    """The server could not be reached or dropped the connection."""

    exit_code = EX_TEMPFAIL


class TrackerRefused(IngestError):
    """The tracker refused our key or URL: no message is touched, the folder stops."""

    exit_code = EX_NOPERM
