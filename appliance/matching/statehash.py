"""The canonical state hash of a matching engine, shared by the fast and the reference engine.

Two engines with equal hashes behave the same from then on: the hash covers the reference and match
counters, the clock and the day's schedule, and, per instrument (ascending stock locate), the last
trade price, every resting order of each side in priority order (best price first, then time), every
pending stop of each side (stop price ascending, then arrival), the trading state with its reference
prices and timers, and the market orders collected in a call phase (per side, in arrival order), each
order with all the fields that matching reads.
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
    # state, cause, ref_price, cb_ref, limit_on, limit_since, deadline_ns, next_noii_ns, day_done
    trading: tuple[int, ...] = ()
    market: tuple[Sequence[NewOrder], Sequence[NewOrder]] = ((), ())  # collected market orders


def state_hash(next_ref: int, next_match: int, books: Iterable[StateView], clock: Sequence[int] = ()) -> str:
    """clock: now_ns, the five schedule times, market_phase."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_HEAD.pack(next_ref, next_match))
    h.update(struct.pack(f">{len(clock)}q", *clock))
    pack = _ORDER.pack
    for view in sorted(books, key=lambda v: v.locate):
        h.update(_BOOK.pack(view.locate, view.last_price))
        h.update(struct.pack(f">{len(view.trading)}q", *view.trading))
        for side in (0, 1):
            for o in view.resting[side]:
                h.update(pack(o.order_id, o.ref, o.price, o.stop_price, o.qty, o.leaves, o.filled,
                              o.firm, o.side, o.ord_type, o.tif, o.stp))
            h.update(b"|")
            for o in view.stops[side]:
                h.update(pack(o.order_id, o.ref, o.price, o.stop_price, o.qty, o.leaves, o.filled,
                              o.firm, o.side, o.ord_type, o.tif, o.stp))
            h.update(b"#")
            for o in view.market[side]:
                h.update(pack(o.order_id, o.ref, o.price, o.stop_price, o.qty, o.leaves, o.filled,
                              o.firm, o.side, o.ord_type, o.tif, o.stp))
            h.update(b"$")
    return h.hexdigest()
