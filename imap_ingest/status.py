"""`imap-ingest status` and `history`: what the ledger knows, read without the network."""

from __future__ import annotations

import sys
import time

from .budget import budget_of, plan
from .config import Config
from .deliver import report as spooled
from .errors import EX_NOT_FOUND, EX_OK
from .ledger import open_ledger
from .states import State


def status(config: Config) -> int:
    """Print per folder the messages by state, and per target whether it is failing."""
    ledger = open_ledger(config)
    try:
        rows, targets, leases = ledger.summary(), ledger.targets(), ledger.holders()
        archive = ledger.archive_summary()
    finally:
        ledger.close()
    folders: dict[str, list[str]] = {}
    for account, folder, what, count, oldest in rows:
        line = f"{count} {what}"
        if what in (State.WAITING, State.SUBMITTING):
            line += f" (oldest since {_time(oldest)})"
        folders.setdefault(f"{account}/{folder}", []).append(line)
    for folder, parts in folders.items():
        print(f"{folder}: {', '.join(parts)}")
    for name, failures, next_try, error, when in targets:
        state = (f"failing ({failures} in a row), next try {_time(next_try)}" if failures
                 else "ok")
        last = f"; last error {_time(when)}: {error}" if error else ""
        print(f"target {name}: {state}{last}")
    for account, folder, holder, left in leases:
        print(f"lease {account}/{folder}: replica {holder} ({left:.0f} s left)")
    archived, known, spam, ham = archive
    if archived:
        print(f"archive: {archived} messages, {known} with a known ticket; exported for "
              f"training: {spam} spam, {ham} ham")
    for line in spooled(config):
        print(line)
    if not folders:
        print(f"no messages recorded yet in {config.state_dir}")
    for each in config.accounts:
        fitted = plan(each.folders, budget_of(each), each.idles, notify=True)
        print(f"account {each.name}: {fitted.connections} of {budget_of(each)} "
              f"connection(s) as a service; "
              + fitted.summary("pushed (IDLE, where the server has it): {}; polled: {}"))
    return EX_OK


def history(config: Config, message_id: str) -> int:
    """Print every record and attempt for ``message_id``; EX_NOT_FOUND when there is none."""
    ledger = open_ledger(config)
    try:
        records = ledger.history(message_id)
    finally:
        ledger.close()
    if not records:
        print(f"no record of {message_id} in {config.state_dir}", file=sys.stderr)
        return EX_NOT_FOUND
    for row, attempts in records:
        ticket = f", ticket {row['ticket']}" if row["ticket"] else ""
        print(f"{row['account']}/{row['folder']} uid {row['uid']} (UIDVALIDITY "
              f"{row['uidvalidity']}), first seen {_time(row['first_seen'])}, rule "
              f"{row['rule']}: {row['state']}, {row['outcome']}{ticket}; "
              f"{row['reason'] or ''} [{row['dispose_to'] or 'not disposed'}]")
        for attempt in attempts:
            status = attempt["status"] if attempt["status"] is not None else "-"
            print(f"  {_time(attempt['at'])} {attempt['target']} {attempt['outcome']} "
                  f"{status}: {attempt['reason']}")
    return EX_OK


def _time(stamp: object) -> str:
    """A ledger timestamp (seconds since the epoch) as local time."""
    if not isinstance(stamp, int | float) or not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
