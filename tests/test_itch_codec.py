"""TotalView-ITCH 5.0 codec: real NASDAQ bytes, the layout table, round trips, malformed input."""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds import itch, moldudp64, pcap
from feeds.layout import Field, Msg

from conftest import needs_shared, require_shared

SHARED = Path(os.environ.get("MATCHWIRE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CAPTURES = SHARED / "data" / "captures"
ORIGINAL = CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0"
DATED = CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0.20230822"

needs_captures = needs_shared(CAPTURES)   # a skip, except in CI (CI=true): there a failure

# Sizes from the TotalView-ITCH 5.0 specification.
SPEC_SIZES = {
    b"S": 12, b"R": 39, b"H": 25, b"Y": 20, b"L": 26, b"V": 35, b"W": 12, b"K": 28, b"J": 35,
    b"h": 21, b"A": 36, b"F": 40, b"E": 31, b"C": 36, b"X": 23, b"D": 19, b"U": 35, b"P": 44,
    b"Q": 40, b"B": 19, b"I": 50, b"N": 20, b"O": 48,
}


def itch_messages(path: Path) -> list[tuple[moldudp64.MoldPacket, bytes]]:
    """(packet, UDP payload) for every MoldUDP64 datagram of a capture."""
    out = []
    for packet in pcap.read_pcap(path):
        assert packet.proto == pcap.IPPROTO_UDP
        out.append((moldudp64.parse_packet(packet.payload), packet.payload))
    return out


# --------------------------------------------------------------------------------------------
# Real captures
# --------------------------------------------------------------------------------------------

# file -> (datagrams, type bytes of every message in order)
ORIGINAL_CONTENTS = {
    "AddOrderNoMpidAttributionMessage.pcap": (1, "A"),
    "MarketParticipantPositionMessage.pcap": (1, "L"),
    "Multiple.Packets.pcap": (2, "D" + "AAAAAAAAFAAAAFAAAAAAAAAAAAAAAAAAAAAAAA"),
    "NetOrderImbalanceIndicatorMessage.pcap": (1, "I"),
    "OrderDeleteMessage.pcap": (1, "D"),
    "OrderExecutedMessage.pcap": (1, "E"),
    "OrderReplaceMessage.pcap": (1, "U"),
    "StockTradingActionMessage.pcap": (1, "H"),
}
DATED_CONTENTS = {
    "AddOrderNoMPID.pcap": (5, "A"), "AddOrderWithMPID.pcap": (5, "F"),
    "CrossTrade.pcap": (5, "Q"), "LULDAuctionCollar.pcap": (5, "J"),
    "MarketParticipantPosition.pcap": (5, "L"), "NetOrderImbalanceIndicator.pcap": (5, "I"),
    "NonCrossTrade.pcap": (5, "P"), "OrderCancel.pcap": (5, "X"), "OrderDelete.pcap": (5, "D"),
    "OrderExecuted.pcap": (5, "E"), "OrderExecutedWithPrice.pcap": (5, "C"),
    "OrderReplace.pcap": (5, "U"), "RegSHORestriction.pcap": (5, "Y"),
    "StockTradingAction.pcap": (5, "H"), "SystemEvent.pcap": (1, "S"),
}


@needs_captures
def test_every_itch_capture_is_listed() -> None:
    assert sorted(p.name for p in ORIGINAL.glob("*.pcap")) == sorted(ORIGINAL_CONTENTS)
    assert sorted(p.name for p in DATED.glob("*.pcap")) == sorted(DATED_CONTENTS)


@needs_captures
@pytest.mark.parametrize("name", sorted(ORIGINAL_CONTENTS))
def test_original_captures_decode_and_reencode_byte_identical(name: str) -> None:
    datagrams, types = ORIGINAL_CONTENTS[name]
    parsed = itch_messages(ORIGINAL / name)
    assert len(parsed) == datagrams
    seen = ""
    for packet, _ in parsed:
        assert packet.session == b"000010059B"
        assert packet.message_count == len(packet.messages)
        for raw in packet.messages:
            msg = itch.decode(raw)
            assert itch.encode(msg) == raw
            assert itch.FAST_ENCODERS[itch.message_type(msg)](*msg) == raw
            seen += chr(raw[0])
    assert seen == types


@needs_captures
@pytest.mark.parametrize("name", sorted(DATED_CONTENTS))
def test_dated_captures_decode_and_reencode_byte_identical(name: str) -> None:
    datagrams, type_char = DATED_CONTENTS[name]
    parsed = itch_messages(DATED / name)
    assert len(parsed) == datagrams
    for packet, _ in parsed:
        assert (packet.session, packet.sequence, packet.message_count) == (b"\0" * 10, 0, 1)
        (raw,) = packet.messages
        msg = itch.decode(raw)
        assert itch.message_type(msg) == type_char.encode()
        assert itch.encode(msg) == raw


@needs_captures
def test_multiple_packets_holds_a_full_datagram_of_38_add_orders() -> None:
    (_, first), (big, payload) = itch_messages(ORIGINAL / "Multiple.Packets.pcap")
    assert len(payload) == 1472
    assert big.message_count == 38 and big.sequence == 19009117
    orders = [itch.decode(m) for m in big.messages]
    assert all(isinstance(o, (itch.AddOrder, itch.AddOrderMpid)) for o in orders)
    assert sum(isinstance(o, itch.AddOrderMpid) for o in orders) == 2


@needs_captures
def test_decoded_fields_of_a_real_add_order() -> None:
    ((packet, _),) = itch_messages(ORIGINAL / "AddOrderNoMpidAttributionMessage.pcap")
    msg = itch.decode(packet.messages[0])
    assert isinstance(msg, itch.AddOrder)
    assert msg.side in (b"B", b"S")
    assert len(msg.stock) == 8 and msg.stock == msg.stock.rstrip(b" ").ljust(8)
    # the header timestamp is nanoseconds since midnight: a trading day is < 86400 s
    assert 0 < msg.timestamp < 86_400 * 10**9
    assert msg.timestamp == int.from_bytes(packet.messages[0][5:11], "big")
    assert msg.order_ref == int.from_bytes(packet.messages[0][11:19], "big")
    assert msg.price == int.from_bytes(packet.messages[0][32:36], "big")


@needs_captures
def test_dated_captures_cover_their_types_with_consistent_fields() -> None:
    for packet, _ in itch_messages(DATED / "CrossTrade.pcap"):
        msg = itch.decode(packet.messages[0])
        assert isinstance(msg, itch.CrossTrade)
        assert msg.cross_type in (b"O", b"C", b"H", b"I")
    for packet, _ in itch_messages(DATED / "SystemEvent.pcap"):
        msg = itch.decode(packet.messages[0])
        assert isinstance(msg, itch.SystemEvent)
        assert msg.stock_locate == 0 and msg.event_code in b"OSQMEC"


# --------------------------------------------------------------------------------------------
# The layout table
# --------------------------------------------------------------------------------------------

def test_every_type_is_in_the_table_with_its_spec_size() -> None:
    assert set(itch.LAYOUTS) == set(SPEC_SIZES)
    for type_byte, layout in itch.LAYOUTS.items():
        assert layout.size == SPEC_SIZES[type_byte] == layout.struct.size
        assert layout.type_byte == type_byte
        assert itch.LAYOUT_OF[layout.cls] is layout
        assert layout.fields[0].offset == 1 and layout.fields[2] == Field("timestamp", "u48", 5, 6)
        assert layout.fields[-1].offset + layout.fields[-1].size == layout.size


def test_layouts_agree_with_the_structs_in_protocols_md() -> None:
    doc = SHARED / "PROTOCOLS.md"
    require_shared(doc)
    rows = re.findall(r"^\| ([A-Za-z]) \| [^|]+ \| (\d+) \|.*\| `(>[^`]+)` \|$", doc.read_text(), re.M)
    assert "".join(sorted(r[0] for r in rows)) == "ABCDEFHIJPQRSUXY"
    for type_char, size, fmt in rows:
        layout = itch.LAYOUTS[type_char.encode()]
        assert (layout.size, layout.struct.format) == (int(size), fmt), type_char


def test_offsets_of_add_order_match_the_spec() -> None:
    offsets = {f.name: f.offset for f in itch.ADD_ORDER.fields}
    assert offsets == {"stock_locate": 1, "tracking": 3, "timestamp": 5, "order_ref": 11,
                       "side": 19, "shares": 20, "stock": 24, "price": 32}
    assert "@32  4  I      price" in itch.ADD_ORDER.describe()


def test_offsets_of_the_less_common_types_match_the_spec() -> None:
    def offsets(layout: Msg[Any]) -> dict[str, int]:
        return {f.name: f.offset for f in layout.fields[3:]}

    assert offsets(itch.MARKET_PARTICIPANT_POSITION) == {
        "mpid": 11, "stock": 15, "primary_market_maker": 23, "market_maker_mode": 24,
        "participant_state": 25}
    assert offsets(itch.MWCB_DECLINE_LEVEL) == {"level1": 11, "level2": 19, "level3": 27}
    assert offsets(itch.IPO_QUOTING_PERIOD_UPDATE) == {
        "stock": 11, "release_time_s": 19, "release_qualifier": 23, "ipo_price": 24}
    assert offsets(itch.OPERATIONAL_HALT) == {"stock": 11, "market_code": 19, "halt_action": 20}
    assert offsets(itch.RPII) == {"stock": 11, "interest_flag": 19}
    assert offsets(itch.DIRECT_LISTING_CAPITAL_RAISE) == {
        "stock": 11, "open_eligibility": 19, "min_allowable_price": 20,
        "max_allowable_price": 24, "near_execution_price": 28, "near_execution_time": 32,
        "lower_price_collar": 40, "upper_price_collar": 44}


def test_a_layout_declared_as_pairs_equals_the_class_declaration() -> None:
    pairs = (("stock_locate", "H"), ("tracking", "H"), ("timestamp", "u48"), ("order_ref", "Q"),
             ("side", "c"), ("shares", "I"), ("stock", "8s"), ("price", "I"))
    add = Msg.from_pairs(b"A", "Add Order", pairs)
    assert add.struct.format == itch.ADD_ORDER.struct.format
    assert add.names == itch.ADD_ORDER.names
    values = (7, 0, 34_200_000_000_001, 42, b"B", 100, b"AAPL    ", 1_501_000)
    raw = add.encode(add.cls(*values))
    assert raw == itch.encode(itch.AddOrder(*values))
    assert tuple(add.decode(raw)) == values


def test_layouts_without_a_type_byte_or_with_several_u48() -> None:
    plain = Msg.from_pairs(None, "plain", (("a", "H"), ("b", "4s"), ("c", "q")))
    assert (plain.size, plain.struct.format, plain.cls.__name__) == (14, ">H4sq", "Plain")
    raw = plain.encode(plain.cls(1, b"ab", -5))
    assert raw == b"\x00\x01ab  " + (-5).to_bytes(8, "big", signed=True)
    assert tuple(plain.decode(raw)) == (1, b"ab  ", -5)
    twice = Msg.from_pairs(b"T", "two stamps", (("t1", "u48"), ("x", "c"), ("t2", "u48")))
    assert twice.size == 14
    raw = twice.encode(twice.cls(2**48 - 1, b"x", 7))
    assert tuple(twice.decode(raw)) == (2**48 - 1, b"x", 7)
    with pytest.raises(ValueError):
        twice.decode(b"U" + raw[1:])


def test_bad_layout_declarations_are_refused() -> None:
    with pytest.raises(ValueError):
        Msg.from_pairs(b"AB", "two type bytes", (("x", "H"),))
    with pytest.raises(ValueError):
        Msg.from_pairs(b"A", "bad code", (("x", "f"),))

    class Unannotated(NamedTuple):
        x: int

    with pytest.raises(TypeError):
        Msg(b"A", "no wire type", Unannotated)


def test_hot_encoders_take_the_fields_in_wire_order() -> None:
    for type_byte, layout in itch.LAYOUTS.items():
        params = tuple(inspect.signature(itch.FAST_ENCODERS[type_byte]).parameters)
        assert params == ("stock_locate", "tracking", "ts_ns") + layout.names[3:], type_byte


def test_hot_encoders_are_derived_and_named_after_their_message() -> None:
    for type_byte, enc in itch.FAST_ENCODERS.items():
        assert getattr(itch, enc.__name__) is enc, type_byte
    assert itch.encode_order_executed_with_price is itch.FAST_ENCODERS[b"C"]
    with pytest.raises(ValueError, match="common header"):
        itch.fast_encoder(Msg.from_pairs(b"Z", "no header", (("x", "H"),)))


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------

def field_values(field: Field) -> st.SearchStrategy[Any]:
    """Any value the field can carry, derived from the layout table."""
    if field.code == "u48":
        return st.integers(0, 2**48 - 1)
    if field.code in ("B", "H", "I", "Q"):
        return st.integers(0, 2 ** (8 * field.size) - 1)
    return st.binary(min_size=field.size, max_size=field.size)


def messages_of(layout: Msg[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(*(field_values(f) for f in layout.fields)).map(lambda v: layout.cls(*v))


any_message = st.sampled_from(sorted(itch.LAYOUTS.values(), key=lambda m: m.type_byte or b"")
                              ).flatmap(messages_of)


@pytest.mark.parametrize("type_byte", sorted(itch.LAYOUTS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_every_type(type_byte: bytes, data: st.DataObject) -> None:
    layout = itch.LAYOUTS[type_byte]
    msg = data.draw(messages_of(layout))
    raw = itch.encode(msg)
    assert len(raw) == layout.size and raw[:1] == type_byte
    assert itch.FAST_ENCODERS[type_byte](*msg) == raw
    decoded = itch.decode(raw)
    assert decoded == msg and type(decoded) is layout.cls
    assert itch.decode(bytearray(raw)) == msg and itch.decode(memoryview(raw)) == msg


@settings(max_examples=200, deadline=None)
@given(any_message)
def test_round_trip_through_moldudp64(msg: Any) -> None:
    raw = itch.encode(msg)
    builder = moldudp64.PacketBuilder(moldudp64.Session("TEST"))
    builder.add(raw)
    (packet,) = builder.flush()
    assert [itch.decode(m) for m in moldudp64.parse_packet(packet).messages] == [msg]


# --------------------------------------------------------------------------------------------
# Validation and malformed input
# --------------------------------------------------------------------------------------------

def test_generic_encoder_pads_short_alpha_and_refuses_bad_values() -> None:
    short = itch.AddOrder(1, 0, 5, 9, b"B", 100, b"AAPL", 1_501_000)
    assert itch.decode(itch.encode(short)) == short._replace(stock=b"AAPL    ")
    assert itch.stock8("AAPL") == b"AAPL    "
    bad = [
        short._replace(stock=b"TOOLONGSYM"),
        short._replace(side=b""),
        short._replace(side=b"BS"),
        short._replace(timestamp=2**48),          # epoch nanoseconds would land here
        short._replace(timestamp=-1),
        short._replace(shares=-1),
        short._replace(shares=2**32),
        short._replace(price="150.10"),  # type: ignore[arg-type]
        short._replace(stock="AAPL"),  # type: ignore[arg-type]
    ]
    for msg in bad:
        with pytest.raises(ValueError):
            itch.encode(msg)
    with pytest.raises(ValueError):
        itch.stock8("TOOLONGSYM")
    with pytest.raises(ValueError):
        itch.encode((1, 2, 3))  # type: ignore[arg-type]


def test_hot_encoder_refuses_a_timestamp_beyond_48_bits() -> None:
    with pytest.raises(OverflowError):
        itch.encode_add_order(1, 0, 1_700_000_000 * 10**9, 9, b"B", 100, b"AAPL    ", 1)


def test_decode_refuses_empty_unknown_and_wrong_lengths() -> None:
    raw = itch.encode_order_delete(1, 0, 123, 456)
    for bad in (b"", b"Z" + raw[1:], b"a" + raw[1:], raw[:-1], raw + b"\0", raw[:1]):
        with pytest.raises(ValueError):
            itch.decode(bad)
    with pytest.raises(ValueError):
        itch.ORDER_DELETE.decode(b"X" + raw[1:])   # right length, wrong type byte
    with pytest.raises(ValueError):
        itch.ORDER_CANCEL.decode(raw)              # wrong length for the layout


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_decode_of_arbitrary_bytes_returns_or_raises_value_error(data: bytes) -> None:
    try:
        msg = itch.decode(data)
    except ValueError:
        return
    assert itch.encode(msg) == data


@settings(max_examples=200, deadline=None)
@given(any_message, st.data())
def test_truncated_or_extended_messages_raise_value_error(msg: Any, data: st.DataObject) -> None:
    raw = itch.encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ValueError):
        itch.decode(raw[:cut])
    with pytest.raises(ValueError):
        itch.decode(raw + data.draw(st.binary(min_size=1, max_size=8)))
