"""`matchwire bench matching FLOW.bin` and `matchwire bench memory`: the matching core alone.

The flow is decoded and applied in batches of 1024 commands, as the matching loop drains its ring:
decode a batch into command objects (the ring consumer's work, timed apart as decode_seconds), then
apply it with Engine.apply_batch, its events collected in a fresh list with each command's end. The timed part is apply, events included; fills and filled quantity are read from the engine's counters
afterwards. The cyclic GC is disabled during the run, as in the matching daemon (the engine's objects
hold no cycles).
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
import tempfile
import time
from typing import Any

from appliance.build import build_kind
from appliance.catalogue import Event, NewOrder
from appliance.matching.engine import Engine
from appliance.model import BUY, GTC, LIMIT, SELL, STP_NONE, Instrument
from appliance.snapshot import SnapshotStore, capture
from tools import jsonio
from tools.flows import FLOW_FIRM_STP, FLOW_RECORD, decode_records, flow_instruments, read_flow_bytes

BATCH = 1024


def run_flow(path: str, limit: int = 0) -> dict[str, Any]:
    """The flow (its first ``limit`` commands when > 0) through the engine alone."""
    data, meta = read_flow_bytes(path)
    rec = FLOW_RECORD.size
    n = len(data) // rec
    if 0 < limit < n:
        n = limit
        meta = {}     # the flow's expected results are for the whole flow
    instruments = int(meta["instruments"]) if "instruments" in meta else _max_instrument(data) + 1
    engine = Engine(flow_instruments(instruments), FLOW_FIRM_STP)
    apply_batch = engine.apply_batch
    view = memoryview(data)
    clock = time.perf_counter
    apply_s = 0.0
    decode_s = 0.0
    gc.collect()
    gc.disable()
    try:
        for start in range(0, n, BATCH):
            t0 = clock()
            cmds = decode_records(view[start * rec:min(start + BATCH, n) * rec])
            t1 = clock()
            out: list[Event] = []
            ends: list[int] = []
            apply_batch(cmds, out, ends)
            apply_s += clock() - t1
            decode_s += t1 - t0
    finally:
        gc.enable()
    result: dict[str, Any] = {
        "benchmark": "matching",
        "flow": os.path.basename(path),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "compiled": build_kind() != "cpython",
        "build": build_kind(),
        "events": n,
        "seconds": round(apply_s, 4),
        "events_per_sec": round(n / apply_s),
        "decode_seconds": round(decode_s, 4),
        "fills": engine.next_match - 1,
        "filled_qty": engine.traded_qty,
        "resting_end": engine.resting_count(),
    }
    if meta:
        result["matches_flow_json"] = all(result[k] == meta.get(k) for k in ("events", "fills", "filled_qty", "resting_end"))
    return result


def _max_instrument(data: bytes) -> int:
    return max((r[2] for r in FLOW_RECORD.iter_unpack(data)), default=0)


def _median_of_runs(argv: list[str], runs: int) -> list[dict[str, Any]]:
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-m", "tools.bench_matching", *argv, "--runs", "1"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValueError(f"a run in a fresh process failed (exit {proc.returncode}): {last}")
        results.append(jsonio.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def cmd_matching(args: argparse.Namespace) -> int:
    if args.runs > 1:
        read_flow_bytes(args.flow)   # a missing or wrong file: one line here, not in each child
        results = _median_of_runs(["matching", args.flow, "--limit", str(args.limit)], args.runs)
        for r in results:
            print(jsonio.dumps(r))
        rates = [r["events_per_sec"] for r in results]
        best = dict(results[0])
        best["runs"] = args.runs
        best["events_per_sec"] = round(statistics.median(rates))
        best["events_per_sec_min"] = min(rates)
        best["events_per_sec_max"] = max(rates)
        best["seconds"] = round(statistics.median(r["seconds"] for r in results), 4)
        print(jsonio.dumps(best))
        return 0 if all(r.get("matches_flow_json", True) for r in results) else 1
    result = run_flow(args.flow, args.limit)
    print(jsonio.dumps(result))
    return 0 if result.get("matches_flow_json", True) else 1


def cmd_memory(args: argparse.Namespace) -> int:
    """Peak memory of a book holding N resting orders (default 1M) on one instrument."""
    import resource
    import tracemalloc

    import psutil

    me = psutil.Process()
    n = args.orders
    rss0 = me.memory_info().rss
    tracemalloc.start() if args.tracemalloc else None
    levels = args.levels
    t0 = time.perf_counter()
    engine = _resting_book(n, levels)
    seconds = time.perf_counter() - t0
    rss1 = me.memory_info().rss     # the book is still held: what it occupies now
    # the peak stays getrusage's ru_maxrss (kilobytes): psutil has no high-water mark on Linux
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "benchmark": "memory",
        "resting_orders": engine.resting_count(),
        "levels_per_side": levels,
        "seconds_to_build": round(seconds, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "book_rss_mb": round((rss1 - rss0) / 2**20, 1),
        "bytes_per_order": round((rss1 - rss0) / max(1, n)),
    }
    if args.tracemalloc:
        cur, peak = tracemalloc.get_traced_memory()
        result["tracemalloc_peak_mb"] = round(peak / 2**20, 1)
    print(jsonio.dumps(result))
    return 0


def _resting_book(n: int, levels: int) -> Engine:
    """One instrument with n resting GTC limit orders, alternately bought and sold, on `levels`
    price levels per side."""
    engine = Engine([Instrument("MEM", 1, tick=1)], {1: STP_NONE})
    out: list[Event] = []
    gc.disable()
    try:
        for i in range(n):
            side = BUY if i & 1 else SELL
            off = (i >> 1) % levels
            price = 100_000 - 1 - off if side == BUY else 100_000 + off
            engine.apply(NewOrder(i + 1, 1, side, 100, price, LIMIT, GTC, 0, 1), out)
            if len(out) > 4096:
                out.clear()
    finally:
        gc.enable()
    return engine


def cmd_snapshot(args: argparse.Namespace) -> int:
    """How long a snapshot of a big book holds the matching thread: capturing in the thread (the
    clean-shutdown path) against the fork of the periodic path, whose child captures and writes."""
    engine = _resting_book(args.orders, args.levels)
    t0 = time.perf_counter()
    data = capture(engine, 1, 0, 1)
    in_thread = time.perf_counter() - t0
    directory = tempfile.mkdtemp(prefix="mw-bench-snapshot-")
    try:
        store = SnapshotStore(directory)
        t0 = time.perf_counter()
        store.submit(1, lambda: capture(engine, 1, 0, 1))
        t_submit = time.perf_counter() - t0
        store.wait()
        written = time.perf_counter() - t0
        ok = store.written == [1] and not store.errors
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result = {
        "benchmark": "snapshot", "resting_orders": engine.resting_count(), "snapshot_bytes": len(data),
        "capture_in_thread_ms": round(in_thread * 1e3, 1), "fork_pause_ms": round(store.fork_ns[0] / 1e6, 2),
        "submit_ms": round(t_submit * 1e3, 2), "written_after_ms": round(written * 1e3, 1), "written": ok,
    }
    print(f"snapshot of {result['resting_orders']} orders: {result['capture_in_thread_ms']} ms captured in the "
          f"matching thread, or a {result['fork_pause_ms']} ms fork (child wrote it in {result['written_after_ms']} ms)")
    print(jsonio.dumps(result))
    return 0 if ok else 1


def register(sub: Any) -> None:
    p = sub.add_parser("matching", help="run a standard flow through the matching engine")
    p.add_argument("flow", help="FLOW.bin made by `matchwire flow generate` (FLOW.json beside it)")
    p.add_argument("--runs", type=int, default=1, help="repeat in fresh processes; report the median")
    p.add_argument("--limit", type=int, default=0, help="only the first N commands of the flow (default: all)")
    p.set_defaults(func=cmd_matching)
    m = sub.add_parser("memory", help="peak memory of one book holding N resting orders")
    m.add_argument("--orders", type=int, default=1_000_000)
    m.add_argument("--levels", type=int, default=1000, help="price levels per side")
    m.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    m.set_defaults(func=cmd_memory)
    sn = sub.add_parser("snapshot", help="how long a snapshot of a big book holds the matching thread")
    sn.add_argument("--orders", type=int, default=1_000_000)
    sn.add_argument("--levels", type=int, default=1000, help="price levels per side")
    sn.set_defaults(func=cmd_snapshot)


if __name__ == "__main__":
    # `python -m tools.bench_matching matching FLOW.bin`: the same benchmark without the rest of the
    # command line, so that it also runs on interpreters that only the matching core supports
    # (Debian's PyPy is a Python 3.9 dialect).
    top = argparse.ArgumentParser(prog="python -m tools.bench_matching")
    register(top.add_subparsers(dest="bench", required=True))
    ns = top.parse_args()
    sys.exit(ns.func(ns))
