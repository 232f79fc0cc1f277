"""How many submissions a target gets at once: a fixed number, or ``auto``.

``auto`` is a delay-based limiter in the style of TCP Vegas (and Netflix's concurrency-limits
VegasLimit), not AIMD. AIMD only learns the limit by passing it: it adds one until the
tracker fails, halves, and climbs again, so it keeps driving the tracker into the very errors
we least want: on SQLite those are lock conflicts that look like refusals, each one costing a
retry alone. Vegas reads the knee from latency, before any error: with the lowest latency
seen as the tracker's own service time, ``limit * (1 - lowest / now)`` estimates how many
requests wait in its queue. Each round of answers sent with the limit all in use, fewer than
``alpha(limit)`` waiting adds a slot and more than ``beta(limit)`` takes one away. A raise
taken while requests already wait must pay, as a hill climb would check: unless the answers
a second (limit / latency, Little's law) rise by a tenth, the slot goes back for a while.
Vegas's estimate alone cannot tell a queue from work the tracker overlaps: RT on SQLite, two
workers around one lock, made as much at 3 and 4 as at 2 and looked too little crowded to
stop at 2. A tracker of N workers settles at N + 1 (one request always waiting, so no worker
idles while we record one answer and send the next; N + 2 where that pays), one that takes
one at a time at 2, RT on SQLite at 2. Errors
that say "too much" (5xx, 429, no answer) halve the limit at once, as AIMD would; lock
conflicts take one away only when they are a good part of a round. A refusal (a 4xx) is no
latency: it made nothing. A tracker that answers within QUICK gets one at a time: there our
own work is the bottleneck, and a thread per request costs more.

The worker processes of a run (processes.py) each have a Pace; ``Slots`` makes a target's
limit hold for all of them together: at most ``most`` requests in flight in all, and
``alone()`` with nothing in flight in any. Each process's limiter still finds its own level
under that ceiling.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import random
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

# Requests waiting at the tracker, below which a slot is added and above which one is taken
# away. They grow with the limit as concurrency-limits' VegasLimit has them (3 and 6 times
# log10 of the limit): a tracker of N workers would then settle near N + 2 (Redmine under
# Passenger x2 at 4-5), and does where the second request waiting covers pauses of the pass
# that cost a tenth of its answers (the raise must pay, below). The floors keep a tracker
# that takes one at a time near 2.
ALPHA = 0.95
BETA = 2.0
ROUND = 8  # answers averaged before each decision, at least (and at least the limit)
# A tracker that answers this fast is not what the pass waits for: our own work per message
# (1-3 ms) is, and a second slot only adds a thread's cost (against a zero-cost sink, auto
# climbing made 212-298 msg/s where one at a time made 322-346). Real trackers take 25-300 ms.
QUICK = 0.005
# A round in which more than this share of the answers were lock conflicts: one slot fewer.
# A conflict alone says little: on SQLite two writers deadlock now and then however many
# more wait behind them (Redmine under Passenger x2: 24-46 in 500 messages at every limit
# from 2 to 8), and taking a slot away for each held auto between 1 and 2.
CONFLICTS = 0.25
# A raise taken while requests already wait (the round's median latency QUEUED times the
# lowest or more) must pay: at the new limit, the answers a second (answers over the time
# their rounds took, on the caller's clock) must stay GAIN above those of the last stay at
# the limit below, or the slot is given back and no raise is tried for HOLD rounds. Vegas
# alone reads a tracker that overlaps part of its work (RT's two workers outside SQLite's one
# lock: 1.16-1.75 times the lowest at 2) as less than one request waiting, and climbed to
# 3-4 where 2 made as much. Measured, not limit / latency (Little's law): that holds only
# while the limit is all in use, and at 2 against RT it read 8 a second where RT made 4. The
# median, as one message in ten is large: a round of 8 has one or none, moving the mean by
# half. A raise with no queue yet (a free worker) pays by construction and is not checked;
# nor is the second slot, though it tells: if it brought under SECOND times the answers a
# second of one at a time, the tracker is near serial and the third must pay, whatever the
# latency says (RT at 2 in a quiet run: 1.16 times the lowest, 3.8 -> 4.0 a second). Past
# the second, a slot's share (1 / limit) is within the noise of a round of 8 answers.
QUEUED = 1.25
SECOND = 1.25
GAIN = 0.1
HOLD = 10


def alpha(limit: int) -> float:
    return max(ALPHA, 3 * math.log10(limit))


def beta(limit: int) -> float:
    return max(BETA, 6 * math.log10(limit))


class Signal(Enum):
    ANSWER = "answer"  # the tracker took the message (or answered as it does when it does)
    REFUSED = "refused"  # a 4xx other than 429: made nothing, so its latency says nothing
    OVERLOAD = "overload"  # 5xx, 429, or no answer in time
    CONFLICT = "conflict"  # a refusal while others were in flight, taken back alone

    @classmethod
    def of(cls, status: int) -> Signal:
        """What an HTTP answer's status tells the limiter."""
        if status == 429 or status >= 500:
            return cls.OVERLOAD
        return cls.REFUSED if status >= 400 else cls.ANSWER


@dataclass
class Limiter:
    """The limit, from (latency, signal) samples; pure, and not thread-safe (Pace locks)."""

    most: int
    limit: int = 1
    lowest: float | None = None  # the lowest round average: the tracker's own service time
    latest: float = 0.0  # the last round's average
    answering: float = 0.0  # answers a second at this limit so far (0: not known)
    unpaid: bool = False  # the last move gave back a slot that did not pay
    _latencies: list[float] = field(default_factory=list)  # this round's, saturated
    _count: int = 0
    _idle: int = 0  # answers sent while the limit was not all in use
    _conflicts: int = 0
    _since: float | None = None  # when this round began: the last one's end
    # Answers and their seconds at each limit, on its last stay there (the one now included).
    _tally: dict[int, tuple[int, float]] = field(default_factory=dict)
    _must: bool = False  # this limit stays only if it pays
    _hold: int = 0  # rounds left without a raise, after one that did not pay

    def sample(self, latency: float, signal: Signal = Signal.ANSWER,
               saturated: bool = True, at: float | None = None) -> int:
        """Take one answer's latency (seconds); ``saturated``: the limit was all in use when
        it was sent (else it says nothing about more); ``at``: when it came, on the caller's
        clock (without it, the limiter knows no answers a second and the raise need not pay).
        Returns the limit."""
        if self._since is None and at is not None:
            self._since = at - latency
        if signal is Signal.OVERLOAD:
            self._move(max(1, self.limit // 2))
            self._reset(at)
            return self.limit
        if signal is not Signal.ANSWER:
            self._conflicts += signal is Signal.CONFLICT
            return self.limit
        self._count += 1
        if saturated:
            self._latencies.append(latency)
        else:
            # Sent with a slot to spare: it waited behind fewer than the limit, so its
            # latency would make the limit look less crowded than it is.
            self._idle += 1
        if self._count < max(ROUND, self.limit):
            return self.limit
        if self._idle * 2 > self._count:
            self._reset(at)  # the pass did not keep the limit in use: nothing to learn
            return self.limit
        now = self.latest = statistics.fmean(self._latencies)
        # The lowest is kept for good: a tracker that got slower for good looks congested,
        # but at the limit of 1 it looks less than 1 waiting (1 - lowest / now), so it
        # climbs again unless 20 times slower, as far as its own latency then allows.
        self.lowest = now if self.lowest is None else min(now, self.lowest)
        waiting = self.limit * (1 - self.lowest / now) if now > 0 else 0.0
        if at is not None and self._since is not None and at > self._since:
            answers, seconds = self._tally.get(self.limit, (0, 0.0))
            self._tally[self.limit] = answers + self._count, seconds + at - self._since
        rates = {n: a / t for n, (a, t) in self._tally.items() if t > 0}
        limit, self.answering = self.limit, rates.get(self.limit, 0.0)
        held, self._hold = self._hold > 0, max(0, self._hold - 1)
        if self._must and self.answering < rates.get(limit - 1, 0.0) * (1 + GAIN):
            self._move(limit - 1)
            self._hold, self.unpaid = HOLD, True
        elif waiting > beta(limit) or self._conflicts > CONFLICTS * self._count:
            self._move(max(1, limit - 1))
        elif waiting < alpha(limit) and now >= QUICK and not held and limit < self.most:
            self._move(limit + 1, statistics.median(self._latencies) >= QUEUED * self.lowest
                       or (limit == 2 and self.answering < rates.get(1, 0.0) * SECOND))
        self._reset(at)
        return self.limit

    def _move(self, limit: int, must: bool = False) -> None:
        """To ``limit``, counting its answers a second afresh; ``must``: it stays only while
        it pays."""
        if limit != self.limit:
            self.limit, self._must, self.unpaid = limit, must, False
            self._tally[limit] = 0, 0.0

    def _reset(self, at: float | None) -> None:
        self._latencies, self._count, self._idle, self._conflicts = [], 0, 0, 0
        self._since = at


@dataclass(slots=True)
class Ticket:
    """One request holding a slot."""

    started: float
    entered: int  # how many requests had entered when this one did
    crowded: bool  # another request to the target was in flight when it began
    saturated: bool
    elsewhere: Callable[[], bool] | None = None  # the same, in the run's other processes


class Pace:
    """The slots of one target, shared by every folder: at most the limit in flight, and
    ``alone()`` for a request that must have the target to itself. Thread-safe."""

    def __init__(self, fixed: int | None, most: int,
                 clock: Callable[[], float] = time.monotonic, name: str = "the target") -> None:
        self.fixed = fixed
        self.name = name  # for the log: the target's origin, never its URL's secrets
        self.limiter = Limiter(most)
        self._clock = clock
        self._ready = threading.Condition()
        self._active = 0
        self._entered = 0
        self._owner: int | None = None  # the thread that has the target to itself
        # alone(lazily=True): the other processes' slots, taken with the owner's first request.
        self._others: contextlib.ExitStack | None = None
        self.shared: Slots | None = None  # the slots of the other processes of the run

    @property
    def limit(self) -> int:
        return self.fixed or self.limiter.limit

    @property
    def most(self) -> int:
        return self.fixed or self.limiter.most

    @contextlib.contextmanager
    def slot(self) -> Iterator[Ticket]:
        """Hold one of the slots while the request is made."""
        me = threading.get_ident()
        with self._ready:
            self._ready.wait_for(lambda: self._owner in (None, me) and (
                self._active < self.limit or self._owner == me))
            ticket = Ticket(self._clock(), self._entered, self._active > 0,
                            self._active + 1 >= self.limit)
            self._active += 1
            self._entered += 1
            # The thread alone holds every process's slots already, or takes them now.
            shared = self.shared if self._owner != me else None
            others = self._others if self._owner == me else None
            self._others = None if others is not None else self._others
        try:
            if others is not None and self.shared is not None:
                others.enter_context(self.shared.alone())
                ticket.started = self._clock()  # not the wait for the other processes
            if shared is None:
                yield ticket
            else:
                with shared.slot() as elsewhere:
                    ticket.started = self._clock()  # not the wait for the other processes
                    ticket.elsewhere = elsewhere
                    yield ticket
        finally:
            with self._ready:
                self._active -= 1
                self._ready.notify_all()

    def crowded(self, ticket: Ticket) -> bool:
        """Whether another request to the target was in flight at any time during this one
        (in any of the run's processes); ask before the slot is let go."""
        with self._ready:
            here = ticket.crowded or self._entered != ticket.entered + 1
        return here or (ticket.elsewhere is not None and ticket.elsewhere())

    def elapsed(self, ticket: Ticket) -> float:
        """Seconds since the request took its slot."""
        return self._clock() - ticket.started

    def answered(self, ticket: Ticket, signal: Signal) -> None:
        """Tell the limiter how the request went."""
        if self.fixed is None:
            with self._ready:
                now = self._clock()
                self._sample(now - ticket.started, signal, ticket.saturated, now)
                self._ready.notify_all()

    def conflicted(self) -> None:
        """A refusal while others were in flight was taken back alone: too many at once."""
        if self.fixed is None:
            with self._ready:
                self._sample(0.0, Signal.CONFLICT, True, self._clock())

    def _sample(self, latency: float, signal: Signal, saturated: bool, at: float) -> None:
        before = self.limiter.limit
        if (after := self.limiter.sample(latency, signal, saturated, at)) != before:
            # What auto settles on, and why it moved: at most once a round of answers.
            lowest = self.limiter.lowest
            log.info("%s: %d requests at once (was %d; %s)", self.name, after, before,
                     signal.value if signal is not Signal.ANSWER else
                     f"{self.limiter.latest * 1000:.0f} ms a request, "
                     f"{(lowest or 0) * 1000:.0f} at best, "
                     f"{self.limiter.answering:.1f} a second"
                     + (f", no more than at {after}" if self.limiter.unpaid else ""))

    @contextlib.contextmanager
    def alone(self, lazily: bool = False) -> Iterator[None]:
        """Wait until nothing else is in flight to the target, and keep it so meanwhile;
        ``lazily``: the run's other processes only from this thread's first request on, so
        that they need not wait while it does what is none of the target's business (builds
        a large body: a Redmine form of a 200 KB message takes 0.6 ms)."""
        me = threading.get_ident()
        with self._ready:
            self._ready.wait_for(lambda: self._owner is None and self._active == 0)
            self._owner = me
        try:
            with contextlib.ExitStack() as others:
                if self.shared and lazily:
                    self._others = others  # the first request enters shared.alone() there
                elif self.shared:
                    others.enter_context(self.shared.alone())
                yield
        finally:
            with self._ready:
                self._owner, self._others = None, None
                self._ready.notify_all()


class Slots:
    """One target's slots across the processes of a run, as ``most`` lock files in
    ``directory`` (flock: the kernel lets go of a killed process's). A request holds one;
    ``alone()`` holds them all. A gate file keeps new requests out while alone() gathers
    them, so that it is not starved. Thread-safe; each process opens its own."""

    def __init__(self, directory: Path, name: str, most: int) -> None:
        self._files = [_open(directory / f"{name}.{n}") for n in range(most)]
        # Two descriptions of the gate: flock on one that a thread of this process already
        # holds would only convert that lock, never wait for it.
        self._gate, self._gate_alone = _open(directory / f"{name}.gate"), \
            _open(directory / f"{name}.gate")
        self._counts = _open(directory / f"{name}.counts")
        self._lock = threading.Lock()
        self._used: set[int] = set()  # by this process's threads (a flock is per description)

    @contextlib.contextmanager
    def slot(self) -> Iterator[Callable[[], bool]]:
        """Hold one slot; the caller's Pace keeps this process within ``most``, so one of
        the files is always free here. Yields whether another request (of any process) was
        in flight at any time since it was taken."""
        fcntl.flock(self._gate, fcntl.LOCK_SH)
        try:
            with self._lock:
                free = [n for n in range(len(self._files)) if n not in self._used]
                random.shuffle(free)  # the processes would all try the first one first
                index = next((n for n in free if _try(self._files[n])), None)
                taken = index is not None
                index = free[0] if index is None else index
                self._used.add(index)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        try:
            if not taken:  # all busy in other processes: wait for one, out of the gate
                fcntl.flock(self._files[index], fcntl.LOCK_EX)
            try:
                active, entered = self._count(1)
                try:
                    yield lambda: active > 0 or self._count(0)[1] != entered + 1
                finally:
                    self._count(-1)
            finally:
                fcntl.flock(self._files[index], fcntl.LOCK_UN)
        finally:
            with self._lock:
                self._used.discard(index)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Wait until no process has a request in flight, and keep it so meanwhile; the
        caller's Pace has none of this process's in flight."""
        fcntl.flock(self._gate_alone, fcntl.LOCK_EX)
        try:
            for file in self._files:
                fcntl.flock(file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                for file in self._files:
                    fcntl.flock(file, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate_alone, fcntl.LOCK_UN)

    def _count(self, change: int) -> tuple[int, int]:
        """Requests in flight and requests ever entered, in all processes, before adding
        ``change`` to the first (and counting an entry when it is 1). A process killed
        mid-request leaves one in flight for good: every later one then counts as crowded,
        which only costs a refusal its retry alone."""
        with self._lock:  # the flock alone does not keep this process's threads apart
            return self._counted(change)

    def _counted(self, change: int) -> tuple[int, int]:
        fcntl.flock(self._counts, fcntl.LOCK_EX)
        try:
            active, entered = _COUNTS.unpack(os.pread(self._counts, _COUNTS.size, 0)
                                             .ljust(_COUNTS.size, b"\0"))
            if change:
                os.pwrite(self._counts, _COUNTS.pack(active + change,
                                                     entered + (change > 0)), 0)
            return active, entered
        finally:
            fcntl.flock(self._counts, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (*self._files, self._gate, self._gate_alone, self._counts):
            os.close(fd)


_COUNTS = struct.Struct("=qq")  # in flight, entered


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
