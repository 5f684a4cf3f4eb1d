"""The canonical state hash of a matching engine, shared by the fast and the reference engine.

Two engines with equal hashes behave the same from then on: the hash covers the reference and match
counters and, per instrument (ascending stock locate), the last trade price, every resting order of
each side in priority order (best price first, then time) and every pending stop of each side (stop
price ascending, then arrival), each order with all the fields that matching reads.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Iterable, NamedTuple, Sequence

from appliance.catalogue import NewOrder

_HEAD = struct.Struct(">qq")
_BOOK = struct.Struct(">Hq")
_ORDER = struct.Struct(">qqqqqqqqBBBB")


class StateView(NamedTuple):
    locate: int
    last_price: int
    resting: tuple[Sequence[NewOrder], Sequence[NewOrder]]  # (bids, asks) in priority order
    stops: tuple[Sequence[NewOrder], Sequence[NewOrder]]    # (buy stops, sell stops) in hash order


def state_hash(next_ref: int, next_match: int, books: Iterable[StateView]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(_HEAD.pack(next_ref, next_match))
    pack = _ORDER.pack
    for view in sorted(books, key=lambda v: v.locate):
        h.update(_BOOK.pack(view.locate, view.last_price))
        for side in (0, 1):
            for o in view.resting[side]:
                h.update(pack(o.order_id, o.ref, o.price, o.stop_price, o.qty, o.leaves, o.filled,
                              o.firm, o.side, o.ord_type, o.tif, o.stp))
            h.update(b"|")
            for o in view.stops[side]:
                h.update(pack(o.order_id, o.ref, o.price, o.stop_price, o.qty, o.leaves, o.filled,
                              o.firm, o.side, o.ord_type, o.tif, o.stp))
            h.update(b"#")
    return h.hexdigest()
