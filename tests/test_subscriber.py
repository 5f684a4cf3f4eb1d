"""Subscriber: A/B arbitration, gaps and their hook, hold-and-fill, heartbeats, end of session,
session change, malformed datagrams; the books' stale marking."""
from __future__ import annotations

from typing import Any

from appliance.matching.engine import Engine
from appliance.model import BUY, SELL
from feeds import itch
from feeds.books import L1Book, L2Book, L3Book, engine_l1_summary, engine_l2_summary, engine_l3_summary
from feeds.channels import L1, L2, L3, FeedConfig
from feeds.moldudp64 import PacketBuilder, Session, heartbeat, end_of_session
from feeds.publisher import Publisher
from feeds.subscriber import ChannelReceiver, FeedSubscriber, MessageTap
from feeds.transport import A, B, MemoryTransport

from test_publisher import FIRM_STP, MIDNIGHT, T0, instruments, iter_batches, random_specs

S1 = b"2311140130"
S2 = b"2311140131"


def datagrams(n_msgs: int, per_packet_bytes: int = 60, session: bytes = S1) -> list[bytes]:
    b = PacketBuilder(Session(session), per_packet_bytes)
    for i in range(n_msgs):
        b.add(b"m" + i.to_bytes(4, "big"))
    return b.flush()


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.gaps: list[tuple[bytes, int, int]] = []
        self.sessions: list[tuple[bytes | None, bytes]] = []
        self.eos: list[tuple[bytes, int]] = []

    def receiver(self, **kw: Any) -> ChannelReceiver:
        return ChannelReceiver("t", [MessageTap(lambda seq, m: self.seqs.append(seq))],
                               on_gap=lambda s, f, c: self.gaps.append((s, f, c)),
                               on_session=lambda o, n: self.sessions.append((o, n)),
                               on_end_of_session=lambda s, q: self.eos.append((s, q)), **kw)


def test_first_copy_wins_and_duplicates_are_dropped() -> None:
    d = datagrams(40)       # 5 messages of 7 bytes per 60-byte datagram
    rec = Recorder()
    r = rec.receiver()
    for i, p in enumerate(d):
        # B is ahead for odd datagrams
        first, second = (B, A) if i % 2 else (A, B)
        r.receive(i, p, first)
        r.receive(i, p, second)
    assert rec.seqs == list(range(1, 41))
    assert r.duplicates == len(d) and r.gaps == 0 and not rec.gaps
    assert r.packets == [len(d), len(d)]
    assert rec.sessions == [(None, S1)]


def test_a_datagram_lost_on_a_is_taken_from_b() -> None:
    d = datagrams(40)
    rec = Recorder()
    r = rec.receiver()
    for i, p in enumerate(d):
        if i != 3:
            r.receive(i, p, A)
        r.receive(i, p, B)        # B a little behind A
    assert rec.seqs == list(range(1, 41)) and not rec.gaps
    assert r.duplicates == len(d) - 1


def test_without_hold_a_copy_later_than_the_next_datagram_is_too_late() -> None:
    d = datagrams(40)
    rec = Recorder()
    r = rec.receiver()
    for i, p in enumerate(d):
        if i != 3:
            r.receive(i, p, A)
    assert rec.gaps == [(S1, 16, 5)]
    r.receive(99, d[3], B)
    assert rec.seqs == list(range(1, 16)) + list(range(21, 41))
    assert r.duplicates == 1 and r.missing == 5


def test_hold_after_gap_waits_for_the_missing_messages_and_then_delivers_in_order() -> None:
    d = datagrams(60)
    rec = Recorder()
    book = L3Book()
    r = ChannelReceiver("t", [MessageTap(lambda s, m: rec.seqs.append(s)), _Flags(book)], hold_after_gap=True,
                        on_gap=lambda s, f, c: rec.gaps.append((s, f, c)))
    order = list(range(len(d)))
    order.remove(2)
    order.remove(5)
    for i in order:
        r.receive(i, d[i], A)
    assert rec.gaps == [(S1, 11, 5), (S1, 26, 5)]
    assert rec.seqs == list(range(1, 11)) and r.stale and book.stale
    r.receive(100, d[5], B)
    assert rec.seqs == list(range(1, 11)) and r.stale
    r.receive(101, d[2], B)
    assert rec.seqs == list(range(1, 61)) and not r.stale and not book.stale
    assert r.gaps == 2 and r.missing == 10


class _Flags:
    """A sink that only follows the stale flag of an L3 book."""

    def __init__(self, book: L3Book) -> None:
        self.book = book

    def apply_blocks(self, buf: Any, pos: int, count: int, first_seq: int) -> int:
        for _ in range(count):
            pos += 2 + ((buf[pos] << 8) | buf[pos + 1])
        return pos

    def on_gap(self, first: int, count: int) -> None:
        self.book.on_gap(first, count)

    def on_filled(self) -> None:
        self.book.on_filled()

    def reset(self) -> None:
        self.book.reset()


def test_hold_gives_up_past_max_held_and_delivers_over_the_hole() -> None:
    d = datagrams(100)
    rec = Recorder()
    r = rec.receiver(hold_after_gap=True, max_held=20)
    for i, p in enumerate(d):
        if i != 1:
            r.receive(i, p, A)
    assert rec.seqs == [1, 2, 3, 4, 5] + list(range(11, 101))
    assert not r.held


def test_heartbeats_reveal_a_lost_tail_and_end_of_session_is_reported_once() -> None:
    d = datagrams(20)
    rec = Recorder()
    r = rec.receiver()
    for p in d[:-1]:
        r.receive(0, p, A)
    r.receive(1, heartbeat(S1, 16), A)
    assert rec.gaps == []
    r.receive(2, heartbeat(S1, 21), A)
    assert rec.gaps == [(S1, 16, 5)]
    assert r.heartbeats == 2
    r.receive(3, end_of_session(S1, 21), A)
    r.receive(3, end_of_session(S1, 21), B)
    assert rec.eos == [(S1, 21)] and r.ended
    r.receive(4, heartbeat(S1, 21), B)
    assert rec.gaps == [(S1, 16, 5)]


def test_a_new_session_resets_the_books_and_old_session_packets_are_ignored() -> None:
    book = L3Book()
    r = ChannelReceiver("l3", [book])
    add = b"A" + (1).to_bytes(2, "big") + bytes(8) + (7).to_bytes(8, "big") + b"B" + (100).to_bytes(4, "big") \
        + b"AAA     " + (1_000_000).to_bytes(4, "big")
    b1 = PacketBuilder(Session(S1))
    b1.add(add)
    (p1,) = b1.flush()
    r.receive(0, p1, A)
    assert book.orders_in_priority(1, 0) == [(7, 1_000_000, 100)]
    sessions: list[Any] = []
    r.on_session = lambda old, new: sessions.append((old, new))
    r.receive(1, heartbeat(S2, 1), A)
    assert sessions == [(S1, S2)] and not book.orders and r.expected == 1
    r.receive(2, p1, B)          # the old session's copy on B: ignored
    assert not book.orders and r.old_session_packets == 1
    gaps: list[Any] = []
    r.on_gap = lambda s, f, c: gaps.append((s, f, c))
    r.receive(3, heartbeat(S2, 5), A)   # joined late in the new session
    assert gaps == [(S2, 1, 4)] and book.stale


def test_malformed_datagrams_are_counted_and_treated_as_lost() -> None:
    book = L3Book()
    gaps: list[Any] = []
    r = ChannelReceiver("l3", [book], on_gap=lambda s, f, c: gaps.append((f, c)))
    r.receive(0, b"short", A)
    r.receive(0, heartbeat(S1, 1) + b"x", A)
    (good,) = datagrams(3, 1472)
    r.receive(0, good[:-2], A)                       # cut short
    r.receive(0, good[:18] + (9).to_bytes(2, "big") + good[20:], A)   # count says more than there is
    assert r.malformed == 4
    assert gaps == [(1, 3)] and book.stale
    assert r.messages == 0


def _published(levels: int = 10) -> tuple[Engine, MemoryTransport, FeedConfig]:
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    transport = MemoryTransport()
    config = FeedConfig(depth_levels=levels)
    pub = Publisher(config, ins, MIDNIGHT, transport)
    pub.start(T0)
    for batch in iter_batches(engine, random_specs(8, 1500, ins), 5):
        pub.publish(batch)
    return engine, transport, config


def test_books_from_either_leg_alone_or_both_equal_the_engine() -> None:
    engine, transport, config = _published()
    for legs in ((A,), (B,), (A, B)):
        sub = FeedSubscriber(config)
        for ch, leg, ts, d in transport.sent:
            if leg in legs:
                sub.receive(ch, ts, d, leg)
        assert sub.l3.summary() == engine_l3_summary(engine)
        assert sub.l2.summary() == engine_l2_summary(engine, config.depth_levels)
        assert sub.l1.summary() == engine_l1_summary(engine)
        assert sub.l3.state_hash() == L3Book().state_hash() or sub.l3.orders
        assert not sub.l3.stale and sub.l3.unknown_refs == 0


def test_after_a_gap_l3_is_stale_and_l2_l1_keep_the_instruments_the_gap_did_not_touch() -> None:
    engine, transport, config = _published()
    gaps: list[Any] = []
    sub = FeedSubscriber(config, on_gap=lambda ch, s, f, c: gaps.append((ch, f, c)))
    lost: dict[str, int] = {}
    index: dict[str, int] = {L3: 0, L2: 0, L1: 0}
    for ch, leg, ts, d in transport.sent:
        if leg != A:
            continue
        index[ch] += 1
        if index[ch] == 40:          # drop one datagram of each channel
            lost[ch] = int.from_bytes(d[10:18], "big")
            continue
        sub.receive(ch, ts, d, leg)
    assert sorted(g[0] for g in gaps) == [L1, L2, L3]
    assert all(f == lost[ch] for ch, f, _ in gaps)
    assert sub.l3.stale
    for book, ch in ((sub.l2, L2), (sub.l1, L1)):
        assert isinstance(book, (L2Book, L1Book))
        # instruments heard of again and in sequence are fresh; those that skipped are stale
        assert book.seqs.stale, ch
        fresh = [loc for loc in (1, 2, 7) if not book.is_stale(loc)]
        assert fresh, ch
        for loc in fresh:
            if ch == L2:
                want = [x for x in engine_l2_summary(engine, config.depth_levels) if x[0] == loc]
                assert [x for x in book.summary() if x[0] == loc] == want
            else:
                want = [x for x in engine_l1_summary(engine) if x[0] == loc]
                assert [x for x in book.summary() if x[0] == loc] == want


def test_book_callbacks_name_the_instrument() -> None:
    engine, transport, config = _published()
    touched: dict[str, set[int]] = {L3: set(), L2: set(), L1: set()}
    sub = FeedSubscriber(config)
    sub.l3.on_update = touched[L3].add
    sub.l2.on_update = touched[L2].add
    sub.l1.on_update = touched[L1].add
    for ch, leg, ts, d in transport.sent:
        sub.receive(ch, ts, d, leg)
    assert touched[L3] == touched[L2] == touched[L1] == {1, 2, 7}
    assert sub.l3.directory.symbols == {1: "AAA", 2: "BBB", 7: "CCCC"}
    bid, ask = engine.book(1).depth(BUY, 1), engine.book(1).depth(SELL, 1)
    assert sub.l3.best_bid(1) == (bid[0] if bid else None)
    assert sub.l3.best_ask(1) == (ask[0] if ask else None)


def test_l3_book_applies_replace_and_executions_with_price() -> None:
    book = L3Book()
    ts = 5
    book.apply(itch.encode_add_order(1, 0, ts, 1, b"B", 300, b"AAA     ", 100))
    book.apply(itch.encode_add_order(1, 0, ts, 2, b"B", 200, b"AAA     ", 100))
    book.apply(itch.encode_order_replace(1, 0, ts, 1, 3, 250, 101))
    assert book.orders_in_priority(1, 0) == [(3, 101, 250), (2, 100, 200)]
    book.apply(itch.encode_order_executed_with_price(1, 0, ts, 3, 50, 9, b"Y", 99))
    assert book.last_trade[1] == (99, 50, 9)
    book.apply(itch.encode_order_cancel(1, 0, ts, 3, 200))
    assert book.depth(1, 0) == [(100, 200, 1)]
    book.apply(itch.encode_order_delete(1, 0, ts, 42))
    assert book.unknown_refs == 1
