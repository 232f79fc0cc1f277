"""The stored refresh token of an account: a small JSON file, replaced atomically, mode 0600.

    {"refresh_token": "...", "issued_at": 1767225600, "expires_at": 1767830400}

``issued_at`` is when the provider gave this token; ``expires_at`` only when the provider
said (Google's ``refresh_token_expires_in``), else null. A file holding just the token, as
another tool may have written it, is read too; it becomes JSON at the first rotation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import private_dir, write_atomic


@dataclass(frozen=True, slots=True)
class StoredToken:
    refresh_token: str
    issued_at: float | None = None
    expires_at: float | None = None

    @classmethod
    def from_answer(cls, answer: dict[str, Any], refresh_token: str) -> StoredToken:
        """What to store after a token endpoint's ``answer`` carrying ``refresh_token``."""
        now = time.time()
        lifetime = answer.get("refresh_token_expires_in")
        expires = now + float(lifetime) if isinstance(lifetime, int | float) else None
        return cls(refresh_token, now, expires)

    def days_left(self, now: float | None = None) -> float | None:
        """Days until the provider said the token expires; None when it did not say."""
        if self.expires_at is None:
            return None
        return (self.expires_at - (time.time() if now is None else now)) / 86400


class TokenFileError(Exception):
    """The file is missing, unreadable or holds no token (the text never holds the token)."""


def read(path: Path) -> StoredToken:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror}") from None
    if not text.startswith("{"):
        if not text:
            raise TokenFileError(f"{path} is empty")
        return StoredToken(text.splitlines()[0])
    try:
        data = json.loads(text)
        return StoredToken(str(data["refresh_token"]), _number(data.get("issued_at")),
                           _number(data.get("expires_at")))
    except (ValueError, KeyError, TypeError):
        raise TokenFileError(f"{path} is not a token file (JSON with refresh_token)") from None


def write(path: Path, token: StoredToken) -> None:
    """Replace the file at once (a crash leaves the old or the new one, never half of one),
    readable by its owner only."""
    private_dir(path.parent)
    data = {"refresh_token": token.refresh_token, "issued_at": token.issued_at,
            "expires_at": token.expires_at}
    write_atomic(path, (json.dumps(data) + "\n").encode())


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
