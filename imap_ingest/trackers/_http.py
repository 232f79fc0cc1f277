"""The HTTP boundary shared by trackers: one keep-alive session, errors turned into Outcomes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from .. import __version__
from ..config import HttpTarget
from ..urls import origin
from . import Kind, Outcome

USER_AGENT = f"imap-ingest/{__version__}"
_REDIRECTS = (301, 302, 303, 307, 308)


class Client:
    """Keep-alive connections that verify TLS unless told not to, at most the target's
    ``concurrency`` requests at once, whichever folders send them."""

    def __init__(self, target: HttpTarget) -> None:
        self.timeout = target.timeout
        self._http = requests.Session()
        self._http.verify = (str(target.ca_file) if target.ca_file and target.verify_tls
                             else target.verify_tls)
        self._http.headers["User-Agent"] = USER_AGENT
        # The proxy settings of the environment, read once: requests would read them (and
        # ~/.netrc) again for every request, half a millisecond each time.
        self._http.proxies = requests.utils.get_environ_proxies(target.url)
        self._http.trust_env = False
        pool = requests.adapters.HTTPAdapter(pool_connections=1,
                                             pool_maxsize=target.concurrency)
        self._http.mount("http://", pool)
        self._http.mount("https://", pool)
        self._slots = threading.BoundedSemaphore(target.concurrency)
        self._prepared: dict[tuple[str, str], requests.PreparedRequest] = {}

    def request(self, method: str, url: str, *, data: bytes | Iterable[bytes] | None = None,
                files: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                repost: int = 0) -> requests.Response | Outcome:
        """The answer, or a TEMPORARY Outcome when there was none. Redirects are not
        followed (requests would turn a POST into a GET), except ``repost`` times by
        sending the same request to the new location, as rt-mailgate does."""
        with self._slots:
            for _ in range(repost + 1):
                request = self._prepare(method, url)
                request.headers.update(headers or {})
                request.prepare_body(data, files)
                try:
                    answer = self._http.send(request, timeout=self.timeout,
                                             allow_redirects=False)
                except (requests.RequestException, urllib3.exceptions.HTTPError,
                        ValueError) as exc:
                    return unreachable(url, self.timeout, exc)
                if answer.status_code not in _REDIRECTS or "Location" not in answer.headers:
                    break
                location = urljoin(url, answer.headers["Location"])
                if (refused := _not_followed(url, location)) is not None:
                    return refused
                url = location
            return answer

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
    if isinstance(exc, requests.Timeout):
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
