"""Publisher: the L3 mapping table, ITCH per event byte for byte, packing, sessions and idle packets,
and the L2/L1 messages derived per command."""
from __future__ import annotations

import random
import time
from typing import Any, Iterator

import pytest

from appliance.catalogue import (
    EVENT_LAYOUTS,
    CancelOrder,
    Command,
    Ev,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.matching.engine import Engine
from appliance.model import (
    BUY,
    DAY,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STOP,
    STOP_LIMIT,
    STP_CN,
    STP_CO,
    STP_DC,
    STP_DEFAULT,
    STP_NONE,
    Instrument,
)
from conftest import decode_as
from feeds import itch, moldudp64
from feeds.books import engine_l1_summary, engine_l2_summary, engine_l3_summary
from feeds.channels import (
    ALL_LAYOUTS,
    BEST_BID_OFFER,
    CHANNELS,
    L1,
    L2,
    L3,
    LAST_TRADE,
    OWN_LAYOUTS,
    PRICE_LEVEL_UPDATE,
    DepthTracker,
    FeedConfig,
    L1Encoder,
    L2Encoder,
    channel_of_session,
    day_of_midnight,
    block_packer,
    decode_any,
    encode_depth,
    session_for,
)
from feeds.moldudp64 import PacketBuilder, Session, parse_packet
from feeds.moldudp64 import packetize
from feeds.publisher import L3_MAPPING, L3_MESSAGES, Publisher, encode_l3
from feeds.subscriber import FeedSubscriber
from feeds.transport import A, B, MemoryTransport
from tools.flowgen import generate
from tools.flows import FLOW_FIRM_STP, decode_records, flow_instruments

DAY_NS = 86_400 * 10**9
MIDNIGHT = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % DAY_NS
T0 = MIDNIGHT + 9 * 3600 * 10**9 + 30 * 60 * 10**9   # 09:30
FIRM_STP = {1: STP_CN, 2: STP_CO, 3: STP_DC, 4: STP_NONE}


def instruments() -> list[Instrument]:
    return [Instrument("AAA", 1, tick=100), Instrument("BBB", 2, tick=100, round_lot=50),
            Instrument("CCCC", 7, tick=1)]


# --------------------------------------------------------------------------------------------
# Random command streams (shared with the e2e tests): specs, built fresh for each engine
# --------------------------------------------------------------------------------------------

Spec = tuple[type[Any], dict[str, Any]]


def random_specs(seed: int, n: int, ins: list[Instrument] | None = None, firms: int = 4) -> list[Spec]:
    """Commands exercising every event kind: limit (all TIFs), market, stop, stop-limit, MPID,
    STP, cancel, replace (in place, repost, crossing), mass cancel, and rejects."""
    rnd = random.Random(seed)
    ins = ins or instruments()
    live: list[tuple[int, int]] = []   # (order id, firm)
    next_id = 1
    out: list[Spec] = []
    for _ in range(n):
        r = rnd.random()
        i = rnd.choice(ins)
        tick = i.tick
        base = 1_000_000 - 1_000_000 % tick
        price = base + rnd.randint(-8, 8) * tick
        firm = rnd.randint(1, firms)
        side = rnd.choice((BUY, SELL))
        qty = rnd.randint(1, 8) * 100
        if r < 0.50 or not live:
            kw: dict[str, Any] = dict(order_id=next_id, locate=i.locate, side=side, qty=qty, price=price,
                                      ord_type=LIMIT, tif=rnd.choice((DAY, GTC, GTC, GTC, IOC, FOK)), firm=firm,
                                      mpid=rnd.choice(("", "", "", "MWXX", "AB")),
                                      stp=rnd.choice((STP_DEFAULT,) * 6 + (STP_CN, STP_CO, STP_DC, STP_NONE)))
            if rnd.random() < 0.02:
                kw["price"] = price + 1 if tick > 1 else 0   # a reject
            out.append((NewOrder, kw))
            live.append((next_id, firm))
            next_id += 1
        elif r < 0.54:
            out.append((NewOrder, dict(order_id=next_id, locate=i.locate, side=side, qty=qty, price=0,
                                       ord_type=MARKET, tif=rnd.choice((IOC, DAY)), firm=firm)))
            next_id += 1
        elif r < 0.60:
            stop = base + rnd.randint(-3, 3) * tick
            t = rnd.choice((STOP, STOP_LIMIT))
            out.append((NewOrder, dict(order_id=next_id, locate=i.locate, side=side, qty=qty,
                                       price=price if t == STOP_LIMIT else 0, ord_type=t, tif=GTC,
                                       stop_price=stop, firm=firm)))
            live.append((next_id, firm))
            next_id += 1
        elif r < 0.78:
            oid, f = rnd.choice(live)
            out.append((CancelOrder, dict(order_id=oid, firm=f if rnd.random() < 0.95 else f % firms + 1)))
        elif r < 0.97:
            oid, f = rnd.choice(live)
            choice = rnd.random()
            new_price = price if choice < 0.6 else base + rnd.randint(-1, 1) * tick
            out.append((ReplaceOrder, dict(order_id=oid, firm=f, qty=rnd.randint(1, 10) * 100, price=new_price)))
        else:
            out.append((MassCancel, dict(firm=firm, locate=rnd.choice((0, i.locate)),
                                         side=rnd.choice((255, BUY, SELL)))))
    return out


def build(spec: Spec) -> Command:
    cls, kw = spec
    return cls(**kw)


def iter_batches(engine: Engine, specs: list[Spec], batch: int, seq0: int = 1,
                 ts0: int = T0) -> Iterator[list[tuple[int, int, Command, list[Event]]]]:
    """Apply the commands batch by batch, yielding each batch's results before applying the next.
    Each command's ts depends on its sequence number only (as the WAL gives it back whatever the
    batching of the replay)."""
    seq = seq0
    for start in range(0, len(specs), batch):
        res = []
        for spec in specs[start:start + batch]:
            ts = ts0 + seq * 1000
            cmd = build(spec)
            out: list[Event] = []
            engine.apply(cmd, out)
            res.append((seq, ts, cmd, out))
            seq += 1
        yield res


def run_batches(engine: Engine, specs: list[Spec], batch: int, seq0: int = 1,
                ts0: int = T0) -> list[list[tuple[int, int, Command, list[Event]]]]:
    return list(iter_batches(engine, specs, batch, seq0, ts0))


def messages_of(transport: MemoryTransport, channel: str, leg: int = A) -> list[bytes]:
    """Every message sent on a channel's leg, in order; checks the sequence numbers run on."""
    out: list[bytes] = []
    for d in transport.of(channel, leg):
        p = parse_packet(d)
        if p.message_count and not p.is_end_of_session:
            assert p.sequence == len(out) + 1
            out.extend(p.messages)
    return out


def publish_all(specs: list[Spec], batch: int = 50, config: FeedConfig | None = None,
                ins: list[Instrument] | None = None) -> tuple[Engine, MemoryTransport, Publisher]:
    ins = ins or instruments()
    engine = Engine(ins, FIRM_STP)
    transport = MemoryTransport()
    pub = Publisher(config or FeedConfig(), ins, MIDNIGHT, transport)
    pub.start(T0 - 10**9)
    for res in iter_batches(engine, specs, batch):
        pub.publish(res)
    return engine, transport, pub


# --------------------------------------------------------------------------------------------
# The mapping table
# --------------------------------------------------------------------------------------------

def test_every_event_kind_of_the_catalogue_has_an_l3_decision() -> None:
    missing = [EVENT_LAYOUTS[k][0] for k in EVENT_LAYOUTS if k not in L3_MAPPING or k not in L3_MESSAGES]
    assert not missing, f"events with no L3 feed mapping decision: {missing}"
    assert set(L3_MAPPING) == set(L3_MESSAGES) == set(EVENT_LAYOUTS)
    for types in L3_MESSAGES.values():
        assert all(t in itch.LAYOUTS for t in types)


def test_an_unknown_event_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="no feed mapping"):
        encode_l3([(1, T0, CancelOrder(1), [(99, None)])], [], MIDNIGHT, [b"        "] * 8)


def test_block_packers_are_the_itch_layouts_with_a_length_prefix() -> None:
    ts6 = (12345).to_bytes(6, "big")
    cases = {
        b"A": (1, 0, ts6, 7, b"B", 100, b"AAA     ", 1_000_000),
        b"F": (1, 0, ts6, 7, b"S", 100, b"AAA     ", 1_000_000, b"MWXX"),
        b"E": (1, 0, ts6, 7, 100, 3),
        b"C": (1, 0, ts6, 7, 100, 3, b"Y", 999_900),
        b"X": (1, 0, ts6, 7, 50),
        b"D": (1, 0, ts6, 7),
        b"U": (1, 0, ts6, 7, 8, 100, 1_000_100),
    }
    for t, fields in cases.items():
        layout = itch.LAYOUTS[t]
        pack, head = block_packer(layout)
        framed = pack(head, *fields)
        assert framed[:2] == layout.size.to_bytes(2, "big") and framed[2:3] == t
        assert framed[2:] == itch.FAST_ENCODERS[t](fields[0], fields[1], 12345, *fields[3:])
        assert itch.decode(framed[2:]).timestamp == 12345


def test_block_heads_are_the_message_lengths_the_feed_always_sent() -> None:
    # the lengths the publisher and the L2/L1 encoders once passed as literals, by type byte
    sent = {b"A": 36, b"F": 40, b"E": 31, b"C": 36, b"X": 23, b"D": 19, b"U": 35, b"S": 12, b"R": 39,
            b"H": 25, b"W": 12, b"Q": 40, b"I": 50, b"J": 35}
    for t, size in sent.items():
        assert block_packer(itch.LAYOUTS[t]).head == size.to_bytes(2, "big") + t
    for layout, size in ((PRICE_LEVEL_UPDATE, 33), (BEST_BID_OFFER, 47), (LAST_TRADE, 40)):
        assert layout.type_byte is not None
        assert block_packer(layout).head == size.to_bytes(2, "big") + layout.type_byte
    with pytest.raises(ValueError, match="type byte"):
        block_packer(moldudp64.HEADER)


# --------------------------------------------------------------------------------------------
# Events to ITCH, case by case (a table: commands -> the decoded messages they must give)
# --------------------------------------------------------------------------------------------

def _l3(engine: Engine, cmds: list[Command]) -> list[tuple[Any, ...]]:
    res = []
    for k, cmd in enumerate(cmds):
        out: list[Event] = []
        engine.apply(cmd, out)
        res.append((k + 1, T0, cmd, out))
    framed: list[bytes] = []
    stocks = [b"        "] * 8
    for i in instruments():
        stocks[i.locate] = i.stock8
    encode_l3(res, framed, MIDNIGHT, stocks)
    msgs = []
    for f in framed:
        assert int.from_bytes(f[:2], "big") == len(f) - 2
        m = itch.decode(f[2:])
        assert m.timestamp == T0 - MIDNIGHT and m.tracking == 0
        assert m.stock_locate in (1, 2)
        t = itch.message_type(m)
        msgs.append((t.decode(),) + tuple(m)[3:])   # the header (locate, tracking, ts) checked above
    return msgs


S_AAA = b"AAA     "
P = 1_000_000   # $100.00


@pytest.mark.parametrize("name, setup, cmds, expected", [
    ("rest: A", [],
     [NewOrder(1, 1, BUY, 100, P, firm=1)],
     [("A", 1, b"B", 100, S_AAA, P)]),
    ("rest with an MPID: F", [],
     [NewOrder(1, 1, SELL, 300, P + 100, firm=1, mpid="MWXX")],
     [("F", 1, b"S", 300, S_AAA, P + 100, b"MWXX")]),
    ("accepted IOC that does not trade: nothing", [],
     [NewOrder(1, 1, BUY, 100, P, tif=IOC, firm=1)],
     []),
    ("execution: E on the maker only; the taker's IOC remainder: nothing",
     [NewOrder(1, 1, BUY, 100, P, firm=1)],
     [NewOrder(2, 1, SELL, 150, P - 100, tif=IOC, firm=2)],
     [("E", 1, 100, 1)]),
    ("partial execution then the taker rests: E then A",
     [NewOrder(1, 1, BUY, 100, P, firm=1)],
     [NewOrder(2, 1, SELL, 150, P, firm=2)],
     [("E", 1, 100, 1), ("A", 2, b"S", 50, S_AAA, P)]),
    ("cancel: D",
     [NewOrder(1, 1, BUY, 100, P, firm=1)],
     [CancelOrder(1, firm=1)],
     [("D", 1)]),
    ("cancel of a partly filled order: D",
     [NewOrder(1, 1, BUY, 100, P, firm=1), NewOrder(2, 1, SELL, 40, P, tif=IOC, firm=2)],
     [CancelOrder(1, firm=1)],
     [("D", 1)]),
    ("replace down in place: X of the difference",
     [NewOrder(1, 1, BUY, 500, P, firm=1)],
     [ReplaceOrder(1, 200, P, firm=1)],
     [("X", 1, 300)]),
    ("replace to the same quantity: nothing",
     [NewOrder(1, 1, BUY, 500, P, firm=1)],
     [ReplaceOrder(1, 500, P, firm=1)],
     []),
    ("replace to a new price: U with the new ref",
     [NewOrder(1, 1, BUY, 500, P, firm=1)],
     [ReplaceOrder(1, 400, P - 200, firm=1)],
     [("U", 1, 2, 400, P - 200)]),
    ("replace up: U (priority lost), shares are the new leaves",
     [NewOrder(1, 1, BUY, 500, P, firm=1), NewOrder(2, 1, SELL, 100, P, tif=IOC, firm=2)],
     [ReplaceOrder(1, 900, P, firm=1)],
     [("U", 1, 3, 800, P)]),
    ("crossing replace: D old, E on the maker, A of the rest under the new ref",
     [NewOrder(1, 1, BUY, 500, P - 100, firm=1), NewOrder(2, 1, SELL, 200, P, firm=2)],
     [ReplaceOrder(1, 500, P, firm=1)],
     [("D", 1), ("E", 2, 200, 1), ("A", 3, b"B", 300, S_AAA, P)]),
    ("self-trade DC: X on the resting order, nothing for the incoming one",
     [NewOrder(1, 1, BUY, 500, P, firm=3)],
     [NewOrder(2, 1, SELL, 200, P, firm=3, stp=STP_DC)],
     [("X", 1, 200)]),
    ("self-trade CO: D on the resting order, then the incoming one rests",
     [NewOrder(1, 1, BUY, 500, P, firm=2)],
     [NewOrder(2, 1, SELL, 200, P, firm=2, stp=STP_CO)],
     [("D", 1), ("A", 2, b"S", 200, S_AAA, P)]),
    ("reject: nothing", [],
     [NewOrder(1, 1, BUY, 100, P + 1, firm=1), CancelOrder(99, firm=1)],
     []),
    ("pending stop, its replace and its cancel: nothing", [],
     [NewOrder(1, 1, BUY, 100, 0, ord_type=STOP, tif=GTC, stop_price=P + 500, firm=1),
      ReplaceOrder(1, 200, 0, firm=1, stop_price=P + 600), CancelOrder(1, firm=1)],
     []),
    ("a stop triggered by a trade: its own executions and add",
     [NewOrder(1, 1, BUY, 100, P, firm=1), NewOrder(2, 1, SELL, 100, P + 100, firm=2),
      NewOrder(3, 1, SELL, 100, P - 100, ord_type=STOP_LIMIT, tif=GTC, stop_price=P, firm=4)],
     [NewOrder(4, 1, SELL, 50, P, tif=IOC, firm=2)],
     [("E", 1, 50, 1), ("E", 1, 50, 2), ("A", 3, b"S", 50, S_AAA, P - 100)]),
    ("mass cancel: one D per resting order, nothing for the pending stop",
     [NewOrder(1, 1, BUY, 100, P, firm=1), NewOrder(2, 2, SELL, 100, P + 100, firm=1),
      NewOrder(3, 1, BUY, 100, 0, ord_type=STOP, tif=GTC, stop_price=P + 900, firm=1),
      NewOrder(4, 1, BUY, 100, P, firm=2)],
     [MassCancel(1)],
     [("D", 1), ("D", 2)]),
])
def test_events_become_the_itch_messages_of_the_table(name: str, setup: list[Command], cmds: list[Command],
                                                      expected: list[tuple[Any, ...]]) -> None:
    engine = Engine(instruments(), FIRM_STP)
    _l3(engine, setup)
    got = _l3(engine, cmds)
    assert got == expected, name


def test_execution_at_another_price_is_c_printable_with_the_price() -> None:
    maker = NewOrder(1, 1, BUY, 100, P, firm=1)
    maker.ref = 5
    taker = NewOrder(2, 1, SELL, 100, P, firm=2)
    ev = (Ev.EXECUTED, maker, taker, 60, P - 300, 9, 40, 60, 40, 60)
    framed: list[bytes] = []
    encode_l3([(1, T0, taker, [ev])], framed, MIDNIGHT, [S_AAA] * 2)
    m = itch.decode(framed[0][2:])
    assert m == itch.OrderExecutedWithPrice(1, 0, T0 - MIDNIGHT, 5, 60, 9, b"Y", P - 300)


def test_timestamps_are_nanoseconds_since_the_sessions_midnight() -> None:
    o = NewOrder(1, 1, BUY, 100, P, firm=1)
    o.ref = 1
    framed: list[bytes] = []
    encode_l3([(1, MIDNIGHT + 1, o, [(Ev.ADDED, o, 100)]), (2, MIDNIGHT + DAY_NS - 1, o, [(Ev.ADDED, o, 100)])],
              framed, MIDNIGHT, [S_AAA] * 2, tracking=7)
    assert [itch.decode(f[2:]).timestamp for f in framed] == [1, DAY_NS - 1]
    assert itch.decode(framed[0][2:]).tracking == 7
    with pytest.raises(OverflowError):   # epoch nanoseconds do not fit 48 bits: refused, not wrapped
        encode_l3([(1, MIDNIGHT, o, [(Ev.ADDED, o, 100)])], [], 0, [S_AAA] * 2)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_payload", [23 + 20, 100, 576, 1472, 9000])
def test_packetize_cuts_like_the_packet_builder(max_payload: int) -> None:
    rnd = random.Random(max_payload)
    msgs = [bytes([65 + i % 26]) * rnd.randint(1, min(50, max_payload - 22)) for i in range(3000)]
    framed = [len(m).to_bytes(2, "big") + m for m in msgs]
    builder = PacketBuilder(Session(b"SESSION001", 41), max_payload)
    builder.add_many(msgs)
    expected = builder.flush()
    got = packetize(b"SESSION001", 41, framed, max_payload)
    assert got == expected
    assert all(len(d) <= max_payload for d in got)
    assert [m for d in got for m in parse_packet(d).messages] == msgs
    with pytest.raises(ValueError):
        packetize(b"SESSION001", 1, [b"\x00\x05" + b"x" * 2000], 1472)


def test_a_batch_is_packed_into_as_few_datagrams_as_fit() -> None:
    specs = [(NewOrder, dict(order_id=i + 1, locate=1, side=BUY, qty=100, price=P - i * 100, firm=1))
             for i in range(200)]
    _, transport, pub = publish_all(specs, batch=200, config=FeedConfig(channels=(L3,)))
    datagrams = transport.of(L3)
    # start of session: 1 datagram; 200 Add Orders of 38 bytes framed: ceil(200 / 38) = 6 datagrams
    assert len(datagrams) == 1 + 6
    assert all(len(d) <= 1472 for d in datagrams)
    assert transport.of(L3, B) == datagrams


# --------------------------------------------------------------------------------------------
# Sessions, start and end, heartbeats
# --------------------------------------------------------------------------------------------

def test_session_names_say_day_partition_channel_and_generation() -> None:
    assert day_of_midnight(MIDNIGHT) == "231114"
    assert session_for("231114", 7, L3, 0) == b"2311140730"
    assert session_for("231114", 7, L1, 11) == b"231114071B"
    assert channel_of_session(b"2311140720") == L2 and channel_of_session(b"NASDAQ0001") is None
    with pytest.raises(ValueError):
        session_for("231114", 7, L3, 36)


def test_start_of_session_then_end_of_session_with_end_of_session_packets() -> None:
    ins = instruments()
    transport = MemoryTransport()
    config = FeedConfig(heartbeat_ns=10**9, end_of_session_ns=3 * 10**9)
    pub = Publisher(config, ins, MIDNIGHT, transport)
    start = T0 - 3600 * 10**9
    pub.start(start)
    for ch in CHANNELS:
        msgs = [itch.decode(m) for m in messages_of(transport, ch)]
        assert [itch.message_type(m) for m in msgs] == [b"S", b"R", b"R", b"R", b"S", b"S", b"H", b"H", b"H"]
        assert [m.event_code for m in msgs if isinstance(m, itch.SystemEvent)] == [b"O", b"S", b"Q"]
        dirs = [m for m in msgs if isinstance(m, itch.StockDirectory)]
        assert [(d.stock_locate, d.stock, d.round_lot_size) for d in dirs] == [
            (1, b"AAA     ", 100), (2, b"BBB     ", 50), (7, b"CCCC    ", 100)]
        assert all(m.timestamp == start - MIDNIGHT for m in msgs)
        assert [(m.stock_locate, m.trading_state) for m in msgs if isinstance(m, itch.StockTradingAction)] == [
            (1, b"T"), (2, b"T"), (7, b"T")]
    sessions = {ch: pub.channels[ch].session for ch in CHANNELS}
    assert len(set(sessions.values())) == 3
    end = T0 + 8 * 3600 * 10**9
    pub.end_session(end)
    for ch in CHANNELS:
        tail = [decode_as(itch.SystemEvent, m) for m in messages_of(transport, ch)[-3:]]
        assert [m.event_code for m in tail] == [b"M", b"E", b"C"]
    eos = lambda: [parse_packet(d) for d in transport.of(L3) if parse_packet(d).is_end_of_session]  # noqa: E731
    assert len(eos()) == 1 and eos()[0].sequence == pub.channels[L3].next_seq
    pub.poll(end + 5 * 10**8)
    assert len(eos()) == 1
    pub.poll(end + 10**9)
    pub.poll(end + 2 * 10**9)
    assert len(eos()) == 3 and not pub.finished
    pub.poll(end + 3 * 10**9)
    assert pub.finished and len(eos()) == 3
    assert not [d for d in transport.of(L3) if parse_packet(d).is_heartbeat]


def test_stock_directory_carries_the_configured_category_and_luld_tier() -> None:
    transport = MemoryTransport()
    config = FeedConfig(directory={1: (b"G", b"1"), 2: (b"S", b"2")})
    Publisher(config, instruments(), MIDNIGHT, transport).start(T0)
    for ch in CHANNELS:
        dirs = [m for m in map(itch.decode, messages_of(transport, ch)) if isinstance(m, itch.StockDirectory)]
        assert [(d.stock_locate, d.market_category, d.luld_ref_price_tier) for d in dirs] == [
            (1, b"G", b"1"), (2, b"S", b"2"), (7, b"Q", b" ")]
    with pytest.raises(ValueError, match="one byte"):
        FeedConfig(directory={1: (b"GG", b"1")})


def test_heartbeat_after_one_second_idle_with_the_next_sequence() -> None:
    ins = instruments()
    transport = MemoryTransport()
    pub = Publisher(FeedConfig(channels=(L3,)), ins, MIDNIGHT, transport)
    pub.start(T0)
    beats = lambda: [parse_packet(d) for d in transport.of(L3) if parse_packet(d).is_heartbeat]  # noqa: E731
    assert pub.poll(T0 + 999_999_999) == 0 and not beats()
    assert pub.poll(T0 + 10**9) == 1
    assert [(b.session, b.sequence) for b in beats()] == [(pub.channels[L3].session, 10)]
    engine = Engine(ins, FIRM_STP)
    (batch,) = run_batches(engine, [(NewOrder, dict(order_id=1, locate=1, side=BUY, qty=1, price=P))], 1,
                           ts0=T0 + 15 * 10**8)
    pub.publish(batch)   # ts T0 + 1.5 s + 1000 ns
    assert pub.poll(T0 + 2 * 10**9) == 0
    assert pub.poll(T0 + 25 * 10**8 + 1000) == 1
    assert beats()[-1].sequence == 11
    assert len(transport.of(L3, B)) == len(transport.of(L3, A))


def test_the_publisher_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock(*_: Any) -> int:
        raise AssertionError("the publisher read a clock")
    specs = random_specs(3, 300)
    engine = Engine(instruments(), FIRM_STP)
    batches = run_batches(engine, specs, 20)
    transport = MemoryTransport()
    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"):
        monkeypatch.setattr(time, name, no_clock)
    pub = Publisher(FeedConfig(), instruments(), MIDNIGHT, transport)
    pub.start(T0)
    for b in batches:
        pub.publish(b)
    pub.poll(T0 + 10**10)
    pub.end_session(T0 + 10**11)
    monkeypatch.undo()
    assert transport.sent


# --------------------------------------------------------------------------------------------
# L2 / L1
# --------------------------------------------------------------------------------------------

def test_our_message_types_are_not_itch_types_and_decode() -> None:
    assert set(OWN_LAYOUTS) == {b"d", b"q", b"t"}
    assert not set(OWN_LAYOUTS) & set(itch.LAYOUTS)
    assert {t: m.size for t, m in OWN_LAYOUTS.items()} == {b"d": 33, b"q": 47, b"t": 40}
    for layout in OWN_LAYOUTS.values():
        assert layout.names[:3] == ("stock_locate", "tracking", "timestamp")
        assert layout.fields[3].name == "instrument_seq" and layout.fields[3].offset == 11
    assert len(ALL_LAYOUTS) == len(itch.LAYOUTS) + 3
    with pytest.raises(ValueError):
        decode_any(b"z" + b"\0" * 10)


def test_depth_tracker_equals_the_engine_after_every_command() -> None:
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    tracker = DepthTracker()
    for spec in random_specs(11, 3000, ins):
        out: list[Event] = []
        engine.apply(build(spec), out)
        tracker.apply(out)
        for i in ins:
            book = engine.book(i.locate)
            for side in (BUY, SELL):
                assert tracker.depth(i.locate, side) == book.depth(side), spec


@pytest.mark.parametrize("levels", [1, 3, 10])
def test_l2_and_l1_books_equal_the_engine_after_every_batch(levels: int) -> None:
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    transport = MemoryTransport()
    config = FeedConfig(depth_levels=levels)
    pub = Publisher(config, ins, MIDNIGHT, transport)
    pub.start(T0)
    sub = FeedSubscriber(config)
    seen = 0
    trades = 0
    for batch in iter_batches(engine, random_specs(levels, 2500, ins), 13):
        pub.publish(batch)
        trades += sum(1 for r in batch for ev in r[3] if ev[0] == Ev.EXECUTED)
        for ch, leg, ts, d in transport.sent[seen:]:
            sub.receive(ch, ts, d, leg)
        seen = len(transport.sent)
        assert sub.l2.summary() == engine_l2_summary(engine, levels)
        assert sub.l1.summary() == engine_l1_summary(engine)
        assert sub.l3.summary() == engine_l3_summary(engine)
    assert trades > 100
    assert not sub.l2.seqs.stale and not sub.l1.seqs.stale
    # one 't' per execution; volume adds up
    lt = [decode_any(m) for m in messages_of(transport, L1) if m[:1] == b"t"]
    assert len(lt) == trades
    assert sum(m.shares for m in lt) == engine.traded_qty
    # per-instrument sequence numbers run 1, 2, 3 ... per channel
    for ch, types in ((L2, b"d"), (L1, b"qt")):
        per: dict[int, list[int]] = {}
        for m in messages_of(transport, ch):
            if m[:1] in [bytes([t]) for t in types]:
                msg = decode_any(m)
                per.setdefault(msg.stock_locate, []).append(msg.instrument_seq)
        assert per and all(v == list(range(1, len(v) + 1)) for v in per.values())


def test_l2_update_groups_end_with_the_end_of_update_flag() -> None:
    specs = [(NewOrder, dict(order_id=i + 1, locate=1, side=SELL, qty=100, price=P + i * 100, firm=1))
             for i in range(5)]
    specs.append((NewOrder, dict(order_id=9, locate=1, side=BUY, qty=500, price=P + 400, tif=IOC, firm=2)))
    _, transport, _ = publish_all(specs, batch=10, config=FeedConfig(channels=(L2,), depth_levels=3))
    d = [decode_any(m) for m in messages_of(transport, L2) if m[:1] == b"d"]
    # three adds into the window, two outside it (nothing), then a sweep of all five levels
    assert [(m.price, m.shares, m.orders, m.end_of_update) for m in d[:3]] == [
        (P, 100, 1, b"Y"), (P + 100, 100, 1, b"Y"), (P + 200, 100, 1, b"Y")]
    sweep = d[3:]
    assert [(m.price, m.shares) for m in sweep] == [(P, 0), (P + 100, 0), (P + 200, 0)]
    assert [m.end_of_update for m in sweep] == [b"N", b"N", b"Y"]
    assert len({m.instrument_seq for m in d}) == len(d)


def test_the_same_commands_give_the_same_messages_whatever_the_batching() -> None:
    specs = random_specs(21, 1500)
    streams = []
    for batch in (1, 7, 64, 1500):
        _, transport, _ = publish_all(specs, batch=batch)
        streams.append({ch: messages_of(transport, ch) for ch in CHANNELS})
    assert all(s == streams[0] for s in streams[1:])
    assert all(len(v) > 500 for v in streams[0].values())
    for ch in CHANNELS:
        for m in streams[0][ch]:
            decode_any(m)


# --------------------------------------------------------------------------------------------
# encode_depth (the batch loop that settles the commonest commands inline) against the
# per-command general code it stands for
# --------------------------------------------------------------------------------------------

def reference_depth(results: list[tuple[int, int, Command, list[Event]]], tracker: DepthTracker,
                    l2: L2Encoder | None, l1: L1Encoder | None, l2_out: list[bytes], l1_out: list[bytes]) -> None:
    """The publisher's L2/L1 loop before encode_depth: apply, then each encoder, for every command."""
    for _seq, ts, _cmd, events in results:
        touched = tracker.apply(events)
        if not touched and not tracker.trades:
            continue
        ts6 = (ts - MIDNIGHT).to_bytes(6, "big")
        if l2 is not None:
            l2.encode(touched, ts6, l2_out)
        if l1 is not None:
            l1.encode(touched, tracker.trades, ts6, l1_out)


def one_level_shapes(batches: list[list[tuple[int, int, Command, list[Event]]]]) -> dict[str, int]:
    """How many commands of each shape encode_depth settles inline, and how many emptied a level."""
    n = {"rest": 0, "cancel": 0, "fills": 0, "emptied": 0}
    for res in batches:
        for _seq, _ts, _cmd, evs in res:
            kinds = [e[0] for e in evs]
            if kinds == [Ev.ACCEPTED, Ev.ADDED]:
                n["rest"] += 1
            elif kinds == [Ev.CANCELLED] and evs[0][6]:
                n["cancel"] += 1
                n["emptied"] += not evs[0][3]
            elif len(kinds) > 1 and kinds[0] == Ev.ACCEPTED and set(kinds[1:]) == {Ev.EXECUTED} and \
                    len({(e[1].locate, e[1].side, e[1].price) for e in evs[1:]}) == 1:
                n["fills"] += 1
                n["emptied"] += not evs[-1][6]
    return n


def assert_depth_encodings_agree(batches: list[list[tuple[int, int, Command, list[Event]]]], levels: int,
                                 channels: tuple[str, ...]) -> int:
    """encode_depth and reference_depth, each with its own tracker and encoders, give the same
    messages batch by batch and end in the same checkpoint state. Returns the messages compared."""
    def encoders() -> tuple[DepthTracker, L2Encoder | None, L1Encoder | None]:
        t = DepthTracker()
        return (t, L2Encoder(t, levels, tracking=7) if L2 in channels else None,
                L1Encoder(t, tracking=7) if L1 in channels else None)
    (ft, f2, f1), (rt, r2, r1) = encoders(), encoders()
    compared = 0
    for res in batches:
        fast2: list[bytes] = []
        fast1: list[bytes] = []
        ref2: list[bytes] = []
        ref1: list[bytes] = []
        encode_depth(res, MIDNIGHT, ft, f2, f1, fast2, fast1)
        reference_depth(res, rt, r2, r1, ref2, ref1)
        assert fast2 == ref2, f"L2 differs in the batch from seq {res[0][0]}"
        assert fast1 == ref1, f"L1 differs in the batch from seq {res[0][0]}"
        compared += len(ref2) + len(ref1)
    assert ft.state() == rt.state()
    for fast, ref in ((f2, r2), (f1, r1)):
        if ref is not None:
            assert fast is not None and fast.state() == ref.state()
    return compared


@pytest.mark.parametrize("levels,channels", [(1, (L2, L1)), (3, (L2, L1)), (10, (L2, L1)), (3, (L2,)), (3, (L1,))])
def test_encode_depth_equals_the_general_code_on_every_event_kind(levels: int, channels: tuple[str, ...]) -> None:
    ins = instruments()
    batches = run_batches(Engine(ins, FIRM_STP), random_specs(31 + levels, 3000, ins), 17)
    shapes = one_level_shapes(batches)
    assert min(shapes.values()) > 10, shapes
    assert assert_depth_encodings_agree(batches, levels, channels) > 1000


@pytest.mark.parametrize("levels", [1, 3, 10])
def test_encode_depth_equals_the_general_code_on_a_generated_flow(levels: int) -> None:
    """The standard flow's commands (rest, cancel, fill against one level, sweep), few resting
    orders per instrument so that levels empty often, in batches as the daemon cuts them."""
    data, _ = generate(12_000, instruments=3, seed=9, target=60)
    cmds = decode_records(data)
    engine = Engine(flow_instruments(3), FLOW_FIRM_STP)
    batches = []
    for start in range(0, len(cmds), 1024):
        res = []
        for seq in range(start + 1, min(start + 1024, len(cmds)) + 1):
            out: list[Event] = []
            engine.apply(cmds[seq - 1], out)
            res.append((seq, T0 + seq // 4 * 1000, cmds[seq - 1], out))
        batches.append(res)
    shapes = one_level_shapes(batches)
    assert min(shapes.values()) > 100, shapes
    assert assert_depth_encodings_agree(batches, levels, (L2, L1)) > 10_000
