"""Trading states, auctions and safeguards on the feed: the ITCH of each new event, a scheduled day
published and read back by the subscriber (books equal the engine's after every batch, every L3
message decoded by the independent itchfeed decoder), and the next day's session re-announcing the
carried GTC orders after a restart from a snapshot."""
from __future__ import annotations

from typing import Any

import pytest
from test_publisher import messages_of
from test_trading_properties import AAA, BBB, SAFEGUARDS, SEC, T0, TIMERS, _day

from appliance.catalogue import (
    ClockTick,
    Ev,
    Event,
    NewOrder,
    SetSchedule,
)
from appliance.matching.engine import Engine
from appliance.matching.rules import TradingRules
from appliance.model import (
    BUY,
    CAUSE_LULD,
    CAUSE_MARKET,
    CROSS_CLOSE,
    CROSS_OPEN,
    CROSS_REOPEN,
    GTC,
    IMBALANCE_BUY,
    IMBALANCE_NO_PRICE,
    LIMIT,
    MARKET,
    MARKET_CLOSE,
    MARKET_HALT,
    MARKET_OPEN,
    MARKET_SYSTEM_HOURS,
    SELL,
    STP_CN,
    TS_CLOSED,
    TS_PAUSED,
    TS_PRE_OPEN,
)
from appliance.snapshot import EngineSpec, capture, restore
from conftest import build, decode_as
from feeds import itch
from feeds.books import engine_l1_summary, engine_l2_summary, engine_l3_summary
from feeds.channels import L1, L3, FeedConfig, decode_any
from feeds.publisher import Publisher, encode_l3, price_variation, session_opening
from feeds.subscriber import FeedSubscriber
from feeds.transport import MemoryTransport

DAY_NS = 86_400 * SEC
MID = T0 - T0 % DAY_NS
STOCKS = [b"        "] * 8
STOCKS[1], STOCKS[2] = AAA.stock8, BBB.stock8


def _l3(events: list[Event]) -> list[Any]:
    out: list[bytes] = []
    encode_l3([(1, MID + 5 * SEC, ClockTick(MID + 5 * SEC), events)], out, MID, STOCKS)
    return [itch.decode(m[2:]) for m in out]


def test_each_trading_event_says_its_itch() -> None:
    buy = NewOrder(1, 1, BUY, 100, 10100)
    buy.ref = 7
    sell = NewOrder(2, 1, SELL, 50, 0, MARKET)
    sell.ref = 8
    (h,) = _l3([(Ev.TRADING_STATE, 1, TS_PAUSED, CAUSE_LULD)])
    assert (h.stock, h.trading_state, h.reason, h.timestamp) == (AAA.stock8, b"P", b"LUDP", 5 * SEC)
    (h,) = _l3([(Ev.TRADING_STATE, 2, TS_PRE_OPEN, CAUSE_MARKET)])
    assert (h.stock_locate, h.trading_state, h.reason) == (2, b"Q", b"MWC1")
    assert [m.event_code for m in _l3([(Ev.MARKET_EVENT, e) for e in
                                       (MARKET_SYSTEM_HOURS, MARKET_OPEN, MARKET_CLOSE)])] == [b"S", b"Q", b"M"]
    (w,) = _l3([(Ev.MARKET_EVENT, MARKET_HALT)])
    assert type(w).__name__ == "MwcbStatus" and w.breached_level == b"1" and w.stock_locate == 0
    # an auction fill: a C (not printable) for the limit order only; the market order is not on the book
    (c,) = _l3([(Ev.CROSS_EXECUTED, buy, sell, 50, 10000, 3, 50, 50, 0, 50)])
    assert (c.order_ref, c.executed_shares, c.match_number, c.printable, c.execution_price) == \
           (7, 50, 3, b"N", 10000)
    (q,) = _l3([(Ev.UNCROSSED, 1, CROSS_OPEN, 10000, 50, 4)])
    assert (q.shares, q.stock, q.cross_price, q.match_number, q.cross_type) == (50, AAA.stock8, 10000, 4, b"O")
    (q,) = _l3([(Ev.UNCROSSED, 2, CROSS_REOPEN, 0, 0, 0)])
    assert (q.shares, q.cross_price, q.match_number, q.cross_type) == (0, 0, 0, b"H")
    (i,) = _l3([(Ev.IMBALANCE, 1, CROSS_CLOSE, 300, 120, IMBALANCE_BUY, 9900, 10300, 10000)])
    assert (i.paired_shares, i.imbalance_shares, i.imbalance_direction, i.far_price, i.near_price,
            i.current_ref_price, i.cross_type, i.price_variation) == (300, 120, b"B", 9900, 10300, 10000, b"C", b"3")
    (i,) = _l3([(Ev.IMBALANCE, 1, CROSS_OPEN, 0, 0, IMBALANCE_NO_PRICE, 0, 0, 10000)])
    assert (i.imbalance_direction, i.price_variation) == (b"O", b" ")
    (j,) = _l3([(Ev.COLLAR, 1, 10000, 11000, 9000, 0)])
    assert (j.stock, j.ref_price, j.upper_price, j.lower_price, j.extension) == (AAA.stock8, 10000, 11000, 9000, 0)


@pytest.mark.parametrize("near, ref, letter", [(10000, 10000, b"L"), (10099, 10000, b"L"), (10100, 10000, b"1"),
                                               (9050, 10000, b"9"), (8900, 10000, b"A"), (12500, 10000, b"B"),
                                               (13000, 10000, b"C"), (0, 10000, b" "), (10000, 0, b" ")])
def test_price_variation_indicator(near: int, ref: int, letter: bytes) -> None:
    assert price_variation(near, ref) == letter


def _rules() -> TradingRules:
    return TradingRules.of(SAFEGUARDS, start_state=TS_CLOSED, **TIMERS)


def _publish_day(seed: int, config: FeedConfig) -> tuple[Engine, MemoryTransport, FeedSubscriber, int]:
    engine = Engine((AAA, BBB), {}, STP_CN, _rules())
    transport = MemoryTransport()
    pub = Publisher(config, [AAA, BBB], MID, transport)
    pub.start(T0 - SEC, session_opening(engine))
    sub = FeedSubscriber(config)
    seen = 0
    specs = _day(seed)
    clock = T0
    for start in range(0, len(specs), 37):
        batch = []
        for k, spec in enumerate(specs[start:start + 37]):
            cmd = build(spec)
            if isinstance(cmd, ClockTick):
                clock = cmd.now_ns
            out: list[Event] = []
            engine.apply(cmd, out)
            batch.append((start + k + 1, clock, cmd, out))
        pub.publish(batch)
        for ch, leg, ts, d in transport.sent[seen:]:
            sub.receive(ch, ts, d, leg)
        seen = len(transport.sent)
        assert sub.l3.summary() == engine_l3_summary(engine)
        assert sub.l2.summary() == engine_l2_summary(engine, config.depth_levels)
        assert sub.l1.summary() == engine_l1_summary(engine)
    pub.end_session(clock + SEC, market_close=engine.market_phase < 3)
    for ch, leg, ts, d in transport.sent[seen:]:
        sub.receive(ch, ts, d, leg)
    return engine, transport, sub, clock


def test_a_scheduled_day_on_the_feed_reads_back_as_the_engine(tmp_path: Any) -> None:
    config = FeedConfig()
    engine, transport, sub, _ = _publish_day(4, config)
    assert sub.l3.unknown_refs == 0 and not sub.l3.stale
    msgs = messages_of(transport, L3)
    types = [m[:1] for m in msgs]
    for t in (b"H", b"Q", b"I", b"C", b"A", b"D", b"E"):
        assert t in types, t
    # the system events in their order: O at the start; S, Q, M from the schedule; E, C at the end
    assert [m[11:12] for m in msgs if m[:1] == b"S"] == [b"O", b"S", b"Q", b"M", b"E", b"C"]
    crosses = [decode_as(itch.CrossTrade, m) for m in msgs if m[:1] == b"Q"]
    assert {q.cross_type for q in crosses} >= {b"O", b"C"} and any(q.shares for q in crosses)
    cs = [decode_as(itch.OrderExecutedWithPrice, m) for m in msgs if m[:1] == b"C"]
    assert all(c.printable == b"N" for c in cs)
    # each cross prints its volume once on L1, with no aggressor
    lt = [decode_any(m) for m in messages_of(transport, L1) if m[:1] == b"t"]
    assert sum(t.shares for t in lt) == engine.traded_qty
    assert {t.aggressor for t in lt if t.match_number in {q.match_number for q in crosses if q.shares}} == {b" "}
    # an independent ITCH 5.0 decoder reads every L3 message back to the same bytes
    from itch.parser import MessageParser

    binary = tmp_path / "l3.itch"
    binary.write_bytes(b"".join(len(m).to_bytes(2, "big") + m for m in msgs))
    with open(binary, "rb") as f:
        decoded = list(MessageParser().parse_file(f))
    assert [d.to_bytes() for d in decoded] == msgs


def test_the_next_day_session_reannounces_the_carried_gtc_orders() -> None:
    config = FeedConfig()
    day1, _, _, clock = _publish_day(5, config)
    assert all(b.state == TS_CLOSED for b in day1.book_list)
    # GTC orders rest overnight; DAY orders expired at the close
    carried = [o for b in day1.book_list for side in (0, 1) for o in b.orders_in_priority(side)]
    assert carried and all(o.tif == GTC for o in carried)
    assert not any(o.tif != GTC for o in day1.orders.values())
    # a restart: the next day's engine comes from the snapshot taken at the close
    spec = EngineSpec.of([AAA, BBB], {}, STP_CN, _rules())
    engine, _ = restore(capture(day1, 1, clock, 1), spec)
    transport = MemoryTransport()
    pub = Publisher(config, [AAA, BBB], MID + DAY_NS, transport)
    pub.start(MID + DAY_NS + 3600 * SEC, session_opening(engine))
    l3 = messages_of(transport, L3)
    head = [m[:1] for m in l3]
    n = len(carried)
    assert head == [b"S", b"R", b"R", b"H", b"H"] + [b"A"] * n   # before the pre-open: no S S, no S Q
    assert [decode_as(itch.StockTradingAction, m).trading_state for m in l3 if m[:1] == b"H"] == [b"H", b"H"]
    assert sorted(decode_as(itch.AddOrder, m).order_ref for m in l3 if m[:1] == b"A") == sorted(o.ref for o in carried)
    sub = FeedSubscriber(config)
    for ch, leg, ts, d in transport.sent:
        sub.receive(ch, ts, d, leg)
    assert sub.l3.summary() == engine_l3_summary(engine)
    assert sub.l2.summary() == engine_l2_summary(engine, config.depth_levels)
    # a new session knows no last trade yet: the best prices only
    assert [x[:3] for x in sub.l1.summary()] == [x[:3] for x in engine_l1_summary(engine)]
    # the new day trades on from the carried book
    t1 = MID + DAY_NS + 4 * 3600 * SEC
    seq = 1
    results = []
    for cmd in (SetSchedule(t1, t1 + 10 * SEC, t1 + 20 * SEC, t1 + 100 * SEC, t1 + 110 * SEC), ClockTick(t1),
                NewOrder(10**6, 1, SELL, 10, carried[0].price if carried[0].side == BUY else 0,
                         LIMIT if carried[0].side == BUY else MARKET, firm=9),
                ClockTick(t1 + 20 * SEC)):
        out: list[Event] = []
        engine.apply(cmd, out)
        results.append((seq, t1, cmd, out))
        seq += 1
    pub.publish(results)
    sub2 = FeedSubscriber(config)
    for ch, leg, ts, d in transport.sent:
        sub2.receive(ch, ts, d, leg)
    assert sub2.l3.summary() == engine_l3_summary(engine)
    assert sub2.l2.summary() == engine_l2_summary(engine, config.depth_levels)
    assert [x[:3] for x in sub2.l1.summary()] == [x[:3] for x in engine_l1_summary(engine)]
    assert [m[:1] for m in messages_of(transport, L3)[len(l3):]].count(b"Q") == 2   # both opened
