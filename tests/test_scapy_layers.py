"""scapy layers generated from the layouts: every message of the real NASDAQ captures and of our own
feeds decodes to its layer with the values our decoders give, and re-encodes byte for byte; built
from fields, they give our encoders' bytes; rdpcap, show() and ls() work on them."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import time
from typing import Any

import pytest

pytest.importorskip("scapy")

from scapy.layers.inet import UDP  # noqa: E402
from scapy.packet import Raw, ls  # noqa: E402
from scapy.utils import rdpcap  # noqa: E402

from feeds import ouch_layout  # noqa: E402
from feeds import scapy_layers as S  # noqa: E402
from feeds import itch, soupbintcp  # noqa: E402
from feeds.channels import ALL_LAYOUTS, L3, decode_any  # noqa: E402
from feeds.moldudp64 import PacketBuilder, Session  # noqa: E402
from feeds.pcap import IPPROTO_TCP, IPPROTO_UDP, read_pcap  # noqa: E402

from test_feed_e2e import random_groups  # noqa: E402
from test_pcap_tools import CAPTURES, feed  # noqa: E402,F401  (the fixture)
from test_wireshark import sample  # noqa: E402


def fields_of(layer: Any) -> dict[str, Any]:
    """The layer's field values under the layout's names."""
    return {f.name.rstrip("_"): layer.getfieldval(f.name) for f in layer.fields_desc
            if f.name not in ("msg_type", "options")}


def check_mold(payload: bytes) -> int:
    """Decode a MoldUDP64 datagram with the layers, compare with our decoder, re-encode."""
    m = S.MoldUDP64(payload)
    assert bytes(m) == payload
    assert not m.haslayer(Raw)
    for block in m.blocks:
        raw = bytes(block.message)
        assert type(block.message) is S.ITCH_CLASSES[raw[:1]]
        assert fields_of(block.message) == decode_any(raw)._asdict()
    return len(m.blocks)


def check_soup(payload: bytes) -> str:
    s = S.SoupBinTCP(payload)
    assert bytes(s) == payload
    if s.type in (b"U", b"S"):
        table = ouch_layout.INBOUND if s.type == b"U" else ouch_layout.OUTBOUND
        msg, options = ouch_layout.decode(payload[3:], table)
        layer = s.payload
        assert type(layer).__name__ == "Ouch" + type(msg).__name__
        assert fields_of(layer) == msg._asdict()
        assert [(o.tag, o.value) for o in getattr(layer, "options", [])] == options
        return type(msg).__name__
    return s.type.decode()


def test_every_real_capture_decodes_and_reencodes() -> None:
    if not CAPTURES.is_dir():
        pytest.skip("no captures")
    messages = 0
    soup = []
    for path in sorted(CAPTURES.glob("*/*.pcap")):
        for p in read_pcap(path):
            if p.proto == IPPROTO_UDP:
                messages += check_mold(p.payload)
            elif p.proto == IPPROTO_TCP and p.payload:
                soup.append(check_soup(p.payload))
    assert messages == 7 + 39 + 14 * 5 + 1
    assert sorted(soup) == sorted(["CancelOrder", "EnterOrder", "OrderAccepted", "OrderCanceled", "H", "R"])


def test_every_datagram_of_our_feed_capture(feed: dict[str, Any]) -> None:
    total = 0
    for _, _, _, _, d in feed["events"]:
        m = S.MoldUDP64(d)
        assert bytes(m) == d
        if m.message_count not in (0, 0xFFFF):
            total += check_mold(d)
        else:
            assert m.blocks == []
    assert total == sum(S.MoldUDP64(d).message_count for _, _, _, _, d in feed["events"]
                        if S.MoldUDP64(d).message_count != 0xFFFF)


def test_layers_built_from_fields_give_our_encoders_bytes() -> None:
    """Every ITCH/L2/L1 layout in a MoldUDP64 datagram and every OUCH layout in SoupBinTCP: the
    counts and lengths are computed by the layers."""
    for salt, layout in enumerate(ALL_LAYOUTS.values()):
        msg = sample(layout, salt)
        builder = PacketBuilder(Session(b"2311140131"), max_payload=1472)
        builder.add(layout.encode(msg))
        [ours] = builder.flush()
        assert layout.type_byte is not None
        built = S.MoldUDP64(session=b"2311140131", sequence=1,
                            blocks=[S.MoldBlock(message=S.ITCH_CLASSES[layout.type_byte](**msg._asdict()))])
        assert bytes(built) == ours
        check_mold(ours)
    for table, wrap, kind in ((ouch_layout.INBOUND, soupbintcp.encode_unsequenced_data, b"U"),
                              (ouch_layout.OUTBOUND, soupbintcp.encode_sequenced_data, b"S")):
        classes = S.OUCH_INBOUND_CLASSES if kind == b"U" else S.OUCH_OUTBOUND_CLASSES
        for salt, layout in enumerate(table.values()):
            msg = sample(layout, salt)
            has = layout.name in ouch_layout.HAS_APPENDAGE
            options = [(2, b"FIRM"), (18, b"0")] if has else []
            ours = wrap(ouch_layout.encode(layout, msg, options))
            values = {S.scapy_name(k): v for k, v in msg._asdict().items()}
            if has:
                values.pop("appendage_length")
                values["options"] = [S.OuchOption(tag=t, value=v) for t, v in options]
            assert layout.type_byte is not None
            soup = S.SoupBinTCP(type=kind) / classes[layout.type_byte](**values)
            assert bytes(soup) == ours, layout.name
            check_soup(ours)
    heartbeat = S.MoldUDP64(session=b"2311140131", sequence=7, message_count=0)
    assert bytes(heartbeat) == b"2311140131" + (7).to_bytes(8, "big") + b"\0\0"
    stream = soupbintcp.encode_server_heartbeat() + soupbintcp.encode_debug(b"hi") + b"\x00"
    packets, rest = S.soup_packets(stream)
    assert [p.type for p in packets] == [b"H", b"+"] and rest == b"\x00"


def test_rdpcap_show_and_ls(feed: dict[str, Any]) -> None:
    packets = rdpcap(str(feed["clean"]))           # the default feed ports are bound at import
    first = next(p for p in packets if p.haslayer(S.MoldUDP64) and p[S.MoldUDP64].message_count not in (0, 0xFFFF))
    assert first[UDP].dport == 30011
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        first[S.MoldUDP64].show()
        ls(S.ITCH_CLASSES[b"A"])
        ls(S.OUCH_INBOUND_CLASSES[b"O"])
    text = out.getvalue()
    assert "###[ MoldUDP64 ]###" in text and "session" in text and "System Event" in text
    assert "order_ref" in text and "BitField  (48 bits)" in text and "cl_ord_id" in text
    if CAPTURES.is_dir():
        S.bind_ports(udp=(26477,), tcp=(8001, 8003))
        p = rdpcap(str(CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0" / "Multiple.Packets.pcap"))[1]
        assert p[S.MoldUDP64].message_count == 38 and p[S.MoldUDP64].blocks[0].message.stock == b"META    "
        p = rdpcap(str(CAPTURES / "Nasdaq.Nsm.Ouch.v5.0" / "EnterOrderMessage.pcap"))[0]
        assert p[S.SoupBinTCP].payload.symbol == b"CVLT    " and p[S.SoupBinTCP].payload.price == 630200


@pytest.mark.skipif(os.geteuid() != 0, reason="sniffing needs root")
def test_sniff_decodes_live_datagrams_on_loopback() -> None:
    """A live MoldUDP64 datagram sent to a multicast group on loopback (TTL 0) is sniffed and
    decoded down to the ITCH fields, on a port bound with bind_ports."""
    from scapy.all import AsyncSniffer
    group = random_groups()[L3].a
    S.bind_ports(udp=(group[1],))
    builder = PacketBuilder(Session(b"2311140131"))
    builder.add(itch.encode_system_event(0, 7, 34_200_000_000_000, b"Q"))
    [datagram] = builder.flush()
    sniffer = AsyncSniffer(iface="lo", filter=f"udp and dst port {group[1]}", count=1)
    sniffer.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sniffer.running and not sniffer.results:
            s.sendto(datagram, group)           # until the sniffer, started asynchronously, has one
            time.sleep(0.1)
        sniffer.join(timeout=10)
    finally:
        s.close()
        if sniffer.running:
            sniffer.stop()
    assert sniffer.results is not None
    [p] = sniffer.results
    m = p[S.MoldUDP64]
    assert (m.session, m.sequence, m.message_count) == (b"2311140131", 1, 1)
    msg = m.blocks[0].message
    assert (type(msg).__name__, msg.tracking, msg.timestamp, msg.event_code) == ("SystemEvent", 7, 34_200_000_000_000, b"Q")
