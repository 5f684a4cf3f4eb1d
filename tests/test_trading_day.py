"""A trading day through the durable path: admin commands and clock ticks are WAL records, so
recovery (full replay, or a snapshot and the rest) reproduces the day's state and event stream byte
for byte; the audit export lists them; `matchwire bench day` prints the same figures on every run."""
from __future__ import annotations

import datetime
import io
import json
from contextlib import redirect_stdout
from typing import Any

from test_trading_properties import AAA, BBB, SAFEGUARDS, SEC, T0, TIMERS, _day

from appliance.catalogue import ClockTick, Event
from appliance.eventcodec import encode_event
from appliance.matching.rules import TradingRules
from appliance.model import TS_CLOSED
from appliance.recovery import open_partition, recover_state
from appliance.snapshot import EngineSpec
from appliance.wal import WalConfig
from conftest import build
from tools.audit import export
from tools.bench_day import run_day
from tools.cli import main as cli

SPEC = EngineSpec.of([AAA, BBB], {2: 3}, rules=TradingRules.of(SAFEGUARDS, start_state=TS_CLOSED, **TIMERS))


def test_the_day_recovers_from_the_wal_byte_for_byte(tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    cfg = WalConfig(d, segment_bytes=256 << 10, seal_bytes=32 << 10, snapshot_every_events=1000,
                    snapshot_every_seconds=0, snapshots_keep=10)
    p = open_partition(cfg, SPEC).partition
    frames: dict[int, bytes] = {}
    cmds = [build(s) for s in _day(6)]
    now = T0
    for start in range(0, len(cmds), 29):
        batch = cmds[start:start + 29]
        now = max([now] + [c.now_ns for c in batch if isinstance(c, ClockTick)])   # the sequencer's clock
        for seq, ts, _cmd, events in p.process_batch(batch, now):
            frames[seq] = b"".join(encode_event(seq, ts, ev) for ev in events)
        assert p.snapshots is not None
        p.snapshots.wait()   # every snapshot written (none skipped: the test wants one mid-day)
    state = p.engine.state_hash()
    p.close(now + SEC)

    replayed: dict[int, bytes] = {}

    def on(seq: int, ts: int, cmd: Any, events: list[Event]) -> bool:
        replayed[seq] = b"".join(encode_event(seq, ts, ev) for ev in events)
        return False

    rec = recover_state(d, use_snapshots=False, on_command=on)
    assert rec.engine.state_hash() == state and replayed == frames
    rec.engine.check_invariants()
    replayed.clear()
    mid = len(frames) * 2 // 3
    rec = recover_state(d, until_seq=mid, on_command=on)
    assert rec.snapshot is not None and 0 < rec.snapshot.seq < mid
    assert all(replayed[s] == frames[s] for s in replayed)
    assert rec.engine.state_hash() == recover_state(d, use_snapshots=False, until_seq=mid).engine.state_hash()
    # the audit trail shows the auction fills, the state changes and the admin commands
    out = io.StringIO()
    rows = export(d, "jsonl", out)
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert rows == len(events)
    assert {"auction_executed", "trading_state", "auction_uncrossed", "market_event"} <= set(events)


def test_bench_day_is_the_same_on_every_run() -> None:
    a = run_day(3, 40, datetime.date(2026, 1, 5))
    b = run_day(3, 40, datetime.date(2026, 1, 5))
    assert a == b
    phases = {p["phase"]: p for p in a["phases"]}
    assert phases["open"]["itch"].get("Q") == 3 and phases["close"]["itch"].get("Q") == 3
    assert phases["opening auction"]["events"].get("AuctionImbalance", 0) > 0
    assert phases["LULD pause"]["itch"].get("J") == 1
    assert phases["halt and reopening"]["events"].get("AuctionUncrossed") == 1
    assert a["final_states"] == {"ALPH": "closed", "MSFX": "closed", "ORCA": "closed"}
    assert phases["close"]["events"].get("OrderCancelled", 0) > 0   # DAY orders expired
    assert a["resting_end"] > 0                                      # GTC orders carried


def test_matchwire_bench_day_prints_the_hash_last_in_json() -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli(["bench", "day", "--orders-per-minute", "20", "--seed", "1"])
    lines = buf.getvalue().strip().splitlines()
    doc = json.loads(lines[-1])
    assert rc == 0 and lines[-2] == f"state hash {doc['state_hash']}" and doc["benchmark"] == "day"
