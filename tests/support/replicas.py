"""Replicas of `imap-ingest run` sharing a PostgreSQL ledger (tests/test_replicas.py and
bench/replicas.py): their config, the processes, who holds which folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import psycopg
import yaml

from .dovecot import ImapAccount
from .ingest_env import ROOT, command
from .mail import make

PASSWORD_ENV = "TEST_LEDGER_PASSWORD"  # not IMAP_INGEST_*: those override config keys


def write_replica_config(path: Path, imap: ImapAccount, redmine_url: str, ledger_url: str,
                         folders: list[str], ttl: float, interval: float) -> Path:
    """One account with ``folders`` polled every ``interval``, one Redmine target, the
    ledger in PostgreSQL (its password from PASSWORD_ENV)."""
    path.write_text(yaml.safe_dump({
        "accounts": [{"name": "test", "host": imap.host, "port": imap.port,
                      "security": "none", "username": imap.username,
                      "password": imap.password,
                      "folders": [{"name": f, "project": "support", "interval": interval,
                                   "idle": False} for f in folders]}],
        "targets": {"redmine": {"type": "redmine", "url": redmine_url, "key": "s3cret-key",
                                "timeout": "5s"}},
        "state_dir": str(path.parent / "state"),
        "ledger": {"url": ledger_url, "password_env": PASSWORD_ENV, "lease_ttl": ttl},
        "shutdown_grace": "5s",
    }))
    return path


class Replicas:
    """`imap-ingest run` processes on one config, each named by IMAP_INGEST_LEDGER__REPLICA."""

    def __init__(self, config: Path, password: str) -> None:
        self.config, self.password = config, password
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        env = {**os.environ, PASSWORD_ENV: self.password, "IMAP_INGEST_LEDGER__REPLICA": name}
        with open(self.log(name), "ab") as log:
            self.processes[name] = subprocess.Popen(command("run", "-c", str(self.config)),
                                                    cwd=ROOT, env=env, stdout=log, stderr=log)

    def log(self, name: str) -> Path:
        return self.config.parent / f"{name}.log"

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.processes[name].send_signal(sig)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in self.processes.values():
            process.wait(30)


def holders(url: str, password: str) -> dict[str, str]:
    """folder: the replica (name before the pid) holding its live lease."""
    with psycopg.connect(url, password=password) as db:
        row = db.execute("SELECT to_regclass('leases') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return {}  # no replica has made the schema yet
        return {folder: holder.rsplit(":", 1)[0] for folder, holder in db.execute(
            "SELECT folder, holder FROM leases WHERE expires > now()")}


def fill(imap: ImapAccount, folders: list[str], per_folder: int, tag: str) -> list[bytes]:
    """Append ``per_folder`` new messages to every folder."""
    raws = []
    with imap.client() as client:
        for folder in folders:
            for i in range(per_folder):
                raw = make(subject=f"{tag} {folder} {i}")
                client.append(folder, raw)
                raws.append(raw)
    return raws


def message_id(raw: bytes) -> str:
    found = re.search(rb"^Message-ID: *(<[^>]+>)", raw, re.MULTILINE | re.IGNORECASE)
    assert found, raw[:200]
    return found[1].decode()


