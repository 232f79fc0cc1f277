"""The HTTP boundary shared by trackers: one keep-alive session, errors turned into Outcomes.

Every request has a total deadline (the target's ``timeout``), and every answer is read as
a bounded prefix: requests and urllib3 bound each read only, so a tracker that drips its
answer a byte a second would hold the folder for ever, and they buffer the whole body.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.structures import CaseInsensitiveDict
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .. import __version__
from ..config import HttpTarget
from ..limiter import Pace, Signal
from ..urls import origin
from . import Kind, Outcome

USER_AGENT = f"imap-ingest/{__version__}"
_REDIRECTS = (301, 302, 303, 307, 308)
# Bytes of an answer read: Redmine's, RT's and a webhook's JSON are a few hundred; the rest
# of a longer answer is not read (and its connection not reused).
ANSWER_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """A tracker's answer: its status, headers and the first ANSWER_LIMIT bytes of its body."""

    status_code: int
    headers: CaseInsensitiveDict[str]
    content: bytes
    encoding: str | None = None
    crowded: bool = False  # other requests to the target were in flight meanwhile
    seconds: float = 0.0  # from taking a slot to the answer

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding or "utf-8", errors="replace")


class _Deadline:
    """Shuts the connection in use down when a request's time is up, which wakes the read
    (or write) blocked on it; the request then ends as "no answer within N s"."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self.cancelled = False
        self._lock = threading.Lock()
        self._connection: object | None = None
        _WATCHER.add(self, time.monotonic() + seconds)

    def watch(self, connection: object | None) -> None:
        """The connection the request uses from now on (None: back in the pool)."""
        with self._lock:
            self._connection = connection

    def cancel(self) -> None:
        _WATCHER.cancel(self)
        self.watch(None)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            sock = getattr(self._connection, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):  # already closed
                    # socket.socket's own shutdown, also for TLS: SSLSocket's would tear
                    # the TLS state down under the thread reading it.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watcher:
    """One thread for every request's deadline, started with the first: a timer thread per
    request cost 0.6 ms a POST, a third of a message's time against a fast tracker."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, _Deadline]] = []  # a heap, soonest first
        self._order = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline, at: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http deadlines",
                                                daemon=True)
                self._thread.start()
            elif self._due[0][2] is deadline:
                self._wake.notify()  # sooner than the one it sleeps for

    def cancel(self, deadline: _Deadline) -> None:
        with self._wake:
            if deadline.expired:
                return  # out of the heap already
            deadline.cancelled = True
            self._cancelled += 1
            # Cancelled ones wait in the heap for their time; a busy pass cancels a thousand
            # a second, so drop them once they are most of it.
            if self._cancelled > 64 and self._cancelled * 2 > len(self._due):
                self._due = [entry for entry in self._due if not entry[2].cancelled]
                heapq.heapify(self._due)
                self._cancelled = 0

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._due and self._due[0][2].cancelled:
                    heapq.heappop(self._due)
                    self._cancelled -= 1
                if not self._due:
                    self._wake.wait()
                    continue
                left = self._due[0][0] - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                heapq.heappop(self._due)[2].expire()


_WATCHER = _Watcher()
_current = threading.local()  # the _Deadline of the request this thread is making


class _WatchedPool(HTTPConnectionPool):
    """A pool that tells the current request's deadline which connection it uses, until
    the connection is back in the pool (and possibly in another thread's hands)."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        if (deadline := getattr(_current, "deadline", None)) is not None:
            deadline.watch(connection)
        return connection

    def _put_conn(self, conn: Any) -> None:
        if (deadline := getattr(_current, "deadline", None)) is not None:
            deadline.watch(None)
        super()._put_conn(conn)


class _WatchedHttpsPool(_WatchedPool, HTTPSConnectionPool):
    pass


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter over watched pools, direct or through an HTTP proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # not SOCKS: its pools are its own
            manager.pool_classes_by_scheme = _POOLS
        return manager


_POOLS = {"http": _WatchedPool, "https": _WatchedHttpsPool}


@contextlib.contextmanager
def total(seconds: float) -> Iterator[_Deadline]:
    """A deadline of ``seconds`` for the whole of the requests this thread makes inside,
    over a session with the watched adapter (``watched``), whatever the server drips."""
    _current.deadline = deadline = _Deadline(seconds)
    try:
        yield deadline
    finally:
        deadline.cancel()
        _current.deadline = None


class Client:
    """Keep-alive connections that verify TLS unless told not to, at most the target's
    ``concurrency`` requests at once (``pace``, the limiter's), whichever folders send them."""

    def __init__(self, target: HttpTarget) -> None:
        self.timeout = target.timeout
        self.pace = Pace(target.fixed_in_flight(), target.max_in_flight(),
                         name=origin(target.url))
        # As many connections as the limit may ever reach: the pool keeps those in use.
        self._http = session(target, _Adapter(pool_connections=1, pool_maxsize=self.pace.most))
        self._prepared: dict[tuple[str, str], requests.PreparedRequest] = {}

    def request(self, method: str, url: str, *, data: bytes | Iterable[bytes] | None = None,
                files: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                repost: int = 0) -> Answer | Outcome:
        """The answer, or a TEMPORARY Outcome when there was none within the timeout.
        Redirects are not followed (requests would turn a POST into a GET), except
        ``repost`` times by sending the same request to the new location, as rt-mailgate
        does; the timeout covers them all."""
        with self.pace.slot() as ticket:
            with total(self.timeout) as deadline:
                answer = self._follow(method, url, data, files, headers, repost, deadline)
            if isinstance(answer, Outcome):
                self.pace.answered(ticket, Signal.OVERLOAD if answer.kind is Kind.TEMPORARY
                                   else Signal.REFUSED)
                return answer
            self.pace.answered(ticket, Signal.of(answer.status_code))
            return replace(answer, crowded=self.pace.crowded(ticket),
                           seconds=self.pace.elapsed(ticket))

    def _follow(self, method: str, url: str, data: bytes | Iterable[bytes] | None,
                files: Mapping[str, Any] | None, headers: Mapping[str, str] | None,
                repost: int, deadline: _Deadline) -> Answer | Outcome:
        for _ in range(repost + 1):
            answer = self._send(method, url, data, files, headers, deadline)
            if isinstance(answer, Outcome) or answer.status_code not in _REDIRECTS or (
                    "Location" not in answer.headers):
                return answer
            location = urljoin(url, answer.headers["Location"])
            if (refused := _not_followed(url, location)) is not None:
                return refused
            url = location
        return answer

    def _send(self, method: str, url: str, data: bytes | Iterable[bytes] | None,
              files: Mapping[str, Any] | None, headers: Mapping[str, str] | None,
              deadline: _Deadline) -> Answer | Outcome:
        request = self._prepare(method, url)
        request.headers.update(headers or {})
        try:
            request.prepare_body(data, files)
            if deadline.expired:
                raise requests.Timeout
            with self._http.send(request, timeout=self.timeout, allow_redirects=False,
                                 stream=True) as answer:
                # Read to its end, the connection goes back to the pool; else leaving the
                # with closes it.
                body = answer.raw.read(ANSWER_LIMIT + 1, decode_content=True)[:ANSWER_LIMIT]
                return Answer(answer.status_code, answer.headers, body,
                              requests.utils.get_encoding_from_headers(answer.headers))
        except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as exc:
            return unreachable(url, self.timeout, requests.Timeout() if deadline.expired
                               else exc)

    def _prepare(self, method: str, url: str) -> requests.PreparedRequest:
        """A copy of the request prepared once per method and URL: requests would merge the
        session's headers, cookies and hooks again for each one, a third of its cost per
        POST. Trackers' mail endpoints keep no session, so no cookie is sent."""
        key = (method, url)
        if key not in self._prepared:
            self._prepared[key] = requests.Request(method, url, headers=self._http.headers
                                                   ).prepare()
        return self._prepared[key].copy()

    def close(self) -> None:
        self._http.close()


def session(target: HttpTarget, adapter: _Adapter | None = None) -> requests.Session:
    """A session for one target, watched by the deadlines: TLS checked as :func:`verify`
    says, our User-Agent, the environment's proxies read once (requests would read them
    again for every request, half a millisecond each time) and ~/.netrc never (its password
    would replace the token or key a tracker is sent)."""
    http = requests.Session()
    http.verify = verify(target)
    http.headers["User-Agent"] = USER_AGENT
    http.proxies = requests.utils.get_environ_proxies(target.url)
    http.trust_env = False
    adapter = adapter or _Adapter()  # its connections watched by the deadline of total()
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def verify(target: HttpTarget) -> bool | str:
    """What requests checks the target's certificate against: its ``ca_file``, the system's
    CAs, or nothing when ``verify_tls: false`` says so (which wins over a ``ca_file``)."""
    return str(target.ca_file) if target.ca_file and target.verify_tls else target.verify_tls


def _not_followed(url: str, location: str) -> Outcome | None:
    """A redirect that must not carry the message: to another host, or from https to
    plain http. Configure the URL it points to instead."""
    old, new = urlsplit(url), urlsplit(location)
    if new.hostname == old.hostname and new.scheme in ("https", old.scheme):
        return None
    return Outcome(Kind.CONFIG, f"{origin(url)} redirected to {origin(location)}, which is "
                   "another host or not https: not followed, the message stays; if that is "
                   "the tracker, configure its url")


def unreachable(url: str, timeout: float, exc: Exception) -> Outcome:
    """A request that got no answer, or could not be made: a reason that names the server
    only, never a header value (a secret with a line break is refused by the HTTP layer
    with the value in its message)."""
    where = origin(url)
    if isinstance(exc, requests.ConnectTimeout):
        return Outcome(Kind.TEMPORARY, f"cannot connect to {where} within {timeout:g} s")
    if isinstance(exc, requests.Timeout | urllib3.exceptions.TimeoutError):
        # Sent, but no answer: the tracker may have the message (in doubt, not retried).
        return Outcome(Kind.TEMPORARY, f"no answer from {where} within {timeout:g} s; "
                       "the tracker may still have taken the message", in_doubt=True)
    if isinstance(exc, requests.exceptions.SSLError):
        return Outcome(Kind.TEMPORARY, f"TLS failure talking to {where}: certificate not "
                       "trusted or handshake refused (see ca_file, verify_tls)")
    if isinstance(exc, requests.ConnectionError):
        return Outcome(Kind.TEMPORARY, f"cannot connect to {where}")
    if isinstance(exc, ValueError):
        # requests' InvalidHeader, http.client's "Invalid header value", a bad URL:
        # nothing was sent, and sending again cannot help.
        return Outcome(Kind.CONFIG, f"request to {where} not sent: a header value (key, "
                       f"token, headers:) or the url holds a line break or control "
                       f"character ({type(exc).__name__})")
    return Outcome(Kind.TEMPORARY, f"request to {where} failed: {type(exc).__name__}")


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
