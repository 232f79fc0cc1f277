"""Prometheus metrics of one running service (its own registry, so a reload starts clean)."""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180)
_DELAY = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 14400, 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("imap_ingest_messages", "Messages dealt with, by outcome "
                                "(submitted, failed, skipped, moved, held, deferred ...)",
                                ["account", "folder", "target", "outcome"], registry=r)
        self.flood_held = Counter("imap_ingest_flood_held_messages", "Messages the flood "
                                  "breaker held (per_sender or per_subject over its limit)",
                                  ["account", "folder", "limit"], registry=r)
        self.fetched = Counter("imap_ingest_fetched_messages", "Messages fetched from IMAP",
                               ["account", "folder"], registry=r)
        self.submit_seconds = Histogram("imap_ingest_submit_seconds", "Time the tracker took "
                                        "to answer one submission", ["target"],
                                        buckets=_LATENCY, registry=r)
        self.delay_seconds = Histogram("imap_ingest_mail_to_ticket_seconds", "From the "
                                       "message's arrival (IMAP INTERNALDATE) to the tracker's "
                                       "success", ["account", "folder"], buckets=_DELAY,
                                       registry=r)
        self.reconnects = Counter("imap_ingest_imap_reconnects", "IMAP connections made again "
                                  "after one was lost", ["account"], registry=r)
        self.auth_failed = Gauge("imap_ingest_auth_failed", "1 while the account has no usable "
                                 "OAuth2 token (auth_failed: the refresh or the token was "
                                 "refused), else 0", ["account"], registry=r)
        self.backlog = Gauge("imap_ingest_backlog_messages", "New messages the last pass left "
                             "in the folder (deferred, or cut short)", ["account", "folder"],
                             registry=r)
        self.stalled = Gauge("imap_ingest_pass_stalled_seconds", "Seconds since the running "
                             "pass over the folder last got on (0 between passes)",
                             ["account", "folder"], registry=r)
        self.stuck_workers = Gauge("imap_ingest_stuck_workers", "Folders whose pass made no "
                                   "progress within its limit (http.stuck_after); /healthz "
                                   "fails while this is not 0", registry=r)
        self.leased = Gauge("imap_ingest_folder_leased", "1 while this replica holds the "
                            "folder's lease (replicas sharing a PostgreSQL ledger)",
                            ["account", "folder", "replica"], registry=r)
        self.last_success = Gauge("imap_ingest_last_success_timestamp_seconds", "When a pass "
                                  "over the folder last completed", ["account", "folder"],
                                  registry=r)

    def submitted(self, account: str, folder: str, target: str, seconds: float,
                  arrived: datetime | None) -> None:
        self.submit_seconds.labels(target).observe(seconds)
        if arrived is not None:
            self.delay_seconds.labels(account, folder).observe(
                max(0.0, time.time() - arrived.timestamp()))

    def text(self) -> bytes:
        return generate_latest(self.registry)
