"""`matchwire bench wal | recovery | crash`: the write-ahead log, recovery and crash benchmarks.

    matchwire bench wal [--dir D] [--seconds S] [--batches 1,16,256] [--policy batch]
        appends/s and commit / fdatasync latency (p50, p99) at each batch size
    matchwire bench recovery --events 3600000 [--flow FLOW.bin] [--dir D] [--snapshot-age 300000]
        builds a WAL from the standard flow (one hot instrument, 1,000 orders/s: one record per ms),
        then times a cold recovery with no snapshot and one from a snapshot `--snapshot-age` events
        old, each in a fresh process (recover_state only, not the interpreter start; the page
        cache is warm); reports replay_events_per_sec, recovery_seconds (wall; also CPU seconds,
        the better figure on a shared box), state_hash_match and the decode / apply split
    matchwire bench crash --runs 100 [--dir D]
        the kill test, longer: start, SIGKILL at a random point, check, again

The last line printed by each is one JSON object. Work files go under ./var (git-ignored) unless
--dir says otherwise; they are removed afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from appliance import wal as walmod
from appliance.catalogue import NewOrder
from appliance.model import BUY, GTC, LIMIT, SELL
from appliance.recovery import recover_state, write_manifest
from appliance.snapshot import EngineSpec, SnapshotStore, capture
from appliance.wal import POLICY_NONE, WalReader, WalWriter
from appliance.walcodec import LAYOUTS, encode_body
from tools import jsonio
from tools.flows import FLOW_FIRM_STP, flow_instrument_count, flow_instruments, read_flow, read_flow_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def _workdir(args: argparse.Namespace, name: str) -> str:
    d = args.dir or os.path.join(REPO, "var", name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def _fs_type(path: str) -> str:
    try:
        out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ================================================================================================
# bench wal
# ================================================================================================


def cmd_wal(args: argparse.Namespace) -> int:
    root = _workdir(args, "bench-wal")
    sizes = [int(x) for x in args.batches.split(",")]
    cmds = [NewOrder(i + 1, 1, BUY if i & 1 else SELL, 100, 10_000 + i % 50, LIMIT, GTC, 0, 1, 7, "ACCOUNT1",
                     "CL%d" % i) for i in range(4096)]
    fsync_times: list[float] = []
    real_sync = walmod._fdatasync

    def timed_sync(fd: int) -> None:
        t = time.perf_counter()
        real_sync(fd)
        fsync_times.append(time.perf_counter() - t)

    results = []
    walmod._fdatasync = timed_sync
    try:
        for size in sizes:
            d = os.path.join(root, "b%d" % size)
            os.makedirs(d)
            w = WalWriter(d, 1, 1, policy=args.policy, segment_bytes=64 << 20)
            fsync_times.clear()
            commits: list[float] = []
            seq = 1
            n = 0
            gc.disable()
            t_end = time.perf_counter() + args.seconds
            t0 = time.perf_counter()
            while True:
                t1 = time.perf_counter()
                if t1 >= t_end:
                    break
                for i in range(size):
                    kind, body = encode_body(cmds[(n + i) & 4095])
                    w.append(seq, 1, 1, kind, body)
                    seq += 1
                w.commit(time.time_ns())
                commits.append(time.perf_counter() - t1)
                n += size
            elapsed = time.perf_counter() - t0
            gc.enable()
            syncs = list(fsync_times)  # not the one at close
            w.close()
            r = {
                "batch": size,
                "appends": n,
                "appends_per_sec": round(n / elapsed),
                "commits": len(commits),
                "commit_p50_us": round(_pct(commits, 0.5) * 1e6, 1),
                "commit_p99_us": round(_pct(commits, 0.99) * 1e6, 1),
                "fsyncs": len(syncs),
                "fsync_p50_us": round(_pct(syncs, 0.5) * 1e6, 1),
                "fsync_p99_us": round(_pct(syncs, 0.99) * 1e6, 1),
            }
            print(jsonio.dumps(r))
            results.append(r)
    finally:
        walmod._fdatasync = real_sync
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(jsonio.dumps({
        "benchmark": "wal",
        "policy": args.policy,
        "filesystem": _fs_type(REPO if not args.dir else os.path.dirname(os.path.abspath(args.dir))),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "record_bytes": LAYOUTS[NewOrder.KIND].size,
        "results": results,
    }))
    return 0


# ================================================================================================
# bench recovery
# ================================================================================================


def _find_or_make_flow(args: argparse.Namespace) -> str:
    if args.flow:
        return str(args.flow)
    flows = os.path.join(REPO, "flows")
    os.makedirs(flows, exist_ok=True)
    for name in sorted(os.listdir(flows)):
        if name.endswith(".json"):
            try:
                with open(os.path.join(flows, name)) as f:
                    meta = jsonio.loads(f.read())
            except (OSError, ValueError):
                continue
            if (meta.get("events") == args.events and meta.get("instruments", 1) == 1
                    and meta.get("seed") == 42 and meta.get("target_resting_per_instrument") == 5000
                    and os.path.exists(os.path.join(flows, name[:-5] + ".bin"))):
                return os.path.join(flows, name[:-5] + ".bin")
    out = os.path.join(flows, "recovery-%d" % args.events)
    if args.flowgen:   # another generator of the same format, run as `FLOWGEN OUT --events ...`
        print(f"generating {out}.bin with {args.flowgen} ...", file=sys.stderr)
        subprocess.run([sys.executable, args.flowgen, out, "--events", str(args.events), "--seed", "42",
                        "--target", "5000"], check=True, stdout=subprocess.DEVNULL)
    else:
        from tools.flowgen import write_flow
        print(f"generating {out}.bin (matchwire flow generate) ...", file=sys.stderr)
        write_flow(out, args.events, seed=42, target=5000)
    return out + ".bin"


def build_wal(flow: str, waldir: str, snapshot_at: int, t0_ns: int = 1_767_600_000_000_000_000) -> dict[str, Any]:
    """Log a flow as one record per millisecond (ts_ns); snapshot at seq snapshot_at; return the live hash."""
    cmds, meta = read_flow(flow)
    spec = EngineSpec.of(flow_instruments(flow_instrument_count(cmds, meta)), FLOW_FIRM_STP)
    write_manifest(waldir, spec)
    engine = spec.build()
    store = SnapshotStore(os.path.join(waldir, "snapshots"), keep=3)
    w = WalWriter(waldir, 1, 1, policy=POLICY_NONE, segment_bytes=16 << 20)  # build only; synced at the end
    apply = engine.apply
    out: list[Any] = []
    t = time.perf_counter()
    gc.disable()
    n = len(cmds)
    append = w.append
    for i, cmd in enumerate(cmds):
        seq = i + 1
        kind, body = encode_body(cmd)
        append(seq, t0_ns + i * 1_000_000, 1, kind, body)
        if seq % 1000 == 0:
            w.commit(0)
        apply(cmd, out)
        out.clear()
        if seq == snapshot_at:
            w.commit(0)
            store.write(seq, capture(engine, seq, t0_ns + i * 1_000_000, 1))
    w.sync(0)
    w.close()
    gc.enable()
    size = sum(os.path.getsize(os.path.join(waldir, f)) for f in os.listdir(waldir) if f.endswith(".seg"))
    return {
        "events": n,
        "build_seconds": round(time.perf_counter() - t, 2),
        "wal_bytes": size,
        "segments": len([f for f in os.listdir(waldir) if f.endswith(".seg")]),
        "live_state_hash": engine.state_hash(),
        "fills_match_flow_json": engine.next_match - 1 == meta.get("fills", engine.next_match - 1),
    }


def _recover_child(waldir: str, mode: str) -> dict[str, Any]:
    """Runs in a fresh process: one timed recovery (or a decode-only pass)."""
    if mode == "decode":
        gc.disable()
        t = time.perf_counter()
        c = time.process_time()
        n = 0
        for _first, cmds in WalReader(waldir).batches(0):
            n += len(cmds)
        return {"mode": mode, "events": n, "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c}
    t = time.perf_counter()
    c = time.process_time()
    rec = recover_state(waldir, use_snapshots=(mode == "snapshot"))
    seconds = time.perf_counter() - t
    return {
        "mode": mode, "seconds": seconds, "cpu_seconds": time.process_time() - c, "replayed": rec.replayed,
        "last_seq": rec.last_seq,
        "snapshot_seq": rec.snapshot.seq if rec.snapshot else None, "state_hash": rec.engine.state_hash(),
    }


def _run_child(waldir: str, mode: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "tools.bench_wal", "_recover", waldir, mode],
                          capture_output=True, text=True, check=True, cwd=REPO)
    result: dict[str, Any] = jsonio.loads(proc.stdout.strip().splitlines()[-1])
    return result


def cmd_recovery(args: argparse.Namespace) -> int:
    flow = _find_or_make_flow(args)
    read_flow_bytes(flow)    # a missing or malformed flow: one line (tools.cli), before any work directory
    root = _workdir(args, "bench-recovery")
    waldir = os.path.join(root, "wal")
    os.makedirs(waldir)
    try:
        with open(flow.replace(".bin", ".json")) as f:
            events = int(jsonio.loads(f.read()).get("events", args.events))
        snapshot_at = max(1, events - args.snapshot_age)
        built = build_wal(flow, waldir, snapshot_at)
        print(jsonio.dumps({"built": built}))
        runs = []
        for _ in range(args.runs):
            full = _run_child(waldir, "full")
            snap = _run_child(waldir, "snapshot")
            dec = _run_child(waldir, "decode")
            runs.append((full, snap, dec))
            print(jsonio.dumps({"full": full, "snapshot": snap, "decode": dec}))
        full_cpu = statistics.median(r[0]["cpu_seconds"] for r in runs)
        snap_cpu = statistics.median(r[1]["cpu_seconds"] for r in runs)
        full_s = statistics.median(r[0]["seconds"] for r in runs)
        snap_s = statistics.median(r[1]["seconds"] for r in runs)
        dec_s = statistics.median(r[2]["seconds"] for r in runs)
        match = all(r[0]["state_hash"] == built["live_state_hash"] == r[1]["state_hash"] for r in runs)
        n = built["events"]
        print(jsonio.dumps({
            "benchmark": "recovery",
            "events": n,
            "flow": os.path.basename(flow),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "runs": args.runs,
            "recovery_seconds": round(full_s, 3),
            "replay_events_per_sec": round(n / full_s),
            "decode_seconds": round(dec_s, 3),
            "decode_events_per_sec": round(n / dec_s),
            "apply_seconds_est": round(full_s - dec_s, 3),
            "recovery_cpu_seconds": round(full_cpu, 3),
            "snapshot_age_events": n - snapshot_at,
            "recovery_seconds_snapshot": round(snap_s, 3),
            "recovery_cpu_seconds_snapshot": round(snap_cpu, 3),
            "snapshot_replayed": runs[0][1]["replayed"],
            "state_hash_match": match,
            "wal_bytes": built["wal_bytes"],
            "build_seconds": built["build_seconds"],
        }))
        return 0 if match else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


# ================================================================================================
# bench crash
# ================================================================================================


def cmd_crash(args: argparse.Namespace) -> int:
    from tools.killworker import CrashCheckFailed, crash_runs

    root = _workdir(args, "bench-crash")
    try:
        result = crash_runs(os.path.join(root, "wal"), args.runs, seed=args.seed, max_delay_s=args.max_delay,
                            rng_seed=args.seed + 1, log=(lambda m: print(m, file=sys.stderr)) if args.verbose else None)
    except CrashCheckFailed as e:
        print(jsonio.dumps({"benchmark": "crash", "ok": False, "error": str(e)}))
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["benchmark"] = "crash"
    print(jsonio.dumps(result))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("wal", help="WAL appends/s and fsync latency at batch sizes 1, 16, 256")
    p.add_argument("--dir", default=None, help="work directory (default ./var/bench-wal)")
    p.add_argument("--seconds", type=float, default=1.5, help="per batch size (default 1.5)")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--policy", default="batch", choices=walmod.POLICIES)
    p.add_argument("--keep", action="store_true")
    p.set_defaults(func=cmd_wal)
    r = sub.add_parser("recovery", help="cold recovery time, without and with a recent snapshot")
    r.add_argument("--events", type=int, default=3_600_000)
    r.add_argument("--flow", default=None, help="FLOW.bin (default: flows/ with these events, else generated)")
    r.add_argument("--flowgen", default=None, help="another flow generator script (default: matchwire flow generate)")
    r.add_argument("--snapshot-age", type=int, default=300_000, help="events after the snapshot (5 min)")
    r.add_argument("--runs", type=int, default=1, help="timed recoveries (median)")
    r.add_argument("--dir", default=None, help="work directory (default ./var/bench-recovery)")
    r.add_argument("--keep", action="store_true")
    r.set_defaults(func=cmd_recovery)
    c = sub.add_parser("crash", help="SIGKILL a loaded partition at random points, recover and check")
    c.add_argument("--runs", type=int, default=100)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-delay", type=float, default=0.5, help="kill within this many seconds of the start")
    c.add_argument("--dir", default=None, help="work directory (default ./var/bench-crash)")
    c.add_argument("--keep", action="store_true")
    c.add_argument("--verbose", action="store_true")
    c.set_defaults(func=cmd_crash)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_recover":
        print(jsonio.dumps(_recover_child(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    sys.exit("usage: matchwire bench wal | recovery | crash")
