"""`matchwire bench fix-state`: what persisting a FIX session costs per flush, early and late in a day.

    matchwire bench fix-state [--small 1000] [--large 1000000] [--flushes 2000] [--old-large 100000]

One FixSession as the gateway runs it (its sent messages in a file-backed store, its state
journalled as increments, appliance/gateway/journal.py), brought to the state it has after
``--small`` and after ``--large`` messages sent (the store holding that many messages, the ClOrdID
window filled as that many orders would), then driven through ``--flushes`` cycles of one order in,
one ExecutionReport out. Timed per cycle: the flush alone (store append, journal increments, one
journal write), side by side for the two states in the same run; and the compaction of the state at
the size bound, amortized over the flushes between two compactions. For comparison, the layout it
replaced: the whole state rewritten as JSON (temp file + rename) on every flush, with every ClOrdID
and the sent messages in memory, after ``--small`` and ``--old-large`` messages (a million would
take a second per flush and hundreds of MB). Also printed: the bytes the journal takes per flush and
what the session's state holds in memory. The last line printed is one JSON object.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import shutil
import statistics
import time
import tracemalloc
from typing import Any

from appliance.catalogue import Ev, NewOrder
from appliance.fsutil import atomic_write
from appliance.gateway.fix import CL_ORD_ID_WINDOW, FixSession, FixSessionConfig, FixSessionState
from appliance.gateway.fixcodec import encode
from appliance.gateway.journal import (
    COMPACT_BYTES,
    fix_increments,
    fix_snapshot,
    mark_record,
    write_journal,
)
from appliance.gateway.store import FixSentStore, MessageStore
from appliance.model import Instrument
from tools import jsonio

SID = 1 | 1 << 30
INS = [Instrument("AAPL", 1, 100)]


class _Peer:
    def __init__(self) -> None:
        self.seq = 1

    def msg(self, mt: str, *fields: tuple[int, Any]) -> bytes:
        raw = encode(mt, [(49, "CLNT"), (56, "MWX"), (34, self.seq), (52, "20261207-10:00:00.000"), *fields])
        self.seq += 1
        return raw

    def order(self, cl: str) -> bytes:
        return self.msg("D", (11, cl), (55, "AAPL"), (54, "1"), (60, "20261207-10:00:00.000"), (38, 100),
                        (40, "2"), (44, "100.00"), (59, "0"))


def _logged_on(state: FixSessionState) -> tuple[FixSession, _Peer]:
    s = FixSession(FixSessionConfig(SID, "MWX", "CLNT", 1), state, INS)
    p = _Peer()
    p.seq = state.next_in
    s.connection_made(0)
    s.receive_data(p.msg("A", (98, 0), (108, 30)), 0)
    s.data_to_send()
    return s, p


def _aged_state(n: int, sent: Any, sample: bytes) -> FixSessionState:
    """A state as after ``n`` messages sent (about n / 2 orders, each entered and accepted)."""
    st = FixSessionState()
    st.sent = sent
    if isinstance(sent, FixSentStore):
        batch = [sample] * 10_000
        left = n
        while left:
            k = min(left, len(batch))
            sent.store.append_messages(batch[:k])
            left -= k
    else:
        for i in range(1, n + 1):     # distinct strings, as the session made them
            sent[i] = (sample + b"%d" % i).decode("latin-1")
    orders = n // 2
    st.next_out = n + 1
    st.next_in = orders + 1
    st.next_order = orders + 1
    st.next_exec = orders + 1
    st.restore_cl_ord_ids((f"OLD{i:09d}", (SID << 32) | (i + 1)) for i in range(orders))
    return st


def _cycle_costs(s: FixSession, p: _Peer, journal: str, flushes: int, tag: str) -> tuple[list[int], list[int]]:
    """(ns per flush, journal bytes per flush) over ``flushes`` order/report cycles."""
    st = s.state
    store: MessageStore = st.sent.store
    recs: list[bytes] = []
    seqs = fix_snapshot(SID, st, recs)
    recs.append(mark_record({0: 0}))
    fd = write_journal(journal, recs)
    times: list[int] = []
    sizes: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(flushes):
            s.receive_data(p.order(f"{tag}{i:09d}"), i)
            for cmd in s.take_commands():
                assert isinstance(cmd, NewOrder), cmd   # the peer sends only NewOrderSingle
                cmd.ref = i + 1
                s.on_events(i, [(Ev.ACCEPTED, cmd, cmd.qty)], i)
            s.data_to_send()
            t0 = clock()
            store.flush()
            out: list[bytes] = []
            seqs = fix_increments(SID, st, seqs, out)
            out.append(mark_record({0: i + 1}))
            data = b"".join(out)
            os.write(fd, data)
            times.append(clock() - t0)
            sizes.append(len(data))
    finally:
        os.close(fd)
    return times, sizes


def _compaction_ns(st: FixSessionState, journal: str) -> int:
    t0 = time.perf_counter_ns()
    recs: list[bytes] = []
    fix_snapshot(SID, st, recs)
    recs.append(mark_record({0: 0}))
    os.close(write_journal(journal, recs))
    return time.perf_counter_ns() - t0


def _old_flush_ns(st: FixSessionState, path: str, runs: int) -> int:
    """The replaced layout: the whole state minus the sent messages, as JSON, temp file + rename."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        obj = st.to_json_obj()
        del obj["sent"]
        atomic_write(path, json.dumps({"state": obj, "applied": {"0": 1}}).encode(), durable=False)
        times.append(time.perf_counter_ns() - t0)
    return int(statistics.median(times))


def _state_bytes(build: Any) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return obj, after - before


def cmd_fix_state(args: Any) -> int:
    for name in ("small", "large", "flushes", "old_large", "old_runs"):
        if getattr(args, name) <= 0:
            sys.stderr.write(f"matchwire bench fix-state: --{name.replace('_', '-')} must be positive\n")
            return 2
    work = os.path.abspath(args.dir or os.path.join("var", "bench-fix-state"))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        probe, pp = _logged_on(FixSessionState())
        probe.receive_data(pp.order("SAMPLE"), 0)
        for cmd in probe.take_commands():
            assert isinstance(cmd, NewOrder), cmd
            cmd.ref = 1
            probe.on_events(0, [(Ev.ACCEPTED, cmd, cmd.qty)], 0)
        sample = [v for k, v in sorted(probe.state.sent.items())][-1].encode("latin-1")
        result: dict[str, Any] = {"bench": "fix-state", "flushes": args.flushes, "message_bytes": len(sample),
                                  "cl_ord_id_window": CL_ORD_ID_WINDOW, "compact_bytes": COMPACT_BYTES}
        rows = []
        for n in (args.small, args.large):
            d = os.path.join(work, f"n{n}")
            os.makedirs(d)
            store = MessageStore(d, b"%010d" % SID, "fix-CLNT")
            st, mem = _state_bytes(lambda: _aged_state(n, FixSentStore(store), sample))
            s, p = _logged_on(st)
            times, sizes = _cycle_costs(s, p, os.path.join(d, "journal.bin"), args.flushes, "N")
            compact = _compaction_ns(s.state, os.path.join(d, "journal.bin"))
            per_flush = statistics.mean(sizes)
            amortized = compact / (COMPACT_BYTES / per_flush)
            rows.append({"messages": n, "flush_us_p50": statistics.median(times) / 1e3,
                         "flush_us_mean": statistics.mean(times) / 1e3,
                         "journal_bytes_per_flush": per_flush, "compaction_ms": compact / 1e6,
                         "compaction_us_per_flush_amortized": amortized / 1e3,
                         "state_memory_bytes": mem, "cl_ord_ids": len(s.state.cl_ord_ids),
                         "store_bytes_on_file": store.size})
            store.close()
        result["journalled"] = rows
        old = []
        for n in (args.small, args.old_large):
            st, mem = _state_bytes(lambda: _aged_state(n, {}, sample))
            st.set_cl_window(1 << 62)   # the old layout kept every ClOrdID of the day
            st.restore_cl_ord_ids((f"OLD{i:09d}", (SID << 32) | (i + 1)) for i in range(n // 2))
            old.append({"messages": n, "flush_us_p50": _old_flush_ns(st, os.path.join(work, "old.json"),
                                                                     args.old_runs) / 1e3,
                        "state_memory_bytes": mem})
            del st
        result["whole_file_rewrite"] = old
        print(f"FIX session state per flush (one order in, one ExecutionReport out; {args.flushes} flushes)")
        print(f"{'':34}{'after ' + format(args.small, ','):>18}{'after ' + format(args.large, ','):>20}")
        a, b = rows

        def line(label: str, key: str, fmt: str) -> None:
            print(f"{label:34}{format(a[key], fmt):>18}{format(b[key], fmt):>20}")

        line("journalled flush p50 (us)", "flush_us_p50", ".1f")
        line("journalled flush mean (us)", "flush_us_mean", ".1f")
        line("journal bytes per flush", "journal_bytes_per_flush", ".1f")
        line("compaction (ms)", "compaction_ms", ".1f")
        line("compaction per flush, amortized (us)", "compaction_us_per_flush_amortized", ".2f")
        line("ClOrdIDs remembered", "cl_ord_ids", ",")
        line("state in memory (bytes)", "state_memory_bytes", ",")
        line("sent messages on file (bytes)", "store_bytes_on_file", ",")
        o1, o2 = old
        print(f"whole-file rewrite (replaced): p50 {o1['flush_us_p50']:.1f} us after {o1['messages']:,} messages, "
              f"{o2['flush_us_p50']:.1f} us after {o2['messages']:,} "
              f"(state in memory {o1['state_memory_bytes']:,} and {o2['state_memory_bytes']:,} bytes)")
        print(jsonio.dumps(result))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def register(sub: Any) -> None:
    p = sub.add_parser("fix-state", help="FIX session persistence per flush after 1k and 1M messages")
    p.add_argument("--small", type=int, default=1_000, help="messages sent before the first measure")
    p.add_argument("--large", type=int, default=1_000_000, help="messages sent before the second measure")
    p.add_argument("--flushes", type=int, default=2000, help="timed flushes per state")
    p.add_argument("--old-large", type=int, default=100_000,
                   help="messages before the second measure of the replaced whole-file rewrite")
    p.add_argument("--old-runs", type=int, default=5, help="timed whole-file rewrites per state (median)")
    p.add_argument("--dir", default=None, help="work directory (default ./var/bench-fix-state)")
    p.add_argument("--keep", action="store_true")
    p.set_defaults(func=cmd_fix_state)
