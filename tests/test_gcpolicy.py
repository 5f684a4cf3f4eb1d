"""The gateway's garbage-collection policy (appliance.gcpolicy) with CPython's real collector."""
from __future__ import annotations

import gc
import weakref
from typing import Any, Iterator

import pytest

from appliance.gcpolicy import MAX_INTERVAL_NS, NEVER, THAW_INTERVAL_NS, QuietCollector


class Node:
    def __init__(self) -> None:
        self.other: Any = None


@pytest.fixture
def collector() -> Iterator[QuietCollector]:
    before = gc.get_threshold()
    q = QuietCollector(0)
    q.start()
    yield q
    gc.unfreeze()
    gc.set_threshold(*before)


def _old_cycle() -> weakref.ref[Node]:
    """A cycle that lived long enough to reach generation 2, then became garbage."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect(1)          # survives generations 0 and 1: now in generation 2
    ref = weakref.ref(a)
    del a, b
    return ref


def test_the_allocator_no_longer_runs_full_collections(collector: QuietCollector) -> None:
    assert gc.get_threshold()[2] == NEVER
    ref = _old_cycle()
    for _ in range(20):    # many young collections
        junk = [Node() for _ in range(2000)]
        del junk
        gc.collect(1)
    assert ref() is not None, "a young collection must not reach generation 2"


def test_a_busy_tick_leaves_it_and_a_quiet_tick_collects_it(collector: QuietCollector) -> None:
    ref = _old_cycle()
    assert not collector.tick(1_000_000_000, work=5)
    assert ref() is not None
    assert collector.tick(2_000_000_000, work=0)
    assert ref() is None
    assert collector.full_collections == 1 and collector.collected >= 2
    # quiet again, nothing reached generation 2 since: no walk of the heap for nothing
    assert not collector.tick(3_000_000_000, work=0)


def test_constant_load_still_collects_once_per_interval(collector: QuietCollector) -> None:
    ref = _old_cycle()
    t = 0
    while t < MAX_INTERVAL_NS - 200_000_000:
        t += 200_000_000
        assert not collector.tick(t, work=1)
    assert ref() is not None
    assert collector.tick(MAX_INTERVAL_NS, work=1)
    assert ref() is None
    figures = collector.figures()
    assert figures["gc_full_collections"] == 1 and figures["gc_full_max_us"] >= figures["gc_full_last_us"] >= 0


def test_start_up_objects_are_frozen(collector: QuietCollector) -> None:
    assert gc.get_freeze_count() > 0


def test_a_collection_freezes_what_survived_so_the_next_walks_only_what_is_new(collector: QuietCollector) -> None:
    kept = [Node() for _ in range(20_000)]     # the day's open orders, say
    gc.collect(1)                              # into generation 2
    assert collector.tick(1_000_000_000, work=0)
    in_gen2 = {id(o) for o in gc.get_objects(generation=2)}
    assert not any(id(o) in in_gen2 for o in kept), "what survived a full collection is frozen"
    assert collector.figures()["gc_frozen"] >= len(kept)
    ref = _old_cycle()                         # new garbage after the freeze is still collected
    assert collector.tick(2_000_000_000, work=0)
    assert ref() is None
    del kept


def test_a_thaw_walks_the_frozen_again_once_per_interval(collector: QuietCollector) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a                    # alive at the next full collection: frozen with it
    ref = weakref.ref(a)
    gc.collect(1)
    assert collector.tick(1_000_000_000, work=0)
    del a, b                                   # now garbage, but frozen
    _old_cycle()
    assert collector.tick(2_000_000_000, work=0)
    assert ref() is not None and collector.thaws == 0
    _old_cycle()                               # something for the next full collection to do
    assert collector.tick(THAW_INTERVAL_NS, work=0)
    assert ref() is None and collector.thaws == 1
    assert collector.figures()["gc_thaws"] == 1
