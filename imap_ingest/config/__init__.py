"""The configuration: a YAML file, overridden from the environment, validated by pydantic.

Environment overrides are ``IMAP_INGEST_`` followed by the key path with ``__`` between
levels; a list item is named by its index or by its ``name``:

    IMAP_INGEST_ACCOUNTS__0__PASSWORD=...          accounts[0].password
    IMAP_INGEST_ACCOUNTS__SUPPORT__FOLDERS__INBOX__INTERVAL=30s
    IMAP_INGEST_TARGETS__REDMINE__KEY=...          targets.redmine.key

One module per concern: ``values`` (durations, sizes, URLs, secrets), ``folders`` (folders,
rules, actions), ``accounts`` (IMAP and OAuth2), ``targets`` (what the trackers' models
share; each model lives with its tracker), ``settings`` (the whole file), ``loader``.
"""

from typing import TYPE_CHECKING

from .alerting import Alert, EmailAlert, WebhookAlert
from .archive import Archive
from .folders import Action, CheckName, Condition, Folder, Rule, SubmitOptions
from .loader import CONFIG_VARIABLE, ENV_PREFIX, load
from .routes import Route
from .settings import Config, Console, Http, LedgerConfig, Retry, default_state_dir
from .targets import AnyTarget, HttpTarget, Target, target_types, templates
from .values import (
    Duration,
    HttpsUrl,
    HttpUrl,
    Model,
    Secret,
    SecretFromEnv,
    SecretFromFile,
    SecretText,
    Size,
    WithSecret,
    is_loopback,
    parse_duration,
    parse_size,
    pick_secret,
    url_path_secrets,
    url_secrets,
)

if TYPE_CHECKING:
    from .accounts import Account, OAuth2


def __getattr__(name: str) -> object:
    """Account and OAuth2 on first use: a config without accounts (mail an MTA pipes in)
    does without their models."""
    if name in ("Account", "OAuth2"):
        from . import accounts

        return getattr(accounts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONFIG_VARIABLE", "ENV_PREFIX", "Account", "Action", "Alert", "AnyTarget", "Archive",
    "CheckName",
    "Condition", "Config", "Console", "Duration", "EmailAlert", "Folder", "Http", "HttpTarget",
    "HttpUrl", "HttpsUrl", "LedgerConfig", "Model", "OAuth2", "Retry", "Route", "Rule", "Secret",
    "SecretFromEnv", "SecretFromFile", "SecretText", "Size", "SubmitOptions", "Target",
    "WebhookAlert", "WithSecret", "default_state_dir", "is_loopback", "load", "parse_duration",
    "parse_size", "pick_secret", "target_types", "templates", "url_path_secrets", "url_secrets",
]
