"""One instrument's order book: price levels in dicts, FIFO deques with lazy deletion, sorted keys.

Owned by the matching thread (single writer). No I/O, no clock.

    side BUY:  levels[BUY]  {price: Level}   keys[BUY]  ascending  price   -> best bid = keys[BUY][-1]
    side SELL: levels[SELL] {price: Level}   keys[SELL] ascending -price   -> best ask = -keys[SELL][-1]

Keys are "priority keys": larger is better on both sides, so the best level of either side is the
last item of its list (pop() is O(1) when the best level empties) and "the opposite best crosses
a limit L" is one comparison, ``keys[-1] >= key(L)``, whatever the side.

A Level's deque holds orders in time priority. A cancelled order is not searched for: its `leaves`
is set to 0 and it is skipped (and dropped) when it reaches the head of the queue; a level whose
dead entries outnumber its live ones is compacted. `total` and `count` count live orders only, so
a level is empty exactly when total == 0.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from operator import attrgetter
from typing import Any, Final

from appliance.catalogue import NewOrder
from appliance.model import BUY, NO_ASK, NO_BID, SELL, TS_CONTINUOUS, Instrument


_LEAVES = attrgetter("leaves")  # truthy for a live order


class Level:
    """A price level: orders in time priority (lazy deletion), live total quantity and count."""

    __slots__ = ("price", "orders", "total", "count")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: deque[NewOrder] = deque()
        self.total = 0
        self.count = 0

    def live(self) -> list[NewOrder]:
        """The live orders in priority order (not for the hot path)."""
        return [o for o in self.orders if o.leaves]

    def compact(self) -> None:
        """Drop the dead entries (cancelled orders) from the queue."""
        self.orders = deque(filter(_LEAVES, self.orders))


class StopSide:
    """Pending stop orders of one side: stop price -> orders in arrival order, plus sorted prices."""

    __slots__ = ("by_price", "prices")

    def __init__(self) -> None:
        self.by_price: dict[int, list[NewOrder]] = {}
        self.prices: list[int] = []

    def add(self, o: NewOrder) -> None:
        lst = self.by_price.get(o.stop_price)
        if lst is None:
            self.by_price[o.stop_price] = [o]
            insort(self.prices, o.stop_price)
        else:
            lst.append(o)

    def remove(self, o: NewOrder) -> None:
        lst = self.by_price[o.stop_price]
        lst.remove(o)
        if not lst:
            del self.by_price[o.stop_price]
            self.prices.pop(bisect_left(self.prices, o.stop_price))

    def take_at_or_below(self, price: int) -> list[NewOrder]:
        """Remove and return the orders whose stop price is <= price (buy stops)."""
        out: list[NewOrder] = []
        prices = self.prices
        while prices and prices[0] <= price:
            out.extend(self.by_price.pop(prices.pop(0)))
        return out

    def take_at_or_above(self, price: int) -> list[NewOrder]:
        """Remove and return the orders whose stop price is >= price (sell stops)."""
        out: list[NewOrder] = []
        prices = self.prices
        while prices and prices[-1] >= price:
            out.extend(self.by_price.pop(prices.pop()))
        return out

    def in_order(self) -> list[NewOrder]:
        """Pending stops by stop price ascending, then arrival order (the state-hash order)."""
        return [o for p in self.prices for o in self.by_price[p]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_price.values())


# The fast path's price window of a book that is not trading continuously: no price fits in it.
CLOSED_WINDOW: Final = (1 << 62, 0)
# CPython compares ints of one internal digit (below 2^30) on its fast path: the largest quantity and
# price the engine's fast path takes (the window's upper end is SMALL_INT + 1).
SMALL_INT: Final = (1 << 30) - 1
# A priority key below every price: the limit of a market order where no collar applies.
ANY_KEY: Final = -(1 << 62)


def by_ref(o: NewOrder) -> int:
    """Acceptance order (the order reference): the order in which several orders' events go out."""
    return o.ref


class Book:
    """The book of one instrument, plus its pending stops, last trade price and trading state.

    Trading state (docs/matching.md, "Trading states"; the engine keeps the derived fields current
    with TradingPhases._refresh, appliance/matching/phases.py): ``state`` and ``cause`` (model.TS_*, model.CAUSE_*); ``ref_price`` (the
    reference of band and collar), ``cb_ref`` (the circuit breaker's static reference); the band
    ``band_lo``..``band_hi`` (both 0: none) and the breaker's range ``cb_lo``..``cb_hi`` (0, 0: none);
    ``limit_on``/``limit_since`` (the limit state and when it began); ``deadline_ns`` (the end of a
    pause, a timed halt or a reopening call phase), ``next_noii_ns`` (the next imbalance message) and
    ``day_done`` (closed for the day); ``mkt``: market orders collected in a call phase, per side, in
    arrival order (they are not on the book: no price level).

    Derived for the hot path: ``flo``/``fhi``, the open price window of limit orders the engine's fast
    path may take (the band's interior in continuous trading, nothing in any other state); ``watch``,
    true when a command in continuous trading must be followed by the safeguards' checks; ``mkt_key``,
    the priority key limit of a market order per taker side (the collar), and ``mkt_reason``, the
    cancel reason of its remainder.
    """

    __slots__ = ("instrument", "locate", "tick", "levels", "keys", "stops", "nstops", "last_price",
                 "flo", "fhi", "watch", "mkt_key", "mkt_reason", "state", "cause", "ref_price", "cb_ref",
                 "band_lo", "band_hi", "cb_lo", "cb_hi", "limit_on", "limit_since", "deadline_ns",
                 "next_noii_ns", "day_done", "mkt", "rules")

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.locate = instrument.locate
        self.tick = instrument.tick
        self.levels: tuple[dict[int, Level], dict[int, Level]] = ({}, {})
        self.keys: tuple[list[int], list[int]] = ([], [])
        self.stops = (StopSide(), StopSide())
        self.nstops = 0
        self.last_price = 0  # 0: no trade yet
        # Trading state: continuous, no safeguard (what an engine without trading rules keeps).
        self.flo = 0
        self.fhi = (1 << 30)  # TradingPhases._refresh: 1..2^30-1 while continuous without a band
        self.watch = 0
        self.mkt_key = (ANY_KEY, ANY_KEY)
        self.mkt_reason = 0
        self.state = TS_CONTINUOUS
        self.cause = 0
        self.ref_price = 0
        self.cb_ref = 0
        self.band_lo = 0
        self.band_hi = 0
        self.cb_lo = 0
        self.cb_hi = 0
        self.limit_on = 0
        self.limit_since = 0
        self.deadline_ns = 0
        self.next_noii_ns = 0
        self.day_done = 0
        self.mkt: tuple[list[NewOrder], list[NewOrder]] = ([], [])
        self.rules: Any = None

    # -- reading ------------------------------------------------------------------------------
    def best_bid(self) -> int:
        keys = self.keys[BUY]
        return keys[-1] if keys else NO_BID

    def best_ask(self) -> int:
        keys = self.keys[SELL]
        return -keys[-1] if keys else NO_ASK

    def depth(self, side: int, n: int | None = None) -> list[tuple[int, int, int]]:
        """[(price, total, count), ...] best first; n levels at most (None: all)."""
        keys = self.keys[side]
        sign = 1 if side == BUY else -1
        sel = keys[::-1] if n is None else keys[: -n - 1 : -1]
        lv = self.levels[side]
        return [(k * sign, lv[k * sign].total, lv[k * sign].count) for k in sel]

    def orders_in_priority(self, side: int) -> list[NewOrder]:
        """Every live resting order of a side, best price first, then time priority."""
        out: list[NewOrder] = []
        sign = 1 if side == BUY else -1
        for k in reversed(self.keys[side]):
            out.extend(self.levels[side][k * sign].live())
        return out

    # -- writing (engine only) ----------------------------------------------------------------
    def enqueue(self, o: NewOrder, qty: int) -> None:
        """Put o at the back of its price level (made if new), adding `qty` to the level."""
        price = o.price
        side = o.side
        levels = self.levels[side]
        lvl = levels.get(price)
        if lvl is None:
            lvl = Level(price)
            levels[price] = lvl
            key = -price if side else price
            keys = self.keys[side]
            if not keys or key > keys[-1]:
                keys.append(key)
            else:
                insort(keys, key)
        else:
            o.price = lvl.price   # share the level's int object: ~30 bytes less per resting order
        lvl.orders.append(o)
        lvl.total += qty
        lvl.count += 1

    def remove_level(self, side: int, price: int) -> None:
        del self.levels[side][price]
        keys = self.keys[side]
        key = price if side == BUY else -price
        if keys[-1] == key:
            keys.pop()
        else:
            keys.pop(bisect_left(keys, key))
