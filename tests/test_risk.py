"""Pre-trade risk, driven with a real Engine producing the events the checker follows.

A ``Desk`` is the gateway's loop in miniature: check a command with the risk checker, apply it to
the engine if it passed, hand the events back to the checker. After every step the checker's open
quantities are compared with the engine's live orders.
"""
from __future__ import annotations

import random
from typing import Any

import pytest

from appliance import reasons as R
from appliance.catalogue import (
    CancelOrder,
    Command,
    Ev,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.matching.engine import Engine
from appliance.model import BUY, GTC, IOC, LIMIT, MARKET, SELL, STOP, STOP_LIMIT, STP_NONE, Instrument
from appliance.risk import FirmLimits, RiskChecker, RiskLimits

A, B = 1, 2                    # stock locates
USD = 10_000                   # $1 in Price(4) units
MS = 1_000_000                 # 1 ms in ns


class Desk:
    """Risk then engine, as a gateway runs them. Firms 1-4 use no self-trade prevention."""

    def __init__(self, limits: dict[int, FirmLimits], refs: dict[int, int] | None = None) -> None:
        self.engine = Engine([Instrument("AAA", A, tick=100), Instrument("BBB", B, tick=100)],
                             {f: STP_NONE for f in range(1, 5)})
        self.risk = RiskChecker(RiskLimits(limits, refs or {}))
        self.now_ns = 1_000 * MS
        self.next_id = 1
        self.events: list[Event] = []

    def send(self, cmd: Command, now_ns: int | None = None) -> int:
        """The risk reason, or 0 and the command applied (its events in self.events)."""
        if now_ns is not None:
            self.now_ns = now_ns
        reason = self.risk.check(cmd, self.now_ns)
        self.events = []
        if reason:
            return reason
        self.engine.apply(cmd, self.events)
        self.risk.on_events(self.events)
        self.engine.check_invariants()
        self.assert_agrees()
        return 0

    def order(self, firm: int, side: int, qty: int, price: int = 0, locate: int = A, *,
              ord_type: int = LIMIT, tif: int = GTC, stop: int = 0) -> NewOrder:
        o = NewOrder(self.next_id, locate, side, qty, price, ord_type, tif, stop, firm)
        self.next_id += 1
        return o

    def new(self, firm: int, side: int, qty: int, price: int = 0, locate: int = A, *,
            now_ns: int | None = None, **kw: Any) -> int:
        return self.send(self.order(firm, side, qty, price, locate, **kw), now_ns)

    def engine_rejected(self) -> int:
        return next((ev[2] for ev in self.events if ev[0] == Ev.REJECTED), 0)

    def assert_agrees(self) -> None:
        """The checker's open quantities equal the leaves of the engine's live orders."""
        live: dict[tuple[int, int, int], int] = {}
        for o in self.engine.orders.values():
            key = (o.firm, o.locate, o.side)
            live[key] = live.get(key, 0) + o.leaves
        for firm in range(1, 5):
            for locate in (A, B):
                for side in (BUY, SELL):
                    assert self.risk.open_qty(firm, locate, side) == live.get((firm, locate, side), 0), (
                        f"firm {firm} locate {locate} side {side}")


OPEN = FirmLimits()            # a firm with no limits


# -- max quantity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("side, qty, ord_type, price, expect", [
    (BUY, 1_000, LIMIT, 10 * USD, 0),
    (BUY, 1_001, LIMIT, 10 * USD, R.RISK_MAX_QTY),
    (SELL, 1_000, LIMIT, 10 * USD, 0),
    (SELL, 5_000, LIMIT, 10 * USD, R.RISK_MAX_QTY),
    (BUY, 1_001, MARKET, 0, R.RISK_MAX_QTY),
    (SELL, 1_000, MARKET, 0, 0),
])
def test_max_quantity(side: int, qty: int, ord_type: int, price: int, expect: int) -> None:
    d = Desk({1: FirmLimits(max_qty=1_000)})
    assert d.new(1, side, qty, price, ord_type=ord_type) == expect


# -- max notional -------------------------------------------------------------------------------------
@pytest.mark.parametrize("side, qty, ord_type, price, stop, refs, expect", [
    (BUY, 100, LIMIT, 10 * USD, 0, {}, 0),                            # $1,000: at the limit
    (BUY, 101, LIMIT, 10 * USD, 0, {}, R.RISK_MAX_NOTIONAL),
    (SELL, 1_000, LIMIT, 1 * USD, 0, {}, 0),
    (SELL, 1_000, STOP_LIMIT, 2 * USD, 2 * USD, {}, R.RISK_MAX_NOTIONAL),
    (BUY, 100, MARKET, 0, 0, {A: 10 * USD}, 0),                       # valued at the reference
    (BUY, 101, MARKET, 0, 0, {A: 10 * USD}, R.RISK_MAX_NOTIONAL),
    (SELL, 1, MARKET, 0, 0, {}, R.RISK_MAX_NOTIONAL),                 # no reference: unbounded
    (SELL, 1, STOP, 0, 5 * USD, {}, R.RISK_MAX_NOTIONAL),
    (SELL, 50, STOP, 0, 5 * USD, {A: 20 * USD}, 0),
])
def test_max_notional(side: int, qty: int, ord_type: int, price: int, stop: int, refs: dict[int, int],
                      expect: int) -> None:
    d = Desk({1: FirmLimits(max_notional=1_000 * USD)}, refs)
    assert d.new(1, side, qty, price, ord_type=ord_type, stop=stop) == expect


def test_notional_of_a_market_order_follows_the_last_trade() -> None:
    d = Desk({1: FirmLimits(max_notional=1_000 * USD), 2: OPEN, 3: OPEN})
    assert d.new(1, BUY, 1, ord_type=MARKET, tif=IOC) == R.RISK_MAX_NOTIONAL   # nothing to value it at
    assert d.new(2, SELL, 10, 50 * USD) == 0
    assert d.new(3, BUY, 10, 50 * USD) == 0                                     # a trade at $50
    assert d.risk.reference_price(A) == 50 * USD
    assert d.new(1, BUY, 20, ord_type=MARKET, tif=IOC) == 0                     # $1,000
    assert d.new(1, BUY, 21, ord_type=MARKET, tif=IOC) == R.RISK_MAX_NOTIONAL


# -- price collar -------------------------------------------------------------------------------------
@pytest.mark.parametrize("side, price, ord_type, expect", [
    (BUY, 1_050_000, LIMIT, 0),                      # ref $100, 5 %: $105.00 is the band's edge
    (BUY, 1_050_100, LIMIT, R.RISK_PRICE_COLLAR),    # $105.01
    (BUY, 500_000, LIMIT, 0),                        # far below: passive, not collared
    (SELL, 950_000, LIMIT, 0),
    (SELL, 949_900, LIMIT, R.RISK_PRICE_COLLAR),
    (SELL, 2_000_000, LIMIT, 0),
    (BUY, 1_100_000, STOP_LIMIT, R.RISK_PRICE_COLLAR),
    (BUY, 0, MARKET, 0),                             # no price: not collared
])
def test_price_collar_around_the_reference_price(side: int, price: int, ord_type: int, expect: int) -> None:
    d = Desk({1: FirmLimits(collar_bps=500)}, {A: 100 * USD})
    stop = 100 * USD if ord_type == STOP_LIMIT else 0
    tif = IOC if ord_type == MARKET else GTC
    assert d.new(1, side, 100, price, ord_type=ord_type, stop=stop, tif=tif) == expect


def test_collar_moves_with_the_last_trade_and_is_off_without_a_reference() -> None:
    d = Desk({1: FirmLimits(collar_bps=500), 2: OPEN, 3: OPEN}, {A: 100 * USD})
    assert d.new(1, BUY, 100, 2_000_000, locate=B) == 0                     # B has no reference
    assert d.new(2, SELL, 100, 110 * USD) == 0
    assert d.new(3, BUY, 100, 110 * USD) == 0                               # A trades at $110
    assert d.risk.reference_price(A) == 110 * USD
    assert d.new(1, BUY, 100, 1_155_000) == 0                               # $115.50 = 110 * 1.05
    assert d.new(1, BUY, 100, 1_155_100) == R.RISK_PRICE_COLLAR
    assert d.new(1, SELL, 100, 1_045_000) == 0                              # $104.50 = 110 * 0.95
    assert d.new(1, SELL, 100, 1_044_900) == R.RISK_PRICE_COLLAR
    d.risk.set_reference_price(B, 100 * USD)
    assert d.new(1, BUY, 100, 2_000_000, locate=B) == R.RISK_PRICE_COLLAR
    with pytest.raises(ValueError):
        d.risk.set_reference_price(B, 0)


# -- position limit -------------------------------------------------------------------------------------
def test_position_limit_counts_the_worst_case() -> None:
    d = Desk({1: FirmLimits(position_limit=1_000), 2: OPEN})
    rows: list[tuple[str, int, int, int, int]] = [
        # what                              side  qty   price      expect
        ("buy 600 rests",                   BUY,  600,  10 * USD,  0),
        ("buy 400: 0 + 600 + 400",          BUY,  400,  9 * USD,   0),
        ("buy 1 more: 1001",                BUY,  1,    9 * USD,   R.RISK_POSITION_LIMIT),
        ("sell 1000: 0 + 1000 - 0",         SELL, 1_000, 20 * USD, 0),
        ("sell 1 more",                     SELL, 1,    20 * USD,  R.RISK_POSITION_LIMIT),
    ]
    for what, side, qty, price, expect in rows:
        assert d.new(1, side, qty, price) == expect, what
    # firm 2 sells 600 into firm 1's $10 bid: firm 1 is long 600 with 400 still bid
    assert d.new(2, SELL, 600, 10 * USD) == 0
    assert d.risk.position(1, A) == 600 and d.risk.position(2, A) == -600
    assert d.risk.open_qty(1, A, BUY) == 400
    assert d.new(1, BUY, 1, 9 * USD) == R.RISK_POSITION_LIMIT               # 600 + 400 + 1
    # selling works against the long position: open_sell 1000 + q - 600 <= 1000
    assert d.new(1, SELL, 600, 20 * USD) == 0
    assert d.new(1, SELL, 1, 20 * USD) == R.RISK_POSITION_LIMIT
    # cancelling the 400 bid frees room for buys
    bid = next(o for o in d.engine.orders.values() if o.firm == 1 and o.side == BUY)
    assert d.send(CancelOrder(bid.order_id, 1)) == 0
    assert d.new(1, BUY, 400, 9 * USD) == 0
    assert d.new(1, BUY, 1, 9 * USD) == R.RISK_POSITION_LIMIT
    # another instrument has its own position
    assert d.new(1, BUY, 1_000, 9 * USD, locate=B) == 0


def test_orders_in_flight_are_reserved_until_accepted_or_rejected() -> None:
    d = Desk({1: FirmLimits(position_limit=1_000)})
    first = d.order(1, BUY, 700, 10 * USD)
    second = d.order(1, BUY, 700, 10 * USD)
    assert d.risk.check(first, d.now_ns) == 0                  # in flight: not yet applied
    assert d.risk.open_qty(1, A, BUY) == 700
    assert d.risk.check(second, d.now_ns) == R.RISK_POSITION_LIMIT
    d.risk.withdraw(first)                                      # the gateway could not send it
    assert d.risk.open_qty(1, A, BUY) == 0
    assert d.send(second) == 0
    # an order the engine rejects releases its reservation
    off_tick = d.order(1, BUY, 300, 10 * USD + 1)
    assert d.send(off_tick) == 0 and d.engine_rejected() == R.PRICE_OFF_TICK
    assert d.risk.open_qty(1, A, BUY) == 700
    # a duplicate order id is the engine's to reject: the live order stays counted
    dup = NewOrder(second.order_id, A, BUY, 100, 10 * USD, LIMIT, GTC, 0, 1)
    assert d.send(dup) == 0 and d.engine_rejected() == R.DUPLICATE_ORDER_ID
    assert d.risk.open_qty(1, A, BUY) == 700


def test_events_of_orders_never_checked_are_counted() -> None:
    d = Desk({1: FirmLimits(position_limit=500), 2: OPEN})
    out: list[Event] = []
    d.engine.apply(d.order(1, BUY, 400, 10 * USD), out)       # e.g. replayed at start-up
    d.engine.apply(d.order(2, SELL, 100, 10 * USD), out)
    d.risk.on_events(out)
    d.assert_agrees()
    assert d.risk.position(1, A) == 100 and d.risk.open_qty(1, A, BUY) == 300
    assert d.new(1, BUY, 101, 10 * USD) == R.RISK_POSITION_LIMIT
    assert d.new(1, BUY, 100, 10 * USD) == 0


# -- rate limit ---------------------------------------------------------------------------------------
def test_rate_limit_token_bucket() -> None:
    d = Desk({1: FirmLimits(rate_per_second=10, burst=3, max_qty=1_000)})
    t0 = 5_000 * MS
    table = [
        # (ns after t0, qty, expect)
        (0, 1, 0), (0, 1, 0), (0, 1, 0),              # the full bucket: 3
        (0, 1, R.RISK_RATE_LIMIT),
        (99 * MS, 1, R.RISK_RATE_LIMIT),              # 0.99 token
        (100 * MS, 1, 0),                             # 1 token per 100 ms
        (100 * MS, 1, R.RISK_RATE_LIMIT),
        (150 * MS, 5_000, R.RISK_RATE_LIMIT),         # the bucket is checked before max qty
        (200 * MS, 5_000, R.RISK_MAX_QTY),            # ... and the rejected order took the token
        (250 * MS, 1, R.RISK_RATE_LIMIT),
        (10_000 * MS, 1, 0), (10_000 * MS, 1, 0), (10_000 * MS, 1, 0),   # capped at the burst
        (10_000 * MS, 1, R.RISK_RATE_LIMIT),
        (9_000 * MS, 1, R.RISK_RATE_LIMIT),           # a clock going backwards adds nothing
    ]
    for i, (dt, qty, expect) in enumerate(table):
        assert d.new(1, BUY, qty, 10 * USD, now_ns=t0 + dt) == expect, f"row {i}"
    assert d.risk.tokens(1, t0 + 10_300 * MS) == 3


def test_rate_limit_with_integer_rates_that_do_not_divide_a_second() -> None:
    d = Desk({1: FirmLimits(rate_per_second=3, burst=1)})
    t0 = 1_000 * MS
    assert d.new(1, BUY, 1, 10 * USD, now_ns=t0) == 0
    assert d.new(1, BUY, 1, 10 * USD, now_ns=t0 + 333_333_333) == R.RISK_RATE_LIMIT
    assert d.new(1, BUY, 1, 10 * USD, now_ns=t0 + 333_333_334) == 0     # 1e9 / 3 ns, rounded up


def test_cancels_are_never_rate_limited_or_blocked() -> None:
    d = Desk({1: FirmLimits(rate_per_second=1, burst=1)})
    assert d.new(1, BUY, 100, 10 * USD) == 0
    o = next(iter(d.engine.orders.values()))
    assert d.new(1, BUY, 100, 10 * USD) == R.RISK_RATE_LIMIT
    assert d.send(CancelOrder(o.order_id, 1)) == 0
    assert d.send(MassCancel(1)) == 0


# -- kill switch ----------------------------------------------------------------------------------------
def test_kill_switch_blocks_new_orders_and_mass_cancels_the_firm() -> None:
    d = Desk({1: OPEN, 2: OPEN})
    assert d.new(1, BUY, 100, 10 * USD) == 0
    assert d.new(1, SELL, 100, 20 * USD, locate=B) == 0
    assert d.new(2, BUY, 100, 10 * USD) == 0
    resting = d.order(1, BUY, 300, 9 * USD)
    assert d.send(resting) == 0
    mc = d.risk.set_kill_switch(1, True)
    assert isinstance(mc, MassCancel) and mc.firm == 1 and mc.locate == 0 and mc.side == 255
    assert d.risk.kill_switch(1)
    table: list[tuple[str, Command, int]] = [
        ("new order", d.order(1, BUY, 1, 10 * USD), R.RISK_KILL_SWITCH),
        ("market order", d.order(1, SELL, 1, ord_type=MARKET, tif=IOC), R.RISK_KILL_SWITCH),
        ("replace up", ReplaceOrder(resting.order_id, 400, 9 * USD, 1), R.RISK_KILL_SWITCH),
        ("replace to a new price", ReplaceOrder(resting.order_id, 300, 8 * USD, 1), R.RISK_KILL_SWITCH),
        ("replace down", ReplaceOrder(resting.order_id, 200, 9 * USD, 1), 0),
        ("other firm", d.order(2, BUY, 1, 10 * USD), 0),
        ("cancel", CancelOrder(resting.order_id, 1), 0),
    ]
    for what, cmd, expect in table:
        assert d.send(cmd) == expect, what
    assert d.send(mc) == 0
    assert not any(o.firm == 1 for o in d.engine.orders.values())
    assert d.risk.open_qty(1, A, BUY) == 0 and d.risk.open_qty(1, B, SELL) == 0
    assert d.risk.set_kill_switch(1, False) is None
    assert d.new(1, BUY, 1, 10 * USD) == 0


def test_a_firm_without_limits_is_blocked() -> None:
    d = Desk({1: OPEN})
    assert d.new(3, BUY, 1, 10 * USD) == R.RISK_KILL_SWITCH
    assert d.risk.kill_switch(3)
    assert d.risk.set_kill_switch(3, False) is None
    assert d.new(3, BUY, 1, 10 * USD) == R.RISK_KILL_SWITCH   # lifting it does not enable the firm


# -- replaces -----------------------------------------------------------------------------------------------
def test_replaces_that_raise_exposure_are_checked_and_reductions_pass() -> None:
    d = Desk({1: FirmLimits(max_qty=1_000, collar_bps=1_000, position_limit=1_500,
                            max_notional=20_000 * USD), 2: OPEN}, {A: 20 * USD})
    o = d.order(1, BUY, 800, 20 * USD)
    assert d.send(o) == 0
    table: list[tuple[str, int, int, int]] = [
        # what                                 qty     price       expect
        ("qty above max_qty",                   1_001,  20 * USD,   R.RISK_MAX_QTY),
        ("price above the collar ($22.01)",     800,    220_100,    R.RISK_PRICE_COLLAR),
        ("notional above ($20,010)",            1_000,  200_100,    R.RISK_MAX_NOTIONAL),
        ("up to 1000 at $20",                   1_000,  20 * USD,   0),
        ("down to 900, same price",             900,    20 * USD,   0),
        ("reprice down to $19",                 900,    19 * USD,   0),
    ]
    for what, qty, price, expect in table:
        assert d.send(ReplaceOrder(o.order_id, qty, price, 1)) == expect, what
    # fill 600: position 600, open 300 (qty 900 - filled 600)
    assert d.new(2, SELL, 600, 19 * USD) == 0
    assert d.risk.position(1, A) == 600 and d.risk.open_qty(1, A, BUY) == 300
    # a second bid takes the worst case to 1500; raising the first one by 1 would pass 1500
    assert d.new(1, BUY, 600, 18 * USD) == 0
    assert d.send(ReplaceOrder(o.order_id, 901, 19 * USD, 1)) == R.RISK_POSITION_LIMIT
    # a replace down passes even while the firm is beyond a limit set lower afterwards
    assert d.send(ReplaceOrder(o.order_id, 700, 19 * USD, 1)) == 0
    assert d.risk.open_qty(1, A, BUY) == 100 + 600
    # replaces of unknown orders or another firm's orders pass: the engine answers
    assert d.send(ReplaceOrder(9_999, 100, 19 * USD, 1)) == 0 and d.engine_rejected() == R.UNKNOWN_ORDER
    assert d.send(ReplaceOrder(o.order_id, 5_000, 19 * USD, 2)) == 0 and d.engine_rejected() == R.UNKNOWN_ORDER


def test_notional_of_a_replace_uses_the_new_total() -> None:
    d = Desk({1: FirmLimits(max_notional=10_000 * USD)})
    o = d.order(1, SELL, 400, 25 * USD)
    assert d.send(o) == 0
    assert d.send(ReplaceOrder(o.order_id, 401, 25 * USD, 1)) == R.RISK_MAX_NOTIONAL
    assert d.send(ReplaceOrder(o.order_id, 500, 20 * USD, 1)) == 0


def test_stop_orders_are_followed_through_triggering() -> None:
    d = Desk({1: FirmLimits(position_limit=300), 2: OPEN, 3: OPEN})
    assert d.new(1, BUY, 200, ord_type=STOP, stop=11 * USD, tif=GTC) == 0   # a pending stop counts
    assert d.risk.open_qty(1, A, BUY) == 200
    assert d.new(1, BUY, 101, 5 * USD) == R.RISK_POSITION_LIMIT
    assert d.new(2, SELL, 500, 11 * USD) == 0
    assert d.new(3, BUY, 100, 11 * USD) == 0            # trades at $11: the stop triggers and buys 200
    assert d.risk.position(1, A) == 200 and d.risk.open_qty(1, A, BUY) == 0
    assert d.new(1, BUY, 100, 5 * USD) == 0
    assert d.new(1, BUY, 1, 5 * USD) == R.RISK_POSITION_LIMIT


# -- the checker follows any sequence of commands -------------------------------------------------------
def test_open_quantities_and_positions_follow_a_random_session() -> None:
    rng = random.Random(7)
    limits = {f: FirmLimits(max_qty=900, position_limit=2_000, collar_bps=2_000, rate_per_second=300,
                            burst=5, max_notional=15_000 * USD) for f in range(1, 5)}
    d = Desk(limits, {A: 20 * USD, B: 20 * USD})
    fills: dict[tuple[int, int], int] = {}
    reasons: set[int] = set()
    for step in range(3_000):
        d.now_ns += rng.randrange(0, 2 * MS)
        r = rng.random()
        live = list(d.engine.orders.values())
        firm = rng.randrange(1, 5)
        if r < 0.55 or not live:
            ord_type = rng.choice((LIMIT, LIMIT, LIMIT, MARKET, STOP, STOP_LIMIT))
            price = rng.randrange(150, 260) * 1_000 if ord_type in (LIMIT, STOP_LIMIT) else 0
            stop = rng.randrange(180, 230) * 1_000 if ord_type in (STOP, STOP_LIMIT) else 0
            tif = IOC if ord_type in (MARKET, STOP) else rng.choice((GTC, GTC, IOC))
            cmd: Command = d.order(firm, rng.choice((BUY, SELL)), rng.randrange(1, 1_000), price,
                                   rng.choice((A, B)), ord_type=ord_type, tif=tif, stop=stop)
        elif r < 0.75:
            o = rng.choice(live)
            cmd = CancelOrder(o.order_id, o.firm)
        elif r < 0.95:
            o = rng.choice(live)
            price = o.price if o.ord_type in (STOP, MARKET) else rng.randrange(150, 260) * 1_000
            cmd = ReplaceOrder(o.order_id, rng.randrange(1, 1_200), price, o.firm)
        else:
            cmd = MassCancel(firm, rng.choice((0, A, B)))
        reason = d.send(cmd)
        reasons.add(reason)
        for ev in d.events:
            if ev[0] == Ev.EXECUTED:
                for o in (ev[1], ev[2]):
                    key = (o.firm, o.locate)
                    fills[key] = fills.get(key, 0) + (ev[3] if o.side == BUY else -ev[3])
        for (firm_, locate), pos in fills.items():
            assert d.risk.position(firm_, locate) == pos
    assert reasons == {0, R.RISK_MAX_QTY, R.RISK_PRICE_COLLAR, R.RISK_POSITION_LIMIT, R.RISK_RATE_LIMIT,
                       R.RISK_MAX_NOTIONAL}
    assert d.engine.next_match > 100


def test_auction_fills_count_for_both_orders() -> None:
    from appliance.catalogue import Ev, Resume
    from appliance.matching.rules import TradingRules
    from appliance.model import TS_HALTED

    d = Desk({1: OPEN, 2: OPEN})
    d.engine = Engine([Instrument("AAA", A, tick=100), Instrument("BBB", B, tick=100)],
                      {f: STP_NONE for f in range(1, 5)},
                      rules=TradingRules(start_state=TS_HALTED, reopen_call_ns=0))
    assert d.new(1, BUY, 400, 10 * USD) == 0
    assert d.new(2, SELL, 100, 10 * USD) == 0
    assert d.risk.position(1, A) == 0 and d.risk.open_qty(1, A, BUY) == 400
    out: list[Event] = []
    d.engine.apply(Resume(A), out)
    assert any(ev[0] == Ev.CROSS_EXECUTED for ev in out)
    d.risk.on_events(out)
    d.assert_agrees()
    assert d.risk.position(1, A) == 100 and d.risk.position(2, A) == -100
    assert d.risk.open_qty(1, A, BUY) == 300 and d.risk.open_qty(2, A, SELL) == 0
