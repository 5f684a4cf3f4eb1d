"""The partition process's pieces: the latency histogram, the tuning report, and a PartitionDaemon in
this process driven through its real rings (commands in, event records out, clean shutdown)."""
from __future__ import annotations

import calendar
import json
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any

from appliance import codec_ring as C
from appliance.catalogue import Ev, NewOrder
from appliance.daemon import PartitionDaemon, apply_tuning
from appliance.metrics import Histogram
from appliance.ring import Ring
from tools.demo import loopback_config


def started(cfg: object, state: str, **kw: object) -> PartitionDaemon:
    """A PartitionDaemon for partition p0, started in this process (which keeps its CPU mask: the
    daemon pins the thread that starts it)."""
    d = PartitionDaemon(cfg, "p0", state, realtime=False, **kw)  # type: ignore[arg-type]
    mask = os.sched_getaffinity(0)
    try:
        d.start()
    finally:
        os.sched_setaffinity(0, mask)
    return d


def test_histogram_percentiles_within_resolution() -> None:
    h = Histogram()
    rng = random.Random(1)
    vals = sorted(rng.randrange(1, 10_000_000) for _ in range(20_000))
    for v in vals:
        h.record(v)
    for p in (50, 99, 99.9):
        exact = vals[int(len(vals) * p / 100) - 1]
        assert abs(h.percentile(p) - exact) <= exact / 32
    assert h.max == vals[-1]
    assert Histogram.from_json(h.to_json()).percentile(50) == h.percentile(50)


def test_tuning_says_what_it_did() -> None:
    done = apply_tuning("t", -1, realtime=False)
    assert done["affinity"].startswith(("pinned to CPU", "refused"))
    assert "not requested" in done["sched_fifo"] and "not requested" in done["mlockall"]
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def test_partition_daemon_through_its_rings(tmp_path) -> None:
    cfg = loopback_config(str(tmp_path), durability="none")
    d = started(cfg, str(tmp_path / "state"))
    names = cfg.ring_names("p0", "gw0")
    rc, re_ = Ring.attach(names["cmd"]), Ring.attach(names["evt"])
    prod, cons = rc.producer(), re_.consumer()
    t = threading.Thread(target=d.run)
    d.stop_after_commands = 2
    t.start()
    try:
        prod.try_publish(C.encode_command(NewOrder(1 << 32 | 1, 1, 0, 100, 1_500_000, firm=1, session=1)))
        prod.try_publish(C.encode_command(NewOrder(2 << 32 | 1, 1, 1, 100, 1_500_000, firm=2, session=2)))
        dec = C.EventDecoder([1, 2, 3])
        groups: list = []
        deadline = time.monotonic() + 10
        while sum(1 for g in groups if g[1]) < 2 and time.monotonic() < deadline:
            groups += dec.feed(cons.poll())
            time.sleep(0.01)
    finally:
        d.stopping = True
        t.join(30)
    live = [g for g in groups if g[1]]
    assert [g[0] for g in live] == [1, 2]
    kinds = [ev[0] for ev in live[1][2]]
    assert kinds == [Ev.ACCEPTED, Ev.EXECUTED]
    assert live[1][2][1][1].qty == 100 and live[1][2][1][5] == 1   # the maker's image, match 1
    rc.close()
    re_.close()


def test_doorbells_ring_only_for_a_side_that_sleeps(tmp_path) -> None:
    """The partition rings the gateway's doorbell only while the gateway says it waits on it; with
    back-off the partition itself parks on its own doorbell and says so, and a ring wakes it."""
    from appliance.ring import SHM_DIR, bell_name

    cfg = loopback_config(str(tmp_path), durability="none", idle="backoff")
    d = started(cfg, str(tmp_path / "state"))
    names = cfg.ring_names("p0", "gw0")
    rc, re_ = Ring.attach(names["cmd"]), Ring.attach(names["evt"])
    prod, cons = rc.producer(), re_.consumer()
    bell = os.open(os.path.join(SHM_DIR, bell_name(names["evt"])), os.O_RDONLY | os.O_NONBLOCK)
    wake = os.open(os.path.join(SHM_DIR, bell_name(names["cmd"])), os.O_WRONLY | os.O_NONBLOCK)
    t = threading.Thread(target=d.run)
    t.start()
    rung: list[bytes] = []

    def order_and_answer(n: int) -> None:
        prod.try_publish(C.encode_command(NewOrder(n << 32 | 1, 1, n & 1, 100, 1_500_000 + n * 100, firm=1,
                                                   session=1)))
        if prod.consumer_waiting():
            os.write(wake, b"\x01")
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got = [r for r in cons.poll() if r]
            time.sleep(0.005)
        assert got, "no event record"
        time.sleep(0.05)
        try:
            rung.append(os.read(bell, 64))
        except BlockingIOError:
            rung.append(b"")

    try:
        cons.poll()                     # the bootstrap records
        cons.set_waiting(False)         # a polling gateway: no system call for it
        order_and_answer(1)
        cons.set_waiting(True)          # a sleeping gateway: one byte on its doorbell
        order_and_answer(2)
        parked = False
        deadline = time.monotonic() + 20
        while not parked and time.monotonic() < deadline:
            parked = prod.consumer_waiting()    # the idle partition says it sleeps on its doorbell
            time.sleep(0.001)
        assert parked
        order_and_answer(3)
    finally:
        d.stopping = True
        os.write(wake, b"\x01")
        t.join(30)
        os.close(bell)
        os.close(wake)
    assert rung[0] == b"" and rung[1] == b"\x01"
    assert d.stats["commands"] == 3
    rc.close()
    re_.close()


class ManualClock:
    """An injected wall clock (epoch ns) that moves only when the test moves it."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


SEC = 10**9
MONDAY = calendar.timegm((2026, 1, 5, 0, 0, 0)) * SEC      # a trading day, midnight UTC
SCHEDULE = ("04:00:00", "09:25:00", "09:30:00", "15:50:00", "16:00:00")


def trading_config(root: str, **kw: object):
    """The loopback config with a [trading] section (UTC) and a fixed schedule: pre-open 04:00, the
    opening auction 09:25, the open 09:30, closing auction 15:50, close 16:00."""
    import dataclasses

    from appliance.config import TradingConfig

    cfg = loopback_config(root, durability="none")
    return dataclasses.replace(cfg, trading=TradingConfig(time_zone="UTC", schedule=SCHEDULE, **kw))  # type: ignore[arg-type]


def test_partition_daemon_runs_the_trading_day_from_its_schedule(tmp_path) -> None:
    """The daemon on an injected clock: orders in pre-open are collected; the clock moves past the
    open and the partition's own tick uncrosses them, whatever the host's time of day."""
    from appliance.catalogue import ClockTick, Ev, SetSchedule
    from appliance.daemon import engine_spec
    from appliance.model import TS_CONTINUOUS, TS_PRE_OPEN
    from appliance.recovery import recover_state

    cfg = trading_config(str(tmp_path))
    clock = ManualClock(MONDAY + 9 * 3600 * SEC)                 # 09:00: pre-open
    d = started(cfg, str(tmp_path / "state"), clock=clock)
    assert d.partition.engine.rules is not None and d.startup_cmds
    names = cfg.ring_names("p0", "gw0")
    rc, re_ = Ring.attach(names["cmd"]), Ring.attach(names["evt"])
    prod, cons = rc.producer(), re_.consumer()
    t = threading.Thread(target=d.run)
    t.start()
    groups: list = []
    dec = C.EventDecoder([1, 2, 3])

    def until(pred, what: str) -> None:
        deadline = time.monotonic() + 30
        while not pred():
            assert time.monotonic() < deadline, f"no {what}"
            groups.extend(dec.feed(cons.poll()))
            time.sleep(0.01)

    def kinds() -> list:
        return [ev[0] for g in groups if g[1] for ev in g[2]]

    try:
        prod.try_publish(C.encode_command(NewOrder(1 << 32 | 1, 1, 0, 100, 1_500_000, firm=1, session=1)))
        prod.try_publish(C.encode_command(NewOrder(2 << 32 | 1, 1, 1, 100, 1_500_000, firm=2, session=2)))
        until(lambda: kinds().count(Ev.ACCEPTED) == 2, "acceptance")
        assert d.partition.engine.book(1).state == TS_PRE_OPEN
        time.sleep(0.3)                                          # the clock stands still: nothing happens
        groups.extend(dec.feed(cons.poll()))
        assert Ev.EXECUTED not in kinds() and Ev.CROSS_EXECUTED not in kinds()   # collected, not matched
        clock.now_ns = MONDAY + (9 * 3600 + 30 * 60 + 1) * SEC   # 09:30:01: past the open
        until(lambda: Ev.CROSS_EXECUTED in kinds(), "opening cross")
    finally:
        d.stopping = True
        t.join(30)
    assert Ev.EXECUTED not in kinds() and kinds().count(Ev.CROSS_EXECUTED) == 1
    assert d.partition.engine.book(1).state == TS_CONTINUOUS
    assert d.stats["ticks"] >= 2
    cmds: list[tuple[int, Any]] = []

    def on_command(seq: int, ts: int, cmd: Any, events: Any) -> bool:
        cmds.append((ts, cmd))
        return False

    rec = recover_state(cfg.partition("p0").wal_dir, engine_spec(cfg, cfg.partition("p0")),
                        use_snapshots=False, on_command=on_command)
    assert type(cmds[0][1]) is SetSchedule and cmds[0][1].open_ns == MONDAY + (9 * 3600 + 30 * 60) * SEC
    ticks = [c.now_ns for _, c in cmds if type(c) is ClockTick]
    assert ticks[0] == MONDAY + 9 * 3600 * SEC and ticks[-1] == MONDAY + (9 * 3600 + 30 * 60 + 1) * SEC
    assert all(ts >= MONDAY + 9 * 3600 * SEC for ts, _ in cmds)       # stamped by the injected clock
    assert rec.engine.state_hash() == d.partition.engine.state_hash()
    rc.close()
    re_.close()


def test_the_wall_clock_takes_an_offset(monkeypatch) -> None:
    from appliance import clock as K
    assert K.wall_clock() is time.time_ns or os.environ.get(K.OFFSET_ENV)
    monkeypatch.setenv(K.OFFSET_ENV, str(K.offset_to(MONDAY)))
    c = K.wall_clock()
    assert abs(c() - MONDAY) < 60 * SEC
    monkeypatch.setenv(K.OFFSET_ENV, "soon")
    try:
        K.wall_clock()
    except ValueError as e:
        assert K.OFFSET_ENV in str(e)
    else:
        raise AssertionError("a bad offset was taken")


def test_bench_restart_resumes_from_the_feed_checkpoint_and_matches_the_full_replay(tmp_path) -> None:
    from test_retransmit_harness import standard_flow
    standard_flow(tmp_path, 6000)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "tools", "bench", "restart", str(tmp_path / "flow6000.bin"),
                           "--limit", "6000", "--snapshot-every", "4000"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["benchmark"] == "restart" and r["same_state_and_feed"] is True
    assert r["commands"] == 6000 and 4000 <= r["snapshot_seq"] < 6000
    assert "feed: resumed from" in proc.stderr
    assert "feed: full replay (no feed checkpoint at seq" in proc.stderr
    assert f"feed: {6000 - r['snapshot_seq']} commands replayed after the checkpoint" in proc.stderr
