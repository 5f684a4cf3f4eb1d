"""NASDAQ TotalView-ITCH 5.0: every message type, declared once as data, with a fast codec.

Every message starts with the same 11-byte header; the type byte selects the body::

     0        1        3        5                         11
    +--------+--------+--------+--------+--------+--------+------------------//--+
    |  type  | stock  |tracking|        timestamp         |  body (per type)      |
    | 1 char | locate | number |  u48, ns since midnight  |                       |
    |        |  u16   |  u16   |                          |                       |
    +--------+--------+--------+--------+--------+--------+------------------//--+

    Add Order 'A' (36 bytes), the bulk of any feed:
    +----+------+------+---------+------------+----+--------+----------+--------+
    | 'A'|locate|track | ts (6)  | order ref  |side| shares |  stock   | price  |
    |  0 |   1  |   3  |    5    |  u64 @11   |@19 |u32 @20 | 8 a @24  |u32 @32 |
    +----+------+------+---------+------------+----+--------+----------+--------+

Integers are unsigned big-endian; Price(4) is u32 with 4 implied decimals
(150.10 -> 1501000), Price(8) u64 with 8; alpha fields are ASCII, left-justified,
space-padded (decode returns them as bytes, padding included, so re-encoding is
byte-identical). Timestamps are int nanoseconds.

API:
    decode(buf) -> Message            one message (a typed NamedTuple per type)
    encode(msg) -> bytes              validating encoder for any Message
    LAYOUTS[b"A"] -> Msg              the layout table keyed by type byte
    encode_add_order(...) etc.        hot-path encoders, one per type, derived from the layout
                                      (fast_encoder; FAST_ENCODERS by type byte): positional
                                      ints and bytes, no validation beyond what struct does
    stock8("AAPL") -> b"AAPL    "     pad a symbol once, then reuse it on the hot path

Field values are not range-checked on the hot path: ``struct`` raises ``struct.error``
for an integer out of range, ``int.to_bytes`` raises OverflowError for a timestamp of
2**48 ns or more (for example epoch nanoseconds passed by mistake), but a short alpha is
NUL-padded by ``struct``: pass symbols made by ``stock8``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Final, NamedTuple

from feeds.layout import (
    U16,
    U32,
    U48,
    U64,
    Alpha2,
    Alpha4,
    Alpha8,
    Buffer,
    Char,
    Msg,
    alpha,
)

__all__ = [
    "Message", "LAYOUTS", "LAYOUT_OF", "FAST_ENCODERS", "decode", "encode", "message_type",
    "stock8", "HEADER_SIZE", "TIMESTAMP_AT", "Price4", "Price8", "Stock",
    "SystemEvent", "StockDirectory", "StockTradingAction", "RegShoRestriction",
    "MarketParticipantPosition", "MwcbDeclineLevel", "MwcbStatus", "IpoQuotingPeriodUpdate",
    "LuldAuctionCollar", "OperationalHalt", "AddOrder", "AddOrderMpid", "OrderExecuted",
    "OrderExecutedWithPrice", "OrderCancel", "OrderDelete", "OrderReplace", "Trade",
    "CrossTrade", "BrokenTrade", "Noii", "Rpii", "DirectListingCapitalRaise",
]

#: Price with 4 implied decimals (u32).
Price4 = U32
#: Price with 8 implied decimals (u64), used by the MWCB decline levels.
Price8 = U64
#: Stock symbol: 8 alpha.
Stock = Alpha8



# --------------------------------------------------------------------------------------------
# The messages, in the order of the specification. Each class is the layout: field order,
# wire type and size come from the annotations (see feeds.layout).
# --------------------------------------------------------------------------------------------

class SystemEvent(NamedTuple):
    """'S' System Event (12): O start of messages, S/E start/end of system hours,
    Q/M start/end of market hours, C end of messages."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    event_code: Char


class StockDirectory(NamedTuple):
    """'R' Stock Directory (39): one per symbol at the start of the day."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    market_category: Char
    financial_status: Char
    round_lot_size: U32
    round_lots_only: Char
    issue_classification: Char
    issue_sub_type: Alpha2
    authenticity: Char
    short_sale_threshold: Char
    ipo_flag: Char
    luld_ref_price_tier: Char
    etp_flag: Char
    etp_leverage_factor: U32
    inverse: Char


class StockTradingAction(NamedTuple):
    """'H' Stock Trading Action (25): H halted, P paused, Q quotation only, T trading."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    trading_state: Char
    reserved: Char
    reason: Alpha4


class RegShoRestriction(NamedTuple):
    """'Y' Reg SHO Short Sale Price Test Restricted Indicator (20): action 0, 1 or 2."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    reg_sho_action: Char


class MarketParticipantPosition(NamedTuple):
    """'L' Market Participant Position (26)."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    mpid: Alpha4
    stock: Stock
    primary_market_maker: Char
    market_maker_mode: Char
    participant_state: Char


class MwcbDeclineLevel(NamedTuple):
    """'V' Market-Wide Circuit Breaker Decline Level (35): three Price(8) levels."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    level1: Price8
    level2: Price8
    level3: Price8


class MwcbStatus(NamedTuple):
    """'W' Market-Wide Circuit Breaker Status (12): breached level '1', '2' or '3'."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    breached_level: Char


class IpoQuotingPeriodUpdate(NamedTuple):
    """'K' IPO Quoting Period Update (28): release time in seconds since midnight;
    qualifier A anticipated, C cancelled/postponed."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    release_time_s: U32
    release_qualifier: Char
    ipo_price: Price4


class LuldAuctionCollar(NamedTuple):
    """'J' LULD Auction Collar (35)."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    ref_price: Price4
    upper_price: Price4
    lower_price: Price4
    extension: U32


class OperationalHalt(NamedTuple):
    """'h' Operational Halt (21): market code Q Nasdaq, B BX, X PSX; action H halted, T resumed."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    market_code: Char
    halt_action: Char


class AddOrder(NamedTuple):
    """'A' Add Order, no MPID attribution (36)."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    order_ref: U64
    side: Char
    shares: U32
    stock: Stock
    price: Price4


class AddOrderMpid(NamedTuple):
    """'F' Add Order with MPID attribution (40)."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    order_ref: U64
    side: Char
    shares: U32
    stock: Stock
    price: Price4
    attribution: Alpha4


class OrderExecuted(NamedTuple):
    """'E' Order Executed (31), at the order's display price."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    order_ref: U64
    executed_shares: U32
    match_number: U64


class OrderExecutedWithPrice(NamedTuple):
    """'C' Order Executed With Price (36); printable Y/N."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    order_ref: U64
    executed_shares: U32
    match_number: U64
    printable: Char
    execution_price: Price4


class OrderCancel(NamedTuple):
    """'X' Order Cancel (23): a partial cancel of ``cancelled_shares``."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    order_ref: U64
    cancelled_shares: U32


class OrderDelete(NamedTuple):
    """'D' Order Delete (19)."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    order_ref: U64


class OrderReplace(NamedTuple):
    """'U' Order Replace (35): retires ``original_order_ref``, introduces ``new_order_ref``."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    original_order_ref: U64
    new_order_ref: U64
    shares: U32
    price: Price4


class Trade(NamedTuple):
    """'P' Trade, non-cross (44): a match against a non-displayed order (order_ref may be 0)."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    order_ref: U64
    side: Char
    shares: U32
    stock: Stock
    price: Price4
    match_number: U64


class CrossTrade(NamedTuple):
    """'Q' Cross Trade (40): shares is u64; cross type O open, C close, H halt/IPO, I intraday."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    shares: U64
    stock: Stock
    cross_price: Price4
    match_number: U64
    cross_type: Char


class BrokenTrade(NamedTuple):
    """'B' Broken Trade (19)."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    match_number: U64


class Noii(NamedTuple):
    """'I' Net Order Imbalance Indicator (50); direction B, S, N, O."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    paired_shares: U64
    imbalance_shares: U64
    imbalance_direction: Char
    stock: Stock
    far_price: Price4
    near_price: Price4
    current_ref_price: Price4
    cross_type: Char
    price_variation: Char


class Rpii(NamedTuple):
    """'N' Retail Price Improvement Indicator (20): interest flag B, S, A (both) or N."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    interest_flag: Char


class DirectListingCapitalRaise(NamedTuple):
    """'O' Direct Listing with Capital Raise price discovery (48); eligibility Y/N."""

    stock_locate: U16
    tracking: U16
    timestamp: U48
    stock: Stock
    open_eligibility: Char
    min_allowable_price: Price4
    max_allowable_price: Price4
    near_execution_price: Price4
    near_execution_time: U64
    lower_price_collar: Price4
    upper_price_collar: Price4


Message = (SystemEvent | StockDirectory | StockTradingAction | RegShoRestriction
           | MarketParticipantPosition | MwcbDeclineLevel | MwcbStatus | IpoQuotingPeriodUpdate
           | LuldAuctionCollar | OperationalHalt | AddOrder | AddOrderMpid | OrderExecuted
           | OrderExecutedWithPrice | OrderCancel | OrderDelete | OrderReplace | Trade
           | CrossTrade | BrokenTrade | Noii | Rpii | DirectListingCapitalRaise)

# --------------------------------------------------------------------------------------------
# The layout table
# --------------------------------------------------------------------------------------------

SYSTEM_EVENT = Msg(b"S", "System Event", SystemEvent)
STOCK_DIRECTORY = Msg(b"R", "Stock Directory", StockDirectory)
STOCK_TRADING_ACTION = Msg(b"H", "Stock Trading Action", StockTradingAction)
REG_SHO_RESTRICTION = Msg(b"Y", "Reg SHO Restriction", RegShoRestriction)
MARKET_PARTICIPANT_POSITION = Msg(b"L", "Market Participant Position", MarketParticipantPosition)
MWCB_DECLINE_LEVEL = Msg(b"V", "MWCB Decline Level", MwcbDeclineLevel)
MWCB_STATUS = Msg(b"W", "MWCB Status", MwcbStatus)
IPO_QUOTING_PERIOD_UPDATE = Msg(b"K", "IPO Quoting Period Update", IpoQuotingPeriodUpdate)
LULD_AUCTION_COLLAR = Msg(b"J", "LULD Auction Collar", LuldAuctionCollar)
OPERATIONAL_HALT = Msg(b"h", "Operational Halt", OperationalHalt)
ADD_ORDER = Msg(b"A", "Add Order", AddOrder)
ADD_ORDER_MPID = Msg(b"F", "Add Order with MPID", AddOrderMpid)
ORDER_EXECUTED = Msg(b"E", "Order Executed", OrderExecuted)
ORDER_EXECUTED_WITH_PRICE = Msg(b"C", "Order Executed With Price", OrderExecutedWithPrice)
ORDER_CANCEL = Msg(b"X", "Order Cancel", OrderCancel)
ORDER_DELETE = Msg(b"D", "Order Delete", OrderDelete)
ORDER_REPLACE = Msg(b"U", "Order Replace", OrderReplace)
TRADE = Msg(b"P", "Trade", Trade)
CROSS_TRADE = Msg(b"Q", "Cross Trade", CrossTrade)
BROKEN_TRADE = Msg(b"B", "Broken Trade", BrokenTrade)
NOII = Msg(b"I", "NOII", Noii)
RPII = Msg(b"N", "RPII", Rpii)
DIRECT_LISTING_CAPITAL_RAISE = Msg(b"O", "Direct Listing with Capital Raise", DirectListingCapitalRaise)

_ALL: tuple[Msg[Any], ...] = (
    SYSTEM_EVENT, STOCK_DIRECTORY, STOCK_TRADING_ACTION, REG_SHO_RESTRICTION,
    MARKET_PARTICIPANT_POSITION, MWCB_DECLINE_LEVEL, MWCB_STATUS, IPO_QUOTING_PERIOD_UPDATE,
    LULD_AUCTION_COLLAR, OPERATIONAL_HALT, ADD_ORDER, ADD_ORDER_MPID, ORDER_EXECUTED,
    ORDER_EXECUTED_WITH_PRICE, ORDER_CANCEL, ORDER_DELETE, ORDER_REPLACE, TRADE, CROSS_TRADE,
    BROKEN_TRADE, NOII, RPII, DIRECT_LISTING_CAPITAL_RAISE,
)

#: Where the common header's timestamp starts, and the header's size (type, stock locate, tracking
#: number, timestamp): every layout starts with it (checked below).
TIMESTAMP_AT: int = SYSTEM_EVENT.fields[2].offset                          # 5
HEADER_SIZE: int = TIMESTAMP_AT + SYSTEM_EVENT.fields[2].size              # 11

#: Every ITCH 5.0 layout keyed by its type byte (b"A" ...).
LAYOUTS: dict[bytes, Msg[Any]] = {m.type_byte: m for m in _ALL if m.type_byte is not None}
#: The layout of each message class.
LAYOUT_OF: dict[type, Msg[Any]] = {m.cls: m for m in _ALL}

# Dispatch by the integer value of the type byte: one list index per decode.
_BY_ORD: list[Msg[Any] | None] = [None] * 256
for _m in _ALL:
    assert _m.type_byte is not None and _m.names[:3] == ("stock_locate", "tracking", "timestamp")
    assert _m.fields[3].offset == HEADER_SIZE if len(_m.fields) > 3 else _m.size == HEADER_SIZE
    _BY_ORD[_m.type_byte[0]] = _m
del _m


def decode(buf: Buffer) -> Message:
    """Decode one ITCH message (exactly its bytes, no length prefix).

    Raises ValueError for an empty buffer, an unknown type or a length that does not
    match the type.
    """
    if not buf:
        raise ValueError("ITCH: empty message")
    layout = _BY_ORD[buf[0]]
    if layout is None:
        raise ValueError(f"ITCH: unknown message type {bytes(buf[:1])!r}")
    if len(buf) != layout.size:
        raise ValueError(f"ITCH {layout.type_byte!r} {layout.name}: expected {layout.size} bytes, got {len(buf)}")
    msg: Message = layout.decode_trusted(buf)
    return msg


def encode(msg: Message) -> bytes:
    """Encode any ITCH message object, validating fields (ValueError on bad values)."""
    layout = LAYOUT_OF.get(type(msg))
    if layout is None:
        raise ValueError(f"ITCH: not an ITCH message: {type(msg).__name__}")
    return layout.encode(msg)


def message_type(msg: Message) -> bytes:
    """The type byte of a message object (b"A" for an AddOrder)."""
    type_byte = LAYOUT_OF[type(msg)].type_byte
    assert type_byte is not None
    return type_byte


def stock8(symbol: str | bytes) -> bytes:
    """A stock symbol as the 8-byte alpha field (b"AAPL    "); ValueError if longer than 8."""
    return alpha(symbol, 8)


# --------------------------------------------------------------------------------------------
# Hot-path encoders, derived from the layouts: one struct call per message. Arguments follow the
# wire order; the timestamp is int nanoseconds since midnight; alpha arguments must already have
# their exact size (use stock8). The tests check each against the validating encoder.
# --------------------------------------------------------------------------------------------

def fast_encoder(layout: Msg[Any]) -> Callable[..., bytes]:
    """The hot-path encoder of an ITCH layout: ``(stock_locate, tracking, ts_ns, *fields)`` -> bytes.

    Generated from the layout table (like walcodec's encoders): a function named ``encode_<message>``
    after the layout's class (``encode_add_order`` for AddOrder) whose parameters are the layout's
    fields, in wire order, and whose body is one struct call; as fast as one written by hand.
    """
    rest = layout.names[3:]
    if layout.type_byte is None or layout.names[:3] != ("stock_locate", "tracking", "timestamp") or [
            f.name for f in layout.fields if f.code == "u48"] != ["timestamp"]:
        raise ValueError(f"ITCH {layout.name}: not a message with the common header")
    if {"pack", "type_byte"} & set(rest):
        raise ValueError(f"ITCH {layout.name}: a field name the generated encoder uses itself")
    name = "encode_" + re.sub(r"(?<!^)(?=[A-Z])", "_", layout.cls.__name__).lower()
    params = ["stock_locate: int", "tracking: int", "ts_ns: int"] + [
        f"{f.name}: {'bytes' if f.is_alpha else 'int'}" for f in layout.fields[3:]]
    src = (f"def {name}({', '.join(params)}) -> bytes:\n"
           f"    return pack(type_byte, stock_locate, tracking, ts_ns.to_bytes(6, 'big'), {', '.join(rest)})\n")
    namespace: dict[str, Any] = {"pack": layout.struct.pack, "type_byte": layout.type_byte}
    exec(compile(src, f"<itch encoder {layout.cls.__name__}>", "exec"), namespace)
    encode: Callable[..., bytes] = namespace[name]
    encode.__doc__ = f"{layout.type_byte.decode('ascii')!r} {layout.name} ({layout.size} bytes)."
    return encode


#: The hot-path encoder of each type byte (same argument order as the message fields).
FAST_ENCODERS: dict[bytes, Callable[..., bytes]] = {t: fast_encoder(m) for t, m in LAYOUTS.items()}

# By name, for callers that encode one kind of message (a test checks each name against its encoder's).
encode_system_event: Final = FAST_ENCODERS[b"S"]
encode_stock_directory: Final = FAST_ENCODERS[b"R"]
encode_stock_trading_action: Final = FAST_ENCODERS[b"H"]
encode_reg_sho_restriction: Final = FAST_ENCODERS[b"Y"]
encode_market_participant_position: Final = FAST_ENCODERS[b"L"]
encode_mwcb_decline_level: Final = FAST_ENCODERS[b"V"]
encode_mwcb_status: Final = FAST_ENCODERS[b"W"]
encode_ipo_quoting_period_update: Final = FAST_ENCODERS[b"K"]
encode_luld_auction_collar: Final = FAST_ENCODERS[b"J"]
encode_operational_halt: Final = FAST_ENCODERS[b"h"]
encode_add_order: Final = FAST_ENCODERS[b"A"]
encode_add_order_mpid: Final = FAST_ENCODERS[b"F"]
encode_order_executed: Final = FAST_ENCODERS[b"E"]
encode_order_executed_with_price: Final = FAST_ENCODERS[b"C"]
encode_order_cancel: Final = FAST_ENCODERS[b"X"]
encode_order_delete: Final = FAST_ENCODERS[b"D"]
encode_order_replace: Final = FAST_ENCODERS[b"U"]
encode_trade: Final = FAST_ENCODERS[b"P"]
encode_cross_trade: Final = FAST_ENCODERS[b"Q"]
encode_broken_trade: Final = FAST_ENCODERS[b"B"]
encode_noii: Final = FAST_ENCODERS[b"I"]
encode_rpii: Final = FAST_ENCODERS[b"N"]
encode_direct_listing_capital_raise: Final = FAST_ENCODERS[b"O"]
