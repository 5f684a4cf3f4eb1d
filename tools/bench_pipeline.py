"""`matchwire bench pipeline FLOW.bin` and `matchwire bench latency`: the appliance's own paths.

    matchwire bench pipeline FLOW.bin [--limit 200000] [--durability batch] [--max-batch 1024] [--idle yield]

The standard flow pushed through the command ring into a running partition (PartitionDaemon in this
process: ring drain, WAL append + commit under the policy, match, event records to the gateway's
ring, ITCH L3/L2/L1 to loopback multicast, TTL 0). A producer process (spawn) publishes the flow's
commands, encoded beforehand, as fast as the ring takes them, and drains the event ring. Reported:
commands/s from the first batch drained to the last batch released, i.e. at saturation.

    matchwire bench latency [--rate 10000 --rate 50000] [--seconds 3] [--durability batch]

For each offered rate, a fresh appliance (`matchwire run`, loopback, idle backoff) and one OUCH client
process sending Enter Orders in 1 ms ticks (rate/1000 orders per tick, one write per tick), reading
the answers; order-to-ack latency (Enter Order written -> Order Accepted read, client clock) in a
log-linear histogram (1/64 resolution): p50, p99, p99.9, max; and the in-engine part (the
partition's clock: ring drained -> event records out, per batch, weighted by its commands).

On a shared 2-core VM these figures move with the neighbours' load: quote medians and ratios. The
last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from appliance import codec_ring as C
from appliance.config import (
    ApplianceConfig,
    Config,
    FeedChannelConfig,
    FirmConfig,
    FixCredentials,
    GatewayConfig,
    InstrumentConfig,
    OuchCredentials,
    PartitionConfig,
    default,
)
from appliance.daemon import Histogram, PartitionDaemon
from appliance.model import STP_NONE
from appliance.risk import FirmLimits
from appliance.ring import Ring, RingError
from tools.flows import FLOW_FIRM, flow_instrument_count, read_flow


def register(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="the flow through the ring into a running partition (orders/s)")
    p.add_argument("flow")
    p.add_argument("--limit", type=int, default=200_000, help="commands of the flow to push (default 200000)")
    p.add_argument("--durability", default="batch", choices=("batch", "interval", "none"))
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--idle", default="yield", choices=("busy_spin", "yield", "backoff"))
    p.set_defaults(func=_pipeline)
    r = sub.add_parser("restart", help="partition start-up after a crash: from a feed checkpoint vs the whole WAL")
    r.add_argument("flow")
    r.add_argument("--limit", type=int, default=1_000_000, help="commands of the flow before the crash")
    r.add_argument("--snapshot-every", type=int, default=0,
                   help="snapshot every N commands (default: limit - 300000, i.e. one 300k commands old)")
    r.set_defaults(func=_restart)
    lat = sub.add_parser("latency", help="OUCH order-to-ack latency at fixed offered rates")
    lat.add_argument("--rate", type=int, action="append", help="orders/s offered (repeatable; default 10000 50000)")
    lat.add_argument("--seconds", type=float, default=3.0)
    lat.add_argument("--durability", default="batch", choices=("batch", "interval", "none"))
    lat.set_defaults(func=_latency)


# ================================================================================================
# pipeline
# ================================================================================================

def _flow_config(root: str, instruments: int, durability: str, idle: str, snapshot_every: int = 0) -> Config:
    base = default()
    rng = random.Random()
    ins = tuple(InstrumentConfig(f"F{i:04d}", i + 1, 1, 100, None, "Q") for i in range(instruments))
    port = rng.randrange(40000, 60000)
    feeds = {ch: FeedChannelConfig(f"239.200.{rng.randrange(255)}.{30 + k}", port + k,
                                   f"239.201.{rng.randrange(255)}.{30 + k}", port + k)
             for k, ch in enumerate(("l3", "l2", "l1"))}
    wal = os.path.join(root, "wal")
    part = PartitionConfig("p0", 0, tuple(i.symbol for i in ins), -1, wal, os.path.join(wal, "snapshots"),
                           durability, 2, snapshot_every, 0, idle, STP_NONE, feeds)
    firm = FirmConfig("FLOW", FLOW_FIRM, STP_NONE, OuchCredentials("flow", "flow"), FixCredentials("FLOW", "flow"),
                      FirmLimits(max_qty=1 << 31))
    gw = GatewayConfig("bench", "127.0.0.1", 1, 2, "MATCHWIRE", ("FLOW",))
    return dataclasses.replace(base, appliance=ApplianceConfig(f"mwb{os.getpid()}", 16384, 128), instruments=ins,
                               partitions=(part,), gateways=(gw,), firms=(firm,), warnings=())


def _producer(cmd_ring: str, evt_ring: str, records: list[bytes], done_path: str, cpus: list[int]) -> None:
    if cpus:   # not on the partition's CPU (a spawned child inherits the pinned mask)
        os.sched_setaffinity(0, cpus)
    deadline = time.monotonic() + 30
    while True:
        try:
            rc = Ring.attach(cmd_ring)
            re_ = Ring.attach(evt_ring)
            break
        except RingError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
    prod = rc.producer()
    cons = re_.consumer()
    i = 0
    n = len(records)
    events = 0
    hard = time.monotonic() + 600
    while (i < n or not os.path.exists(done_path)) and time.monotonic() < hard:
        if i < n:
            i += prod.try_publish_many(records[i:i + 1024])
        block, k = cons.poll_block(4096)
        events += k
        if i >= n and not k:
            time.sleep(0.0005)
    rc.close()
    re_.close()


def _drive(d: PartitionDaemon, cfg: Config, root: str, records: list[bytes], shutdown: bool = True) -> int:
    """Run the started daemon until it has processed ``records``, pushed by a producer process."""
    d.stop_after_commands = len(records)
    names = cfg.ring_names("p0", "bench")
    done = os.path.join(root, "done")
    ctx = multiprocessing.get_context("spawn")
    mine = os.sched_getaffinity(0)
    others = sorted(set(range(os.cpu_count() or 1)) - mine)
    proc = ctx.Process(target=_producer, args=(names["cmd"], names["evt"], records, done, others), daemon=True)
    proc.start()
    rc = d.run(shutdown)
    open(done, "w").close()
    proc.join(30)
    return rc


def _pipeline(args: argparse.Namespace) -> int:
    cmds, meta = read_flow(args.flow)
    cmds = cmds[: args.limit]
    records = [C.encode_command(c) for c in cmds]
    root = tempfile.mkdtemp(prefix="mw-bench-pipeline-")
    try:
        cfg = _flow_config(root, flow_instrument_count(cmds, meta), args.durability, args.idle)
        d = PartitionDaemon(cfg, "p0", os.path.join(root, "state"), realtime=False, max_batch=args.max_batch)
        d.start()
        rc = _drive(d, cfg, root, records)
        secs = (d.last_batch_ns - d.first_batch_ns) / 1e9
        st = d.stats
        result = {
            "benchmark": "pipeline", "flow": os.path.basename(args.flow), "commands": st["commands"],
            "seconds": round(secs, 3), "orders_per_s": round(st["commands"] / secs) if secs > 0 else 0,
            "batches": st["batches"], "mean_batch": round(st["commands"] / max(st["batches"], 1), 1),
            "records_out": st["records_out"], "durability": args.durability, "idle": args.idle,
            "in_engine_per_batch": d.in_engine.summary_us(), "feed_messages": {
                ch: v["messages_sent"] for ch, v in d.publisher.stats().items()},
            "exit": rc, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
        }
        print(f"pipeline: {result['commands']} commands in {result['seconds']} s = {result['orders_per_s']}/s "
              f"(WAL {args.durability}, mean batch {result['mean_batch']}, multicast L3/L2/L1 on loopback)")
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ================================================================================================
# restart
# ================================================================================================

def _abandon(d: PartitionDaemon) -> None:
    """Leave the daemon as a crash would (no snapshot, no End of Session); free what it holds."""
    d.partition.abandon()
    d.release()


def _restart(args: argparse.Namespace) -> int:
    """`matchwire bench restart FLOW.bin [--limit N] [--snapshot-every K]`.

    The flow through a partition (as `bench pipeline`), snapshots every N commands, then a crash
    (no shutdown). Two copies of what is on disk are started again: one as left (the feed resumes
    from the checkpoint of the newest snapshot), one without checkpoints (the whole WAL replayed).
    Reported: each start-up's seconds, and that both reach the same state and feed sequence."""
    cmds, meta = read_flow(args.flow)
    cmds = cmds[: args.limit]
    every = args.snapshot_every or max(1, len(cmds) - 300_000)
    records = [C.encode_command(c) for c in cmds]
    root = tempfile.mkdtemp(prefix="mw-bench-restart-")
    try:
        cfg = _flow_config(os.path.join(root, "run"), flow_instrument_count(cmds, meta), "batch", "yield", every)
        d = PartitionDaemon(cfg, "p0", os.path.join(root, "run", "state"), realtime=False)
        d.start()
        _drive(d, cfg, os.path.join(root, "run"), records, shutdown=False)
        assert d.partition.snapshots is not None
        d.partition.snapshots.wait()   # the crash comes after the newest snapshot is on disk
        snap_seq = d.partition.last_snapshot_seq
        last_seq = d.partition.applied_seq
        _abandon(d)
        # The bench has no gateway process: write the journal mark of one that had processed every
        # event (a gateway behind the snapshot would need the full replay for its catch-up).
        from appliance.gateway.server import gateway_dir, mark_record
        gwdir = gateway_dir(os.path.join(root, "run", "state"), "bench")
        os.makedirs(gwdir, exist_ok=True)
        with open(os.path.join(gwdir, "journal.bin"), "wb") as f:
            f.write(mark_record({cfg.partitions[0].id: last_seq}))
        out: dict[str, Any] = {}
        for mode in ("checkpoint", "full"):
            copy = os.path.join(root, mode)
            shutil.copytree(os.path.join(root, "run"), copy)
            p = cfg.partitions[0]
            wal = os.path.join(copy, "wal")
            ccfg = dataclasses.replace(cfg, partitions=(dataclasses.replace(
                p, wal_dir=wal, snapshot_dir=os.path.join(wal, "snapshots")),))
            store = os.path.join(copy, "state", "feed", "p0")
            if mode == "full":
                for n in os.listdir(store):
                    if n.startswith("CHECKPOINT-"):
                        os.unlink(os.path.join(store, n))
            d2 = PartitionDaemon(ccfg, "p0", os.path.join(copy, "state"), realtime=False, transport="null")
            t0 = time.perf_counter()
            d2.start()
            secs = time.perf_counter() - t0
            out[mode] = {"start_seconds": round(secs, 3), "state_hash": d2.ready_info["state_hash"],
                         "feed_next_seq": {ch: v["next_seq"] for ch, v in d2.publisher.stats().items()}}
            _abandon(d2)
            shutil.rmtree(copy, ignore_errors=True)
        same = (out["checkpoint"]["state_hash"] == out["full"]["state_hash"]
                and out["checkpoint"]["feed_next_seq"] == out["full"]["feed_next_seq"])
        result = {
            "benchmark": "restart", "flow": os.path.basename(args.flow), "commands": len(cmds),
            "snapshot_seq": snap_seq, "snapshot_age_commands": len(cmds) - snap_seq,
            "start_seconds_from_checkpoint": out["checkpoint"]["start_seconds"],
            "start_seconds_full_replay": out["full"]["start_seconds"], "same_state_and_feed": same,
            "feed_next_seq": out["full"]["feed_next_seq"], "load_avg": os.getloadavg()[0],
        }
        print(f"restart after {len(cmds)} commands, snapshot {result['snapshot_age_commands']} commands old: "
              f"{result['start_seconds_from_checkpoint']} s from the feed checkpoint, "
              f"{result['start_seconds_full_replay']} s replaying the whole WAL")
        print(json.dumps(result))
        return 0 if same else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ================================================================================================
# latency
# ================================================================================================

def _client(port: int, rate: int, seconds: float, conn: Any) -> None:
    """One OUCH session offering `rate` orders/s in 1 ms ticks; sends back the latency histogram."""
    from tools.demo import OuchClient
    from appliance.daemon import choose_cpu
    from appliance.gateway import ouch_layout as L
    from feeds import soupbintcp as soup
    others = set(os.sched_getaffinity(0)) - {choose_cpu(-1)}
    if others:   # beside the gateway, not on the matcher's CPU
        os.sched_setaffinity(0, others)
    c = OuchClient("127.0.0.1", port)
    assert c.login("alfa", "alfa-pw") == b"A"
    c.sock.setblocking(False)
    hist = Histogram()
    sent_at: dict[int, int] = {}
    parser = c.parser
    per_tick = max(1, rate // 1000)
    urn = 0
    rng = random.Random(1)
    t0 = time.perf_counter_ns()
    end = t0 + int(seconds * 1e9)
    tick = t0
    acks = 0
    while True:
        now = time.perf_counter_ns()
        if now >= tick and now < end:
            buf = []
            for _ in range(per_tick):
                urn += 1
                side = urn & 1
                px = 1_500_000 + (rng.randrange(-50, 1) if side == 0 else rng.randrange(0, 51)) * 100
                msg = L.EnterOrder(urn, b"BS"[side:side + 1], 100, b"ALPH    ", px, b"0", b"Y", b"A", b"N", b"N",
                                   b"L%013d" % urn, 0)
                buf.append(soup.encode_unsequenced_data(L.encode(L.ENTER_ORDER, msg)))
            data = b"".join(buf)
            t_send = time.perf_counter_ns()
            for u in range(urn - per_tick + 1, urn + 1):
                sent_at[u] = t_send
            view = memoryview(data)
            while view:
                try:
                    k = c.sock.send(view)
                    view = view[k:]
                except BlockingIOError:
                    time.sleep(0.0001)
            tick += 1_000_000
        try:
            data = c.sock.recv(1 << 18)
        except BlockingIOError:
            data = b""
        if data:
            t_rx = time.perf_counter_ns()
            for kind, payload in parser.feed(data):
                if kind == b"S" and payload[:1] in (b"A", b"J"):
                    u = int.from_bytes(payload[9:13], "big")
                    t = sent_at.pop(u, None)
                    if t is not None:
                        hist.record(t_rx - t)
                        acks += 1
        elif now >= end and (not sent_at or now > end + 5_000_000_000):
            break
        else:
            time.sleep(0.00002)
    conn.send((hist.to_json(), urn, acks, (time.perf_counter_ns() - t0) / 1e9))
    c.sock.setblocking(True)
    c.close()


def _latency_config(root: str, durability: str) -> Config:
    from tools.demo import loopback_config
    from appliance.config import SessionLimits
    c = loopback_config(root, durability=durability)
    firms = tuple(dataclasses.replace(f, limits=FirmLimits(max_qty=1_000_000)) for f in c.firms)
    # The one client offers up to the benchmark's rate: no session budget may throttle it.
    limits = SessionLimits(max_queued_bytes=1 << 28, messages_per_second=10_000_000, burst=20_000_000)
    return dataclasses.replace(c, firms=firms, session_limits=limits)


def _latency(args: argparse.Namespace) -> int:
    from tools.demo import write_config
    rates = args.rate or [10_000, 50_000]
    out: dict[str, Any] = {"benchmark": "latency", "seconds": args.seconds, "durability": args.durability,
                           "rates": {}, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    for rate in rates:
        root = tempfile.mkdtemp(prefix="mw-bench-latency-")
        cfg = _latency_config(root, args.durability)
        path = write_config(cfg, os.path.join(root, "config.toml"))
        state = os.path.join(root, "state")
        log = open(os.path.join(root, "run.log"), "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", path, "--state-dir", state,
                                 "--no-realtime"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready = os.path.join(state, "run", "gw0.ready.json")
            deadline = time.monotonic() + 60
            while not os.path.exists(ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"appliance did not start (see {log.name})")
                time.sleep(0.05)
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            cl = ctx.Process(target=_client, args=(cfg.gateways[0].ouch_port, rate, args.seconds, child))
            cl.start()
            if not parent.poll(args.seconds + 60):
                raise RuntimeError("the client did not finish")
            hj, sent, acks, secs = parent.recv()
            cl.join(10)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            stats = json.load(open(os.path.join(state, "run", "p0.stats.json")))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        h = Histogram.from_json(hj)
        eng = Histogram.from_json(stats["in_engine_histogram"])
        r = {"offered_per_s": rate, "sent": sent, "acked": acks, "achieved_per_s": round(acks / args.seconds),
             "order_to_ack": h.summary_us(), "in_engine": eng.summary_us(),
             "mean_batch": round(stats["stats"]["commands"] / max(stats["stats"]["batches"], 1), 1)}
        out["rates"][str(rate)] = r
        a = r["order_to_ack"]
        e = r["in_engine"]
        print(f"latency @ {rate}/s offered ({acks} acked of {sent}): order-to-ack p50 {a['p50_us']} us, "
              f"p99 {a['p99_us']} us, p99.9 {a['p99_9_us']} us, max {a['max_us']} us; in-engine p50 {e['p50_us']} us, "
              f"p99 {e['p99_us']} us (mean batch {r['mean_batch']})")
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))
    return 0
