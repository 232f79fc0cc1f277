"""Logging to stderr as text or JSON, with every configured secret redacted from every line."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

Format = Literal["text", "json"]
REDACTED = "***"


class _Redactor:
    """The secrets to hide: the configuration's, and the tokens obtained while running."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self._held: dict[str, tuple[str, ...]] = {}
        self._tokens: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> str:
        for secret in (*self.secrets, *self._tokens):
            text = text.replace(secret, REDACTED)
        return text

    def track(self, holder: str, token: str) -> None:
        """Redact ``token`` from now on. ``holder`` keeps its last two (a rotated refresh
        token may still show up in an answer about it), so the set does not grow forever."""
        if not token:
            return
        with self._lock:
            self._held[holder] = (token, *self._held.get(holder, ())[:1])
            # Replaced whole, never changed in place: formatters in other threads iterate it.
            self._tokens = frozenset(t for held in self._held.values() for t in held)


redact = _Redactor()


def hide(secrets: Iterable[str]) -> None:
    """Redact these values (the loaded configuration's secrets) from every log line."""
    redact.secrets = {secret for secret in secrets if secret}


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with fixed, machine-readable fields (shown as key=value in text)."""
    logger.log(level, message, extra={"fields": fields})


class _Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        return redact(line)


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
    plain = text and not any(c in text for c in ' "=')
    return text if plain else json.dumps(text, ensure_ascii=False)


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
