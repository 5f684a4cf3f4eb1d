"""The appliance's wall clock, in epoch nanoseconds: ``time.time_ns``, shifted by a fixed offset when
MATCHWIRE_CLOCK_OFFSET_NS is set.

Only I/O shells read it (the partition's duty cycle once per cycle, start-up and shutdown, the
gateways); everything downstream takes the sequencer's ``ts_ns``. The offset lets a test or a
rehearsal run a trading day at a chosen time of day, on any host and at any hour: every process of
one ``matchwire run`` inherits the variable, so they all read the same clock, which still advances
at the real rate.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Final

OFFSET_ENV: Final = "MATCHWIRE_CLOCK_OFFSET_NS"

Clock = Callable[[], int]


def clock_offset_ns() -> int:
    """The offset MATCHWIRE_CLOCK_OFFSET_NS names (0 when unset)."""
    text = os.environ.get(OFFSET_ENV, "").strip()
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{OFFSET_ENV}={text!r}: expected an integer number of nanoseconds") from None


def wall_clock(offset_ns: int | None = None) -> Clock:
    """The clock: time.time_ns itself without an offset (``offset_ns``, else the environment's)."""
    off = clock_offset_ns() if offset_ns is None else offset_ns
    if not off:
        return time.time_ns

    def now_ns() -> int:
        return time.time_ns() + off
    return now_ns


def offset_to(epoch_ns: int) -> int:
    """The offset that makes the clock read ``epoch_ns`` now."""
    return epoch_ns - time.time_ns()
