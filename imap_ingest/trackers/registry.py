"""Tracker types by name: each module of this package registers its config model and class.

A module ``trackers/NAME.py`` that calls ``register(NameTarget, Name)`` is all a tracker
takes: ``targets:`` validation, ``open_tracker``, ``check``, ``explain`` and ``init`` find
it here. The modules are imported on the first lookup, not when this one is, because they
import the config package, which imports this.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

if TYPE_CHECKING:
    from ..config.targets import Target
    from . import Tracker

T = TypeVar("T", bound="Target")
_PACKAGE = __name__.rpartition(".")[0]
_registered: dict[str, Registration] = {}
_discovered = False


@dataclass(frozen=True, slots=True)
class Registration:
    model: type[Target]  # validates an entry of targets: with this type
    tracker: Callable[[Any], Tracker]  # opens the tracker for such an entry


def register(model: type[T], tracker: Callable[[T], Tracker]) -> None:
    """Make ``type: NAME`` mean ``model`` and ``tracker``, NAME being the model's
    ``type: Literal["NAME"]``."""
    annotation = model.model_fields["type"].annotation
    names = get_args(annotation) if get_origin(annotation) is Literal else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise TypeError(f"{model.__name__} needs type: Literal['NAME'], one name")
    if names[0] in _registered:
        raise ValueError(f"a tracker named {names[0]!r} is already registered")
    _registered[names[0]] = Registration(model, tracker)


def registered() -> Mapping[str, Registration]:
    """Every tracker type, those of this package's modules and any registered elsewhere."""
    global _discovered
    if not _discovered:
        _discovered = True
        for module in pkgutil.iter_modules(importlib.import_module(_PACKAGE).__path__):
            if not module.name.startswith("_") and module.name != "registry":
                importlib.import_module(f"{_PACKAGE}.{module.name}")
    return _registered
