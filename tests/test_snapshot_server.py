"""Snapshots built from a subscriber's books: what they hold, in which order, and that a book loaded
from one and continued by the feed from its End of Snapshot sequence equals the engine's, on L3,
L2 and L1, at many cut points of a run that exercises every event kind. Then the snapshot source:
which logins it answers, waits for or rejects, and that it builds once per sequence number."""
from __future__ import annotations

from typing import Any

import pytest

from appliance.matching.engine import Engine
from feeds import itch
from feeds.books import L1Book, L2Book, L3Book, engine_l1_summary, engine_l2_summary, engine_l3_summary
from feeds.channels import CHANNELS, L1, L2, L3, FeedConfig, decode_any
from feeds.publisher import Publisher
from feeds.soupbintcp import LoginRequest
from feeds.subscriber import ChannelReceiver
from feeds.transport import A, MemoryTransport
from retransmit.recovery import RecoveringSubscriber, RecoveryConfig
from retransmit.snapshot import (
    ReferenceSink,
    SnapshotStream,
    build_snapshot,
    encode_end_of_snapshot,
    parse_end_of_snapshot,
    soup_messages,
)
from retransmit.snapshot_server import SnapshotSource
from test_publisher import FIRM_STP, MIDNIGHT, T0, instruments, iter_batches, random_specs

CONFIG = FeedConfig(depth_levels=4)
BOOKS = {L3: L3Book, L2: L2Book, L1: L1Book}


def receiver(channel: str) -> tuple[ChannelReceiver, Any, ReferenceSink]:
    book = BOOKS[channel]()
    ref = ReferenceSink()
    return ChannelReceiver(channel, [book, ref]), book, ref


def as_blocks(msgs: list[bytes]) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in msgs)


def test_end_of_snapshot_layout() -> None:
    assert encode_end_of_snapshot(1234) == b"G00000000000000001234"
    assert parse_end_of_snapshot(b"G00000000000000001234") == 1234
    assert parse_end_of_snapshot(b"G" + b"77".rjust(20)) == 77
    for bad in (b"G123", b"X00000000000000001234", b"G0000000000000000123x"):
        with pytest.raises(ValueError):
            parse_end_of_snapshot(bad)


def engine_orders(engine: Engine, locate: int, side: int) -> list[tuple[int, int, int, bytes]]:
    book = next(b for b in engine.book_list if b.locate == locate)
    return [(o.ref, o.price, o.leaves, (o.mpid or "").encode().strip().ljust(4)[:4] if o.mpid else b"")
            for o in book.orders_in_priority(side)]


def check_l3_snapshot(msgs: list[bytes], engine: Engine, next_seq: int, ref: ReferenceSink) -> None:
    """System Event; per instrument R, H, then Add Orders: bids best first, then asks, time priority."""
    decoded = [decode_any(m) if m[:1] != b"G" else None for m in msgs]
    assert msgs[0][:1] == b"S" and msgs[0] == ref.system_event
    assert parse_end_of_snapshot(msgs[-1]) == next_seq
    adds: dict[tuple[int, int], list[tuple[int, int, int, bytes]]] = {}
    order_of_locates: list[int] = []
    for m, d in zip(msgs[1:-1], decoded[1:-1]):
        t = m[:1]
        assert d is not None
        locate = d.stock_locate
        if not order_of_locates or order_of_locates[-1] != locate:
            order_of_locates.append(locate)
        if t in (b"A", b"F"):
            side = 0 if d.side == b"B" else 1
            assert not adds.get((locate, 1)) or side == 1, "bids before asks"
            assert d.timestamp == int.from_bytes(ref.last_ts6, "big")
            adds.setdefault((locate, side), []).append(
                (d.order_ref, d.price, d.shares, d.attribution if t == b"F" else b""))
        else:
            assert t in (b"R", b"H") and not adds.get((locate, 0)) and not adds.get((locate, 1)), "R, H first"
    assert order_of_locates == sorted(order_of_locates)
    for book in engine.book_list:
        for side in (0, 1):
            assert adds.get((book.locate, side), []) == engine_orders(engine, book.locate, side)


def test_snapshots_at_many_points_continue_into_the_engines_books() -> None:
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    transport = MemoryTransport()
    pub = Publisher(CONFIG, ins, MIDNIGHT, transport)
    pub.start(T0)
    live = {ch: receiver(ch) for ch in CHANNELS}
    fed = {ch: 0 for ch in CHANNELS}
    followers: list[tuple[str, ChannelReceiver, int]] = []
    saw_mpid = False
    for k, batch in enumerate(iter_batches(engine, random_specs(91, 2500), 30)):
        pub.publish(batch)
        if k % 9 != 4:
            continue
        for ch in CHANNELS:
            r, book, ref = live[ch]
            sent = transport.of(ch, A)
            for d in sent[fed[ch]:]:
                r.receive(0, d, A)
            fed[ch] = len(sent)
            n = r.expected
            packets, count = build_snapshot(ch, book, ref, n)
            msgs = soup_messages(packets)
            assert len(msgs) == count
            if ch == L3:
                check_l3_snapshot(msgs, engine, n, ref)
                saw_mpid = saw_mpid or any(m[:1] == b"F" for m in msgs)
            follower, fbook, _ = receiver(ch)
            follower.load_snapshot(as_blocks(msgs[:-1]), count - 1, parse_end_of_snapshot(msgs[-1]),
                                   pub.channels[ch].session)
            assert follower.expected == n
            followers.append((ch, follower, fed[ch]))
    assert saw_mpid and len(followers) > 20
    for ch, follower, start in followers:
        for d in transport.of(ch, A)[start:]:
            follower.receive(0, d, A)
        book = follower.sinks[0]
        assert follower.gaps == 0 and follower.expected == pub.channels[ch].next_seq
        if ch == L3:
            assert book.summary() == engine_l3_summary(engine) and book.unknown_refs == 0 and not book.stale
        elif ch == L2:
            assert book.summary() == engine_l2_summary(engine, CONFIG.depth_levels)
            assert not any(book.is_stale(loc) for loc in (1, 2, 7))     # instrument sequences continue
        else:
            assert book.summary() == engine_l1_summary(engine)
            assert not any(book.is_stale(loc) for loc in (1, 2, 7))


def test_an_l2_instrument_without_levels_still_carries_its_sequence_number() -> None:
    r, book, ref = receiver(L2)
    ts = b"\x00" * 6
    from feeds.channels import PRICE_LEVEL_UPDATE
    d = PRICE_LEVEL_UPDATE.struct.pack
    r.load_snapshot(as_blocks([d(b"d", 3, 0, ts, 9, b"B", 100, 200, 1, b"Y"),
                               d(b"d", 3, 0, ts, 10, b"B", 100, 0, 0, b"Y")]), 2, 40)
    msgs = soup_messages(build_snapshot(L2, book, ref, 40)[0])
    (only,) = [decode_any(m) for m in msgs[:-1]]
    assert (only.stock_locate, only.instrument_seq, only.shares, only.orders, only.end_of_update) == (3, 10, 0, 0, b"Y")


def test_the_timestamp_and_the_mpid_follow_the_feed() -> None:
    r, book, ref = receiver(L3)
    stock = itch.stock8("AAA")
    msgs = [itch.encode_add_order_mpid(1, 0, 5_000, 11, b"B", 100, stock, 990_000, b"MWXX"),
            itch.encode_order_replace(1, 0, 6_000, 11, 12, 100, 991_000),
            itch.encode_add_order(1, 0, 7_000, 13, b"B", 300, stock, 991_000)]
    r.load_snapshot(as_blocks(msgs), 3, 1)
    out = [decode_any(m) for m in soup_messages(build_snapshot(L3, book, ref, 99)[0])[:-1]]
    assert [(type(m).__name__, m.order_ref, m.timestamp) for m in out] == [("AddOrderMpid", 12, 7_000),
                                                                          ("AddOrder", 13, 7_000)]
    assert out[0].attribution == b"MWXX"


# ------------------------------------------------------------------------------------------------
# The snapshot source: which logins it answers
# ------------------------------------------------------------------------------------------------

def login(session: str = "") -> LoginRequest:
    return LoginRequest("mdata", "pw", session, 0)


def test_logins_wait_for_a_fresh_book_reject_other_sessions_and_share_a_build() -> None:
    ins = instruments()
    cfg = FeedConfig(partition=1, depth_levels=4)
    sub = RecoveringSubscriber(cfg, RecoveryConfig(rerequest=("127.0.0.1", 9), snapshot=("127.0.0.1", 9)))
    src = SnapshotSource([sub])
    engine = Engine(ins, FIRM_STP)
    transport = MemoryTransport()
    pub = Publisher(cfg, ins, MIDNIGHT, transport)
    pub.start(T0)
    sessions = {ch: s.decode() for ch, s in pub.sessions().items()}
    assert src.open_stream(login(), None, 0) is None                    # nothing heard yet: wait
    assert src.open_stream(login(sessions[L2]), None, 0) is None
    assert src.open_stream(login("NOTOURS123"), None, 0) == b"S"
    assert src.open_stream(login("2311140230"), None, 0) == b"S"       # partition 2 is not served here
    assert src.open_stream(login("x" * 11), None, 0) == b"S"
    for batch in iter_batches(engine, random_specs(5, 300), 30):
        pub.publish(batch)
    for ch, leg, ts, d in transport.sent:
        sub.feed.receive(ch, ts, d, leg)
    first = src.open_stream(login(), None, 0)
    assert isinstance(first, SnapshotStream) and first.session == pub.sessions()[L3]
    again = src.open_stream(login(sessions[L3]), None, 0)
    assert isinstance(again, SnapshotStream) and again.data is first.data      # built once
    assert src.counters["built"] == 1 and src.counters["shared"] == 1
    l2 = src.open_stream(login(sessions[L2]), None, 0)
    assert isinstance(l2, SnapshotStream) and soup_messages(l2.data)[-1] == encode_end_of_snapshot(
        pub.channels[L2].next_seq)
    # a gap: the book is not exact until it is filled, so a login waits
    before = len(transport.sent)
    for batch in iter_batches(engine, random_specs(6, 100), 30, seq0=301):
        pub.publish(batch)
    new = [x for x in transport.sent[before:] if x[0] == L3 and x[1] == A]
    for ch, leg, ts, d in [x for x in transport.sent[before:] if x[0] == L3 and x[1] == A][1:]:
        sub.feed.receive(ch, ts, d, leg)
    assert src.open_stream(login(sessions[L3]), None, 0) is None
    sub.feed.receive(L3, 0, new[0][3], A)
    sub.tick()
    fresh = src.open_stream(login(sessions[L3]), None, 0)
    assert isinstance(fresh, SnapshotStream) and fresh.data is not first.data
    assert soup_messages(fresh.data)[-1] == encode_end_of_snapshot(pub.channels[L3].next_seq)
