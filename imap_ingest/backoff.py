"""How long to wait before trying again: a pure policy, shared by targets and reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: first, doubling, capped."""

    first: float
    cap: float

    def delay(self, failures: int) -> float:
        full: float = min(self.cap, self.first * 2.0 ** max(0, failures - 1))
        return full / 2 + random.uniform(0, full / 2)  # "equal jitter": never under half

    def bounded(self, seconds: float) -> float:
        """A wait asked for from outside (a Retry-After), kept between 0 and the cap: a huge
        one would silence a target for good, or overflow the clock."""
        return min(self.cap, seconds) if seconds > 0 else 0.0  # also false for NaN
