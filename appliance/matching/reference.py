"""The naive reference engine: docs/matching.md written as plainly as possible, to be an oracle.

Owned by whichever test thread built it (single writer). Same interface and events as
appliance.matching.engine.Engine; written from the rules document, not from the fast engine, and
slow on purpose: no price levels, no index, no lazy deletion. Per instrument it keeps

    resting: [order, ...]   every live resting order of both sides, in arrival order at the book
    stops:   [order, ...]   every pending stop order of both sides, in arrival order
    market:  [order, ...]   market orders collected in a call phase, both sides, in arrival order
    last:    int            last trade price (0: no trade yet)
    state, cause, ref, cb_ref, limit_on, limit_since, deadline, next_noii, day_done: the trading state

Priority is recomputed whenever it is needed with a stable sort on price alone, so "time priority
within a price" is simply the list order: an order that (re)enters the book is appended, an in-place
replace leaves it where it is. Lookups scan the lists. Bands, collars and breaker ranges are computed
from the reference prices whenever they are needed; an auction's price is found by evaluating every
candidate price; the safeguards' checks run on every instrument after every command.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from appliance import reasons as R
from appliance.catalogue import (
    ALL_INSTRUMENTS,
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
    Ev,
    Event,
    Halt,
    MassCancel,
    NewOrder,
    ReplaceOrder,
    Resume,
    SetSchedule,
)
from appliance.matching.rules import RECALL_REFS, TradingRules
from appliance.matching.statehash import StateView, state_hash
from appliance.model import (
    CAUSE_ADMIN,
    CAUSE_CIRCUIT,
    CAUSE_LULD,
    CAUSE_MARKET,
    CAUSE_SCHEDULE,
    CROSS_CLOSE,
    CROSS_OPEN,
    CROSS_REOPEN,
    IMBALANCE_BUY,
    IMBALANCE_NO_PRICE,
    IMBALANCE_NONE,
    IMBALANCE_SELL,
    MARKET_CLOSE,
    MARKET_HALT,
    MARKET_OPEN,
    MARKET_SYSTEM_HOURS,
    TS_CLOSED,
    TS_CLOSING_AUCTION,
    TS_CONTINUOUS,
    TS_HALTED,
    TS_OPENING_AUCTION,
    TS_PAUSED,
    TS_PRE_OPEN,
    TS_REOPENING_AUCTION,
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

_STOP_TYPES = (STOP, STOP_LIMIT)
_PRICED_TYPES = (LIMIT, STOP_LIMIT)


class ReferenceInvariantError(AssertionError):
    """The reference engine's state is inconsistent."""


_AUCTIONS = {TS_OPENING_AUCTION: CROSS_OPEN, TS_CLOSING_AUCTION: CROSS_CLOSE, TS_REOPENING_AUCTION: CROSS_REOPEN}


class _Instrument:
    """One instrument's state in the reference engine."""

    def __init__(self, instrument: Instrument, rules: TradingRules) -> None:
        self.instrument = instrument
        self.resting: list[NewOrder] = []
        self.stops: list[NewOrder] = []
        self.market: list[NewOrder] = []
        self.last = 0
        self.rules = rules.for_locate(instrument.locate)
        self.state = rules.start_state
        self.cause = CAUSE_SCHEDULE
        self.ref = self.rules.reference_price
        self.cb_ref = self.ref
        self.limit_on = 0
        self.limit_since = 0
        self.deadline = 0
        self.next_noii = 0
        self.day_done = 0

    def range_of(self, ref: int, bps: int) -> tuple[int, int]:
        """Prices from ref - bps to ref + bps (basis points), on tick and inside; (0, 0): none."""
        if ref == 0 or bps == 0:
            return 0, 0
        tick = self.instrument.tick
        d = ref * bps // 10000
        lo = ref - d
        while lo % tick != 0:
            lo += 1
        hi = ref + d
        while hi % tick != 0:
            hi -= 1
        return max(lo, tick), hi

    def band(self) -> tuple[int, int]:
        return self.range_of(self.ref, self.rules.band_bps)

    def through_band(self, side: int, price: int) -> bool:
        lo, hi = self.band()
        if hi == 0:
            return False
        return price > hi if side == BUY else price < lo

    def market_limit(self, side: int) -> int:
        """The price a market order of `side` may trade at in continuous trading (its collar, inside
        the band); 0: no limit."""
        lo, hi = self.band()
        clo, chi = self.range_of(self.ref, self.rules.collar_bps)
        if side == BUY:
            caps = [x for x in (hi, chi) if x]
            return min(caps) if caps else 0
        floors = [x for x in (lo, clo) if x]
        return max(floors) if floors else 0


def _priority(o: NewOrder) -> int:
    """Sort key for one side of the book: better prices first (the sort is stable: arrival next)."""
    return -o.price if o.side == BUY else o.price


def _ref(o: NewOrder) -> int:
    return o.ref


def _stop_price(o: NewOrder) -> int:
    return o.stop_price


class ReferenceEngine:
    """A slow, obviously correct matching engine over a few instruments (tests only)."""

    def __init__(
        self,
        instruments: Iterable[Instrument],
        firm_stp: Mapping[int, int] | None = None,
        default_stp: int = STP_CN,
        rules: TradingRules | None = None,
    ) -> None:
        self.rules = rules or TradingRules()
        self.instruments: dict[int, _Instrument] = {}
        for ins in instruments:
            if ins.locate in self.instruments:
                raise ValueError(f"stock locate {ins.locate} is used twice")
            self.instruments[ins.locate] = _Instrument(ins, self.rules)
        for mode in list(dict(firm_stp or {}).values()) + [default_stp]:
            if mode not in (STP_NONE, STP_CN, STP_CO, STP_DC):
                raise ValueError(f"self-trade prevention mode {mode} is not CN/CO/DC/none")
        self.firm_stp = dict(firm_stp or {})
        self.default_stp = default_stp
        self.next_ref = 1
        self.next_match = 1
        self.now = 0
        self.schedule = (0, 0, 0, 0, 0)  # pre-open, opening auction, open, closing auction, close
        self.market_phase = 0
        self.ended: dict[int, tuple[int, int, int]] = {}  # order id -> (TOO_LATE_*, ref, firm)

    # ============================================================================================
    # apply
    # ============================================================================================
    def apply(self, cmd: Command, out: list[Event]) -> None:
        start = len(out)
        self._apply(cmd, out)
        # How orders ended, from the events themselves: a cancel or replace that comes later is
        # "too late" rather than "unknown" (docs/matching.md, Cancel).
        # Only the latest order accepted with an id counts.
        for ev in out[start:]:
            kind = ev[0]
            if kind == Ev.ACCEPTED:
                self.ended.pop(ev[1].order_id, None)
            elif kind == Ev.CANCELLED and ev[3] == 0:
                reason = R.TOO_LATE_EXPIRED if ev[5] == R.CANCEL_EXPIRED else R.TOO_LATE_CANCELLED
                self.ended[ev[1].order_id] = (reason, ev[1].ref, ev[1].firm)
            elif kind == Ev.EXECUTED or kind == Ev.CROSS_EXECUTED:
                for order, leaves in ((ev[1], ev[6]), (ev[2], ev[8])):
                    if leaves == 0:
                        self.ended[order.order_id] = (R.TOO_LATE_FILLED, order.ref, order.firm)

    def _too_late(self, order_id: int, firm: int) -> int:
        """The reject reason of a cancel or replace whose order is not live (or not this firm's)."""
        ended = self.ended.get(order_id)
        if ended is None:
            return R.UNKNOWN_ORDER
        reason, ref, ended_firm = ended
        if ended_firm != firm or ref < self.next_ref - RECALL_REFS:
            return R.UNKNOWN_ORDER
        return reason

    def _apply(self, cmd: Command, out: list[Event]) -> None:
        if isinstance(cmd, NewOrder):
            self._new_order(cmd, out)
        elif isinstance(cmd, CancelOrder):
            self._cancel(cmd, out)
        elif isinstance(cmd, ReplaceOrder):
            self._replace(cmd, out)
        elif isinstance(cmd, MassCancel):
            self._mass_cancel(cmd, out)
        elif isinstance(cmd, ClockTick):
            self._clock_tick(cmd, out)
        elif isinstance(cmd, SetSchedule):
            self._set_schedule(cmd, out)
        elif isinstance(cmd, (Halt, Resume, Close)):
            self._admin(cmd, out)
        else:
            out.append((Ev.REJECTED, cmd, R.ADMIN_UNKNOWN_COMMAND))
        # The safeguards' checks, on every instrument trading continuously with safeguards.
        for locate in sorted(self.instruments):
            ins = self.instruments[locate]
            if ins.state == TS_CONTINUOUS and ins.rules.active:
                self._settle(ins, out)

    # -- lookups --------------------------------------------------------------------------------
    def _live_orders(self) -> list[NewOrder]:
        return [o for ins in self.instruments.values() for o in ins.resting + ins.stops + ins.market]

    def _find(self, order_id: int) -> NewOrder | None:
        for o in self._live_orders():
            if o.order_id == order_id:
                return o
        return None

    def _is_pending_stop(self, o: NewOrder) -> bool:
        return any(s is o for s in self.instruments[o.locate].stops)

    def _remove(self, o: NewOrder) -> bool:
        """Take a live order off the book or out of the pending stops; True if it was resting."""
        ins = self.instruments[o.locate]
        for i, x in enumerate(ins.resting):
            if x is o:
                del ins.resting[i]
                return True
        for i, x in enumerate(ins.stops):
            if x is o:
                del ins.stops[i]
                return False
        for i, x in enumerate(ins.market):
            if x is o:
                del ins.market[i]
                return False
        raise ReferenceInvariantError(f"order {o.order_id} is not live")

    # -- validation -------------------------------------------------------------------------------
    def _validate(self, o: NewOrder) -> int:
        """The table of docs/matching.md, top to bottom: the first failing check's reason, or 0."""
        ins = self.instruments.get(o.locate)
        if ins is None:
            return R.UNKNOWN_INSTRUMENT
        tick = ins.instrument.tick
        if o.side not in (BUY, SELL):
            return R.INVALID_SIDE
        if not 1 <= o.qty <= MAX_QTY:
            return R.INVALID_QUANTITY
        if o.ord_type not in (MARKET, LIMIT, STOP, STOP_LIMIT):
            return R.INVALID_ORDER_TYPE
        if o.tif not in (DAY, GTC, IOC, FOK):
            return R.INVALID_TIME_IN_FORCE
        if o.stp not in (STP_DEFAULT, STP_NONE, STP_CN, STP_CO, STP_DC):
            return R.INVALID_STP_MODE
        if o.ord_type in _PRICED_TYPES and not 1 <= o.price <= MAX_PRICE:
            return R.INVALID_PRICE
        if o.ord_type in _PRICED_TYPES and o.price % tick != 0:
            return R.PRICE_OFF_TICK
        if o.ord_type in (MARKET, STOP) and o.price != 0:
            return R.INVALID_ORDER_TYPE
        if o.ord_type in _STOP_TYPES and not (1 <= o.stop_price <= MAX_PRICE and o.stop_price % tick == 0):
            return R.INVALID_STOP_PRICE
        if o.ord_type in (MARKET, LIMIT) and o.stop_price != 0:
            return R.INVALID_STOP_PRICE
        if o.post_only and o.ord_type != LIMIT:
            return R.INVALID_ORDER_TYPE
        if o.post_only and o.tif not in (DAY, GTC):
            return R.INVALID_TIME_IN_FORCE
        if self._find(o.order_id) is not None:
            return R.DUPLICATE_ORDER_ID
        if ins.state == TS_CLOSED:
            return R.INSTRUMENT_CLOSED
        if ins.state != TS_CONTINUOUS and o.tif in (IOC, FOK):
            return R.TIF_NOT_ALLOWED_IN_STATE
        if o.ord_type in _PRICED_TYPES and ins.through_band(o.side, o.price):
            return R.PRICE_OUTSIDE_BAND
        return 0

    # -- new order --------------------------------------------------------------------------------
    def _new_order(self, o: NewOrder, out: list[Event]) -> None:
        reason = self._validate(o)
        if reason:
            out.append((Ev.REJECTED, o, reason))
            return
        ins = self.instruments[o.locate]
        if o.post_only and ins.state == TS_CONTINUOUS:
            price = self._post_only_price(ins, o.side, o.price)
            if not price:
                out.append((Ev.REJECTED, o, R.POST_ONLY_WOULD_TAKE))
                return
            o.price = price
        o.ref = self._take_ref()
        o.leaves = o.qty
        o.filled = 0
        out.append((Ev.ACCEPTED, o, o.qty))
        if ins.state != TS_CONTINUOUS:
            # A call phase: orders are collected, nothing matches.
            if o.ord_type in _STOP_TYPES:
                ins.stops.append(o)
            elif o.ord_type == MARKET:
                ins.market.append(o)
            else:
                ins.resting.append(o)
                out.append((Ev.ADDED, o, o.leaves))
            return
        if o.ord_type in _STOP_TYPES:
            if ins.last and self._stop_reached(o, ins.last):
                out.append((Ev.STOP_TRIGGERED, o, ins.last))
            else:
                ins.stops.append(o)
                return
        self._aggress_then_stops(ins, o, out)

    @staticmethod
    def _post_only_price(ins: _Instrument, side: int, price: int) -> int:
        """docs/matching.md, "Post-only": the price a post-only order may rest at, 0 if none."""
        others = [m.price for m in ins.resting if m.side != side]
        if not others:
            return price
        best = min(others) if side == BUY else max(others)
        crosses = price >= best if side == BUY else price <= best
        if not crosses:
            return price
        if not ins.rules.post_only_reprice:
            return 0
        tick = ins.instrument.tick
        if side == BUY:
            return best - tick if best - tick > 0 else 0
        return best + tick

    def _take_ref(self) -> int:
        ref = self.next_ref
        self.next_ref += 1
        return ref

    @staticmethod
    def _stop_reached(o: NewOrder, price: int) -> bool:
        return price >= o.stop_price if o.side == BUY else price <= o.stop_price

    def _stp_mode(self, o: NewOrder) -> int:
        if o.stp != STP_DEFAULT:
            return o.stp
        return self.firm_stp.get(o.firm, self.default_stp)

    def _crosses(self, o: NewOrder, m: NewOrder) -> bool:
        """Does incoming order o cross resting order m (of the opposite side)?"""
        if o.ord_type in (MARKET, STOP):
            limit = self.instruments[o.locate].market_limit(o.side)
            if limit == 0:
                return True
            return m.price <= limit if o.side == BUY else m.price >= limit
        return m.price <= o.price if o.side == BUY else m.price >= o.price

    def _crossing(self, ins: _Instrument, o: NewOrder) -> list[NewOrder]:
        """The opposite orders o crosses, best price first, oldest first."""
        opposite = [m for m in ins.resting if m.side != o.side and self._crosses(o, m)]
        return sorted(opposite, key=_priority)

    def _fok_can_fill(self, o: NewOrder, crossing: list[NewOrder], mode: int) -> bool:
        need = o.leaves
        for m in crossing:
            if need <= 0:
                break
            if mode != STP_NONE and m.firm == o.firm:
                if mode == STP_CO:
                    continue
                return False
            need -= m.leaves
        return need <= 0

    def _aggress(self, ins: _Instrument, o: NewOrder, out: list[Event]) -> list[int]:
        """Steps 3 and 4 for one order: match, then rest or cancel the remainder. Returns trade prices."""
        crossing = self._crossing(ins, o)
        mode = self._stp_mode(o)
        if o.tif == FOK and not self._fok_can_fill(o, crossing, mode):
            out.append((Ev.CANCELLED, o, o.leaves, 0, 0, R.CANCEL_FOK, False))
            o.leaves = 0
            return []
        prices: list[int] = []
        stopped_by_stp = False
        for m in crossing:
            if o.leaves == 0:
                break
            if mode != STP_NONE and m.firm == o.firm:
                if mode == STP_CN:
                    stopped_by_stp = True
                    break
                if mode == STP_CO:
                    out.append((Ev.CANCELLED, m, m.leaves, 0, m.filled, R.CANCEL_STP, True))
                    m.leaves = 0
                    self._remove(m)
                    continue
                # DC: both lose the overlap. Cancelled shares leave the order quantity too, so that
                # leaves + filled = qty holds for the survivor (docs/matching.md, invariants).
                d = min(m.leaves, o.leaves)
                m.leaves -= d
                m.qty -= d
                o.leaves -= d
                o.qty -= d
                out.append((Ev.CANCELLED, m, d, m.leaves, m.filled, R.CANCEL_STP, True))
                out.append((Ev.CANCELLED, o, d, o.leaves, o.filled, R.CANCEL_STP, False))
                if m.leaves == 0:
                    self._remove(m)
                continue
            q = min(m.leaves, o.leaves)
            m.leaves -= q
            m.filled += q
            o.leaves -= q
            o.filled += q
            out.append((Ev.EXECUTED, m, o, q, m.price, self.next_match,
                        m.leaves, m.filled, o.leaves, o.filled))
            self.next_match += 1
            prices.append(m.price)
            if m.leaves == 0:
                self._remove(m)
        if prices:
            ins.last = prices[-1]
        remainder = o.leaves
        if remainder > 0:
            if stopped_by_stp:
                reason = R.CANCEL_STP
            elif o.ord_type in (MARKET, STOP):
                if ins.market_limit(o.side):
                    reason = R.CANCEL_MARKET_COLLAR
                else:
                    reason = R.CANCEL_MARKET_NO_LIQUIDITY
            elif o.tif in (IOC, FOK):
                reason = R.CANCEL_IOC_REMAINDER
            else:
                ins.resting.append(o)
                out.append((Ev.ADDED, o, remainder))
                return prices
            o.leaves = 0
            out.append((Ev.CANCELLED, o, remainder, 0, o.filled, reason, False))
        return prices

    def _triggered_by(self, ins: _Instrument, prices: list[int]) -> list[tuple[NewOrder, int]]:
        """Take the pending stops that trades at `prices` trigger, in ascending reference order."""
        if not prices:
            return []
        hi, lo = max(prices), min(prices)
        fired = []
        for s in sorted(ins.stops, key=_ref):
            if s.side == BUY and s.stop_price <= hi:
                fired.append((s, hi))
            elif s.side == SELL and s.stop_price >= lo:
                fired.append((s, lo))
        for s, _ in fired:
            ins.stops.remove(s)
        return fired

    def _aggress_then_stops(self, ins: _Instrument, o: NewOrder, out: list[Event]) -> None:
        """Step 3-4 for o, then step 5: triggered stops one by one, cascades at the queue's end."""
        queue = self._triggered_by(ins, self._aggress(ins, o, out))
        while queue:
            s, price = queue.pop(0)
            out.append((Ev.STOP_TRIGGERED, s, price))
            if s.ord_type == STOP_LIMIT and ins.through_band(s.side, s.price):
                out.append((Ev.CANCELLED, s, s.leaves, 0, s.filled, R.CANCEL_OUTSIDE_BAND, False))
                s.leaves = 0
                continue
            queue += self._triggered_by(ins, self._aggress(ins, s, out))

    # -- cancel -----------------------------------------------------------------------------------
    def _cancel(self, c: CancelOrder, out: list[Event]) -> None:
        o = self._find(c.order_id)
        if o is None or o.firm != c.firm:
            out.append((Ev.REJECTED, c, self._too_late(c.order_id, c.firm)))
            return
        leaves = o.leaves
        on_book = self._remove(o)
        o.leaves = 0
        out.append((Ev.CANCELLED, o, leaves, 0, o.filled, R.CANCEL_USER, on_book))

    # -- replace ----------------------------------------------------------------------------------
    def _check_replace(self, r: ReplaceOrder, o: NewOrder | None) -> int:
        if o is None or o.firm != r.firm:
            return self._too_late(r.order_id, r.firm)
        ins = self.instruments[o.locate]
        if ins.state == TS_CLOSED:
            return R.INSTRUMENT_CLOSED
        if any(x is o for x in ins.market):
            return R.REPLACE_NOT_ALLOWED
        tick = ins.instrument.tick
        if not 1 <= r.qty <= MAX_QTY:
            return R.INVALID_QUANTITY
        if r.qty <= o.filled:
            return R.REPLACE_BELOW_FILLED
        if o.ord_type in (STOP, MARKET):
            if r.price != 0:
                return R.INVALID_PRICE
        else:
            if not 1 <= r.price <= MAX_PRICE:
                return R.INVALID_PRICE
            if r.price % tick != 0:
                return R.PRICE_OFF_TICK
            if ins.through_band(o.side, r.price):
                return R.PRICE_OUTSIDE_BAND
        if r.stop_price != 0:
            if not self._is_pending_stop(o):
                return R.INVALID_STOP_PRICE
            if not (1 <= r.stop_price <= MAX_PRICE and r.stop_price % tick == 0):
                return R.INVALID_STOP_PRICE
        return 0

    def _replace(self, r: ReplaceOrder, out: list[Event]) -> None:
        o = self._find(r.order_id)
        reason = self._check_replace(r, o)
        if reason:
            out.append((Ev.REJECTED, r, reason))
            return
        assert o is not None
        ins = self.instruments[o.locate]
        price = r.price
        if o.post_only and ins.state == TS_CONTINUOUS:
            price = self._post_only_price(ins, o.side, price)
            if not price:
                out.append((Ev.REJECTED, r, R.POST_ONLY_WOULD_TAKE))
                return
        pending = self._is_pending_stop(o)
        new_stop = r.stop_price if r.stop_price != 0 else o.stop_price
        old_leaves = o.leaves
        new_leaves = r.qty - o.filled
        if price == o.price and new_stop == o.stop_price and r.qty <= o.qty:
            o.qty = r.qty
            o.leaves = new_leaves
            if r.cl_ord_id:
                o.cl_ord_id = r.cl_ord_id
            action = REPL_HIDDEN if pending else REPL_IN_PLACE
            out.append((Ev.REPLACED, o, o, old_leaves, new_leaves, o.filled, action, r))
            return
        self._remove(o)
        o.leaves = 0
        n = NewOrder(
            order_id=o.order_id,
            locate=o.locate,
            side=o.side,
            qty=r.qty,
            price=price,
            ord_type=o.ord_type,
            tif=o.tif,
            stop_price=new_stop,
            firm=o.firm,
            session=o.session,
            account=o.account,
            cl_ord_id=r.cl_ord_id if r.cl_ord_id else o.cl_ord_id,
            mpid=o.mpid,
            stp=o.stp,
            post_only=o.post_only,
        )
        n.ref = self._take_ref()
        n.filled = o.filled
        n.leaves = new_leaves
        if pending:
            ins.stops.append(n)
            out.append((Ev.REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_HIDDEN, r))
        elif ins.state != TS_CONTINUOUS or not self._crossing(ins, n):
            ins.resting.append(n)
            out.append((Ev.REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_REPOST, r))
        else:
            out.append((Ev.REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_REMOVE, r))
            self._aggress_then_stops(ins, n, out)

    # -- mass cancel ------------------------------------------------------------------------------
    def _mass_cancel(self, c: MassCancel, out: list[Event]) -> None:
        victims = [
            o for o in self._live_orders()
            if o.firm == c.firm
            and (c.locate == MASS_ANY_INSTRUMENT or o.locate == c.locate)
            and (c.side == MASS_ANY_SIDE or o.side == c.side)
        ]
        victims.sort(key=_ref)
        for o in victims:
            leaves = o.leaves
            on_book = self._remove(o)
            o.leaves = 0
            out.append((Ev.CANCELLED, o, leaves, 0, o.filled, R.CANCEL_MASS, on_book))
        out.append((Ev.MASS_CANCELLED, c, len(victims)))

    # ============================================================================================
    # trading states, safeguards, auctions (docs/matching.md)
    # ============================================================================================
    def _settle(self, ins: _Instrument, out: list[Event]) -> None:
        """The safeguards' checks of a continuously trading instrument: a missing reference comes
        from the last trade; a last trade beyond the breaker's range halts; the limit state."""
        if ins.ref == 0 and ins.last != 0:
            ins.ref = ins.last
            ins.cb_ref = ins.last
            self._cancel_through_band(ins, out)
        lo, hi = ins.range_of(ins.cb_ref, ins.rules.circuit_breaker_bps)
        if hi != 0 and ins.last != 0 and not lo <= ins.last <= hi:
            self._halt(ins, CAUSE_CIRCUIT, out)
            return
        lo, hi = ins.band()
        if hi == 0:
            return
        bids, asks = self.bids(ins.instrument.locate), self.asks(ins.instrument.locate)
        at_band = (len(bids) > 0 and bids[0].price >= hi) or (len(asks) > 0 and asks[0].price <= lo)
        if at_band and not ins.limit_on:
            ins.limit_on = 1
            ins.limit_since = self.now
            out.append((Ev.LIMIT_STATE, ins.instrument.locate, True, lo, hi))
        elif not at_band and ins.limit_on:
            ins.limit_on = 0
            ins.limit_since = 0
            out.append((Ev.LIMIT_STATE, ins.instrument.locate, False, lo, hi))

    def _cancel_through_band(self, ins: _Instrument, out: list[Event]) -> None:
        for o in sorted([o for o in ins.resting if ins.through_band(o.side, o.price)], key=_ref):
            leaves = o.leaves
            self._remove(o)
            o.leaves = 0
            out.append((Ev.CANCELLED, o, leaves, 0, o.filled, R.CANCEL_OUTSIDE_BAND, True))

    def _set_state(self, ins: _Instrument, state: int, cause: int, out: list[Event]) -> None:
        if ins.limit_on and state != TS_CONTINUOUS:
            lo, hi = ins.band()
            ins.limit_on = 0
            ins.limit_since = 0
            out.append((Ev.LIMIT_STATE, ins.instrument.locate, False, lo, hi))
        ins.state = state
        ins.cause = cause
        ins.deadline = 0
        ins.next_noii = 0
        out.append((Ev.TRADING_STATE, ins.instrument.locate, state, cause))

    def _halt(self, ins: _Instrument, cause: int, out: list[Event]) -> None:
        self._set_state(ins, TS_HALTED, cause, out)
        if cause == CAUSE_CIRCUIT and self.rules.circuit_breaker_halt_ns > 0:
            ins.deadline = self.now + self.rules.circuit_breaker_halt_ns

    def _phase(self) -> int:
        """Which state the schedule wants now: -1 before the pre-open, TS_CLOSED after the close."""
        pre_open, opening_auction, open_, closing_auction, close = self.schedule
        t = self.now
        if t < pre_open:
            return -1
        if t < opening_auction:
            return TS_PRE_OPEN
        if t < open_:
            return TS_OPENING_AUCTION
        if t < closing_auction:
            return TS_CONTINUOUS
        if t < close:
            return TS_CLOSING_AUCTION
        return TS_CLOSED

    def _reopen(self, ins: _Instrument, cause: int, at: int, out: list[Event]) -> None:
        """The end of a halt or pause, at time `at`."""
        if self.schedule[4] != 0 and not ins.day_done:
            phase = self._phase()
        else:
            phase = TS_CONTINUOUS
        if phase == -1:
            self._cancel_market_orders(ins, out)
            self._set_state(ins, TS_CLOSED, cause, out)
        elif phase == TS_CLOSED:
            self._close(ins, cause, out)
        elif phase == TS_CONTINUOUS:
            if self.rules.reopen_call_ns > 0:
                self._set_state(ins, TS_REOPENING_AUCTION, cause, out)
                ins.deadline = at + self.rules.reopen_call_ns
                ins.next_noii = at
            else:
                self._open_continuous(ins, CROSS_REOPEN, cause, out)
        else:
            self._set_state(ins, phase, cause, out)
            if phase != TS_PRE_OPEN:
                ins.next_noii = at

    def _open_continuous(self, ins: _Instrument, cross_type: int, cause: int, out: list[Event]) -> None:
        price, qty = self._uncross(ins, cross_type, out)
        if qty > 0:
            ins.ref = price
        ins.cb_ref = ins.ref
        self._set_state(ins, TS_CONTINUOUS, cause, out)
        self._cancel_through_band(ins, out)
        if qty > 0:
            queue = self._triggered_by(ins, [price])
            while queue:
                s, trigger = queue.pop(0)
                out.append((Ev.STOP_TRIGGERED, s, trigger))
                if s.ord_type == STOP_LIMIT and ins.through_band(s.side, s.price):
                    out.append((Ev.CANCELLED, s, s.leaves, 0, s.filled, R.CANCEL_OUTSIDE_BAND, False))
                    s.leaves = 0
                    continue
                queue += self._triggered_by(ins, self._aggress(ins, s, out))
        if ins.rules.active:
            self._settle(ins, out)

    def _close(self, ins: _Instrument, cause: int, out: list[Event]) -> None:
        if ins.state == TS_CLOSING_AUCTION:
            self._uncross(ins, CROSS_CLOSE, out)
        else:
            self._cancel_market_orders(ins, out)
        self._set_state(ins, TS_CLOSED, cause, out)
        if ins.last != 0:
            ins.ref = ins.last
        for o in sorted([o for o in ins.resting + ins.stops if o.tif == DAY], key=_ref):
            leaves = o.leaves
            on_book = self._remove(o)
            o.leaves = 0
            out.append((Ev.CANCELLED, o, leaves, 0, o.filled, R.CANCEL_EXPIRED, on_book))
        ins.day_done = 1

    def _cancel_market_orders(self, ins: _Instrument, out: list[Event]) -> None:
        for o in sorted(ins.market, key=_ref):
            out.append((Ev.CANCELLED, o, o.leaves, 0, o.filled, R.CANCEL_MARKET_NO_LIQUIDITY, False))
            o.leaves = 0
        ins.market = []

    def _auction_price(self, ins: _Instrument, with_market: bool = True) -> tuple[int, int, int]:
        """Every candidate price evaluated: (price, volume, demand - supply), or (0, 0, 0)."""
        market_buy = sum(o.leaves for o in ins.market if o.side == BUY) if with_market else 0
        market_sell = sum(o.leaves for o in ins.market if o.side == SELL) if with_market else 0
        prices = sorted({o.price for o in ins.resting})
        if not prices:
            if market_buy > 0 and market_sell > 0 and ins.ref > 0:
                return ins.ref, min(market_buy, market_sell), market_buy - market_sell
            return 0, 0, 0
        table = []
        for p in prices:
            demand = market_buy + sum(o.leaves for o in ins.resting if o.side == BUY and o.price >= p)
            supply = market_sell + sum(o.leaves for o in ins.resting if o.side == SELL and o.price <= p)
            table.append((p, min(demand, supply), demand - supply))
        most = max(volume for _, volume, _ in table)
        if most == 0:
            return 0, 0, 0
        rows = [row for row in table if row[1] == most]
        least = min(abs(row[2]) for row in rows)
        rows = [row for row in rows if abs(row[2]) == least]
        if len(rows) > 1:
            if all(row[2] > 0 for row in rows):
                rows = [max(rows)]
            elif all(row[2] < 0 for row in rows):
                rows = [min(rows)]
            else:
                rows = [min(rows, key=lambda row: (abs(row[0] - ins.ref), -row[0]))]
        return rows[0]

    def _uncross(self, ins: _Instrument, cross_type: int, out: list[Event]) -> tuple[int, int]:
        price, volume, _ = self._auction_price(ins)
        locate = ins.instrument.locate
        if volume == 0:
            out.append((Ev.UNCROSSED, locate, cross_type, 0, 0, 0))
            self._cancel_market_orders(ins, out)
            return price, 0
        buys = [o for o in ins.market if o.side == BUY]
        buys += [o for o in self.bids(locate) if o.price >= price]
        sells = [o for o in ins.market if o.side == SELL]
        sells += [o for o in self.asks(locate) if o.price <= price]
        while buys and sells:
            b, s = buys[0], sells[0]
            q = min(b.leaves, s.leaves)
            b.leaves -= q
            b.filled += q
            s.leaves -= q
            s.filled += q
            out.append((Ev.CROSS_EXECUTED, b, s, q, price, self.next_match, b.leaves, b.filled, s.leaves, s.filled))
            self.next_match += 1
            for o in (b, s):
                if o.leaves == 0:
                    self._remove(o)
            if b.leaves == 0:
                buys.pop(0)
            if s.leaves == 0:
                sells.pop(0)
        ins.last = price
        out.append((Ev.UNCROSSED, locate, cross_type, price, volume, self.next_match))
        self.next_match += 1
        self._cancel_market_orders(ins, out)
        return price, volume

    def _noii(self, ins: _Instrument, out: list[Event]) -> None:
        locate = ins.instrument.locate
        cross_type = _AUCTIONS[ins.state]
        price, volume, surplus = self._auction_price(ins)
        if volume == 0:
            out.append((Ev.IMBALANCE, locate, cross_type, 0, 0, IMBALANCE_NO_PRICE, 0, 0, ins.ref))
            return
        far = self._auction_price(ins, with_market=False)[0]
        if surplus > 0:
            direction = IMBALANCE_BUY
        elif surplus < 0:
            direction = IMBALANCE_SELL
        else:
            direction = IMBALANCE_NONE
        out.append((Ev.IMBALANCE, locate, cross_type, volume, abs(surplus), direction, far, price, ins.ref))

    # -- admin commands ---------------------------------------------------------------------------
    def _set_schedule(self, cmd: SetSchedule, out: list[Event]) -> None:
        times = (cmd.pre_open_ns, cmd.opening_auction_ns, cmd.open_ns, cmd.closing_auction_ns, cmd.close_ns)
        if times != (0, 0, 0, 0, 0):
            if any(t <= 0 for t in times) or any(a > b for a, b in zip(times, times[1:])):
                out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_SCHEDULE))
                return
        self.schedule = times
        self.market_phase = 0
        for ins in self.instruments.values():
            ins.day_done = 0

    def _admin(self, cmd: Halt | Resume | Close, out: list[Event]) -> None:
        if cmd.locate == ALL_INSTRUMENTS:
            if isinstance(cmd, Halt):
                out.append((Ev.MARKET_EVENT, MARKET_HALT))
            for locate in sorted(self.instruments):
                ins = self.instruments[locate]
                if isinstance(cmd, Halt) and ins.state not in (TS_CLOSED, TS_HALTED):
                    self._halt(ins, CAUSE_MARKET, out)
                elif isinstance(cmd, Resume) and ins.state in (TS_HALTED, TS_PAUSED):
                    self._reopen(ins, CAUSE_MARKET, self.now, out)
                elif isinstance(cmd, Close) and ins.state != TS_CLOSED:
                    self._close(ins, CAUSE_ADMIN, out)
            return
        found = self.instruments.get(cmd.locate)
        if found is None:
            out.append((Ev.REJECTED, cmd, R.UNKNOWN_INSTRUMENT))
            return
        if isinstance(cmd, Halt):
            if found.state in (TS_CLOSED, TS_HALTED):
                out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
            else:
                self._halt(found, CAUSE_ADMIN, out)
        elif isinstance(cmd, Resume):
            if found.state not in (TS_HALTED, TS_PAUSED):
                out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
            else:
                self._reopen(found, CAUSE_ADMIN, self.now, out)
        else:
            if found.state == TS_CLOSED:
                out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
            else:
                self._close(found, CAUSE_ADMIN, out)

    def _clock_tick(self, cmd: ClockTick, out: list[Event]) -> None:
        if cmd.now_ns < self.now:
            out.append((Ev.REJECTED, cmd, R.ADMIN_CLOCK_BACKWARDS))
            return
        self.now = t = cmd.now_ns
        pre_open, _, open_, _, close = self.schedule
        scheduled = close != 0
        if scheduled and self.market_phase < 1 and t >= pre_open:
            self.market_phase = 1
            out.append((Ev.MARKET_EVENT, MARKET_SYSTEM_HOURS))
        if scheduled and self.market_phase < 2 and t >= open_:
            self.market_phase = 2
            out.append((Ev.MARKET_EVENT, MARKET_OPEN))
        rules = self.rules
        for locate in sorted(self.instruments):
            ins = self.instruments[locate]
            for _ in range(32):
                if ins.state == TS_CONTINUOUS and ins.limit_on and t >= ins.limit_since + rules.limit_state_ns:
                    start = ins.limit_since + rules.limit_state_ns
                    self._set_state(ins, TS_PAUSED, CAUSE_LULD, out)
                    ins.deadline = start + rules.pause_ns
                    lo, hi = ins.band()
                    out.append((Ev.COLLAR, locate, ins.ref, hi, lo, 0))
                elif ins.state == TS_PAUSED and t >= ins.deadline:
                    self._reopen(ins, ins.cause, ins.deadline, out)
                elif ins.state == TS_HALTED and ins.deadline != 0 and t >= ins.deadline:
                    self._reopen(ins, ins.cause, ins.deadline, out)
                elif ins.state == TS_REOPENING_AUCTION and t >= ins.deadline:
                    self._open_continuous(ins, CROSS_REOPEN, ins.cause, out)
                elif not (scheduled and not ins.day_done and self._follow_schedule(ins, out)):
                    break
            if ins.state in _AUCTIONS and rules.noii_interval_ns > 0 and t >= ins.next_noii:
                self._noii(ins, out)
                # the first multiple of the interval after t
                ins.next_noii += rules.noii_interval_ns * ((t - ins.next_noii) // rules.noii_interval_ns + 1)
        if scheduled and self.market_phase < 3 and t >= close:
            self.market_phase = 3
            out.append((Ev.MARKET_EVENT, MARKET_CLOSE))

    def _follow_schedule(self, ins: _Instrument, out: list[Event]) -> bool:
        """One step towards the state the schedule wants now; False if none is due."""
        phase = self._phase()
        if phase == TS_CLOSED:
            if ins.state == TS_CLOSED:
                return False
            self._close(ins, CAUSE_SCHEDULE, out)
        elif ins.state == TS_CLOSED and phase != -1:
            self._set_state(ins, TS_PRE_OPEN, CAUSE_SCHEDULE, out)
        elif ins.state == TS_PRE_OPEN and phase in (TS_OPENING_AUCTION, TS_CONTINUOUS, TS_CLOSING_AUCTION):
            self._set_state(ins, TS_OPENING_AUCTION, CAUSE_SCHEDULE, out)
            ins.next_noii = self.now
        elif ins.state == TS_OPENING_AUCTION and phase in (TS_CONTINUOUS, TS_CLOSING_AUCTION):
            self._open_continuous(ins, CROSS_OPEN, CAUSE_SCHEDULE, out)
        elif ins.state == TS_CONTINUOUS and phase == TS_CLOSING_AUCTION:
            self._set_state(ins, TS_CLOSING_AUCTION, CAUSE_SCHEDULE, out)
            ins.next_noii = self.now
        else:
            return False
        return True

    # ============================================================================================
    # reading, hashing and self-checks
    # ============================================================================================
    def bids(self, locate: int) -> list[NewOrder]:
        """Resting buy orders in priority order."""
        return sorted((o for o in self.instruments[locate].resting if o.side == BUY), key=_priority)

    def asks(self, locate: int) -> list[NewOrder]:
        """Resting sell orders in priority order."""
        return sorted((o for o in self.instruments[locate].resting if o.side == SELL), key=_priority)

    def pending_stops(self, locate: int, side: int) -> list[NewOrder]:
        """Pending stops of one side: stop price ascending, then arrival."""
        return sorted((o for o in self.instruments[locate].stops if o.side == side), key=_stop_price)

    def depth(self, locate: int, side: int) -> list[tuple[int, int, int]]:
        """[(price, total, count), ...] best first, as Book.depth of the fast engine."""
        levels: list[tuple[int, int, int]] = []
        for o in (self.bids(locate) if side == BUY else self.asks(locate)):
            if levels and levels[-1][0] == o.price:
                price, total, count = levels[-1]
                levels[-1] = (price, total + o.leaves, count + 1)
            else:
                levels.append((o.price, o.leaves, 1))
        return levels

    def last_price(self, locate: int) -> int:
        return self.instruments[locate].last

    def resting_count(self) -> int:
        return sum(len(ins.resting) for ins in self.instruments.values())

    def trading_state(self, locate: int) -> int:
        return self.instruments[locate].state

    def state_hash(self) -> str:
        return state_hash(self.next_ref, self.next_match, [
            StateView(
                locate,
                ins.last,
                (self.bids(locate), self.asks(locate)),
                (self.pending_stops(locate, BUY), self.pending_stops(locate, SELL)),
                (ins.state, ins.cause, ins.ref, ins.cb_ref, ins.limit_on, ins.limit_since, ins.deadline,
                 ins.next_noii, ins.day_done),
                ([o for o in ins.market if o.side == BUY], [o for o in ins.market if o.side == SELL]),
            )
            for locate, ins in self.instruments.items()
        ], (self.now, *self.schedule, self.market_phase))

    def check_invariants(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ReferenceInvariantError(msg)

        ids = [o.order_id for o in self._live_orders()]
        check(len(ids) == len(set(ids)), "an order id is live twice")
        for locate, ins in self.instruments.items():
            for o in ins.resting + ins.stops:
                check(o.locate == locate, f"order {o.order_id} on the wrong instrument")
                check(o.side in (BUY, SELL), f"order {o.order_id} has no side")
                check(o.leaves > 0 and o.leaves + o.filled == o.qty, f"order {o.order_id}: leaves + filled != qty")
            for o in ins.resting:
                check(o.ord_type in _PRICED_TYPES and o.tif in (DAY, GTC), f"order {o.order_id} cannot rest")
            for o in ins.stops:
                check(o.ord_type in _STOP_TYPES and o.filled == 0, f"pending stop {o.order_id} malformed")
            bids, asks = self.bids(locate), self.asks(locate)
            if ins.state == TS_CONTINUOUS:
                check(not bids or not asks or bids[0].price < asks[0].price, f"locate {locate}: book crossed")
                check(not any(ins.through_band(o.side, o.price) for o in ins.resting),
                      f"locate {locate}: an order rests through the band")
            else:
                check(ins.limit_on == 0, f"locate {locate}: limit state outside continuous trading")
            for o in ins.market:
                check(o.ord_type == MARKET and o.leaves > 0 and ins.state not in (TS_CLOSED, TS_CONTINUOUS),
                      f"locate {locate}: collected market order {o.order_id} malformed")
