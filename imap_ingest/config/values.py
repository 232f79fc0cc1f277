"""The value types of the configuration: durations, sizes, URLs and secrets."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, ClassVar, Self
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    model_validator,
)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: object) -> float:
    """``30``, ``"30s"``, ``"5m"``, ``"1h"`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h")
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def parse_size(value: object) -> int:
    """``1048576``, ``"512k"``, ``"25M"``, ``"1G"`` → bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 512k, 25M or 1G")
    return int(float(match[1]) * _SIZES[match[2].lower()])


# C0 and C1 controls and DEL: no secret holds one; a line break inside is a pasting
# accident, and would make the HTTP layer refuse the header with the value in its message.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean_secret(value: object) -> object:
    """A secret without the whitespace around it (a file's or a variable's trailing newline,
    a Kubernetes secret made from a file); ValueError if a control character is left."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    if _CONTROL.search(value):
        raise ValueError("holds a control character (a line break, tab or escape) inside; "
                         "the value is not shown")
    return value


# The errors below never name the file or variable: a secret pasted into key_file: or
# key_env: by mistake would be echoed. The key path in the error says where to look.
def _read_secret_file(value: object) -> str:
    path = Path(str(value)).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the file named here ({exc.strerror}); the name is not "
                         "shown, in case a secret was pasted in its place") from None


def _read_secret_env(value: object) -> str:
    secret = os.environ.get(str(value))
    if not secret:
        raise ValueError("the environment variable named here is not set or empty; the name "
                         "is not shown, in case a secret was pasted in its place")
    return secret


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str) -> str:
    if not re.match(r"https?://[^/\s]+", url):
        raise ValueError("must be an http:// or https:// URL")
    return url.rstrip("/")


def _check_https(url: str) -> str:
    """An https:// URL; http:// only on loopback (a local test or proxy), as tokens cross it."""
    url = _check_url(url)
    if url.startswith("http://") and not is_loopback(urlsplit(url).hostname or ""):
        raise ValueError("must be an https:// URL (http:// only on loopback): tokens cross it")
    return url


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
# The *_file and *_env forms hold the secret itself once validated: read once, at load time.
Secret = Annotated[SecretStr, BeforeValidator(_clean_secret)]
SecretFromFile = Annotated[Secret, BeforeValidator(_read_secret_file)]
SecretFromEnv = Annotated[Secret, BeforeValidator(_read_secret_env)]
SecretText = Annotated[str, BeforeValidator(_clean_secret)]  # a secret kept as str (headers)
HttpUrl = Annotated[str, AfterValidator(_check_url)]
HttpsUrl = Annotated[str, AfterValidator(_check_https)]


class Model(BaseModel):
    """A section of the file: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def secrets(self) -> Iterator[str]:
        """Every secret of this section and the sections inside it, for the redactor."""
        for value in self.__dict__.values():
            if isinstance(value, SecretStr):
                yield value.get_secret_value()
            elif isinstance(value, Model):
                yield from value.secrets()


def url_secrets(url: str) -> Iterator[str]:
    """The secrets inside a URL: the whole user:password of a basic-auth proxy, and the
    password as written and decoded (requests sends it decoded, in base64)."""
    parts = urlsplit(url)
    if parts.password:
        yield from (parts.netloc.rpartition("@")[0], parts.password, unquote(parts.password))


def url_path_secrets(url: str) -> Iterator[str]:
    """The path and query of a URL that is its own credential (Slack, Teams webhooks)."""
    parts = urlsplit(url)
    if (where := parts.path + (f"?{parts.query}" if parts.query else "")).strip("/"):
        yield where


def pick_secret(model: BaseModel, name: str) -> SecretStr | None:
    """The one of NAME, NAME_file, NAME_env that is set (the *_file and *_env forms hold
    the secret itself once validated); ValueError when several are."""
    given = [getattr(model, f) for f in (name, f"{name}_file", f"{name}_env")]
    given = [secret for secret in given if secret is not None]
    if len(given) > 1:
        raise ValueError(f"give only one of {name}, {name}_file, {name}_env")
    return given[0] if given else None


class WithSecret(Model):
    """A model whose secret is given as NAME, NAME_file or NAME_env: exactly one of them."""

    secret_name: ClassVar[str]

    def _needs_secret(self) -> bool:
        return True

    @model_validator(mode="after")
    def _one_secret_given(self) -> Self:
        if self._needs_secret() and pick_secret(self, self.secret_name) is None:
            name = self.secret_name
            raise ValueError(f"give one of {name}, {name}_file, {name}_env")
        return self

    @property
    def secret(self) -> SecretStr:
        """The secret, wherever it came from (read once, at load time)."""
        secret = pick_secret(self, self.secret_name)
        assert secret is not None  # checked by _one_secret_given
        return secret
