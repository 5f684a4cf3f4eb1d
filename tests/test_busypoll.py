"""The gateway's busy-poll selector (appliance.gateway.busypoll) on a real ring in /dev/shm, its real
doorbell FIFO and real epoll; the clock is injected so that the poll window is exact."""
from __future__ import annotations

import os
import selectors
import time
import uuid
from typing import Iterator

import pytest

from appliance.gateway.busypoll import BusyPollSelector
from appliance.ring import Ring, RingConsumer, make_bell, remove_bell, ring_bell


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


@pytest.fixture
def ring() -> Iterator[Ring]:
    name = f"mwtest.{os.getpid()}.{uuid.uuid4().hex[:10]}"
    r = Ring.create(name, slots=16, slot_size=64)
    yield r
    r.close()
    r.unlink()
    remove_bell(name)


def _selector(ring: Ring, window_ns: int, clock: Clock) -> tuple[BusyPollSelector, int, RingConsumer]:
    bell = make_bell(ring.name)
    sel = BusyPollSelector(window_ns, share_cpu=True, clock=clock)
    sel.register(bell, selectors.EVENT_READ, "bell")
    cons = ring.consumer()
    cons.set_waiting(True)            # as the gateway attaches: asleep until told otherwise
    sel.watch([cons], [bell])
    return sel, bell, cons


def test_window_zero_is_plain_epoll_and_the_partition_rings(ring: Ring) -> None:
    clock = Clock()
    sel, bell, cons = _selector(ring, 0, clock)
    prod = ring.producer()
    try:
        assert prod.consumer_waiting()
        assert prod.try_publish(b"x")
        # published without a ring: plain epoll does not see it (the partition must ring)
        assert sel.select(0.01) == []
        ring_bell(bell)
        ready = sel.select(1.0)
        assert [key.data for key, _ in ready] == ["bell"]
        assert sel.polls == 0
    finally:
        sel.close()
        os.close(bell)


def test_nothing_in_flight_sleeps_at_once(ring: Ring) -> None:
    clock = Clock()
    sel, bell, cons = _selector(ring, 200_000, clock)
    try:
        t0 = time.monotonic()
        assert sel.select(0.03) == []
        assert time.monotonic() - t0 >= 0.02
        assert sel.polls == 0 and ring.producer().consumer_waiting()
    finally:
        sel.close()
        os.close(bell)


def test_an_answer_due_is_found_without_a_doorbell(ring: Ring) -> None:
    clock = Clock()
    sel, bell, cons = _selector(ring, 200_000, clock)
    prod = ring.producer()
    try:
        sel.expect()                   # the gateway published a command
        clock.ns += 50_000
        assert sel.select(0.0) == []   # polling, and the partition is told so: no doorbell needed
        assert not prod.consumer_waiting()
        assert prod.try_publish(b"ack")
        ready = sel.select(1.0)
        assert [k.data for k, _ in ready] == ["bell"]     # the ring's records, as the bell's readiness
        assert cons.poll() == [b"ack"]
        # answered: the next select sleeps, and asks for the doorbell again
        t0 = time.monotonic()
        assert sel.select(0.03) == []
        assert time.monotonic() - t0 >= 0.02
        assert prod.consumer_waiting()
    finally:
        sel.close()
        os.close(bell)


def test_no_answer_within_the_window_sleeps_and_loses_nothing(ring: Ring) -> None:
    clock = Clock()
    sel, bell, cons = _selector(ring, 200_000, clock)
    prod = ring.producer()
    try:
        sel.expect()
        assert sel.select(0.0) == []
        assert not prod.consumer_waiting()
        # published while the partition saw us polling (no bell), just as the window ends
        assert prod.try_publish(b"late")
        clock.ns += 300_000
        ready = sel.select(5.0)        # taken without sleeping
        assert [k.data for k, _ in ready] == ["bell"]
        assert cons.poll() == [b"late"]
        assert sel.select(0.01) == []  # nothing due: it sleeps, and asks for the doorbell again
        assert prod.consumer_waiting()
        # ...and a window that ran out with nothing published: the doorbell brings the answer
        sel.expect()
        assert sel.select(0.0) == [] and not prod.consumer_waiting()
        clock.ns += 300_000
        assert sel.select(0.01) == []
        assert prod.consumer_waiting()
        ring_bell(bell)
        assert [k.data for k, _ in sel.select(1.0)] == ["bell"]
    finally:
        sel.close()
        os.close(bell)


def test_the_poll_loop_ends_with_the_window(ring: Ring) -> None:
    """With a real clock: an answer due but not coming, the selector polls (yielding the CPU) until
    the window ends, then sleeps out the rest of its timeout; the polls are counted."""
    sel, bell, cons = _selector(ring, 2_000_000, Clock())
    sel._clock = time.perf_counter_ns
    try:
        sel.expect()
        t0 = time.perf_counter_ns()
        assert sel.select(0.02) == []
        assert time.perf_counter_ns() - t0 >= 15_000_000
        assert sel.polls > 0
        assert ring.producer().consumer_waiting()
    finally:
        sel.close()
        os.close(bell)


def test_a_gateway_config_carries_its_window() -> None:
    from appliance.config import ConfigError, DEFAULT, dumps, loads
    c = loads(DEFAULT)
    assert c.gateways[0].busy_poll_us == 0 and c.appliance.cpu_dma_latency_us == -1
    text = DEFAULT.replace('fix_port = 15002\n', 'fix_port = 15002\nbusy_poll_us = 250\n', 1)
    text = text.replace('name = "mw"\n', 'name = "mw"\ncpu_dma_latency_us = 0\n', 1)
    c2 = loads(text)
    assert c2.gateways[0].busy_poll_us == 250 and c2.appliance.cpu_dma_latency_us == 0
    assert loads(dumps(c2)) == c2
    with pytest.raises(ConfigError, match="busy_poll_us"):
        loads(DEFAULT.replace('fix_port = 15002\n', 'fix_port = 15002\nbusy_poll_us = -1\n', 1))
    with pytest.raises(ConfigError, match="cpu_dma_latency_us"):
        loads(DEFAULT.replace('name = "mw"\n', 'name = "mw"\ncpu_dma_latency_us = -2\n', 1))

