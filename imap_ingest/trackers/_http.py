"""The HTTP boundary shared by trackers: one keep-alive session, errors turned into Outcomes."""

from __future__ import annotations

from pathlib import Path

import requests

from .. import __version__
from . import Kind, Outcome

USER_AGENT = f"imap-ingest/{__version__}"


def session(verify_tls: bool, ca_file: Path | None) -> requests.Session:
    """A keep-alive session that verifies TLS unless told not to, with our User-Agent."""
    http = requests.Session()
    http.verify = str(ca_file) if ca_file and verify_tls else verify_tls
    http.headers["User-Agent"] = USER_AGENT
    return http


def unreachable(url: str, timeout: float, exc: requests.RequestException) -> Outcome:
    """A request that got no answer: always temporary, with a reason that holds no secret."""
    if isinstance(exc, requests.Timeout):
        return Outcome(Kind.TEMPORARY, f"no answer from {url} within {timeout:g} s; "
                       "the tracker may still have taken the message")
    if isinstance(exc, requests.exceptions.SSLError):
        return Outcome(Kind.TEMPORARY, f"TLS failure talking to {url}: certificate not trusted "
                       "or handshake refused (see ca_file, verify_tls)")
    if isinstance(exc, requests.ConnectionError):
        return Outcome(Kind.TEMPORARY, f"cannot connect to {url}")
    return Outcome(Kind.TEMPORARY, f"request to {url} failed: {type(exc).__name__}")
