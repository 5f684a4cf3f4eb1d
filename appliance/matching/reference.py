"""The naive reference engine: docs/matching.md written as plainly as possible, to be an oracle.

Owned by whichever test thread built it (single writer). Same interface and events as
appliance.matching.engine.Engine; written from the rules document, not from the fast engine, and
slow on purpose: no price levels, no index, no lazy deletion. Per instrument it keeps

    resting: [order, ...]   every live resting order of both sides, in arrival order at the book
    stops:   [order, ...]   every pending stop order of both sides, in arrival order
    last:    int            last trade price (0: no trade yet)

Priority is recomputed whenever it is needed with a stable sort on price alone, so "time priority
within a price" is simply the list order: an order that (re)enters the book is appended, an in-place
replace leaves it where it is. Lookups scan the lists.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from appliance import reasons as R
from appliance.catalogue import (
    EV_ACCEPTED,
    EV_ADDED,
    EV_CANCELLED,
    EV_EXECUTED,
    EV_MASS_CANCELLED,
    EV_REJECTED,
    EV_REPLACED,
    EV_STOP_TRIGGERED,
    MASS_ANY_INSTRUMENT,
    MASS_ANY_SIDE,
    REPL_HIDDEN,
    REPL_IN_PLACE,
    REPL_REMOVE,
    REPL_REPOST,
    CancelOrder,
    Command,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
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


class _Instrument:
    """One instrument's state in the reference engine."""

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.resting: list[NewOrder] = []
        self.stops: list[NewOrder] = []
        self.last = 0


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
    ) -> None:
        self.instruments: dict[int, _Instrument] = {}
        for ins in instruments:
            if ins.locate in self.instruments:
                raise ValueError(f"stock locate {ins.locate} is used twice")
            self.instruments[ins.locate] = _Instrument(ins)
        for mode in list(dict(firm_stp or {}).values()) + [default_stp]:
            if mode not in (STP_NONE, STP_CN, STP_CO, STP_DC):
                raise ValueError(f"self-trade prevention mode {mode} is not CN/CO/DC/none")
        self.firm_stp = dict(firm_stp or {})
        self.default_stp = default_stp
        self.next_ref = 1
        self.next_match = 1

    # ============================================================================================
    # apply
    # ============================================================================================
    def apply(self, cmd: Command, out: list[Event]) -> None:
        if isinstance(cmd, NewOrder):
            self._new_order(cmd, out)
        elif isinstance(cmd, CancelOrder):
            self._cancel(cmd, out)
        elif isinstance(cmd, ReplaceOrder):
            self._replace(cmd, out)
        elif isinstance(cmd, MassCancel):
            self._mass_cancel(cmd, out)
        else:
            out.append((EV_REJECTED, cmd, R.ADMIN_UNKNOWN_COMMAND))

    # -- lookups --------------------------------------------------------------------------------
    def _live_orders(self) -> list[NewOrder]:
        return [o for ins in self.instruments.values() for o in ins.resting + ins.stops]

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
        if self._find(o.order_id) is not None:
            return R.DUPLICATE_ORDER_ID
        return 0

    # -- new order --------------------------------------------------------------------------------
    def _new_order(self, o: NewOrder, out: list[Event]) -> None:
        reason = self._validate(o)
        if reason:
            out.append((EV_REJECTED, o, reason))
            return
        ins = self.instruments[o.locate]
        o.ref = self._take_ref()
        o.leaves = o.qty
        o.filled = 0
        out.append((EV_ACCEPTED, o, o.qty))
        if o.ord_type in _STOP_TYPES:
            if ins.last and self._stop_reached(o, ins.last):
                out.append((EV_STOP_TRIGGERED, o, ins.last))
            else:
                ins.stops.append(o)
                return
        self._aggress_then_stops(ins, o, out)

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
            return True
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
            out.append((EV_CANCELLED, o, o.leaves, 0, 0, R.CANCEL_FOK, False))
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
                    out.append((EV_CANCELLED, m, m.leaves, 0, m.filled, R.CANCEL_STP, True))
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
                out.append((EV_CANCELLED, m, d, m.leaves, m.filled, R.CANCEL_STP, True))
                out.append((EV_CANCELLED, o, d, o.leaves, o.filled, R.CANCEL_STP, False))
                if m.leaves == 0:
                    self._remove(m)
                continue
            q = min(m.leaves, o.leaves)
            m.leaves -= q
            m.filled += q
            o.leaves -= q
            o.filled += q
            out.append((EV_EXECUTED, m, o, q, m.price, self.next_match,
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
                reason = R.CANCEL_MARKET_NO_LIQUIDITY
            elif o.tif in (IOC, FOK):
                reason = R.CANCEL_IOC_REMAINDER
            else:
                ins.resting.append(o)
                out.append((EV_ADDED, o, remainder))
                return prices
            o.leaves = 0
            out.append((EV_CANCELLED, o, remainder, 0, o.filled, reason, False))
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
            out.append((EV_STOP_TRIGGERED, s, price))
            queue += self._triggered_by(ins, self._aggress(ins, s, out))

    # -- cancel -----------------------------------------------------------------------------------
    def _cancel(self, c: CancelOrder, out: list[Event]) -> None:
        o = self._find(c.order_id)
        if o is None or o.firm != c.firm:
            out.append((EV_REJECTED, c, R.UNKNOWN_ORDER))
            return
        leaves = o.leaves
        on_book = self._remove(o)
        o.leaves = 0
        out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_USER, on_book))

    # -- replace ----------------------------------------------------------------------------------
    def _check_replace(self, r: ReplaceOrder, o: NewOrder | None) -> int:
        if o is None or o.firm != r.firm:
            return R.UNKNOWN_ORDER
        tick = self.instruments[o.locate].instrument.tick
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
            out.append((EV_REJECTED, r, reason))
            return
        assert o is not None
        ins = self.instruments[o.locate]
        pending = self._is_pending_stop(o)
        new_stop = r.stop_price if r.stop_price != 0 else o.stop_price
        old_leaves = o.leaves
        new_leaves = r.qty - o.filled
        if r.price == o.price and new_stop == o.stop_price and r.qty <= o.qty:
            o.qty = r.qty
            o.leaves = new_leaves
            if r.cl_ord_id:
                o.cl_ord_id = r.cl_ord_id
            action = REPL_HIDDEN if pending else REPL_IN_PLACE
            out.append((EV_REPLACED, o, o, old_leaves, new_leaves, o.filled, action, r))
            return
        self._remove(o)
        o.leaves = 0
        n = NewOrder(
            order_id=o.order_id,
            locate=o.locate,
            side=o.side,
            qty=r.qty,
            price=r.price,
            ord_type=o.ord_type,
            tif=o.tif,
            stop_price=new_stop,
            firm=o.firm,
            session=o.session,
            account=o.account,
            cl_ord_id=r.cl_ord_id if r.cl_ord_id else o.cl_ord_id,
            mpid=o.mpid,
            stp=o.stp,
        )
        n.ref = self._take_ref()
        n.filled = o.filled
        n.leaves = new_leaves
        if pending:
            ins.stops.append(n)
            out.append((EV_REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_HIDDEN, r))
        elif not self._crossing(ins, n):
            ins.resting.append(n)
            out.append((EV_REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_REPOST, r))
        else:
            out.append((EV_REPLACED, o, n, old_leaves, new_leaves, n.filled, REPL_REMOVE, r))
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
            out.append((EV_CANCELLED, o, leaves, 0, o.filled, R.CANCEL_MASS, on_book))
        out.append((EV_MASS_CANCELLED, c, len(victims)))

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

    def state_hash(self) -> str:
        return state_hash(self.next_ref, self.next_match, [
            StateView(
                locate,
                ins.last,
                (self.bids(locate), self.asks(locate)),
                (self.pending_stops(locate, BUY), self.pending_stops(locate, SELL)),
            )
            for locate, ins in self.instruments.items()
        ])

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
            check(not bids or not asks or bids[0].price < asks[0].price, f"locate {locate}: book crossed")
