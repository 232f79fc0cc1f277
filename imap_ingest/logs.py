"""Logging to stderr as text or JSON, with every configured secret redacted from every line."""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, quote_plus

Format = Literal["text", "json"]
REDACTED = "***"
# Shorter secrets are redacted only where they stand alone: replaced inside any word, a
# two-letter password would mangle every line and so give itself away.
SHORT = 8


def forms(secret: str) -> set[str]:
    """The ways ``secret`` shows up in text: raw, URL-encoded (path, query, form), JSON
    string-escaped, an IMAP quoted string and the repr of its bytes (imaplib's errors and
    --debug lines), its UTF-8 read as Latin-1 (a server's answer without charset), and
    base64 (standalone or inside a longer value, as in Basic auth)."""
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
    found = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             secret.encode().decode("latin-1"), quoted, repr(secret.encode())[2:-1],
             repr(quoted.encode())[2:-1]}
    if len(secret) >= SHORT:
        runs = {_base64_run(secret, offset) for offset in (0, 1, 2)}
        found |= runs | {run.translate(_URLSAFE) for run in runs}
    return {text for text in found if text}


_URLSAFE = str.maketrans("+/", "-_")


def _base64_run(secret: str, offset: int) -> str:
    """The base64 characters that only the secret's bytes determine, when it starts
    ``offset`` bytes into the encoded value."""
    data = secret.encode()
    encoded = base64.b64encode(bytes(offset) + data).decode()
    start, end = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
    return encoded[start:end]


def _pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One alternation of every form of every secret, longest first, so that a secret
    inside another is not redacted half."""
    long: set[str] = set()
    short: set[str] = set()
    for secret in secrets:
        for text in forms(secret):
            (short if len(secret) < SHORT else long).add(text)
    alternatives = [re.escape(text) for text in sorted(long, key=len, reverse=True)]
    alternatives += [rf"(?<!\w){re.escape(text)}(?!\w)"
                     for text in sorted(short, key=len, reverse=True)]
    return re.compile("|".join(alternatives)) if alternatives else None


class _Redactor:
    """The secrets to hide: the configuration's, and the tokens obtained while running."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._held: dict[str, tuple[str, ...]] = {}
        self._tokens: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(REDACTED, text) if pattern is not None else text

    def replace(self, secrets: Iterable[str]) -> None:
        """Redact these configuration secrets instead of the previous ones."""
        with self._lock:
            self._secrets = frozenset(secret for secret in secrets if secret)
            self._compile()

    def track(self, holder: str, token: str) -> None:
        """Redact ``token`` from now on. ``holder`` keeps its last two (a rotated refresh
        token may still show up in an answer about it), so the set does not grow forever."""
        if not token:
            return
        with self._lock:
            self._held[holder] = (token, *self._held.get(holder, ())[:1])
            # Replaced whole, never changed in place: formatters in other threads iterate it.
            self._tokens = frozenset(t for held in self._held.values() for t in held)
            self._compile()

    def _compile(self) -> None:
        # Replaced whole, never changed in place, for the same reason.
        self._pattern = _pattern(self._secrets | self._tokens)


redact = _Redactor()


def hide(secrets: Iterable[str]) -> None:
    """Redact these values (the loaded configuration's secrets) from every log line, in
    place of those of the configuration before (a reload)."""
    redact.replace(secrets)


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with fixed, machine-readable fields (shown as key=value in text)."""
    logger.log(level, message, extra={"fields": fields})


class _Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Redacted before quoting and escaping, which could hide a secret's escaped form.
        line = redact(super().formatMessage(record))
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_quote(redact(str(v)))}" for k, v in fields.items()
                                   if v is not None)
        return escape(line)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redact before encoding: JSON escaping could hide a secret from a plain replace.
        entry = {key: redact(str(value)) if isinstance(value, str) else value
                 for key, value in entry.items()}
        return json.dumps(entry, default=lambda value: redact(str(value)), ensure_ascii=False)


def _quote(value: object) -> str:
    text = str(value)
    plain = text and not any(c in text for c in ' "=') and not _CONTROL.search(text)
    return text if plain else json.dumps(text, ensure_ascii=False)


# C0 and C1 controls and DEL (terminal escapes, carriage returns), and a line break unless
# an indented line follows: a header or a server's answer must not forge a log record.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]|\n(?![ \t])")


def escape(text: str) -> str:
    """``text`` with control characters shown as escapes (\\x1b, \\r, \\n)."""
    return _CONTROL.sub(lambda control: repr(control[0])[1:-1], text)


@contextmanager
def configured(fmt: Format = "text", debug: bool = False) -> Iterator[None]:
    """Log to stderr while inside; ``debug`` adds the IMAP and HTTP exchanges."""
    hide(())  # until a configuration is loaded, there is nothing to redact
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if fmt == "json" else _Text())
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *_CHATTY)}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # The libraries' chatter is only worth seeing with --debug.
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


_CHATTY = ("imapclient", "urllib3", "apscheduler")
