"""Tracker types by name: each module of this package registers its config model and class.

A module ``trackers/NAME.py`` that calls ``register(NameTarget, Name)`` for ``type: NAME``
is all a tracker takes: ``targets:`` validation, ``open_tracker``, ``check``, ``explain``
and ``init`` find it here. A lookup imports the one module its type names (a delivery, one
process per message, pays for its own tracker only); ``registered()``, for listing the
types, imports them all. Neither happens when this module is imported, because the tracker
modules import the config package, which imports this.
"""

from __future__ import annotations

import importlib
import importlib.util
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
    package, _, module = model.__module__.rpartition(".")
    if package == _PACKAGE and module != names[0]:
        raise TypeError(f"type {names[0]!r} must be declared in {_PACKAGE}.{names[0]}, "
                        "where a lookup of it imports it from")
    if names[0] in _registered:
        raise ValueError(f"a tracker named {names[0]!r} is already registered")
    _registered[names[0]] = Registration(model, tracker)


def lookup(name: str) -> Registration:
    """Tracker type ``name``, importing its module ``trackers/NAME.py`` if it has not
    registered yet; KeyError if there is no such type."""
    if name not in _registered and _is_tracker_module(name) \
            and importlib.util.find_spec(f"{_PACKAGE}.{name}") is not None:
        importlib.import_module(f"{_PACKAGE}.{name}")
    return _registered[name]


def _is_tracker_module(name: str) -> bool:
    return name.isidentifier() and not name.startswith("_") and name != "registry"


def registered() -> Mapping[str, Registration]:
    """Every tracker type, those of this package's modules and any registered elsewhere."""
    global _discovered
    if not _discovered:
        _discovered = True
        for module in pkgutil.iter_modules(importlib.import_module(_PACKAGE).__path__):
            if _is_tracker_module(module.name):
                importlib.import_module(f"{_PACKAGE}.{module.name}")
    return _registered
