"""The partition process's pieces: the latency histogram, the tuning report, and a PartitionDaemon in
this process driven through its real rings (commands in, event records out, clean shutdown)."""
from __future__ import annotations

import os
import random
import threading
import time

from appliance import codec_ring as C
from appliance.catalogue import EV_ACCEPTED, EV_EXECUTED, NewOrder
from appliance.daemon import Histogram, PartitionDaemon, apply_tuning
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
