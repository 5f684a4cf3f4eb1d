"""Pre-trade risk: per-firm checks on each order before it is sequenced. Sans-IO and deterministic.

Owned by the gateway thread that forwards a firm's orders to the partitions (one checker sees every
order of the firms it checks, and every event about their orders). ``check(cmd, now_ns)`` returns 0
or a 2xxx reason from appliance.reasons; ``on_events(events)`` keeps its view of open orders,
positions and last trade prices up to date from the engine's events. Time is the ``now_ns``
argument (the token bucket's clock); nothing here reads a clock. All arithmetic is on integers:
prices in Price(4) units, quantities in shares, notional in Price(4) units (qty * price).

What is checked, in this order (the first failure is the reason):

    NewOrder                                    reason
    1. the firm's kill switch is off            2006 RISK_KILL_SWITCH (also: a firm with no limits)
    2. a token from the firm's bucket           2005 RISK_RATE_LIMIT
    3. qty <= max_qty                           2002 RISK_MAX_QTY
    4. the price collar                         2001 RISK_PRICE_COLLAR
    5. qty * price <= max_notional              2003 RISK_MAX_NOTIONAL
    6. the worst-case position                  2004 RISK_POSITION_LIMIT

- A limit that is None is not checked. Orders the engine will reject anyway (side not buy/sell,
  qty <= 0) pass the checks after the rate limit and are left to the engine's reasons.
- Rate limit: a token bucket per firm, ``burst`` tokens deep (default: rate_per_second),
  refilled at ``rate_per_second`` tokens per second, in integer units of 1e-9 token: each
  elapsed ns adds ``rate_per_second`` units, a token is 10^9 units. It starts full. Every new
  order or exposure-raising replace that passes the kill switch takes a token, whether or not a
  later check rejects it: the limit is on messages, so a flood of bad orders is throttled too.
  A clock that goes backwards adds nothing.
- Reference price of an instrument: the price of its last trade seen in the events, else its
  configured reference price, else none.
- Price collar (``collar_bps``, basis points): a LIMIT or STOP_LIMIT buy is rejected when
  price * 10000 > ref * (10000 + bps), a sell when price * 10000 < ref * (10000 - bps). Only the
  aggressive side is collared (a buy far below the market cannot trade there). MARKET and STOP
  orders carry no price and are not collared; with no reference price nothing is collared.
- Notional: qty * the limit price (LIMIT, STOP_LIMIT) or qty * the reference price (MARKET, STOP).
  A MARKET or STOP order of a firm with max_notional when the instrument has no reference price
  is rejected 2003: its notional cannot be bounded.
- Position (per firm, per instrument, shares; long positive) counts the worst case, every open
  order filling: a buy of q passes when ``position + open_buy + q <= position_limit``, a sell
  when ``open_sell + q - position <= position_limit``. open_buy / open_sell are the leaves of the
  firm's live orders on the instrument (resting and pending stops) **plus orders that passed this
  checker and whose acceptance or rejection has not been seen yet** (reserved at check time, so a
  burst in flight cannot overshoot). ``on_events`` moves them: OrderAccepted confirms a
  reservation (or adds an order it never checked, e.g. after recovery), CommandRejected of a
  NewOrder releases it, OrderExecuted and OrderCancelled lower the leaves, OrderReplaced sets them
  to the new leaves; each fill changes the position through ``on_fill``. A gateway that checked
  an order and then did not send it (ring full) calls ``withdraw(order)``.

    ReplaceOrder
    - of an order this checker does not know live (or of another firm): passes; the engine answers.
    - lowering the quantity at the same price (and stop price): passes every check, kill switch
      included. Risk never blocks reducing exposure.
    - otherwise (more leaves, or a new price): checks 1-6 as for a new order, with the new total qty
      for max_qty and notional, the new price for collar and notional, and the leaves increase for
      the position. The increase is not reserved: it counts once the OrderReplaced event is seen.

    CancelOrder, MassCancel: never blocked.

Kill switch: ``set_kill_switch(firm, True)`` blocks the firm's new orders and exposure-raising
replaces and returns the ``MassCancel`` the caller must send for that firm (every instrument, both
sides); ``False`` lifts it and returns None.
"""
from __future__ import annotations

import dataclasses
from typing import Final, Iterable, Mapping

from appliance import reasons as R
from appliance.catalogue import (
    Command,
    Ev,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.model import BUY, LIMIT, SELL, STOP_LIMIT

TOKEN: Final = 1_000_000_000      # one order's worth of bucket units (units per token)
BPS: Final = 10_000               # basis points in one
_UNLIMITED: Final = 1 << 126
KILL_SWITCH_CL_ORD_ID: Final = "KILLSWITCH"
# The event kinds the per-event code compares, bound to module globals (catalogue.Ev: a class
# attribute load, which CPython 3.11 does not specialize).
EV_ACCEPTED: Final = Ev.ACCEPTED
EV_EXECUTED: Final = Ev.EXECUTED
EV_CROSS_EXECUTED: Final = Ev.CROSS_EXECUTED
EV_CANCELLED: Final = Ev.CANCELLED
EV_REPLACED: Final = Ev.REPLACED
EV_REJECTED: Final = Ev.REJECTED


@dataclasses.dataclass(frozen=True)
class FirmLimits:
    """One firm's limits. None: not checked."""

    max_qty: int | None = None           # shares per order
    max_notional: int | None = None      # qty * price per order, Price(4) units ($1 = 10_000)
    position_limit: int | None = None    # worst-case |net position| per instrument, shares
    rate_per_second: int | None = None   # orders (and exposure-raising replaces) per second
    burst: int | None = None             # token bucket depth; None: rate_per_second
    collar_bps: int | None = None        # collar around the reference price, basis points

    def __post_init__(self) -> None:
        for name in ("max_qty", "max_notional", "position_limit", "collar_bps"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"firm limits: {name} {v} must be >= 0")
        for name in ("rate_per_second", "burst"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"firm limits: {name} {v} must be >= 1")
        if self.collar_bps is not None and self.collar_bps > BPS:
            raise ValueError(f"firm limits: collar_bps {self.collar_bps} above {BPS} (100 %)")


@dataclasses.dataclass(frozen=True)
class RiskLimits:
    """Everything a RiskChecker is configured with: limits by firm id, reference prices by locate."""

    firms: Mapping[int, FirmLimits]
    reference_prices: Mapping[int, int] = dataclasses.field(default_factory=dict)


class _Firm:
    """One firm's limits (None as an unreachable bound) and state. Owned by the checker."""

    __slots__ = ("firm", "known", "kill", "max_qty", "max_notional", "check_notional", "position_limit",
                 "rate", "cap", "tokens", "last_ns", "collar_bps", "books")

    def __init__(self, firm: int, limits: FirmLimits | None) -> None:
        self.firm = firm
        self.known = limits is not None
        self.kill = limits is None       # a firm without limits is not enabled: fail closed
        lim = limits or FirmLimits()
        self.max_qty = _UNLIMITED if lim.max_qty is None else lim.max_qty
        self.check_notional = lim.max_notional is not None
        self.max_notional = _UNLIMITED if lim.max_notional is None else lim.max_notional
        self.position_limit = _UNLIMITED if lim.position_limit is None else lim.position_limit
        self.rate = lim.rate_per_second or 0                       # 0: no rate limit
        burst = lim.burst if lim.burst is not None else (lim.rate_per_second or 0)
        self.cap = burst * TOKEN
        self.tokens = self.cap
        self.last_ns = 0
        self.collar_bps = lim.collar_bps
        # locate -> [position, open_buy, open_sell] (open_* indexed by 1 + side)
        self.books: dict[int, list[int]] = {}


class _Live:
    """What the checker knows of one order: reserved (in flight) or accepted and live."""

    __slots__ = ("firm", "locate", "side", "ord_type", "price", "stop_price", "leaves", "filled", "accepted")

    def __init__(self, firm: _Firm, o: NewOrder, leaves: int, accepted: bool) -> None:
        self.firm = firm
        self.locate = o.locate
        self.side = o.side
        self.ord_type = o.ord_type
        self.price = o.price
        self.stop_price = o.stop_price
        self.leaves = leaves
        self.filled = 0          # at acceptance; the object itself may have traded since (events lag)
        self.accepted = accepted


class RiskChecker:
    """Pre-trade risk for a set of firms. Owned by one gateway thread (see the module doc)."""

    def __init__(self, limits: RiskLimits) -> None:
        self._firms: dict[int, _Firm] = {f: _Firm(f, lim) for f, lim in limits.firms.items()}
        self._ref: dict[int, int] = dict(limits.reference_prices)   # locate -> reference price
        self._live: dict[int, _Live] = {}                           # order_id -> order state

    # ============================================================================================
    # checks
    # ============================================================================================
    def check(self, cmd: Command, now_ns: int) -> int:
        """0 if the command may go on to sequencing, else a 2xxx reason. See the module doc."""
        cls = type(cmd)
        if cls is NewOrder:   # the commonest: checked here, not through a further call
            o: NewOrder = cmd  # type: ignore[assignment]
        elif cls is ReplaceOrder:
            return self._check_replace(cmd, now_ns)  # type: ignore[arg-type]
        else:
            return 0  # cancels and mass cancels are never blocked
        f = self._firms.get(o.firm)
        if f is None or f.kill:
            return R.RISK_KILL_SWITCH
        if f.rate and not _take_token(f, now_ns):
            return R.RISK_RATE_LIMIT
        qty = o.qty
        side = o.side
        if qty <= 0 or (side != BUY and side != SELL):
            return 0  # the engine rejects it with its own reason; nothing to reserve
        reason = self._check_order(f, o.locate, side, o.ord_type, o.price, qty, qty)
        if reason:
            return reason
        if o.order_id not in self._live:  # a duplicate id is the engine's to reject; keep the live one
            self._live[o.order_id] = _Live(f, o, qty, False)
            book = f.books.get(o.locate)
            if book is None:
                book = f.books[o.locate] = [0, 0, 0]
            book[1 + side] += qty
        return 0

    def _check_order(self, f: _Firm, locate: int, side: int, ord_type: int, price: int, qty: int,
                     increase: int) -> int:
        """Checks 3-6 for an order of `qty` shares (new total) adding `increase` shares of exposure."""
        if qty > f.max_qty:
            return R.RISK_MAX_QTY
        ref = self._ref.get(locate, 0)
        if ord_type == LIMIT or ord_type == STOP_LIMIT:
            bps = f.collar_bps
            if bps is not None and ref:
                if side == BUY:
                    if price * BPS > ref * (BPS + bps):
                        return R.RISK_PRICE_COLLAR
                elif price * BPS < ref * (BPS - bps):
                    return R.RISK_PRICE_COLLAR
        else:
            price = ref  # market and stop orders: valued at the reference price
        if f.check_notional and (price <= 0 or qty * price > f.max_notional):
            return R.RISK_MAX_NOTIONAL
        if increase > 0 and f.position_limit != _UNLIMITED:
            book = f.books.get(locate)
            if book is not None:
                worst = (book[0] + book[1] if side == BUY else book[2] - book[0]) + increase
            else:
                worst = increase
            if worst > f.position_limit:
                return R.RISK_POSITION_LIMIT
        return 0

    def _check_replace(self, r: ReplaceOrder, now_ns: int) -> int:
        live = self._live.get(r.order_id)
        if live is None or live.firm.firm != r.firm:
            return 0  # the engine answers UNKNOWN_ORDER (or it is an order we never saw)
        increase = (r.qty - live.filled) - live.leaves
        repriced = r.price != live.price or (r.stop_price != 0 and r.stop_price != live.stop_price)
        if increase <= 0 and not repriced:
            return 0  # a pure reduction: never blocked
        f = live.firm
        if f.kill:
            return R.RISK_KILL_SWITCH
        if f.rate and not _take_token(f, now_ns):
            return R.RISK_RATE_LIMIT
        if r.qty <= 0:
            return 0
        return self._check_order(f, live.locate, live.side, live.ord_type, r.price, r.qty, increase)

    def withdraw(self, o: NewOrder) -> None:
        """Release the reservation of a NewOrder that passed ``check`` but was not sent on."""
        live = self._live.get(o.order_id)
        if live is not None and not live.accepted:
            self._drop(o.order_id, live)

    # ============================================================================================
    # updates from the engine's events
    # ============================================================================================
    def on_events(self, events: Iterable[Event]) -> None:
        """Follow the engine: open quantities, positions (via on_fill), last trade prices."""
        live_orders = self._live
        for ev in events:
            kind = ev[0]
            if kind == EV_EXECUTED or kind == EV_CROSS_EXECUTED:
                # a continuous fill (maker, taker) or an auction fill (buy, sell): same shape
                _, maker, taker, qty, price, _match, m_leaves, m_filled, t_leaves, t_filled = ev[:10]
                self._ref[maker.locate] = price
                self._executed(maker, qty, m_leaves, m_filled)
                self._executed(taker, qty, t_leaves, t_filled)
            elif kind == EV_ACCEPTED:
                o = ev[1]
                live = live_orders.get(o.order_id)
                if live is None:  # an order we did not check (recovery, another path): count it now
                    f = self._firm(o.firm)
                    live_orders[o.order_id] = _Live(f, o, ev[2], True)
                    _book(f, o.locate)[1 + o.side] += ev[2]
                else:
                    live.accepted = True
            elif kind == EV_CANCELLED:
                o = ev[1]
                live = live_orders.get(o.order_id)
                if live is not None:
                    leaves = ev[3]
                    live.firm.books[live.locate][1 + live.side] -= live.leaves - leaves
                    live.leaves = leaves
                    if not leaves:
                        del live_orders[o.order_id]
            elif kind == EV_REPLACED:
                new = ev[2]
                live = live_orders.get(new.order_id)
                if live is not None:
                    leaves = ev[4]  # new_leaves
                    live.firm.books[live.locate][1 + live.side] += leaves - live.leaves
                    live.leaves = leaves
                    live.price = new.price
                    live.stop_price = new.stop_price
            elif kind == EV_REJECTED:
                cmd = ev[1]
                if type(cmd) is NewOrder:
                    live = live_orders.get(cmd.order_id)
                    if live is not None and not live.accepted:
                        self._drop(cmd.order_id, live)

    def _executed(self, o: NewOrder, qty: int, leaves: int, filled: int) -> None:
        live = self._live.get(o.order_id)
        if live is not None:
            live.firm.books[live.locate][1 + live.side] -= live.leaves - leaves
            live.leaves = leaves
            live.filled = filled
            if not leaves:
                del self._live[o.order_id]
        self.on_fill(o.firm, o.locate, o.side, qty)

    def on_fill(self, firm: int, locate: int, side: int, qty: int) -> None:
        """A fill of `qty` shares: the firm's position on the instrument moves (buy +, sell -).

        ``on_events`` calls it for both sides of every OrderExecuted; call it directly only for
        fills the checker does not see as events (never for the same fill twice).
        """
        book = _book(self._firm(firm), locate)
        book[0] += qty if side == BUY else -qty

    def _drop(self, order_id: int, live: _Live) -> None:
        live.firm.books[live.locate][1 + live.side] -= live.leaves
        del self._live[order_id]

    def _firm(self, firm: int) -> _Firm:
        f = self._firms.get(firm)
        if f is None:
            f = self._firms[firm] = _Firm(firm, None)
        return f

    # ============================================================================================
    # admin and reading
    # ============================================================================================
    def set_kill_switch(self, firm: int, on: bool) -> MassCancel | None:
        """Turn a firm's kill switch on (returns the MassCancel to send for the firm) or off (None)."""
        f = self._firm(firm)
        if not on:
            f.kill = not f.known
            return None
        f.kill = True
        return MassCancel(firm, cl_ord_id=KILL_SWITCH_CL_ORD_ID)

    def kill_switch(self, firm: int) -> bool:
        f = self._firms.get(firm)
        return f is None or f.kill

    def set_reference_price(self, locate: int, price: int) -> None:
        """Set an instrument's reference price (start of day, admin); the next trade replaces it."""
        if price <= 0:
            raise ValueError(f"reference price {price} must be positive")
        self._ref[locate] = price

    def reference_price(self, locate: int) -> int:
        """The last trade price, else the configured reference, else 0."""
        return self._ref.get(locate, 0)

    def position(self, firm: int, locate: int) -> int:
        f = self._firms.get(firm)
        book = f.books.get(locate) if f is not None else None
        return book[0] if book is not None else 0

    def open_qty(self, firm: int, locate: int, side: int) -> int:
        """Leaves of live and in-flight orders of the firm on one side of the instrument."""
        f = self._firms.get(firm)
        book = f.books.get(locate) if f is not None else None
        return book[1 + side] if book is not None else 0

    def tokens(self, firm: int, now_ns: int) -> int:
        """Whole tokens the firm's bucket would hold at now_ns (reading only)."""
        f = self._firms.get(firm)
        if f is None or not f.rate:
            return 0
        elapsed = now_ns - f.last_ns
        level = f.tokens + elapsed * f.rate if elapsed > 0 else f.tokens
        return min(level, f.cap) // TOKEN

    def live_orders(self) -> int:
        """Orders the checker counts as open (in flight or live)."""
        return len(self._live)


def _take_token(f: _Firm, now_ns: int) -> bool:
    elapsed = now_ns - f.last_ns
    if elapsed > 0:
        level = f.tokens + elapsed * f.rate
        f.tokens = level if level < f.cap else f.cap
        f.last_ns = now_ns
    if f.tokens < TOKEN:
        return False
    f.tokens -= TOKEN
    return True


def _book(f: _Firm, locate: int) -> list[int]:
    book = f.books.get(locate)
    if book is None:
        book = f.books[locate] = [0, 0, 0]
    return book
