"""Differential and oracle tests of trading states, auctions and safeguards.

1. Random sessions that mix orders with clock ticks, schedules, halts, resumes and closes, on
   instruments with price bands, market-order collars and circuit breakers narrow enough for the
   random prices to reach them: both engines must emit the same events, keep the same state hash and
   pass their invariants after every command (as tests/test_matching_properties.py, whose command
   strategies are reused).
2. Random auction books: the uncross price and volume checked against a brute-force oracle that
   reads the rules of docs/matching.md literally (every integer price evaluated), and the fills
   against the priority order (market orders, then price, then time: each side filled as a prefix).
"""
from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_matching_properties import (
    FIRM_STP,
    Spec,
    _cancel,
    _mass_cancel,
    _new_order,
    _replace,
    _resolve,
    _spec,
    run_both,
)

from appliance.catalogue import (
    CancelOrder,
    ClockTick,
    Close,
    Ev,
    Halt,
    NewOrder,
    Resume,
    SetSchedule,
)
from appliance.matching.engine import Engine
from appliance.matching.reference import ReferenceEngine
from appliance.matching.rules import InstrumentRules, TradingRules
from appliance.model import (
    BUY,
    LIMIT,
    MARKET,
    SELL,
    STP_CN,
    TS_CLOSED,
    TS_CONTINUOUS,
    TS_OPENING_AUCTION,
    TS_PRE_OPEN,
    Instrument,
)

SEC = 10**9
T0 = 1_767_600_000 * SEC
AAA = Instrument("AAA", 1, tick=100)
BBB = Instrument("BBB", 2, tick=1)
TIMERS = dict(limit_state_ns=15 * SEC, pause_ns=20 * SEC, reopen_call_ns=5 * SEC,
              circuit_breaker_halt_ns=10 * SEC, noii_interval_ns=SEC)
# AAA's band (97.00-103.00) and BBB's (9997-10003) are the edges of the random prices; BBB's breaker
# range (9998-10002) lies inside its band; the collars are narrower than the bands.
SAFEGUARDS = {1: InstrumentRules(10000, band_bps=300, collar_bps=200, post_only_reprice=1),
              2: InstrumentRules(10000, band_bps=3, collar_bps=2, circuit_breaker_bps=2)}
DELTAS = (0, SEC // 2, SEC, SEC, 3 * SEC, 6 * SEC, 16 * SEC, 25 * SEC, 100 * SEC)


@st.composite
def admin_commands(draw: st.DrawFn, locates: tuple[int, ...]) -> Spec:
    """An admin command; ClockTick and SetSchedule carry times relative to the clock, as markers that
    `_times` resolves ("tick", delta) and ("schedule", offsets)."""
    kind = draw(st.sampled_from(("tick",) * 16 + ("halt",) * 4 + ("resume",) * 6 + ("close", "schedule", "schedule")))
    if kind == "tick":
        return "ClockTick", (("tick", draw(st.sampled_from(DELTAS))),)
    if kind == "schedule":
        start = draw(st.sampled_from((-SEC, 0, SEC, 5 * SEC)))
        steps = draw(st.lists(st.sampled_from((0, SEC, 3 * SEC, 10 * SEC, 40 * SEC)), min_size=4, max_size=4))
        offsets = [start]
        for step in steps:
            offsets.append(offsets[-1] + step)
        if draw(st.integers(0, 9)) == 0:
            offsets = [0] * 5 if draw(st.booleans()) else offsets[::-1]   # none, or invalid
        return "SetSchedule", (("schedule", tuple(offsets)),)
    locate = draw(st.sampled_from((0,) + locates + (9,)))
    cls = {"halt": Halt, "resume": Resume, "close": Close}[kind]
    return _spec(cls(locate))


@st.composite
def trading_commands(draw: st.DrawFn, locates: tuple[int, ...]) -> Spec:
    kind = draw(st.sampled_from(("new",) * 10 + ("cancel",) * 3 + ("replace",) * 3 + ("mass",) + ("admin",) * 4))
    if kind == "new":
        return _new_order(draw, locates)
    if kind == "cancel":
        return _cancel(draw)
    if kind == "replace":
        return _replace(draw)
    if kind == "mass":
        return _mass_cancel(draw, locates)
    return draw(admin_commands(locates))


def _times(specs: list[Spec]) -> list[Spec]:
    """Resolve the time markers: a tick moves the clock by its delta; a schedule's offsets are from it."""
    now = T0
    out: list[Spec] = []
    for name, values in specs:
        if values and isinstance(values[0], tuple) and values[0] and values[0][0] == "tick":
            now += values[0][1]
            values = (now,)
        elif values and isinstance(values[0], tuple) and values[0] and values[0][0] == "schedule":
            offsets = values[0][1]
            values = tuple(0 if offsets == (0,) * 5 else now + off for off in offsets)
        out.append((name, values))
    return out


@st.composite
def trading_sessions(draw: st.DrawFn) -> tuple[tuple[Instrument, ...], int, TradingRules, list[Spec]]:
    instruments = draw(st.sampled_from(((AAA,), (AAA, BBB), (BBB,))))
    default_stp = draw(st.sampled_from((STP_CN, STP_CN, 4)))
    locates = tuple(i.locate for i in instruments)
    safeguards = {loc: r for loc, r in SAFEGUARDS.items() if loc in locates and draw(st.integers(0, 4))}
    start = draw(st.sampled_from((TS_CONTINUOUS, TS_CONTINUOUS, TS_CLOSED, TS_PRE_OPEN, TS_OPENING_AUCTION,
                                  TS_OPENING_AUCTION)))
    rules = TradingRules.of(safeguards, start_state=start, **TIMERS)
    cmd = trading_commands(locates)
    chunks = draw(st.lists(st.lists(cmd, min_size=1, max_size=12), min_size=1, max_size=8))
    specs = [("ClockTick", (("tick", 0),))] + [spec for chunk in chunks for spec in chunk][:70]
    return instruments, default_stp, rules, _times(_resolve(specs))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session=trading_sessions())
def test_engines_agree_on_random_trading_days(session: Any, kit: Any) -> None:
    instruments, default_stp, rules, specs = session
    fast, ref = run_both(kit, instruments, default_stp, specs, FIRM_STP, rules)
    assert fast.clock_state()[0] == ref.now


def _day(seed: int) -> list[Spec]:
    """A long seeded day on AAA and BBB: schedule, pre-open orders, open, flow with halts, close."""
    import random

    rng = random.Random(seed)
    specs: list[Spec] = [_spec(ClockTick(T0)),
                         _spec(SetSchedule(T0 + 10 * SEC, T0 + 20 * SEC, T0 + 30 * SEC, T0 + 1500 * SEC,
                                           T0 + 1600 * SEC))]
    now = T0
    oid = 0
    live: list[int] = []
    while now < T0 + 1700 * SEC:
        r = rng.random()
        if r < 0.1:
            now += rng.choice((SEC // 3, SEC, 2 * SEC, 7 * SEC))
            specs.append(_spec(ClockTick(now)))
        elif r < 0.11:
            specs.append(_spec(rng.choice((Halt, Resume, Resume))(rng.choice((0, 1, 2)))))
        elif r < 0.75 or not live:
            oid += 1
            locate = rng.choice((1, 2))
            step = 100 if locate == 1 else 1
            side = rng.choice((BUY, SELL))
            away = rng.choice((0, 1, 1, 2, 3, 4)) * (1 if rng.random() < 0.8 else -1)
            price = 10000 - step * away if side == BUY else 10000 + step * away
            kind = MARKET if rng.random() < 0.05 else LIMIT
            specs.append(_spec(NewOrder(oid, locate, side, 10 * rng.randint(1, 10), 0 if kind == MARKET else price,
                                        kind, rng.choice((0, 0, 1)), firm=1 + oid % 4)))
            live.append(oid)
        else:
            victim = live.pop(rng.randrange(len(live)))
            specs.append(_spec(CancelOrder(victim, 1 + victim % 4)))
    return specs


def test_engines_agree_on_long_scheduled_days(kit: Any) -> None:
    # AAA's band is two steps wide each side: the day's prices reach it, and the limit state follows
    safeguards = {**SAFEGUARDS, 1: InstrumentRules(10000, band_bps=200, collar_bps=100)}
    rules = TradingRules.of(safeguards, start_state=TS_CLOSED, **TIMERS)
    for seed in (1, 2):
        fast, _ = run_both(kit, (AAA, BBB), STP_CN, _day(seed), FIRM_STP, rules)
        assert all(b.state == TS_CLOSED for b in fast.book_list)


# ==================================================================================================
# The uncross against a brute-force oracle
# ==================================================================================================
def oracle(bids: list[tuple[int, int]], asks: list[tuple[int, int]], ref: int) -> tuple[int, int, int]:
    """(price, volume, surplus) by docs/matching.md, "Auction price", read literally. Orders are
    (price, qty); price 0 is a market order."""
    mb = sum(q for p, q in bids if p == 0)
    ms = sum(q for p, q in asks if p == 0)
    limits = sorted({p for p, _ in bids + asks if p})

    def demand(x: int) -> int:
        return mb + sum(q for p, q in bids if p and p >= x)

    def supply(x: int) -> int:
        return ms + sum(q for p, q in asks if p and p <= x)

    if not limits:
        return (ref, min(mb, ms), mb - ms) if mb and ms and ref else (0, 0, 0)
    # the most volume over every integer price: no price between or beyond the limits does better
    everywhere = max(min(demand(x), supply(x)) for x in range(limits[0] - 1, limits[-1] + 2))
    most = max(min(demand(x), supply(x)) for x in limits)
    assert most == everywhere
    if most == 0:
        return 0, 0, 0
    cands = [x for x in limits if min(demand(x), supply(x)) == most]
    least = min(abs(demand(x) - supply(x)) for x in cands)
    cands = [x for x in cands if abs(demand(x) - supply(x)) == least]
    if len(cands) > 1 and least and all(demand(x) > supply(x) for x in cands):
        cands = [max(cands)]
    elif len(cands) > 1 and least and all(demand(x) < supply(x) for x in cands):
        cands = [min(cands)]
    elif len(cands) > 1:
        best = min(abs(x - ref) for x in cands)
        cands = [max(x for x in cands if abs(x - ref) == best)]
    return cands[0], most, demand(cands[0]) - supply(cands[0])


orders = st.lists(st.tuples(st.sampled_from((0, 97, 98, 99, 100, 101, 102, 103)), st.integers(1, 9).map(lambda n: 10 * n)),
                  max_size=9)


@settings(max_examples=300, deadline=None)
@given(bids=orders, asks=orders, ref=st.sampled_from((0, 95, 99, 100, 101, 106)))
def test_uncross_matches_the_oracle_and_fills_in_priority(bids: list[tuple[int, int]], asks: list[tuple[int, int]],
                                                           ref: int, kit: Any) -> None:
    price, volume, surplus = oracle(bids, asks, ref)
    results = []
    for cls in (Engine, ReferenceEngine):
        rules = TradingRules.of({2: InstrumentRules(ref)}, start_state=TS_OPENING_AUCTION, **TIMERS)
        engine = cls((BBB,), {}, STP_CN, rules)
        book: dict[int, tuple[int, int, int]] = {}
        oid = 0
        for side, side_orders in ((BUY, bids), (SELL, asks)):
            for p, q in side_orders:
                oid += 1
                engine.apply(NewOrder(oid, 2, side, q, p, MARKET if p == 0 else LIMIT, firm=oid), [])
                book[oid] = (side, p, q)
        out: list[Any] = []
        engine.apply(SetSchedule(T0 - 3, T0 - 2, T0 - 1, T0 + 100 * SEC, T0 + 200 * SEC), out)
        engine.apply(ClockTick(T0), out)
        engine.check_invariants()
        (cross,) = [ev for ev in out if ev[0] == Ev.UNCROSSED]
        assert cross[3:5] == ((price, volume) if volume else (0, 0))
        executed = {i: 0 for i in book}
        for ev in out:
            if ev[0] == Ev.CROSS_EXECUTED:
                assert ev[4] == price
                executed[ev[1].order_id] += ev[3]
                executed[ev[2].order_id] += ev[3]
        for side in (BUY, SELL):
            # market orders first, then better prices, then arrival (order id): each side filled as a prefix
            ids = [i for i in book if book[i][0] == side and (book[i][1] == 0 or (book[i][1] >= price if side == BUY
                                                                                    else book[i][1] <= price))]
            ids.sort(key=lambda i: (book[i][1] != 0, -book[i][1] if side == BUY else book[i][1], i))
            left = volume
            for i in ids:
                assert executed[i] == min(book[i][2], left), (side, i)
                left -= executed[i]
            assert sum(executed[i] for i in book if book[i][0] == side) == volume
        results.append([kit.normalize(ev) for ev in out])
    assert results[0] == results[1]
    if volume:
        assert abs(surplus) == abs(sum(q for p, q in bids if p == 0 or p >= price)
                                   - sum(q for p, q in asks if p == 0 or p <= price))
