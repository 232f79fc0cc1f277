"""Submissions in flight: at most a target's limit at once, in dependency order.

To a target that takes more than one at a time, a pass hands each submission to a thread
and goes on fetching and deciding the next message while the tracker works; the answers come
back to the pass, which records them. A submission
waits while one it is tied to is still in flight (a message it replies to, mail about the
same ticket, another copy of itself), so the tracker sees those in the folder's order. A
target's limit is read afresh for each submission: with ``concurrency: auto`` it moves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

from .trackers import Outcome

T = TypeVar("T")


class InFlight(Generic[T]):
    """Runs ``send`` calls, on worker threads for targets with a concurrency above 1; ``T``
    is what the caller needs to record each answer. Every method is called from the pass's
    own thread."""

    def __init__(self, limits: Mapping[str, Callable[[], int]], workers: int) -> None:
        self._limits = limits
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit")
        self._running: dict[Future[Outcome], tuple[str, frozenset[str], T]] = {}
        self._error: BaseException | None = None  # a send's, raised by check()

    def make_room(self, target: str, ties: frozenset[str]) -> list[tuple[T, Outcome]]:
        """Wait until ``target`` has a free slot and nothing in flight shares one of
        ``ties``; returns the answers that came back meanwhile, in the order sent."""
        answers = self.finished()
        while blockers := self._blocking(target, ties):
            done, _ = wait(blockers, return_when=FIRST_COMPLETED)
            answers += self._collect(done)
        return answers

    def start(self, target: str, ties: frozenset[str], tag: T,
              send: Callable[[], Outcome]) -> None:
        """Send in the background; call make_room first."""
        if self._limits[target]() > 1:
            future = self._pool.submit(send)
        else:
            # One at a time gains nothing from a thread: the pass's own work and the send
            # would only take turns holding the GIL, slower than doing both in turn here.
            future = Future()
            future.set_result(send())
        self._running[future] = (target, ties, tag)

    def finished(self) -> list[tuple[T, Outcome]]:
        """The answers that have come back, without waiting."""
        return self._collect(future for future in self._running if future.done())

    def drain(self, target: str | None = None) -> list[tuple[T, Outcome]]:
        """Every answer still to come (from ``target``, or all), waiting for each."""
        return self._collect(future for future, (to, _, _) in self._running.items()
                             if target in (None, to))

    def check(self) -> None:
        """Raise the first error a send raised, once the answers beside it were taken: a
        message the tracker took must be recorded even when another send failed."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _blocking(self, target: str, ties: frozenset[str]) -> list[Future[Outcome]]:
        same_target = [future for future, (to, _, _) in self._running.items() if to == target]
        if len(same_target) >= self._limits[target]():
            return same_target
        return [future for future, (_, tied, _) in self._running.items() if tied & ties]

    def _collect(self, futures: Iterable[Future[Outcome]]) -> list[tuple[T, Outcome]]:
        # In the order sent (the dict's), whatever order they finished in.
        done = set(futures)
        answers: list[tuple[T, Outcome]] = []
        for future, (_, _, tag) in list(self._running.items()):
            if future in done:
                del self._running[future]
                if (error := future.exception()) is None:
                    answers.append((tag, future.result()))
                elif self._error is None:
                    self._error = error
        return answers
