"""The concurrency limiter: (latency, signal) samples in, the limit out; and the shared slots."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path
from signal import SIGKILL

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_ingest.limiter import HOLD, ROUND, Limiter, Pace, Signal, Slots


def settle(workers: int, most: int = 8, answers: int = 400, service: float = 0.04) -> list[int]:
    """The limits a limiter goes through against a tracker of ``workers`` that each take
    ``service`` seconds a request and queue the rest."""
    limiter, seen = Limiter(most), []
    for _ in range(answers):
        seen.append(limiter.sample(service * max(1.0, limiter.limit / workers)))
    return seen


@pytest.mark.parametrize(("workers", "most", "settled"), [
    (1, 8, {2}),  # RT on SQLite: one at a time, whoever sends
    (2, 8, {4}),  # Redmine under Passenger with 2 processes
    (4, 8, {7}),
    (16, 8, {8}),  # never above max_concurrency
    (4, 3, {3}),
])
def test_settles_a_few_above_the_trackers_workers(workers: int, most: int,
                                                  settled: set[int]) -> None:
    """Against N workers the limit climbs from 1 and settles at N + 1 to N + 3, within max."""
    seen = settle(workers, most)
    assert seen[0] == 1
    assert set(seen[-100:]) == settled


def test_climbs_one_round_at_a_time() -> None:
    """Each raise waits for a round of answers, so a short backlog stays at one."""
    limiter = Limiter(8)
    assert [limiter.sample(0.05) for _ in range(ROUND)] == [1] * (ROUND - 1) + [2]


def rounds(limiter: Limiter, latency: dict[int, float], count: int) -> list[int]:
    """The limit after each of ``count`` rounds against a tracker of one lock: latencies by
    limit, the answers a second 1 / latency[1] at every limit."""
    seen, at = [], 0.0
    for _ in range(count):
        for _ in range(max(ROUND, limiter.limit)):
            at += latency[1]
            limiter.sample(latency[limiter.limit], at=at)
        seen.append(limiter.limit)
    return seen


def test_a_raise_onto_a_queue_that_does_not_pay_is_given_back_for_a_while() -> None:
    """A slot taken while requests wait that answers no more a second goes back, HOLD rounds."""
    limiter = Limiter(8)
    # 1.5 times the lowest at 2 (0.67 waiting, so Vegas adds a third), 5 a second at all.
    seen = rounds(limiter, {1: 0.2, 2: 0.3, 3: 0.45}, 2 * HOLD + 6)
    assert seen[:HOLD + 4] == [2, 3, 2] + [2] * HOLD + [3], seen
    assert limiter.unpaid is False  # tried again: the log's "no more than at 2" was once


def test_a_third_slot_must_pay_when_the_second_brought_little() -> None:
    """At 2 the latency shows no queue, but no more answers came a second: 3 must pay."""
    limiter = Limiter(8)
    # 1.2 times the lowest at 2, twice at 3; 5 a second at every limit
    seen = rounds(limiter, {1: 0.2, 2: 0.24, 3: 0.48}, 4)
    assert seen == [2, 3, 2, 2], seen


def test_a_raise_onto_a_queue_stays_while_it_pays() -> None:
    """Answers coming a fifth faster at 3 than at 2 keep the slot; no faster, it goes back."""
    for faster, after in ((1.2, 3), (1.0, 2)):
        limiter, at = Limiter(3, limit=2, lowest=0.1), 0.0
        for limit, gap in ((2, 0.1), (3, 0.1 / faster)):
            for _ in range(ROUND):
                at += gap
                limiter.sample(0.15 * limit / 2, at=at)  # 1.5 times the lowest: a queue
            assert limiter.limit == (3 if limit == 2 else after)
        assert limiter.unpaid is (after == 2)  # for the log: "no more than at 2"


@pytest.mark.parametrize(("before", "after"), [(8, 4), (5, 2), (1, 1)])
def test_overload_halves_at_once(before: int, after: int) -> None:
    """5xx, 429 and timeouts halve the limit at once."""
    limiter = Limiter(8, limit=before)
    assert limiter.sample(0.05, Signal.OVERLOAD) == after


def steady_round(limiter: Limiter, conflicts: int) -> int:
    """A round at 4 in flight of a tracker with 2 workers (latency twice its lowest), with
    ``conflicts`` of its answers lock conflicts taken back alone; returns the limit."""
    limiter.lowest = 0.05
    for i in range(ROUND):
        if i < conflicts:
            limiter.sample(0.01, Signal.REFUSED)  # the 422: quick, and made nothing
            limiter.sample(0.0, Signal.CONFLICT)  # sent again alone, it went through
        limiter.sample(0.1)
    return limiter.limit


@pytest.mark.parametrize(("conflicts", "after"), [(0, 4), (1, 4), (2, 4), (3, 3), (8, 3)])
def test_only_a_round_of_many_lock_conflicts_takes_a_slot(conflicts: int, after: int) -> None:
    """Lock conflicts take a slot only when they are more than a quarter of a round."""
    assert steady_round(Limiter(8, limit=4), conflicts) == after


def test_refusals_are_no_latency() -> None:
    """A quick 4xx made nothing: its latency does not lower what the tracker's own time is."""
    limiter = Limiter(8)
    for _ in range(ROUND):
        limiter.sample(0.001, Signal.REFUSED)
        limiter.sample(0.05)
    assert limiter.lowest == pytest.approx(0.05)


@pytest.mark.parametrize(("status", "signal"), [
    (201, Signal.ANSWER), (200, Signal.ANSWER), (302, Signal.ANSWER), (422, Signal.REFUSED),
    (404, Signal.REFUSED), (429, Signal.OVERLOAD), (500, Signal.OVERLOAD),
    (503, Signal.OVERLOAD),
])
def test_what_a_status_tells_the_limiter(status: int, signal: Signal) -> None:
    """5xx and 429 say too much; another 4xx made nothing; the rest is an answer."""
    assert Signal.of(status) is signal


def test_a_tracker_quicker_than_our_own_work_gets_one_at_a_time() -> None:
    """Answers within QUICK (a sink, 1 ms): no second slot, a thread would cost more."""
    limiter = Limiter(8)
    assert {limiter.sample(0.001) for _ in range(20 * ROUND)} == {1}


def test_unused_slots_are_not_added_to() -> None:
    """Answers sent while the limit was not all in use never raise it."""
    limiter = Limiter(8)
    assert {limiter.sample(0.05, saturated=False) for _ in range(10 * ROUND)} == {1}


def test_rising_latency_takes_slots_away() -> None:
    """A tracker that slows down (the same limit, eight times the latency) gets fewer."""
    limiter = Limiter(8, limit=6)
    for _ in range(ROUND):
        limiter.sample(0.05)
    for _ in range(3 * ROUND):
        limiter.sample(0.4)
    assert limiter.limit < 6


@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.sampled_from(Signal), st.booleans()),
                max_size=300), st.integers(1, 64))
def test_limit_stays_within_bounds(samples: list[tuple[float, Signal, bool]],
                                   most: int) -> None:
    """Whatever it is fed, the limit stays from 1 to max_concurrency, and errors never raise it."""
    limiter = Limiter(most)
    for latency, signal, saturated in samples:
        before = limiter.limit
        after = limiter.sample(latency, signal, saturated)
        assert 1 <= after <= most
        assert signal is Signal.ANSWER or after <= before
        assert abs(after - before) <= max(1, before - before // 2)


def test_pace_holds_the_limit_across_threads() -> None:
    """A fixed Pace lets at most its number of requests in at once, whoever asks."""
    pace, lock, now, most = Pace(3, 3), threading.Lock(), [0], [0]

    def request() -> None:
        with pace.slot():
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(0.02)
            with lock:
                now[0] -= 1

    threads = [threading.Thread(target=request) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 3


def test_alone_waits_for_the_others_and_keeps_them_out() -> None:
    """alone() begins once nothing is in flight, and nobody else enters until it ends."""
    pace, events = Pace(None, 8), []
    pace.limiter.limit = 4
    entered = threading.Event()

    def other() -> None:
        with pace.slot() as ticket:
            entered.set()
            time.sleep(0.1)
            events.append("other done")
        assert pace.crowded(ticket) is False

    first = threading.Thread(target=other)
    first.start()
    entered.wait()
    with pace.alone():
        events.append("alone")
        def late_comer() -> None:
            with pace.slot():
                events.append("late")

        late = threading.Thread(target=late_comer)
        late.start()
        with pace.slot() as mine:
            time.sleep(0.05)
        assert not pace.crowded(mine)
        events.append("alone done")
    late.join()
    first.join()
    assert events == ["other done", "alone", "alone done", "late"]


def test_crowded_means_another_request_overlapped() -> None:
    """A request is crowded when another was in flight when it began, or began meanwhile."""
    pace = Pace(2, 2)
    with pace.slot() as first:
        with pace.slot() as second:
            pass
        assert pace.crowded(first) and pace.crowded(second)
    with pace.slot() as lonely:
        pass
    assert not pace.crowded(lonely)


_FORK = multiprocessing.get_context("fork")


def _shared(directory: Path, fixed: int | None = 3, most: int = 3) -> Pace:
    pace = Pace(fixed, most)
    pace.shared = Slots(directory, "t", most)
    return pace


def _requests(directory: Path, now: multiprocessing.sharedctypes.Synchronized[int],
              most: multiprocessing.sharedctypes.Synchronized[int]) -> None:
    pace = _shared(directory)

    def request() -> None:
        with pace.slot():
            with now.get_lock():
                now.value += 1
                most.value = max(most.value, now.value)
            time.sleep(0.02)
            with now.get_lock():
                now.value -= 1

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_slots_hold_the_limit_across_processes(tmp_path: Path) -> None:
    """Three processes, each let up to 3 in by its Pace: 3 in flight at most in all."""
    now, most = _FORK.Value("i", 0), _FORK.Value("i", 0)
    processes = [_FORK.Process(target=_requests, args=(tmp_path, now, most)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert most.value == 3


def _hold(directory: Path, held: threading.Event, seconds: float) -> None:
    with _shared(directory).slot():
        held.set()
        time.sleep(seconds)


def test_alone_waits_for_other_processes_and_keeps_them_out(tmp_path: Path) -> None:
    """alone() begins when another process's request ends; the others wait for its end."""
    held = _FORK.Event()
    other = _FORK.Process(target=_hold, args=(tmp_path, held, 0.3))
    other.start()
    assert held.wait(10)
    pace, began = _shared(tmp_path), time.monotonic()
    with pace.alone():
        assert not other.is_alive() or time.monotonic() - began >= 0.25
        late_held = _FORK.Event()
        late = _FORK.Process(target=_hold, args=(tmp_path, late_held, 0))
        late.start()
        with pace.slot():  # the thread alone still gets its own request in
            pass
        assert not late_held.wait(0.3)
    assert late_held.wait(10)
    for process in (other, late):
        process.join(10)
    assert time.monotonic() - began >= 0.55


def test_lazily_alone_keeps_other_processes_out_from_its_first_request(tmp_path: Path) -> None:
    """alone(lazily=True) lets another process's requests in until its own first one."""
    pace = _shared(tmp_path)
    with pace.alone(lazily=True):
        before = _FORK.Event()
        other = _FORK.Process(target=_hold, args=(tmp_path, before, 0))
        other.start()
        assert before.wait(10)  # nothing of this thread's in flight yet
        other.join(10)
        with pace.slot():
            during = _FORK.Event()
            late = _FORK.Process(target=_hold, args=(tmp_path, during, 0))
            late.start()
            assert not during.wait(0.3)
        with pace.slot():  # a second request of the thread alone still gets in
            pass
        assert not during.wait(0.2)  # and the others stay out until alone() ends
    assert during.wait(10)
    late.join(10)


def test_a_killed_process_lets_go_of_its_slots(tmp_path: Path) -> None:
    """SIGKILL of a process holding a slot: alone() still gets every slot."""
    held = _FORK.Event()
    other = _FORK.Process(target=_hold, args=(tmp_path, held, 60))
    other.start()
    assert held.wait(10) and other.pid is not None
    os.kill(other.pid, SIGKILL)
    other.join(10)
    done = threading.Event()

    def alone() -> None:
        with _shared(tmp_path).alone():
            done.set()

    threading.Thread(target=alone, daemon=True).start()
    assert done.wait(5)


def test_crowded_sees_the_other_processes_requests(tmp_path: Path) -> None:
    """A request beside another process's is crowded; one alone afterwards is not."""
    held = _FORK.Event()
    other = _FORK.Process(target=_hold, args=(tmp_path, held, 0.3))
    other.start()
    assert held.wait(10)
    pace = _shared(tmp_path)
    with pace.slot() as beside:
        assert pace.crowded(beside)
    other.join(10)
    with pace.slot() as lonely:
        assert not pace.crowded(lonely)


def test_a_change_of_limit_is_logged_with_the_origin(caplog: pytest.LogCaptureFixture) -> None:
    """Each move of auto's limit is one log line naming the target and the latency it read."""
    now = [0.0]
    pace = Pace(None, 8, clock=lambda: now[0], name="https://tracker.example")
    caplog.set_level(logging.INFO, logger="imap_ingest.limiter")
    for _ in range(ROUND):
        with pace.slot() as ticket:
            now[0] += 0.04
        pace.answered(ticket, Signal.ANSWER)
    assert pace.limit == 2
    assert [r.getMessage() for r in caplog.records] == [
        "https://tracker.example: 2 requests at once (was 1; 40 ms a request, 40 at best, "
        "25.0 a second)"]
