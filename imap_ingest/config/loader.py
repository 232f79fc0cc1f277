"""Reading the file: YAML, overridden from the environment, validated, references checked."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from ..handoff import SOCKET_VARIABLE
from .settings import Config
from .targets import target_types

ENV_PREFIX = "IMAP_INGEST_"
CONFIG_VARIABLE = "IMAP_INGEST_CONFIG"  # names the file itself, not a key in it
_NOT_KEYS = (CONFIG_VARIABLE, SOCKET_VARIABLE)  # the latter: the deliver-server's socket


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment and validate; ConfigError names file, key, reason."""
    environ = os.environ if environ is None else environ
    data = _read_yaml(Path(path))
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and name not in _NOT_KEYS:
            _override(data, name, value, path)
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc), file=path) from None
    _check_names(config, path)
    _check_references(config, path)
    _check_alert_address(config, path)
    return config


def _check_alert_address(config: Config, path: str | os.PathLike[str]) -> None:
    """Alerts go to a person: to a tracker or a watched mailbox they would loop back in."""
    if config.alert.email is None:
        return
    to = config.alert.email.to.lower()
    watched = {a.lower() for account in config.accounts
               for a in [*account.addresses, account.username] if "@" in a}
    if to in config.own_addresses() | watched:
        what = "a tracker's own address" if to in config.own_addresses() else "a watched mailbox"
        raise ConfigError(f"alerts must go to a person, not to {what}", file=path,
                          key="alert.email.to")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # here: the compatible modes without -c read no file

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {where}{problem}", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with accounts: and targets:", file=path)
    return data


def _override(data: dict[str, Any], name: str, value: str, path: str | os.PathLike[str]) -> None:
    """Set the value an ``IMAP_INGEST_A__B__C`` variable names inside ``data``."""
    keys = name.removeprefix(ENV_PREFIX).split("__")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            index = _list_index(node, key)
            if index is None:
                raise ConfigError(f"{name}: no item {key!r} in this list (use an index or a name)",
                                  file=path, key=_key_path(keys[:depth]))
            if last:
                node[index] = _env_value(value)
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{name}: cannot set a key inside a single value",
                              file=path, key=_key_path(keys[:depth]))
        real = next((k for k in node if str(k).lower() == key.lower()), key.lower())
        if last:
            node[real] = _env_value(value)
        else:
            node = node.setdefault(real, {})


def _list_index(items: list[Any], key: str) -> int | None:
    if key.isdigit() and int(key) < len(items):
        return int(key)
    names = [str(item.get("name", "")).lower() if isinstance(item, dict) else "" for item in items]
    return names.index(key.lower()) if key.lower() in names else None


def _env_value(value: str) -> Any:
    """JSON for lists and mappings; any other value stays a string for pydantic to convert."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _key_path(loc: tuple[int | str, ...] | list[str]) -> str:
    """``('accounts', 0, 'folders', 1, 'name')`` → ``accounts[0].folders[1].name``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _describe(exc: ValidationError) -> str:
    """One line per problem, each naming its key path; never the offending value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple("if" if part == "if_" else part for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, message = (*loc, "type"), "must be one of " + ", ".join(target_types())
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{_key_path(loc) or '(top level)'}: {message}")
    return "\n  ".join(lines)


def _check_names(config: Config, path: str | os.PathLike[str]) -> None:
    """Names that must be unique: accounts (any case: overrides name them so), and the
    folders of an account (INBOX in any case is one folder, other IMAP names are exact)."""
    accounts: set[str] = set()
    for a, account in enumerate(config.accounts):
        if account.name.lower() in accounts:
            raise ConfigError(f"another account is named {account.name.lower()!r}", file=path,
                              key=f"accounts[{a}].name")
        accounts.add(account.name.lower())
        folders: set[str] = set()
        for f, folder in enumerate(account.folders):
            name = "INBOX" if folder.name.upper() == "INBOX" else folder.name
            if name in folders:
                raise ConfigError(f"the account lists folder {folder.name!r} twice", file=path,
                                  key=f"accounts[{a}].folders[{f}].name")
            folders.add(name)


def _check_references(config: Config, path: str | os.PathLike[str]) -> None:
    """Names that must point at something: targets, and a default when there are several."""
    known = ", ".join(config.targets)
    for a, account in enumerate(config.accounts):
        for f, folder in enumerate(account.folders):
            where = f"accounts[{a}].folders[{f}]"
            if folder.target is None and len(config.targets) > 1:
                raise ConfigError(f"several targets are defined ({known}): name one",
                                  file=path, key=f"{where}.target")
            for r, rule in enumerate(folder.rules):
                if rule.use is not None and rule.use not in config.rules:
                    raise ConfigError(f"no rule named {rule.use!r} in the top-level rules: "
                                      f"(known: {', '.join(config.rules) or 'none'})",
                                      file=path, key=f"{where}.rules[{r}].use")
            named = [(f"{where}.target", folder.target)] + [
                (f"{where}.rules[{r}].then.submit.target", rule.then.submit.target)
                for r, rule in enumerate(folder.rules)
                if rule.then is not None and rule.then.submit is not None
            ] + [(f"rules.{name}.then.submit.target", rule.then.submit.target)
                 for name, rule in config.rules.items()
                 if rule.then is not None and rule.then.submit is not None]
            for key, target in named:
                if target is not None and target not in config.targets:
                    raise ConfigError(f"no target named {target!r} (known: {known})",
                                      file=path, key=key)
    for name, route in config.routes.items():
        if route.target is None and len(config.targets) > 1:
            raise ConfigError(f"several targets are defined ({known}): name one", file=path,
                              key=f"routes.{name}.target")
        if route.target is not None and route.target not in config.targets:
            raise ConfigError(f"no target named {route.target!r} (known: {known})", file=path,
                              key=f"routes.{name}.target")
