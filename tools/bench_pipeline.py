"""`matchwire bench pipeline FLOW.bin` and `matchwire bench restart FLOW.bin`: the partition's own paths.

    matchwire bench pipeline FLOW.bin [--limit 200000] [--durability batch] [--max-batch 1024] [--idle yield]

The standard flow pushed through the command ring into a running partition (PartitionDaemon in this
process: ring drain, WAL append + commit under the policy, match, event records to the gateway's
ring, ITCH L3/L2/L1 to loopback multicast, TTL 0). A producer process (spawn) publishes the flow's
commands, encoded beforehand, as fast as the ring takes them, and drains the event ring. Reported:
commands/s from the first batch drained to the last batch released, i.e. at saturation.

`matchwire bench latency` lives in tools/bench_latency.py.

On a shared 2-core VM these figures move with the neighbours' load: quote medians and ratios. The
last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import random
import shutil
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
from appliance.daemon import PartitionDaemon
from appliance.build import build_kind
from appliance.metrics import DUTY_STAGES, format_stages
from appliance.model import STP_NONE
from appliance.procinfo import cpu_line, difference, process_figures
from appliance.risk import FirmLimits
from appliance.ring import Ring, RingError
from tools import jsonio
from tools.flows import FLOW_FIRM, flow_instrument_count, read_flow


LAYOUTS = ("inline", "feed", "feed+wal")


def register(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="the flow through the ring into a running partition (orders/s)")
    p.add_argument("flow")
    p.add_argument("--limit", type=int, default=200_000, help="commands of the flow to push (default 200000)")
    p.add_argument("--durability", default="batch", choices=("batch", "interval", "none"))
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--idle", default="yield", choices=("busy_spin", "yield", "backoff"))
    p.add_argument("--stages", action="store_true", help="time each duty-cycle stage")
    p.add_argument("--stages-as", action="append", choices=LAYOUTS, dest="layouts",
                   help="inline: one process (the default); feed: publishing in a feed stage process; "
                        "feed+wal: the WAL write and fsync in a WAL stage too; repeat to run each in turn")
    p.add_argument("--stage-cpu", type=int, default=-1,
                   help="the feed stage's CPU (-1: one the matcher does not use; give the matcher's to share it)")
    p.set_defaults(func=_pipeline)
    r = sub.add_parser("restart", help="partition start-up after a crash: from a feed checkpoint vs the whole WAL")
    r.add_argument("flow")
    r.add_argument("--limit", type=int, default=1_000_000, help="commands of the flow before the crash")
    r.add_argument("--snapshot-every", type=int, default=0,
                   help="snapshot every N commands (default: limit - 300000, i.e. one 300k commands old)")
    r.set_defaults(func=_restart)


# ================================================================================================
# pipeline
# ================================================================================================

def _flow_config(root: str, instruments: int, durability: str, idle: str, snapshot_every: int = 0,
                 feed_stage: str = "inline", stage_cpu: int = -1, wal_stage: str = "inline",
                 stage_idle: str = "backoff") -> Config:
    base = default()
    rng = random.Random()
    ins = tuple(InstrumentConfig(f"F{i:04d}", i + 1, 1, 100, None, "Q") for i in range(instruments))
    port = rng.randrange(40000, 60000)
    feeds = {ch: FeedChannelConfig(f"239.200.{rng.randrange(255)}.{30 + k}", port + k,
                                   f"239.201.{rng.randrange(255)}.{30 + k}", port + k)
             for k, ch in enumerate(("l3", "l2", "l1"))}
    wal = os.path.join(root, "wal")
    part = PartitionConfig("p0", 0, tuple(i.symbol for i in ins), -1, wal, os.path.join(wal, "snapshots"),
                           durability, 2, snapshot_every, 0, idle, STP_NONE, feeds, feed_stage, wal_stage, stage_idle, stage_cpu)
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
        want = min(8192, n - i)
        put = prod.try_publish_many(records[i:i + want]) if want else 0
        i += put
        block, k = cons.poll_block(1 << 16)
        events += k
        if not want or put < want:
            # Everything is in, or the command ring is full: its 16,384 commands keep the partition
            # busy for tens of ms, and the event ring fills no faster. Top up once a millisecond,
            # leaving the CPU to whatever shares it (a stage process) instead of spinning on it.
            time.sleep(0.001)
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


def _engine_alone(flow: str, limit: int) -> dict[str, Any]:
    """`bench matching` on the same commands, in a fresh process (the engine alone, same build)."""
    proc = subprocess.run([sys.executable, "-m", "tools.bench_matching", "matching", flow, "--limit", str(limit)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"bench matching failed: {proc.stderr[-2000:]}")
    return dict(jsonio.loads(proc.stdout.strip().splitlines()[-1]))


def _pipeline(args: argparse.Namespace) -> int:
    cmds, meta = read_flow(args.flow)
    cmds = cmds[: args.limit]
    records = [C.encode_command(c) for c in cmds]
    runs = [_pipeline_once(args, cmds, meta, records, mode) for mode in (args.layouts or ["inline"])]
    alone = _engine_alone(args.flow, len(cmds))
    for result in runs:
        result["engine_alone_per_s"] = alone["events_per_sec"]
        share = result["orders_per_s"] / alone["events_per_sec"] if alone["events_per_sec"] else 0
        print(f"pipeline [{result['build']}, {result['layout']}]: {result['commands']} commands in "
              f"{result['seconds']} s = {result['orders_per_s']}/s (WAL {args.durability}, mean batch "
              f"{result['mean_batch']}, multicast L3/L2/L1 on loopback); the engine alone on the same commands, "
              f"same run: {alone['events_per_sec']}/s (the pipeline runs at {100 * share:.0f}% of it)")
        for key, label in (("matcher", "matching process"), ("wal_stage", "WAL stage"),
                           ("feed_stage", "feed stage")):
            if key in result["processes"]:
                print("  " + cpu_line(label, result["processes"][key]))
        if result["stages"]:
            print("  matching process by stage:")
            for line in format_stages(result["stages"], DUTY_STAGES):
                print("  " + line)
        if result.get("feed_stage_stages"):
            print("  feed stage by stage:")
            for line in format_stages(result["feed_stage_stages"], DUTY_STAGES):
                print("  " + line)
    for result in runs:
        print(jsonio.dumps(result))
    return 0 if all(r["exit"] == 0 for r in runs) else 1


def _pipeline_once(args: argparse.Namespace, cmds: list[Any], meta: dict[str, Any], records: list[bytes],
                   mode: str) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="mw-bench-pipeline-")
    mask = os.sched_getaffinity(0)   # the daemon pins this process: each run starts from the same mask
    try:
        cfg = _flow_config(root, flow_instrument_count(cmds, meta), args.durability, args.idle,
                           feed_stage="inline" if mode == "inline" else "process", stage_cpu=args.stage_cpu,
                           wal_stage="process" if mode == "feed+wal" else "inline")
        d = PartitionDaemon(cfg, "p0", os.path.join(root, "state"), realtime=False, max_batch=args.max_batch,
                            stage_timing=args.stages)
        d.start()
        before = process_figures(os.getpid())
        rc = _drive(d, cfg, root, records)
        # the matcher (this process) over the run; each stage over its life (forked by start(),
        # reaped by the shutdown: its figures from wait4)
        procs = {**d.process_figures(), "matcher": difference(process_figures(os.getpid()), before)}
        st = d.stats
        end_ns = d.last_batch_ns
        fs = d.feed.read_stats() if d.feed is not None else None
        if fs is not None:   # the pipeline ends when the feed stage has published the last command
            end_ns = max(end_ns, int(fs["last_ns"]))
        secs = (end_ns - d.first_batch_ns) / 1e9
        return {
            "benchmark": "pipeline", "flow": os.path.basename(args.flow), "commands": st["commands"],
            "layout": mode, "feed_stage_ran": d.feed is not None, "wal_stage_ran": d.wal_stage is not None,
            "seconds": round(secs, 3), "orders_per_s": round(st["commands"] / secs) if secs > 0 else 0,
            "matcher_seconds": round((d.last_batch_ns - d.first_batch_ns) / 1e9, 3),
            "batches": st["batches"], "mean_batch": round(st["commands"] / max(st["batches"], 1), 1),
            "records_out": st["records_out"], "durability": args.durability, "idle": args.idle,
            "in_engine_per_batch": d.in_engine.summary_us(), "feed_messages": {
                ch: v["messages_sent"] for ch, v in d.feed_stats().items()},
            "feed_published_commands": fs["commands"] if fs is not None else st["commands"],
            "exit": rc, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0], "build": build_kind(),
            "stages": d.stages.report(st["commands"]) if d.stages is not None else None,
            "feed_stage_stages": fs["stages"] if fs is not None else None,
            "processes": procs,
        }
    finally:
        os.sched_setaffinity(0, mask)
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
        from appliance.gateway.journal import mark_record
        from appliance.gateway.state import gateway_dir
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
        print(jsonio.dumps(result))
        return 0 if same else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
