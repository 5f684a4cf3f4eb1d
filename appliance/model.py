"""Instruments, prices and the small integer vocabularies shared by commands, events and wire codecs.

Prices are integers in ITCH Price(4) units: 1 = $0.0001, so `150.10` is `1501000`. Decimal text
converts to integers here, at the edge, and an off-tick price is rejected, never rounded.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

# Price(4): four implied decimals. ITCH carries prices as u32, so that is the largest price we accept.
PRICE_SCALE: Final = 10_000
MAX_PRICE: Final = 0xFFFF_FFFF
MAX_QTY: Final = 0xFFFF_FFFF

# Sides: small integers so that they index per-side tuples; wire letters at the edge.
BUY: Final = 0
SELL: Final = 1
SIDE_LETTER: Final = (b"B", b"S")

# Order types, numbered as FIX OrdType(40).
MARKET: Final = 1
LIMIT: Final = 2
STOP: Final = 3
STOP_LIMIT: Final = 4
ORDER_TYPES: Final = frozenset((MARKET, LIMIT, STOP, STOP_LIMIT))

# Time in force, numbered as FIX TimeInForce(59).
DAY: Final = 0
GTC: Final = 1
IOC: Final = 3
FOK: Final = 4
TIMES_IN_FORCE: Final = frozenset((DAY, GTC, IOC, FOK))

# Self-trade prevention modes. STP_DEFAULT on an order means "use the firm's configured mode".
STP_DEFAULT: Final = 0
STP_NONE: Final = 1
STP_CN: Final = 2  # cancel newest: the incoming order is cancelled
STP_CO: Final = 3  # cancel oldest: the resting order is cancelled, matching goes on
STP_DC: Final = 4  # decrement and cancel: both reduced by the overlap, the smaller is cancelled
STP_MODES: Final = frozenset((STP_DEFAULT, STP_NONE, STP_CN, STP_CO, STP_DC))
STP_NAMES: Final = {STP_NONE: "none", STP_CN: "CN", STP_CO: "CO", STP_DC: "DC"}

# Trading states of an instrument (docs/matching.md, "Trading states"). CONTINUOUS is the state of an
# engine built without trading rules. In the call states orders are collected without matching.
TS_CLOSED: Final = 0            # no new orders; cancels only
TS_PRE_OPEN: Final = 1          # orders collected, no matching, no auction information
TS_OPENING_AUCTION: Final = 2   # orders collected, imbalance (NOII) published; the open uncrosses
TS_CONTINUOUS: Final = 3        # continuous matching
TS_HALTED: Final = 4            # orders collected; admin, circuit breaker or market-wide halt
TS_PAUSED: Final = 5            # orders collected; LULD trading pause
TS_REOPENING_AUCTION: Final = 6  # orders collected, NOII published; uncross back into continuous
TS_CLOSING_AUCTION: Final = 7   # orders collected, NOII published; the close uncrosses
TRADING_STATES: Final = frozenset(range(8))
TRADING_STATE_NAMES: Final = {
    TS_CLOSED: "closed", TS_PRE_OPEN: "pre-open", TS_OPENING_AUCTION: "opening auction",
    TS_CONTINUOUS: "continuous", TS_HALTED: "halted", TS_PAUSED: "paused",
    TS_REOPENING_AUCTION: "reopening auction", TS_CLOSING_AUCTION: "closing auction",
}
CALL_STATES: Final = frozenset((TS_PRE_OPEN, TS_OPENING_AUCTION, TS_HALTED, TS_PAUSED, TS_REOPENING_AUCTION,
                                TS_CLOSING_AUCTION))
AUCTION_STATES: Final = frozenset((TS_OPENING_AUCTION, TS_REOPENING_AUCTION, TS_CLOSING_AUCTION))

# Auction (cross) types; ITCH letters at the edge (feeds.publisher).
CROSS_OPEN: Final = 1
CROSS_CLOSE: Final = 2
CROSS_REOPEN: Final = 3         # after a halt or pause (ITCH 'H')

# Imbalance direction of an auction (NOII); ITCH letters at the edge.
IMBALANCE_NONE: Final = 0       # paired exactly ('N')
IMBALANCE_BUY: Final = 1        # buy surplus ('B')
IMBALANCE_SELL: Final = 2       # sell surplus ('S')
IMBALANCE_NO_PRICE: Final = 3   # nothing can execute: no indicative price ('O')

# Market-wide events of a partition (ITCH System Event codes, or MWCB status, at the edge).
MARKET_SYSTEM_HOURS: Final = 1  # the schedule's pre-open: start of system hours ('S')
MARKET_OPEN: Final = 2          # the schedule's open: start of market hours ('Q')
MARKET_CLOSE: Final = 3         # the schedule's close: end of market hours ('M')
MARKET_HALT: Final = 4          # a market-wide halt (ITCH MWCB status 'W', level 1)

# Why an instrument changed trading state (TradingStateChanged.cause); the feed shows an ITCH Trading
# Action reason for each (feeds.publisher.CAUSE_REASON).
CAUSE_SCHEDULE: Final = 0       # the day's schedule, or an auction's end
CAUSE_ADMIN: Final = 1          # an admin command naming this instrument
CAUSE_LULD: Final = 2           # the limit state lasted too long: LULD pause, and its reopening
CAUSE_CIRCUIT: Final = 3        # the per-instrument circuit breaker
CAUSE_MARKET: Final = 4         # an admin command for the whole market (stock locate 0)
CAUSES: Final = frozenset(range(5))

# Sentinels for an empty side, chosen so that "crosses" needs no emptiness test:
# a buy crosses when best_ask <= price, a sell when best_bid >= price.
NO_BID: Final = -1
NO_ASK: Final = 1 << 62
MARKET_BUY_PRICE: Final = NO_ASK - 1
MARKET_SELL_PRICE: Final = 0


class Instrument:
    """A tradable instrument. Immutable after configuration; owned by whoever built the engine."""

    __slots__ = ("symbol", "locate", "tick", "round_lot", "stock8")

    def __init__(self, symbol: str, locate: int, tick: int = 100, round_lot: int = 100) -> None:
        if not symbol or len(symbol) > 8 or not symbol.isascii() or symbol != symbol.strip():
            raise ValueError(f"instrument symbol {symbol!r}: 1 to 8 ASCII characters, no spaces")
        if not 1 <= locate <= 0xFFFF:
            raise ValueError(f"instrument {symbol}: stock locate {locate} outside 1..65535")
        if tick < 1:
            raise ValueError(f"instrument {symbol}: tick size {tick} must be a positive integer")
        if round_lot < 1:
            raise ValueError(f"instrument {symbol}: round lot {round_lot} must be a positive integer")
        self.symbol = symbol
        self.locate = locate
        self.tick = tick
        self.round_lot = round_lot
        self.stock8 = symbol.encode("ascii").ljust(8)

    def __repr__(self) -> str:
        return f"Instrument({self.symbol!r}, locate={self.locate}, tick={self.tick}, round_lot={self.round_lot})"


def price_from_text(text: str, tick: int = 1) -> int:
    """Convert decimal text such as "150.10" to Price(4) units; reject off-tick or malformed text."""
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"price {text!r} is not a decimal number") from None
    scaled = d * PRICE_SCALE
    if scaled != scaled.to_integral_value():
        raise ValueError(f"price {text!r} has more than 4 decimals")
    units = int(scaled)
    if units % tick:
        raise ValueError(f"price {text!r} is not a multiple of the tick {price_to_text(tick)}")
    return units


def price_to_text(units: int) -> str:
    """Format Price(4) units as decimal text with 4 decimals ("150.1000")."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), PRICE_SCALE)
    return f"{sign}{whole}.{frac:04d}"
