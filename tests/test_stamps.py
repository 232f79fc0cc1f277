"""Timestamps for people never raise, whatever a ledger holds."""

from __future__ import annotations

import time

import pytest

from imap_ingest.stamps import local


@pytest.mark.parametrize("stamp", [None, 1e300, float("inf"), float("nan"), -1e300],
                         ids=["none", "huge", "inf", "nan", "negative-huge"])
def test_out_of_range_reads_dash(stamp: float | None) -> None:
    """No stamp, or one the clock cannot convert, reads "-"."""
    assert local(stamp) == "-"


def test_in_range_is_local_time() -> None:
    """An ordinary stamp is formatted in local time."""
    assert local(0.0, "%Y") == time.strftime("%Y", time.localtime(0.0))
