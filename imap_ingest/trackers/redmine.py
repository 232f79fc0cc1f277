"""Redmine's incoming-mail web service, spoken as rdm-mailhandler speaks it.

``POST {url}/mail_handler``, form-encoded: ``key``, ``email`` (the raw message, CRLF line
ends) and the handler options. Redmine answers 201 (taken; the issue id is not returned),
422 (refused, for any reason), 403 (wrong key or the web service is off).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Literal

from ..config import (
    HttpTarget,
    Secret,
    SecretFromEnv,
    SecretFromFile,
    SubmitOptions,
    WithSecret,
    pick_secret,
)
from ..message import may_attach
from ..urls import origin, shown
from . import Envelope, Kind, Outcome
from ._http import Client, retry_after
from .registry import register

_ISSUE_FIELDS = ("project", "status", "tracker", "category", "priority", "assigned_to",
                 "fixed_version")
_FLAGS = ("no_permission_check", "no_account_notice", "no_notification")


class RedmineTarget(HttpTarget, WithSecret):
    """Redmine's incoming-mail web service, ``POST {url}/mail_handler``."""

    secret_name = "key"

    type: Literal["redmine"]
    key: Secret | None = None
    key_file: SecretFromFile | None = None
    key_env: SecretFromEnv | None = None
    unknown_user: Literal["ignore", "accept", "create"] | None = None
    no_permission_check: bool = False
    no_account_notice: bool = False
    no_notification: bool = False
    default_group: str | None = None
    project_from_subaddress: str | None = None
    # A REST API key (My account → API access key), read only: which issue a message became,
    # and export-training. Unset: no issue ids, everything else works.
    api_key: Secret | None = None
    api_key_file: SecretFromFile | None = None
    api_key_env: SecretFromEnv | None = None


def crlf(raw: bytes) -> bytes:
    """Bare LF or CR → CRLF, as rdm-mailhandler does before posting (three C passes are
    faster than one regex with a match per line)."""
    crlfs = raw.count(b"\r\n")
    if raw.count(b"\n") == crlfs == raw.count(b"\r"):
        return raw  # already CRLF throughout, as IMAP serves it: no copy of a big message
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def form(raw: bytes, options: SubmitOptions, target: RedmineTarget) -> dict[str, str | bytes]:
    """The form fields rdm-mailhandler would send for this message."""
    fields: dict[str, str | bytes] = {"key": target.secret.get_secret_value(), "email": crlf(raw)}
    for name in ("unknown_user", "default_group", "project_from_subaddress"):
        if (value := getattr(target, name)) is not None:
            fields[name] = value
    # Redmine honours these only when the value is exactly "1".
    fields.update({name: "1" for name in _FLAGS if getattr(target, name)})
    if options.allow_override is not None:
        fields["allow_override"] = options.allow_override
    for name in _ISSUE_FIELDS:
        if (value := getattr(options, name)) is not None:
            fields[f"issue[{name}]"] = value
    if options.is_private:
        fields["issue[is_private]"] = "1"
    return fields


_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~- "
SLICE = 1024 * 1024  # a value longer than this is escaped and sent in slices


class Form:
    """An application/x-www-form-urlencoded body, byte for byte what urllib's urlencode
    gives, and about ten times faster on mail. A big message stays in escaped slices that
    requests sends one after the other under one Content-Length: joining them would copy
    the whole message once more."""

    def __init__(self, fields: Mapping[str, str | bytes]) -> None:
        pieces = list(_escaped(fields))
        self._length = sum(map(len, pieces))
        # Small forms as one piece: one send, not one per field.
        self._pieces = pieces if self._length > SLICE else [b"".join(pieces)]

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._pieces)

    def __bytes__(self) -> bytes:
        return b"".join(self._pieces)


def _escaped(fields: Mapping[str, str | bytes]) -> Iterator[bytes]:
    for i, (name, value) in enumerate(fields.items()):
        yield (b"&" if i else b"") + _quote(name.encode()) + b"="
        data = value.encode() if isinstance(value, str) else value
        if len(data) <= SLICE:
            yield _quote(data)
        else:
            view = memoryview(data)
            for start in range(0, len(data), SLICE):
                yield _quote(bytes(view[start:start + SLICE]))


def _quote(data: bytes) -> bytes:
    """One C-speed replace per distinct byte value that needs escaping, instead of Python
    work per byte."""
    escaped = data.replace(b"%", b"%25")
    for byte in set(data.translate(None, _SAFE)) - {ord("%")}:
        escaped = escaped.replace(bytes((byte,)), b"%%%02X" % byte)
    return escaped.replace(b" ", b"+")


# Rack (2.2 in Debian's Redmine 5, and 3.1 until Redmine 6.0.6 raised it) refuses form
# bodies over 4 MiB; Rails then answers a bare 500, which would otherwise look temporary.
RACK_FORM_LIMIT = 4 * 1024 * 1024


# Rails' SQLite busy timeout (database.yml's ``timeout: 5000``, the default): how long a
# write waits behind another writer before "database is locked".
LOCK_WAIT = 5.0


def crowded(outcome: Outcome, among_others: bool, seconds: float) -> Outcome:
    """``outcome`` of a request that had others in flight beside it (``among_others``) and
    took ``seconds``. A refusal then is sent again (verdict.answer), unless it took the lock
    wait: a statement after the issue's commit that waited it out (an attachment's INSERT,
    the notification's reads) fails with the issue made (docs/concurrency.md), so sent
    again it would make a second issue. That one is in doubt, for a person to look at."""
    if among_others and outcome.kind is Kind.PERMANENT and seconds >= LOCK_WAIT:
        return replace(outcome, crowded=True, in_doubt=True, reason=(
            f"{outcome.reason}, after {seconds:.0f} s with others in flight: Redmine may "
            "have made the issue before a lock wait ran out"))
    return replace(outcome, crowded=among_others)


def classify(status: int, body: str, wait: float | None = None, sent: int = 0) -> Outcome:
    """What Redmine's answer means for the message (``sent``: the form's size in bytes)."""
    if status in (413, 500) and sent > RACK_FORM_LIMIT:
        return Outcome(Kind.PERMANENT, f"Redmine refused the message as too large ({status}): "
                       f"the form is {sent} bytes, over Rack's 4 MiB limit for form bodies "
                       "(raised in Redmine 6.0.6 by RACK_QUERY_PARSER_BYTESIZE_LIMIT)",
                       status=status)
    if status == 201:
        return Outcome(Kind.SUCCESS, "Redmine created the issue or note", status=status)
    if status == 422:
        return Outcome(Kind.PERMANENT, "Redmine refused the message (422): unknown or "
                       "unauthorised sender, auto-reply, unknown project or invalid issue; "
                       "Redmine's log says which", status=status)
    if status == 403:
        why = _first_line(body) or "the incoming-mail web service is off or the key is wrong"
        return Outcome(Kind.CONFIG, f"Redmine refused the key (403): {why}", status=status)
    if status == 413:
        return Outcome(Kind.PERMANENT, "Redmine refused the message as too large (413)",
                       status=status)
    if 300 <= status < 400 or status == 404:
        return Outcome(Kind.CONFIG, f"Redmine answered {status} at /mail_handler: check the url "
                       "(scheme, host, sub-path)", status=status)
    if status == 429 or status >= 500:
        return Outcome(Kind.TEMPORARY, f"Redmine is in trouble ({status})", status=status,
                       retry_after=wait)
    if 400 <= status < 500:
        return Outcome(Kind.PERMANENT, f"Redmine refused the message ({status})", status=status)
    # 200 and other 2xx are not Redmine's answer: a proxy or login page stands in between.
    return Outcome(Kind.TEMPORARY, f"unexpected answer {status} (not Redmine's 201)",
                   status=status)


def _first_line(body: str) -> str:
    return body.strip().splitlines()[0][:200] if body.strip() else ""


class Redmine:
    """One Redmine, over as many keep-alive connections as its concurrency."""

    def __init__(self, target: RedmineTarget) -> None:
        self._target = target
        self._url = f"{target.url}/mail_handler"
        self._http = Client(target)
        self.pace = self._http.pace
        self._looked_up = pick_secret(target, "api_key") is not None

    def alone(self, raw: bytes) -> bool:
        """Whether the message must be posted with nothing else in flight: when its issue
        cannot be looked up (no api_key) and Redmine could store an attachment of it. On
        SQLite an attachment is written after the issue's commit, and its INSERT can meet a
        lock conflict there: a 422 for an issue made, which sent again would double it. A
        message without one makes nothing when refused so (docs/concurrency.md)."""
        return not self._looked_up and self.pace.most > 1 and may_attach(raw)

    def submit(self, raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
        data = Form(form(raw, options, self._target))
        answer = self._http.request("POST", self._url, data=data, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        if isinstance(answer, Outcome):
            return answer
        return crowded(classify(answer.status_code, answer.text,
                                retry_after(answer.headers.get("Retry-After")), len(data)),
                       answer.crowded, answer.seconds)

    def preview(self, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> tuple[str, list[tuple[str, str]]]:
        fields = form(raw, options, self._target)
        masked = {"key": "***", "email": f"<the message, {len(fields['email'])} bytes>"}
        return f"POST {shown(self._url)}", [(name, masked.get(name) or str(value))
                                  for name, value in fields.items()]

    def check(self) -> Outcome:
        # The key goes in a POST body, never in a URL (access logs). Without an email,
        # Redmine's MailHandler fails on nil and answers 422 once the key has passed; a
        # wrong key or the web service off is 403; nothing is created either way.
        answer = self._http.request("POST", self._url, data=bytes(Form(
            {"key": self._target.secret.get_secret_value()})), headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        if isinstance(answer, Outcome):
            return answer
        if answer.status_code == 422:
            return Outcome(Kind.SUCCESS, f"{origin(self._url)} accepts the key", status=422)
        outcome = classify(answer.status_code, answer.text)
        if outcome.kind is Kind.SUCCESS:  # a message created from no message: not Redmine
            return Outcome(Kind.CONFIG, f"{origin(self._url)} answered {answer.status_code} "
                           "to a post without email: not Redmine's /mail_handler",
                           status=answer.status_code)
        return outcome

    def close(self) -> None:
        self._http.close()


register(RedmineTarget, Redmine)
