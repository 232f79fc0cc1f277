"""The ledger: what happened to every message; the only package with SQL.

api.py holds the API and the SQL both backends share (records.py its values and errors,
schema.py its tables); sqlite.py is the embedded default
(one host, the state_dir), postgres.py the shared one (replicas), with leases.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .api import Ledger
from .records import (
    Archived,
    Begun,
    Dedupe,
    Earlier,
    Key,
    LeaseLost,
    LedgerError,
    LedgerUnavailable,
    Record,
    Source,
)
from .schema import SCHEMA_VERSION
from .sqlite import SqliteLedger

if TYPE_CHECKING:
    from ..config import Config


def open_ledger(config: Config) -> Ledger:
    """The configuration's ledger: its PostgreSQL database when given, else the state_dir's
    SQLite file. Leases are the service's to start (service.py)."""
    if config.ledger.url is None:
        return SqliteLedger.open(config.state_dir)
    from .postgres import PostgresLedger  # psycopg only where PostgreSQL is used

    password = config.ledger.secret
    return PostgresLedger(config.ledger.url,
                          password.get_secret_value() if password else None,
                          config.ledger.wait)


__all__ = [
    "SCHEMA_VERSION",
    "Archived",
    "Begun",
    "Dedupe",
    "Earlier",
    "Key",
    "LeaseLost",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "Record",
    "Source",
    "SqliteLedger",
    "open_ledger",
]
