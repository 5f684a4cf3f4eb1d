"""The shared-memory SPSC ring and the idle strategies.

Cross-process tests run real processes (``python -c`` workers, each bounded by a deadline and a
subprocess timeout) over rings in /dev/shm with unique names, unlinked afterwards.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest

from appliance.idle import BACKOFF, BUSY_SPIN, YIELD, BackoffSleep, BusySpin, Yield, make_idle
from appliance.ring import (
    CONSUMED_OFFSET,
    PUBLISHED_OFFSET,
    SHM_DIR,
    SLOTS_OFFSET,
    Ring,
    RingError,
    bell_name,
    check_platform,
    make_bell,
    records_of_block,
    remove_ring,
    ring_bytes,
    ring_name,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = struct.Struct("=Q")


@pytest.fixture
def name() -> Iterator[str]:
    n = f"mwtest.{os.getpid()}.{uuid.uuid4().hex[:10]}"
    yield n
    try:
        os.unlink(os.path.join(SHM_DIR, n))
    except FileNotFoundError:
        pass


def _run_worker(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker timed out: {err}")
    assert proc.returncode == 0, err
    return out


# -- a producer in another process: records carry their sequence number and vary in length -------
PRODUCER = r"""
import struct, sys, time
from appliance.ring import Ring, RingError
name, total = sys.argv[1], int(sys.argv[2])
SEQ = struct.Struct("=Q")
deadline = time.monotonic() + 50
while True:
    try:
        ring = Ring.attach(name); break
    except RingError:
        if time.monotonic() > deadline: raise
        time.sleep(0.001)
p = ring.producer()
pad = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
def rec(i):
    return SEQ.pack(i) + pad[:i % 90]
i = 0
full = 0
spins = 0
while i < total:
    if (i >> 12) & 1:      # alternate: 4096 records one by one, then 4096 in batches of 1..97
        if p.try_publish(rec(i)):
            i += 1
            continue
        full += 1
    else:
        k = min(1 + i % 97, total - i)
        n = p.try_publish_many([rec(j) for j in range(i, i + k)])
        i += n
        if n:
            continue
        full += 1
    spins += 1
    if not spins & 0xFFFF and time.monotonic() > deadline:
        sys.exit("producer: deadline")
print(full)
ring.close()
"""


def _check_record(rec: bytes, expect: int) -> None:
    seq = SEQ.unpack_from(rec)[0]
    if seq != expect or len(rec) != 8 + expect % 90:
        raise AssertionError(f"record {expect}: got sequence {seq}, length {len(rec)}")


def test_a_million_records_between_processes_arrive_in_order_once(name: str) -> None:
    total = 1_000_000
    with Ring.create(name, slots=1024, slot_size=128) as ring:
        proc = _run_worker(PRODUCER, name, str(total))
        c = ring.consumer()
        expect = 0
        deadline = time.monotonic() + 50
        # Back-pressure made certain, whatever the machine's load: read nothing until the producer has
        # filled all 1024 slots, then let it spin against the full ring for a moment.
        while ring.counters()[0] < 1024 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(0.2)
        spins = 0
        use_block = False
        size = ring.slot_size
        while expect < total:
            if use_block:
                block, n = c.poll_block(512)
                recs = records_of_block(block, n, size)
            else:
                recs = c.poll(700)
            use_block = not use_block
            if not recs:
                spins += 1
                if not spins & 0xFFFF and (time.monotonic() > deadline or (proc.poll() is not None and not c.pending())):
                    proc.kill()
                    pytest.fail(f"consumer: producer gone or deadline at record {expect}: {proc.communicate()[1]}")
                continue
            for rec in recs:
                _check_record(rec, expect)
                expect += 1
        full = int(_finish(proc))
        assert c.poll() == []                     # nothing duplicated after the last record
        assert ring.counters() == (total, total)
        assert full > 0                           # a 1024-slot ring must have pushed back


def test_full_ring_refuses_then_recovers(name: str) -> None:
    with Ring.create(name, slots=8, slot_size=32) as ring:
        p, c = ring.producer(), ring.consumer()
        for i in range(8):
            assert p.try_publish(bytes([i]))
        assert not p.try_publish(b"x")                        # full: a value, not a block
        assert p.try_publish_many([b"a", b"b"]) == 0
        assert p.free() == 0
        assert ring.counters() == (8, 0)
        assert c.poll(3) == [b"\x00", b"\x01", b"\x02"]
        assert p.try_publish_many([b"a", b"b", b"c", b"d"]) == 3  # as many as fit
        assert c.pending() == 8
        assert c.poll() == [bytes([i]) for i in range(3, 8)]     # stops at the end of the slots
        assert c.poll() == [b"a", b"b", b"c"]
        assert c.poll() == []
        assert p.try_publish(b"again")
        assert c.poll() == [b"again"]


def test_full_ring_back_pressure_across_processes(name: str) -> None:
    """A producer in another process fills the ring, sees False, and goes on once we drain."""
    total = 5000
    with Ring.create(name, slots=16, slot_size=128) as ring:
        proc = _run_worker(PRODUCER, name, str(total))
        # let it fill the ring and push back
        deadline = time.monotonic() + 30
        while ring.counters()[0] < 16:
            assert time.monotonic() < deadline and proc.poll() is None, "producer never filled the ring"
            time.sleep(0.001)
        time.sleep(0.05)
        assert ring.counters() == (16, 0)              # it cannot go on while we do not consume
        c = ring.consumer()
        got = 0
        while got < total:
            assert time.monotonic() < deadline + 20, f"consumer: deadline at record {got}"
            for rec in c.poll(5):
                _check_record(rec, got)
                got += 1
        assert int(_finish(proc)) > 0


ATTACH_CONSUMER = r"""
import sys, time
from appliance.ring import Ring
ring = Ring.attach(sys.argv[1])
c = ring.consumer()
got = []
deadline = time.monotonic() + 30
while len(got) < 3 and time.monotonic() < deadline:
    got += c.poll()
print(repr(got), ring.slots, ring.slot_size)
ring.close()
"""


def test_attach_by_name_from_another_process_and_unlink(name: str) -> None:
    ring = Ring.create(name, slots=64, slot_size=48)
    try:
        p = ring.producer()
        assert p.try_publish_many([b"one", b"two", b"three"]) == 3
        out = _finish(_run_worker(ATTACH_CONSUMER, name))
        assert out.split() == ["[b'one',", "b'two',", "b'three']", "64", "48"]
        assert ring.counters() == (3, 3)               # the other process released the slots
        assert p.free() == 64
    finally:
        ring.close()
        ring.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    with pytest.raises(RingError, match="no such ring"):
        Ring.attach(name)
    ring.unlink()                                      # idempotent


def test_attached_roles_resume_from_the_counters(name: str) -> None:
    with Ring.create(name, slots=8, slot_size=32) as ring:
        ring.producer().try_publish_many([b"a", b"b", b"c"])
        ring.consumer().poll(1)
        other = Ring.attach(name)
        try:
            assert other.consumer().poll() == [b"b", b"c"]
            p = other.producer()
            assert p.published == 3 and p.try_publish(b"d")
            assert ring.counters() == (4, 3)
        finally:
            other.close()


def test_wrap_around_keeps_order_for_singles_and_batches(name: str) -> None:
    with Ring.create(name, slots=8, slot_size=16) as ring:
        p, c = ring.producer(), ring.consumer()
        expect = 0
        sent = 0
        for rnd in range(200):                         # 200 rounds over an 8-slot ring: many wraps
            k = 1 + rnd % 7
            batch = [SEQ.pack(sent + j) for j in range(k)]
            if rnd % 3:
                assert p.try_publish_many(batch) == k
            else:
                for b in batch:
                    assert p.try_publish(b)
            sent += k
            got: list[bytes] = []
            while len(got) < k:
                if rnd % 2:
                    got += c.poll()
                else:
                    block, n = c.poll_block()
                    got += records_of_block(block, n, ring.slot_size)
            for rec in got:
                assert SEQ.unpack(rec)[0] == expect
                expect += 1
        assert ring.counters() == (sent, sent) and sent > 8 * 50


def test_a_batch_that_wraps_is_written_in_two_parts(name: str) -> None:
    with Ring.create(name, slots=8, slot_size=16) as ring:
        p, c = ring.producer(), ring.consumer()
        assert p.try_publish_many([b"0", b"1", b"2", b"3", b"4", b"5"]) == 6
        assert len(c.poll()) == 6
        assert p.try_publish_many([b"a", b"b", b"c", b"d", b"e"]) == 5  # slots 6, 7, 0, 1, 2
        assert c.poll() == [b"a", b"b"]
        assert c.poll() == [b"c", b"d", b"e"]
        assert c.poll_block() == (b"", 0)


def test_slot_size_limits(name: str) -> None:
    with Ring.create(name, slots=4, slot_size=32) as ring:
        p, c = ring.producer(), ring.consumer()
        assert ring.max_payload == 30
        assert p.try_publish(b"z" * 30)
        assert p.try_publish(b"")                       # empty records are records
        with pytest.raises(ValueError, match="31 bytes exceeds the slot payload of 30"):
            p.try_publish(b"z" * 31)
        with pytest.raises(ValueError, match="exceeds the slot payload"):
            p.try_publish_many([b"ok", b"z" * 31])
        assert ring.counters() == (2, 0)               # the refused batch wrote nothing
        assert c.poll() == [b"z" * 30, b""]
    for slots, slot_size in ((3, 128), (1, 128), (1 << 25, 128), (8, 100), (8, 8), (8, 65544)):
        with pytest.raises(ValueError):
            Ring.create(name, slots, slot_size)
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_geometry_and_layout(name: str) -> None:
    with Ring.create(name, slots=16, slot_size=64) as ring:
        assert os.path.getsize(ring.path) == ring_bytes(16, 64) == SLOTS_OFFSET + 16 * 64
        assert PUBLISHED_OFFSET % 64 == 0 and CONSUMED_OFFSET % 64 == 0
        assert CONSUMED_OFFSET - PUBLISHED_OFFSET >= 64 and SLOTS_OFFSET - CONSUMED_OFFSET >= 64
        ring.producer().try_publish(b"hi")
        with open(ring.path, "rb") as f:
            raw = f.read()
        assert raw[:8] == b"MWRING\x00\x01"
        assert int.from_bytes(raw[PUBLISHED_OFFSET:PUBLISHED_OFFSET + 8], sys.byteorder) == 1
        assert raw[SLOTS_OFFSET:SLOTS_OFFSET + 4] == (2).to_bytes(2, sys.byteorder) + b"hi"
        with pytest.raises(FileExistsError):
            Ring.create(name, 16, 64)


def test_attach_refuses_what_is_not_a_ring(name: str) -> None:
    path = os.path.join(SHM_DIR, name)
    with open(path, "wb") as f:
        f.write(b"\x00" * 4096)
    with pytest.raises(RingError, match="bad magic"):
        Ring.attach(name)
    with open(path, "wb") as f:
        f.write(b"short")
    with pytest.raises(RingError, match="too small"):
        Ring.attach(name)
    with pytest.raises(ValueError):
        Ring.create("a/b")


def test_closed_roles_refuse_use(name: str) -> None:
    ring = Ring.create(name, slots=4, slot_size=16)
    p = ring.producer()
    ring.close()
    ring.close()
    with pytest.raises((ValueError, struct.error)):
        p.try_publish(b"x")
    with pytest.raises(RingError, match="closed"):
        ring.consumer()
    ring.unlink()


def test_ring_names() -> None:
    assert ring_name("mw", "p0", "gw0", "cmd") == "mw.p0.gw0.cmd"
    assert ring_name("mw", "p0", "gw0", "evt") == "mw.p0.gw0.evt"
    with pytest.raises(ValueError, match="direction"):
        ring_name("mw", "p0", "gw0", "in")
    with pytest.raises(ValueError, match="gateway"):
        ring_name("mw", "p0", "g/w", "cmd")
    check_platform(allow_weak_memory=True)


# -- idle strategies --------------------------------------------------------------------------------
def test_backoff_spins_then_yields_then_sleeps_doubling_to_the_cap() -> None:
    calls: list[object] = []
    s = BackoffSleep(max_spins=3, max_yields=2, min_park_ns=1000, max_park_ns=5000,
                     sleep_ns=calls.append, yield_=lambda: calls.append("yield"))
    for _ in range(10):
        s.idle(0)
    assert calls == ["yield", "yield", 1000, 2000, 4000, 5000, 5000]
    s.idle(1)                                          # work: start over
    calls.clear()
    for _ in range(7):
        s.idle(0)
    assert calls == ["yield", "yield", 1000, 2000]
    s.reset()
    assert s.idles == 0 and s.park_ns == 1000


def test_backoff_without_spins_or_yields_sleeps_at_once_and_resets() -> None:
    slept: list[int] = []
    s = BackoffSleep(0, 0, 10, 40, sleep_ns=slept.append, yield_=lambda: None)
    s.idle(0)
    s.idle(0)
    s.idle(3)
    s.idle(0)
    assert slept == [10, 20, 10]
    with pytest.raises(ValueError):
        BackoffSleep(min_park_ns=10, max_park_ns=5)


def test_yield_and_busy_spin() -> None:
    n = []
    y = Yield(lambda: n.append(1))
    y.idle(0)
    y.idle(5)
    assert n == [1]
    BusySpin().idle(0)
    assert [make_idle(k).name for k in (BUSY_SPIN, YIELD, BACKOFF)] == [BUSY_SPIN, YIELD, BACKOFF]
    with pytest.raises(ValueError, match="unknown idle strategy"):
        make_idle("nap")
    t0 = time.perf_counter_ns()
    b = BackoffSleep(0, 0, 100_000, 100_000)           # the real sleep: ~0.1 ms
    b.idle(0)
    assert time.perf_counter_ns() - t0 >= 100_000


def test_bench_ring_prints_one_json_object_last() -> None:
    proc = subprocess.run([sys.executable, "-m", "tools", "bench", "ring", "--seconds", "0.4",
                           "--slots", "1024"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "ring"
    assert result["batch_records_per_sec"] > 0 and result["round_trips"] > 0
    assert 0 < result["rtt_p50_ns"] <= result["rtt_p99_ns"]


def test_remove_ring_unlinks_what_a_killed_owner_left(name: str) -> None:
    ring = Ring.create(name, 8, 64)
    os.close(make_bell(name))
    ring.close()        # the owner's mapping gone, its names left behind (as after SIGKILL)
    assert os.path.exists(os.path.join(SHM_DIR, name)) and os.path.exists(os.path.join(SHM_DIR, bell_name(name)))
    remove_ring(name)
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    assert not os.path.exists(os.path.join(SHM_DIR, bell_name(name)))
    remove_ring(name)   # nothing left: nothing to do
