"""The gateway's busy-poll selector (appliance.gateway.busypoll) on a real ring in /dev/shm, its real
doorbell FIFO and real epoll; the clock is injected so that the poll window is exact."""
from __future__ import annotations

import dataclasses
import os
import selectors
import time
import uuid
from typing import Callable, Iterator

import pytest

from appliance.gateway.busypoll import BusyPollSelector
from appliance.ring import Ring, RingConsumer, RingProducer, make_bell, remove_bell, ring_bell

WINDOW_NS = 200_000


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


@dataclasses.dataclass
class Gateway:
    """What the gateway holds: the selector, the event ring's consumer and doorbell; and the
    partition's end of that ring."""
    sel: BusyPollSelector
    bell: int
    cons: RingConsumer
    prod: RingProducer
    clock: Clock


@pytest.fixture
def make() -> Iterator[Callable[[int], Gateway]]:
    made: list[tuple[Ring, Gateway]] = []

    def build(window_ns: int) -> Gateway:
        ring = Ring.create(f"mwtest.{os.getpid()}.{uuid.uuid4().hex[:10]}", slots=16, slot_size=64)
        bell = make_bell(ring.name)
        clock = Clock()
        sel = BusyPollSelector(window_ns, clock=clock)
        sel.register(bell, selectors.EVENT_READ, "bell")
        cons = ring.consumer()
        cons.set_waiting(True)            # as the gateway attaches: asleep until told otherwise
        sel.watch([cons], [bell])
        g = Gateway(sel, bell, cons, ring.producer(), clock)
        made.append((ring, g))
        return g

    yield build
    for ring, g in made:
        g.sel.close()
        os.close(g.bell)
        ring.close()
        ring.unlink()
        remove_bell(ring.name)


def _sleeps(g: Gateway, seconds: float) -> None:
    t0 = time.monotonic()
    assert g.sel.select(seconds) == []
    assert time.monotonic() - t0 >= seconds * 0.66
    assert g.prod.consumer_waiting()     # asleep: the partition rings for it


def _bell_ready(g: Gateway, timeout: float) -> None:
    assert [key.data for key, _ in g.sel.select(timeout)] == ["bell"]


def test_window_zero_is_plain_epoll_and_the_partition_rings(make: Callable[[int], Gateway]) -> None:
    g = make(0)
    g.sel.expect()                       # a window of 0 never polls, answer due or not
    assert g.prod.try_publish(b"x")
    _sleeps(g, 0.01)                     # published without a ring: plain epoll does not see it
    ring_bell(g.bell)
    _bell_ready(g, 1.0)
    assert g.sel.polls == 0


def test_nothing_in_flight_sleeps_at_once(make: Callable[[int], Gateway]) -> None:
    g = make(WINDOW_NS)
    _sleeps(g, 0.03)
    assert g.sel.polls == 0


def test_an_answer_due_is_found_without_a_doorbell(make: Callable[[int], Gateway]) -> None:
    g = make(WINDOW_NS)
    g.sel.expect()                       # the gateway published a command
    g.clock.ns += 50_000
    assert g.sel.select(0.0) == []       # polling, and the partition is told so: no doorbell needed
    assert not g.prod.consumer_waiting()
    assert g.prod.try_publish(b"ack")
    _bell_ready(g, 1.0)                  # the ring's records, as the bell's readiness
    assert g.cons.poll() == [b"ack"]
    _sleeps(g, 0.03)                     # answered: the next select sleeps, and asks for the bell


def test_no_answer_within_the_window_sleeps_and_loses_nothing(make: Callable[[int], Gateway]) -> None:
    g = make(WINDOW_NS)
    g.sel.expect()
    assert g.sel.select(0.0) == [] and not g.prod.consumer_waiting()
    # published while the partition saw us polling (no bell), just as the window ends
    assert g.prod.try_publish(b"late")
    g.clock.ns += 300_000
    _bell_ready(g, 5.0)                  # taken without sleeping
    assert g.cons.poll() == [b"late"]
    _sleeps(g, 0.01)
    # a window that ran out with nothing published: the doorbell brings the answer
    g.sel.expect()
    assert g.sel.select(0.0) == [] and not g.prod.consumer_waiting()
    g.clock.ns += 300_000
    _sleeps(g, 0.01)
    ring_bell(g.bell)
    _bell_ready(g, 1.0)


def test_the_poll_loop_ends_with_the_window(make: Callable[[int], Gateway]) -> None:
    """With a real clock: an answer due but not coming, the selector polls until the window ends,
    then sleeps out the rest of its timeout; the polls are counted."""
    g = make(2_000_000)
    g.sel._clock = time.perf_counter_ns
    g.sel.expect()
    t0 = time.perf_counter_ns()
    assert g.sel.select(0.02) == []
    assert time.perf_counter_ns() - t0 >= 15_000_000
    assert g.sel.polls > 0
    assert g.prod.consumer_waiting()


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
