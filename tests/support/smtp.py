"""A real SMTP server on loopback (aiosmtpd) that keeps every message it is given."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from .dovecot import free_ports


class _Keep:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.messages.append((raw, email.message_from_bytes(raw, policy=email.policy.default)))
        return "250 OK"


class SmtpServer:
    """aiosmtpd on a free loopback port; ``messages`` are (raw bytes, parsed)."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self._handler = _Keep()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    @property
    def messages(self) -> list[tuple[bytes, EmailMessage]]:
        return self._handler.messages

    def kinds(self) -> list[str]:
        """The X-Imap-Ingest-Alert kind of every message received, in order."""
        return [str(parsed["X-Imap-Ingest-Alert"]) for _, parsed in self.messages]

    def close(self) -> None:
        self._controller.stop()
