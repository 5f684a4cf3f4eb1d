"""Trading states, auctions and safeguards as tables, run on both engines (docs/matching.md).

Each table runs on the fast and on the reference engine with check_invariants() after every command
and the state hash unchanged by a rejected command; a second test runs both side by side and compares
the full normalized events and the state hashes after every command. The auction price examples are
the published Xetra ones (Deutsche Börse, market model, "auction price determination").

Times are seconds after T (the tables' clock); instruments AAA (locate 1, tick 100) with a reference
of 100.00 (10000), a 10% band and a 5% market-order collar, and BBB (locate 2, tick 1) with no
safeguard.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from conftest import build
from test_matching_scenarios import MASS, B, MB, MS, N, S, SSTOP, acc, add, cxl, fill, rej, rpl, trig
from test_matching_scenarios import CXL, IN_PLACE, RPL, Spec, _spec

from appliance import reasons as R
from appliance.catalogue import EVENT_LAYOUTS, ClockTick, Close, Halt, NewOrder, Resume, SetSchedule
from appliance.matching.engine import Engine
from appliance.matching.reference import ReferenceEngine
from appliance.matching.rules import InstrumentRules, TradingRules
from appliance.model import (
    BUY,
    CAUSE_ADMIN,
    CAUSE_CIRCUIT,
    CAUSE_LULD,
    CAUSE_MARKET,
    CAUSE_SCHEDULE,
    CROSS_CLOSE,
    CROSS_OPEN,
    CROSS_REOPEN,
    GTC,
    IMBALANCE_BUY,
    IMBALANCE_NO_PRICE,
    IMBALANCE_NONE,
    IMBALANCE_SELL,
    IOC,
    LIMIT,
    MARKET,
    STOP_LIMIT,
    MARKET_CLOSE,
    MARKET_HALT,
    MARKET_OPEN,
    MARKET_SYSTEM_HOURS,
    SELL,
    STP_CN,
    STP_NONE,
    TS_CLOSED,
    TS_CLOSING_AUCTION,
    TS_CONTINUOUS,
    TS_HALTED,
    TS_OPENING_AUCTION,
    TS_PAUSED,
    TS_PRE_OPEN,
    TS_REOPENING_AUCTION,
    Instrument,
)

SEC = 10**9
T = 1_767_600_000 * SEC
AAA = Instrument("AAA", 1, tick=100)
BBB = Instrument("BBB", 2, tick=1)
CCC = Instrument("CCC", 3, tick=1)
ENGINES = (Engine, ReferenceEngine)
TIMERS = dict(limit_state_ns=15 * SEC, pause_ns=300 * SEC, reopen_call_ns=10 * SEC,
              circuit_breaker_halt_ns=60 * SEC, noii_interval_ns=SEC)
RULES = TradingRules.of({1: InstrumentRules(10000, band_bps=1000, collar_bps=500)}, start_state=TS_CLOSED,
                        **TIMERS)


# -- admin commands -------------------------------------------------------------------------------
def TICK(s: float) -> Spec:
    return _spec(ClockTick(T + int(s * SEC)))


def SCHED(*secs: float) -> Spec:
    return _spec(SetSchedule(*(T + int(s * SEC) if s else 0 for s in secs)))


def HALT(locate: int) -> Spec:
    return _spec(Halt(locate))


def RESUME(locate: int) -> Spec:
    return _spec(Resume(locate))


def CLOSE(locate: int) -> Spec:
    return _spec(Close(locate))


# -- expected events, brief form ------------------------------------------------------------------
def st(locate: int, state: int, cause: int = CAUSE_SCHEDULE) -> tuple[Any, ...]:
    return ("TradingStateChanged", locate, state, cause)


def mkt(event: int) -> tuple[Any, ...]:
    return ("MarketEvent", event)


def xfill(buy: tuple[int, int], sell: tuple[int, int], qty: int, price: int, match: int, buy_leaves: int,
          buy_filled: int, sell_leaves: int, sell_filled: int) -> tuple[Any, ...]:
    return ("CrossExecuted", buy, sell, qty, price, match, buy_leaves, buy_filled, sell_leaves, sell_filled)


def uncr(locate: int, cross_type: int, price: int, qty: int, match: int) -> tuple[Any, ...]:
    return ("AuctionUncrossed", locate, cross_type, price, qty, match)


def noii(locate: int, cross_type: int, paired: int, imbalance: int, direction: int, far: int, near: int,
         ref: int) -> tuple[Any, ...]:
    return ("AuctionImbalance", locate, cross_type, paired, imbalance, direction, far, near, ref)


def lim(locate: int, active: bool, lower: int, upper: int) -> tuple[Any, ...]:
    return ("LimitStateChanged", locate, active, lower, upper)


def collar(locate: int, ref: int, upper: int, lower: int) -> tuple[Any, ...]:
    return ("AuctionCollar", locate, ref, upper, lower, 0)


EXP, COLLARC, BAND, MKT, USER, MASSC = (R.CANCEL_EXPIRED, R.CANCEL_MARKET_COLLAR, R.CANCEL_OUTSIDE_BAND,
                                        R.CANCEL_MARKET_NO_LIQUIDITY, R.CANCEL_USER, R.CANCEL_MASS)
_FIELDS = {name: fields for name, fields in EVENT_LAYOUTS.values()}
_ORDERS = ("order", "maker", "taker", "old", "new", "buy", "sell")


def brief(ev: tuple[Any, ...]) -> tuple[Any, ...]:
    out: list[Any] = [ev[0]]
    for field, value in zip(_FIELDS[ev[0]][1:], ev[1:]):
        if field == "command":
            continue
        out.append((value[0], value[1]) if field in _ORDERS else value)
    return tuple(out)


class Scenario(NamedTuple):
    name: str
    steps: list[tuple[Any, ...]]
    book: dict[int, tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]] = {}
    states: dict[int, int] = {}
    rules: TradingRules = RULES


# ==================================================================================================
# The tables
# ==================================================================================================
SCENARIOS = [
    Scenario("a scheduled day: pre-open, opening auction, continuous, LULD pause, reopening, close", [
        (SCHED(10, 20, 30, 1000, 1100)),
        (B(1, 100, 10000), rej(R.INSTRUMENT_CLOSED)),
        (TICK(10), mkt(MARKET_SYSTEM_HOURS), st(1, TS_PRE_OPEN), st(2, TS_PRE_OPEN)),
        (B(1, 100, 10000, tif=IOC), rej(R.TIF_NOT_ALLOWED_IN_STATE)),
        (B(1, 100, 11100), rej(R.PRICE_OUTSIDE_BAND)),
        (B(1, 100, 10100), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 150, 9900), acc((2, 2), 150), add((2, 2), 150)),      # crosses: collected, no match
        (MB(3, 50), acc((3, 3), 50)),                                  # collected, not on the book
        (S(4, 100, 10000), acc((4, 4), 100), add((4, 4), 100)),
        (B(5, 10, 9000, tif=GTC, firm=2), acc((5, 5), 10), add((5, 5), 10)),
        (S(6, 10, 700, locate=2, tif=GTC), acc((6, 6), 10), add((6, 6), 10)),
        (TICK(20), st(1, TS_OPENING_AUCTION), noii(1, CROSS_OPEN, 150, 0, IMBALANCE_NONE, 9900, 9900, 10000),
         st(2, TS_OPENING_AUCTION), noii(2, CROSS_OPEN, 0, 0, IMBALANCE_NO_PRICE, 0, 0, 0)),
        (TICK(20.5)),
        (TICK(21), noii(1, CROSS_OPEN, 150, 0, IMBALANCE_NONE, 9900, 9900, 10000),
         noii(2, CROSS_OPEN, 0, 0, IMBALANCE_NO_PRICE, 0, 0, 0)),
        # the open: market order first, then price-time; one price for all
        (TICK(30), mkt(MARKET_OPEN),
         xfill((3, 3), (2, 2), 50, 9900, 1, 0, 50, 100, 50), xfill((1, 1), (2, 2), 100, 9900, 2, 0, 100, 0, 150),
         uncr(1, CROSS_OPEN, 9900, 150, 3), st(1, TS_CONTINUOUS),
         uncr(2, CROSS_OPEN, 0, 0, 0), st(2, TS_CONTINUOUS)),
        # the band is now 90.00-108.00 around 99.00; the market-order collar 95.00-103.00
        (MB(7, 300, firm=2), acc((7, 7), 300), fill((4, 4), (7, 7), 100, 10000, 4, 0, 100, 200, 100),
         cxl((7, 7), 200, 0, 100, COLLARC, False)),
        (B(8, 100, 10900), rej(R.PRICE_OUTSIDE_BAND)),
        (B(8, 100, 10800), acc((8, 8), 100), add((8, 8), 100), lim(1, True, 9000, 10800)),
        (TICK(44.9)),
        (TICK(45), lim(1, False, 9000, 10800), st(1, TS_PAUSED, CAUSE_LULD), collar(1, 9900, 10800, 9000)),
        (S(9, 50, 10800), acc((9, 9), 50), add((9, 9), 50)),
        (TICK(345), st(1, TS_REOPENING_AUCTION, CAUSE_LULD),
         noii(1, CROSS_REOPEN, 50, 50, IMBALANCE_BUY, 10800, 10800, 9900)),
        (TICK(355), xfill((8, 8), (9, 9), 50, 10800, 5, 50, 50, 0, 50), uncr(1, CROSS_REOPEN, 10800, 50, 6),
         st(1, TS_CONTINUOUS, CAUSE_LULD)),
        # an admin halt and its reopening auction, with nothing to cross
        (HALT(1), st(1, TS_HALTED, CAUSE_ADMIN)),
        (HALT(1), rej(R.ADMIN_INVALID_TRANSITION)),
        (RESUME(2), rej(R.ADMIN_INVALID_TRANSITION)),
        (RESUME(1), st(1, TS_REOPENING_AUCTION, CAUSE_ADMIN)),
        (TICK(365), uncr(1, CROSS_REOPEN, 0, 0, 0), st(1, TS_CONTINUOUS, CAUSE_ADMIN)),
        (TICK(1000), st(1, TS_CLOSING_AUCTION), noii(1, CROSS_CLOSE, 0, 0, IMBALANCE_NO_PRICE, 0, 0, 10800),
         st(2, TS_CLOSING_AUCTION), noii(2, CROSS_CLOSE, 0, 0, IMBALANCE_NO_PRICE, 0, 0, 0)),
        (S(10, 30, 10800), acc((10, 10), 30), add((10, 10), 30)),
        # the close: DAY orders expire, GTC orders stay
        (TICK(1100), xfill((8, 8), (10, 10), 30, 10800, 7, 20, 80, 0, 30), uncr(1, CROSS_CLOSE, 10800, 30, 8),
         st(1, TS_CLOSED), cxl((8, 8), 20, 0, 80, EXP, True),
         uncr(2, CROSS_CLOSE, 0, 0, 0), st(2, TS_CLOSED), mkt(MARKET_CLOSE)),
        (B(11, 100, 10000), rej(R.INSTRUMENT_CLOSED)),
        # too late: the expired order and the one the closing cross filled; an id never used
        (CXL(8), rej(R.TOO_LATE_EXPIRED)),
        (RPL(8, 100, 10800), rej(R.TOO_LATE_EXPIRED)),
        (CXL(10), rej(R.TOO_LATE_FILLED)),
        (CXL(11), rej(R.UNKNOWN_ORDER)),
        (TICK(2000)),
    ], book={1: ([(9000, 10, 1)], []), 2: ([], [(700, 10, 1)])}, states={1: TS_CLOSED, 2: TS_CLOSED}),
    Scenario("the next day: GTC orders carried, the band around the previous close", [
        (SCHED(3010, 3020, 3030, 4000, 4100)),
        (B(12, 10, 10000, tif=GTC), rej(R.INSTRUMENT_CLOSED)),
        (TICK(3010), mkt(MARKET_SYSTEM_HOURS), st(1, TS_PRE_OPEN), st(2, TS_PRE_OPEN)),
        (B(12, 10, 12000, tif=GTC), rej(R.PRICE_OUTSIDE_BAND)),   # the band: 98.00-118.00 around 108.00
        (B(12, 10, 10000, tif=GTC), acc((12, 11), 10), add((12, 11), 10)),
        (TICK(3030), mkt(MARKET_OPEN),
         st(1, TS_OPENING_AUCTION), uncr(1, CROSS_OPEN, 0, 0, 0), st(1, TS_CONTINUOUS),
         st(2, TS_OPENING_AUCTION), uncr(2, CROSS_OPEN, 0, 0, 0), st(2, TS_CONTINUOUS)),
        (TICK(4200), st(1, TS_CLOSED), st(2, TS_CLOSED), mkt(MARKET_CLOSE)),
        (TICK(4300)),
        (SCHED(5010, 5020, 5030, 6000, 6100)),
        (TICK(5010), mkt(MARKET_SYSTEM_HOURS), st(1, TS_PRE_OPEN), st(2, TS_PRE_OPEN)),
    ], book={1: ([(10000, 10, 1), (9000, 10, 1)], []), 2: ([], [(700, 10, 1)])},
        states={1: TS_PRE_OPEN, 2: TS_PRE_OPEN}),
    Scenario("stops triggered by the uncross run in continuous trading", [
        (SCHED(10, 20, 30, 1000, 1100)),
        (TICK(10), mkt(MARKET_SYSTEM_HOURS), st(1, TS_PRE_OPEN), st(2, TS_PRE_OPEN)),
        (N(1, BUY, 20, 10300, type=STOP_LIMIT, stop=10100, tif=GTC), acc((1, 1), 20)),
        (SSTOP(2, 20, 9000), acc((2, 2), 20)),
        (B(3, 100, 10200), acc((3, 3), 100), add((3, 3), 100)),
        (S(4, 60, 10100), acc((4, 4), 60), add((4, 4), 60)),
        (S(5, 50, 10300, firm=2), acc((5, 5), 50), add((5, 5), 50)),
        (TICK(30), mkt(MARKET_OPEN), st(1, TS_OPENING_AUCTION),
         xfill((3, 3), (4, 4), 60, 10200, 1, 40, 60, 0, 60), uncr(1, CROSS_OPEN, 10200, 60, 2),
         st(1, TS_CONTINUOUS),
         trig((1, 1), 10200), fill((5, 5), (1, 1), 20, 10300, 3, 30, 20, 0, 20),
         st(2, TS_OPENING_AUCTION), uncr(2, CROSS_OPEN, 0, 0, 0), st(2, TS_CONTINUOUS)),
    ], book={1: ([(10200, 40, 1)], [(10300, 30, 1)])}, states={1: TS_CONTINUOUS, 2: TS_CONTINUOUS}),
    Scenario("call phase: crossing replaces repost, market orders cannot be replaced, cancels say off-book", [
        (TICK(0)),
        (HALT(1), st(1, TS_HALTED, CAUSE_ADMIN)),
        (RESUME(1), st(1, TS_REOPENING_AUCTION, CAUSE_ADMIN)),
        (B(1, 100, 9900), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000), acc((2, 2), 100), add((2, 2), 100)),
        (RPL(2, 100, 9900), rpl((2, 2), (2, 3), 100, 100, 0, 1)),
        (MS(3, 40), acc((3, 4), 40)),
        (RPL(3, 30, 0), rej(R.REPLACE_NOT_ALLOWED)),
        (CXL(3), cxl((3, 4), 40, 0, 0, USER, False)),
        (MS(4, 50, tif=GTC), acc((4, 5), 50)),
        (MB(5, 500), acc((5, 6), 500)),
        (MASS(1, side=SELL), cxl((2, 3), 100, 0, 0, MASSC, True), cxl((4, 5), 50, 0, 0, MASSC, False),
         ("MassCancelled", 2)),
        (TICK(10), uncr(1, CROSS_REOPEN, 0, 0, 0), cxl((5, 6), 500, 0, 0, MKT, False),
         st(1, TS_CONTINUOUS, CAUSE_ADMIN)),
    ], book={1: ([(9900, 100, 1)], [])}, states={1: TS_CONTINUOUS, 2: TS_CONTINUOUS},
        rules=TradingRules.of({1: InstrumentRules(10000, band_bps=1000, collar_bps=500)}, **TIMERS)),
    Scenario("market-wide halt and resume; a close during a halt does not uncross", [
        (TICK(0)),
        (B(1, 100, 9900), acc((1, 1), 100), add((1, 1), 100)),
        (HALT(0), mkt(MARKET_HALT), st(1, TS_HALTED, CAUSE_MARKET), st(2, TS_HALTED, CAUSE_MARKET)),
        (HALT(0), mkt(MARKET_HALT)),
        (S(2, 100, 9800), acc((2, 2), 100), add((2, 2), 100)),
        (MB(3, 10, locate=2), acc((3, 3), 10)),
        (RESUME(0), st(1, TS_REOPENING_AUCTION, CAUSE_MARKET), st(2, TS_REOPENING_AUCTION, CAUSE_MARKET)),
        (TICK(5), noii(1, CROSS_REOPEN, 100, 0, IMBALANCE_NONE, 9900, 9900, 10000),
         noii(2, CROSS_REOPEN, 0, 0, IMBALANCE_NO_PRICE, 0, 0, 0)),
        (HALT(2), st(2, TS_HALTED, CAUSE_ADMIN)),
        (CLOSE(2), cxl((3, 3), 10, 0, 0, MKT, False), st(2, TS_CLOSED, CAUSE_ADMIN)),
        (CLOSE(2), rej(R.ADMIN_INVALID_TRANSITION)),
        (TICK(10), xfill((1, 1), (2, 2), 100, 9900, 1, 0, 100, 0, 100), uncr(1, CROSS_REOPEN, 9900, 100, 2),
         st(1, TS_CONTINUOUS, CAUSE_MARKET)),
        (CLOSE(0), st(1, TS_CLOSED, CAUSE_ADMIN)),
    ], states={1: TS_CLOSED, 2: TS_CLOSED},
        rules=TradingRules.of({1: InstrumentRules(10000, band_bps=1000, collar_bps=500)}, **TIMERS)),
    Scenario("admin commands that cannot apply are rejected and change nothing", [
        (TICK(100)),
        (TICK(99), rej(R.ADMIN_CLOCK_BACKWARDS)),
        (SCHED(10, 30, 20, 1000, 1100), rej(R.ADMIN_INVALID_SCHEDULE)),
        (SCHED(0, 30, 40, 1000, 1100), rej(R.ADMIN_INVALID_SCHEDULE)),
        (HALT(9), rej(R.UNKNOWN_INSTRUMENT)),
        (RESUME(9), rej(R.UNKNOWN_INSTRUMENT)),
        (CLOSE(9), rej(R.UNKNOWN_INSTRUMENT)),
        (RESUME(1), rej(R.ADMIN_INVALID_TRANSITION)),
        (SCHED(0, 0, 0, 0, 0)),
        (TICK(100)),
    ], states={1: TS_CONTINUOUS, 2: TS_CONTINUOUS},
        rules=TradingRules.of({1: InstrumentRules(10000, band_bps=1000)}, **TIMERS)),
    Scenario("post-only re-priced one tick away from the other side where the instrument says so", [
        (TICK(0)),
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 50, 10100, post=1), acc((2, 2), 50), add((2, 2), 50)),                # rests at 9900
        (S(3, 10, 9900, post=1, firm=2), acc((3, 3), 10), add((3, 3), 10)),         # rests at 10000
        (RPL(2, 50, 10000), rpl((2, 2), (2, 2), 50, 50, 0, IN_PLACE)),              # 9900 again: in place
        (B(4, 10, 100, locate=2, post=1), acc((4, 4), 10), add((4, 4), 10)),
        (S(5, 10, 100, locate=2, post=1, firm=2), rej(R.POST_ONLY_WOULD_TAKE)),      # BBB: rejected
    ], book={1: ([(9900, 50, 1)], [(10000, 110, 2)]), 2: ([(100, 10, 1)], [])},
        states={1: TS_CONTINUOUS, 2: TS_CONTINUOUS},
        rules=TradingRules.of({1: InstrumentRules(10000, post_only_reprice=1)}, **TIMERS)),
    Scenario("the limit state ends when the order at the band goes; a market order sweeps to its collar", [
        (TICK(0)),
        (S(1, 50, 9000), acc((1, 1), 50), add((1, 1), 50), lim(1, True, 9000, 11000)),
        (S(2, 50, 9600), acc((2, 2), 50), add((2, 2), 50)),
        (TICK(10)),
        (CXL(1), cxl((1, 1), 50, 0, 0, USER, True), lim(1, False, 9000, 11000)),
        (S(3, 50, 9000), acc((3, 3), 50), add((3, 3), 50), lim(1, True, 9000, 11000)),
        (B(4, 20, 9000, firm=2), acc((4, 4), 20), fill((3, 3), (4, 4), 20, 9000, 1, 30, 20, 0, 20)),
        (MB(5, 100, firm=2), acc((5, 5), 100), fill((3, 3), (5, 5), 30, 9000, 2, 0, 50, 70, 30),
         fill((2, 2), (5, 5), 50, 9600, 3, 0, 50, 20, 80), cxl((5, 5), 20, 0, 80, COLLARC, False),
         lim(1, False, 9000, 11000)),
        (S(6, 50, 9900), acc((6, 6), 50), add((6, 6), 50)),
        (S(7, 50, 10600), acc((7, 7), 50), add((7, 7), 50)),
        (MB(8, 100, firm=2), acc((8, 8), 100), fill((6, 6), (8, 8), 50, 9900, 4, 0, 50, 50, 50),
         cxl((8, 8), 50, 0, 50, COLLARC, False)),
    ], book={1: ([], [(10600, 50, 1)])}, states={1: TS_CONTINUOUS, 2: TS_CONTINUOUS},
        rules=TradingRules.of({1: InstrumentRules(10000, band_bps=1000, collar_bps=500)}, **TIMERS)),
    Scenario("the first trade sets a missing reference; orders through the new band are cancelled", [
        (TICK(0)),
        (S(1, 10, 10000), acc((1, 1), 10), add((1, 1), 10)),
        (B(2, 20, 12000, firm=2), acc((2, 2), 20), fill((1, 1), (2, 2), 10, 10000, 1, 0, 10, 10, 10),
         add((2, 2), 10), cxl((2, 2), 10, 0, 10, BAND, True)),
        (B(3, 10, 11100), rej(R.PRICE_OUTSIDE_BAND)),
        (B(3, 10, 11000), acc((3, 3), 10), add((3, 3), 10), lim(1, True, 9000, 11000)),
    ], book={1: ([(11000, 10, 1)], [])}, states={1: TS_CONTINUOUS, 2: TS_CONTINUOUS},
        rules=TradingRules.of({1: InstrumentRules(0, band_bps=1000)}, **TIMERS)),
    Scenario("circuit breaker: a trade beyond the static range halts; the halt ends in a reopening auction", [
        (TICK(0)),
        (S(1, 10, 1040, locate=3), acc((1, 1), 10), add((1, 1), 10)),
        (S(2, 10, 1060, locate=3), acc((2, 2), 10), add((2, 2), 10)),
        (B(3, 20, 1060, locate=3, firm=2), acc((3, 3), 20), fill((1, 1), (3, 3), 10, 1040, 1, 0, 10, 10, 10),
         fill((2, 2), (3, 3), 10, 1060, 2, 0, 10, 0, 20), st(3, TS_HALTED, CAUSE_CIRCUIT)),
        (S(4, 10, 1070, locate=3), acc((4, 4), 10), add((4, 4), 10)),
        (B(5, 5, 1070, locate=3), acc((5, 5), 5), add((5, 5), 5)),
        (TICK(59)),
        (TICK(70), st(3, TS_REOPENING_AUCTION, CAUSE_CIRCUIT), xfill((5, 5), (4, 4), 5, 1070, 3, 0, 5, 5, 5),
         uncr(3, CROSS_REOPEN, 1070, 5, 4), st(3, TS_CONTINUOUS, CAUSE_CIRCUIT)),
        (B(6, 5, 1100, locate=3, firm=2), acc((6, 6), 5), fill((4, 4), (6, 6), 5, 1070, 5, 0, 10, 0, 5)),
    ], states={3: TS_CONTINUOUS},
        rules=TradingRules.of({3: InstrumentRules(1000, circuit_breaker_bps=500)}, **TIMERS)),
]
INSTRUMENTS = (AAA, BBB)
FIRM_STP = {9: STP_NONE}


def _instruments(scenario: Scenario) -> tuple[Instrument, ...]:
    return (AAA, BBB, CCC) if any(loc == 3 for loc, _ in scenario.rules.instruments) else INSTRUMENTS


def _make(engine_cls: type, scenario: Scenario) -> Any:
    return engine_cls(_instruments(scenario), FIRM_STP, STP_CN, scenario.rules)


def _carry(engine_cls: type) -> Any:
    """An engine at the end of the first table's day (for the next-day table)."""
    engine = _make(engine_cls, SCENARIOS[0])
    for spec, *_ in _steps(SCENARIOS[0]):
        engine.apply(_build(spec), [])
    return engine


def _build(spec: Spec) -> Any:
    return build(spec)


def _depth(engine: Any, locate: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    if isinstance(engine, ReferenceEngine):
        return engine.depth(locate, BUY), engine.depth(locate, SELL)
    return engine.book(locate).depth(BUY), engine.book(locate).depth(SELL)


def _state(engine: Any, locate: int) -> int:
    if isinstance(engine, ReferenceEngine):
        return engine.trading_state(locate)
    return engine.book(locate).state


def _start(engine_cls: type, scenario: Scenario) -> Any:
    return _carry(engine_cls) if scenario.name.startswith("the next day") else _make(engine_cls, scenario)


def _steps(scenario: Scenario) -> list[tuple[Any, ...]]:
    return [step if isinstance(step[0], tuple) else (step,) for step in scenario.steps]


@pytest.mark.parametrize("engine_cls", ENGINES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario(scenario: Scenario, engine_cls: type, kit: Any) -> None:
    engine = _start(engine_cls, scenario)
    for i, (spec, *expected) in enumerate(_steps(scenario)):
        before = engine.state_hash()
        assert [brief(ev) for ev in kit.step(engine, spec)] == expected, f"step {i}: {spec}"
        engine.check_invariants()
        if [ev[0] for ev in expected] == ["CommandRejected"]:
            assert engine.state_hash() == before, f"step {i}: a rejected command changed the state"
    for ins in _instruments(scenario):
        assert _depth(engine, ins.locate) == scenario.book.get(ins.locate, ([], [])), ins.symbol
        if ins.locate in scenario.states:
            assert _state(engine, ins.locate) == scenario.states[ins.locate], ins.symbol


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_engines_agree(scenario: Scenario, kit: Any) -> None:
    fast, ref = _start(Engine, scenario), _start(ReferenceEngine, scenario)
    assert fast.state_hash() == ref.state_hash()
    for i, (spec, *_) in enumerate(_steps(scenario)):
        assert kit.step(fast, spec) == kit.step(ref, spec), f"step {i}: {spec}"
        assert fast.state_hash() == ref.state_hash(), f"step {i}: {spec}"


# ==================================================================================================
# Auction price determination: the published Xetra examples
# ==================================================================================================
class Auction(NamedTuple):
    name: str
    bids: list[tuple[int, int]]   # (price, qty); price 0: a market order; in arrival order
    asks: list[tuple[int, int]]
    ref: int
    price: int                    # expected auction price (0: no auction price)
    volume: int
    surplus: int                  # demand - supply at the price


XETRA = [
    Auction("1: one limit with the highest volume and the least surplus",
            [(202, 200), (201, 200), (200, 300)], [(200, 100), (198, 200), (197, 400)], 0, 200, 700, 0),
    Auction("2: several limits, surplus on the buy side: the highest",
            [(202, 400), (201, 200)], [(199, 300), (198, 200)], 0, 201, 500, 100),
    Auction("3: several limits, surplus on the sell side: the lowest",
            [(202, 300), (201, 200)], [(199, 400), (198, 200)], 0, 199, 500, -100),
    Auction("4a: surplus on both sides: the reference price when it is a candidate",
            [(0, 100), (199, 100)], [(0, 100), (202, 100)], 199, 199, 100, 100),
    Auction("4b: surplus on both sides: the limit nearest the reference price",
            [(0, 100), (199, 100)], [(0, 100), (202, 100)], 200, 199, 100, 100),
    Auction("4c: ... nearest the reference price, above it",
            [(0, 100), (199, 100)], [(0, 100), (202, 100)], 201, 202, 100, -100),
    Auction("5a: no surplus, reference between two limits as near: the higher",
            [(202, 300), (201, 200)], [(198, 200), (199, 300)], 200, 201, 500, 0),
    Auction("5b: no surplus, reference above: the highest",
            [(202, 300), (201, 200)], [(198, 200), (199, 300)], 202, 201, 500, 0),
    Auction("5c: no surplus, reference below: the lowest",
            [(202, 300), (201, 200)], [(198, 200), (199, 300)], 198, 199, 500, 0),
    Auction("6a: only market orders: the reference price",
            [(0, 900)], [(0, 800)], 250, 250, 800, 100),
    Auction("6b: only market orders: the reference price",
            [(0, 900)], [(0, 800)], 99, 99, 800, 100),
    Auction("only market orders and no reference price: nothing crosses",
            [(0, 900)], [(0, 800)], 0, 0, 0, 0),
    Auction("nothing to cross", [(99, 100), (98, 50)], [(101, 100)], 100, 0, 0, 0),
    Auction("one side only", [(99, 100), (0, 10)], [], 100, 0, 0, 0),
]


def _auction_engine(engine_cls: type, a: Auction) -> Any:
    rules = TradingRules.of({2: InstrumentRules(a.ref)}, start_state=TS_OPENING_AUCTION, **TIMERS)
    engine = engine_cls(INSTRUMENTS, FIRM_STP, STP_CN, rules)
    oid = 0
    for side, orders in ((BUY, a.bids), (SELL, a.asks)):
        for price, qty in orders:
            oid += 1
            out: list[Any] = []
            engine.apply(NewOrder(oid, 2, side, qty, price, MARKET if price == 0 else LIMIT, firm=oid), out)
            assert out[0][0] == 1, out
    return engine


@pytest.mark.parametrize("engine_cls", ENGINES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("a", XETRA, ids=lambda a: a.name)
def test_xetra_auction_price_examples(a: Auction, engine_cls: type) -> None:
    engine = _auction_engine(engine_cls, a)
    out: list[Any] = []
    engine.apply(ClockTick(T), out)
    imbalance = [ev for ev in out if ev[0] == 13 and ev[1] == 2]
    assert len(imbalance) == 1
    _, _, cross_type, paired, imb, direction, far, near, ref = imbalance[0]
    assert (cross_type, near, paired, ref) == (CROSS_OPEN, a.price, a.volume, a.ref)
    expected_dir = (IMBALANCE_NO_PRICE if not a.volume else IMBALANCE_BUY if a.surplus > 0
                    else IMBALANCE_SELL if a.surplus < 0 else IMBALANCE_NONE)
    assert (imb, direction) == (abs(a.surplus) if a.volume else 0, expected_dir)
    out.clear()
    engine.apply(SetSchedule(T - 3, T - 2, T - 1, T + 10**12, T + 2 * 10**12), out)
    engine.apply(ClockTick(T), out)
    crosses = [ev for ev in out if ev[0] == 12 and ev[1] == 2]
    fills = [ev for ev in out if ev[0] == 11]
    assert [c[2:5] for c in crosses] == [(CROSS_OPEN, a.price, a.volume)]
    assert sum(f[3] for f in fills) == a.volume and all(f[4] == a.price for f in fills)
    engine.check_invariants()
    if a.volume:  # after the uncross nothing can trade at the auction price any more
        bids = [p for p, _ in a.bids if p]
        asks = [p for p, _ in a.asks if p]
        book = _depth(engine, 2)
        assert not book[0] or not book[1] or book[0][0][0] < book[1][0][0]
        assert all(p <= a.price for p, _, _ in book[0]) and all(p >= a.price for p, _, _ in book[1])
        assert bids or asks or a.price == a.ref


def test_uncross_fills_market_orders_first_then_price_then_time(kit: Any) -> None:
    """Xetra example 1 with time priority visible: at 200 the earlier bid fills first."""
    a = Auction("", [(0, 100), (202, 200), (200, 300), (201, 200), (200, 100)],
                [(200, 100), (198, 200), (197, 600)], 0, 200, 900, 0)
    outs = []
    for cls in ENGINES:
        engine = _auction_engine(cls, a)
        out: list[Any] = []
        engine.apply(SetSchedule(T - 3, T - 2, T - 1, T + 10**12, T + 2 * 10**12), out)
        engine.apply(ClockTick(T), out)
        outs.append([kit.normalize(ev) for ev in out])
        fills = [(ev[1].order_id, ev[2].order_id, ev[3]) for ev in out if ev[0] == 11]
        # buys: market (1), 202 (2), 201 (4), 200 (3 then 5); sells: 197 (8), 198 (7), 200 (6)
        assert fills == [(1, 8, 100), (2, 8, 200), (4, 8, 200), (3, 8, 100), (3, 7, 200), (5, 6, 100)]
    assert outs[0] == outs[1]


def test_next_deadline_says_when_a_tick_is_due() -> None:
    """The partition injects a ClockTick when Engine.next_deadline_ns() has passed."""
    engine = Engine(INSTRUMENTS, FIRM_STP, STP_CN, RULES)
    assert engine.next_deadline_ns() is None                       # closed, no schedule: nothing timed
    engine.apply(SetSchedule(T + 10 * SEC, T + 20 * SEC, T + 30 * SEC, T + 40 * SEC, T + 50 * SEC), [])
    engine.apply(ClockTick(T), [])
    assert engine.next_deadline_ns() == T + 10 * SEC                 # the pre-open
    engine.apply(ClockTick(T + 20 * SEC), [])
    assert engine.next_deadline_ns() == T + 21 * SEC                 # the next imbalance message
    engine.apply(ClockTick(T + 30 * SEC), [])                        # open
    engine.apply(NewOrder(1, 1, BUY, 10, 11000), [])                 # at the upper band: a limit state
    assert engine.book(1).limit_on and engine.next_deadline_ns() == T + 40 * SEC   # closing auction first
    engine.apply(ClockTick(T + 44 * SEC), [])                        # closing auction
    assert engine.next_deadline_ns() == T + 45 * SEC
    engine.apply(ClockTick(T + 60 * SEC), [])
    assert engine.next_deadline_ns() is None and engine.book(1).state == TS_CLOSED


@pytest.mark.parametrize("rules", [None, TradingRules.of({}, start_state=TS_CONTINUOUS, **TIMERS)],
                         ids=["no trading rules", "rules without a schedule"])
def test_a_halt_without_a_schedule_reopens_and_trades_again(rules: Any, kit: Any) -> None:
    """No SetSchedule at all: `admin halt` then `admin resume` (the sequencer's tick ahead of each)
    starts a reopening call of the configured length from the resume; the tick at its end uncrosses
    and trading is continuous again; orders then match on entry."""
    call = (rules or TradingRules.of({})).reopen_call_ns
    outs = []
    for cls in ENGINES:
        engine = cls(INSTRUMENTS, FIRM_STP, STP_CN, rules)
        ev: list[Any] = []
        for spec in (B(1, 100, 10000), TICK(5), HALT(1), S(2, 60, 10000, firm=2), TICK(100), RESUME(1)):
            ev += kit.step(engine, spec)
        assert [brief(e) for e in ev if e[0] == "TradingStateChanged"] == [
            st(1, TS_HALTED, CAUSE_ADMIN), st(1, TS_REOPENING_AUCTION, CAUSE_ADMIN)]
        assert not [e for e in ev if e[0] in ("OrderExecuted", "AuctionUncrossed")]   # halted: collected
        if isinstance(engine, Engine):
            assert engine.next_deadline_ns() is not None            # a timer: the partition ticks
        early = kit.step(engine, _spec(ClockTick(T + 100 * SEC + call - 1)))
        assert not [e for e in early if e[0] in ("TradingStateChanged", "AuctionUncrossed")]
        end = kit.step(engine, _spec(ClockTick(T + 100 * SEC + call)))
        assert ("AuctionUncrossed", 1, CROSS_REOPEN, 10000, 60, 2) in [brief(e) for e in end]
        assert [brief(e) for e in end if e[0] == "TradingStateChanged"] == [st(1, TS_CONTINUOUS, CAUSE_ADMIN)]
        if isinstance(engine, Engine):
            assert engine.next_deadline_ns() is None
        after = kit.step(engine, S(3, 40, 10000, firm=2))          # continuous: matches on entry
        assert [e[0] for e in after if e[0] == "OrderExecuted"] == ["OrderExecuted"]
        engine.check_invariants()
        outs.append(ev + early + end + after)
    assert outs[0] == outs[1]
