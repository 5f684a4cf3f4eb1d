"""The gateway's event loop selector: wait for an answer by polling the rings, not by sleeping.

An order's answer comes back from the partition some tens of µs after the gateway wrote the
command to the ring. A gateway asleep in ``epoll_wait`` by then costs the ack path twice: the
partition must ring its doorbell (a ``write()`` on the matching thread) and the gateway must be
woken, which on an idle virtual CPU takes about 40 µs (docs/performance.md). ``BusyPollSelector``
is epoll that, once the gateway has published commands (``expect()``), polls the sockets
(``epoll_wait`` with no timeout) and the event rings instead of sleeping, for at most ``window_ns``
or until a ring has records (the answers), and tells the partitions it polls
(``set_waiting(False)``: no doorbell). The idea of Linux's SO_BUSY_POLL, for our rings.

It polls only while an answer is due: a gateway with nothing in flight sleeps at once, and the
poll ends when the answers are in the rings (some tens of µs), at the latest with the window. It
does not give the CPU away between polls: an earlier version called ``sched_yield`` at each idle
poll, and on a core shared with the clients and the servers that made orders later (under the
kernel's EEVDF scheduler a yield pushes the yielder's deadline back: p50 at 10,000/s 374-410 µs
with a 50 µs window against 284-291 µs without polling), where polling without the yield is
neutral there (docs/performance.md). A window of 0 is plain epoll: it sleeps at once and the
partitions ring for it (tests, laptops).

Owned by the event loop's thread. Time comes from ``clock`` (integer ns).
"""
from __future__ import annotations

import selectors
import time
from typing import Callable, Final, Sequence

from appliance.ring import RingConsumer

EVENT_READ: Final = selectors.EVENT_READ


class BusyPollSelector(selectors.EpollSelector):
    def __init__(self, window_ns: int, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        super().__init__()
        self.window_ns = window_ns
        self._clock = clock
        self._rings: list[tuple[RingConsumer, int]] = []
        self._until = 0            # poll instead of sleeping until then (an answer is due)
        self._waiting = True       # what the rings were last told
        self.polls = 0             # idle polls made (stats)

    def watch(self, rings: Sequence[RingConsumer], bells: Sequence[int]) -> None:
        """The event rings to poll, each with its doorbell FIFO (registered with the loop already)."""
        self._rings = list(zip(rings, bells))
        self._tell(True)

    def expect(self) -> None:
        """Commands were published: their answers are due within the window."""
        if self.window_ns:
            self._until = self._clock() + self.window_ns

    def _tell(self, waiting: bool) -> None:
        for cons, _ in self._rings:
            cons.set_waiting(waiting)
        self._waiting = waiting

    def _ready_rings(self) -> list[tuple[selectors.SelectorKey, int]]:
        """The bells of rings with records waiting, as if their FIFOs had been readable."""
        out = []
        for cons, bell in self._rings:
            if cons.pending() > 0:
                try:
                    out.append((self.get_key(bell), EVENT_READ))
                except KeyError:    # the loop no longer watches it (shutting down)
                    pass
        return out

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        base = super().select
        clock = self._clock
        deadline = -1                      # when the caller's timeout ends (-1: none)
        if self._until and self._rings:
            now = clock()
            until = self._until
            if timeout is not None and timeout >= 0:
                deadline = now + int(timeout * 1e9)
                until = min(until, deadline)
            if self._waiting:
                self._tell(False)
            while True:
                ready = self._ready_rings()
                if ready:              # the answers: sleep at the next select unless more are due
                    self._until = 0
                    return ready
                ready = base(0)
                if ready:
                    return ready
                if timeout == 0 or clock() >= until:
                    break
                self.polls += 1
            if timeout == 0:
                return []
            if clock() >= self._until:
                self._until = 0        # no answer within the window: the doorbell brings it
        if not self._waiting:
            # Going to sleep: the partitions ring for us from here on. What they published before
            # they saw the flag is in the rings now, and is taken without sleeping.
            self._tell(True)
            ready = self._ready_rings()
            if ready:
                self._until = 0
                return ready
        if deadline >= 0:
            timeout = max(0, deadline - clock()) / 1e9
        return base(timeout)
