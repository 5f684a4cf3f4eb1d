"""A canonical byte encoding of the engine's event tuples: replay comparisons, hashes, audit.

One frame per event, integers little-endian::

    0       2               10              18  19
    +-------+---------------+---------------+---+----------------------------------------+
    |length |      seq      |     ts_ns     |knd| fields of the event, in EVENT_LAYOUTS   |
    +-------+---------------+---------------+---+----------------------------------------+

    length  u16  the whole frame
    seq     u64  the command that produced the event (0: a command rejected before sequencing)
    kind    u8   catalogue.Ev.*
    fields       per EVENT_FIELD_CODES below: an order is its ORDER_IMAGE, a command is its kind
                 (u8) and its WAL body (appliance.walcodec), other fields a struct code

An order is encoded by its *immutable* fields only (ORDER_IMAGE): an order object's quantity and
client order id change with a replace in place, and the partition hands out a whole batch's events
before anyone encodes them; every quantity an event needs is a copy inside the event. So the
encoding of an event does not depend on when it is encoded, and a replay of the WAL reproduces the
live stream byte for byte.

Not on the hot path: tests, tools and audit use it.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Final, Iterable

from appliance.catalogue import EVENT_LAYOUTS, Command, Event, NewOrder
from appliance.walcodec import MalformedCommand, encode_body

FRAME_HEAD: Final = struct.Struct("<HQQB")

ORDER_IMAGE: Final = (
    ("order_id", "Q"),
    ("ref", "Q"),
    ("locate", "H"),
    ("side", "B"),
    ("ord_type", "B"),
    ("tif", "B"),
    ("stp", "B"),
    ("price", "q"),
    ("stop_price", "q"),
    ("firm", "I"),
    ("session", "I"),
    ("account", "16s"),
    ("mpid", "4s"),
)
_ORDER: Final = struct.Struct("<" + "".join(code for _, code in ORDER_IMAGE))
ORDER: Final = "order"
COMMAND: Final = "command"

# Every field name used in catalogue.EVENT_LAYOUTS -> how it is encoded. A test checks the coverage.
EVENT_FIELD_CODES: Final[dict[str, str]] = {
    "order": ORDER, "maker": ORDER, "taker": ORDER, "old": ORDER, "new": ORDER,
    "command": COMMAND,
    "qty": "q", "shares": "q", "price": "q", "trigger_price": "q",
    "match": "Q",
    "maker_leaves": "q", "maker_filled": "q", "taker_leaves": "q", "taker_filled": "q",
    "leaves": "q", "filled": "q", "old_leaves": "q", "new_leaves": "q",
    "reason": "H", "action": "B", "on_book": "?", "count": "I",
    # trading states and auctions
    "buy": ORDER, "sell": ORDER,
    "buy_leaves": "q", "buy_filled": "q", "sell_leaves": "q", "sell_filled": "q",
    "locate": "H", "state": "B", "cause": "B", "event": "B", "cross_type": "B", "direction": "B",
    "paired": "q", "imbalance": "q", "far": "q", "near": "q", "ref_price": "q",
    "active": "?", "lower": "q", "upper": "q", "extension": "I",
}


def _plan(kind: int) -> tuple[tuple[str, struct.Struct | None, int], ...]:
    """(what, struct, number of fields) runs: ORDER, COMMAND, or "s" for consecutive plain fields."""
    parts: list[tuple[str, struct.Struct | None, int]] = []
    codes: list[str] = []
    for name in EVENT_LAYOUTS[kind][1][1:]:
        code = EVENT_FIELD_CODES[name]
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


_PLANS: Final = {kind: _plan(kind) for kind in EVENT_LAYOUTS}


def order_image(o: NewOrder) -> bytes:
    return _ORDER.pack(
        o.order_id, o.ref, o.locate, o.side, o.ord_type, o.tif, o.stp, o.price, o.stop_price, o.firm,
        o.session, o.account.encode("ascii").ljust(16), o.mpid.encode("ascii").ljust(4),
    )


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
