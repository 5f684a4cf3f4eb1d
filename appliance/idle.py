"""Idle strategies: what a polling loop does when a duty cycle found no work (Aeron's IdleStrategy).

Owned by the thread whose loop calls them. The loop calls ``idle(work_count)`` once per duty cycle
with the amount of work that cycle did; work > 0 resets the strategy, 0 lets it back off::

    while running:
        n = do_work()          # e.g. records drained from a ring
        idle.idle(n)

    BusySpin      never gives the CPU up: lowest latency, one core at 100 % (the matcher's own core)
    Yield         os.sched_yield() when idle: another runnable thread may take the core
    BackoffSleep  spin max_spins cycles, then yield max_yields times, then sleep min_park_ns
                  doubling up to max_park_ns, until a cycle does work again

Sleeping is the one place time is given as a float (``time.sleep`` takes seconds); the strategy
keeps integer nanoseconds and converts at that call. Tests inject ``sleep_ns`` and ``yield_``.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Final, Protocol

BUSY_SPIN: Final = "busy_spin"
YIELD: Final = "yield"
BACKOFF: Final = "backoff"
IDLE_STRATEGIES: Final = (BUSY_SPIN, YIELD, BACKOFF)


class IdleStrategy(Protocol):
    @property
    def name(self) -> str:
        """The config name of the strategy."""

    def idle(self, work_count: int) -> None:
        """Called once per duty cycle with the work that cycle did."""

    def reset(self) -> None:
        """Forget any back-off (as if work had been done)."""


def _sleep_ns(ns: int) -> None:
    time.sleep(ns / 1_000_000_000)


class BusySpin:
    """Never yields the CPU. Owned by the polling thread."""

    __slots__ = ()
    name: Final = BUSY_SPIN

    def idle(self, work_count: int) -> None:
        pass

    def reset(self) -> None:
        pass


class Yield:
    """``os.sched_yield()`` on an idle cycle. Owned by the polling thread."""

    __slots__ = ("_yield",)
    name: Final = YIELD

    def __init__(self, yield_: Callable[[], None] = os.sched_yield) -> None:
        self._yield = yield_

    def idle(self, work_count: int) -> None:
        if work_count <= 0:
            self._yield()

    def reset(self) -> None:
        pass


class BackoffSleep:
    """Spin, then yield, then sleep with exponential back-off up to a cap. Owned by the polling thread.

    After ``max_spins`` idle cycles of spinning and ``max_yields`` of yielding, each idle cycle
    sleeps: min_park_ns, then twice that, ... capped at max_park_ns. Any cycle with work starts over.
    """

    __slots__ = ("max_spins", "max_yields", "min_park_ns", "max_park_ns", "idles", "park_ns",
                 "_yield_after", "_yield", "_sleep_ns")
    name: Final = BACKOFF

    def __init__(
        self,
        max_spins: int = 10_000,
        max_yields: int = 100,
        min_park_ns: int = 1_000,
        max_park_ns: int = 1_000_000,
        *,
        sleep_ns: Callable[[int], None] = _sleep_ns,
        yield_: Callable[[], None] = os.sched_yield,
    ) -> None:
        if max_spins < 0 or max_yields < 0:
            raise ValueError("backoff: max_spins and max_yields must be >= 0")
        if not 1 <= min_park_ns <= max_park_ns:
            raise ValueError(f"backoff: need 1 <= min_park_ns ({min_park_ns}) <= max_park_ns ({max_park_ns})")
        self.max_spins = max_spins
        self.max_yields = max_yields
        self.min_park_ns = min_park_ns
        self.max_park_ns = max_park_ns
        self._yield_after = max_spins + max_yields
        self._sleep_ns = sleep_ns
        self._yield = yield_
        self.idles = 0                 # consecutive idle cycles
        self.park_ns = min_park_ns     # the next sleep

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            if self.idles:
                self.idles = 0
                self.park_ns = self.min_park_ns
            return
        n = self.idles + 1
        self.idles = n
        if n <= self.max_spins:
            return
        if n <= self._yield_after:
            self._yield()
            return
        park = self.park_ns
        self._sleep_ns(park)
        park <<= 1
        self.park_ns = park if park < self.max_park_ns else self.max_park_ns

    def reset(self) -> None:
        self.idles = 0
        self.park_ns = self.min_park_ns


def make_idle(name: str, sleep_ns: Callable[[int], None] | None = None) -> IdleStrategy:
    """The strategy a config names (``busy_spin``, ``yield``, ``backoff``), with its defaults.
    ``sleep_ns``: how back-off parks (default ``time.sleep``; the partition waits on its doorbells)."""
    if name == BUSY_SPIN:
        return BusySpin()
    if name == YIELD:
        return Yield()
    if name == BACKOFF:
        return BackoffSleep(sleep_ns=sleep_ns or _sleep_ns)
    raise ValueError(f"unknown idle strategy {name!r} (expected one of {', '.join(IDLE_STRATEGIES)})")
