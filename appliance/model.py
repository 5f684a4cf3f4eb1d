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
