"""What of a URL may be shown: reasons and logs name ``scheme://host:port`` only."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: what a reason may name. The user:password of a
    proxy and a Slack-style secret path never leave the process."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}" if port else f"{parts.scheme}://{host}"


def shown(url: str) -> str:
    """``url`` with the password of its user:password@ masked, for ``explain``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)
                          ).geturl()
