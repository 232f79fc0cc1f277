"""Alerts to a person when mail stops flowing, and when it flows again.

``changes`` (pure) compares two moments of the flow and says which alerts the change makes:
one per change of state, never one per message. Messages set aside (failed, quarantined)
are gathered and told in one ``digest`` per interval. The ``Alerter`` thread and the two
senders (SMTP, webhook) are the I/O at the edges. Every alert mail says it is one
(``Auto-Submitted: auto-generated`` and ``X-Imap-Ingest-Alert``), so a loop check holds it
should it ever come back into a watched folder.
"""

from __future__ import annotations

import logging
import math
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import requests

from .config import Alert as AlertConfig
from .config import EmailAlert, WebhookAlert
from .flow import Flow
from .loops import ALERT_HEADER
from .message import Message
from .states import Result
from .verdict import Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Alert:
    """One thing to tell the operator; ``kind`` goes into the X-Imap-Ingest-Alert header."""

    kind: str  # stalled | recovered | target-failing | target-recovered | auth-failed |
    #            auth-recovered | set-aside | breaker-tripped
    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class State:
    """What alerts are about, at one moment: stalled folders, failing targets and accounts
    whose login is refused, each with why."""

    stalled: dict[str, str]
    failing: dict[str, str]
    auth_failed: frozenset[str]

    @classmethod
    def of(cls, flow: Flow) -> State:
        return cls({f.name: f.stalled for f in flow.folders if f.stalled}, dict(flow.failing),
                   frozenset(f.account for f in flow.folders if f.auth_failed))


CALM = State({}, {}, frozenset())


@dataclass(frozen=True, slots=True)
class SetAside:
    """A message moved to the failure or quarantine folder, for the digest."""

    where: str  # account/folder
    subject: str
    sender: str
    reason: str


def set_aside(where: str, message: Message | None, verdict: Verdict) -> SetAside | None:
    """The digest's entry for a message moved to a failure or quarantine folder, else None."""
    moved = verdict.to is not None and verdict.to.verb == "move"
    if not moved or verdict.result not in (Result.FAILED, Result.PARTIAL, Result.QUARANTINED):
        return None
    return SetAside(where, (message.subject or "(no subject)") if message else "(unreadable)",
                    message.sender if message else "", verdict.reason)


def changes(before: State, after: State) -> list[Alert]:
    """The alerts the change from ``before`` to ``after`` makes: one per folder, target or
    account that changed state."""
    return [
        *_changed(before.stalled, after.stalled, "stalled", "recovered",
                  "mail stalled in {}", "mail flows again in {}", "{}"),
        *_changed(before.failing, after.failing, "target-failing", "target-recovered",
                  "target {} is failing", "target {} works again", "target {}"),
        *_changed(dict.fromkeys(before.auth_failed, AUTH_FAILED),
                  dict.fromkeys(after.auth_failed, AUTH_FAILED), "auth-failed",
                  "auth-recovered", "login refused for account {}",
                  "login works again for account {}", "account {}")]


AUTH_FAILED = ("the login or its token was refused (auth_failed); `imap-ingest authorize` "
               "may be needed")


def _changed(before: dict[str, str], after: dict[str, str], on: str, off: str,
             on_subject: str, off_subject: str, name: str) -> list[Alert]:
    """An ``on`` alert for each name new in ``after``, an ``off`` one for each gone."""
    return ([Alert(on, on_subject.format(n), f"{name.format(n)}: {after[n]}")
             for n in sorted(after.keys() - before.keys())]
            + [Alert(off, off_subject.format(n), f"{name.format(n)}: recovered "
                     f"(was: {before[n]})") for n in sorted(before.keys() - after.keys())])


def digest(items: Iterable[SetAside]) -> Alert | None:
    """One alert for every message set aside since the last digest; None for none."""
    items = list(items)
    if not items:
        return None
    lines = [f"- {i.where}: {i.subject!r} from {i.sender or '(no sender)'}: {i.reason}"
             for i in items]
    return Alert("set-aside", f"{len(items)} message(s) moved to a failure or quarantine "
                 "folder", "\n".join(lines))


def breaker_tripped(limit: str, why: str) -> Alert:
    """The flood breaker holds the mail of one sender or thread (``limit``: its key)."""
    return Alert("breaker-tripped", f"flood breaker tripped for {limit}", f"{limit}: {why}")


def mail(alert: Alert, config: EmailAlert) -> EmailMessage:
    """The alert as a mail that our own loop checks hold, and auto-responders leave alone."""
    message = EmailMessage()
    message["From"] = config.from_
    message["To"] = config.to
    message["Subject"] = f"[imap-ingest] {alert.subject}"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid("imap-ingest-alert")
    message["Auto-Submitted"] = "auto-generated"
    message["Precedence"] = "bulk"
    message[ALERT_HEADER] = alert.kind
    message.set_content(alert.body + "\n")
    return message


def send_mail(alert: Alert, config: EmailAlert) -> None:
    """Send by SMTP, with STARTTLS or TLS as configured; raises OSError or SMTPException."""
    tls = ssl.create_default_context()
    smtp = (smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=tls)
            if config.security == "ssl"
            else smtplib.SMTP(config.host, config.port, timeout=config.timeout))
    with smtp:
        if config.security == "starttls":
            smtp.starttls(context=tls)
        if config.username is not None:
            smtp.login(config.username, config.secret.get_secret_value())
        smtp.send_message(mail(alert, config))


def send_webhook(alert: Alert, config: WebhookAlert) -> None:
    """POST ``{"text": ...}``; raises requests' errors, or HTTPError for an answer other
    than 2xx. A redirect is not followed: it would carry the alert (mail subjects) to
    wherever it points."""
    answer = requests.post(config.url, json={"text": f"{alert.subject}\n{alert.body}",
                                             "kind": alert.kind}, timeout=config.timeout,
                           allow_redirects=False)
    if not 200 <= answer.status_code < 300:
        raise requests.HTTPError(f"answered {answer.status_code}")


class Alerter:
    """Looks at the flow every ``check_every`` and sends what changed; gathers messages set
    aside into a digest every ``digest_every``."""

    def __init__(self, config: AlertConfig, flow: Callable[[], Flow],
                 stop: threading.Event) -> None:
        self.config, self._flow, self._stop = config, flow, stop
        self._state = CALM
        self._aside: list[SetAside] = []
        self._tripped: dict[str, float] = {}  # flood limit: when last alerted (monotonic)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)

    @property
    def wanted(self) -> bool:
        return self.config.email is not None or self.config.webhook is not None

    def start(self) -> None:
        if self.wanted:
            self._thread.start()

    def observe(self, where: str, message: Message | None, verdict: Verdict) -> None:
        """Note a message moved to a failure or quarantine folder, for the next digest."""
        if self.wanted and (item := set_aside(where, message, verdict)) is not None:
            with self._lock:
                self._aside.append(item)

    def tripped(self, limit: str, why: str) -> None:
        """The flood breaker held a message over ``limit``: one alert per limit and digest
        interval, not one per held message."""
        if not self.wanted:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._tripped.get(limit, -math.inf) < self.config.digest_every:
                return
            self._tripped[limit] = now
        self.send(breaker_tripped(limit, why))

    def send(self, alert: Alert) -> None:
        """Send to every configured channel; a channel that fails is logged, not retried."""
        channels: list[tuple[str, Callable[[], None]]] = []
        if (email := self.config.email) is not None:
            channels.append((f"mail to {email.to}", lambda: send_mail(alert, email)))
        if (hook := self.config.webhook) is not None:
            channels.append(("webhook", lambda: send_webhook(alert, hook)))
        for name, deliver in channels:
            try:
                deliver()
                log.info("alert %s sent by %s: %s", alert.kind, name, alert.subject)
            except (OSError, smtplib.SMTPException, requests.RequestException) as exc:
                log.error("alert %s could not be sent by %s: %s", alert.kind, name,
                          type(exc).__name__)

    def check(self) -> None:
        """One look: send what changed since the last."""
        state = State.of(self._flow())
        for alert in changes(self._state, state):
            self.send(alert)
        self._state = state

    def _flush(self) -> None:
        with self._lock:
            items, self._aside = self._aside, []
        if (alert := digest(items)) is not None:
            self.send(alert)

    def _run(self) -> None:
        next_digest = time.monotonic() + self.config.digest_every
        while not self._stop.wait(self.config.check_every):
            self.check()
            if time.monotonic() >= next_digest:
                self._flush()
                next_digest = time.monotonic() + self.config.digest_every
        self._flush()  # what was gathered is told, even on the way out
