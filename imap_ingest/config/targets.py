"""``targets:``, each entry validated by the model its ``type`` names in the tracker registry.

The models themselves live beside their trackers (``imap_ingest/trackers/NAME.py``); this
module has what they all share and the dispatch by ``type``.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated, Literal

from pydantic import Field, FilePath, PlainValidator, SerializeAsAny
from pydantic_core import PydanticCustomError

from ..trackers import registry
from .values import Duration, HttpUrl, Model

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

    url: HttpUrl
    ca_file: FilePath | None = None
    verify_tls: bool = True
    timeout: Duration = 60.0
    # Requests in flight at once, all folders together: a number, or auto (from one up to
    # max_concurrency, as far as the tracker's latency says it keeps up; limiter.py).
    # A refusal while others were in flight is taken back alone (verdict.py), so a
    # tracker's lock errors under concurrency fail no mail.
    concurrency: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 8

    def max_in_flight(self) -> int:
        return self.max_concurrency if self.concurrency == "auto" else self.concurrency

    def fixed_in_flight(self) -> int | None:
        """The number set; None: found by the limiter (limiter.py)."""
        return None if self.concurrency == "auto" else self.concurrency


def _by_type(value: object) -> Target:
    """The entry validated by its type's model: pydantic's discriminated union, over the
    trackers registered when the file is read rather than when this module was."""
    if not isinstance(value, dict):
        raise PydanticCustomError("model_attributes_type", "Input should be a valid dictionary "
                                  "or object to extract fields from")
    tag = value.get("type")
    if tag is None:
        raise PydanticCustomError("union_tag_not_found", "no type")
    known = registry.registered()
    if not isinstance(tag, str) or tag not in known:
        raise PydanticCustomError("union_tag_invalid", "unknown type")
    return known[tag].model.model_validate(value)


AnyTarget = Annotated[SerializeAsAny[Target], PlainValidator(_by_type)]


def target_types() -> list[str]:
    """Every registered type: the HTTP trackers first (the usual case), then the others."""
    known = registry.registered()
    return sorted(known, key=lambda name: (not issubclass(known[name].model, HttpTarget), name))


def templates() -> dict[str, Traversable]:
    """The starter configs ``init`` offers: ``templates/TYPE.yaml`` where there is one."""
    found = {name: TEMPLATES / f"{name}.yaml" for name in target_types()}
    return {name: template for name, template in found.items() if template.is_file()}
