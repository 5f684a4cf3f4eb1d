"""OUCH 5.0 layouts against real Nasdaq captures: decode, re-encode, same bytes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from feeds import ouch_layout as L
from feeds.pcap import read_pcap
from feeds.soupbintcp import FrameParser, SoupPacket

from conftest import needs_shared

SHARED = Path(os.environ.get("MATCHWIRE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CAPTURES = SHARED / "data" / "captures" / "Nasdaq.Nsm.Ouch.v5.0"
needs_captures = needs_shared(CAPTURES)   # a skip, except in CI (CI=true): there a failure


def packets(name: str) -> list[SoupPacket]:
    out: list[SoupPacket] = []
    for p in read_pcap(CAPTURES / name):
        out += FrameParser().feed(p.payload)
    assert out, name
    return out


@needs_captures
@pytest.mark.parametrize("name, soup_type, table, layout", [
    ("EnterOrderMessage.pcap", b"U", L.INBOUND, L.ENTER_ORDER),
    ("CancelOrderMessage.pcap", b"U", L.INBOUND, L.CANCEL_ORDER),
    ("OrderAcceptedMessage.pcap", b"S", L.OUTBOUND, L.ORDER_ACCEPTED),
    ("CanceledMessage.pcap", b"S", L.OUTBOUND, L.ORDER_CANCELED),
])
def test_capture_round_trip(name: str, soup_type: bytes, table: dict, layout: object) -> None:
    (packet,) = packets(name)
    assert packet.type == soup_type
    msg, options = L.decode(packet.payload, table)
    assert type(msg) is layout.cls  # type: ignore[attr-defined]
    assert L.encode(layout, msg, options) == packet.payload  # type: ignore[arg-type]


@needs_captures
def test_enter_order_capture_fields() -> None:
    (packet,) = packets("EnterOrderMessage.pcap")
    msg, options = L.decode(packet.payload, L.INBOUND)
    assert msg == L.EnterOrder(0x71, b"T", 225, b"CVLT    ", 630200, b"0", b"Y", b"A", b"N", b"N",
                               b"H8FUB8IV      ", 6)
    assert options == [(2, b"LIME")]  # Firm


@needs_captures
def test_order_accepted_capture_fields() -> None:
    (packet,) = packets("OrderAcceptedMessage.pcap")
    msg, options = L.decode(packet.payload, L.OUTBOUND)
    assert (msg.user_ref_num, msg.side, msg.quantity, msg.symbol, msg.price) == (
        0x753A8D, b"B", 40, b"ADBE    ", 4777800)
    assert (msg.time_in_force, msg.display, msg.order_ref, msg.order_state) == (b"5", b"Y", 0xF56B4F5, b"L")
    assert msg.cl_ord_id == b"7682701       "
    assert options == [(2, b"MLRO"), (18, b"0")]  # Firm, BBO Weight Indicator


@needs_captures
def test_canceled_and_cancel_capture_fields() -> None:
    (cancel,) = packets("CancelOrderMessage.pcap")
    assert L.decode(cancel.payload, L.INBOUND)[0] == L.CancelOrder(0x752E71, 0)
    (canceled,) = packets("CanceledMessage.pcap")
    msg, _ = L.decode(canceled.payload, L.OUTBOUND)
    assert (msg.user_ref_num, msg.quantity, msg.reason) == (0x753A8D, 40, b"U")


@needs_captures
def test_heartbeat_captures() -> None:
    assert packets("ServerHeartbeatPacket.pcap") == [SoupPacket(b"H", b"")]
    assert packets("ClientHeartbeatPacket.pcap") == [SoupPacket(b"R", b"")]


@pytest.mark.parametrize("layout, size", [
    (L.ENTER_ORDER, 47), (L.REPLACE_ORDER, 40), (L.CANCEL_ORDER, 9), (L.MODIFY_ORDER, 10),
    (L.ACCOUNT_QUERY, 1), (L.SYSTEM_EVENT, 10), (L.ORDER_ACCEPTED, 64), (L.ORDER_REPLACED, 68),
    (L.ORDER_CANCELED, 18), (L.ORDER_EXECUTED, 36), (L.ORDER_REJECTED, 29), (L.CANCEL_REJECT, 13),
    (L.ORDER_MODIFIED, 18), (L.ACCOUNT_QUERY_RESPONSE, 13),
])
def test_layout_sizes(layout: object, size: int) -> None:
    assert layout.size == size  # type: ignore[attr-defined]


@pytest.mark.parametrize("raw", [
    b"",                                  # nothing
    b"Z",                                 # unknown type
    b"X\x00\x00\x00\x01\x00",             # Cancel Order cut short
    b"X" + bytes(9),                      # Cancel Order too long
])
def test_decode_refuses_malformed(raw: bytes) -> None:
    with pytest.raises(ValueError):
        L.decode(raw, L.INBOUND)


@needs_captures
def test_appendage_errors() -> None:
    (packet,) = packets("EnterOrderMessage.pcap")
    good = packet.payload
    with pytest.raises(ValueError):  # length field says 6, 5 bytes follow
        L.decode(good[:-1], L.INBOUND)
    with pytest.raises(ValueError):  # option length runs past the end
        L.decode(good[:45] + b"\x00\x02\x09\x02", L.INBOUND)
    with pytest.raises(ValueError):  # Firm option with 3 bytes
        L.decode(good[:45] + b"\x00\x05\x04\x02ABC", L.INBOUND)
    with pytest.raises(ValueError):
        L.parse_appendage(b"\x00")
    assert L.parse_appendage(L.encode_appendage([(3, bytes(4)), (99, b"xy")])) == [(3, bytes(4)), (99, b"xy")]
