"""Trading phases: the part of the engine that is not continuous matching (docs/matching.md, "Time",
"Trading states", "Safeguards", "Auctions").

Owned by the matching thread (single writer), like the engine it is part of: ``Engine``
(appliance/matching/engine.py) is the continuous matching core and inherits these methods. They move
a book between trading states (pre-open, auctions, continuous, LULD limit state and pause, halts,
closed); keep the derived fields the matching core's fast path reads (``Book.flo``/``fhi``,
``watch``, ``mkt_key``, ``mkt_reason``) current; run the schedule and timers on ClockTick; answer
the admin commands (SetSchedule, Halt, Resume, Close); uncross auctions and publish their imbalance
messages. The continuous matching path calls in only through ``_settle`` (when a book's ``watch``
says its safeguards need a look after a command) and ``_admin`` (any command that is not an order
command), so a command on a book without safeguards pays nothing for any of this.

No I/O, no clock (the clock is the latest ClockTick), no random source.
"""
from __future__ import annotations

from typing import Any, Final

from appliance import reasons as R
from appliance.catalogue import (
    ALL_INSTRUMENTS,
    ClockTick,
    Close,
    Command,
    Ev,
    Event,
    Halt,
    NewOrder,
    Resume,
    SetSchedule,
)
from appliance.matching.book import ANY_KEY, CLOSED_WINDOW, SMALL_INT, Book, by_ref
from appliance.matching.rules import BPS, TradingRules, band_of
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
    IMBALANCE_BUY,
    IMBALANCE_NO_PRICE,
    IMBALANCE_NONE,
    IMBALANCE_SELL,
    MARKET,
    MARKET_CLOSE,
    MARKET_HALT,
    MARKET_OPEN,
    MARKET_SYSTEM_HOURS,
    SELL,
    TS_CLOSED,
    TS_CLOSING_AUCTION,
    TS_CONTINUOUS,
    TS_HALTED,
    TS_OPENING_AUCTION,
    TS_PAUSED,
    TS_PRE_OPEN,
    TS_REOPENING_AUCTION,
)

# The day's schedule as phases: which state the schedule wants an instrument in at a time.
PH_BEFORE, PH_PRE_OPEN, PH_OPENING, PH_CONTINUOUS, PH_CLOSING, PH_AFTER = range(6)
PHASE_STATE = {PH_PRE_OPEN: TS_PRE_OPEN, PH_OPENING: TS_OPENING_AUCTION, PH_CONTINUOUS: TS_CONTINUOUS,
               PH_CLOSING: TS_CLOSING_AUCTION}
AUCTION_CROSS = {TS_OPENING_AUCTION: CROSS_OPEN, TS_CLOSING_AUCTION: CROSS_CLOSE, TS_REOPENING_AUCTION: CROSS_REOPEN}
MAX_TRANSITIONS_PER_TICK: Final = 32   # per instrument: bounds the timer loop whatever the rules say


class TradingPhases:
    """The trading states of an engine's books, its clock and its day's schedule (Engine inherits them).

    The engine's state these methods share with the matching core, and the four operations of the
    core they use, are declared here and defined by Engine.
    """

    # The matching core's state (Engine.__init__).
    books: list[Book | None]
    book_list: list[Book]
    orders: dict[int, NewOrder]
    next_match: int
    traded_qty: int
    # The trading state: the rules; the clock (the latest ClockTick); the schedule (the latest
    # SetSchedule, all 0: none); market_phase counts the market-wide events of the schedule's day
    # published so far (1 S, 2 Q, 3 M).
    rules: TradingRules | None
    _rules: TradingRules
    now_ns: int
    pre_open_ns: int
    opening_auction_ns: int
    open_ns: int
    closing_auction_ns: int
    close_ns: int
    market_phase: int

    # -- the matching core's operations the phases use (Engine defines them) ----------------------
    def _unlink(self, o: NewOrder) -> bool:
        """Take a live order out of the index and the book; True if it was resting on the book."""
        raise NotImplementedError

    def _ended_as(self, o: NewOrder, reason: int) -> None:
        """Say how o ended (TOO_LATE_*), for a late cancel or replace."""
        raise NotImplementedError

    def _queue_stops(self, book: Book, lo: int, hi: int) -> None:
        """Queue the stops that trades between lo and hi triggered."""
        raise NotImplementedError

    def _run_stops(self, book: Book, out: list[Event]) -> None:
        """Enter the queued triggered stops."""
        raise NotImplementedError

    # -- start ------------------------------------------------------------------------------------
    def _start_trading(self, rules: TradingRules | None) -> None:
        """The trading state of a new engine (after its books exist): every book in the rules'
        start state, at its reference price; no clock, no schedule."""
        self.rules = rules
        self._rules = rules or TradingRules()
        self.now_ns = 0
        self.pre_open_ns = self.opening_auction_ns = self.open_ns = 0
        self.closing_auction_ns = self.close_ns = 0
        self.market_phase = 0
        known = {book.locate for book in self.book_list}
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

    # -- derived fields and safeguards ------------------------------------------------------------
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
        book.mkt_key = (-cap if cap else ANY_KEY, floor if floor else ANY_KEY)
        book.mkt_reason = R.CANCEL_MARKET_COLLAR if cap else R.CANCEL_MARKET_NO_LIQUIDITY
        if book.state == TS_CONTINUOUS:
            if book.band_hi:
                book.flo, book.fhi = book.band_lo, min(book.band_hi, SMALL_INT + 1)
            else:
                book.flo, book.fhi = 0, SMALL_INT + 1
            book.watch = 1 if r.active else 0
        else:
            book.flo, book.fhi = CLOSED_WINDOW
            book.watch = 0


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
                out.append((Ev.LIMIT_STATE, book.locate, True, book.band_lo, book.band_hi))
            elif book.limit_on and not at_band:
                book.limit_on = book.limit_since = 0
                out.append((Ev.LIMIT_STATE, book.locate, False, book.band_lo, book.band_hi))

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
        victims.sort(key=by_ref)
        for o in victims:
            leaves = o.leaves
            self._unlink(o)
            out.append((Ev.CANCELLED, o, leaves, 0, o.filled, R.CANCEL_OUTSIDE_BAND, True))

    def _set_state(self, book: Book, state: int, cause: int, out: list[Event]) -> None:
        """Enter a trading state (timers reset: the caller sets the new state's own)."""
        if book.limit_on and state != TS_CONTINUOUS:
            book.limit_on = book.limit_since = 0
            out.append((Ev.LIMIT_STATE, book.locate, False, book.band_lo, book.band_hi))
        book.state = state
        book.cause = cause
        book.deadline_ns = book.next_noii_ns = 0
        self._refresh(book)
        out.append((Ev.TRADING_STATE, book.locate, state, cause))

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
        out.append((Ev.COLLAR, book.locate, book.ref_price, book.band_hi, book.band_lo, 0))

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
        victims.sort(key=by_ref)
        for o in victims:
            leaves = o.leaves
            on_book = self._unlink(o)
            out.append((Ev.CANCELLED, o, leaves, 0, o.filled, R.CANCEL_EXPIRED, on_book))
            self._ended_as(o, R.TOO_LATE_EXPIRED)
        book.day_done = 1

    def _cancel_collected_market(self, book: Book, out: list[Event]) -> None:
        """Market orders left at the end of a call phase are cancelled, by reference."""
        left = [o for o in book.mkt[BUY] + book.mkt[SELL] if o.leaves]
        left.sort(key=by_ref)
        for o in left:
            leaves = o.leaves
            o.leaves = 0
            del self.orders[o.order_id]
            out.append((Ev.CANCELLED, o, leaves, 0, o.filled, R.CANCEL_MARKET_NO_LIQUIDITY, False))
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
                out.append((Ev.CROSS_EXECUTED, b, s, q, price, match, b.leaves, b.filled, s.leaves, s.filled))
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
            out.append((Ev.UNCROSSED, book.locate, cross_type, price, volume, match))
            self.next_match = match + 1
        else:
            out.append((Ev.UNCROSSED, book.locate, cross_type, 0, 0, 0))
        self._cancel_collected_market(book, out)
        return price, volume

    def _noii(self, book: Book, out: list[Event]) -> None:
        """One imbalance message (NOII) of an auction."""
        cross_type = AUCTION_CROSS[book.state]
        price, volume, surplus = self._auction_price(book)
        if not volume:
            out.append((Ev.IMBALANCE, book.locate, cross_type, 0, 0, IMBALANCE_NO_PRICE, 0, 0, book.ref_price))
            return
        far = self._auction_price(book, False)[0]
        direction = IMBALANCE_BUY if surplus > 0 else IMBALANCE_SELL if surplus < 0 else IMBALANCE_NONE
        out.append((Ev.IMBALANCE, book.locate, cross_type, volume, abs(surplus), direction, far, price,
                    book.ref_price))

    # -- admin commands ---------------------------------------------------------------------------
    def _admin(self, cmd: Command, out: list[Event]) -> None:
        cls = type(cmd)
        if cls is ClockTick:
            if cmd.now_ns < self.now_ns:  # type: ignore[union-attr]
                out.append((Ev.REJECTED, cmd, R.ADMIN_CLOCK_BACKWARDS))
                return
            self._tick(cmd.now_ns, out)  # type: ignore[union-attr]
        elif cls is SetSchedule:
            times = cmd.times()  # type: ignore[union-attr]
            if any(times) and (times[0] <= 0 or list(times) != sorted(times)):
                out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_SCHEDULE))
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
                    out.append((Ev.MARKET_EVENT, MARKET_HALT))
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
                out.append((Ev.REJECTED, cmd, R.UNKNOWN_INSTRUMENT))
                return
            book = found
            state = book.state
            if cls is Halt:
                if state == TS_CLOSED or state == TS_HALTED:
                    out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
                    return
                self._halt(book, CAUSE_ADMIN, out)
            elif cls is Resume:
                if state != TS_HALTED and state != TS_PAUSED:
                    out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
                    return
                self._reopen(book, CAUSE_ADMIN, self.now_ns, out)
            else:
                if state == TS_CLOSED:
                    out.append((Ev.REJECTED, cmd, R.ADMIN_INVALID_TRANSITION))
                    return
                self._close(book, CAUSE_ADMIN, out)
        else:
            out.append((Ev.REJECTED, cmd, R.ADMIN_UNKNOWN_COMMAND))

    def _tick(self, t: int, out: list[Event]) -> None:
        """The clock moves to t: market-wide events, then per instrument (ascending stock locate) its
        timers and schedule transitions until none is due, then its imbalance message if due."""
        self.now_ns = t
        scheduled = self.close_ns != 0
        if scheduled:
            if self.market_phase < 1 and t >= self.pre_open_ns:
                self.market_phase = 1
                out.append((Ev.MARKET_EVENT, MARKET_SYSTEM_HOURS))
            if self.market_phase < 2 and t >= self.open_ns:
                self.market_phase = 2
                out.append((Ev.MARKET_EVENT, MARKET_OPEN))
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
            out.append((Ev.MARKET_EVENT, MARKET_CLOSE))

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

    # -- invariants -------------------------------------------------------------------------------
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
