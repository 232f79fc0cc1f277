"""Timestamps for people: a stored stamp out of the clock's range reads "-", never raises."""

from __future__ import annotations

import time


def local(stamp: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """``stamp`` in local time as ``fmt``; "-" when there is none or the clock cannot say."""
    if stamp is None:
        return "-"
    try:
        return time.strftime(fmt, time.localtime(stamp))
    except (OverflowError, OSError, ValueError):  # ValueError: NaN
        return "-"
