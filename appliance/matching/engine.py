"""The matching engine: strict price-time priority over every instrument of a partition.

Owned by the matching thread (single writer). ``apply(cmd, out)`` validates one command, changes the
books and appends event tuples (see appliance.catalogue) to ``out``. It does no I/O, reads no clock
and no random source: the same commands give the same events and the same ``state_hash()``.

Rules (docs/matching.md has the full statement, which the reference engine follows too):
- Trades execute at the resting (maker) order's price; the aggressor takes levels best first and
  orders in time priority within a level.
- Market orders never rest; IOC cancels what it cannot fill at once; FOK fills completely at once or
  is cancelled with no trade.
- Stops trigger on trade prices (buy stop: a trade at or above; sell stop: at or below) and enter,
  in acceptance order (order reference), after the aggression that traded has completed. Triggered
  orders can trigger more (cascades). A stop whose price the last trade already reached triggers
  on entry.
- Self-trade prevention between orders of one firm, the incoming order's mode deciding (CN, CO, DC).

The hot path (new order, cancel, fills) is written for CPython's interpreter: locals over attributes,
one event tuple per event, no exceptions for control flow, no per-event calls into C extensions.

This module is continuous matching only. The trading phases (auctions, LULD bands and pauses, the
circuit breaker, halts, the schedule and its timers, admin commands) are in appliance/matching/
phases.py, whose TradingPhases the Engine inherits; the matching path enters them only through
``_settle`` (a book with safeguards, ``book.watch``) and ``_admin`` (a command that is no order command).
"""
from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, Final, Iterable, Mapping

from appliance import reasons as R
from appliance.catalogue import (
    MASS_ANY_INSTRUMENT,
    MASS_ANY_SIDE,
    REPL_HIDDEN,
    REPL_IN_PLACE,
    REPL_REMOVE,
    REPL_REPOST,
    CancelOrder,
    Command,
    Ev,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.matching.book import SMALL_INT, Book, by_ref
from appliance.matching.phases import TradingPhases
from appliance.matching.rules import RECALL_REFS, TradingRules
from appliance.matching.statehash import StateView, state_hash
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
    ORDER_TYPES,
    SELL,
    STOP,
    STOP_LIMIT,
    STP_CN,
    STP_CO,
    STP_DEFAULT,
    STP_MODES,
    STP_NONE,
    TIMES_IN_FORCE,
    TS_CLOSED,
    TS_CONTINUOUS,
    Instrument,
)

# The event kinds the matching path builds events with, as module globals: one LOAD_GLOBAL each in
# CPython (Ev.X is a class attribute lookup, which 3.11 does not specialize); typed object so that the
# compiled build keeps the int object rather than unboxing it and boxing it again at every event.
EV_ACCEPTED: Final[object] = Ev.ACCEPTED
EV_REJECTED: Final[object] = Ev.REJECTED
EV_ADDED: Final[object] = Ev.ADDED
EV_EXECUTED: Final[object] = Ev.EXECUTED
EV_CANCELLED: Final[object] = Ev.CANCELLED
EV_REPLACED: Final[object] = Ev.REPLACED
EV_STOP_TRIGGERED: Final[object] = Ev.STOP_TRIGGERED
EV_MASS_CANCELLED: Final[object] = Ev.MASS_CANCELLED

_TIFS = TIMES_IN_FORCE
_STPS = STP_MODES
_SIDES = frozenset((BUY, SELL))


class EngineInvariantError(Exception):
    """The engine's state broke one of its invariants: a bug. The process must stop; recovery replays."""


class Engine(TradingPhases):
    """All books of one partition, the live-order index and the reference/match counters; the trading
    phases (auctions, safeguards, halts, the schedule, admin commands) are inherited from TradingPhases."""

    def __init__(
        self,
        instruments: Iterable[Instrument],
        firm_stp: Mapping[int, int] | None = None,
        default_stp: int = STP_CN,
        rules: TradingRules | None = None,
    ) -> None:
        instruments = list(instruments)
        # books[locate]: one slot per possible stock locate (u16), None where no instrument; a
        # validated locate indexes it with no range test. book_list: the books, by ascending locate.
        self.books: list[Book | None] = [None] * 0x10000
        for ins in instruments:
            if self.books[ins.locate] is not None:
                raise ValueError(f"stock locate {ins.locate} is used twice")
            self.books[ins.locate] = Book(ins)
        self.book_list: list[Book] = [b for b in self.books if b is not None]
        self.firm_stp: dict[int, int] = dict(firm_stp or {})
        for firm, mode in self.firm_stp.items():
            if mode not in STP_MODES or mode == STP_DEFAULT:
                raise ValueError(f"firm {firm}: self-trade prevention mode {mode} is not CN/CO/DC/none")
        if default_stp not in STP_MODES or default_stp == STP_DEFAULT:
            raise ValueError(f"default self-trade prevention mode {default_stp} is not CN/CO/DC/none")
        self.default_stp = default_stp
        self.orders: dict[int, NewOrder] = {}  # order_id -> live order (resting or pending stop)
        self.pending_stops: set[int] = set()   # order ids of untriggered stop orders
        self.next_ref = 1
        self.next_match = 1
        self.traded_qty = 0  # shares traded so far (a counter read out of band)
        self._stop_queue: list[tuple[NewOrder, int]] = []
        # The orders of the latest RECALL_REFS references, kept after they end so that a late
        # cancel or replace can be told "too late" (see _too_late). Every reference assigned is
        # appended, in reference order, so the ring's last item has reference next_ref - 1 (one
        # C call per reference on the hot path: no hashing, no int arithmetic). An item is the
        # order, or (TOO_LATE_* reason, order) where the object alone cannot say how it ended
        # (expired; self-trade decremented to nothing; otherwise: filled if filled == qty, else
        # cancelled). The id -> latest reference index is built only when a cancel or replace
        # misses the live orders, from the references assigned since the last such miss.
        self._recall = RECALL_REFS
        self._ring: deque[Any] = deque(maxlen=RECALL_REFS)
        self._ring_append = self._ring.append
        self._index: dict[int, int] = {}
        self._indexed_to = 1      # references below this one are in _index (or out of the window)
        self._start_trading(rules)

    # ============================================================================================
    # apply
    # ============================================================================================
    def apply(self, cmd: Command, out: list[Event]) -> None:
        """Apply one command; append its events to `out`."""
        self.apply_batch((cmd,), out, None)

    def apply_batch(self, cmds: Iterable[Command], out: list[Event], ends: list[int] | None) -> None:
        """Apply commands in order, appending their events to `out`; with `ends`, append len(out)
        after each command, so that command i's events are out[ends[i-1]:ends[i]].

        One call per batch, not per command (the matching loop drains its ring in batches). The two
        commonest cases, a valid limit order that does not cross and a cancel of a resting order,
        are handled inline here (each Python call costs as much as a dozen simple steps); everything
        else goes to the general methods below, which handle these cases too.
        """
        books = self.books
        orders = self.orders
        ring_append = self._ring_append
        for cmd in cmds:
            cls = type(cmd)
            if cls is NewOrder:
                o: NewOrder = cmd  # type: ignore[assignment]
                price = o.price
                qty = o.qty
                side = o.side
                tif = o.tif
                locate = o.locate
                # Valid-limit-order test for the fast path. Comparisons with small (< 2^30) constants
                # are the cheap ones in CPython, so larger quantities (and, by the book's price window
                # book.flo < price < book.fhi, prices) take the general path, which accepts them up
                # to 2^32-1. The window also says the book trades continuously, inside its band.
                if (
                    o.ord_type == LIMIT
                    and 0 < qty <= SMALL_INT
                    and 0 < locate <= 0xFFFF
                    and tif in _TIFS
                    and o.stp in _STPS
                    and side in _SIDES
                    and not o.stop_price
                    and o.order_id not in orders
                    and (book := books[locate]) is not None
                    and book.flo < price < book.fhi
                    and not price % book.tick
                ):
                    okeys = book.keys[1 - side]
                    if tif <= GTC and (not okeys or okeys[-1] < (price if side else -price)):
                        # Rest without crossing: the commonest command of a day (a post-only order
                        # too: it takes nothing).
                        ref = self.next_ref
                        o.ref = ref
                        self.next_ref = ref + 1
                        ring_append(o)
                        o.leaves = qty
                        o.filled = 0
                        out.append((EV_ACCEPTED, o, qty))
                        lvl = book.levels[side].get(price)
                        if lvl is None:
                            self._rest(book, o, qty, out)
                        else:
                            o.price = lvl.price   # the level's int object: ~30 bytes less per order
                            lvl.orders.append(o)
                            lvl.total += qty
                            lvl.count += 1
                            orders[o.order_id] = o
                            out.append((EV_ADDED, o, qty))
                    elif o.post_only:
                        self._new_order(o, out)   # it would take (or is IOC/FOK): the rules decide
                    else:
                        ref = self.next_ref
                        o.ref = ref
                        self.next_ref = ref + 1
                        ring_append(o)
                        o.leaves = qty
                        o.filled = 0
                        out.append((EV_ACCEPTED, o, qty))
                        self._aggress(book, o, out)
                        if self._stop_queue:
                            self._run_stops(book, out)
                        if book.watch:
                            self._settle(book, out)
                else:
                    self._new_order(o, out)
            elif cls is CancelOrder:
                c: CancelOrder = cmd  # type: ignore[assignment]
                found = orders.get(c.order_id)   # Optional: the compiled build checks o's type
                if found is None or found.firm != c.firm or found.ord_type != LIMIT:
                    self._cancel(c, out)
                else:
                    o = found
                    del orders[c.order_id]
                    leaves = o.leaves
                    o.leaves = 0
                    cbook: Book = books[o.locate]  # type: ignore[assignment]  # a live order's book exists
                    price = o.price
                    side = o.side
                    lvl = cbook.levels[side][price]
                    total = lvl.total - leaves
                    lvl.total = total
                    count = lvl.count - 1
                    lvl.count = count
                    if not total:
                        cbook.remove_level(side, price)
                        out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_USER, True))
                        if cbook.watch:
                            self._settle(cbook, out)
                    else:
                        if len(lvl.orders) > count + count + 16:
                            lvl.compact()
                        out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_USER, True))
            elif cls is ReplaceOrder:
                self._replace(cmd, out)  # type: ignore[arg-type]
            elif cls is MassCancel:
                self._mass_cancel(cmd, out)  # type: ignore[arg-type]
            else:
                self._admin(cmd, out)
            if ends is not None:
                ends.append(len(out))

    def _rest(self, book: Book, o: NewOrder, qty: int, out: list[Event]) -> None:
        """Put o at the back of its price level with `qty` shown; index it; say OrderAdded."""
        book.enqueue(o, qty)
        self.orders[o.order_id] = o
        out.append((EV_ADDED, o, qty))

    # -- validation -------------------------------------------------------------------------------
    def _check_new(self, o: NewOrder) -> int:
        """0 if the order is acceptable, else a reject reason."""
        locate = o.locate
        books = self.books
        if not 0 < locate < len(books) or books[locate] is None:
            return R.UNKNOWN_INSTRUMENT
        book = books[locate]
        assert book is not None
        if o.side != BUY and o.side != SELL:
            return R.INVALID_SIDE
        qty = o.qty
        if qty <= 0 or qty > MAX_QTY:
            return R.INVALID_QUANTITY
        t = o.ord_type
        if t not in ORDER_TYPES:
            return R.INVALID_ORDER_TYPE
        if o.tif not in TIMES_IN_FORCE:
            return R.INVALID_TIME_IN_FORCE
        if o.stp not in STP_MODES:
            return R.INVALID_STP_MODE
        tick = book.tick
        if t == LIMIT or t == STOP_LIMIT:
            p = o.price
            if p <= 0 or p > MAX_PRICE:
                return R.INVALID_PRICE
            if p % tick:
                return R.PRICE_OFF_TICK
        elif o.price != 0:
            return R.INVALID_ORDER_TYPE
        if t == STOP or t == STOP_LIMIT:
            sp = o.stop_price
            if sp <= 0 or sp > MAX_PRICE or sp % tick:
                return R.INVALID_STOP_PRICE
        elif o.stop_price != 0:
            return R.INVALID_STOP_PRICE
        if o.post_only:
            if t != LIMIT:
                return R.INVALID_ORDER_TYPE
            if o.tif != DAY and o.tif != GTC:
                return R.INVALID_TIME_IN_FORCE
        if o.order_id in self.orders:
            return R.DUPLICATE_ORDER_ID
        state = book.state
        if state != TS_CONTINUOUS:
            if state == TS_CLOSED:
                return R.INSTRUMENT_CLOSED
            if o.tif == IOC or o.tif == FOK:
                return R.TIF_NOT_ALLOWED_IN_STATE
        if book.band_hi and (t == LIMIT or t == STOP_LIMIT) and self._through_band(book, o.side, o.price):
            return R.PRICE_OUTSIDE_BAND
        return 0

    @staticmethod
    def _through_band(book: Book, side: int, price: int) -> bool:
        """Is a limit price through the book's band (a buy above the upper, a sell below the lower)?"""
        return price > book.band_hi if side == BUY else price < book.band_lo

    # -- new order --------------------------------------------------------------------------------
    def _new_order(self, o: NewOrder, out: list[Event]) -> None:
        reason = self._check_new(o)
        if reason:
            out.append((EV_REJECTED, o, reason))
            return
        book = self.books[o.locate]
        assert book is not None
        if o.post_only and book.state == TS_CONTINUOUS:
            price = self._post_only_price(book, o.side, o.price)
            if not price:
                out.append((EV_REJECTED, o, R.POST_ONLY_WOULD_TAKE))
                return
            o.price = price
        t = o.ord_type
        o.ref = self.next_ref
        self.next_ref += 1
        self._ring_append(o)
        o.leaves = o.qty
        o.filled = 0
        out.append((EV_ACCEPTED, o, o.qty))
        if book.state != TS_CONTINUOUS:  # a call phase: collect, never match
            if t == STOP or t == STOP_LIMIT:
                self._add_stop(book, o)
            elif t == MARKET:
                book.mkt[o.side].append(o)
                self.orders[o.order_id] = o
            else:
                self._rest(book, o, o.leaves, out)
            return
        if t == STOP or t == STOP_LIMIT:
            last = book.last_price
            sp = o.stop_price
            if last and ((o.side == BUY and last >= sp) or (o.side == SELL and last <= sp)):
                out.append((EV_STOP_TRIGGERED, o, last))
            else:
                self._add_stop(book, o)
                return
        self._execute(book, o, out)
        if book.watch:
            self._settle(book, out)

    @staticmethod
    def _post_only_price(book: Book, side: int, price: int) -> int:
        """The price a post-only order of ``side`` at ``price`` may rest at now: ``price`` if it
        does not cross the other side's best price; if it does, with the instrument's
        post_only_reprice, one tick away from that best price; else (or no such price) 0."""
        okeys = book.keys[1 - side]
        if not okeys or okeys[-1] < (price if side else -price):
            return price
        if not book.rules.post_only_reprice:
            return 0
        if side == BUY:
            price = -okeys[-1] - book.tick
            return price if price > 0 else 0
        return okeys[-1] + book.tick

    def _add_stop(self, book: Book, o: NewOrder) -> None:
        """o waits among the pending stops."""
        self.orders[o.order_id] = o
        self.pending_stops.add(o.order_id)
        book.stops[o.side].add(o)
        book.nstops += 1

    def _execute(self, book: Book, o: NewOrder, out: list[Event]) -> None:
        """Match an accepted (or triggered, or re-priced) order; rest or cancel what is left."""
        self._aggress(book, o, out)
        if self._stop_queue:  # its trades triggered stops
            self._run_stops(book, out)

    def _aggress(self, book: Book, o: NewOrder, out: list[Event]) -> bool:
        """Match o against the opposite side, then rest or cancel its remainder. True if it traded."""
        side = o.side
        opp = 1 - side
        keys = book.keys[opp]
        t = o.ord_type
        is_market = t == MARKET or t == STOP
        if is_market:
            lim = book.mkt_key[side]  # the collar (ANY_KEY when there is none)
        else:
            lim = o.price if opp == BUY else -o.price
        qty = o.leaves
        if keys and keys[-1] >= lim:
            stp = o.stp or self.firm_stp.get(o.firm, self.default_stp)  # STP_DEFAULT is 0
            if o.tif == FOK and not self._fok_can_fill(book, o, lim, stp):
                out.append((EV_CANCELLED, o, qty, 0, 0, R.CANCEL_FOK, False))
                o.leaves = 0
                return False
            qty, stp_stop, traded = self._match(book, o, keys, lim, stp, out)
        else:
            if o.tif == FOK:
                out.append((EV_CANCELLED, o, qty, 0, 0, R.CANCEL_FOK, False))
                o.leaves = 0
                return False
            stp_stop = False
            traded = False
        if qty:
            if stp_stop:
                reason = R.CANCEL_STP
            elif is_market:
                reason = book.mkt_reason
            elif o.tif == IOC or o.tif == FOK:
                reason = R.CANCEL_IOC_REMAINDER
            else:
                self._rest(book, o, qty, out)
                return traded
            o.leaves = 0
            out.append((EV_CANCELLED, o, qty, 0, o.filled, reason, False))
        return traded

    def _match(
        self, book: Book, o: NewOrder, keys: list[int], lim: int, stp: int, out: list[Event]
    ) -> tuple[int, bool, bool]:
        """The matching loop. Returns (quantity left, stopped by STP cancel-newest, traded)."""
        opp = 1 - o.side
        sign = 1 if opp == BUY else -1
        levels = book.levels[opp]
        orders = self.orders
        firm = o.firm
        stp_on = stp != STP_NONE
        qty = o.leaves
        filled = o.filled
        match = self.next_match
        append = out.append
        lo = hi = 0
        stp_stop = False
        while qty and keys and keys[-1] >= lim:
            price = keys[-1] * sign
            lvl = levels[price]
            q = lvl.orders
            total = lvl.total  # the level's aggregates live in locals while we eat it
            count = lvl.count
            tp = 0
            while qty and total:
                m = q[0]
                ml = m.leaves
                if not ml:
                    q.popleft()
                    continue
                if stp_on and m.firm == firm:
                    if stp == STP_CN:
                        stp_stop = True
                        break
                    if stp == STP_CO:
                        q.popleft()
                        m.leaves = 0
                        total -= ml
                        count -= 1
                        del orders[m.order_id]
                        append((EV_CANCELLED, m, ml, 0, m.filled, R.CANCEL_STP, True))
                    else:  # STP_DC: decrement both by the overlap; the smaller is cancelled
                        d = ml if ml < qty else qty
                        ml -= d
                        qty -= d
                        m.leaves = ml
                        m.qty -= d  # a cancel of d shares: the order quantity drops too
                        o.qty -= d
                        total -= d
                        if not ml:
                            q.popleft()
                            count -= 1
                            del orders[m.order_id]
                            self._ended_as(m, R.TOO_LATE_CANCELLED)
                        if not qty:
                            self._ended_as(o, R.TOO_LATE_CANCELLED)
                        append((EV_CANCELLED, m, d, ml, m.filled, R.CANCEL_STP, True))
                        append((EV_CANCELLED, o, d, qty, filled, R.CANCEL_STP, False))
                    continue
                if ml <= qty:
                    q.popleft()
                    qty -= ml
                    filled += ml
                    total -= ml
                    count -= 1
                    m.leaves = 0
                    mf = m.filled + ml
                    m.filled = mf
                    del orders[m.order_id]
                    append((EV_EXECUTED, m, o, ml, price, match, 0, mf, qty, filled))
                else:
                    ml -= qty
                    m.leaves = ml
                    mf = m.filled + qty
                    m.filled = mf
                    total -= qty
                    filled += qty
                    append((EV_EXECUTED, m, o, qty, price, match, ml, mf, 0, filled))
                    qty = 0
                match += 1
                tp = price
            if tp:
                if not lo:
                    lo = hi = tp
                elif tp < lo:
                    lo = tp
                elif tp > hi:
                    hi = tp
            if total:
                lvl.total = total
                lvl.count = count
            else:
                del levels[price]
                keys.pop()
            if stp_stop:
                break
        self.next_match = match
        self.traded_qty += filled - o.filled
        o.leaves = qty
        o.filled = filled
        if hi:
            book.last_price = tp if tp else (hi if opp == SELL else lo)
            if book.nstops:
                self._queue_stops(book, lo, hi)
        return qty, stp_stop, hi != 0

    def _fok_can_fill(self, book: Book, o: NewOrder, lim: int, stp: int) -> bool:
        """Would o fill completely now? Orders of o's firm count as STP would treat them."""
        need = o.leaves
        opp = 1 - o.side
        sign = 1 if opp == BUY else -1
        levels = book.levels[opp]
        firm = o.firm
        for key in reversed(book.keys[opp]):
            if key < lim:
                return False
            lvl = levels[key * sign]
            if stp == STP_NONE:
                need -= lvl.total
                if need <= 0:
                    return True
                continue
            for m in lvl.orders:
                if not m.leaves:
                    continue
                if m.firm == firm:
                    if stp == STP_CO:
                        continue  # would be cancelled; matching goes on
                    return False  # CN stops, DC reduces the incoming order: no complete fill
                need -= m.leaves
                if need <= 0:
                    return True
        return False

    # -- stops ------------------------------------------------------------------------------------
    def _queue_stops(self, book: Book, lo: int, hi: int) -> None:
        """Queue the stops that trades between lo and hi (inclusive) triggered, in acceptance order.

        A buy stop triggers on a trade at or above its stop price (so on `hi`), a sell stop on a
        trade at or below it (so on `lo`).
        """
        fired = [(s.ref, s, hi) for s in book.stops[BUY].take_at_or_below(hi)]
        fired += [(s.ref, s, lo) for s in book.stops[SELL].take_at_or_above(lo)]
        if not fired:
            return
        fired.sort(key=_first)
        book.nstops -= len(fired)
        for _, s, price in fired:
            self.pending_stops.discard(s.order_id)
            del self.orders[s.order_id]
            self._stop_queue.append((s, price))

    def _run_stops(self, book: Book, out: list[Event]) -> None:
        """Enter triggered stops one after the other; each may trigger more (appended to the queue)."""
        queue = self._stop_queue
        while queue:
            s, price = queue.pop(0)
            out.append((EV_STOP_TRIGGERED, s, price))
            if book.band_hi and s.ord_type == STOP_LIMIT and self._through_band(book, s.side, s.price):
                leaves = s.leaves
                s.leaves = 0
                out.append((EV_CANCELLED, s, leaves, 0, s.filled, R.CANCEL_OUTSIDE_BAND, False))
                continue
            self._aggress(book, s, out)

    # -- cancel -----------------------------------------------------------------------------------
    def _cancel(self, c: CancelOrder, out: list[Event]) -> None:
        o = self.orders.get(c.order_id)
        if o is None or o.firm != c.firm:
            out.append((EV_REJECTED, c, self._too_late(c.order_id, c.firm)))
            return
        leaves = o.leaves
        on_book = self._unlink(o)
        out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_USER, on_book))
        book = self.books[o.locate]
        if book.watch:  # type: ignore[union-attr]
            self._settle(book, out)  # type: ignore[arg-type]

    def _ring_put(self, ref: int, v: Any) -> bool:
        """Set the ring item of reference ``ref``; False if it is out of the window."""
        i = ref - self.next_ref + len(self._ring)
        if 0 <= i < len(self._ring):
            self._ring[i] = v
            return True
        return False

    def _ended_as(self, o: NewOrder, reason: int) -> None:
        """Say how o ended where the object cannot (see __init__)."""
        ring = self._ring
        i = o.ref - self.next_ref + len(ring)
        if 0 <= i < len(ring) and ring[i] is o:
            ring[i] = (reason, o)

    def _recalled(self, order_id: int) -> tuple[int, NewOrder] | None:
        """(TOO_LATE_* or 0 if live, order) of the latest order accepted with this id whose
        reference is among the latest RECALL_REFS; None if there is none."""
        ring = self._ring
        end = self.next_ref
        first = end - len(ring)               # the reference of ring[0]
        index = self._index
        ref = self._indexed_to
        if len(index) > 2 * self._recall:     # stale entries pile up: start again from the window
            index.clear()
            ref = first
        if ref < first:
            ref = first
        if ref < end:
            for v in islice(ring, ref - first, None):
                if v is not None:
                    index[(v[1] if type(v) is tuple else v).order_id] = ref
                ref += 1
            self._indexed_to = end
        latest = index.get(order_id)
        if latest is None or latest < first:
            return None
        return self._how_ended(ring[latest - first], latest)

    @staticmethod
    def _how_ended(v: Any, ref: int) -> tuple[int, NewOrder] | None:
        """(TOO_LATE_* or 0 if live, order) of ring item ``v`` of reference ``ref``."""
        if type(v) is tuple:
            return v
        if v is None or v.ref != ref:
            return None
        if v.leaves:
            return 0, v
        return (R.TOO_LATE_FILLED if v.filled >= v.qty else R.TOO_LATE_CANCELLED), v

    def _too_late(self, order_id: int, firm: int) -> int:
        """Why a cancel or replace of an order that is not live (or not this firm's) is refused:
        TOO_LATE_FILLED / _CANCELLED / _EXPIRED for an order of this firm that ended and whose last
        reference is among the latest RECALL_REFS, else UNKNOWN_ORDER (docs/matching.md, Cancel)."""
        found = self._recalled(order_id)
        if found is None or not found[0] or found[1].firm != firm:
            return R.UNKNOWN_ORDER
        return found[0]

    def ended_orders(self) -> list[tuple[int, int, int, int]]:
        """The ended orders a late cancel would be told "too late" about, as (order id, TOO_LATE_*
        reason, last reference, firm) by reference: what a snapshot keeps of that memory."""
        self._recalled(0)   # brings the index up to date
        items = list(self._ring)
        first = self.next_ref - len(items)
        found = []
        for oid, ref in self._index.items():
            if ref >= first:
                r = self._how_ended(items[ref - first], ref)
                if r is not None and r[0]:
                    found.append((oid, r[0], ref, r[1].firm))
        return sorted(found, key=lambda e: e[2])

    def recall_ended(self, entries: Iterable[tuple[int, int, int, int]]) -> None:
        """Restore what ``ended_orders`` returned (after the live orders are in place)."""
        for oid, reason, ref, firm in entries:
            o = NewOrder(oid, 0, 0, 0, firm=firm)   # the constructor: a compiled class has no bare __new__
            o.ref, o.leaves = ref, 0
            self._ring_put(ref, (reason, o))

    def _unlink(self, o: NewOrder) -> bool:
        """Take a live order out of the index and the book (or the pending stops).

        Returns True if it was resting on the book.
        """
        del self.orders[o.order_id]
        book = self.books[o.locate]
        assert book is not None
        if o.ord_type >= STOP and o.order_id in self.pending_stops:
            self.pending_stops.discard(o.order_id)
            book.stops[o.side].remove(o)
            book.nstops -= 1
            o.leaves = 0
            return False
        if o.ord_type == MARKET:  # collected in a call phase
            book.mkt[o.side].remove(o)
            o.leaves = 0
            return False
        lvl = book.levels[o.side][o.price]
        lvl.total -= o.leaves
        lvl.count -= 1
        o.leaves = 0
        if not lvl.total:
            book.remove_level(o.side, o.price)
        elif len(lvl.orders) > (lvl.count << 1) + 16:
            lvl.compact()
        return True

    # -- replace ----------------------------------------------------------------------------------
    def _replace(self, r: ReplaceOrder, out: list[Event]) -> None:
        o = self.orders.get(r.order_id)
        if o is None or o.firm != r.firm:
            out.append((EV_REJECTED, r, self._too_late(r.order_id, r.firm)))
            return
        book = self.books[o.locate]
        assert book is not None
        if book.state == TS_CLOSED:
            out.append((EV_REJECTED, r, R.INSTRUMENT_CLOSED))
            return
        if o.ord_type == MARKET:  # collected in a call phase
            out.append((EV_REJECTED, r, R.REPLACE_NOT_ALLOWED))
            return
        qty = r.qty
        if qty <= 0 or qty > MAX_QTY:
            out.append((EV_REJECTED, r, R.INVALID_QUANTITY))
            return
        if qty <= o.filled:
            out.append((EV_REJECTED, r, R.REPLACE_BELOW_FILLED))
            return
        pending = o.ord_type >= STOP and o.order_id in self.pending_stops
        t = o.ord_type
        price = r.price
        stop_price = r.stop_price or o.stop_price
        if t == STOP or (t == MARKET):
            if price != 0:
                out.append((EV_REJECTED, r, R.INVALID_PRICE))
                return
        elif price <= 0 or price > MAX_PRICE:
            out.append((EV_REJECTED, r, R.INVALID_PRICE))
            return
        elif price % book.tick:
            out.append((EV_REJECTED, r, R.PRICE_OFF_TICK))
            return
        elif book.band_hi and self._through_band(book, o.side, price):
            out.append((EV_REJECTED, r, R.PRICE_OUTSIDE_BAND))
            return
        if r.stop_price and (
            not pending or r.stop_price <= 0 or r.stop_price > MAX_PRICE or r.stop_price % book.tick
        ):
            out.append((EV_REJECTED, r, R.INVALID_STOP_PRICE))
            return
        if o.post_only and book.state == TS_CONTINUOUS:
            price = self._post_only_price(book, o.side, price)
            if not price:
                out.append((EV_REJECTED, r, R.POST_ONLY_WOULD_TAKE))
                return
        old_leaves = o.leaves
        new_leaves = qty - o.filled
        if price == o.price and stop_price == o.stop_price and qty <= o.qty:
            # Same price, not more: keep priority and reference.
            delta = old_leaves - new_leaves
            o.leaves = new_leaves
            o.qty = qty
            if r.cl_ord_id:
                o.cl_ord_id = r.cl_ord_id
            if not pending:
                lvl = book.levels[o.side][o.price]
                lvl.total -= delta
            out.append((EV_REPLACED, o, o, old_leaves, new_leaves, o.filled, REPL_HIDDEN if pending else REPL_IN_PLACE, r))
            return
        # Priority lost: a new order object with a new reference takes the old one's place.
        self._unlink(o)
        n = NewOrder(
            o.order_id, o.locate, o.side, qty, price, t, o.tif, stop_price, o.firm, o.session,
            o.account, r.cl_ord_id or o.cl_ord_id, o.mpid, o.stp, o.post_only,
        )
        n.ref = self.next_ref
        self.next_ref += 1
        self._ring_append(n)
        n.leaves = new_leaves
        n.filled = o.filled
        if pending:
            self.orders[n.order_id] = n
            self.pending_stops.add(n.order_id)
            book.stops[n.side].add(n)
            book.nstops += 1
            out.append((EV_REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_HIDDEN, r))
            return
        opp = 1 - n.side
        okeys = book.keys[opp]
        lim = price if opp == BUY else -price
        if okeys and okeys[-1] >= lim and book.state == TS_CONTINUOUS:
            out.append((EV_REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_REMOVE, r))
            self._execute(book, n, out)
        else:
            book.enqueue(n, new_leaves)
            self.orders[n.order_id] = n
            out.append((EV_REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_REPOST, r))
        if book.watch:
            self._settle(book, out)

    # -- mass cancel ------------------------------------------------------------------------------
    def _mass_cancel(self, c: MassCancel, out: list[Event]) -> None:
        firm = c.firm
        locate = c.locate
        side = c.side
        victims = [
            o
            for o in self.orders.values()
            if o.firm == firm
            and (locate == MASS_ANY_INSTRUMENT or o.locate == locate)
            and (side == MASS_ANY_SIDE or o.side == side)
        ]
        victims.sort(key=by_ref)
        for o in victims:
            leaves = o.leaves
            on_book = self._unlink(o)
            out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_MASS, on_book))
        out.append((EV_MASS_CANCELLED, c, len(victims)))
        for book in self.book_list:
            if book.watch:
                self._settle(book, out)

    def rederive(self) -> None:
        """Recompute every book's derived trading fields (after a snapshot restored the others).

        Live orders join the memory of accepted orders; a snapshot restores the ended ones with
        ``recall_ended``."""
        for book in self.book_list:
            self._refresh(book)
        self._ring.clear()
        self._ring.extend([None] * min(self._recall, self.next_ref - 1))
        self._index.clear()
        self._indexed_to = 1
        for o in self.orders.values():
            self._ring_put(o.ref, o)

    # ============================================================================================
    # reading, hashing and self-checks (out of the hot path)
    # ============================================================================================
    def book(self, locate: int) -> Book:
        b = self.books[locate] if 0 <= locate < len(self.books) else None
        if b is None:
            raise KeyError(f"no instrument with stock locate {locate}")
        return b

    def instruments(self) -> list[Instrument]:
        return [b.instrument for b in self.book_list]

    def resting_count(self) -> int:
        """Live orders on the books (pending stops and collected market orders excluded)."""
        collected = sum(len(b.mkt[BUY]) + len(b.mkt[SELL]) for b in self.book_list)
        return len(self.orders) - len(self.pending_stops) - collected

    def state_hash(self) -> str:
        """A hash of everything that determines future behaviour (see appliance.matching.statehash)."""
        return state_hash(self.next_ref, self.next_match, (
            StateView(
                b.locate,
                b.last_price,
                (b.orders_in_priority(BUY), b.orders_in_priority(SELL)),
                (b.stops[BUY].in_order(), b.stops[SELL].in_order()),
                (b.state, b.cause, b.ref_price, b.cb_ref, b.limit_on, b.limit_since, b.deadline_ns,
                 b.next_noii_ns, b.day_done),
                (b.mkt[BUY], b.mkt[SELL]),
            )
            for b in self.book_list
        ), self.clock_state())

    def clock_state(self) -> tuple[int, ...]:
        """The engine-wide trading state: clock, schedule, market-wide events published."""
        return (self.now_ns, self.pre_open_ns, self.opening_auction_ns, self.open_ns, self.closing_auction_ns,
                self.close_ns, self.market_phase)

    def check_invariants(self) -> None:
        """Raise EngineInvariantError if the state is inconsistent."""

        def fail(msg: str) -> None:
            raise EngineInvariantError(msg)

        if len(self._ring) != min(self._recall, self.next_ref - 1):
            fail(f"recall ring holds {len(self._ring)} items for {self.next_ref - 1} references")
        seen: set[int] = set()
        for book in self.book_list:
            for side in (BUY, SELL):
                levels = book.levels[side]
                keys = book.keys[side]
                sign = 1 if side == BUY else -1
                if keys != sorted(keys) or len(set(keys)) != len(keys):
                    fail(f"{book.instrument.symbol}: price keys of side {side} not sorted/unique")
                if sorted(k * sign for k in keys) != sorted(levels):
                    fail(f"{book.instrument.symbol}: price keys and levels of side {side} disagree")
                for price, lvl in levels.items():
                    if lvl.price != price:
                        fail(f"level {price} says price {lvl.price}")
                    live = lvl.live()
                    if not live:
                        fail(f"{book.instrument.symbol}: empty level {price} kept")
                    if lvl.total != sum(o.leaves for o in live):
                        fail(f"{book.instrument.symbol}: level {price} total {lvl.total} != sum of orders")
                    if lvl.count != len(live):
                        fail(f"{book.instrument.symbol}: level {price} count {lvl.count} != {len(live)}")
                    for o in live:
                        if self.orders.get(o.order_id) is not o:
                            fail(f"order {o.order_id} on the book but not in the index")
                        if o.price != price or o.side != side or o.locate != book.locate:
                            fail(f"order {o.order_id} sits at the wrong level")
                        if o.leaves + o.filled != o.qty or o.leaves <= 0:
                            fail(f"order {o.order_id}: leaves {o.leaves} + filled {o.filled} != qty {o.qty}")
                        if o.order_id in seen:
                            fail(f"order {o.order_id} twice on the book")
                        seen.add(o.order_id)
                    ords = list(lvl.orders)
                    refs_live = [o.ref for o in ords if o.leaves]
                    if len(set(id(o) for o in ords if o.leaves)) != len(refs_live):
                        fail(f"level {price}: an order object queued twice")
                for sp, lst in book.stops[side].by_price.items():
                    for o in lst:
                        if self.orders.get(o.order_id) is not o or o.order_id not in self.pending_stops:
                            fail(f"pending stop {o.order_id} not indexed")
                        if o.stop_price != sp or o.leaves + o.filled != o.qty:
                            fail(f"pending stop {o.order_id} inconsistent")
                        seen.add(o.order_id)
            bb, ba = book.best_bid(), book.best_ask()
            if book.state == TS_CONTINUOUS and book.keys[BUY] and book.keys[SELL] and bb >= ba:
                fail(f"{book.instrument.symbol}: book crossed after matching: bid {bb} >= ask {ba}")
            self._check_trading(book, fail, seen)
        if seen != set(self.orders):
            fail(f"index holds {len(self.orders)} orders, books and stops {len(seen)}")


def _first(t: tuple[int, NewOrder, int]) -> int:
    return t[0]
