"""Books that subscribers build from our feeds: L3 order by order, L2 price levels, L1 top of book.

Each book is a sink of a ``feeds.subscriber.ChannelReceiver``: it gets runs of MoldUDP64 blocks in
sequence order (``apply_blocks``), and hears of gaps (``on_gap``), of gaps filled (``on_filled``)
and of session changes (``reset``). Owned by the thread that runs the receiver. All prices are
Price(4) integers, sides 0 (buy) and 1 (sell) as in appliance.model.

    L3Book   orders: ref -> [locate, side, price, shares]; per instrument and side
             price -> [total shares, {ref: order} in time priority], kept sorted by price
             (SortedDict): a depth query reads the best levels instead of sorting them all.
             A gap makes every instrument stale (ITCH after a gap refers to orders we never saw).
    L2Book   per instrument and side price -> (shares, orders), the top N levels as published.
    L1Book   per instrument best bid, best offer (price, shares, orders) and the last trade.
             L2 and L1 carry a per-instrument sequence number: after a gap an instrument whose
             next message continues its own sequence is fresh again; one that skipped is stale.

``summary()`` gives per instrument plain data that ``engine_*_summary`` (duck-typed over the
matching engine's books, nothing imported) produces from the engine, and ``state_hash()`` hashes
it, so tests compare a subscriber with the engine in one assertion.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any, Callable, Final, Iterable

from sortedcontainers import SortedDict

from feeds import itch
from feeds.channels import BEST_BID_OFFER, LAST_TRADE, PRICE_LEVEL_UPDATE
from feeds.layout import Buffer, Msg
from feeds.moldudp64 import BLOCK_LENGTH_SIZE

__all__ = ["L3Book", "L2Book", "L1Book", "summary_hash", "engine_l3_summary", "engine_l2_summary",
           "engine_l1_summary"]


def _picker(layout: Msg[Any], names: tuple[str, ...], as_int: tuple[str, ...] = ()) -> Callable[..., tuple[Any, ...]]:
    """``unpack_from(buf, offset)`` of just the named fields of a layout (the others are pad bytes).
    Char fields named in ``as_int`` come out as their byte value."""
    fmt = [">x"]
    for f in layout.fields:
        if f.name in names:
            code = "B" if f.name in as_int else ("6s" if f.code == "u48" else f.code)
            fmt.append(code)
        else:
            fmt.append(f"{f.size}x")
    return struct.Struct("".join(fmt)).unpack_from


_A = _picker(itch.ADD_ORDER, ("stock_locate", "order_ref", "side", "shares", "price"), ("side",))
_F = _picker(itch.ADD_ORDER_MPID, ("stock_locate", "order_ref", "side", "shares", "price"), ("side",))
if not _F.__self__.format.startswith(_A.__self__.format):  # type: ignore[attr-defined]
    raise TypeError("ITCH F must be A plus an attribution: the L3 book reads both with one unpack")
_E = _picker(itch.ORDER_EXECUTED, ("order_ref", "executed_shares", "match_number"))
_C = _picker(itch.ORDER_EXECUTED_WITH_PRICE, ("order_ref", "executed_shares", "match_number", "printable",
                                              "execution_price"))
_X = _picker(itch.ORDER_CANCEL, ("order_ref", "cancelled_shares"))
_D = _picker(itch.ORDER_DELETE, ("order_ref",))
_U = _picker(itch.ORDER_REPLACE, ("original_order_ref", "new_order_ref", "shares", "price"))
_P = _picker(itch.TRADE, ("stock_locate", "shares", "price", "match_number"))
_Q = _picker(itch.CROSS_TRADE, ("stock_locate", "shares", "cross_price", "match_number"))
_R = _picker(itch.STOCK_DIRECTORY, ("stock_locate", "stock", "round_lot_size"))
_H = _picker(itch.STOCK_TRADING_ACTION, ("stock_locate", "trading_state"))
_DL = _picker(PRICE_LEVEL_UPDATE, ("stock_locate", "instrument_seq", "side", "price", "shares", "orders"),
              ("side",))
_BBO = _picker(BEST_BID_OFFER, ("stock_locate", "instrument_seq", "bid_price", "bid_shares", "bid_orders",
                                "ask_price", "ask_shares", "ask_orders"))
_LT = _picker(LAST_TRADE, ("stock_locate", "instrument_seq", "price", "shares", "match_number", "volume"))

_SELL: Final = 83  # b"S"


class _Directory:
    """What every channel says about instruments: symbols, round lots, trading states."""

    __slots__ = ("symbols", "round_lots", "trading", "system_events")

    def __init__(self) -> None:
        self.symbols: dict[int, str] = {}
        self.round_lots: dict[int, int] = {}
        self.trading: dict[int, bytes] = {}
        self.system_events: list[bytes] = []

    def apply(self, t: int, buf: Buffer, p: int) -> None:
        if t == 82:      # R
            locate, stock, lot = _R(buf, p)
            self.symbols[locate] = stock.decode("ascii").rstrip()
            self.round_lots[locate] = lot
        elif t == 72:    # H
            locate, state = _H(buf, p)
            self.trading[locate] = state
        elif t == 83:    # S
            self.system_events.append(bytes(buf[p + 11:p + 12]))

    def clear(self) -> None:
        self.symbols.clear()
        self.round_lots.clear()
        self.trading.clear()
        self.system_events.clear()


def summary_hash(summary: Any) -> str:
    """A short hash of a summary (plain tuples, lists, ints)."""
    return hashlib.blake2b(repr(summary).encode("ascii"), digest_size=16).hexdigest()


# ================================================================================================
# L3
# ================================================================================================

class L3Book:
    """Owned by the thread that runs its receiver: the order-by-order books of every instrument of
    an L3 (ITCH 5.0) channel.

    orders: ref -> [shares, level], in arrival order; a level is [total shares, orders, price, the
    side's {price: level}, locate, side]; sides: locate -> ({bid price: level}, {ask price: level}),
    each a SortedDict by price (ascending), so depth reads the best levels without a sort.
    An order holds its level, so an execution, cancel or delete costs one dict lookup. Time priority
    needs no queue per level: ITCH never moves an order back in its queue without a new reference
    (U retires the old one), so the arrival order of ``orders`` is the priority within each level.
    """

    def __init__(self, on_update: Callable[[int], None] | None = None) -> None:
        self.orders: dict[int, list[Any]] = {}
        self.sides: dict[int, tuple[SortedDict, SortedDict]] = {}   # locate -> ({bid price: level}, asks)
        self.directory = _Directory()
        self.last_trade: dict[int, tuple[int, int, int]] = {}   # locate -> (price, shares, match)
        self.stale = False
        self.unknown_refs = 0      # messages about orders not in the book (only after a gap)
        self.messages = 0
        self.on_update = on_update

    # -- sink -----------------------------------------------------------------------------------
    def apply_blocks(self, buf: Buffer, pos: int, count: int, first_seq: int = 0) -> int:
        """Apply ``count`` ``u16 length + message`` blocks of ``buf`` from ``pos``; return the
        offset after them."""
        orders = self.orders
        sides = self.sides
        last_trade = self.last_trade
        cb = self.on_update
        unpack_a, unpack_d, unpack_e = _A, _D, _E
        self.messages += count
        lb = BLOCK_LENGTH_SIZE
        for _ in range(count):
            p = pos + lb
            pos = p + ((buf[pos] << 8) | buf[pos + 1])
            t = buf[p]
            if t == 65 or t == 70:      # A, F (F is A plus an attribution: the same unpack)
                locate, ref, side, shares, price = unpack_a(buf, p)
                pair = sides.get(locate)
                if pair is None:
                    pair = sides[locate] = (SortedDict(), SortedDict())
                s = side & 1            # b"B" (66) -> 0, b"S" (83) -> 1
                book = pair[s]
                lvl = book.get(price)
                if lvl is None:
                    book[price] = lvl = [shares, 1, price, book, locate, s]
                else:
                    lvl[0] += shares
                    lvl[1] += 1
                orders[ref] = [shares, lvl]
            elif t == 68:               # D
                (ref,) = unpack_d(buf, p)
                rec = orders.pop(ref, None)
                if rec is None:
                    self.unknown_refs += 1
                    continue
                lvl = rec[1]
                lvl[0] -= rec[0]
                lvl[1] -= 1
                if not lvl[1]:
                    del lvl[3][lvl[2]]
                locate = lvl[4]
            elif t == 69 or t == 88 or t == 67:    # E, X, C: shares leave a resting order
                if t == 69:
                    ref, qty, match = unpack_e(buf, p)
                elif t == 88:
                    ref, qty = _X(buf, p)
                else:
                    ref, qty, match, _printable, xprice = _C(buf, p)
                rec = orders.get(ref)
                if rec is None:
                    self.unknown_refs += 1
                    continue
                lvl = rec[1]
                locate = lvl[4]
                if t == 69:
                    last_trade[locate] = (lvl[2], qty, match)
                elif t == 67:
                    last_trade[locate] = (xprice, qty, match)
                left = rec[0] - qty
                rec[0] = left
                lvl[0] -= qty
                if left <= 0:
                    del orders[ref]
                    lvl[1] -= 1
                    if not lvl[1]:
                        del lvl[3][lvl[2]]
            elif t == 85:               # U
                old_ref, new_ref, shares, new_price = _U(buf, p)
                rec = orders.pop(old_ref, None)
                if rec is None:
                    self.unknown_refs += 1
                    continue
                lvl = rec[1]
                lvl[0] -= rec[0]
                lvl[1] -= 1
                book = lvl[3]
                if not lvl[1]:
                    del book[lvl[2]]
                locate = lvl[4]
                s = lvl[5]
                lvl = book.get(new_price)
                if lvl is None:
                    book[new_price] = lvl = [shares, 1, new_price, book, locate, s]
                else:
                    lvl[0] += shares
                    lvl[1] += 1
                orders[new_ref] = [shares, lvl]
            elif t == 80:               # P: a trade against a non-displayed order: no book change
                locate, qty, price, match = _P(buf, p)
                last_trade[locate] = (price, qty, match)
            elif t == 81:               # Q: cross
                locate, qty, price, match = _Q(buf, p)
                if qty:
                    last_trade[locate] = (price, qty, match)
            else:
                self.directory.apply(t, buf, p)
                continue
            if cb is not None:
                cb(locate)
        return pos

    def apply(self, message: bytes) -> None:
        """Apply one bare message (no length prefix)."""
        self.apply_blocks(len(message).to_bytes(2, "big") + message, 0, 1)

    def on_gap(self, first_seq: int, count: int) -> None:
        self.stale = True

    def on_filled(self) -> None:
        self.stale = False

    def reset(self) -> None:
        self.orders.clear()
        self.sides.clear()
        self.directory.clear()
        self.last_trade.clear()
        self.stale = False
        self.unknown_refs = 0

    # -- reading --------------------------------------------------------------------------------
    def locates(self) -> list[int]:
        return sorted(loc for loc, (b, a) in self.sides.items() if b or a)

    def depth(self, locate: int, side: int, n: int | None = None) -> list[tuple[int, int, int]]:
        """[(price, total shares, orders), ...] best first, the best ``n`` (all when None)."""
        pair = self.sides.get(locate)
        if pair is None:
            return []
        book = pair[side]
        return [(p, (lv := book[p])[0], lv[1]) for p in _best(book, side, n)]

    def best_bid(self, locate: int) -> tuple[int, int, int] | None:
        d = self.depth(locate, 0, 1)
        return d[0] if d else None

    def best_ask(self, locate: int) -> tuple[int, int, int] | None:
        d = self.depth(locate, 1, 1)
        return d[0] if d else None

    def orders_in_priority(self, locate: int, side: int) -> list[tuple[int, int, int]]:
        """[(ref, price, shares), ...] best price first, then time priority."""
        mine = [(ref, rec[1][2], rec[0]) for ref, rec in self.orders.items()
                if rec[1][4] == locate and rec[1][5] == side]
        mine.sort(key=(lambda o: -o[1]) if side == 0 else (lambda o: o[1]))   # stable: arrival order kept
        return mine

    def summary(self) -> list[tuple[Any, ...]]:
        """Per instrument with resting orders: (locate, bid levels, ask levels, bids, asks)."""
        by_side: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for ref, (shares, lvl) in self.orders.items():
            by_side.setdefault((lvl[4], lvl[5]), []).append((ref, lvl[2], shares))
        for (_, side), lst in by_side.items():
            lst.sort(key=(lambda o: -o[1]) if side == 0 else (lambda o: o[1]))
        return [(loc, self.depth(loc, 0), self.depth(loc, 1), by_side.get((loc, 0), []),
                 by_side.get((loc, 1), [])) for loc in self.locates()]

    def state_hash(self) -> str:
        return summary_hash(self.summary())


def engine_l3_summary(engine: Any) -> list[tuple[Any, ...]]:
    """``L3Book.summary()`` of a matching engine (its ``book_list`` of books)."""
    out = []
    for book in engine.book_list:
        bids, asks = book.orders_in_priority(0), book.orders_in_priority(1)
        if not bids and not asks:
            continue
        out.append((book.locate, [tuple(x) for x in book.depth(0)], [tuple(x) for x in book.depth(1)],
                    [(o.ref, o.price, o.leaves) for o in bids], [(o.ref, o.price, o.leaves) for o in asks]))
    return out


def _best(book: SortedDict, side: int, n: int | None) -> list[int]:
    """The prices of the best ``n`` levels (all when None) of a side kept in a SortedDict by price:
    the highest bids, the lowest asks, best first. Slices by position: no sort."""
    keys = book.keys()
    if side == 1:
        return keys[:n] if n is not None else list(keys)
    prices = keys[-n:] if n else (list(keys) if n is None else [])
    prices.reverse()
    return prices


# ================================================================================================
# Per-instrument sequence tracking (L2, L1)
# ================================================================================================

class _InstrumentSeqs:
    """Per-instrument sequence numbers, with the stale and suspect sets they decide."""

    __slots__ = ("last", "stale", "suspect")

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self.stale: set[int] = set()     # skipped part of its own sequence: wrong until a refresh
        self.suspect: set[int] = set()   # not heard of since a channel gap: fresh or not, unknown yet

    def check(self, locate: int, seq: int) -> None:
        prev = self.last.get(locate, 0)
        self.last[locate] = seq
        if seq != prev + 1:
            self.stale.add(locate)
        if self.suspect:
            self.suspect.discard(locate)

    def clear(self) -> None:
        self.last.clear()
        self.stale.clear()
        self.suspect.clear()


class _InstrumentBook:
    """What the L2 and L1 books share: per-instrument sequence numbers (stale and suspect
    instruments), the directory, the message count and the update callback. Owned by the thread
    that runs its receiver."""

    def __init__(self, on_update: Callable[[int], None] | None) -> None:
        self.seqs = _InstrumentSeqs()
        self.directory = _Directory()
        self.messages = 0
        self.on_update = on_update

    def _instruments(self) -> Iterable[int]:
        raise NotImplementedError

    def _clear_book(self) -> None:
        raise NotImplementedError

    def summary(self) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def on_gap(self, first_seq: int, count: int) -> None:
        self.seqs.suspect.update(self.directory.symbols or self._instruments())

    def on_filled(self) -> None:
        self.seqs.suspect.clear()

    def reset(self) -> None:
        self._clear_book()
        self.seqs.clear()
        self.directory.clear()

    def is_stale(self, locate: int) -> bool:
        return locate in self.seqs.stale or locate in self.seqs.suspect

    def state_hash(self) -> str:
        return summary_hash(self.summary())


class L2Book(_InstrumentBook):
    """Owned by the thread that runs its receiver: top-N price levels per instrument from 'd'."""

    def __init__(self, on_update: Callable[[int], None] | None = None) -> None:
        super().__init__(on_update)   # on_update: called with the locate at the end of each update group
        # A plain dict per side: a side holds at most the N levels the channel publishes, and sorting
        # N prices per query was faster than keeping them sorted on every update (bench depth).
        self.levels: dict[int, tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]] = {}

    def apply_blocks(self, buf: Buffer, pos: int, count: int, first_seq: int = 0) -> int:
        levels = self.levels
        check = self.seqs.check
        cb = self.on_update
        self.messages += count
        lb = BLOCK_LENGTH_SIZE
        for _ in range(count):
            p = pos + lb
            pos = p + ((buf[pos] << 8) | buf[pos + 1])
            t = buf[p]
            if t == 100:    # d
                locate, seq, side, price, shares, orders = _DL(buf, p)
                check(locate, seq)
                pair = levels.get(locate)
                if pair is None:
                    pair = levels[locate] = ({}, {})
                book = pair[side == _SELL]
                if shares or orders:
                    book[price] = (shares, orders)
                else:
                    book.pop(price, None)
                if cb is not None and buf[pos - 1] == 89:   # end of update 'Y'
                    cb(locate)
            else:
                self.directory.apply(t, buf, p)
        return pos

    def _instruments(self) -> Iterable[int]:
        return self.levels

    def _clear_book(self) -> None:
        self.levels.clear()

    def depth(self, locate: int, side: int) -> list[tuple[int, int, int]]:
        pair = self.levels.get(locate)
        if pair is None:
            return []
        book = pair[side]
        return [(p, book[p][0], book[p][1]) for p in sorted(book, reverse=side == 0)]

    def summary(self) -> list[tuple[Any, ...]]:
        """Per instrument with levels: (locate, bid levels, ask levels), best first."""
        out = []
        for loc in sorted(self.levels):
            bids, asks = self.depth(loc, 0), self.depth(loc, 1)
            if bids or asks:
                out.append((loc, bids, asks))
        return out

def engine_l2_summary(engine: Any, levels: int) -> list[tuple[Any, ...]]:
    """``L2Book.summary()`` of a matching engine publishing ``levels`` levels per side."""
    out = []
    for book in engine.book_list:
        bids, asks = book.depth(0, levels), book.depth(1, levels)
        if bids or asks:
            out.append((book.locate, [tuple(x) for x in bids], [tuple(x) for x in asks]))
    return out


class L1Book(_InstrumentBook):
    """Owned by the thread that runs its receiver: best bid and offer and last trade per
    instrument, from 'q' and 't'."""

    def __init__(self, on_update: Callable[[int], None] | None = None) -> None:
        super().__init__(on_update)
        self.bbo: dict[int, tuple[int, int, int, int, int, int]] = {}
        self.last_trade: dict[int, tuple[int, int, int, int]] = {}  # (price, shares, match, volume)

    def apply_blocks(self, buf: Buffer, pos: int, count: int, first_seq: int = 0) -> int:
        check = self.seqs.check
        cb = self.on_update
        self.messages += count
        lb = BLOCK_LENGTH_SIZE
        for _ in range(count):
            p = pos + lb
            pos = p + ((buf[pos] << 8) | buf[pos + 1])
            t = buf[p]
            if t == 113:    # q
                locate, seq, *bbo = _BBO(buf, p)
                check(locate, seq)
                self.bbo[locate] = tuple(bbo)
            elif t == 116:  # t
                locate, seq, price, shares, match, volume = _LT(buf, p)
                check(locate, seq)
                self.last_trade[locate] = (price, shares, match, volume)
            else:
                self.directory.apply(t, buf, p)
                continue
            if cb is not None:
                cb(locate)
        return pos

    def _instruments(self) -> Iterable[int]:
        return self.bbo

    def _clear_book(self) -> None:
        self.bbo.clear()
        self.last_trade.clear()

    def summary(self) -> list[tuple[Any, ...]]:
        """Per instrument with a quote or a trade: (locate, best bid, best ask, last trade price);
        a side is (price, shares, orders) or None when empty; the price is 0 before any trade."""
        out = []
        for loc in sorted(set(self.bbo) | set(self.last_trade)):
            bp, bs, bc, ap, as_, ac = self.bbo.get(loc, (0, 0, 0, 0, 0, 0))
            bid = (bp, bs, bc) if bc else None
            ask = (ap, as_, ac) if ac else None
            last = self.last_trade.get(loc, (0,))[0]
            if bid or ask or last:
                out.append((loc, bid, ask, last))
        return out

def engine_l1_summary(engine: Any) -> list[tuple[Any, ...]]:
    """``L1Book.summary()`` of a matching engine."""
    out = []
    for book in engine.book_list:
        b, a = book.depth(0, 1), book.depth(1, 1)
        bid = tuple(b[0]) if b else None
        ask = tuple(a[0]) if a else None
        if bid or ask or book.last_price:
            out.append((book.locate, bid, ask, book.last_price))
    return out
