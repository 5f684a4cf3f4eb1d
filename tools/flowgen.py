"""`matchwire flow generate OUT`: the standard benchmark flows, made by the project itself.

    matchwire flow generate flows/f1   --events 1000000 --seed 42 --target 5000
    matchwire flow generate flows/f100 --events 1000000 --instruments 100 --target 1000 --seed 42

writes OUT.bin (16-byte records, tools/flows.py) and OUT.json (what a correct price-time engine
produces), and prints the JSON on one line. The flows are byte for byte those of the shared
benchmark generator (../shared/bench/flowgen.py) for the same arguments, so figures measured on
either compare; a test checks it where ../shared is present.

The flow, event by event, from one `random.Random(seed)` (each draw below happens in this order,
and only when named; the format depends on it):

    instrument   with K > 1: random() * H_K picks the first instrument whose harmonic prefix sum
                 H_1..H_K reaches it (Zipf-like: instrument 0 busiest); K = 1: no draw
    r = random() p_mkt = 0.10, p_cancel = min(0.60, 0.35 * live / target)
    r < p_mkt and the book has a side:       marketable IOC limit (kind 2)
        side     random() < 0.5 buy, only when both sides are there (else the side that can trade)
        through  choice((0, 0, 0, 1, 2)) ticks beyond the far touch (a sell: bid - through, >= 1)
        qty      100 * randint(1, 12)
    r < p_mkt + p_cancel and live orders:     cancel (kind 1) of live[randrange(live)]
    otherwise:                                new GTC limit (kind 0)
        side     random() < 0.5 buy
        depth    d = 0; while d < 40 and random() < 0.72: d += 1   (ticks behind the touch)
        price    buy: (best bid, else best ask - 1, else 9999) + 1 - d, kept below the best ask;
                 sell: mirror (start 10001), kept above the best bid; at least 1
        qty      choice((100, 100, 100, 200, 200, 300, 500, 1000))

`live` is each instrument's list of resting order ids: a resting order is appended; an order that
leaves the book (cancelled, or filled as a maker, in fill order) is swapped with the last entry
and the list shortened. Order ids count from 1 over all instruments. A cancel record carries the
order's side, price 0 and qty 0.
"""
from __future__ import annotations

import argparse
import heapq
import json   # not msgspec: FLOW.json and the printed line are the shared generator's, byte for byte
import random
from collections import deque
from typing import Any

from tools.flows import FLOW_RECORD

MID_PRICE = 10_000
BUY, SELL = 0, 1
NEW_GTC, CANCEL, MARKETABLE_IOC = 0, 1, 2
P_MARKETABLE = 0.10
THROUGH_TICKS = (0, 0, 0, 1, 2)
NEW_QTYS = (100, 100, 100, 200, 200, 300, 500, 1000)
MAX_DEPTH_TICKS = 40
P_DEEPER = 0.72


class _Level:
    """One price level: orders in time priority as [order_id, qty] (qty 0: cancelled, skipped)."""

    __slots__ = ("orders", "live")

    def __init__(self) -> None:
        self.orders: deque[list[int]] = deque()
        self.live = 0


class FlowBook:
    """A price-time book for one instrument, kept apart from the engine it checks: levels in a dict,
    the best price of each side from a heap with lazy deletion, cancels marked in place."""

    def __init__(self) -> None:
        self.levels: tuple[dict[int, _Level], dict[int, _Level]] = ({}, {})
        self.heaps: tuple[list[int], list[int]] = ([], [])   # bids as -price, asks as price
        self.orders: dict[int, tuple[int, int, list[int]]] = {}   # resting id -> (side, price, entry)
        self.fills = 0
        self.filled_qty = 0

    def best(self, side: int) -> int | None:
        heap, levels = self.heaps[side], self.levels[side]
        while heap:
            price = -heap[0] if side == BUY else heap[0]
            if price in levels:
                return price
            heapq.heappop(heap)
        return None

    def _rest(self, oid: int, side: int, price: int, qty: int) -> None:
        level = self.levels[side].get(price)
        if level is None:
            level = self.levels[side][price] = _Level()
            heapq.heappush(self.heaps[side], -price if side == BUY else price)
        entry = [oid, qty]
        level.orders.append(entry)
        level.live += 1
        self.orders[oid] = (side, price, entry)

    def limit(self, oid: int, side: int, price: int, qty: int, ioc: bool, filled: list[int]) -> int:
        """Match a limit order; rest what is left unless IOC. Makers filled completely go to
        ``filled`` in fill order. Returns the quantity left."""
        other = SELL if side == BUY else BUY
        levels = self.levels[other]
        while qty:
            best = self.best(other)
            if best is None or (best > price if side == BUY else best < price):
                break
            level = levels[best]
            queue = level.orders
            while qty and level.live:
                maker = queue[0]
                if not maker[1]:
                    queue.popleft()
                    continue
                take = maker[1] if maker[1] < qty else qty
                maker[1] -= take
                qty -= take
                self.fills += 1
                self.filled_qty += take
                if not maker[1]:
                    queue.popleft()
                    level.live -= 1
                    del self.orders[maker[0]]
                    filled.append(maker[0])
            if not level.live:
                del levels[best]
        if qty and not ioc:
            self._rest(oid, side, price, qty)
        return qty

    def cancel(self, oid: int) -> int:
        """Take a resting order off the book; returns its side."""
        side, price, entry = self.orders.pop(oid)
        entry[1] = 0
        level = self.levels[side][price]
        level.live -= 1
        if not level.live:
            del self.levels[side][price]
        return side


class _Live:
    """An instrument's resting order ids, for a uniform random pick: swap-with-last removal."""

    __slots__ = ("ids", "pos")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.pos: dict[int, int] = {}

    def add(self, oid: int) -> None:
        self.pos[oid] = len(self.ids)
        self.ids.append(oid)

    def remove(self, oid: int) -> None:
        i = self.pos.pop(oid)
        last = self.ids.pop()
        if last != oid:
            self.ids[i] = last
            self.pos[last] = i


def generate(events: int, instruments: int = 1, seed: int = 42, target: int = 5_000) -> tuple[bytes, dict[str, Any]]:
    """FLOW.bin's bytes and FLOW.json's content of one flow (see the module docstring)."""
    if events < 1 or not 1 <= instruments <= 0xFFFF or target < 1:
        raise ValueError(f"flow: events {events} and target {target} must be positive, "
                         f"instruments {instruments} in 1..65535")
    rnd = random.Random(seed)
    harmonic: list[float] = []
    total = 0.0
    for i in range(instruments):
        total += 1.0 / (i + 1)
        harmonic.append(total)
    books = [FlowBook() for _ in range(instruments)]
    live = [_Live() for _ in range(instruments)]
    counts = [0, 0, 0]
    next_id = 1
    out = bytearray()
    pack = FLOW_RECORD.pack
    for _ in range(events):
        ins = 0
        if instruments > 1:
            ins = min(instruments - 1, _first_at_least(harmonic, rnd.random() * total))
        book, lv = books[ins], live[ins]
        n_live = len(lv.ids)
        p_cancel = min(0.60, 0.35 * n_live / target)
        r = rnd.random()
        bid, ask = book.best(BUY), book.best(SELL)
        filled: list[int] = []
        if r < P_MARKETABLE and (bid is not None or ask is not None):
            if ask is None:
                side = SELL
            elif bid is None:
                side = BUY
            else:
                side = BUY if rnd.random() < 0.5 else SELL
            through = rnd.choice(THROUGH_TICKS)
            price = ask + through if side == BUY else max(1, bid - through)  # type: ignore[operator]
            qty = 100 * rnd.randint(1, 12)
            oid, next_id = next_id, next_id + 1
            book.limit(oid, side, price, qty, True, filled)
            for m in filled:
                lv.remove(m)
            out += pack(MARKETABLE_IOC, side, ins, oid, price, qty)
            counts[MARKETABLE_IOC] += 1
        elif r < P_MARKETABLE + p_cancel and n_live > 0:
            oid = lv.ids[rnd.randrange(n_live)]
            side = book.cancel(oid)
            lv.remove(oid)
            out += pack(CANCEL, side, ins, oid, 0, 0)
            counts[CANCEL] += 1
        else:
            side = BUY if rnd.random() < 0.5 else SELL
            depth = 0
            while depth < MAX_DEPTH_TICKS and rnd.random() < P_DEEPER:
                depth += 1
            if side == BUY:
                touch = bid if bid is not None else (ask - 1 if ask is not None else MID_PRICE - 1)
                price = touch + 1 - depth
                if ask is not None and price >= ask:
                    price = ask - 1
            else:
                touch = ask if ask is not None else (bid + 1 if bid is not None else MID_PRICE + 1)
                price = touch - 1 + depth
                if bid is not None and price <= bid:
                    price = bid + 1
            price = max(1, price)
            qty = rnd.choice(NEW_QTYS)
            oid, next_id = next_id, next_id + 1
            left = book.limit(oid, side, price, qty, False, filled)
            for m in filled:
                lv.remove(m)
            if left:
                lv.add(oid)
            out += pack(NEW_GTC, side, ins, oid, price, qty)
            counts[NEW_GTC] += 1
    n = sum(counts)
    first = books[0]
    meta = {
        "events": n,
        "instruments": instruments,
        "seed": seed,
        "target_resting_per_instrument": target,
        "mix": {"new_limit": counts[NEW_GTC] / n, "cancel": counts[CANCEL] / n,
                "marketable_ioc": counts[MARKETABLE_IOC] / n},
        "fills": sum(b.fills for b in books),
        "filled_qty": sum(b.filled_qty for b in books),
        "resting_end": sum(len(b.orders) for b in books),
        "bbo_end_instr0": [first.best(BUY), first.best(SELL)],
        "levels_end_instr0": [len(first.levels[BUY]), len(first.levels[SELL])],
    }
    return bytes(out), meta


def _first_at_least(sorted_values: list[float], x: float) -> int:
    """Index of the first value >= x (len when none): a binary search."""
    lo, hi = 0, len(sorted_values)
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def write_flow(prefix: str, events: int, instruments: int = 1, seed: int = 42, target: int = 5_000) -> dict[str, Any]:
    """Write PREFIX.bin and PREFIX.json; return the JSON's content."""
    data, meta = generate(events, instruments, seed, target)
    with open(prefix + ".bin", "wb") as f:
        f.write(data)
    with open(prefix + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def cmd_generate(args: argparse.Namespace) -> int:
    meta = write_flow(args.out, args.events, args.instruments, args.seed, args.target)
    print(json.dumps(meta))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("flow", help="the standard benchmark flows")
    fsub = p.add_subparsers(dest="flow", metavar="ACTION")
    fsub.required = True
    g = fsub.add_parser("generate", help="write OUT.bin and OUT.json: a seeded flow and its expected results")
    g.add_argument("out", help="output prefix: writes OUT.bin and OUT.json")
    g.add_argument("--events", type=int, default=1_000_000)
    g.add_argument("--instruments", type=int, default=1)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--target", type=int, default=5_000, help="target resting orders per instrument")
    g.set_defaults(func=cmd_generate)
