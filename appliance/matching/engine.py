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
"""
from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, Iterable, Mapping

from appliance import reasons as R
from appliance.catalogue import (
    ALL_INSTRUMENTS,
    EV_ACCEPTED,
    EV_ADDED,
    EV_CANCELLED,
    EV_COLLAR,
    EV_CROSS_EXECUTED,
    EV_EXECUTED,
    EV_IMBALANCE,
    EV_LIMIT_STATE,
    EV_MARKET_EVENT,
    EV_MASS_CANCELLED,
    EV_REJECTED,
    EV_REPLACED,
    EV_STOP_TRIGGERED,
    EV_TRADING_STATE,
    EV_UNCROSSED,
    MASS_ANY_INSTRUMENT,
    MASS_ANY_SIDE,
    REPL_HIDDEN,
    REPL_IN_PLACE,
    REPL_REMOVE,
    REPL_REPOST,
    CancelOrder,
    ClockTick,
    Close,
    Command,
    Event,
    Halt,
    MassCancel,
    NewOrder,
    ReplaceOrder,
    Resume,
    SetSchedule,
)
from appliance.matching.book import CLOSED_WINDOW, Book
from appliance.matching.rules import BPS, RECALL_REFS, TradingRules, band_of
from appliance.matching.statehash import StateView, state_hash
from appliance.model import (
    AUCTION_STATES,
    BUY,
    CALL_STATES,
    CAUSE_ADMIN,
    CAUSE_CIRCUIT,
    CAUSE_LULD,
    CAUSE_MARKET,
    CAUSE_SCHEDULE,
    CROSS_CLOSE,
    CROSS_OPEN,
    CROSS_REOPEN,
    DAY,
    FOK,
    GTC,
    IMBALANCE_BUY,
    IMBALANCE_NO_PRICE,
    IMBALANCE_NONE,
    IMBALANCE_SELL,
    IOC,
    LIMIT,
    MARKET,
    MARKET_CLOSE,
    MARKET_HALT,
    MARKET_OPEN,
    MARKET_SYSTEM_HOURS,
    MAX_PRICE,
    MAX_QTY,
    ORDER_TYPES,
    SELL,
    STOP,
    STOP_LIMIT,
    STP_CN,
    STP_CO,
    STP_DC,
    STP_DEFAULT,
    STP_MODES,
    STP_NONE,
    TIMES_IN_FORCE,
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

# Key space limit used by market orders: crosses every price.
_ANY = -(1 << 62)
# CPython compares ints of one internal digit (below 2^30) on its fast path.
_SMALL = (1 << 30) - 1
_TIFS = TIMES_IN_FORCE
_STPS = STP_MODES
_SIDES = frozenset((BUY, SELL))

# The day's schedule as phases: which state the schedule wants an instrument in at a time.
PH_BEFORE, PH_PRE_OPEN, PH_OPENING, PH_CONTINUOUS, PH_CLOSING, PH_AFTER = range(6)
PHASE_STATE = {PH_PRE_OPEN: TS_PRE_OPEN, PH_OPENING: TS_OPENING_AUCTION, PH_CONTINUOUS: TS_CONTINUOUS,
               PH_CLOSING: TS_CLOSING_AUCTION}
AUCTION_CROSS = {TS_OPENING_AUCTION: CROSS_OPEN, TS_CLOSING_AUCTION: CROSS_CLOSE, TS_REOPENING_AUCTION: CROSS_REOPEN}
MAX_TRANSITIONS_PER_TICK = 32   # per instrument: bounds the timer loop whatever the rules say


class EngineInvariantError(Exception):
    """The engine's state broke one of its invariants: a bug. The process must stop; recovery replays."""


class Engine:
    """All books of one partition, the live-order index and the reference/match counters."""

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
        # Trading states (docs/matching.md, "Time" and "Trading states"): the clock is the latest
        # ClockTick; the schedule is the latest SetSchedule (all 0: none); market_phase counts the
        # market-wide events of the schedule's day published so far (1 S, 2 Q, 3 M).
        self.rules = rules
        self._rules = rules or TradingRules()
        self.now_ns = 0
        self.pre_open_ns = self.opening_auction_ns = self.open_ns = 0
        self.closing_auction_ns = self.close_ns = 0
        self.market_phase = 0
        known = {ins.locate for ins in instruments}
        for locate, _ in self._rules.instruments:
            if locate not in known:
                raise ValueError(f"trading rules for stock locate {locate}, which is no instrument of this engine")
        for book in self.book_list:
            r = self._rules.for_locate(book.locate)
            if r.reference_price % book.tick:
                raise ValueError(f"{book.instrument.symbol}: reference price {r.reference_price} is off tick")
            book.rules = r
            book.state = self._rules.start_state
            book.ref_price = book.cb_ref = r.reference_price
            self._refresh(book)

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
                    and 0 < qty <= _SMALL
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
            lim = book.mkt_key[side]  # the collar (_ANY when there is none)
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
        victims.sort(key=_by_ref)
        for o in victims:
            leaves = o.leaves
            on_book = self._unlink(o)
            out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_MASS, on_book))
        out.append((EV_MASS_CANCELLED, c, len(victims)))
        for book in self.book_list:
            if book.watch:
                self._settle(book, out)

    # ============================================================================================
    # trading states, safeguards and auctions (docs/matching.md); out of the hot path
    # ============================================================================================
    def _refresh(self, book: Book) -> None:
        """Recompute a book's derived fields from its state, reference prices and rules."""
        r = book.rules
        tick = book.tick
        ref = book.ref_price
        book.band_lo, book.band_hi = band_of(ref, r.band_bps, tick)
        if r.circuit_breaker_bps and book.cb_ref:
            d = book.cb_ref * r.circuit_breaker_bps // BPS
            book.cb_lo, book.cb_hi = book.cb_ref - d, book.cb_ref + d
        else:
            book.cb_lo = book.cb_hi = 0
        cap, floor = band_of(ref, r.collar_bps, tick)[::-1]
        if book.band_hi:
            cap = min(cap, book.band_hi) if cap else book.band_hi
            floor = max(floor, book.band_lo) if floor else book.band_lo
        book.mkt_key = (-cap if cap else _ANY, floor if floor else _ANY)
        book.mkt_reason = R.CANCEL_MARKET_COLLAR if cap else R.CANCEL_MARKET_NO_LIQUIDITY
        if book.state == TS_CONTINUOUS:
            if book.band_hi:
                book.flo, book.fhi = book.band_lo, min(book.band_hi, _SMALL + 1)
            else:
                book.flo, book.fhi = 0, _SMALL + 1
            book.watch = 1 if r.active else 0
        else:
            book.flo, book.fhi = CLOSED_WINDOW
            book.watch = 0

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

    def _settle(self, book: Book, out: list[Event]) -> None:
        """The safeguards' checks after a command in continuous trading (book.watch): the first trade
        sets a missing reference price; a trade beyond the circuit breaker's range halts; the limit
        state follows the best prices."""
        last = book.last_price
        if not book.ref_price and last:
            book.ref_price = book.cb_ref = last
            self._refresh(book)
            self._cancel_through_band(book, out)
        if book.cb_hi and last and not book.cb_lo <= last <= book.cb_hi:
            self._halt(book, CAUSE_CIRCUIT, out)
            return
        if book.band_hi:
            bids = book.keys[BUY]
            asks = book.keys[SELL]
            at_band = bool((bids and bids[-1] >= book.band_hi) or (asks and -asks[-1] <= book.band_lo))
            if at_band and not book.limit_on:
                book.limit_on = 1
                book.limit_since = self.now_ns
                out.append((EV_LIMIT_STATE, book.locate, True, book.band_lo, book.band_hi))
            elif book.limit_on and not at_band:
                book.limit_on = book.limit_since = 0
                out.append((EV_LIMIT_STATE, book.locate, False, book.band_lo, book.band_hi))

    def _cancel_through_band(self, book: Book, out: list[Event]) -> None:
        """Cancel the resting orders priced through the band (after the band moved), by reference."""
        if not book.band_hi:
            return
        victims: list[NewOrder] = []
        keys = book.keys[BUY]
        for k in reversed(keys):
            if k <= book.band_hi:
                break
            victims += book.levels[BUY][k].live()
        keys = book.keys[SELL]
        for k in reversed(keys):
            if -k >= book.band_lo:
                break
            victims += book.levels[SELL][-k].live()
        victims.sort(key=_by_ref)
        for o in victims:
            leaves = o.leaves
            self._unlink(o)
            out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_OUTSIDE_BAND, True))

    def _set_state(self, book: Book, state: int, cause: int, out: list[Event]) -> None:
        """Enter a trading state (timers reset: the caller sets the new state's own)."""
        if book.limit_on and state != TS_CONTINUOUS:
            book.limit_on = book.limit_since = 0
            out.append((EV_LIMIT_STATE, book.locate, False, book.band_lo, book.band_hi))
        book.state = state
        book.cause = cause
        book.deadline_ns = book.next_noii_ns = 0
        self._refresh(book)
        out.append((EV_TRADING_STATE, book.locate, state, cause))

    def _enter_auction(self, book: Book, state: int, cause: int, at: int, out: list[Event]) -> None:
        self._set_state(book, state, cause, out)
        book.next_noii_ns = at  # the first imbalance message at the next tick

    def _halt(self, book: Book, cause: int, out: list[Event]) -> None:
        self._set_state(book, TS_HALTED, cause, out)
        if cause == CAUSE_CIRCUIT and self._rules.circuit_breaker_halt_ns:
            book.deadline_ns = self.now_ns + self._rules.circuit_breaker_halt_ns

    def _pause(self, book: Book, at: int, out: list[Event]) -> None:
        """The limit state lasted too long: LULD trading pause, and the collar it reopens within."""
        self._set_state(book, TS_PAUSED, CAUSE_LULD, out)
        book.deadline_ns = at + self._rules.pause_ns
        out.append((EV_COLLAR, book.locate, book.ref_price, book.band_hi, book.band_lo, 0))

    def _phase(self, t: int) -> int:
        """The schedule's phase at time t."""
        if t < self.pre_open_ns:
            return PH_BEFORE
        if t < self.opening_auction_ns:
            return PH_PRE_OPEN
        if t < self.open_ns:
            return PH_OPENING
        if t < self.closing_auction_ns:
            return PH_CONTINUOUS
        if t < self.close_ns:
            return PH_CLOSING
        return PH_AFTER

    def _reopen(self, book: Book, cause: int, at: int, out: list[Event]) -> None:
        """A halt or pause ends at `at`: into the schedule's phase, or a reopening auction."""
        ph = self._phase(self.now_ns) if self.close_ns and not book.day_done else PH_CONTINUOUS
        if ph == PH_BEFORE:
            self._cancel_collected_market(book, out)
            self._set_state(book, TS_CLOSED, cause, out)
        elif ph == PH_AFTER:
            self._close(book, cause, out)
        elif ph == PH_CONTINUOUS:
            if self._rules.reopen_call_ns:
                self._enter_auction(book, TS_REOPENING_AUCTION, cause, at, out)
                book.deadline_ns = at + self._rules.reopen_call_ns
            else:
                self._open_continuous(book, CROSS_REOPEN, cause, out)
        elif ph == PH_PRE_OPEN:
            self._set_state(book, TS_PRE_OPEN, cause, out)
        else:
            self._enter_auction(book, PHASE_STATE[ph], cause, at, out)

    def _open_continuous(self, book: Book, cross_type: int, cause: int, out: list[Event]) -> None:
        """An auction ends: uncross, then continuous trading from the auction price."""
        price, qty = self._uncross(book, cross_type, out)
        if qty:
            book.ref_price = price
        book.cb_ref = book.ref_price
        self._set_state(book, TS_CONTINUOUS, cause, out)
        self._cancel_through_band(book, out)
        if qty and book.nstops:
            self._queue_stops(book, price, price)
            self._run_stops(book, out)
        if book.watch:
            self._settle(book, out)

    def _close(self, book: Book, cause: int, out: list[Event]) -> None:
        """Close for the day: the closing auction uncrosses; DAY orders expire, GTC orders stay."""
        if book.state == TS_CLOSING_AUCTION:
            self._uncross(book, CROSS_CLOSE, out)
        else:
            self._cancel_collected_market(book, out)
        self._set_state(book, TS_CLOSED, cause, out)
        if book.last_price:  # the next day's reference
            book.ref_price = book.last_price
            self._refresh(book)
        victims = [o for o in self.orders.values() if o.locate == book.locate and o.tif == DAY]
        victims.sort(key=_by_ref)
        for o in victims:
            leaves = o.leaves
            on_book = self._unlink(o)
            out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_EXPIRED, on_book))
            self._ended_as(o, R.TOO_LATE_EXPIRED)
        book.day_done = 1

    def _cancel_collected_market(self, book: Book, out: list[Event]) -> None:
        """Market orders left at the end of a call phase are cancelled, by reference."""
        left = [o for o in book.mkt[BUY] + book.mkt[SELL] if o.leaves]
        left.sort(key=_by_ref)
        for o in left:
            leaves = o.leaves
            o.leaves = 0
            del self.orders[o.order_id]
            out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_MARKET_NO_LIQUIDITY, False))
        book.mkt[BUY].clear()
        book.mkt[SELL].clear()

    def _auction_price(self, book: Book, with_market: bool = True) -> tuple[int, int, int]:
        """(price, executable volume, surplus = demand - supply at it) of an uncross now; (0, 0, 0)
        when nothing can execute. Candidates are the limit prices of the book; the one with the most
        volume, then the least surplus, then by market pressure (buy surplus: the highest, sell
        surplus: the lowest), then the closest to the reference price (the higher of two). With
        market orders only, the reference price."""
        mb = ms = 0
        if with_market:
            mb = sum(o.leaves for o in book.mkt[BUY])
            ms = sum(o.leaves for o in book.mkt[SELL])
        bids = book.levels[BUY]
        asks = book.levels[SELL]
        prices = sorted(set(bids) | set(asks))
        if not prices:
            if mb and ms and book.ref_price:
                return book.ref_price, min(mb, ms), mb - ms
            return 0, 0, 0
        n = len(prices)
        supply = [0] * n
        acc = ms
        for i, p in enumerate(prices):
            lvl = asks.get(p)
            if lvl is not None:
                acc += lvl.total
            supply[i] = acc
        demand = [0] * n
        acc = mb
        for i in range(n - 1, -1, -1):
            lvl = bids.get(prices[i])
            if lvl is not None:
                acc += lvl.total
            demand[i] = acc
        best = 0
        cands: list[int] = []
        for i in range(n):
            v = demand[i] if demand[i] < supply[i] else supply[i]
            if v > best:
                best = v
                cands = [i]
            elif v == best and v:
                cands.append(i)
        if not best:
            return 0, 0, 0
        least = min(abs(demand[i] - supply[i]) for i in cands)
        cands = [i for i in cands if abs(demand[i] - supply[i]) == least]
        if len(cands) > 1:
            if least and all(demand[i] > supply[i] for i in cands):
                cands = [cands[-1]]
            elif least and all(demand[i] < supply[i] for i in cands):
                cands = [cands[0]]
            else:
                ref = book.ref_price
                cands = [min(cands, key=lambda i: (abs(prices[i] - ref), -prices[i]))]
        i = cands[0]
        return prices[i], best, demand[i] - supply[i]

    def _uncross(self, book: Book, cross_type: int, out: list[Event]) -> tuple[int, int]:
        """The auction's trades at one price, market orders first, then price-time priority; its
        cross message; the unexecuted market orders cancelled. Returns (price, volume)."""
        price, volume, _ = self._auction_price(book)
        if volume:
            buys = list(book.mkt[BUY])
            for k in reversed(book.keys[BUY]):
                if k < price:
                    break
                buys += book.levels[BUY][k].live()
            sells = list(book.mkt[SELL])
            for k in reversed(book.keys[SELL]):
                if -k > price:
                    break
                sells += book.levels[SELL][-k].live()
            orders = self.orders
            bid_levels = book.levels[BUY]
            ask_levels = book.levels[SELL]
            match = self.next_match
            i = j = 0
            while i < len(buys) and j < len(sells):
                b = buys[i]
                s = sells[j]
                q = b.leaves if b.leaves < s.leaves else s.leaves
                b.leaves -= q
                b.filled += q
                s.leaves -= q
                s.filled += q
                out.append((EV_CROSS_EXECUTED, b, s, q, price, match, b.leaves, b.filled, s.leaves, s.filled))
                match += 1
                for o, levels in ((b, bid_levels), (s, ask_levels)):
                    if o.ord_type != MARKET:
                        lvl = levels[o.price]
                        lvl.total -= q
                        if not o.leaves:
                            lvl.count -= 1
                    if not o.leaves:
                        del orders[o.order_id]
                if not b.leaves:
                    i += 1
                if not s.leaves:
                    j += 1
            for side, levels in ((BUY, bid_levels), (SELL, ask_levels)):
                for p in [p for p, lvl in levels.items() if not lvl.total]:
                    book.remove_level(side, p)
                for lvl in levels.values():
                    q_ = lvl.orders
                    while q_ and not q_[0].leaves:
                        q_.popleft()
            self.traded_qty += volume
            book.last_price = price
            out.append((EV_UNCROSSED, book.locate, cross_type, price, volume, match))
            self.next_match = match + 1
        else:
            out.append((EV_UNCROSSED, book.locate, cross_type, 0, 0, 0))
        self._cancel_collected_market(book, out)
        return price, volume

    def _noii(self, book: Book, out: list[Event]) -> None:
        """One imbalance message (NOII) of an auction."""
        cross_type = AUCTION_CROSS[book.state]
        price, volume, surplus = self._auction_price(book)
        if not volume:
            out.append((EV_IMBALANCE, book.locate, cross_type, 0, 0, IMBALANCE_NO_PRICE, 0, 0, book.ref_price))
            return
        far = self._auction_price(book, False)[0]
        direction = IMBALANCE_BUY if surplus > 0 else IMBALANCE_SELL if surplus < 0 else IMBALANCE_NONE
        out.append((EV_IMBALANCE, book.locate, cross_type, volume, abs(surplus), direction, far, price,
                    book.ref_price))

    # -- admin commands ---------------------------------------------------------------------------
    def _admin(self, cmd: Command, out: list[Event]) -> None:
        cls = type(cmd)
        if cls is ClockTick:
            if cmd.now_ns < self.now_ns:  # type: ignore[union-attr]
                out.append((EV_REJECTED, cmd, R.ADMIN_CLOCK_BACKWARDS))
                return
            self._tick(cmd.now_ns, out)  # type: ignore[union-attr]
        elif cls is SetSchedule:
            times = cmd.times()  # type: ignore[union-attr]
            if any(times) and (times[0] <= 0 or list(times) != sorted(times)):
                out.append((EV_REJECTED, cmd, R.ADMIN_INVALID_SCHEDULE))
                return
            (self.pre_open_ns, self.opening_auction_ns, self.open_ns, self.closing_auction_ns,
             self.close_ns) = times
            self.market_phase = 0
            for book in self.book_list:
                book.day_done = 0
        elif cls is Halt or cls is Resume or cls is Close:
            locate = cmd.locate  # type: ignore[union-attr]
            if locate == ALL_INSTRUMENTS:
                if cls is Halt:
                    out.append((EV_MARKET_EVENT, MARKET_HALT))
                for book in self.book_list:
                    if cls is Halt and book.state not in (TS_CLOSED, TS_HALTED):
                        self._halt(book, CAUSE_MARKET, out)
                    elif cls is Resume and book.state in (TS_HALTED, TS_PAUSED):
                        self._reopen(book, CAUSE_MARKET, self.now_ns, out)
                    elif cls is Close and book.state != TS_CLOSED:
                        self._close(book, CAUSE_ADMIN, out)
                return
            found = self.books[locate] if 0 < locate < len(self.books) else None
            if found is None:
                out.append((EV_REJECTED, cmd, R.UNKNOWN_INSTRUMENT))
                return
            book = found
            state = book.state
            if cls is Halt:
                if state == TS_CLOSED or state == TS_HALTED:
                    out.append((EV_REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
                    return
                self._halt(book, CAUSE_ADMIN, out)
            elif cls is Resume:
                if state != TS_HALTED and state != TS_PAUSED:
                    out.append((EV_REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
                    return
                self._reopen(book, CAUSE_ADMIN, self.now_ns, out)
            else:
                if state == TS_CLOSED:
                    out.append((EV_REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
                    return
                self._close(book, CAUSE_ADMIN, out)
        else:
            out.append((EV_REJECTED, cmd, R.ADMIN_UNKNOWN_COMMAND))

    def _tick(self, t: int, out: list[Event]) -> None:
        """The clock moves to t: market-wide events, then per instrument (ascending stock locate) its
        timers and schedule transitions until none is due, then its imbalance message if due."""
        self.now_ns = t
        scheduled = self.close_ns != 0
        if scheduled:
            if self.market_phase < 1 and t >= self.pre_open_ns:
                self.market_phase = 1
                out.append((EV_MARKET_EVENT, MARKET_SYSTEM_HOURS))
            if self.market_phase < 2 and t >= self.open_ns:
                self.market_phase = 2
                out.append((EV_MARKET_EVENT, MARKET_OPEN))
        rules = self._rules
        for book in self.book_list:
            for _ in range(MAX_TRANSITIONS_PER_TICK):
                state = book.state
                if state == TS_CONTINUOUS:
                    if book.limit_on and t >= book.limit_since + rules.limit_state_ns:
                        self._pause(book, book.limit_since + rules.limit_state_ns, out)
                        continue
                elif state == TS_PAUSED or (state == TS_HALTED and book.deadline_ns):
                    if t >= book.deadline_ns:
                        self._reopen(book, book.cause, book.deadline_ns, out)
                        continue
                elif state == TS_REOPENING_AUCTION:
                    if t >= book.deadline_ns:
                        self._open_continuous(book, CROSS_REOPEN, book.cause, out)
                        continue
                if scheduled and not book.day_done and self._schedule_step(book, t, out):
                    continue
                break
            if book.state in AUCTION_STATES and rules.noii_interval_ns and t >= book.next_noii_ns:
                self._noii(book, out)
                step = rules.noii_interval_ns
                book.next_noii_ns += step * ((t - book.next_noii_ns) // step + 1)
        if scheduled and self.market_phase < 3 and t >= self.close_ns:
            self.market_phase = 3
            out.append((EV_MARKET_EVENT, MARKET_CLOSE))

    def _schedule_step(self, book: Book, t: int, out: list[Event]) -> bool:
        """One transition towards the schedule's phase at t, if one is due; halts, pauses and
        reopening auctions wait for their own end (the close excepted)."""
        ph = self._phase(t)
        state = book.state
        if ph == PH_AFTER:
            if state == TS_CLOSED:
                return False
            self._close(book, CAUSE_SCHEDULE, out)
        elif state == TS_CLOSED and ph >= PH_PRE_OPEN:
            self._set_state(book, TS_PRE_OPEN, CAUSE_SCHEDULE, out)
        elif state == TS_PRE_OPEN and ph >= PH_OPENING:
            self._enter_auction(book, TS_OPENING_AUCTION, CAUSE_SCHEDULE, t, out)
        elif state == TS_OPENING_AUCTION and ph >= PH_CONTINUOUS:
            self._open_continuous(book, CROSS_OPEN, CAUSE_SCHEDULE, out)
        elif state == TS_CONTINUOUS and ph == PH_CLOSING:
            self._enter_auction(book, TS_CLOSING_AUCTION, CAUSE_SCHEDULE, t, out)
        else:
            return False
        return True

    def next_deadline_ns(self) -> int | None:
        """The earliest time after the clock at which a ClockTick would change something (a schedule
        time, a timer, an imbalance message), or None. The partition injects a tick when it passes."""
        now = self.now_ns
        times: list[int] = []
        if self.close_ns:
            times += [x for x in (self.pre_open_ns, self.opening_auction_ns, self.open_ns,
                                  self.closing_auction_ns, self.close_ns) if x > now]
        rules = self._rules
        for book in self.book_list:
            if book.limit_on:
                times.append(book.limit_since + rules.limit_state_ns)
            if book.deadline_ns:
                times.append(book.deadline_ns)
            if book.state in AUCTION_STATES and rules.noii_interval_ns:
                times.append(book.next_noii_ns)
        return max(min(times), now) if times else None

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

    def _check_trading(self, book: Book, fail: Any, seen: set[int]) -> None:
        """The trading-state invariants of one book (check_invariants)."""
        name = book.instrument.symbol
        derived = (book.flo, book.fhi, book.watch, book.mkt_key, book.mkt_reason, book.band_lo, book.band_hi,
                   book.cb_lo, book.cb_hi)
        self._refresh(book)
        if derived != (book.flo, book.fhi, book.watch, book.mkt_key, book.mkt_reason, book.band_lo,
                       book.band_hi, book.cb_lo, book.cb_hi):
            fail(f"{name}: derived trading fields are stale")
        for side in (BUY, SELL):
            for o in book.mkt[side]:
                if book.state not in CALL_STATES:
                    fail(f"{name}: a market order is collected outside a call phase")
                if self.orders.get(o.order_id) is not o or o.ord_type != MARKET or o.side != side or o.leaves <= 0:
                    fail(f"{name}: collected market order {o.order_id} inconsistent")
                seen.add(o.order_id)
        if book.state == TS_CONTINUOUS:
            if book.band_hi and (book.best_bid() > book.band_hi or
                                 (book.keys[SELL] and book.best_ask() < book.band_lo)):
                fail(f"{name}: an order rests through the band in continuous trading")
            if book.band_hi:
                at_band = book.best_bid() >= book.band_hi or (book.keys[SELL] and book.best_ask() <= book.band_lo)
                if bool(at_band) != bool(book.limit_on):
                    fail(f"{name}: limit state {book.limit_on} but at the band: {bool(at_band)}")
        elif book.limit_on:
            fail(f"{name}: limit state outside continuous trading")


def _by_ref(o: NewOrder) -> int:
    return o.ref


def _first(t: tuple[int, NewOrder, int]) -> int:
    return t[0]
