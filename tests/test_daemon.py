"""The partition process's pieces: the latency histogram, the tuning report, and a PartitionDaemon in
this process driven through its real rings (commands in, event records out, clean shutdown)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time

from appliance import codec_ring as C
from appliance.catalogue import EV_ACCEPTED, EV_EXECUTED, NewOrder
from appliance.daemon import PartitionDaemon, apply_tuning
from appliance.metrics import Histogram
from appliance.ring import Ring
from tools.demo import loopback_config


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
    d = PartitionDaemon(cfg, "p0", str(tmp_path / "state"), realtime=False)
    mask = os.sched_getaffinity(0)
    try:
        d.start()
    finally:
        os.sched_setaffinity(0, mask)
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
    assert kinds == [EV_ACCEPTED, EV_EXECUTED]
    assert live[1][2][1][1].qty == 100 and live[1][2][1][5] == 1   # the maker's image, match 1
    rc.close()
    re_.close()


def test_doorbells_ring_only_for_a_side_that_sleeps(tmp_path) -> None:
    """The partition rings the gateway's doorbell only while the gateway says it waits on it; with
    back-off the partition itself parks on its own doorbell and says so, and a ring wakes it."""
    from appliance.ring import SHM_DIR, bell_name

    cfg = loopback_config(str(tmp_path), durability="none", idle="backoff")
    d = PartitionDaemon(cfg, "p0", str(tmp_path / "state"), realtime=False)
    mask = os.sched_getaffinity(0)
    try:
        d.start()
    finally:
        os.sched_setaffinity(0, mask)
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
        got = []
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


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def trading_config(root: str, open_in: float = 2.0, **kw: object):
    """The loopback config with a [trading] section (UTC): pre-open since midnight, the opening
    auction and the open ``open_in`` seconds from now (whole seconds), closing at 23:59."""
    import dataclasses

    from appliance.config import TradingConfig

    cfg = loopback_config(root, durability="none")
    at = int(time.time() + open_in + 0.999)
    if time.gmtime(at).tm_mday != time.gmtime().tm_mday or _hms(at) >= "23:59:00":
        at = int(time.time())   # too close to midnight for a day's schedule: open at once
    sched = ("00:00:00", _hms(at - 1 if at - 1 > time.time() else at), _hms(at), "23:59:00", "23:59:30")
    return dataclasses.replace(cfg, trading=TradingConfig(time_zone="UTC", schedule=sched, **kw))  # type: ignore[arg-type]


def test_partition_daemon_runs_the_trading_day_from_its_schedule(tmp_path) -> None:
    from appliance.catalogue import EV_CROSS_EXECUTED, ClockTick, SetSchedule
    from appliance.recovery import recover_state
    from appliance.daemon import engine_spec

    cfg = trading_config(str(tmp_path), open_in=1.5)
    d = PartitionDaemon(cfg, "p0", str(tmp_path / "state"), realtime=False)
    mask = os.sched_getaffinity(0)
    try:
        d.start()
    finally:
        os.sched_setaffinity(0, mask)
    assert d.partition.engine.rules is not None and d.startup_cmds
    names = cfg.ring_names("p0", "gw0")
    rc, re_ = Ring.attach(names["cmd"]), Ring.attach(names["evt"])
    prod, cons = rc.producer(), re_.consumer()
    t = threading.Thread(target=d.run)
    t.start()
    groups: list = []
    dec = C.EventDecoder([1, 2, 3])
    try:
        prod.try_publish(C.encode_command(NewOrder(1 << 32 | 1, 1, 0, 100, 1_500_000, firm=1, session=1)))
        prod.try_publish(C.encode_command(NewOrder(2 << 32 | 1, 1, 1, 100, 1_500_000, firm=2, session=2)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            groups += dec.feed(cons.poll())
            if any(ev[0] == EV_CROSS_EXECUTED for g in groups for ev in g[2]):
                break
            time.sleep(0.01)
    finally:
        d.stopping = True
        t.join(30)
    kinds = [ev[0] for g in groups if g[1] for ev in g[2]]
    assert EV_EXECUTED not in kinds                     # pre-open: collected, not matched
    assert kinds.count(EV_ACCEPTED) == 2 and kinds.count(EV_CROSS_EXECUTED) == 1
    assert d.stats["ticks"] >= 1
    cmds: list = []
    rec = recover_state(cfg.partition("p0").wal_dir, engine_spec(cfg, cfg.partition("p0")),
                        use_snapshots=False, on_command=lambda s, ts, c, e: cmds.append(c) or False)
    assert type(cmds[0]) is SetSchedule and any(type(c) is ClockTick for c in cmds)
    assert rec.engine.state_hash() == d.partition.engine.state_hash()
    rc.close()
    re_.close()


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
