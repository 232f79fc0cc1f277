"""``alert:``: when mail counts as stuck, and who is told, by mail or webhook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from .values import (
    Duration,
    HttpUrl,
    Model,
    Secret,
    SecretFromEnv,
    SecretFromFile,
    WithSecret,
    url_path_secrets,
    url_secrets,
)


class EmailAlert(WithSecret):
    """Alerts by SMTP to an operator (like RT's OwnerEmail); never to a tracker."""

    secret_name = "password"

    to: str
    from_: str = "imap-ingest@localhost"
    host: str = "localhost"
    port: int = 25
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    password_file: SecretFromFile | None = None
    password_env: SecretFromEnv | None = None
    timeout: Duration = 30.0

    model_config = {**Model.model_config, "populate_by_name": True,
                    "alias_generator": lambda name: "from" if name == "from_" else name}

    def _needs_secret(self) -> bool:
        return self.username is not None


class WebhookAlert(Model):
    """Alerts as a JSON POST ``{"text": ...}`` (Slack, Teams and Matrix hooks take it)."""

    url: HttpUrl = Field(repr=False)  # a Slack or Teams URL is its own credential
    timeout: Duration = 30.0

    def secrets(self) -> Iterator[str]:
        yield from url_secrets(self.url)
        yield from url_path_secrets(self.url)


class Alert(Model):
    """When mail counts as stuck, and who hears of it."""

    stalled_after: Duration = 900.0  # the oldest pending message older than this: stalled
    check_every: Duration = 30.0
    digest_every: Duration = 300.0  # messages set aside are told in one digest per interval
    email: EmailAlert | None = None
    webhook: WebhookAlert | None = None

