"""Book scenarios as small tables, one or more per rule of docs/matching.md, run on both engines.

A scenario is a list of steps ``(command spec, expected event, ...)`` plus the book expected at
the end (depth per side, pending stops, last trade price). Expected events are written briefly:
an order as ``(order_id, ref)``, commands left out; see `brief`. Each scenario runs on the fast
engine and on the reference engine, with check_invariants() after every command and the state hash
checked unchanged after every rejected command; a second test runs both engines side by side and
compares the full normalized events and the state hashes after every command.

Instruments: AAA (locate 1, tick 100) and BBB (locate 2, tick 1). Firms 1-6 use the engine default
STP mode (CN); firm 7 is configured CO, firm 8 DC, firm 9 none.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from appliance import reasons as R
from appliance.catalogue import (
    EVENT_LAYOUTS,
    MASS_ANY_INSTRUMENT,
    MASS_ANY_SIDE,
    REPL_HIDDEN,
    REPL_IN_PLACE,
    REPL_REMOVE,
    REPL_REPOST,
    CancelOrder,
    Command,
    Ev,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.matching.engine import Engine
from appliance.matching.reference import ReferenceEngine
from conftest import compiled_build
from appliance.model import (
    BUY,
    DAY,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    MAX_PRICE,
    MAX_QTY,
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

INSTRUMENTS = (Instrument("AAA", 1, tick=100), Instrument("BBB", 2, tick=1))
FIRM_CO, FIRM_DC, FIRM_NONE = 7, 8, 9
FIRM_STP = {FIRM_CO: STP_CO, FIRM_DC: STP_DC, FIRM_NONE: STP_NONE}
ENGINES = (Engine, ReferenceEngine)

Spec = tuple[str, tuple[Any, ...]]


def _spec(cmd: Command) -> Spec:
    return cmd.NAME, tuple(getattr(cmd, name) for name, _ in cmd.FIELDS)


# -- commands ------------------------------------------------------------------------------------
def N(oid: int, side: int, qty: int, price: int = 0, type: int = LIMIT, tif: int = DAY, stop: int = 0,
      firm: int = 1, stp: int = STP_DEFAULT, locate: int = 1, post: int = 0) -> Spec:
    return _spec(NewOrder(oid, locate, side, qty, price, type, tif, stop, firm, stp=stp, post_only=post))


def B(oid: int, qty: int, price: int, **kw: Any) -> Spec:
    """A buy limit order."""
    return N(oid, BUY, qty, price, **kw)


def S(oid: int, qty: int, price: int, **kw: Any) -> Spec:
    """A sell limit order."""
    return N(oid, SELL, qty, price, **kw)


def MB(oid: int, qty: int, **kw: Any) -> Spec:
    return N(oid, BUY, qty, 0, type=MARKET, **kw)


def MS(oid: int, qty: int, **kw: Any) -> Spec:
    return N(oid, SELL, qty, 0, type=MARKET, **kw)


def BSTOP(oid: int, qty: int, stop: int, price: int = 0, **kw: Any) -> Spec:
    """A buy stop (price 0) or stop-limit (price > 0)."""
    return N(oid, BUY, qty, price, type=STOP_LIMIT if price else STOP, stop=stop, **kw)


def SSTOP(oid: int, qty: int, stop: int, price: int = 0, **kw: Any) -> Spec:
    return N(oid, SELL, qty, price, type=STOP_LIMIT if price else STOP, stop=stop, **kw)


def CXL(oid: int, firm: int = 1) -> Spec:
    return _spec(CancelOrder(oid, firm))


def RPL(oid: int, qty: int, price: int, stop: int = 0, firm: int = 1, cl: str = "") -> Spec:
    return _spec(ReplaceOrder(oid, qty, price, firm, stop_price=stop, cl_ord_id=cl))


def MASS(firm: int, locate: int = MASS_ANY_INSTRUMENT, side: int = MASS_ANY_SIDE) -> Spec:
    return _spec(MassCancel(firm, locate, side))


# -- expected events, brief form: an order is (order_id, ref); commands are left out ---------------
Ref = tuple[int, int]


def acc(o: Ref, qty: int) -> tuple[Any, ...]:
    return ("OrderAccepted", o, qty)


def rej(reason: int) -> tuple[Any, ...]:
    return ("CommandRejected", reason)


def add(o: Ref, shares: int) -> tuple[Any, ...]:
    return ("OrderAdded", o, shares)


def fill(maker: Ref, taker: Ref, qty: int, price: int, match: int,
         maker_leaves: int, maker_filled: int, taker_leaves: int, taker_filled: int) -> tuple[Any, ...]:
    return ("OrderExecuted", maker, taker, qty, price, match, maker_leaves, maker_filled,
            taker_leaves, taker_filled)


def cxl(o: Ref, qty: int, leaves: int, filled: int, reason: int, on_book: bool) -> tuple[Any, ...]:
    return ("OrderCancelled", o, qty, leaves, filled, reason, on_book)


def rpl(old: Ref, new: Ref, old_leaves: int, new_leaves: int, filled: int, action: int) -> tuple[Any, ...]:
    return ("OrderReplaced", old, new, old_leaves, new_leaves, filled, action)


def trig(o: Ref, price: int) -> tuple[Any, ...]:
    return ("StopTriggered", o, price)


def mass(count: int) -> tuple[Any, ...]:
    return ("MassCancelled", count)


USER, IOCR, FOKC, MKT, STPC, MASSC = (
    R.CANCEL_USER, R.CANCEL_IOC_REMAINDER, R.CANCEL_FOK, R.CANCEL_MARKET_NO_LIQUIDITY, R.CANCEL_STP,
    R.CANCEL_MASS,
)
IN_PLACE, REPOST, REMOVE, HIDDEN = REPL_IN_PLACE, REPL_REPOST, REPL_REMOVE, REPL_HIDDEN

_FIELDS_BY_NAME = {name: fields for name, fields in EVENT_LAYOUTS.values()}


def brief(ev: tuple[Any, ...]) -> tuple[Any, ...]:
    """A normalized event in the brief form of the tables."""
    out: list[Any] = [ev[0]]
    for field, value in zip(_FIELDS_BY_NAME[ev[0]][1:], ev[1:]):
        if field == "command":
            continue
        if field in ("order", "maker", "taker", "old", "new"):
            value = (value[0], value[1])
        out.append(value)
    return tuple(out)


class Scenario(NamedTuple):
    name: str
    steps: list[tuple[Any, ...]]  # (spec, expected brief event, ...)
    book: dict[int, tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]] = {}
    stops: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}
    last: dict[int, int] = {}


# ==================================================================================================
# The tables
# ==================================================================================================
SCENARIOS = [
    # -- price-time priority, maker price ----------------------------------------------------------
    Scenario("asks: lower price first, then arrival within a price", [
        (S(1, 100, 10100), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000), acc((2, 2), 100), add((2, 2), 100)),
        (S(3, 100, 10000, firm=2), acc((3, 3), 100), add((3, 3), 100)),
        (B(4, 250, 10100, firm=3), acc((4, 4), 250),
         fill((2, 2), (4, 4), 100, 10000, 1, 0, 100, 150, 100),
         fill((3, 3), (4, 4), 100, 10000, 2, 0, 100, 50, 200),
         fill((1, 1), (4, 4), 50, 10100, 3, 50, 50, 0, 250)),
    ], book={1: ([], [(10100, 50, 1)])}, last={1: 10100}),
    Scenario("bids: higher price first, then arrival within a price", [
        (B(1, 100, 9900), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 10000), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 10000, firm=2), acc((3, 3), 100), add((3, 3), 100)),
        (B(4, 100, 9800), acc((4, 4), 100), add((4, 4), 100)),
        (S(5, 250, 9900, firm=3), acc((5, 5), 250),
         fill((2, 2), (5, 5), 100, 10000, 1, 0, 100, 150, 100),
         fill((3, 3), (5, 5), 100, 10000, 2, 0, 100, 50, 200),
         fill((1, 1), (5, 5), 50, 9900, 3, 50, 50, 0, 250)),
    ], book={1: ([(9900, 50, 1), (9800, 100, 1)], [])}, last={1: 9900}),
    Scenario("trades at the maker's price; a limit rests what it could not fill", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 300, 10200, firm=2), acc((2, 2), 300),
         fill((1, 1), (2, 2), 100, 10000, 1, 0, 100, 200, 100), add((2, 2), 200)),
        (S(3, 100, 9800, firm=3), acc((3, 3), 100),
         fill((2, 2), (3, 3), 100, 10200, 2, 100, 200, 0, 100)),
    ], book={1: ([(10200, 100, 1)], [])}, last={1: 10200}),
    Scenario("non-crossing limits rest; depth sums each level", [
        (B(1, 100, 9900), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 200, 9900), acc((2, 2), 200), add((2, 2), 200)),
        (B(3, 50, 9800), acc((3, 3), 50), add((3, 3), 50)),
        (S(4, 100, 10000), acc((4, 4), 100), add((4, 4), 100)),
        (S(5, 100, 10100, locate=2), acc((5, 5), 100), add((5, 5), 100)),
        (S(6, 100, 10001, locate=2), acc((6, 6), 100), add((6, 6), 100)),
    ], book={1: ([(9900, 300, 2), (9800, 50, 1)], [(10000, 100, 1)]),
             2: ([], [(10001, 100, 1), (10100, 100, 1)])}),
    # -- market orders -----------------------------------------------------------------------------
    Scenario("market buy: partial fill, then the remainder is cancelled (no liquidity)", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 50, 10100), acc((2, 2), 50), add((2, 2), 50)),
        (MB(3, 200, firm=2), acc((3, 3), 200),
         fill((1, 1), (3, 3), 100, 10000, 1, 0, 100, 100, 100),
         fill((2, 2), (3, 3), 50, 10100, 2, 0, 50, 50, 150),
         cxl((3, 3), 50, 0, 150, MKT, False)),
    ], last={1: 10100}),
    Scenario("market order on an empty side never rests, whatever its time in force", [
        (MB(1, 100, tif=GTC), acc((1, 1), 100), cxl((1, 1), 100, 0, 0, MKT, False)),
        (B(2, 100, 9900), acc((2, 2), 100), add((2, 2), 100)),
        (MB(3, 100, firm=2), acc((3, 3), 100), cxl((3, 3), 100, 0, 0, MKT, False)),
        (MS(4, 40, firm=2), acc((4, 4), 40), fill((2, 2), (4, 4), 40, 9900, 1, 60, 40, 0, 40)),
    ], book={1: ([(9900, 60, 1)], [])}, last={1: 9900}),
    Scenario("market IOC sell sweeps every bid; remainder cancelled as no liquidity", [
        (B(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 9900), acc((2, 2), 100), add((2, 2), 100)),
        (MS(3, 300, tif=IOC, firm=2), acc((3, 3), 300),
         fill((1, 1), (3, 3), 100, 10000, 1, 0, 100, 200, 100),
         fill((2, 2), (3, 3), 100, 9900, 2, 0, 100, 100, 200),
         cxl((3, 3), 100, 0, 200, MKT, False)),
    ], last={1: 9900}),
    # -- IOC / FOK ---------------------------------------------------------------------------------
    Scenario("IOC fills what crosses now and cancels the remainder", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10200), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 150, 10100, tif=IOC, firm=2), acc((3, 3), 150),
         fill((1, 1), (3, 3), 100, 10000, 1, 0, 100, 50, 100), cxl((3, 3), 50, 0, 100, IOCR, False)),
        (B(4, 100, 10100, tif=IOC, firm=2), acc((4, 4), 100), cxl((4, 4), 100, 0, 0, IOCR, False)),
    ], book={1: ([], [(10200, 100, 1)])}, last={1: 10000}),
    Scenario("FOK fills completely across levels", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (S(3, 100, 10200), acc((3, 3), 100), add((3, 3), 100)),
        (B(4, 200, 10100, tif=FOK, firm=2), acc((4, 4), 200),
         fill((1, 1), (4, 4), 100, 10000, 1, 0, 100, 100, 100),
         fill((2, 2), (4, 4), 100, 10100, 2, 0, 100, 0, 200)),
    ], book={1: ([], [(10200, 100, 1)])}, last={1: 10100}),
    Scenario("FOK that cannot fill completely is cancelled with no trade", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10200), acc((2, 2), 100), add((2, 2), 100)),
        # enough shares at 10200, but beyond the limit
        (B(3, 150, 10100, tif=FOK, firm=2), acc((3, 3), 150), cxl((3, 3), 150, 0, 0, FOKC, False)),
        (MB(4, 250, tif=FOK, firm=2), acc((4, 4), 250), cxl((4, 4), 250, 0, 0, FOKC, False)),
        (B(5, 100, 9900, tif=FOK, firm=2), acc((5, 5), 100), cxl((5, 5), 100, 0, 0, FOKC, False)),
        (S(6, 50, 9900, tif=FOK, firm=2), acc((6, 6), 50), cxl((6, 6), 50, 0, 0, FOKC, False)),
        (MB(7, 200, tif=FOK, firm=2), acc((7, 7), 200),
         fill((1, 1), (7, 7), 100, 10000, 1, 0, 100, 100, 100),
         fill((2, 2), (7, 7), 100, 10200, 2, 0, 100, 0, 200)),
    ], last={1: 10200}),
    Scenario("FOK and STP CN: an own order reached before the fill makes it fail", [
        (S(1, 100, 10000, firm=1), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000, firm=2), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 10000, tif=FOK, firm=1), acc((3, 3), 100), cxl((3, 3), 100, 0, 0, FOKC, False)),
        # firm 2's own order comes after enough liquidity: no effect
        (B(4, 100, 10000, tif=FOK, firm=2), acc((4, 4), 100),
         fill((1, 1), (4, 4), 100, 10000, 1, 0, 100, 0, 100)),
    ], book={1: ([], [(10000, 100, 1)])}, last={1: 10000}),
    Scenario("FOK and STP CO: own orders do not count and are cancelled when reached", [
        (S(1, 100, 10000, firm=FIRM_CO), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000, firm=2), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 10000, tif=FOK, firm=FIRM_CO), acc((3, 3), 100),
         cxl((1, 1), 100, 0, 0, STPC, True), fill((2, 2), (3, 3), 100, 10000, 1, 0, 100, 0, 100)),
        (S(4, 100, 10000, firm=FIRM_CO), acc((4, 4), 100), add((4, 4), 100)),
        (S(5, 50, 10000, firm=2), acc((5, 5), 50), add((5, 5), 50)),
        (B(6, 100, 10000, tif=FOK, firm=FIRM_CO), acc((6, 6), 100), cxl((6, 6), 100, 0, 0, FOKC, False)),
    ], book={1: ([], [(10000, 150, 2)])}, last={1: 10000}),
    Scenario("FOK and STP DC: an own order reached before the fill makes it fail", [
        (S(1, 100, 10000, firm=FIRM_DC), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 200, 10000, firm=2), acc((2, 2), 200), add((2, 2), 200)),
        (B(3, 100, 10000, tif=FOK, firm=FIRM_DC), acc((3, 3), 100), cxl((3, 3), 100, 0, 0, FOKC, False)),
    ], book={1: ([], [(10000, 300, 2)])}),
    Scenario("FOK with its own STP mode none trades with its firm", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 10000, tif=FOK, stp=STP_NONE), acc((2, 2), 100),
         fill((1, 1), (2, 2), 100, 10000, 1, 0, 100, 0, 100)),
    ], last={1: 10000}),
    # -- stops ----------------------------------------------------------------------------------
    Scenario("buy stop triggers on a trade at its stop price (the only pending stop)", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (BSTOP(3, 50, 10000, firm=3), acc((3, 3), 50)),
        (B(4, 100, 10000, firm=2), acc((4, 4), 100),
         fill((1, 1), (4, 4), 100, 10000, 1, 0, 100, 0, 100),
         trig((3, 3), 10000), fill((2, 2), (3, 3), 50, 10100, 2, 50, 50, 0, 50)),
    ], book={1: ([], [(10100, 50, 1)])}, last={1: 10100}),
    Scenario("sell stop triggers on a trade below its stop price (the only pending stop)", [
        (B(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 9800), acc((2, 2), 100), add((2, 2), 100)),
        (SSTOP(3, 50, 10100, firm=3), acc((3, 3), 50)),
        (S(4, 100, 10000, firm=2), acc((4, 4), 100),
         fill((1, 1), (4, 4), 100, 10000, 1, 0, 100, 0, 100),
         trig((3, 3), 10000), fill((2, 2), (3, 3), 50, 9800, 2, 50, 50, 0, 50)),
    ], book={1: ([(9800, 50, 1)], [])}, last={1: 9800}),
    Scenario("a stop lost by one instrument must not run on another instrument's trade", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (BSTOP(2, 10, 10000, firm=3), acc((2, 2), 10)),
        (B(3, 100, 10000, firm=2), acc((3, 3), 100),
         fill((1, 1), (3, 3), 100, 10000, 1, 0, 100, 0, 100),
         trig((2, 2), 10000), cxl((2, 2), 10, 0, 0, MKT, False)),
        (S(4, 100, 500, locate=2), acc((4, 4), 100), add((4, 4), 100)),
        (SSTOP(5, 10, 100, locate=2, firm=3), acc((5, 5), 10)),
        (B(6, 50, 500, locate=2, firm=2), acc((6, 6), 50),
         fill((4, 4), (6, 6), 50, 500, 2, 50, 50, 0, 50)),
    ], book={2: ([], [(500, 50, 1)])}, stops={2: ([], [(5, 100)])}, last={1: 10000, 2: 500}),
    Scenario("sell stop-limit triggers at or below its stop, trades to its limit, rests the rest", [
        (B(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 9900), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 9800), acc((3, 3), 100), add((3, 3), 100)),
        (SSTOP(4, 250, 9900, price=9900, firm=3), acc((4, 4), 250)),
        (SSTOP(5, 100, 9700, firm=3), acc((5, 5), 100)),
        (S(6, 150, 9900, firm=2), acc((6, 6), 150),
         fill((1, 1), (6, 6), 100, 10000, 1, 0, 100, 50, 100),
         fill((2, 2), (6, 6), 50, 9900, 2, 50, 50, 0, 150),
         trig((4, 4), 9900), fill((2, 2), (4, 4), 50, 9900, 3, 0, 100, 200, 50), add((4, 4), 200)),
    ], book={1: ([(9800, 100, 1)], [(9900, 200, 1)])}, stops={1: ([], [(5, 9700)])}, last={1: 9900}),
    Scenario("stops wait before the first trade, whatever their stop price", [
        (BSTOP(1, 100, 100, firm=3), acc((1, 1), 100)),
        (SSTOP(2, 100, 20000, firm=3), acc((2, 2), 100)),
        (BSTOP(3, 100, 100, price=100, firm=3), acc((3, 3), 100)),
    ], stops={1: ([(1, 100), (3, 100)], [(2, 20000)])}),
    Scenario("stops wait while trades have not reached them", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (BSTOP(3, 100, 10100, firm=3), acc((3, 3), 100)),
        (SSTOP(4, 100, 9900, firm=3), acc((4, 4), 100)),
        (B(5, 50, 10000, firm=2), acc((5, 5), 50), fill((1, 1), (5, 5), 50, 10000, 1, 50, 50, 0, 50)),
    ], book={1: ([], [(10000, 50, 1), (10100, 100, 1)])},
        stops={1: ([(3, 10100)], [(4, 9900)])}, last={1: 10000}),
    Scenario("a stop the last trade price already reached triggers on entry", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 10000, firm=2), acc((2, 2), 100), fill((1, 1), (2, 2), 100, 10000, 1, 0, 100, 0, 100)),
        (S(3, 100, 10100), acc((3, 3), 100), add((3, 3), 100)),
        (B(4, 100, 9800), acc((4, 4), 100), add((4, 4), 100)),
        (BSTOP(5, 50, 9900, firm=3), acc((5, 5), 50), trig((5, 5), 10000),
         fill((3, 3), (5, 5), 50, 10100, 2, 50, 50, 0, 50)),
        (SSTOP(6, 50, 10100, firm=3), acc((6, 6), 50), trig((6, 6), 10100),
         fill((4, 4), (6, 6), 50, 9800, 3, 50, 50, 0, 50)),
        (BSTOP(7, 50, 10200, firm=3), acc((7, 7), 50)),
        (SSTOP(8, 50, 9700, price=9700, firm=3), acc((8, 8), 50)),
        (BSTOP(9, 10, 9800, price=9800, firm=3), acc((9, 9), 10), trig((9, 9), 9800), add((9, 9), 10)),
    ], book={1: ([(9800, 60, 2)], [(10100, 50, 1)])},
        stops={1: ([(7, 10200)], [(8, 9700)])}, last={1: 9800}),
    Scenario("triggered stops enter in ascending reference, whatever their stop price or side", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (S(3, 100, 10200), acc((3, 3), 100), add((3, 3), 100)),
        (S(4, 100, 10300), acc((4, 4), 100), add((4, 4), 100)),
        (B(5, 100, 9000), acc((5, 5), 100), add((5, 5), 100)),
        (B(6, 100, 8900), acc((6, 6), 100), add((6, 6), 100)),
        (SSTOP(7, 10, 10000, firm=3), acc((7, 7), 10)),
        (BSTOP(8, 10, 10100, firm=3), acc((8, 8), 10)),
        (BSTOP(9, 10, 10000, firm=3), acc((9, 9), 10)),
        (BSTOP(10, 10, 20000, firm=3), acc((10, 10), 10)),
        (B(11, 200, 10100, firm=2), acc((11, 11), 200),
         fill((1, 1), (11, 11), 100, 10000, 1, 0, 100, 100, 100),
         fill((2, 2), (11, 11), 100, 10100, 2, 0, 100, 0, 200),
         trig((7, 7), 10000), fill((5, 5), (7, 7), 10, 9000, 3, 90, 10, 0, 10),
         trig((8, 8), 10100), fill((3, 3), (8, 8), 10, 10200, 4, 90, 10, 0, 10),
         trig((9, 9), 10100), fill((3, 3), (9, 9), 10, 10200, 5, 80, 20, 0, 10)),
    ], book={1: ([(9000, 90, 1), (8900, 100, 1)], [(10200, 80, 1), (10300, 100, 1)])},
        stops={1: ([(10, 20000)], [])}, last={1: 10200}),
    Scenario("cascade: stops triggered by a triggered order join the end of the queue", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (S(3, 100, 10200), acc((3, 3), 100), add((3, 3), 100)),
        (S(4, 100, 10300), acc((4, 4), 100), add((4, 4), 100)),
        (BSTOP(5, 100, 10100, firm=3), acc((5, 5), 100)),
        (BSTOP(6, 50, 10000, firm=3), acc((6, 6), 50)),
        (BSTOP(7, 50, 10000, firm=4), acc((7, 7), 50)),
        (B(8, 100, 10000, firm=2), acc((8, 8), 100),
         fill((1, 1), (8, 8), 100, 10000, 1, 0, 100, 0, 100),
         trig((6, 6), 10000), fill((2, 2), (6, 6), 50, 10100, 2, 50, 50, 0, 50),
         trig((7, 7), 10000), fill((2, 2), (7, 7), 50, 10100, 3, 0, 100, 0, 50),
         trig((5, 5), 10100), fill((3, 3), (5, 5), 100, 10200, 4, 0, 100, 0, 100)),
    ], book={1: ([], [(10300, 100, 1)])}, last={1: 10200}),
    Scenario("buy sweep: buy stops trigger on its highest price, sell stops on its lowest", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (S(3, 100, 10200), acc((3, 3), 100), add((3, 3), 100)),
        (S(4, 100, 10400), acc((4, 4), 100), add((4, 4), 100)),
        (B(5, 100, 9500), acc((5, 5), 100), add((5, 5), 100)),
        (BSTOP(6, 10, 10200, firm=3), acc((6, 6), 10)),
        (BSTOP(7, 10, 10300, firm=3), acc((7, 7), 10)),
        (SSTOP(8, 10, 10000, firm=3), acc((8, 8), 10)),
        (SSTOP(9, 10, 9900, firm=3), acc((9, 9), 10)),
        (B(10, 300, 10200, firm=2), acc((10, 10), 300),
         fill((1, 1), (10, 10), 100, 10000, 1, 0, 100, 200, 100),
         fill((2, 2), (10, 10), 100, 10100, 2, 0, 100, 100, 200),
         fill((3, 3), (10, 10), 100, 10200, 3, 0, 100, 0, 300),
         trig((6, 6), 10200), fill((4, 4), (6, 6), 10, 10400, 4, 90, 10, 0, 10),
         trig((8, 8), 10000), fill((5, 5), (8, 8), 10, 9500, 5, 90, 10, 0, 10),
         trig((7, 7), 10400), fill((4, 4), (7, 7), 10, 10400, 6, 80, 20, 0, 10),
         trig((9, 9), 9500), fill((5, 5), (9, 9), 10, 9500, 7, 80, 20, 0, 10)),
    ], book={1: ([(9500, 80, 1)], [(10400, 80, 1)])}, last={1: 9500}),
    Scenario("sell sweep: sell stops trigger on its lowest price, buy stops on its highest", [
        (B(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 9900), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 9800), acc((3, 3), 100), add((3, 3), 100)),
        (S(4, 100, 10500), acc((4, 4), 100), add((4, 4), 100)),
        (SSTOP(5, 10, 9900, firm=3), acc((5, 5), 10)),
        (BSTOP(6, 10, 10000, firm=3), acc((6, 6), 10)),
        (SSTOP(7, 10, 9700, firm=3), acc((7, 7), 10)),
        (S(8, 300, 9800, firm=2), acc((8, 8), 300),
         fill((1, 1), (8, 8), 100, 10000, 1, 0, 100, 200, 100),
         fill((2, 2), (8, 8), 100, 9900, 2, 0, 100, 100, 200),
         fill((3, 3), (8, 8), 100, 9800, 3, 0, 100, 0, 300),
         trig((5, 5), 9800), cxl((5, 5), 10, 0, 0, MKT, False),
         trig((6, 6), 10000), fill((4, 4), (6, 6), 10, 10500, 4, 90, 10, 0, 10)),
    ], book={1: ([], [(10500, 90, 1)])}, stops={1: ([], [(7, 9700)])}, last={1: 10500}),
    Scenario("a triggered stop keeps its time in force (FOK, IOC)", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 30, 10100), acc((2, 2), 30), add((2, 2), 30)),
        (BSTOP(3, 50, 10000, price=10000, tif=FOK, firm=3), acc((3, 3), 50)),
        (BSTOP(4, 50, 10000, price=10100, tif=IOC, firm=3), acc((4, 4), 50)),
        (SSTOP(5, 10, 5000, firm=3), acc((5, 5), 10)),
        (B(6, 100, 10000, firm=2), acc((6, 6), 100),
         fill((1, 1), (6, 6), 100, 10000, 1, 0, 100, 0, 100),
         trig((3, 3), 10000), cxl((3, 3), 50, 0, 0, FOKC, False),
         trig((4, 4), 10000), fill((2, 2), (4, 4), 30, 10100, 2, 0, 30, 20, 30),
         cxl((4, 4), 20, 0, 30, IOCR, False)),
    ], stops={1: ([], [(5, 5000)])}, last={1: 10100}),
    Scenario("stops trigger only on trades of their own instrument", [
        (BSTOP(1, 10, 100, locate=2, firm=3), acc((1, 1), 10)),
        (SSTOP(2, 10, 20000, locate=2, firm=3), acc((2, 2), 10)),
        (S(3, 100, 10000), acc((3, 3), 100), add((3, 3), 100)),
        (B(4, 100, 10000, firm=2), acc((4, 4), 100), fill((3, 3), (4, 4), 100, 10000, 1, 0, 100, 0, 100)),
    ], stops={2: ([(1, 100)], [(2, 20000)])}, last={1: 10000, 2: 0}),
    Scenario("a crossing replace triggers stops", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 9900, firm=2), acc((3, 3), 100), add((3, 3), 100)),
        (BSTOP(4, 50, 10000, firm=3), acc((4, 4), 50)),
        (BSTOP(5, 50, 10200, firm=3), acc((5, 5), 50)),
        (RPL(3, 100, 10000, firm=2), rpl((3, 3), (3, 6), 100, 100, 0, REMOVE),
         fill((1, 1), (3, 6), 100, 10000, 1, 0, 100, 0, 100),
         trig((4, 4), 10000), fill((2, 2), (4, 4), 50, 10100, 2, 50, 50, 0, 50)),
    ], book={1: ([], [(10100, 50, 1)])}, stops={1: ([(5, 10200)], [])}, last={1: 10100}),
    # -- replace ----------------------------------------------------------------------------------
    Scenario("replace down at the same price keeps priority and reference", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000), acc((2, 2), 100), add((2, 2), 100)),
        (RPL(1, 60, 10000), rpl((1, 1), (1, 1), 100, 60, 0, IN_PLACE)),
        (RPL(2, 100, 10000), rpl((2, 2), (2, 2), 100, 100, 0, IN_PLACE)),
        (B(3, 70, 10000, firm=2), acc((3, 3), 70),
         fill((1, 1), (3, 3), 60, 10000, 1, 0, 60, 10, 60),
         fill((2, 2), (3, 3), 10, 10000, 2, 90, 10, 0, 70)),
    ], book={1: ([], [(10000, 90, 1)])}, last={1: 10000}),
    Scenario("replace up loses priority and takes a new reference", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000), acc((2, 2), 100), add((2, 2), 100)),
        (RPL(1, 150, 10000), rpl((1, 1), (1, 3), 100, 150, 0, REPOST)),
        (B(4, 120, 10000, firm=2), acc((4, 4), 120),
         fill((2, 2), (4, 4), 100, 10000, 1, 0, 100, 20, 100),
         fill((1, 3), (4, 4), 20, 10000, 2, 130, 20, 0, 120)),
    ], book={1: ([], [(10000, 130, 1)])}, last={1: 10000}),
    Scenario("price change: new reference at the back of the new level", [
        (S(1, 100, 10100), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000), acc((2, 2), 100), add((2, 2), 100)),
        (RPL(1, 100, 10000), rpl((1, 1), (1, 3), 100, 100, 0, REPOST)),
        (B(3, 10, 9800), acc((3, 4), 10), add((3, 4), 10)),
        (RPL(3, 5, 9900), rpl((3, 4), (3, 5), 10, 5, 0, REPOST)),
        (B(4, 150, 10000, firm=2), acc((4, 6), 150),
         fill((2, 2), (4, 6), 100, 10000, 1, 0, 100, 50, 100),
         fill((1, 3), (4, 6), 50, 10000, 2, 50, 50, 0, 150)),
    ], book={1: ([(9900, 5, 1)], [(10000, 50, 1)])}, last={1: 10000}),
    Scenario("crossing replace: trades at the makers' prices, then rests the rest", [
        (B(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 9900), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 9800), acc((3, 3), 100), add((3, 3), 100)),
        (S(4, 300, 10100, firm=2), acc((4, 4), 300), add((4, 4), 300)),
        (RPL(4, 300, 9900, firm=2), rpl((4, 4), (4, 5), 300, 300, 0, REMOVE),
         fill((1, 1), (4, 5), 100, 10000, 1, 0, 100, 200, 100),
         fill((2, 2), (4, 5), 100, 9900, 2, 0, 100, 100, 200),
         add((4, 5), 100)),
    ], book={1: ([(9800, 100, 1)], [(9900, 100, 1)])}, last={1: 9900}),
    Scenario("replace quantities are totals; at or below the filled quantity is rejected", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 40, 10000, firm=2), acc((2, 2), 40), fill((1, 1), (2, 2), 40, 10000, 1, 60, 40, 0, 40)),
        (RPL(1, 40, 10000), rej(R.REPLACE_BELOW_FILLED)),
        (RPL(1, 30, 10000), rej(R.REPLACE_BELOW_FILLED)),
        (RPL(1, 50, 10000), rpl((1, 1), (1, 1), 60, 10, 40, IN_PLACE)),
        (RPL(1, 140, 10000), rpl((1, 1), (1, 3), 10, 100, 40, REPOST)),
        (RPL(1, 40, 10100), rej(R.REPLACE_BELOW_FILLED)),
    ], book={1: ([], [(10000, 100, 1)])}, last={1: 10000}),
    Scenario("replace checks, in the documented order", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (BSTOP(2, 100, 10500), acc((2, 2), 100)),
        (BSTOP(3, 100, 10500, price=10600), acc((3, 3), 100)),
        (RPL(9, 0, 10050), rej(R.UNKNOWN_ORDER)),
        (RPL(1, 0, 10050, firm=2), rej(R.UNKNOWN_ORDER)),
        (RPL(1, 0, 10050), rej(R.INVALID_QUANTITY)),
        (RPL(1, -5, 10000), rej(R.INVALID_QUANTITY)),
        (RPL(1, MAX_QTY + 1, 10000), rej(R.INVALID_QUANTITY)),
        (RPL(1, 100, 0), rej(R.INVALID_PRICE)),
        (RPL(1, 100, -100), rej(R.INVALID_PRICE)),
        (RPL(1, 100, MAX_PRICE + 1), rej(R.INVALID_PRICE)),
        (RPL(1, 100, 10050, stop=10550), rej(R.PRICE_OFF_TICK)),
        (RPL(1, 100, 10000, stop=10500), rej(R.INVALID_STOP_PRICE)),
        (RPL(2, 100, 10000), rej(R.INVALID_PRICE)),
        (RPL(2, 100, 0, stop=10550), rej(R.INVALID_STOP_PRICE)),
        (RPL(2, 100, 0, stop=-100), rej(R.INVALID_STOP_PRICE)),
        (RPL(2, 100, 0, stop=MAX_PRICE + 1), rej(R.INVALID_STOP_PRICE)),
        (RPL(3, 100, 0), rej(R.INVALID_PRICE)),
        (RPL(3, 100, 10650), rej(R.PRICE_OFF_TICK)),
        (RPL(3, 100, 10600, stop=10450), rej(R.INVALID_STOP_PRICE)),
    ], book={1: ([], [(10000, 100, 1)])}, stops={1: ([(2, 10500), (3, 10500)], [])}),
    Scenario("replace of pending stops: in place, or a new reference at the back of its stop price", [
        (BSTOP(1, 100, 10500), acc((1, 1), 100)),
        (BSTOP(2, 100, 10500), acc((2, 2), 100)),
        (BSTOP(3, 100, 10600, price=10700), acc((3, 3), 100)),
        (RPL(1, 50, 0), rpl((1, 1), (1, 1), 100, 50, 0, HIDDEN)),
        (RPL(2, 100, 0, stop=10400), rpl((2, 2), (2, 4), 100, 100, 0, HIDDEN)),
        (RPL(2, 100, 0, stop=10400), rpl((2, 4), (2, 4), 100, 100, 0, HIDDEN)),
        (RPL(1, 80, 0), rpl((1, 1), (1, 5), 50, 80, 0, HIDDEN)),
        (RPL(3, 100, 10800), rpl((3, 3), (3, 6), 100, 100, 0, HIDDEN)),
        (RPL(3, 90, 10800, stop=10600), rpl((3, 6), (3, 6), 100, 90, 0, HIDDEN)),
        (SSTOP(6, 10, 9000, firm=3), acc((6, 7), 10)),
        (S(4, 500, 10600, firm=2), acc((4, 8), 500), add((4, 8), 500)),
        (B(5, 100, 10600, firm=3), acc((5, 9), 100),
         fill((4, 8), (5, 9), 100, 10600, 1, 400, 100, 0, 100),
         trig((2, 4), 10600), fill((4, 8), (2, 4), 100, 10600, 2, 300, 200, 0, 100),
         trig((1, 5), 10600), fill((4, 8), (1, 5), 80, 10600, 3, 220, 280, 0, 80),
         trig((3, 6), 10600), fill((4, 8), (3, 6), 90, 10600, 4, 130, 370, 0, 90)),
    ], book={1: ([], [(10600, 130, 1)])}, stops={1: ([], [(6, 9000)])}, last={1: 10600}),
    Scenario("a replaced stop waits for the next trade even if the last one reached it", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 50, 10000, firm=2), acc((2, 2), 50), fill((1, 1), (2, 2), 50, 10000, 1, 50, 50, 0, 50)),
        (BSTOP(3, 10, 10500, firm=3), acc((3, 3), 10)),
        (SSTOP(4, 10, 9000, firm=3), acc((4, 4), 10)),
        (RPL(3, 10, 0, stop=10000, firm=3), rpl((3, 3), (3, 5), 10, 10, 0, HIDDEN)),
        (B(5, 10, 10000, firm=2), acc((5, 6), 10),
         fill((1, 1), (5, 6), 10, 10000, 2, 40, 60, 0, 10),
         trig((3, 5), 10000), fill((1, 1), (3, 5), 10, 10000, 3, 30, 70, 0, 10)),
    ], book={1: ([], [(10000, 30, 1)])}, stops={1: ([], [(4, 9000)])}, last={1: 10000}),
    # -- cancel, and what is unknown -----------------------------------------------------------------
    Scenario("cancel a resting, a partially filled and a pending order; ids are reusable after", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 30, 10000, firm=2), acc((2, 2), 30), fill((1, 1), (2, 2), 30, 10000, 1, 70, 30, 0, 30)),
        (CXL(1), cxl((1, 1), 70, 0, 30, USER, True)),
        (BSTOP(3, 10, 10500), acc((3, 3), 10)),
        (CXL(3), cxl((3, 3), 10, 0, 0, USER, False)),
        (S(1, 100, 10100), acc((1, 4), 100), add((1, 4), 100)),
        (B(5, 20, 9000), acc((5, 5), 20), add((5, 5), 20)),
        (CXL(5), cxl((5, 5), 20, 0, 0, USER, True)),
    ], book={1: ([], [(10100, 100, 1)])}, last={1: 10000}),
    Scenario("cancel/replace of unknown, filled, cancelled or another firm's order: rejected", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10100), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 10000, firm=2), acc((3, 3), 100), fill((1, 1), (3, 3), 100, 10000, 1, 0, 100, 0, 100)),
        (CXL(2), cxl((2, 2), 100, 0, 0, USER, True)),
        (CXL(99), rej(R.UNKNOWN_ORDER)),
        (CXL(1), rej(R.TOO_LATE_FILLED)),
        (CXL(2), rej(R.TOO_LATE_CANCELLED)),
        (CXL(3, firm=2), rej(R.TOO_LATE_FILLED)),
        (CXL(1, firm=2), rej(R.UNKNOWN_ORDER)),      # another firm's ended order: nothing to tell
        (RPL(99, 100, 10000), rej(R.UNKNOWN_ORDER)),
        (RPL(1, 100, 10000), rej(R.TOO_LATE_FILLED)),
        (RPL(2, 100, 10100), rej(R.TOO_LATE_CANCELLED)),
        (S(4, 100, 10200), acc((4, 4), 100), add((4, 4), 100)),
        (BSTOP(5, 10, 10500), acc((5, 5), 10)),
        (CXL(4, firm=2), rej(R.UNKNOWN_ORDER)),
        (RPL(4, 50, 10200, firm=2), rej(R.UNKNOWN_ORDER)),
        (CXL(5, firm=2), rej(R.UNKNOWN_ORDER)),
        (RPL(5, 5, 0, firm=2), rej(R.UNKNOWN_ORDER)),
        (MASS(2), mass(0)),
    ], book={1: ([], [(10200, 100, 1)])}, stops={1: ([(5, 10500)], [])}, last={1: 10000}),
    # -- post-only (no rules: an order that would take is rejected) --------------------------------
    Scenario("post-only: rejected if it would take on entry or by a replace; rests and trades as maker", [
        (S(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 50, 10000, post=1), rej(R.POST_ONLY_WOULD_TAKE)),           # locks the ask
        (B(3, 50, 10100, post=1), rej(R.POST_ONLY_WOULD_TAKE)),           # crosses it
        (B(4, 50, 9900, post=1), acc((4, 2), 50), add((4, 2), 50)),
        (RPL(4, 50, 10000), rej(R.POST_ONLY_WOULD_TAKE)),                 # the replace would take
        (RPL(4, 60, 9800), rpl((4, 2), (4, 3), 50, 60, 0, REPOST)),
        (S(5, 10, 9800, post=1, firm=2), rej(R.POST_ONLY_WOULD_TAKE)),    # whoever's the bid
        (B(6, 10, 9900, post=1, firm=2), acc((6, 4), 10), add((6, 4), 10)),
        (S(7, 10, 9950, locate=2, post=1), acc((7, 5), 10), add((7, 5), 10)),   # other book: free
        (MB(8, 10, post=1), rej(R.INVALID_ORDER_TYPE)),
        (BSTOP(8, 10, 10500, post=1), rej(R.INVALID_ORDER_TYPE)),
        (B(8, 10, 9000, tif=IOC, post=1), rej(R.INVALID_TIME_IN_FORCE)),
        (B(8, 10, 9000, tif=FOK, post=1), rej(R.INVALID_TIME_IN_FORCE)),
        (B(8, 10, 9000, post=2), acc((8, 6), 10), add((8, 6), 10)),          # any non-zero: post-only
        (CXL(8), cxl((8, 6), 10, 0, 0, USER, True)),
        (S(9, 70, 9800, firm=3), acc((9, 7), 70),
         fill((6, 4), (9, 7), 10, 9900, 1, 0, 10, 60, 10), fill((4, 3), (9, 7), 60, 9800, 2, 0, 60, 0, 70)),
    ], book={1: ([], [(10000, 100, 1)]), 2: ([], [(9950, 10, 1)])}, last={1: 9800}),
    # -- self-trade prevention ---------------------------------------------------------------------
    Scenario("STP CN: the incoming order's remainder is cancelled; earlier fills stand", [
        (S(1, 100, 10000, firm=2), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 100, 10000, firm=1), acc((2, 2), 100), add((2, 2), 100)),
        (S(3, 100, 10100, firm=2), acc((3, 3), 100), add((3, 3), 100)),
        (B(4, 300, 10100, firm=1), acc((4, 4), 300),
         fill((1, 1), (4, 4), 100, 10000, 1, 0, 100, 200, 100), cxl((4, 4), 200, 0, 100, STPC, False)),
        (MB(5, 50, firm=1), acc((5, 5), 50), cxl((5, 5), 50, 0, 0, STPC, False)),
        (B(6, 50, 10000, firm=1, tif=IOC), acc((6, 6), 50), cxl((6, 6), 50, 0, 0, STPC, False)),
    ], book={1: ([], [(10000, 100, 1), (10100, 100, 1)])}, last={1: 10000}),
    Scenario("STP CO: own resting orders are cancelled and matching goes on", [
        (S(1, 100, 10000, firm=FIRM_CO), acc((1, 1), 100), add((1, 1), 100)),
        (S(2, 50, 10000, firm=2), acc((2, 2), 50), add((2, 2), 50)),
        (S(3, 100, 10100, firm=FIRM_CO), acc((3, 3), 100), add((3, 3), 100)),
        (S(4, 100, 10200, firm=2), acc((4, 4), 100), add((4, 4), 100)),
        (B(5, 200, 10200, firm=FIRM_CO), acc((5, 5), 200),
         cxl((1, 1), 100, 0, 0, STPC, True),
         fill((2, 2), (5, 5), 50, 10000, 1, 0, 50, 150, 50),
         cxl((3, 3), 100, 0, 0, STPC, True),
         fill((4, 4), (5, 5), 100, 10200, 2, 0, 100, 50, 150),
         add((5, 5), 50)),
    ], book={1: ([(10200, 50, 1)], [])}, last={1: 10200}),
    Scenario("STP DC: the incoming order is the smaller; the resting one keeps its place", [
        (S(1, 100, 10000, firm=FIRM_DC), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 40, 10000, firm=FIRM_DC), acc((2, 2), 40),
         cxl((1, 1), 40, 60, 0, STPC, True), cxl((2, 2), 40, 0, 0, STPC, False)),
        (S(3, 10, 10000, firm=2), acc((3, 3), 10), add((3, 3), 10)),
        (B(4, 70, 10000, firm=2), acc((4, 4), 70),
         fill((1, 1), (4, 4), 60, 10000, 1, 0, 60, 10, 60), cxl((4, 4), 10, 0, 60, STPC, False)),
    ], book={1: ([], [(10000, 10, 1)])}, last={1: 10000}),
    Scenario("STP DC: the resting order is the smaller; the incoming order goes on", [
        (S(1, 40, 10000, firm=FIRM_DC), acc((1, 1), 40), add((1, 1), 40)),
        (S(2, 100, 10000, firm=2), acc((2, 2), 100), add((2, 2), 100)),
        (B(3, 100, 10000, firm=FIRM_DC), acc((3, 3), 100),
         cxl((1, 1), 40, 0, 0, STPC, True), cxl((3, 3), 40, 60, 0, STPC, False),
         fill((2, 2), (3, 3), 60, 10000, 1, 40, 60, 0, 60)),
    ], book={1: ([], [(10000, 40, 1)])}, last={1: 10000}),
    Scenario("STP DC: equal quantities: both orders are done", [
        (S(1, 50, 10000, firm=FIRM_DC), acc((1, 1), 50), add((1, 1), 50)),
        (B(2, 50, 10000, firm=FIRM_DC), acc((2, 2), 50),
         cxl((1, 1), 50, 0, 0, STPC, True), cxl((2, 2), 50, 0, 0, STPC, False)),
    ]),
    Scenario("STP DC: the incoming order survives and rests", [
        (S(1, 40, 10000, firm=FIRM_DC), acc((1, 1), 40), add((1, 1), 40)),
        (B(2, 100, 10000, firm=FIRM_DC), acc((2, 2), 100),
         cxl((1, 1), 40, 0, 0, STPC, True), cxl((2, 2), 40, 60, 0, STPC, False), add((2, 2), 60)),
        (S(3, 60, 10000, firm=2), acc((3, 3), 60), fill((2, 2), (3, 3), 60, 10000, 1, 0, 60, 0, 60)),
    ], last={1: 10000}),
    Scenario("different firms match normally; a firm configured none trades with itself", [
        (S(1, 100, 10000, firm=FIRM_NONE), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 40, 10000, firm=FIRM_NONE), acc((2, 2), 40), fill((1, 1), (2, 2), 40, 10000, 1, 60, 40, 0, 40)),
        (B(3, 60, 10000, firm=FIRM_CO), acc((3, 3), 60), fill((1, 1), (3, 3), 60, 10000, 2, 0, 100, 0, 60)),
    ], last={1: 10000}),
    Scenario("the incoming order's own STP mode overrides its firm's; the resting order's is not read", [
        (S(1, 100, 10000, firm=FIRM_CO), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 10000, firm=FIRM_CO, stp=STP_CN), acc((2, 2), 100), cxl((2, 2), 100, 0, 0, STPC, False)),
        (B(3, 30, 10000, firm=FIRM_CO, stp=STP_NONE), acc((3, 3), 30),
         fill((1, 1), (3, 3), 30, 10000, 1, 70, 30, 0, 30)),
        (S(4, 100, 500, firm=1, stp=STP_NONE, locate=2), acc((4, 4), 100), add((4, 4), 100)),
        (B(5, 100, 500, firm=1, locate=2), acc((5, 5), 100), cxl((5, 5), 100, 0, 0, STPC, False)),
        (B(6, 40, 500, firm=1, stp=STP_CO, locate=2), acc((6, 6), 40),
         cxl((4, 4), 100, 0, 0, STPC, True), add((6, 6), 40)),
        (B(7, 100, 10000, firm=FIRM_NONE, stp=STP_CO), acc((7, 7), 100),
         fill((1, 1), (7, 7), 70, 10000, 2, 0, 100, 30, 70), add((7, 7), 30)),
    ], book={1: ([(10000, 30, 1)], []), 2: ([(500, 40, 1)], [])}, last={1: 10000, 2: 0}),
    # -- mass cancel ------------------------------------------------------------------------------
    Scenario("mass cancel: every live order of the firm, stops included, in reference order", [
        (S(1, 100, 10100), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 9900, firm=2), acc((2, 2), 100), add((2, 2), 100)),
        (BSTOP(3, 10, 10500), acc((3, 3), 10)),
        (B(4, 50, 9800), acc((4, 4), 50), add((4, 4), 50)),
        (S(5, 100, 10000, locate=2), acc((5, 5), 100), add((5, 5), 100)),
        (RPL(1, 200, 10100), rpl((1, 1), (1, 6), 100, 200, 0, REPOST)),
        (S(6, 30, 9900, firm=3), acc((6, 7), 30), fill((2, 2), (6, 7), 30, 9900, 1, 70, 30, 0, 30)),
        (MASS(2), cxl((2, 2), 70, 0, 30, MASSC, True), mass(1)),
        (MASS(1), cxl((3, 3), 10, 0, 0, MASSC, False), cxl((4, 4), 50, 0, 0, MASSC, True),
         cxl((5, 5), 100, 0, 0, MASSC, True), cxl((1, 6), 200, 0, 0, MASSC, True), mass(4)),
        (MASS(1), mass(0)),
    ], last={1: 9900}),
    Scenario("mass cancel order is reference order, also for a stop-limit that triggered and rests", [
        (BSTOP(1, 10, 10000, price=10000), acc((1, 1), 10)),
        (B(2, 10, 9800), acc((2, 2), 10), add((2, 2), 10)),
        (S(3, 50, 10000, firm=2), acc((3, 3), 50), add((3, 3), 50)),
        (B(4, 50, 10000, firm=3), acc((4, 4), 50), fill((3, 3), (4, 4), 50, 10000, 1, 0, 50, 0, 50),
         trig((1, 1), 10000), add((1, 1), 10)),
        (MASS(1), cxl((1, 1), 10, 0, 0, MASSC, True), cxl((2, 2), 10, 0, 0, MASSC, True), mass(2)),
    ], last={1: 10000}),
    Scenario("mass cancel filtered by instrument and by side", [
        (S(1, 100, 10100), acc((1, 1), 100), add((1, 1), 100)),
        (B(2, 100, 9900), acc((2, 2), 100), add((2, 2), 100)),
        (SSTOP(3, 10, 9000), acc((3, 3), 10)),
        (S(4, 100, 10000, locate=2), acc((4, 4), 100), add((4, 4), 100)),
        (B(5, 100, 9000, locate=2), acc((5, 5), 100), add((5, 5), 100)),
        (S(6, 100, 10200, firm=2), acc((6, 6), 100), add((6, 6), 100)),
        (MASS(1, locate=1, side=SELL), cxl((1, 1), 100, 0, 0, MASSC, True),
         cxl((3, 3), 10, 0, 0, MASSC, False), mass(2)),
        (MASS(1, locate=2), cxl((4, 4), 100, 0, 0, MASSC, True), cxl((5, 5), 100, 0, 0, MASSC, True), mass(2)),
        (MASS(1, side=BUY), cxl((2, 2), 100, 0, 0, MASSC, True), mass(1)),
        (MASS(1), mass(0)),
    ], book={1: ([], [(10200, 100, 1)])}),
    # -- validation -------------------------------------------------------------------------------
    Scenario("validation: every reject reason of the table", [
        (B(1, 100, 10000, locate=9), rej(R.UNKNOWN_INSTRUMENT)),
        (B(1, 100, 10000, locate=0), rej(R.UNKNOWN_INSTRUMENT)),
        (N(1, 2, 100, 10000), rej(R.INVALID_SIDE)),
        (N(1, -1, 100, 10000), rej(R.INVALID_SIDE)),
        (B(1, 0, 10000), rej(R.INVALID_QUANTITY)),
        (B(1, -100, 10000), rej(R.INVALID_QUANTITY)),
        (B(1, MAX_QTY + 1, 10000), rej(R.INVALID_QUANTITY)),
        (B(1, 100, 10000, type=0), rej(R.INVALID_ORDER_TYPE)),
        (B(1, 100, 10000, type=5), rej(R.INVALID_ORDER_TYPE)),
        (B(1, 100, 10000, tif=2), rej(R.INVALID_TIME_IN_FORCE)),
        (B(1, 100, 10000, tif=5), rej(R.INVALID_TIME_IN_FORCE)),
        (B(1, 100, 10000, tif=-1), rej(R.INVALID_TIME_IN_FORCE)),
        (B(1, 100, 10000, stp=5), rej(R.INVALID_STP_MODE)),
        (B(1, 100, 10000, stp=-1), rej(R.INVALID_STP_MODE)),
        (B(1, 100, 0), rej(R.INVALID_PRICE)),
        (B(1, 100, -10000), rej(R.INVALID_PRICE)),
        (B(1, 100, MAX_PRICE + 1, locate=2), rej(R.INVALID_PRICE)),
        (BSTOP(1, 100, 10000, price=-100), rej(R.INVALID_PRICE)),
        (N(1, BUY, 100, 0, type=STOP_LIMIT, stop=10000), rej(R.INVALID_PRICE)),
        (B(1, 100, 10050), rej(R.PRICE_OFF_TICK)),
        (S(1, 100, 10001), rej(R.PRICE_OFF_TICK)),
        (BSTOP(1, 100, 10000, price=10050), rej(R.PRICE_OFF_TICK)),
        (N(1, BUY, 100, 10000, type=MARKET), rej(R.INVALID_ORDER_TYPE)),
        (N(1, BUY, 100, 10000, type=STOP, stop=10000), rej(R.INVALID_ORDER_TYPE)),
        (BSTOP(1, 100, 0), rej(R.INVALID_STOP_PRICE)),
        (BSTOP(1, 100, -100), rej(R.INVALID_STOP_PRICE)),
        (SSTOP(1, 100, 10050), rej(R.INVALID_STOP_PRICE)),
        (SSTOP(1, 100, MAX_PRICE + 1, locate=2), rej(R.INVALID_STOP_PRICE)),
        (BSTOP(1, 100, 0, price=10000), rej(R.INVALID_STOP_PRICE)),
        (BSTOP(1, 100, 10050, price=10000), rej(R.INVALID_STOP_PRICE)),
        (B(1, 100, 10000, stop=10000), rej(R.INVALID_STOP_PRICE)),
        (N(1, BUY, 100, 0, type=MARKET, stop=10000), rej(R.INVALID_STOP_PRICE)),
        # nothing was used: the first accepted order takes reference 1
        (B(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
    ], book={1: ([(10000, 100, 1)], [])}),
    Scenario("validation: the first failing check of the table is the reason", [
        (B(1, 100, 10000), acc((1, 1), 100), add((1, 1), 100)),
        (N(1, 7, 0, 10050, type=9, tif=9, stp=9, stop=7, locate=9), rej(R.UNKNOWN_INSTRUMENT)),
        (N(1, 7, 0, 10050, type=9, tif=9, stp=9, stop=7), rej(R.INVALID_SIDE)),
        (N(1, BUY, 0, 10050, type=9, tif=9, stp=9, stop=7), rej(R.INVALID_QUANTITY)),
        (N(1, BUY, 100, 10050, type=9, tif=9, stp=9, stop=7), rej(R.INVALID_ORDER_TYPE)),
        (N(1, BUY, 100, 10050, tif=9, stp=9, stop=7), rej(R.INVALID_TIME_IN_FORCE)),
        (N(1, BUY, 100, 10050, stp=9, stop=7), rej(R.INVALID_STP_MODE)),
        (N(1, BUY, 100, -50, stop=7), rej(R.INVALID_PRICE)),
        (N(1, BUY, 100, 10050, stop=7), rej(R.PRICE_OFF_TICK)),
        (N(1, BUY, 100, 10000, type=MARKET, stop=7), rej(R.INVALID_ORDER_TYPE)),
        (N(1, BUY, 100, 10000, type=STOP_LIMIT, stop=7), rej(R.INVALID_STOP_PRICE)),
        (N(1, BUY, 100, 10000, stop=10000), rej(R.INVALID_STOP_PRICE)),
        (N(1, BUY, 100, 10000), rej(R.DUPLICATE_ORDER_ID)),
    ], book={1: ([(10000, 100, 1)], [])}),
    Scenario("validation: an order id may not be live twice, whatever the firm or instrument", [
        (B(1, MAX_QTY, MAX_PRICE, locate=2), acc((1, 1), MAX_QTY), add((1, 1), MAX_QTY)),
        (S(1, 100, 10000, firm=2), rej(R.DUPLICATE_ORDER_ID)),
        (SSTOP(2, 10, 9000), acc((2, 2), 10)),
        (B(2, 100, 9900), rej(R.DUPLICATE_ORDER_ID)),
        (MB(2, 100, firm=2), rej(R.DUPLICATE_ORDER_ID)),
        (CXL(2), cxl((2, 2), 10, 0, 0, USER, False)),
        (B(2, 100, 9900), acc((2, 3), 100), add((2, 3), 100)),
        (MB(4, 100), acc((4, 4), 100), cxl((4, 4), 100, 0, 0, MKT, False)),
        (MB(4, 100), acc((4, 5), 100), cxl((4, 5), 100, 0, 0, MKT, False)),
    ], book={1: ([(9900, 100, 1)], []), 2: ([(MAX_PRICE, MAX_QTY, 1)], [])}),
]


# ==================================================================================================
# Running the tables
# ==================================================================================================
def _make(engine_cls: type) -> Any:
    return engine_cls(INSTRUMENTS, FIRM_STP, STP_CN)


def _depth(engine: Any, locate: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    if isinstance(engine, ReferenceEngine):
        return engine.depth(locate, BUY), engine.depth(locate, SELL)
    book = engine.book(locate)
    return book.depth(BUY), book.depth(SELL)


def _stops(engine: Any, locate: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    if isinstance(engine, ReferenceEngine):
        sides = engine.pending_stops(locate, BUY), engine.pending_stops(locate, SELL)
    else:
        stops = engine.book(locate).stops
        sides = stops[BUY].in_order(), stops[SELL].in_order()
    return ([(o.order_id, o.stop_price) for o in sides[0]], [(o.order_id, o.stop_price) for o in sides[1]])


def _last(engine: Any, locate: int) -> int:
    if isinstance(engine, ReferenceEngine):
        return engine.last_price(locate)
    return engine.book(locate).last_price


@pytest.mark.parametrize("engine_cls", ENGINES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario(scenario: Scenario, engine_cls: type, kit: Any) -> None:
    engine = _make(engine_cls)
    for i, (spec, *expected) in enumerate(scenario.steps):
        before = engine.state_hash()
        events = kit.step(engine, spec)
        assert [brief(ev) for ev in events] == expected, f"step {i}: {spec}"
        engine.check_invariants()
        if [ev[0] for ev in events] == ["CommandRejected"]:
            assert engine.state_hash() == before, f"step {i}: a rejected command changed the state"
    for ins in INSTRUMENTS:
        assert _depth(engine, ins.locate) == scenario.book.get(ins.locate, ([], [])), ins.symbol
        assert _stops(engine, ins.locate) == scenario.stops.get(ins.locate, ([], [])), ins.symbol
        if ins.locate in scenario.last:
            assert _last(engine, ins.locate) == scenario.last[ins.locate], ins.symbol
    resting = sum(sum(count for _, _, count in side) for d in scenario.book.values() for side in d)
    assert engine.resting_count() == resting


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_engines_agree(scenario: Scenario, kit: Any) -> None:
    fast, ref = _make(Engine), _make(ReferenceEngine)
    for i, (spec, *_) in enumerate(scenario.steps):
        assert kit.step(fast, spec) == kit.step(ref, spec), f"step {i}: {spec}"
        assert fast.state_hash() == ref.state_hash(), f"step {i}: {spec}"


# ==================================================================================================
# Rules that tables do not show well
# ==================================================================================================
@pytest.mark.parametrize("engine_cls", ENGINES, ids=lambda c: c.__name__)
def test_replace_sets_the_client_order_id(engine_cls: type, kit: Any) -> None:
    engine = _make(engine_cls)
    out: list[Any] = []
    engine.apply(NewOrder(1, 1, SELL, 100, 10000, cl_ord_id="A"), out)
    engine.apply(ReplaceOrder(1, 90, 10000, cl_ord_id="B"), out)   # in place
    assert out[-1][2].cl_ord_id == "B"
    engine.apply(ReplaceOrder(1, 80, 10000), out)                  # none given: unchanged
    assert out[-1][2].cl_ord_id == "B"
    engine.apply(ReplaceOrder(1, 80, 10100), out)                  # new order object
    assert out[-1][2].cl_ord_id == "B" and out[-1][2] is not out[-1][1]
    engine.apply(ReplaceOrder(1, 80, 10200, cl_ord_id="C"), out)
    new = out[-1][2]
    assert (new.cl_ord_id, new.qty, new.leaves, new.filled, new.price, new.ref) == ("C", 80, 80, 0, 10200, 3)


@pytest.mark.parametrize("engine_cls", ENGINES, ids=lambda c: c.__name__)
def test_priority_losing_replace_copies_the_order(engine_cls: type) -> None:
    engine = _make(engine_cls)
    out: list[Any] = []
    o = NewOrder(1, 1, SELL, 100, 10000, LIMIT, GTC, 0, 5, session=3, account="ACC", cl_ord_id="X",
                 mpid="MPID", stp=STP_CO)
    engine.apply(o, out)
    engine.apply(ReplaceOrder(1, 120, 10100, firm=5), out)
    new = out[-1][2]
    assert new is not o and o.leaves == 0
    fields = ("order_id", "locate", "side", "ord_type", "tif", "stp", "firm", "session", "account", "mpid")
    assert [getattr(new, f) for f in fields] == [getattr(o, f) for f in fields]
    assert (new.qty, new.price, new.stop_price, new.leaves, new.filled, new.ref) == (120, 10100, 0, 120, 0, 2)


class _Bogus:
    KIND = 99
    NAME = "Bogus"
    FIELDS = ()


@pytest.mark.parametrize("engine_cls", ENGINES, ids=lambda c: c.__name__)
def test_unknown_command_is_rejected(engine_cls: type) -> None:
    engine = _make(engine_cls)
    before = engine.state_hash()
    out: list[Any] = []
    cmd = _Bogus()
    try:
        engine.apply(cmd, out)
    except TypeError:
        # The compiled engine checks the command's type at the call: refused before any change.
        assert compiled_build() and engine_cls is Engine
        assert out == [] and engine.state_hash() == before
        return
    assert out == [(2, cmd, R.ADMIN_UNKNOWN_COMMAND)]
    assert engine.state_hash() == before



@pytest.mark.parametrize("engine_cls", ENGINES, ids=lambda c: c.__name__)
def test_too_late_after_self_trade_decrement_to_nothing(engine_cls: type) -> None:
    """An order that self-trade prevention (DC) decremented to nothing was cancelled, not filled,
    although its filled quantity now equals its (decremented) order quantity."""
    engine = _make(engine_cls)
    out: list[Any] = []
    engine.apply(NewOrder(1, 1, SELL, 100, 10000, firm=FIRM_DC), out)
    engine.apply(NewOrder(2, 1, BUY, 40, 10000, firm=2), out)              # 1 fills 40
    engine.apply(NewOrder(3, 1, BUY, 60, 10000, firm=FIRM_DC), out)        # DC: 1 and 3 end
    assert [(e[0], e[3]) for e in out[-2:]] == [(Ev.CANCELLED, 0), (Ev.CANCELLED, 0)]
    for oid in (1, 3):
        out.clear()
        engine.apply(CancelOrder(oid, FIRM_DC), out)
        assert [(e[0], e[2]) for e in out] == [(Ev.REJECTED, R.TOO_LATE_CANCELLED)], oid


def test_too_late_is_remembered_for_the_latest_references_only(monkeypatch: Any, kit: Any) -> None:
    """Both engines recall ended orders whose last reference is among the latest RECALL_REFS; the
    fast one's ring is overwritten and its lazy index pruned without changing any answer."""
    import appliance.matching.engine as fast_mod
    import appliance.matching.reference as ref_mod
    monkeypatch.setattr(fast_mod, "RECALL_REFS", 8)
    monkeypatch.setattr(ref_mod, "RECALL_REFS", 8)
    fast, ref = _make(Engine), _make(ReferenceEngine)
    answers = []
    for engine in (fast, ref):
        got = []
        for n in range(1, 41):
            out: list[Any] = []
            engine.apply(NewOrder(n, 1, SELL, 10, 10000 + 100 * (n % 3)), out)
            if n % 2:
                engine.apply(CancelOrder(n, 0), out)
            for back in (1, 2, 7, 8, 9, 12):
                out.clear()
                engine.apply(CancelOrder(n - back, 0) if n % 3 else ReplaceOrder(n - back, 5, 10000), out)
                got.append(out[0][2] if out[0][0] == Ev.REJECTED else -out[0][0])
        answers.append(got)
        if isinstance(engine, Engine):
            assert len(engine._ring) == 8 and len(engine._index) <= 2 * 8 + 8 + 1
    assert answers[0] == answers[1]
    assert R.TOO_LATE_CANCELLED in answers[0] and R.UNKNOWN_ORDER in answers[0]
    for engine_cls in ENGINES:   # orders 1..9 get references 1..9: the latest 8 are 2..9
        engine = _make(engine_cls)
        out = []
        for n in range(1, 10):
            engine.apply(NewOrder(n, 1, SELL, 10, 10000), out)
            engine.apply(CancelOrder(n, 0), out)
        out.clear()
        engine.apply(CancelOrder(1, 0), out)
        engine.apply(CancelOrder(2, 0), out)
        assert [e[2] for e in out] == [R.UNKNOWN_ORDER, R.TOO_LATE_CANCELLED], engine_cls.__name__
