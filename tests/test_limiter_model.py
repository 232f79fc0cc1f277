"""``concurrency: auto`` against modelled trackers: how fast it reaches its level, where it
settles, and what that costs against the best fixed number. Pure and deterministic: a pass
that spends ``overhead`` seconds on each message before sending it (one at a time in its own
thread, above 1 in the background, as inflight.py does), a tracker of ``workers`` that each
take a message's service time and queue the rest, the real Limiter fed as Pace feeds it."""

from __future__ import annotations

import heapq
import random
import statistics
from dataclasses import dataclass, replace

import pytest

from imap_ingest.limiter import Limiter, Signal


@dataclass(frozen=True)
class Tracker:
    workers: int
    service: float  # seconds a message of the usual size takes one worker
    attachments: float = 5.0  # one in ten messages carries an attachment: this many times
    jitter: float = 0.3  # each service time is off by up to this fraction, either way
    crowding: float = 0.0  # each other busy worker slows a request by this fraction (CPU)
    # The chance that a request begun while another worker is busy deadlocks on SQLite:
    # a quick 422 (a fifth of its time), which the pass sends again alone.
    conflicts: float = 0.0
    # The share of each service spent holding the tracker's one write lock (RT's SQLite:
    # DBD::SQLite begins IMMEDIATE and waits for it), after the rest, which its workers
    # overlap (parsing, scrips, Perl); the locks are taken in the order the requests came.
    lock: float = 0.0


@dataclass
class Run:
    seconds: float
    limits: list[int]  # the limit each message was sent under

    def reached(self, level: int) -> int | None:
        """The first message sent with at least ``level`` in flight allowed."""
        return next((i for i, limit in enumerate(self.limits) if limit >= level), None)

    @property
    def settled(self) -> int:
        return int(statistics.median(self.limits[len(self.limits) // 2:]))


def services(tracker: Tracker, count: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [tracker.service * (tracker.attachments if i % 10 == 9 else 1.0)
            * (1 + rng.uniform(-tracker.jitter, tracker.jitter)) for i in range(count)]


def simulate(tracker: Tracker, overhead: float, count: int = 500,
             fixed: int | None = None) -> Run:
    """One pass of ``count`` messages; ``fixed`` as ``concurrency: N``, else auto."""
    limiter, rng = Limiter(8), random.Random(11)
    free = [0.0] * tracker.workers  # when each worker is next idle
    unlocked = 0.0  # when the write lock is next free
    # (answered at, sent at, saturated, service, refused), soonest answer first
    flight: list[tuple[float, float, bool, float, bool]] = []
    lonely: list[float] = []  # refused among others: to be sent again alone
    now, limits = 0.0, []

    def limit() -> int:
        return fixed or limiter.limit

    def send(service: float) -> None:
        nonlocal unlocked
        saturated = len(flight) + 1 >= limit()
        worker = min(range(tracker.workers), key=free.__getitem__)
        begins = max(now, free[worker])
        busy = sum(1 for other in free if other > begins)
        took = service * (1 + tracker.crowding * busy)
        refused = busy > 0 and rng.random() < tracker.conflicts
        if refused:
            free[worker] = begins + took / 5
        elif tracker.lock:
            locks = max(begins + took * (1 - tracker.lock), unlocked)
            free[worker] = unlocked = locks + took * tracker.lock
        else:
            free[worker] = begins + took
        heapq.heappush(flight, (free[worker], now, saturated, service, refused))

    def take() -> None:
        """The soonest answer, as the Client hands it to the limiter."""
        nonlocal now
        done, sent, saturated, service, refused = heapq.heappop(flight)
        now = max(now, done)
        if fixed is None:
            limiter.sample(done - sent, Signal.of(422 if refused else 201), saturated, done)
        if refused:
            lonely.append(service)

    def alone() -> None:
        """Each refusal among others sent again with nothing else in flight (ingest._alone)."""
        while lonely:
            service = lonely.pop(0)
            while flight:
                take()
            send(service)
            take()
            if fixed is None:
                limiter.sample(0.0, Signal.CONFLICT, at=now)

    for service in services(tracker, count):
        now += overhead  # fetch and decide the message
        while flight and (flight[0][0] <= now or len(flight) >= limit()):
            take()  # answered meanwhile on their threads, or waited for: make_room
        alone()
        limits.append(limit())
        send(service)
        if limit() == 1:
            take()  # one at a time: sent inline, the pass waits for the answer
    while flight or lonely:
        while flight:
            take()
        alone()
    return Run(now, limits)


def best_fixed(tracker: Tracker, overhead: float, count: int = 500) -> tuple[int, float]:
    """The fixed concurrency that takes the least time, and that time."""
    times = {n: simulate(tracker, overhead, count, fixed=n).seconds for n in range(1, 9)}
    return min(times.items(), key=lambda item: item[1])


REDMINE = Tracker(workers=2, service=0.04)
RT = Tracker(workers=1, service=0.25)
# RT 5 on SQLite under Starlet x2: both workers busy, latency 1.5 times the lowest at 2 in
# flight (measured 1.55), no more answers a second at 3; a 200 KB attachment twice the time.
RT_SQLITE = Tracker(workers=2, service=0.3, attachments=2.0, lock=0.75)


@pytest.mark.parametrize(("name", "tracker", "overhead", "level", "within", "settled"), [
    ("redmine 30 ms", Tracker(2, 0.03), 0.003, 3, 40, {3, 4, 5}),
    ("redmine 60 ms", Tracker(2, 0.06), 0.003, 3, 40, {3, 4, 5}),
    # 2 and 3 make the same here (27.3 a second): the second slot brought little, so the
    # third must pay, and does not
    ("redmine, CPU-bound", Tracker(2, 0.04, crowding=0.3), 0.003, 3, 40, {2, 3}),
    ("redmine, a slow pass", Tracker(2, 0.04), 0.015, 3, 40, {3, 4, 5}),
    ("redmine, stock SQLite", Tracker(2, 0.04, conflicts=0.1), 0.003, 3, 40, {3, 4, 5}),
    ("rt 100 ms", Tracker(1, 0.1), 0.003, 2, 20, {2}),
    ("rt 300 ms", Tracker(1, 0.3), 0.003, 2, 20, {2}),
    ("rt, steady", Tracker(1, 0.25, attachments=1.0, jitter=0.0), 0.003, 2, 20, {2}),
    ("rt on sqlite, 2 workers", RT_SQLITE, 0.003, 2, 20, {2}),
    ("rt on sqlite, 2 workers, CPU-bound", replace(RT_SQLITE, crowding=0.1), 0.003, 2, 20, {2}),
])
def test_auto_reaches_the_best_fixed_level_quickly(name: str, tracker: Tracker,
                                                   overhead: float, level: int, within: int,
                                                   settled: set[int]) -> None:
    """auto takes its level within a few dozen messages, stays there, and loses under 5%."""
    run = simulate(tracker, overhead)
    _, best = best_fixed(tracker, overhead)
    reached = run.reached(level)
    assert reached is not None and reached <= within, (name, reached, run.limits[:60])
    assert run.settled in settled, (name, run.settled)
    assert best / run.seconds >= 0.95, (name, best / run.seconds, run.limits[::25])


def test_a_tracker_quicker_than_the_pass_stays_at_one() -> None:
    """Against a 1 ms sink the pass is the bottleneck: auto never takes a second slot."""
    run = simulate(Tracker(2, 0.001), 0.002)
    assert set(run.limits) == {1}
