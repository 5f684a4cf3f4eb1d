"""The order image and the event layouts are persistent or compared across processes: their bytes
never change by accident.

The WAL, snapshots, the gateway rings and the canonical event frames (replay hashes, audit) each
encode orders and events from the catalogue's declarations. These tests pin the struct formats
each encoding had when its layout was first declared, and the digests of a deterministic day's
worth of records in every encoding: a refactoring of the declarations must leave both alone.
"""
from __future__ import annotations

import hashlib

import pytest

from appliance import codec_ring, eventcodec, snapshot
from appliance.catalogue import EVENT_LAYOUTS, ORDER_IMAGE, Command, Event, NewOrder, ReplaceOrder, fields_of
from appliance.matching.engine import Engine
from appliance.model import BUY, GTC, LIMIT, SELL
from appliance.snapshot import attribute_names
from tools.killworker import STREAM_SPEC, command_at

#: Event kinds by their catalogue names (independent of the constants' spelling).
KIND = {name: kind for kind, (name, _) in EVENT_LAYOUTS.items()}

# The formats as first declared (the old hand-written tables), by record.
EVENTCODEC_ORDER = "<QQHBBBBqqII16s4s"
SNAPSHOT_ORDER = "<QHBBBBqqqII16s20s4sBQqq"
SNAPSHOT_ORDER_STATE = "<Qqq"
RING_RECORDS = {
    "OrderAccepted": "<BQQQQIIHBBBqqI20s",
    "CommandRejected": "<BQQH",
    "OrderExecuted": "<BQQQQIIHBQQIIHBIIQIIII",
    # on_book: first "B" (written as 1 if on_book else 0), now the catalogue's "?": the same byte
    "OrderCancelled": "<BQQQQIIHBBBqqIIIB?",
    "OrderReplaced": "<BQQQQIIHBBBqqQIIIBq20s",
    "StopTriggered": "<BQQQQIIHBBBqqI",
    "CrossExecuted": "<BQQQQIIHBQQIIHBIIQIIIIB",
    "MassCancelled": "<BQQI",
}
RING_CONTROL = {
    codec_ring.CTL_POSITION: "<BQQIHq",
    codec_ring.CTL_LAST_PRICE: "<BQQHq",
    codec_ring.CTL_OPEN_ORDER: "<BQQQQIIHBBBqqII",
    codec_ring.CTL_REPLAY: "<BQQ",
    codec_ring.CTL_LIVE: "<BQQ",
    codec_ring.CTL_ADMIN: "<BQQBHI",
}

# Digests of the records of command_at(1..N) and of the hand-made events below, in each encoding.
N = 3000
GOLDEN = {
    "eventcodec": "1c42fbd05df1a815a7f310b49ded3d71",
    "ring": "3aef771d4a6f23b41470cdf36b521c5c",
    "ring_control": "63f12df11c39c281121a90655b91bb5c",
    "snapshot": "df67c779ea3b54e10e67cb10775d56d9",
}


def test_struct_formats_are_the_first_declared_ones() -> None:
    assert eventcodec._ORDER.format == EVENTCODEC_ORDER
    assert snapshot._ORDER.format == SNAPSHOT_ORDER
    assert snapshot._ORDER_STATE.format == SNAPSHOT_ORDER_STATE
    for name, fmt in RING_RECORDS.items():
        assert codec_ring.STRUCTS[KIND[name]].format == fmt, name
    for kind, fmt in RING_CONTROL.items():
        assert codec_ring.STRUCTS[kind].format == fmt, kind
    assert set(codec_ring.STRUCTS) == {KIND[n] for n in RING_RECORDS} | set(RING_CONTROL)


def _order(order_id: int, side: int, ref: int) -> NewOrder:
    o = NewOrder(order_id, 2, side, 700, 1_234_500, LIMIT, GTC, 0, 3, 9, "ACCT-7", "CL-%d" % order_id, "MWXX",
                 post_only=1)
    o.ref, o.leaves, o.filled = ref, 500, 200
    return o


def _made_events() -> list[Event]:
    """One event of every kind the command stream does not produce, with distinct values."""
    b, s = _order(900_001, BUY, 77), _order(900_002, SELL, 78)
    return [
        (KIND["OrderAdded"], b, 500),
        (KIND["CrossExecuted"], b, s, 300, 1_234_500, 4242, 200, 500, 0, 700),
        (KIND["OrderReplaced"], b, s, 500, 400, 200, 1, ReplaceOrder(900_001, 600, 1_234_600, 3, 9, 0, "CL-R")),
        (KIND["TradingStateChanged"], 2, 3, 1),
        (KIND["MarketEvent"], 4),
        (KIND["AuctionUncrossed"], 2, 1, 1_234_500, 300, 4242),
        (KIND["AuctionImbalance"], 2, 1, 300, 50, 2, 1_230_000, 1_234_000, 1_234_500),
        (KIND["LimitStateChanged"], 2, True, 1_100_000, 1_300_000),
        (KIND["AuctionCollar"], 2, 1_234_500, 1_300_000, 1_100_000, 1),
    ]


def _stream() -> tuple[list[tuple[int, int, Command, list[Event]]], Engine]:
    engine = STREAM_SPEC.build()
    results: list[tuple[int, int, Command, list[Event]]] = []
    for seq in range(1, N + 1):
        cmd = command_at(seq)
        evs: list[Event] = []
        engine.apply(cmd, evs)
        results.append((seq, 1_000 * seq, cmd, evs))
    seen = {ev[0] for r in results for ev in r[3]}
    assert {KIND[n] for n in RING_RECORDS} - {KIND["CrossExecuted"]} <= seen   # the stream covers these
    results.append((N + 1, 1_000 * (N + 1), ReplaceOrder(1, 1, 1), _made_events()))
    return results, engine


def _digest(parts: list[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


def test_the_records_of_a_day_keep_their_bytes() -> None:
    results, engine = _stream()
    got = {}
    got["eventcodec"] = _digest([eventcodec.encode_event(seq, ts, ev) for seq, ts, _, evs in results for ev in evs])
    out: list[list[bytes]] = [[], []]
    enc = codec_ring.EventEncoder({1: 0, 2: 1, 3: 1}, 2)
    enc.encode(results, out, {})
    got["ring"] = _digest(out[0] + out[1])
    live = sorted(engine.orders.values(), key=lambda o: o.order_id)
    ctl = [codec_ring.open_order_record(N, o) for o in live] + [
        codec_ring.open_order_record(N, _order(5, SELL, 6)),
        codec_ring.control_record(codec_ring.CTL_POSITION, N, 3, 2, -1200),
        codec_ring.control_record(codec_ring.CTL_LAST_PRICE, N, 2, 1_234_500),
        codec_ring.control_record(codec_ring.CTL_REPLAY, N),
        codec_ring.control_record(codec_ring.CTL_LIVE, N),
        codec_ring.control_record(codec_ring.CTL_ADMIN, N, 7, 2, 1),
    ]
    got["ring_control"] = _digest(ctl)
    # The snapshot's order records: what follows the meta JSON (which holds the engine's counters by
    # attribute name, a matter of the engine's code, not of the order image).
    snap = snapshot.capture(engine, N, 1_000 * N, 3)
    meta_len = int.from_bytes(snap[snapshot.SNAP_HEADER_SIZE:snapshot.SNAP_HEADER_SIZE + 4], "little")
    got["snapshot"] = _digest([snap[snapshot.SNAP_HEADER_SIZE + 4 + meta_len:]])
    assert got == GOLDEN


def test_the_order_image_is_every_field_of_an_order() -> None:
    names = [name for name, _ in ORDER_IMAGE]
    assert len(set(names)) == len(names)
    assert set(names) == set(attribute_names(NewOrder))   # __slots__, or the compiled build's attributes


def test_a_projection_takes_declared_fields_only() -> None:
    assert fields_of(ORDER_IMAGE, "ref", "order_id") == (("ref", "Q"), ("order_id", "Q"))
    assert fields_of(ORDER_IMAGE, ("qty", "I")) == (("qty", "I"),)
    with pytest.raises(ValueError, match="not a field"):
        fields_of(ORDER_IMAGE, "reff")
    with pytest.raises(ValueError, match="twice"):
        fields_of(ORDER_IMAGE, "ref", ("ref", "I"))
    with pytest.raises(ValueError, match="same code"):
        fields_of(ORDER_IMAGE, ("qty", "q"))
