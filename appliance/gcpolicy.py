"""When a long-running process on the order path runs CPython's full garbage collection.

CPython's cyclic collector runs a full (oldest-generation) collection on its own once the objects
that survived the young collections have grown by a quarter. A full collection walks every tracked
object: in a gateway holding the day's open orders that is tens of ms with nothing answered, and
it falls in the middle of the traffic that grew the heap (docs/performance.md, "What an order
waited for").

``QuietCollector`` keeps CPython's young collections (generations 0 and 1: a cycle that dies young
is still collected within a few thousand allocations) and takes the full one away from the
allocator: ``tick(now_ns, work)`` runs it when a whole tick passed without work, or when
``max_interval_ns`` passed since the last one even under constant load (what a day without a quiet
moment pays, once per interval). Start-up's objects (modules, configuration) are frozen once
(``gc.freeze``), and what survives each full collection is frozen after it: the next one walks only
what was allocated and kept since, not the day's open orders again (a gateway holding 250,000 of
them spent 328 ms of CPU walking them at the first quiet tick after a burst, and would have again
after every burst). A cycle that was alive at a full collection and becomes garbage later is not
reclaimed while frozen, so once per ``thaw_interval_ns`` (at the first full collection due after
it) everything is unfrozen and walked: the day's garbage cycles are bounded by what that interval
makes, and the whole heap is walked once per interval instead of after every burst.

Owned by the thread that calls ``tick``. Time is an argument (integer ns).
"""
from __future__ import annotations

import gc
import time
from typing import Final

YOUNG_THRESHOLD: Final = (700, 10)          # CPython's defaults for generations 0 and 1
NEVER: Final = (1 << 31) - 1                # generation 2's threshold: not from the allocator
MAX_INTERVAL_NS: Final = 60_000_000_000     # a full collection at least this often
THAW_INTERVAL_NS: Final = 600_000_000_000   # the frozen survivors walked again at most this often


class QuietCollector:
    def __init__(self, now_ns: int, max_interval_ns: int = MAX_INTERVAL_NS,
                 thaw_interval_ns: int = THAW_INTERVAL_NS) -> None:
        self.max_interval_ns = max_interval_ns
        self.thaw_interval_ns = thaw_interval_ns
        self.last_full_ns = now_ns
        self.last_thaw_ns = now_ns
        self.thaws = 0
        self.full_collections = 0
        self.last_full_us = 0          # how long the last full collection took
        self.max_full_us = 0
        self.collected = 0             # unreachable objects found by full collections

    def start(self) -> None:
        """After start-up: collect, freeze what is there, take generation 2 off the allocator."""
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD[0], YOUNG_THRESHOLD[1], NEVER)

    def tick(self, now_ns: int, work: int) -> bool:
        """Once per timer tick with the work done since the last one; True if it collected."""
        if work:
            if now_ns - self.last_full_ns < self.max_interval_ns:
                return False
        elif not gc.get_count()[2]:
            return False    # quiet, and nothing reached generation 2 since the last collection
        t0 = time.perf_counter_ns()
        if now_ns - self.last_thaw_ns >= self.thaw_interval_ns:
            gc.unfreeze()   # this one walks everything: garbage cycles among the frozen go too
            self.last_thaw_ns = now_ns
            self.thaws += 1
        self.collected += gc.collect()
        gc.freeze()         # the survivors: not walked again until the next thaw
        us = (time.perf_counter_ns() - t0) // 1000
        self.last_full_us = us
        if us > self.max_full_us:
            self.max_full_us = us
        self.full_collections += 1
        self.last_full_ns = now_ns
        return True

    def figures(self) -> dict[str, int]:
        return {"gc_full_collections": self.full_collections, "gc_full_last_us": self.last_full_us,
                "gc_full_max_us": self.max_full_us, "gc_collected": self.collected,
                "gc_frozen": gc.get_freeze_count(), "gc_thaws": self.thaws}
