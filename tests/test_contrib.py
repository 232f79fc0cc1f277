"""contrib/'s Grafana dashboard and Prometheus alert rules use only metrics the program
exports (and promtool, where installed, accepts the rules)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from imap_ingest.flow import Flow, FlowCollector, FolderFlow
from imap_ingest.metrics import Metrics

CONTRIB = Path(__file__).parents[1] / "contrib"
NAME = re.compile(r"\bimap_ingest_[a-z_]+\b")


def exported() -> set[str]:
    """Every sample name /metrics can show, each labelled metric given one sample."""
    metrics = Metrics()
    metrics.messages.labels("a", "INBOX", "t", "submitted").inc()
    metrics.fetched.labels("a", "INBOX").inc()
    metrics.submitted("a", "INBOX", "t", 0.1, None)
    metrics.delay_seconds.labels("a", "INBOX").observe(1)
    metrics.reconnects.labels("a").inc()
    metrics.auth_failed.labels("a").set(0)
    metrics.backlog.labels("a", "INBOX").set(0)
    metrics.last_success.labels("a", "INBOX").set(0)
    flow = Flow((FolderFlow("a", "INBOX", 1.0, 1.0),), {"t": "503"})
    metrics.registry.register(FlowCollector(lambda: flow))
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def expressions() -> list[str]:
    """Every PromQL expression in the alert rules and the dashboard."""
    rules = yaml.safe_load((CONTRIB / "prometheus-alerts.yaml").read_text())
    board = json.loads((CONTRIB / "grafana-dashboard.json").read_text())
    return ([rule["expr"] for group in rules["groups"] for rule in group["rules"]]
            + [target["expr"] for panel in board["panels"] for target in panel["targets"]])


def test_every_expression_names_an_exported_metric() -> None:
    """Each imap_ingest_* name in contrib/ is one /metrics exports; each expression has one."""
    names = exported()
    for expr in expressions():
        used = NAME.findall(expr)
        assert used, expr
        assert set(used) <= names, (expr, set(used) - names)


def test_the_metrics_the_issue_asks_for_are_charted_and_alerted() -> None:
    """Throughput by outcome, pending age, failing targets and auth failures are covered."""
    used = {name for expr in expressions() for name in NAME.findall(expr)}
    assert {"imap_ingest_messages_total", "imap_ingest_oldest_pending_seconds",
            "imap_ingest_target_failing", "imap_ingest_auth_failed"} <= used


def test_promtool_accepts_the_rules() -> None:
    """promtool check rules, when Debian's prometheus package is installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # the expressions are still checked above
    done = subprocess.run([promtool, "check", "rules", str(CONTRIB / "prometheus-alerts.yaml")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
