"""Any HTTP endpoint: one JSON document per message (schemas/webhook.schema.json), or the
raw message as message/rfc822 with ``format: raw``.

2xx is success (a ticket id may be read with a JSON pointer), 401/403/404 and redirects
mean our URL or token is wrong, 429 and 5xx are temporary, other 4xx refuse the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, model_validator

from ..config import (
    Duration,
    HttpTarget,
    Secret,
    SecretFromEnv,
    SecretFromFile,
    SecretText,
    Size,
    SubmitOptions,
    parse_size,
    pick_secret,
    url_path_secrets,
)
from ..message import Message, leaf_parts
from ..urls import origin
from . import Envelope, Kind, Outcome
from ._http import Client, retry_after
from .registry import register

SCHEMA_VERSION = 1


def _also(old: str) -> Any:
    """A field that the file may also name by its old key (``secret`` before
    ``signing_secret``, which says which secret it is)."""
    return Field(None, validation_alias=AliasChoices(f"signing_{old}", old))


class WebhookTarget(HttpTarget):
    """Any HTTP endpoint: a JSON document per message, or the raw message/rfc822."""

    type: Literal["webhook"]
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    format: Literal["json", "raw"] = "json"
    timeout: Duration = 30.0
    headers: dict[str, SecretText] = Field({}, repr=False)  # secrets: API keys, Basic auth
    token: Secret | None = None  # sent as Authorization: Bearer
    token_file: SecretFromFile | None = None
    token_env: SecretFromEnv | None = None
    # Signs the body: HMAC-SHA256 in signature_header.
    signing_secret: Secret | None = _also("secret")
    signing_secret_file: SecretFromFile | None = _also("secret_file")
    signing_secret_env: SecretFromEnv | None = _also("secret_env")
    signature_header: str = "X-Imap-Ingest-Signature"
    attachment_limit: Size = parse_size("1M")  # larger attachments are listed, not included
    id_pointer: str | None = None  # JSON pointer to the ticket id in the answer, e.g. /id

    @model_validator(mode="after")
    def _one_of_each(self) -> WebhookTarget:
        pick_secret(self, "token")
        pick_secret(self, "signing_secret")
        return self

    def secrets(self) -> Iterator[str]:
        # A Slack- or Teams-style URL is its own credential: its path and query.
        yield from super().secrets()
        yield from url_path_secrets(self.url)
        yield from self.headers.values()


def document(raw: bytes, options: SubmitOptions, envelope: Envelope,
             attachment_limit: int) -> dict[str, Any]:
    """The JSON document for one message."""
    message = Message(raw)
    text = html = None
    attachments = []
    for part in leaf_parts(raw):
        if part.is_text and part.content_type == "text/plain" and text is None:
            text = part.text()
        elif part.is_text and part.content_type == "text/html" and html is None:
            html = part.text()
        elif not part.is_text:
            attachments.append({
                "filename": part.filename, "content_type": part.content_type,
                "size": len(part.data),
                "content_base64": base64.b64encode(part.data).decode()
                if len(part.data) <= attachment_limit else None})
    return {
        "version": SCHEMA_VERSION,
        "envelope": {"account": envelope.account, "folder": envelope.folder,
                     "uidvalidity": envelope.uidvalidity, "uid": envelope.uid,
                     "subaddress": envelope.subaddress},
        "options": options.model_dump(exclude_none=True),
        "message_id": message.message_id,
        "ticket": envelope.ticket,
        "subject": message.subject,
        "from": _addresses(message, "From")[:1] or None,
        "to": _addresses(message, "To"),
        "cc": _addresses(message, "Cc"),
        "date": message.header("Date"),
        "headers": [[name, value] for name, value in message.fields()],
        "text": text,
        "html": html,
        "attachments": attachments,
        "raw_base64": base64.b64encode(raw).decode(),
    }


def _addresses(message: Message, name: str) -> list[dict[str, str]]:
    return [{"name": display, "address": address}
            for display, address in message.addresses(name)]


def classify(status: int, body: bytes, pointer: str | None,
             wait: float | None = None) -> Outcome:
    """What the endpoint's answer means for the message."""
    if 200 <= status < 300:
        return Outcome(Kind.SUCCESS, f"the webhook took it ({status})",
                       ticket=_pointer(body, pointer), status=status)
    if status in (401, 403, 404) or 300 <= status < 400:
        return Outcome(Kind.CONFIG, f"the webhook answered {status}: check the url and token",
                       status=status)
    if status == 429 or status >= 500:
        return Outcome(Kind.TEMPORARY, f"the webhook is in trouble ({status})", status=status,
                       retry_after=wait)
    return Outcome(Kind.PERMANENT, f"the webhook refused the message ({status})", status=status)


def _pointer(body: bytes, pointer: str | None) -> str | None:
    """RFC 6901: the value at ``pointer`` in the JSON answer, or None."""
    if not pointer:
        return None
    try:
        node: Any = json.loads(body)
        for token in pointer.lstrip("/").split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            node = node[int(token)] if isinstance(node, list) else node[token]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return None if isinstance(node, dict | list) or node is None else str(node)


class Webhook:
    """One endpoint, over as many keep-alive connections as its concurrency."""

    def __init__(self, target: WebhookTarget) -> None:
        self._target = target
        self._http = Client(target)
        self.pace = self._http.pace
        self._token = pick_secret(target, "token")
        self._signing_secret = pick_secret(target, "signing_secret")

    def _request(self, raw: bytes, options: SubmitOptions,
                 envelope: Envelope) -> tuple[bytes, dict[str, str]]:
        target = self._target
        if target.format == "raw":
            body, headers = raw, {"Content-Type": "message/rfc822"}
        else:
            body = json.dumps(document(raw, options, envelope, target.attachment_limit),
                              ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json"}
        headers.update(target.headers)
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        if self._signing_secret is not None:
            digest = hmac.new(self._signing_secret.get_secret_value().encode(), body,
                              hashlib.sha256)
            headers[target.signature_header] = f"sha256={digest.hexdigest()}"
        return body, headers

    def submit(self, raw: bytes, options: SubmitOptions, envelope: Envelope) -> Outcome:
        body, headers = self._request(raw, options, envelope)
        answer = self._http.request(self._target.method, self._target.url, data=body,
                                    headers=headers)
        if isinstance(answer, Outcome):
            return answer
        return replace(classify(answer.status_code, answer.content, self._target.id_pointer,
                                retry_after(answer.headers.get("Retry-After"))),
                       crowded=answer.crowded)

    def preview(self, raw: bytes, options: SubmitOptions,
                envelope: Envelope) -> tuple[str, list[tuple[str, str]]]:
        body, headers = self._request(raw, options, envelope)
        # The headers: values are secrets (an API key, Basic auth), and so is the path of a
        # Slack- or Teams-style URL.
        masked = {name: "***" for name in self._target.headers} | {"Authorization": "Bearer ***"}
        fields = [(f"header {k}", masked.get(k, v)) for k, v in headers.items()]
        parts = urlsplit(self._target.url)
        where = origin(self._target.url) + ("/***" if parts.path.strip("/") or parts.query else "")
        return (f"{self._target.method} {where}",
                [*fields, ("body", f"<{self._target.format}, {len(body)} bytes>")])

    def check(self) -> Outcome:
        # Nothing can be asked of an arbitrary endpoint without sending it a message:
        # reaching it (any HTTP answer) is what can be checked.
        answer = self._http.request("HEAD", self._target.url)
        if isinstance(answer, Outcome):
            return answer
        return Outcome(Kind.SUCCESS, f"{origin(self._target.url)} answers (HTTP "
                       f"{answer.status_code} to HEAD; nothing was posted)",
                       status=answer.status_code)

    def close(self) -> None:
        self._http.close()


register(WebhookTarget, Webhook)
