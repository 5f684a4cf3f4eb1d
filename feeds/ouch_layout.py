"""OUCH 5.0 message layouts, declared once as data (feeds.layout), plus the appendage codec.

Every OUCH message travels in one SoupBinTCP packet: client messages in Unsequenced Data ``U``,
server messages in Sequenced Data ``S``. Integers are big-endian; Price is i64 with 4 implied
decimals (our Price(4) units, unchanged); alpha fields are ASCII, left-justified, space-padded::

    Enter Order 'O' (47 bytes + appendage)
     0    1            5     6          10          18         26  27  28  29  30  31          45    47
    +----+------------+-----+----------+-----------+----------+---+---+---+---+---+-----------+-----+--//--+
    | O  | UserRefNum | side| quantity |  symbol   |  price   |tif|dsp|cap|iso|crs| ClOrdID   | alen| opts |
    |    |    u32     |  c  |   u32    |  alpha 8  |   i64    | c | c | c | c | c | alpha 14  | u16 |      |
    +----+------------+-----+----------+-----------+----------+---+---+---+---+---+-----------+-----+--//--+

    Appendage (alen bytes): a sequence of options, each
    +-----+-----+------------------+
    | len | tag |  value (len - 1) |      len counts the tag and the value, not itself
    | u8  | u8  |                  |
    +-----+-----+------------------+

    Order Accepted 'A' (64 bytes + appendage)
     0    1          9            13    14         18         26         34  35  36         44  45  46  47  48          62    64
    +----+----------+------------+-----+----------+----------+----------+---+---+----------+---+---+---+---+-----------+-----+--//--+
    | A  |timestamp | UserRefNum | side| quantity |  symbol  |  price   |tif|dsp| order ref|cap|iso|crs|st | ClOrdID   | alen| opts |
    |    |   u64    |    u32     |  c  |   u32    | alpha 8  |   i64    | c | c |   u64    | c | c | c | c | alpha 14  | u16 |      |
    +----+----------+------------+-----+----------+----------+----------+---+---+----------+---+---+---+---+-----------+-----+--//--+

The other messages are tables below (offsets follow from the field order). Layouts were checked
against the Nasdaq OUCH 5.0 specification and the captures in data/captures/Nasdaq.Nsm.Ouch.v5.0
(tests/test_ouch_codec.py decodes and re-encodes them byte for byte). Timestamps are nanoseconds
since midnight.
"""
from __future__ import annotations

from typing import Any, Final, NamedTuple, Sequence

from feeds.layout import U16, U32, U64, I64, Alpha8, Alpha14, Buffer, Char, Msg

__all__ = [
    "EnterOrder", "ReplaceOrder", "CancelOrder", "ModifyOrder", "AccountQuery",
    "SystemEvent", "OrderAccepted", "OrderReplaced", "OrderCanceled", "OrderExecuted",
    "OrderRejected", "CancelReject", "OrderModified", "AccountQueryResponse",
    "ENTER_ORDER", "REPLACE_ORDER", "CANCEL_ORDER", "MODIFY_ORDER", "ACCOUNT_QUERY",
    "SYSTEM_EVENT", "ORDER_ACCEPTED", "ORDER_REPLACED", "ORDER_CANCELED", "ORDER_EXECUTED",
    "ORDER_REJECTED", "CANCEL_REJECT", "ORDER_MODIFIED", "ACCOUNT_QUERY_RESPONSE",
    "INBOUND", "OUTBOUND", "HAS_APPENDAGE", "OPTION_SIZES", "Option",
    "encode_appendage", "parse_appendage", "decode", "encode",
]


# --- inbound (client -> server, inside SoupBinTCP 'U') -------------------------------------------

class EnterOrder(NamedTuple):
    user_ref_num: U32
    side: Char             # B buy, S sell, T sell short, E sell short exempt
    quantity: U32
    symbol: Alpha8
    price: I64
    time_in_force: Char    # 0 day, 3 IOC, 5 GTX, 6 GTT, E after hours
    display: Char
    capacity: Char
    iso: Char              # intermarket sweep eligibility Y/N
    cross_type: Char       # N continuous market, O opening, C closing, ...
    cl_ord_id: Alpha14
    appendage_length: U16


class ReplaceOrder(NamedTuple):
    orig_user_ref_num: U32
    user_ref_num: U32
    quantity: U32          # total shares liable for the chain, previous executions included
    price: I64
    time_in_force: Char
    display: Char
    iso: Char
    cl_ord_id: Alpha14
    appendage_length: U16


class CancelOrder(NamedTuple):
    user_ref_num: U32
    quantity: U32          # new intended order size (executions included); 0 cancels all


class ModifyOrder(NamedTuple):
    user_ref_num: U32
    side: Char
    quantity: U32


class AccountQuery(NamedTuple):
    pass


ENTER_ORDER = Msg(b"O", "Enter Order", EnterOrder)                    # 47 bytes
REPLACE_ORDER = Msg(b"U", "Replace Order", ReplaceOrder)              # 40 bytes
CANCEL_ORDER = Msg(b"X", "Cancel Order", CancelOrder)                 # 9 bytes
MODIFY_ORDER = Msg(b"M", "Modify Order", ModifyOrder)                 # 10 bytes
ACCOUNT_QUERY = Msg(b"Q", "Account Query", AccountQuery)              # 1 byte


# --- outbound (server -> client, inside SoupBinTCP 'S') ------------------------------------------

class SystemEvent(NamedTuple):
    timestamp: U64
    event_code: Char       # S start of day, E end of day


class OrderAccepted(NamedTuple):
    timestamp: U64
    user_ref_num: U32
    side: Char
    quantity: U32
    symbol: Alpha8
    price: I64
    time_in_force: Char
    display: Char
    order_ref: U64
    capacity: Char
    iso: Char
    cross_type: Char
    order_state: Char      # L live, D dead (accepted and already done)
    cl_ord_id: Alpha14
    appendage_length: U16


class OrderReplaced(NamedTuple):
    timestamp: U64
    orig_user_ref_num: U32
    user_ref_num: U32
    side: Char
    quantity: U32
    symbol: Alpha8
    price: I64
    time_in_force: Char
    display: Char
    order_ref: U64
    capacity: Char
    iso: Char
    cross_type: Char
    order_state: Char
    cl_ord_id: Alpha14
    appendage_length: U16


class OrderCanceled(NamedTuple):
    timestamp: U64
    user_ref_num: U32
    quantity: U32          # shares just decremented (not cumulative)
    reason: Char


class OrderExecuted(NamedTuple):
    timestamp: U64
    user_ref_num: U32
    quantity: U32
    price: I64
    liquidity_flag: Char   # A added (maker), R removed (taker)
    match_number: U64
    appendage_length: U16


class OrderRejected(NamedTuple):
    timestamp: U64
    user_ref_num: U32
    reason: U16
    cl_ord_id: Alpha14


class CancelReject(NamedTuple):
    timestamp: U64
    user_ref_num: U32


class OrderModified(NamedTuple):
    timestamp: U64
    user_ref_num: U32
    side: Char
    quantity: U32


class AccountQueryResponse(NamedTuple):
    timestamp: U64
    next_user_ref_num: U32


SYSTEM_EVENT = Msg(b"S", "System Event", SystemEvent)                  # 10 bytes
ORDER_ACCEPTED = Msg(b"A", "Order Accepted", OrderAccepted)            # 64 bytes
ORDER_REPLACED = Msg(b"U", "Order Replaced", OrderReplaced)            # 68 bytes
ORDER_CANCELED = Msg(b"C", "Order Canceled", OrderCanceled)            # 18 bytes
ORDER_EXECUTED = Msg(b"E", "Order Executed", OrderExecuted)            # 36 bytes
ORDER_REJECTED = Msg(b"J", "Order Rejected", OrderRejected)            # 29 bytes
CANCEL_REJECT = Msg(b"I", "Cancel Reject", CancelReject)               # 13 bytes
ORDER_MODIFIED = Msg(b"M", "Order Modified", OrderModified)            # 18 bytes
ACCOUNT_QUERY_RESPONSE = Msg(b"Q", "Account Query Response", AccountQueryResponse)  # 13 bytes

INBOUND: dict[bytes, Msg[Any]] = {
    m.type_byte: m for m in (ENTER_ORDER, REPLACE_ORDER, CANCEL_ORDER, MODIFY_ORDER, ACCOUNT_QUERY)
    if m.type_byte is not None
}
OUTBOUND: dict[bytes, Msg[Any]] = {
    m.type_byte: m for m in (SYSTEM_EVENT, ORDER_ACCEPTED, ORDER_REPLACED, ORDER_CANCELED,
                             ORDER_EXECUTED, ORDER_REJECTED, CANCEL_REJECT, ORDER_MODIFIED,
                             ACCOUNT_QUERY_RESPONSE)
    if m.type_byte is not None
}
#: Layouts whose last field is the appendage length, followed by that many bytes of options.
HAS_APPENDAGE: frozenset[str] = frozenset(
    m.name for m in (ENTER_ORDER, REPLACE_ORDER, ORDER_ACCEPTED, ORDER_REPLACED, ORDER_EXECUTED))

#: Option tag -> value size in bytes (OUCH 5.0 appendix); the codec checks sizes of known tags.
OPTION_SIZES: dict[int, int] = {
    1: 8,    # SecondaryOrdRefNum
    2: 4,    # Firm
    3: 4,    # MinQty
    4: 1,    # CustomerType
    5: 4,    # MaxFloor
    6: 1,    # PriceType
    7: 4,    # PegOffset
    9: 8,    # DiscretionPrice
    10: 1,   # DiscretionPriceType
    11: 4,   # DiscretionPegOffset
    12: 1,   # PostOnly
    13: 4,   # RandomReserves
    14: 4,   # Route
    15: 4,   # ExpireTime
    16: 1,   # TradeNow
    17: 1,   # HandleInst
    18: 1,   # BBO Weight Indicator
    22: 4,   # DisplayQuantity
    23: 8,   # DisplayPrice
    24: 2,   # GroupID
    25: 1,   # SharesLocated
    26: 4,   # LocateBroker
    27: 1,   # Side
    28: 1,   # UserRefIdx
}

Option = tuple[int, bytes]


def encode_appendage(options: Sequence[Option]) -> bytes:
    """The appendage bytes for ``options`` ((tag, value) pairs, in order)."""
    out = bytearray()
    for tag, value in options:
        if not 0 <= tag <= 0xFF or not 1 <= len(value) + 1 <= 0xFF:
            raise ValueError(f"OUCH appendage: option tag {tag} with {len(value)} bytes cannot be encoded")
        out.append(len(value) + 1)
        out.append(tag)
        out += value
    return bytes(out)


def parse_appendage(buf: Buffer) -> list[Option]:
    """Split appendage bytes into (tag, value) options; ValueError if they do not add up."""
    out: list[Option] = []
    pos = 0
    end = len(buf)
    while pos < end:
        length = buf[pos]
        if length == 0 or pos + 1 + length > end:
            raise ValueError(f"OUCH appendage: option length {length} at byte {pos} runs past {end}")
        tag = buf[pos + 1]
        value = bytes(buf[pos + 2:pos + 1 + length])
        size = OPTION_SIZES.get(tag)
        if size is not None and size != len(value):
            raise ValueError(f"OUCH appendage: option {tag} has {len(value)} bytes, expected {size}")
        out.append((tag, value))
        pos += 1 + length
    return out


_TYPE_BYTE: Final = tuple(bytes((i,)) for i in range(256))   # a type byte's value -> the table's key


def decode(buf: Buffer, table: dict[bytes, Msg[Any]]) -> tuple[Any, list[Option]]:
    """Decode one OUCH message (type byte first) using ``table`` (INBOUND or OUTBOUND).

    Returns (message tuple, appendage options). ValueError on an unknown type, a wrong length or a
    malformed appendage.
    """
    if not buf:
        raise ValueError("OUCH: empty message")
    layout = table.get(_TYPE_BYTE[buf[0]])
    if layout is None:
        raise ValueError(f"OUCH: unknown message type {bytes(buf[:1])!r}")
    size = layout.size
    if layout.name in HAS_APPENDAGE:
        if len(buf) < size:
            raise ValueError(f"OUCH {layout.name}: {len(buf)} bytes, expected at least {size}")
        n = len(buf)
        msg = layout.decode_trusted(buf if n == size else buf[:size])
        alen = msg[-1]
        if n == size and not alen:   # no appendage (the usual order)
            return msg, []
        if n != size + alen:
            raise ValueError(f"OUCH {layout.name}: appendage length {alen} but {len(buf) - size} bytes follow")
        return msg, parse_appendage(buf[size:])
    if len(buf) != size:
        raise ValueError(f"OUCH {layout.name}: {len(buf)} bytes, expected {size}")
    return layout.decode_trusted(buf), []


def encode(layout: Msg[Any], msg: Any, options: Sequence[Option] = ()) -> bytes:
    """Encode ``msg`` with ``options`` as its appendage (the appendage length is computed here)."""
    if layout.name in HAS_APPENDAGE:
        appendage = encode_appendage(options)
        return layout.encode(msg._replace(appendage_length=len(appendage))) + appendage
    if options:
        raise ValueError(f"OUCH {layout.name} has no appendage")
    return layout.encode(msg)
