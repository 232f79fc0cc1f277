"""Request Tracker's mail gateway, spoken as rt-mailgate speaks it.

``POST {url}/REST/1.0/NoAuth/mail-gateway``, multipart/form-data: ``queue``, ``action``,
``ticket`` and ``message``, the raw mail in a part WITHOUT a filename (with one, RT reads the
filename as the mail and the message is lost). RT answers 200 with ``ok``, ``not ok - …``
(refused) or ``temporary failure - …`` (RT's word for an unknown queue or action).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Literal

from pydantic import field_validator

from ..config import Duration, HttpTarget, Secret, SecretFromEnv, SecretFromFile, SubmitOptions
from ..urls import origin, shown
from . import Envelope, Kind, Outcome
from ._http import Client, retry_after
from .registry import register

GATEWAY = "/REST/1.0/NoAuth/mail-gateway"
_ACTION = re.compile(r"(correspond|comment|take|resolve)(-(correspond|comment|take|resolve))*")


class RtTarget(HttpTarget):
    """Request Tracker's mail gateway, ``POST {url}/REST/1.0/NoAuth/mail-gateway``."""

    type: Literal["rt"]
    queue: str | None = None  # unset: RT's queue 1 (General)
    action: str = "correspond"
    extension: Literal["queue", "ticket", "action"] | None = None
    timeout: Duration = 180.0
    # A read-only REST 2.0 token (RT 5: the user's Auth Tokens page): which ticket a message
    # became, and export-training. Unset: no ticket ids, everything else works.
    rest_token: Secret | None = None
    rest_token_file: SecretFromFile | None = None
    rest_token_env: SecretFromEnv | None = None

    @field_validator("action")
    @classmethod
    def _known_actions(cls, value: str) -> str:
        if not _ACTION.fullmatch(value):
            raise ValueError("must be correspond, comment, take or resolve, or several "
                             "chained with - (take-comment, correspond-resolve)")
        return value


def fields(raw: bytes, options: SubmitOptions, target: RtTarget,
           subaddress: str | None) -> dict[str, str]:
    """queue, action and ticket as rt-mailgate would send them (the message apart)."""
    sent = {"queue": options.queue or target.queue, "action": options.action or target.action,
            "ticket": None}
    if subaddress and target.extension:
        sent[target.extension] = subaddress
    return {name: value for name, value in sent.items() if value is not None}


def as_piped(raw: bytes, subaddress: str | None) -> bytes:
    """The message as an MTA pipes it to rt-mailgate: LF line endings (RT stores the CR of a
    CRLF copy inside 7-bit and 8-bit text parts), and the MTA's extension prepended as
    X-RT-Mail-Extension for scrips to read."""
    piped = raw.replace(b"\r\n", b"\n")
    return b"X-RT-Mail-Extension: " + subaddress.encode() + b"\n" + piped if subaddress else piped


def classify(status: int, body: str, action: str, wait: float | None = None) -> Outcome:
    """What RT's answer means for the message."""
    if status in (401, 403, 404) or 300 <= status < 400:
        return Outcome(Kind.CONFIG, f"RT's mail gateway answered {status}: check the url, and "
                       "that the gateway lets this host in", status=status)
    if status == 413:
        return Outcome(Kind.PERMANENT, "RT refused the message as too large (413)", status=status)
    if status == 429 or status >= 500:
        return Outcome(Kind.TEMPORARY, f"RT is in trouble ({status})", status=status,
                       retry_after=wait)
    if not 200 <= status < 300:
        return Outcome(Kind.PERMANENT, f"RT refused the message ({status})", status=status)
    first, _, rest = body.strip().partition("\n")
    detail = first.partition(" - ")[2].strip()
    if first.startswith("ok"):
        ticket = re.search(r"^Ticket:\s*(\d+)\s*$", rest, re.MULTILINE)  # DevelMode only
        return Outcome(Kind.SUCCESS, "RT took the message", ticket=ticket and ticket[1],
                       status=status)
    if first.startswith("not ok"):
        reason = f"RT refused the message: {detail or 'no reason given'}"
        if "-" in action:
            return Outcome(Kind.PERMANENT, f"{reason}; the chained action {action} may have "
                           "been carried out in part (e.g. the correspondence recorded before "
                           "the resolve was refused), so it is not sent again", status=status,
                           partial=True)
        return Outcome(Kind.PERMANENT, reason, status=status)
    if first.startswith("temporary failure"):
        said = f" ({detail})" if detail and detail != "operation unsuccessful" else ""
        return Outcome(Kind.TEMPORARY, f"RT says temporary failure{said}: check the queue and "
                       "action names", status=status)
    return Outcome(Kind.TEMPORARY, "not an answer of RT's mail gateway (a login page, a proxy, "
                   "or a wrong url?)", status=status)


class RequestTracker:
    """One RT, over as many keep-alive connections as its concurrency."""

    def __init__(self, target: RtTarget) -> None:
        self._target = target
        self._url = f"{target.url}{GATEWAY}"
        self._http = Client(target)
        self.pace = self._http.pace

    def submit(self, raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
        sent = fields(raw, options, self._target, envelope.subaddress)
        if (bad := _invalid(sent)) is not None:
            return bad
        parts: dict[str, tuple[None, bytes | str] | tuple[None, bytes, str]] = {
            name: (None, value) for name, value in sent.items()}
        parts["message"] = (None, as_piped(raw, envelope.subaddress),
                            "application/octet-stream")
        answer = self._http.request("POST", self._url, files=parts, repost=3)
        if isinstance(answer, Outcome):
            return answer
        return replace(classify(answer.status_code, answer.text, sent["action"],
                                retry_after(answer.headers.get("Retry-After"))),
                       crowded=answer.crowded)

    def preview(self, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> tuple[str, list[tuple[str, str]]]:
        message = as_piped(raw, envelope.subaddress)
        sent = list(fields(raw, options, self._target, envelope.subaddress).items())
        return f"POST {shown(self._url)}", [*sent, ("message",
                                                     f"<the message, {len(message)} bytes>")]

    def check(self) -> Outcome:
        # REST 1.0's root answers "RT/x.y.z 401 Credentials required" without touching mail;
        # the gateway itself would mail the RT owner about an empty message.
        answer = self._http.request("GET", f"{self._target.url}/REST/1.0/")
        if isinstance(answer, Outcome):
            return answer
        version = re.match(r"RT/(\S+)", answer.text)
        if answer.status_code == 200 and version:
            return Outcome(Kind.SUCCESS, f"RT {version[1]} answers at {origin(self._url)}",
                           status=200)
        return Outcome(Kind.CONFIG, f"no RT REST 1.0 at {origin(self._url)} (HTTP "
                       f"{answer.status_code})", status=answer.status_code)

    def close(self) -> None:
        self._http.close()


def _invalid(sent: dict[str, str]) -> Outcome | None:
    """A sub-address that cannot be what the extension setting makes it."""
    if not _ACTION.fullmatch(sent["action"]):
        return Outcome(Kind.PERMANENT, f"{sent['action']!r} is not an RT action")
    if "ticket" in sent and not sent["ticket"].isdigit():
        return Outcome(Kind.PERMANENT, f"{sent['ticket']!r} is not a ticket number")
    return None


register(RtTarget, RequestTracker)
