"""Flow health: is mail moving through each folder, and if not, why. Pure, from the ledger's
counts and the workers' state; served as metrics, in /readyz's JSON, to alerts and the console.

A folder is *stalled* when its oldest pending message (waiting for a retry, or being posted)
is older than ``alert.stalled_after``, or when no pass over it has completed for that long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PendingRow = tuple[str, str, float | None, int, int, int, int, str | None]  # Ledger.pending()
TargetRow = tuple[str, int, float | None, str | None, float | None]  # Ledger.targets()


@dataclass(frozen=True, slots=True)
class Worker:
    """What a folder's worker knows: connected, auth refused, when a pass last completed."""

    account: str
    folder: str
    ready: bool
    auth_failed: bool
    last_pass: float | None  # time.time() of the last completed pass


@dataclass(frozen=True, slots=True)
class FolderFlow:
    """One folder's flow at one moment."""

    account: str
    folder: str
    oldest_pending: float | None  # seconds
    since_pass: float | None  # seconds since the last completed pass; None: none yet
    waiting: int = 0
    held: int = 0
    failed: int = 0
    quarantined: int = 0
    last_error: str | None = None
    ready: bool = True
    auth_failed: bool = False
    stalled: str | None = None  # why it is stalled, or None

    @property
    def name(self) -> str:
        return f"{self.account}/{self.folder}"


@dataclass(frozen=True, slots=True)
class Flow:
    """Every folder's flow, and the targets failing now (name: last error)."""

    folders: tuple[FolderFlow, ...] = ()
    failing: Mapping[str, str] = field(default_factory=dict)
    stalled_after: float = 900.0
    # Replicas sharing a ledger: this one's name, and which replica holds which folder.
    replica: str | None = None
    leases: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, object]:
        return {"stalled_after": self.stalled_after,
                **({"replica": self.replica, "leases": dict(self.leases)}
                   if self.replica else {}),
                "stalled": {f.name: f.stalled for f in self.folders if f.stalled},
                "failing_targets": dict(self.failing),
                "folders": [asdict(f) for f in self.folders]}


def assess(workers: Iterable[Worker], pending: Iterable[PendingRow],
           targets: Iterable[TargetRow], stalled_after: float, now: float,
           started: float) -> Flow:
    """The flow of every worker's folder; ``started``: when the service started (a folder
    with no completed pass yet is stalled once it has been running ``stalled_after``)."""
    rows = {(row[0], row[1]): row for row in pending}
    failing = {name: error or "failing" for name, failures, _, error, _ in targets if failures}
    folders = []
    for w in workers:
        _, _, oldest, waiting, held, failed, quarantined, error = rows.get(
            (w.account, w.folder), (w.account, w.folder, None, 0, 0, 0, 0, None))
        age = max(0.0, now - oldest) if oldest is not None else None
        since = now - w.last_pass if w.last_pass is not None else None
        folders.append(FolderFlow(
            w.account, w.folder, age, since, waiting or 0, held or 0, failed or 0,
            quarantined or 0, error, w.ready, w.auth_failed,
            _stalled(age, since if since is not None else now - started, stalled_after,
                     error, w)))
    return Flow(tuple(folders), failing, stalled_after)


def _stalled(age: float | None, since: float, limit: float, error: str | None,
             worker: Worker) -> str | None:
    if age is not None and age > limit:
        return (f"oldest pending message is {age:.0f} s old (stalled_after {limit:.0f} s)"
                + (f"; last error: {error}" if error else ""))
    if since > limit:
        state = "login refused (auth_failed)" if worker.auth_failed else (
            "not connected" if not worker.ready else "passes not completing")
        return f"no pass completed for {since:.0f} s (stalled_after {limit:.0f} s): {state}"
    return None


class FlowCollector(Collector):
    """The flow as Prometheus gauges, computed at each scrape."""

    def __init__(self, flow: Callable[[], Flow]) -> None:
        self._flow = flow

    def collect(self) -> Iterator[GaugeMetricFamily]:
        flow = self._flow()
        labels = ["account", "folder"]
        gauges: dict[str, tuple[str, Callable[[FolderFlow], float]]] = {
            "oldest_pending_seconds": ("Age of the folder's oldest message waiting for the "
                                       "tracker (0: none)", lambda f: f.oldest_pending or 0.0),
            "since_last_pass_seconds": ("Seconds since a pass over the folder last completed "
                                        "(-1: none yet)", lambda f: (
                                            -1.0 if f.since_pass is None else f.since_pass)),
            "waiting_messages": ("Messages waiting for a retry", lambda f: f.waiting),
            "held_messages": ("Messages held (loop checks, hold rules), not released",
                              lambda f: f.held),
            "failed_messages": ("Messages given up on, not retried", lambda f: f.failed),
            "quarantined_messages": ("Messages in quarantine, not released",
                                     lambda f: f.quarantined),
            "stalled": ("1 while the folder is stalled (see alert.stalled_after)",
                        lambda f: int(f.stalled is not None)),
        }
        for name, (text, value) in gauges.items():
            family = GaugeMetricFamily(f"imap_ingest_{name}", text, labels=labels)
            for f in flow.folders:
                family.add_metric([f.account, f.folder], float(value(f)))
            yield family
        failing = GaugeMetricFamily("imap_ingest_target_failing", "1 while the target's last "
                                    "answers were temporary failures", labels=["target"])
        for name in flow.failing:
            failing.add_metric([name], 1.0)
        yield failing
