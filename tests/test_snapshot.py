"""Snapshots: the restored engine has the same state hash and behaves the same from then on."""
from __future__ import annotations

import os
import time

import pytest

from appliance.catalogue import Event, NewOrder
from appliance.eventcodec import encode_events
from appliance.matching.engine import Engine
from appliance.model import BUY, GTC, LIMIT, SELL, STOP, STP_NONE, Instrument
from appliance.snapshot import (
    SNAP_HEADER_SIZE,
    EngineSpec,
    attribute_names,
    SnapshotError,
    SnapshotStore,
    capture,
    list_snapshots,
    load_newest,
    read_header,
    restore,
    snapshot_name,
)
from tools.killworker import STREAM_SPEC, command_at


def run(engine: Engine, first: int, last: int, seed: int = 0) -> list[bytes]:
    """Apply command_at(first..last); the canonical bytes of each command's events."""
    out: list[bytes] = []
    for s in range(first, last + 1):
        ev: list[Event] = []
        engine.apply(command_at(s, seed), ev)
        out.append(encode_events(s, 0, ev))
    return out


def int_counters(engine: Engine) -> dict[str, int]:
    from appliance.snapshot import _ENGINE_SKIP
    return {k: getattr(engine, k) for k in attribute_names(type(engine), engine)
            if type(getattr(engine, k, None)) is int and k not in _ENGINE_SKIP}


@pytest.mark.parametrize("seed, at", [(0, 0), (0, 1), (0, 700), (1, 2500), (2, 4000), (7, 6000)])
def test_restored_engine_has_the_same_hash_and_the_same_future(seed, at) -> None:
    live = STREAM_SPEC.build()
    run(live, 1, at, seed)
    data = capture(live, at, 123, 4)
    restored, info = restore(data, STREAM_SPEC)
    assert info.seq == at and info.ts_ns == 123 and info.epoch == 4
    assert restored.state_hash() == live.state_hash() == info.state_hash
    assert int_counters(restored) == int_counters(live)
    assert run(restored, at + 1, at + 1500, seed) == run(live, at + 1, at + 1500, seed)
    assert restored.state_hash() == live.state_hash()


def test_a_snapshot_of_a_restored_engine_is_the_same_file() -> None:
    live = STREAM_SPEC.build()
    run(live, 1, 3000)
    data = capture(live, 3000, 1, 1)
    again = capture(restore(data)[0], 3000, 1, 1)
    assert again == data


def test_pending_stops_and_deep_books_survive() -> None:
    eng = Engine([Instrument("AAA", 1, tick=1), Instrument("BBB", 7, tick=5)], {1: STP_NONE})
    out: list[Event] = []
    oid = 0
    for i in range(200):
        for locate, tick in ((1, 1), (7, 5)):
            oid += 1
            eng.apply(NewOrder(oid, locate, BUY, 100, (1000 - i % 40) * tick, LIMIT, GTC, 0, 1, 2,
                               "ACC", "c%d" % oid), out)
            oid += 1
            eng.apply(NewOrder(oid, locate, SELL, 100, (1100 + i % 40) * tick, LIMIT, GTC, 0, 1, 2, "", "", "MPID"), out)
            oid += 1
            eng.apply(NewOrder(oid, locate, BUY, 100, 0, STOP, GTC, (1050 + i % 30) * tick, 1), out)
    restored, _ = restore(capture(eng, 1, 0, 1))
    assert restored.state_hash() == eng.state_hash()
    assert len(restored.pending_stops) == len(eng.pending_stops) == 400
    assert [(o.account, o.cl_ord_id, o.mpid) for o in restored.book(1).orders_in_priority(BUY)][:2] == \
        [(o.account, o.cl_ord_id, o.mpid) for o in eng.book(1).orders_in_priority(BUY)][:2]
    restored.check_invariants()


@pytest.mark.parametrize("where", [0, 9, 30, SNAP_HEADER_SIZE + 2, SNAP_HEADER_SIZE + 500, -3])
def test_a_damaged_snapshot_is_refused(where) -> None:
    live = STREAM_SPEC.build()
    run(live, 1, 2000)
    data = bytearray(capture(live, 2000, 0, 1))
    data[where] ^= 0x41
    with pytest.raises(SnapshotError):
        restore(bytes(data))


def test_a_truncated_snapshot_or_another_engines_is_refused() -> None:
    live = STREAM_SPEC.build()
    run(live, 1, 500)
    data = capture(live, 500, 0, 1)
    for cut in (0, 10, SNAP_HEADER_SIZE, len(data) - 1):
        with pytest.raises(SnapshotError):
            restore(data[:cut])
    other = EngineSpec.of([Instrument("ZZZ", 1, tick=1)])
    with pytest.raises(SnapshotError, match="another engine configuration"):
        restore(data, other)


def test_store_writes_atomically_keeps_the_newest_and_loads_the_newest_good_one(tmp_path) -> None:
    d = str(tmp_path / "snaps")
    os.makedirs(d)
    open(os.path.join(d, "snap-00000000000000000009.snap.tmp"), "wb").write(b"half")
    store = SnapshotStore(d, keep=2)
    assert not any(n.endswith(".tmp") for n in os.listdir(d))   # a write cut short by a crash
    live = STREAM_SPEC.build()
    hashes = {}
    for seq in (100, 200, 300):
        run(live, seq - 99, seq)
        hashes[seq] = live.state_hash()
        store.write(seq, capture(live, seq, seq, 1))
    assert [s for s, _ in list_snapshots(d)] == [300, 200]
    notes: list[str] = []
    newest = load_newest(d, STREAM_SPEC, None, notes)
    assert newest is not None
    eng, info = newest
    assert info.seq == 300 and eng.state_hash() == hashes[300]
    with open(os.path.join(d, "snap-%020d.snap" % 300), "r+b") as f:
        f.seek(SNAP_HEADER_SIZE + 100)
        f.write(b"XXXX")
    newest = load_newest(d, STREAM_SPEC, None, notes)
    assert newest is not None
    eng, info = newest
    assert info.seq == 200 and eng.state_hash() == hashes[200]
    assert any("unusable snapshot" in n for n in notes)
    assert load_newest(d, STREAM_SPEC, 150, notes) is None
    assert read_header(open(os.path.join(d, "snap-%020d.snap" % 200), "rb").read()).seq == 200


def test_a_forked_writer_captures_the_engine_as_it_was_and_writes_do_not_queue_up(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path), keep=5)
    live = STREAM_SPEC.build()
    run(live, 1, 300)
    at_300 = live.state_hash()

    def slow_capture() -> bytes:   # runs in the child, on its copy of the engine
        time.sleep(0.5)
        return capture(live, 300, 0, 1)
    assert store.submit(300, slow_capture)
    run(live, 301, 400)                      # the parent goes on matching meanwhile
    assert store.busy
    assert not store.submit(301, lambda: capture(live, 301, 0, 1))   # skipped, not queued
    store.wait()
    assert not store.busy and store.written == [300] and store.errors == []
    with open(os.path.join(str(tmp_path), snapshot_name(300)), "rb") as f:
        engine, info = restore(f.read())
    assert info.seq == 300 and engine.state_hash() == at_300 != live.state_hash()
    assert store.submit(400, lambda: capture(live, 400, 0, 1))
    store.close()
    assert store.written == [300, 400] and len(store.fork_ns) == 2


def test_a_failing_forked_writer_is_reported_and_leaves_no_file(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))

    def broken() -> bytes:
        raise OSError(28, "No space left on device")
    assert store.submit(7, broken)
    store.wait()
    assert store.written == [] and len(store.errors) == 1 and "seq 7" in store.errors[0]
    assert os.listdir(str(tmp_path)) == []


# -- trading states ---------------------------------------------------------------------------------
def _trading_day() -> tuple[EngineSpec, list]:
    from test_trading_properties import AAA, BBB, SAFEGUARDS, TIMERS, _day

    from appliance.matching.rules import TradingRules
    from appliance.model import TS_CLOSED
    from conftest import build

    rules = TradingRules.of(SAFEGUARDS, start_state=TS_CLOSED, **TIMERS)
    return EngineSpec.of([AAA, BBB], {2: STP_NONE}, rules=rules), [build(s) for s in _day(3)]


def test_a_trading_day_restores_at_every_phase_with_the_same_future() -> None:
    """Snapshots in pre-open, auctions (collected market orders), halts, pauses and continuous trading:
    the restored engine has the same hash, the same trading fields and the same events after."""
    spec, cmds = _trading_day()
    live = spec.build()
    seen_states = set()
    snaps = []
    for i, cmd in enumerate(cmds):
        live.apply(cmd, [])
        if i % 97 == 0:
            seen_states.add(tuple(b.state for b in live.book_list))
            snaps.append((i, capture(live, i + 1, 0, 1)))
    assert len({s for states in seen_states for s in states}) >= 5   # the day went through many states
    live.check_invariants()
    for i, data in snaps[::3]:
        restored, _ = restore(data, spec)
        restored.check_invariants()
        replay = spec.build()
        for cmd in cmds[: i + 1]:
            replay.apply(type(cmd)(**{n: getattr(cmd, n) for n, _ in cmd.FIELDS}), [])
        assert restored.state_hash() == replay.state_hash()
        for b1, b2 in zip(restored.book_list, replay.book_list):
            names = attribute_names(type(b1))
            assert [getattr(b1, n) for n in names if type(getattr(b1, n, None)) is int] == \
                   [getattr(b2, n) for n in names if type(getattr(b2, n, None)) is int]
            assert b1.mkt_key == b2.mkt_key
            assert [o.order_id for o in b1.mkt[0] + b1.mkt[1]] == [o.order_id for o in b2.mkt[0] + b2.mkt[1]]
        for j in range(i + 1, min(i + 400, len(cmds))):
            c = cmds[j]
            a: list[Event] = []
            b: list[Event] = []
            restored.apply(type(c)(**{n: getattr(c, n) for n, _ in c.FIELDS}), a)
            replay.apply(type(c)(**{n: getattr(c, n) for n, _ in c.FIELDS}), b)
            assert encode_events(j, 0, a) == encode_events(j, 0, b), j
        assert restored.state_hash() == replay.state_hash()


def test_a_collected_market_order_survives_a_snapshot() -> None:
    from appliance.catalogue import ClockTick, Halt
    from appliance.matching.rules import InstrumentRules, TradingRules
    from appliance.model import MARKET

    spec = EngineSpec.of([Instrument("AAA", 1, tick=1)], rules=TradingRules.of({1: InstrumentRules(100, band_bps=500)}))
    eng = spec.build()
    out: list[Event] = []
    for cmd in (ClockTick(10**18), Halt(1), NewOrder(1, 1, BUY, 10, 0, MARKET), NewOrder(2, 1, SELL, 5, 0, MARKET, GTC)):
        eng.apply(cmd, out)
    data = capture(eng, 4, 0, 1)
    assert read_header(data).seq == 4
    restored, _ = restore(data, spec)
    assert [len(b.mkt[0]) + len(b.mkt[1]) for b in restored.book_list] == [2]
    assert restored.state_hash() == eng.state_hash()
    assert capture(restored, 4, 0, 1) == data
    with pytest.raises(SnapshotError, match="another engine configuration"):
        restore(data, EngineSpec.of([Instrument("AAA", 1, tick=1)]))


def test_the_spec_with_rules_round_trips_through_json() -> None:
    spec, _ = _trading_day()
    assert EngineSpec.from_json(spec.to_json()) == spec
    plain = EngineSpec.of([Instrument("AAA", 1)])
    assert "rules" not in plain.to_json() and EngineSpec.from_json(plain.to_json()) == plain


def test_a_version_1_snapshot_still_restores() -> None:
    """Version 1 had no collected market orders section (and no trading states in its counters)."""
    import struct
    import zlib

    from appliance.snapshot import SNAP_HEADER

    live = STREAM_SPEC.build()
    run(live, 1, 800)
    data = capture(live, 800, 5, 1)
    fields = list(SNAP_HEADER.unpack_from(data))
    from appliance.snapshot import _ENDED
    v3 = 4 + len(live.ended_orders()) * _ENDED.size
    payload = data[SNAP_HEADER_SIZE:-4 - v3]       # without the (empty) version 2 and the 3 sections
    assert data[-4 - v3:-v3] == struct.pack("<I", 0)
    fields[1] = 1
    fields[6] = len(payload)
    fields[7] = zlib.crc32(payload)
    head = SNAP_HEADER.pack(*fields[:-1], 0)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    restored, info = restore(head + payload, STREAM_SPEC)
    assert restored.state_hash() == live.state_hash() == info.state_hash


def test_bench_snapshot_prints_both_pauses_and_writes_the_file() -> None:
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "tools", "bench", "snapshot", "--orders", "4000", "--levels", "50"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["benchmark"] == "snapshot" and r["resting_orders"] == 4000 and r["written"] is True
    assert r["capture_in_thread_ms"] > 0 and r["fork_pause_ms"] > 0 and r["snapshot_bytes"] > 4000 * 100


def test_ended_orders_are_recalled_after_a_restore() -> None:
    """A cancel of an order that ended before the snapshot is "too late" on the restored engine too."""
    from appliance import reasons as R
    from appliance.catalogue import CancelOrder, Ev
    eng = Engine([Instrument("AAA", 1, tick=1)], {1: STP_NONE})
    out: list[Event] = []
    eng.apply(NewOrder(1, 1, SELL, 100, 1000, firm=1), out)
    eng.apply(NewOrder(2, 1, BUY, 100, 1000, firm=1), out)     # both fill
    eng.apply(NewOrder(3, 1, BUY, 50, 900, firm=1), out)
    eng.apply(CancelOrder(3, 1), out)
    eng.apply(NewOrder(4, 1, BUY, 50, 900, firm=1), out)       # live
    assert [e[0] for e in eng.ended_orders()] == [1, 2, 3]
    restored, _ = restore(capture(eng, 5, 1, 1))
    assert restored.ended_orders() == eng.ended_orders()
    for oid, want in ((1, R.TOO_LATE_FILLED), (2, R.TOO_LATE_FILLED), (3, R.TOO_LATE_CANCELLED), (9, R.UNKNOWN_ORDER)):
        for e in (eng, restored):
            out = []
            e.apply(CancelOrder(oid, 1), out)
            assert [(ev[0], ev[2]) for ev in out] == [(Ev.REJECTED, want)], oid
