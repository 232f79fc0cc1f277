"""Which ticket a message became, and what a ticket looks like now: asked of the tracker
after the fact, many at a time.

RT's gateway answers only ``ok`` and Redmine's 201 has no body, so the ticket id is looked
up afterwards, with read-only credentials the target may have (``rest_token`` for RT,
``api_key`` for Redmine); without them nothing is looked up and everything else works.

- RT keeps every received message's Message-ID (``Attachments.MessageId``): REST 2.0 finds
  up to a hundred of them in one search. Exact.
- Redmine keeps no Message-ID. A reply names its issue the way Redmine's mail_handler.rb
  reads it (``References: <redmine.issue-N.…>`` or ``[… #N]`` in the subject): exact. A
  new issue is matched by its subject (as Redmine stores it: stripped, 255 characters)
  among the issues created since shortly before the message was posted, oldest first:
  right unless someone else opened an issue with the same subject in that minute.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .config import Config, HttpTarget, Target, pick_secret
from .message import Message
from .urls import origin

BATCH = 100  # Message-IDs or tickets per request
_ANSWER_LIMIT = 32 * 1024 * 1024  # a hundred Redmine issues carry their descriptions
SLACK = 60.0  # seconds a tracker's clock may be behind ours
# Redmine's own: app/models/mail_handler.rb, MESSAGE_ID_RE and ISSUE_REPLY_SUBJECT_RE.
_REDMINE_REFERENCE = re.compile(r"<?redmine\.issue-(\d+)\.\d+(\.[a-f0-9]+)?@")
_REDMINE_SUBJECT = re.compile(r"\[(?:[^\]]*\s+)?#(\d+)\]")


@dataclass(frozen=True, slots=True)
class Submitted:
    """A message a tracker took, by its ledger record: what finding its ticket needs."""

    record: int
    message_id: str | None
    subject: str
    reply_to: str | None  # the Redmine issue it replies to, as Redmine reads it
    at: float  # when the tracker took it
    where: str  # "account/folder uid N" or "route R", for the log

    @classmethod
    def of(cls, record: int, message: Message, where: str, at: float | None = None
           ) -> Submitted:
        return cls(record, message.message_id, message.subject or "",
                   redmine_reply_to(message), time.time() if at is None else at, where)


Fields = dict[str, list[str]]  # a ticket's fields by lower-case name: its name(s) and id


@dataclass(frozen=True, slots=True)
class Made:
    """The tracker made a ticket of a message it refused (docs/concurrency.md)."""

    ticket: str | None  # None: made, but which of the issues alike is its own is unknown


class LookupFailed(Exception):
    """The tracker did not answer a lookup usably (reason without secrets)."""


class Tickets(Protocol):
    @property
    def requests(self) -> int:
        """Requests made so far, for the report and the benchmark."""

    def find(self, sent: Sequence[Submitted]) -> dict[int, str]:
        """The ticket each record became, where the tracker shows it."""

    def made(self, one: Submitted, taken: int, unsure: int) -> Made | None:
        """Whether the tracker made a ticket of ``one`` (posted at ``one.at``) although it
        refused it; ``taken`` and ``unsure``: how many other messages of its subject were
        posted to it lately, taken, or with no answer to trust (Lately). LookupFailed when
        it cannot tell."""

    def fields(self, tickets: Sequence[str]) -> dict[str, Fields]:
        """Each ticket's fields now (queue, status, ...), for the training filters."""

    def close(self) -> None:
        """Release connections."""


def open_tickets(target: Target) -> Tickets | None:
    """A lookup for ``target``, or None when it has no read credentials (or is a webhook)."""
    # A tracker's module only for a target of its type: a delivery imports its own alone.
    if target.type == "rt":
        from .trackers.rt import RtTarget

        if isinstance(target, RtTarget) and (token := pick_secret(target, "rest_token")):
            return RtTickets(target, token.get_secret_value())
    elif target.type == "redmine":
        from .trackers.redmine import RedmineTarget

        if isinstance(target, RedmineTarget) and (key := pick_secret(target, "api_key")):
            return RedmineTickets(target, key.get_secret_value())
    return None


class Lately:
    """The messages this process posted to each target lately, by subject: what tells a
    refused message's issue from another's of the same subject (``made_of``). Only the
    pass of a target with a lookup posts here. Thread-safe: shared by every folder."""

    KEEP = 4 * SLACK  # seconds an answered post is kept

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # target: record: (subject, taken: True, unsure: None, answered at)
        self._posts: dict[str, dict[int, tuple[str, bool | None, float]]] = {}

    def posted(self, target: str, record: int, subject: str) -> None:
        """About to be posted: unsure until answered."""
        with self._lock:
            now = self._clock()
            posts = self._posts.setdefault(target, {})
            for old in [r for r, (_, _, at) in posts.items() if at < now - self.KEEP]:
                del posts[old]
            posts[record] = (redmine_subject(subject), None, float("inf"))

    def answered(self, target: str, record: int, taken: bool | None) -> None:
        """Taken (True), made nothing (False: forgotten), or no answer to trust (None)."""
        with self._lock:
            posts = self._posts.get(target, {})
            if record in posts:
                if taken is False:
                    del posts[record]
                else:
                    posts[record] = (posts[record][0], taken, self._clock())

    def alike(self, target: str, record: int, subject: str, since: float) -> tuple[int, int]:
        """Other posts of ``subject`` answered since ``since`` (or not yet): how many were
        taken, how many are unsure."""
        subject = redmine_subject(subject)
        with self._lock:
            found = [taken for r, (title, taken, at) in self._posts.get(target, {}).items()
                     if r != record and title == subject and at >= since]
        return sum(t is True for t in found), sum(t is None for t in found)


def look_up(config: Config, sent: dict[str, list[Submitted]]) -> dict[int, str]:
    """The tickets of these messages, by target, by record; a target that cannot tell is
    left out (logged by the caller as unknown)."""
    found: dict[int, str] = {}
    for name, messages in sent.items():
        tickets = open_tickets(config.targets[name]) if messages else None
        if tickets is None:
            continue
        try:
            found |= tickets.find(messages)
        finally:
            tickets.close()
    return found


class _Rest:
    """GET and POST JSON under a timeout, answers bounded; errors as LookupFailed."""

    def __init__(self, target: HttpTarget, headers: dict[str, str]) -> None:
        from .trackers._http import session  # the HTTP stack only when looking up

        self.requests = 0
        self._timeout = target.timeout
        self._http = session(target)
        self._http.headers.update(headers)

    def call(self, method: str, url: str, params: dict[str, str],
             body: object | None = None) -> Any:
        """The JSON answer of one request, read within the target's timeout in all."""
        import requests
        import urllib3

        from .trackers._http import total

        self.requests += 1
        with total(self._timeout) as deadline:
            try:
                with self._http.request(method, url, params=params, json=body,
                                        timeout=self._timeout, stream=True,
                                        allow_redirects=False) as answer:
                    data = answer.raw.read(_ANSWER_LIMIT + 1, decode_content=True)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise LookupFailed(f"{origin(url)}: no answer ({type(exc).__name__})") from None
        if deadline.expired:
            raise LookupFailed(f"{origin(url)}: no whole answer within {self._timeout:g} s")
        if answer.status_code != 200 or len(data) > _ANSWER_LIMIT:
            raise LookupFailed(f"{origin(url)}: answered {answer.status_code}")
        try:
            return json.loads(data)
        except ValueError:
            raise LookupFailed(f"{origin(url)}: not JSON") from None

    def close(self) -> None:
        self._http.close()


class RtTickets:
    """RT's REST 2.0, with a token (RT 5: a user's Auth Tokens page)."""

    def __init__(self, target: HttpTarget, token: str) -> None:
        self._base = f"{target.url}/REST/2.0"
        self._rest = _Rest(target, {"Authorization": f"token {token}"})

    @property
    def requests(self) -> int:
        return self._rest.requests

    def find(self, sent: Sequence[Submitted]) -> dict[int, str]:
        by_id: dict[str, int] = {}
        for one in sent:
            if one.message_id:  # RT keeps it without its angle brackets
                by_id[one.message_id.strip().strip("<>")] = one.record
        found: dict[int, str] = {}
        for chunk in _chunks(list(by_id), BATCH):
            # Two searches per hundred: the attachments carrying these Message-IDs, then
            # the transactions that stored them (REST 2.0 does not expand TransactionId).
            stored = {str(item["TransactionId"]): by_id[str(item["MessageId"])]
                      for item in self._pages("attachments", {
                          "fields": "MessageId,TransactionId"},
                          [{"field": "MessageId", "operator": "IN", "value": chunk}])
                      if str(item.get("MessageId")) in by_id}
            if not stored:
                continue
            for item in sorted(self._pages("transactions", {"fields": "ObjectType,ObjectId"},
                                           [{"field": "id", "operator": "IN",
                                             "value": list(stored)}]),
                               key=lambda item: int(item["id"])):
                if item.get("ObjectType") == "RT::Ticket":
                    # The first transaction that stored it: the ticket it made or joined.
                    found.setdefault(stored[str(item["id"])], str(item["ObjectId"]))
        return found

    def made(self, one: Submitted, taken: int, unsure: int) -> Made | None:
        # By Message-ID: exact. Without one, nothing to find; RT's refusal is then trusted as
        # ever (its gateway's work for a message is one transaction).
        ticket = self.find([one]).get(one.record)
        return Made(ticket) if ticket is not None else None

    def fields(self, tickets: Sequence[str]) -> dict[str, Fields]:
        found: dict[str, Fields] = {}
        for chunk in _chunks([t for t in tickets if t.isdigit()], BATCH):
            query = " OR ".join(f"id = {t}" for t in chunk)
            for item in self._pages("tickets", {
                    "query": query, "fields": "Queue,Status,Type,Subject,Owner",
                    "fields[Queue]": "Name", "fields[Owner]": "Name"}):
                queue, owner = item.get("Queue") or {}, item.get("Owner") or {}
                found[str(item["id"])] = {
                    "id": [str(item["id"])], "queue": [str(queue.get("Name")),
                                                       str(queue.get("id"))],
                    "status": [str(item.get("Status"))], "type": [str(item.get("Type"))],
                    "subject": [str(item.get("Subject"))],
                    "owner": [str(owner.get("Name")), str(owner.get("id"))]}
        return found

    def _pages(self, path: str, params: dict[str, str],
               body: object | None = None) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            answer = self._rest.call("POST" if body is not None else "GET",
                                     f"{self._base}/{path}",
                                     {**params, "per_page": str(BATCH), "page": str(page)},
                                     body)
            yield from answer.get("items") or []
            if page >= int(answer.get("pages") or 1):
                return
            page += 1

    def close(self) -> None:
        self._rest.close()


class RedmineTickets:
    """Redmine's REST API, with a user's API key (My account → API access key)."""

    def __init__(self, target: HttpTarget, key: str) -> None:
        self._base = str(target.url)
        self._rest = _Rest(target, {"X-Redmine-API-Key": key})

    @property
    def requests(self) -> int:
        return self._rest.requests

    def find(self, sent: Sequence[Submitted]) -> dict[int, str]:
        found: dict[int, str] = {}
        new: list[Submitted] = []
        for one in sent:
            if one.reply_to is not None:
                found[one.record] = one.reply_to
            else:
                new.append(one)
        if not new:
            return found
        since = datetime.fromtimestamp(min(one.at for one in new) - SLACK, UTC)
        issues = self._issues({"created_on": f">={since:%Y-%m-%dT%H:%M:%SZ}", "sort": "id"})
        return found | match_new_issues(new, [(str(i["id"]), str(i.get("subject") or ""))
                                              for i in issues])

    def made(self, one: Submitted, taken: int, unsure: int) -> Made | None:
        # Redmine keeps no Message-ID: a new issue is told by its subject among those made
        # since, a note by the issue's journals.
        since = datetime.fromtimestamp(one.at - SLACK, UTC)
        if one.reply_to is not None:
            issue = self._rest.call("GET", f"{self._base}/issues/{one.reply_to}.json",
                                    {"include": "journals"}).get("issue") or {}
            if any(_utc(str(j.get("created_on"))) >= since for j in issue.get("journals") or []):
                raise LookupFailed(f"issue {one.reply_to} has a note made since the message "
                                   "was posted, ours or another's")
            return None
        subject = redmine_subject(one.subject)
        # Redmine's "contains" filter (``~``, case-insensitive, every word) narrows the search
        # to a page or so; equality, here, decides. Without it a lookup read every issue of
        # the last minute: nine pages at 15 issues a second.
        narrowed = {"subject": f"~{subject}"} if subject.strip() else {}
        return made_of([str(i["id"]) for i in self._issues(
            {"created_on": f">={since:%Y-%m-%dT%H:%M:%SZ}", "sort": "id", **narrowed})
            if str(i.get("subject") or "") == subject], taken, unsure)

    def fields(self, tickets: Sequence[str]) -> dict[str, Fields]:
        found: dict[str, Fields] = {}
        for chunk in _chunks([t for t in tickets if t.isdigit()], BATCH):
            for issue in self._issues({"issue_id": ",".join(chunk)}):
                found[str(issue["id"])] = {"id": [str(issue["id"])], **{
                    name: [str(issue[name].get("name")), str(issue[name].get("id"))]
                    for name in ("project", "tracker", "status", "priority", "author",
                                 "assigned_to", "category") if isinstance(issue.get(name),
                                                                           dict)},
                    "subject": [str(issue.get("subject"))]}
        return found

    def _issues(self, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            answer = self._rest.call("GET", f"{self._base}/issues.json", {
                **params, "status_id": "*", "limit": str(BATCH), "offset": str(offset)})
            issues = answer.get("issues") or []
            yield from issues
            offset += len(issues)
            if not issues or offset >= int(answer.get("total_count") or 0):
                return

    def close(self) -> None:
        self._rest.close()


def redmine_reply_to(message: Message) -> str | None:
    """The issue a reply goes to, read as Redmine's mail handler reads it."""
    for name in ("In-Reply-To", "References"):
        for value in message.header_values(name):
            if found := _REDMINE_REFERENCE.search(value):
                return found[1]
    found = _REDMINE_SUBJECT.search(message.subject or "")
    return found[1] if found else None


def redmine_subject(subject: str) -> str:
    """A subject as Redmine stores it on the issue."""
    return subject.strip()[:255]


def made_of(issues: Sequence[str], taken: int, unsure: int) -> Made | None:
    """Whether Redmine made an issue of a message it refused, from ``issues``: those of its
    subject made since it was posted (oldest first); ``taken``: other messages of that
    subject the target took meanwhile; ``unsure``: others that may or may not have made one.
    An issue that could be another message's is never taken for this one's: that would
    lose this message. So only one issue more than ``taken``, with none unsure, is its."""
    if len(issues) <= taken:
        return None  # each is another's: it made none
    if unsure or len(issues) > taken + 1:
        raise LookupFailed(f"{len(issues)} issues of its subject made since it was posted, "
                           f"for {taken} other message(s) taken and {unsure} unsure")
    return Made(issues[0] if taken == 0 else None)


def match_new_issues(sent: Sequence[Submitted],
                     issues: Sequence[tuple[str, str]]) -> dict[int, str]:
    """Pair messages with issues (id, subject; oldest first) by the subject Redmine gave
    each, in the order both were made; an issue is paired once."""
    free = list(issues)
    found: dict[int, str] = {}
    for one in sorted(sent, key=lambda s: s.at):
        subject = redmine_subject(one.subject)
        for i, (issue, title) in enumerate(free):
            if title == subject:
                found[one.record] = issue
                del free[i]
                break
    return found


def _utc(stamp: str) -> datetime:
    """Redmine's ``2026-12-02T07:57:13Z``; an unreadable one as now (made since)."""
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC)
    except ValueError:
        return datetime.now(UTC)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
