"""`matchwire bench ring`: the shared-memory SPSC ring between two processes.

    matchwire bench ring [--seconds 2] [--payload 32] [--batch 64] [--slots 16384] [--slot-size 128]

Four phases share the time budget, each a fresh producer process (multiprocessing 'spawn') and
this process consuming, both spinning:

    single     producer try_publish one record at a time     consumer poll()
    batch      producer try_publish_many(batch)              consumer poll()
    block      producer try_publish_many(batch)              consumer poll_block() (no per-record bytes)
    latency    ping ring -> echo process -> pong ring, one record in flight: round trip p50 / p99

Rates are records/s measured by the consumer from the first record to the end marker (an empty
record). On a 2-core machine both spinning processes take a core each and share them with anything
else running: figures from a busy machine are lower and p99 is noisy; quote medians and ratios.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import struct
import sys
import time
import uuid
from typing import Any

from appliance.ring import Ring, RingError
from tools import jsonio

_SEQ = struct.Struct("=Q")


def _attach(name: str, deadline: float) -> Ring:
    while True:
        try:
            return Ring.attach(name)
        except RingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _producer(name: str, mode: str, seconds: float, payload_len: int, batch: int) -> None:
    """Publish for `seconds`, then the end marker. Every wait is bounded by a deadline."""
    ring = _attach(name, time.monotonic() + 10)
    p = ring.producer()
    payload = b"p" * payload_len
    records = [payload] * batch
    stop = time.monotonic() + seconds
    hard_stop = stop + 10
    clock = time.monotonic
    try:
        if mode == "single":
            publish = p.try_publish
            while True:
                for _ in range(256):
                    publish(payload)
                if clock() > stop:
                    break
        else:
            many = p.try_publish_many
            while True:
                for _ in range(16):
                    many(records)
                if clock() > stop:
                    break
        while not p.try_publish(b""):
            if clock() > hard_stop:
                break
    finally:
        ring.close()


def _echo(ping_name: str, pong_name: str, seconds: float) -> None:
    """Return every ping record on the pong ring until the end marker or the deadline."""
    deadline = time.monotonic() + 10
    ping = _attach(ping_name, deadline)
    pong = _attach(pong_name, deadline)
    c = ping.consumer()
    p = pong.producer()
    hard_stop = time.monotonic() + seconds + 10
    clock = time.monotonic
    try:
        spins = 0
        while True:
            recs = c.poll(64)
            if recs:
                for r in recs:
                    while not p.try_publish(r):
                        pass
                if not recs[-1]:
                    return
            else:
                spins += 1
                if spins & 0xFFFF == 0 and clock() > hard_stop:
                    return
    finally:
        ping.close()
        pong.close()


def _consume(ring: Ring, mode: str, seconds: float) -> tuple[int, float]:
    """Count records until the end marker; returns (records, seconds from first to end)."""
    c = ring.consumer()
    size = ring.slot_size
    hard_stop = time.monotonic() + seconds + 20
    clock = time.perf_counter
    count = 0
    t0 = 0.0
    spins = 0
    while True:
        if mode == "block":
            block, n = c.poll_block(4096)
            if n:
                if not t0:
                    t0 = clock()
                count += n
                end = (n - 1) * size
                if block[end] == 0 and block[end + 1] == 0:
                    return count - 1, clock() - t0
                continue
        else:
            recs = c.poll(4096)
            if recs:
                if not t0:
                    t0 = clock()
                count += len(recs)
                if not recs[-1]:
                    return count - 1, clock() - t0
                continue
        spins += 1
        if spins & 0xFFFF == 0 and time.monotonic() > hard_stop:
            raise TimeoutError("bench ring: the producer stopped without its end marker")


def _name(tag: str) -> str:
    return f"mwbench.{os.getpid()}.{uuid.uuid4().hex[:8]}.{tag}"


def run_throughput(mode: str, seconds: float, payload: int, batch: int, slots: int, slot_size: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with Ring.create(_name(mode), slots, slot_size) as ring:
        proc = ctx.Process(target=_producer, args=(ring.name, "single" if mode == "single" else "batch",
                                                   seconds, payload, batch))
        proc.start()
        try:
            count, elapsed = _consume(ring, mode, seconds)
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return {"records": count, "seconds": round(elapsed, 4), "records_per_sec": round(count / elapsed) if elapsed else 0}


def run_latency(seconds: float, payload: int, slots: int, slot_size: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with Ring.create(_name("ping"), slots, slot_size) as ping, Ring.create(_name("pong"), slots, slot_size) as pong:
        proc = ctx.Process(target=_echo, args=(ping.name, pong.name, seconds))
        proc.start()
        p = ping.producer()
        c = pong.consumer()
        clock = time.perf_counter_ns
        body = b"l" * max(0, payload - _SEQ.size)
        samples: list[int] = []
        try:
            # warm-up: the echo process is up once the first ping comes back
            warm_deadline = time.monotonic() + 15
            p.try_publish(_SEQ.pack(0) + body)
            while not c.poll(1):
                if time.monotonic() > warm_deadline:
                    raise TimeoutError("bench ring: the echo process did not answer")
            stop = time.monotonic() + seconds
            i = 1
            while True:
                msg = _SEQ.pack(i) + body
                t0 = clock()
                p.try_publish(msg)
                spins = 0
                while True:
                    got = c.poll(1)
                    if got:
                        break
                    spins += 1
                    if spins & 0xFFFFF == 0 and time.monotonic() > stop + 5:
                        raise TimeoutError("bench ring: a ping was not returned")
                samples.append(clock() - t0)
                if got[0] != msg:
                    raise AssertionError(f"bench ring: ping {i} came back as {got[0]!r}")
                i += 1
                if not i & 255 and time.monotonic() > stop:
                    break
        finally:
            p.try_publish(b"")
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    samples.sort()
    n = len(samples)
    return {
        "round_trips": n,
        "rtt_p50_ns": samples[n // 2] if n else 0,
        "rtt_p99_ns": samples[min(n - 1, (n * 99) // 100)] if n else 0,
        "rtt_max_ns": samples[-1] if n else 0,
    }


def cmd_ring(args: argparse.Namespace) -> int:
    phase = args.seconds / 4
    result: dict[str, Any] = {
        "benchmark": "ring",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "payload_bytes": args.payload,
        "slot_size": args.slot_size,
        "slots": args.slots,
        "batch": args.batch,
    }
    for mode in ("single", "batch", "block"):
        r = run_throughput(mode, phase, args.payload, args.batch, args.slots, args.slot_size)
        print(f"{mode:7s} {r['records_per_sec']:>12,} records/s  ({r['records']:,} in {r['seconds']} s)")
        result[f"{mode}_records_per_sec"] = r["records_per_sec"]
    lat = run_latency(phase, args.payload, args.slots, args.slot_size)
    print(f"latency round trip p50 {lat['rtt_p50_ns']:,} ns  p99 {lat['rtt_p99_ns']:,} ns  ({lat['round_trips']:,} round trips)")
    result.update(lat)
    result["note"] = "two spinning processes on a shared machine; quote medians and ratios"
    print(jsonio.dumps(result))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("ring", help="shared-memory SPSC ring between two processes: records/s and round trip")
    p.add_argument("--seconds", type=float, default=2.0, help="total measuring time, split over 4 phases (default 2)")
    p.add_argument("--payload", type=int, default=32, help="record size in bytes (default 32)")
    p.add_argument("--batch", type=int, default=64, help="records per try_publish_many (default 64)")
    p.add_argument("--slots", type=int, default=16384, help="ring slots, a power of two (default 16384)")
    p.add_argument("--slot-size", type=int, default=128, help="slot bytes, a multiple of 8 (default 128)")
    p.set_defaults(func=cmd_ring)


if __name__ == "__main__":
    sys.exit("usage: matchwire bench ring")
