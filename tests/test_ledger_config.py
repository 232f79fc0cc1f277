"""ledger: in the configuration: SQLite by default, a PostgreSQL URL with its password kept
apart (and redacted), and the replicas manifest in contrib valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imap_ingest.config import load
from imap_ingest.errors import ConfigError
from imap_ingest.ledger import SqliteLedger, open_ledger

from .support.ingest_env import ROOT

BASE = {"accounts": [{"name": "a", "host": "imap.example.org", "username": "u",
                      "password": "p", "folders": [{"name": "INBOX", "project": "x"}]}],
        "targets": {"redmine": {"type": "redmine", "url": "https://r.example.org",
                                "key": "k"}}}


def write(tmp_path: Path, **top: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "state_dir": str(tmp_path / "state"), **top}))
    return path


def test_sqlite_is_the_default(tmp_path: Path) -> None:
    """Without ledger.url the ledger is the state_dir's SQLite file."""
    ledger = open_ledger(load(write(tmp_path)))
    assert isinstance(ledger, SqliteLedger)
    ledger.close()


def test_password_from_env_is_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DSN's password comes from the environment and is among the redacted secrets."""
    monkeypatch.setenv("LEDGER_PW", "hunter2-ledger")
    config = load(write(tmp_path, ledger={"url": "postgresql://u@db/x",
                                          "password_env": "LEDGER_PW"}))
    assert config.ledger.secret is not None
    assert "hunter2-ledger" in set(config.secrets())


@pytest.mark.parametrize("url", ["postgresql://u:pw@db/x", "mysql://db/x"])
def test_bad_urls_are_refused(tmp_path: Path, url: str) -> None:
    """A password inside the URL, or another engine, is a configuration error."""
    with pytest.raises(ConfigError, match="ledger"):
        load(write(tmp_path, ledger={"url": url}))


def test_replicas_manifest_config_is_valid(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """contrib/kubernetes-replicas.yaml: two replicas, and its config loads."""
    docs = list(yaml.safe_load_all((ROOT / "contrib" / "kubernetes-replicas.yaml").read_text()))
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    for name in ("IMAP_PASSWORD", "REDMINE_MAIL_KEY", "LEDGER_PASSWORD"):
        monkeypatch.setenv(name, "x")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    config = load(path)
    assert config.ledger.url is not None and config.ledger.lease_ttl == 15
