"""A canonical byte encoding of the engine's event tuples: replay comparisons, hashes, audit.

One frame per event, integers little-endian::

    0       2               10              18  19
    +-------+---------------+---------------+---+----------------------------------------+
    |length |      seq      |     ts_ns     |knd| fields of the event, in EVENT_LAYOUTS   |
    +-------+---------------+---------------+---+----------------------------------------+

    length  u16  the whole frame
    seq     u64  the command that produced the event (0: a command rejected before sequencing)
    kind    u8   catalogue.Ev.*
    fields       per catalogue.EVENT_FIELDS (the codes of catalogue.EVENT_FIELD_CODES, as declared):
                 an order is its ORDER_FIELDS, a command is its kind (u8) and its WAL body
                 (appliance.walcodec), other fields their struct code

An order is encoded by its *immutable* fields only (ORDER_FIELDS, a projection of the catalogue's
ORDER_IMAGE): an order object's quantity and client order id change with a replace in place, and the
partition hands out a whole batch's events before anyone encodes them; every quantity an event needs
is a copy inside the event. So the encoding of an event does not depend on when it is encoded, and a
replay of the WAL reproduces the live stream byte for byte.

The field codes are the catalogue's (EVENT_FIELD_CODES), at their widest; appliance.codec_ring is
the compact encoding of the same fields for the gateways, narrowed where its docstring says.

Not on the hot path: tests, tools and audit use it.
"""
from __future__ import annotations

import hashlib
import operator
import struct
from typing import Final, Iterable

from appliance.catalogue import (
    COMMAND_VALUE,
    EVENT_FIELDS,
    ORDER_IMAGE,
    ORDER_VALUE,
    Command,
    Event,
    NewOrder,
    fields_of,
)
from appliance.walcodec import MalformedCommand, encode_body

FRAME_HEAD: Final = struct.Struct("<HQQB")

# An order in a frame: its immutable fields (the module's docstring says why), codes as declared.
ORDER_FIELDS: Final = fields_of(
    ORDER_IMAGE, "order_id", "ref", "locate", "side", "ord_type", "tif", "stp", "price", "stop_price", "firm",
    "session", "account", "mpid",
)
_ORDER: Final = struct.Struct("<" + "".join(code for _, code in ORDER_FIELDS))
ORDER: Final = ORDER_VALUE
COMMAND: Final = COMMAND_VALUE


def _plan(kind: int) -> tuple[tuple[str, struct.Struct | None, int], ...]:
    """(what, struct, number of fields) runs: ORDER, COMMAND, or "s" for consecutive plain fields."""
    parts: list[tuple[str, struct.Struct | None, int]] = []
    codes: list[str] = []
    for _, code in EVENT_FIELDS[kind]:
        if code in (ORDER, COMMAND):
            if codes:
                parts.append(("s", struct.Struct("<" + "".join(codes)), len(codes)))
                codes = []
            parts.append((code, None, 1))
        else:
            codes.append(code)
    if codes:
        parts.append(("s", struct.Struct("<" + "".join(codes)), len(codes)))
    return tuple(parts)


_PLANS: Final = {kind: _plan(kind) for kind in EVENT_FIELDS}


_ORDER_VALUES: Final = operator.attrgetter(*(name for name, _ in ORDER_FIELDS))
# (position, size) of the string fields: ASCII, space-padded like the WAL's
_ORDER_STRINGS: Final = tuple((i, struct.calcsize(code)) for i, (_, code) in enumerate(ORDER_FIELDS)
                              if code.endswith("s"))


def order_image(o: NewOrder) -> bytes:
    values = list(_ORDER_VALUES(o))
    for i, size in _ORDER_STRINGS:
        values[i] = values[i].encode("ascii").ljust(size)
    return _ORDER.pack(*values)


def command_image(cmd: Command) -> bytes:
    try:
        kind, body = encode_body(cmd)
    except MalformedCommand:
        return b"\xff"  # a command that could not be written (rejected before sequencing)
    return bytes((kind,)) + body


def encode_event(seq: int, ts_ns: int, ev: Event) -> bytes:
    """One event's canonical frame."""
    parts: list[bytes] = []
    i = 1
    for what, st, n in _PLANS[ev[0]]:
        if what == ORDER:
            parts.append(order_image(ev[i]))
        elif what == COMMAND:
            parts.append(command_image(ev[i]))
        else:
            parts.append(st.pack(*ev[i:i + n]))  # type: ignore[union-attr]
        i += n
    body = b"".join(parts)
    return FRAME_HEAD.pack(FRAME_HEAD.size + len(body), seq, ts_ns, ev[0]) + body


def encode_events(seq: int, ts_ns: int, events: Iterable[Event]) -> bytes:
    return b"".join(encode_event(seq, ts_ns, ev) for ev in events)


class StreamHasher:
    """A running hash of an event stream (blake2b over the canonical frames). Owned by one thread."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self.events = 0
        self.bytes = 0

    def add(self, seq: int, ts_ns: int, events: Iterable[Event]) -> None:
        for ev in events:
            b = encode_event(seq, ts_ns, ev)
            self._h.update(b)
            self.events += 1
            self.bytes += len(b)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
