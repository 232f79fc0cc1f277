"""``targets:``, each entry validated by the model its ``type`` names in the tracker registry.

The models themselves live beside their trackers (``imap_ingest/trackers/NAME.py``); this
module has what they all share and the dispatch by ``type``.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    FilePath,
    PlainValidator,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ..trackers import registry
from .values import Duration, HttpUrl, Model, is_loopback, url_secrets

TEMPLATES = resources.files("imap_ingest") / "templates"


class Target(Model):
    """What every target has; a tracker's model adds its keys and ``type: Literal[NAME]``."""

    type: str
    addresses: list[str] = []  # the tracker's own From addresses, for the own-address check

    def max_in_flight(self) -> int:
        """How many requests this target may have in flight at once, at most."""
        return 1


class HttpTarget(Target):
    """What every HTTP target has."""

    allow_insecure: bool = False  # before url: its check reads it
    url: HttpUrl = Field(repr=False)  # may hold a password or a secret path
    ca_file: FilePath | None = None
    verify_tls: bool = True
    timeout: Duration = 60.0
    # Requests in flight at once, all folders together: a number, or auto (from one up to
    # max_concurrency, as far as the tracker's latency says it keeps up; limiter.py).
    # A refusal while others were in flight is taken back alone (verdict.py), so a
    # tracker's lock errors under concurrency fail no mail.
    concurrency: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 8

    @field_validator("url")
    @classmethod
    def _no_clear_text_off_loopback(cls, value: str, info: ValidationInfo) -> str:
        if in_clear_off_loopback(value) and not info.data.get("allow_insecure"):
            raise ValueError("http:// would send the key and the mail in clear text across "
                             "the network; use https://, or set allow_insecure: true")
        return value

    def max_in_flight(self) -> int:
        return self.max_concurrency if self.concurrency == "auto" else self.concurrency

    def fixed_in_flight(self) -> int | None:
        """The number set; None: found by the limiter (limiter.py)."""
        return None if self.concurrency == "auto" else self.concurrency

    def secrets(self) -> Iterator[str]:
        yield from super().secrets()
        yield from url_secrets(self.url)


def in_clear_off_loopback(url: str) -> bool:
    """Whether ``url`` is plain http to a host other than this one."""
    return url.startswith("http://") and not is_loopback(urlsplit(url).hostname or "")


def _by_type(value: object) -> Target:
    """The entry validated by its type's model: pydantic's discriminated union, over the
    trackers registered when the file is read rather than when this module was."""
    if not isinstance(value, dict):
        raise PydanticCustomError("model_attributes_type", "Input should be a valid dictionary "
                                  "or object to extract fields from")
    tag = value.get("type")
    if tag is None:
        raise PydanticCustomError("union_tag_not_found", "no type")
    try:
        model = registry.lookup(tag).model if isinstance(tag, str) else None
    except KeyError:
        model = None
    if model is None:
        raise PydanticCustomError("union_tag_invalid", "unknown type")
    return model.model_validate(value)


AnyTarget = Annotated[SerializeAsAny[Target], PlainValidator(_by_type)]


def target_types() -> list[str]:
    """Every registered type: the HTTP trackers first (the usual case), then the others."""
    known = registry.registered()
    return sorted(known, key=lambda name: (not issubclass(known[name].model, HttpTarget), name))


def templates() -> dict[str, Traversable]:
    """The starter configs ``init`` offers: ``templates/TYPE.yaml`` where there is one."""
    found = {name: TEMPLATES / f"{name}.yaml" for name in target_types()}
    return {name: template for name, template in found.items() if template.is_file()}
