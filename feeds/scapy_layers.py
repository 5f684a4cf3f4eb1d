"""scapy layers for every channel we publish and for order entry, built at import from the layouts
declared once in the code (no field is written out here)::

    UDP / MoldUDP64 (session, sequence, message_count, blocks)
              └─ MoldBlock (length, message) ── ITCH 5.0 and L2/L1 messages, one class per layout
                                                 (feeds.channels.ALL_LAYOUTS: AddOrder, PriceLevelUpdate ...)
    TCP / SoupBinTCP (length, type) ── Login Request / Login Accepted (feeds.soupbintcp layouts),
              OUCH 5.0 inside 'U' (client) and 'S' (server) data, one class per layout
              (feeds.ouch_layout INBOUND / OUTBOUND, appendage options as OuchOption)

A field name that would hide a scapy Packet attribute gets a ``_`` appended (OUCH ``display_``).
Counts and lengths are computed when a packet is built (``MoldUDP64(session=b"...", sequence=1,
blocks=[MoldBlock(message=AddOrder(...))])``); a heartbeat or End of Session sets
``message_count`` (0, 0xFFFF) itself. Field names are the layouts' (``price``, ``order_ref``);
alpha fields are bytes. ``bind_ports(udp=..., tcp=...)`` makes rdpcap/sniff decode those ports;
the default feed ports of partitions 0-9 (300PC) and the default OUCH port 15001 are bound at
import. Needs scapy (``pip install 'matchwire[scapy]'``).

    >>> from scapy.all import rdpcap
    >>> from feeds import scapy_layers
    >>> rdpcap("feed.pcap")[0][scapy_layers.MoldUDP64].show()
"""
from __future__ import annotations

from typing import Any, Callable

from scapy.fields import (
    BitField,
    ByteField,
    FieldLenField,
    IntField,
    LongField,
    PacketLenField,
    PacketListField,
    ShortField,
    SignedByteField,
    SignedIntField,
    SignedLongField,
    SignedShortField,
    StrFixedLenField,
    StrLenField,
)
from scapy.layers.inet import TCP, UDP
from scapy.packet import Packet, Raw, bind_layers

from feeds import ouch_layout
from feeds import soupbintcp
from feeds.channels import ALL_LAYOUTS, default_groups
from feeds.layout import Msg
from feeds.moldudp64 import END_OF_SESSION_COUNT, HEADER

__all__ = ["MoldUDP64", "MoldBlock", "SoupBinTCP", "OuchOption", "ITCH_CLASSES", "OUCH_INBOUND_CLASSES",
           "OUCH_OUTBOUND_CLASSES", "layer_for", "itch_message", "bind_ports", "soup_packets", "scapy_name"]


def _class_name(layout: Msg[Any]) -> str:
    return layout.cls.__name__


def scapy_name(name: str) -> str:
    """A layout field's name in the layers: the same, with ``_`` appended where it would hide a
    scapy Packet attribute (OUCH ``display`` -> ``display_``)."""
    return name + "_" if hasattr(Packet, name) else name


def _field(name: str, code: str) -> Any:
    """The scapy field of a layout field code (feeds.layout)."""
    name = scapy_name(name)
    ints = {"B": ByteField, "H": ShortField, "I": IntField, "Q": LongField, "b": SignedByteField,
            "h": SignedShortField, "i": SignedIntField, "q": SignedLongField}
    if code in ints:
        return ints[code](name, 0)
    if code == "u48":
        return BitField(name, 0, 48)
    size = 1 if code == "c" else int(code[:-1])
    return StrFixedLenField(name, b" " * size, length=size)


class OuchOption(Packet):
    """One OUCH appendage option: length (tag + value), tag, value."""

    name = "OUCH Option"
    fields_desc = [
        FieldLenField("length", None, length_of="value", fmt="B", adjust=lambda pkt, x: x + 1),
        ByteField("tag", 0),
        StrLenField("value", b"", length_from=lambda pkt: pkt.length - 1),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


def layer_for(layout: Msg[Any], appendage: bool = False, prefix: str = "") -> type[Packet]:
    """A scapy Packet class for a layout: its type byte (``msg_type``) and fields; with
    ``appendage``, the last field (appendage length) counts the ``options`` that follow."""
    fields: list[Any] = []
    if layout.type_byte is not None:
        fields.append(StrFixedLenField("msg_type", layout.type_byte, length=1))
    for f in layout.fields:
        if appendage and f is layout.fields[-1]:
            fields.append(FieldLenField(f.name, None, length_of="options", fmt="H"))
        else:
            fields.append(_field(f.name, f.code))
    if appendage:
        last = layout.fields[-1].name

        def options_length(pkt: Packet) -> int:
            return int(pkt.getfieldval(last))
        fields.append(PacketListField("options", [], OuchOption, length_from=options_length))

    def extract_padding(self: Packet, s: bytes) -> tuple[bytes, bytes]:
        return b"", s

    return type(prefix + _class_name(layout), (Packet,),
                {"name": layout.name, "fields_desc": fields, "extract_padding": extract_padding})


#: ITCH 5.0 and L2/L1 message classes by type byte.
ITCH_CLASSES: dict[bytes, type[Packet]] = {t: layer_for(m) for t, m in ALL_LAYOUTS.items()}
#: OUCH 5.0 client and server message classes by type byte.
OUCH_INBOUND_CLASSES: dict[bytes, type[Packet]] = {
    t: layer_for(m, m.name in ouch_layout.HAS_APPENDAGE, "Ouch") for t, m in ouch_layout.INBOUND.items()}
OUCH_OUTBOUND_CLASSES: dict[bytes, type[Packet]] = {
    t: layer_for(m, m.name in ouch_layout.HAS_APPENDAGE, "Ouch") for t, m in ouch_layout.OUTBOUND.items()}
SoupLoginRequest = layer_for(soupbintcp.LOGIN_REQUEST_LAYOUT)
SoupLoginRequest.__name__ = "SoupLoginRequest"
SoupLoginAccepted = layer_for(soupbintcp.LOGIN_ACCEPTED_LAYOUT)
SoupLoginAccepted.__name__ = "SoupLoginAccepted"
globals().update({cls.__name__: cls for cls in ITCH_CLASSES.values()})
globals().update({cls.__name__: cls for cls in OUCH_INBOUND_CLASSES.values()})
globals().update({cls.__name__: cls for cls in OUCH_OUTBOUND_CLASSES.values()})
__all__ += [cls.__name__ for cls in (*ITCH_CLASSES.values(), *OUCH_INBOUND_CLASSES.values(),
                                     *OUCH_OUTBOUND_CLASSES.values())]
__all__ += ["SoupLoginRequest", "SoupLoginAccepted"]


def _by_type(classes: dict[bytes, type[Packet]]) -> Callable[[bytes], Packet]:
    def decode(raw: bytes) -> Packet:
        cls = classes.get(raw[:1])
        if cls is None:
            return Raw(raw)
        return cls(raw)
    return decode


#: Decode one ITCH or L2/L1 message (Raw for an unknown type).
itch_message = _by_type(ITCH_CLASSES)


class MoldBlock(Packet):
    """One message block of a MoldUDP64 datagram: u16 length, message."""

    name = "MoldUDP64 Message Block"
    fields_desc = [
        FieldLenField("length", None, length_of="message", fmt="H"),
        PacketLenField("message", None, itch_message,  # type: ignore[arg-type]
                       length_from=lambda pkt: pkt.length),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


def _count(pkt: Packet) -> int:
    return 0 if pkt.message_count == END_OF_SESSION_COUNT else int(pkt.message_count)


class MoldUDP64(Packet):
    """A MoldUDP64 downstream datagram (feeds.moldudp64.HEADER) and its message blocks."""

    name = "MoldUDP64"
    fields_desc = [
        *(_field(f.name, f.code) for f in HEADER.fields if f.name != "message_count"),
        FieldLenField("message_count", None, count_of="blocks", fmt="H"),
        PacketListField("blocks", [], MoldBlock, count_from=_count),
    ]


class SoupBinTCP(Packet):
    """One SoupBinTCP packet: length (type + payload), type; the payload is the next layer
    (OUCH by type byte in 'U' and 'S', the login layouts in 'L' and 'A', Raw otherwise). Bytes
    after it in the same segment are padding here: ``soup_packets`` splits a stream."""

    name = "SoupBinTCP"
    fields_desc = [
        ShortField("length", None),
        StrFixedLenField("type", b"+", length=1),
    ]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.length is None:
            ls = soupbintcp.LENGTH_SIZE
            p = (len(pay) + soupbintcp.TYPE_SIZE).to_bytes(ls, "big") + p[ls:]
        return p + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        n = max(int(self.length) - 1, 0)
        return s[:n], s[n:]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if self.type == b"U":
            return OUCH_INBOUND_CLASSES.get(payload[:1], Raw)
        if self.type == b"S":
            return OUCH_OUTBOUND_CLASSES.get(payload[:1], Raw)
        if self.type == b"L":
            return SoupLoginRequest
        if self.type == b"A":
            return SoupLoginAccepted
        return Raw


def soup_packets(stream: bytes) -> tuple[list[SoupBinTCP], bytes]:
    """Every whole SoupBinTCP packet of a byte stream, and the bytes of an unfinished one."""
    out = []
    pos = 0
    ls = soupbintcp.LENGTH_SIZE
    while len(stream) - pos >= ls:
        end = pos + ls + int.from_bytes(stream[pos:pos + ls], "big")
        if end > len(stream):
            break
        out.append(SoupBinTCP(stream[pos:end]))
        pos = end
    return out, stream[pos:]


def bind_ports(udp: tuple[int, ...] = (), tcp: tuple[int, ...] = ()) -> None:
    """Decode UDP ``udp`` ports (either direction) as MoldUDP64 and TCP ``tcp`` ports as SoupBinTCP."""
    for port in udp:
        bind_layers(UDP, MoldUDP64, dport=port)
        bind_layers(UDP, MoldUDP64, sport=port)
    for port in tcp:
        bind_layers(TCP, SoupBinTCP, dport=port)
        bind_layers(TCP, SoupBinTCP, sport=port)


bind_ports(udp=tuple(sorted({g[1] for p in range(10) for cg in default_groups(p).values() for g in cg})),
           tcp=(15001,))
