"""What a gateway keeps across a restart, and how it reads it back: its state directory, the
journal's increments and snapshots (the format: appliance/gateway/journal.py), the sessions' stores
(appliance/gateway/store.py), the resume points the partitions replay from, and an OUCH session
rebuilt from its own stream.

Owned by the gateway's event loop: ``JournalKeeper`` is a part of ``GatewayServer``
(appliance/gateway/server.py), which calls ``journal`` at every flush before a command goes to a
ring or bytes go to a socket, and ``compact_journal`` at start-up.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Final, Iterable, Protocol, Sequence

from appliance.gateway.journal import (
    COMPACT_BYTES,
    fix_increments,
    fix_snapshot,
    mark_record,
    ouch_count_record,
    read_journal,
    write_journal,
)
from appliance.gateway.ouch import OuchSession, _Order
from appliance.gateway.store import MessageStore
from appliance.catalogue import NewOrder
from appliance.model import BUY, DAY, IOC
from feeds import ouch_layout as L

_CL_WIDTH: Final = L.ENTER_ORDER.fields[L.ENTER_ORDER.names.index("cl_ord_id")].size   # OUCH ClOrdID alpha

__all__ = ["JournalKeeper", "JournalSlot", "adopt_ouch_order", "gateway_dir", "log", "restore_ouch_session",
           "resume_points", "store_label"]


def log(name: str, text: str) -> None:
    sys.stderr.write(f"matchwire[{name}]: {text}\n")
    sys.stderr.flush()


def gateway_dir(state_dir: str, gateway: str) -> str:
    return os.path.join(state_dir, "gateways", gateway)


def store_label(sid: int) -> bytes:
    """The 10-byte label in a session store's header: the session id (OUCH and FIX ids differ)."""
    return b"%010d" % sid


def resume_points(state_dir: str, gateway: str) -> dict[int, int]:
    """Per partition id, the seq up to which every session of the gateway has processed events
    (the partition replays the events after it at start-up). Nothing known: 0."""
    return dict(read_journal(os.path.join(gateway_dir(state_dir, gateway), "journal.bin")).marks)


# ================================================================================================
# OUCH session state from its own stream
# ================================================================================================

_TIF_LETTER: Final = {DAY: b"0", IOC: b"3"}


def restore_ouch_session(s: OuchSession, stream: Iterable[bytes]) -> bool:
    """Rebuild an OuchSession's sequence numbers, orders and UserRefNums from its sequenced stream.

    Every change of an order the session knows of is in the stream ('A' accepted with every
    attribute, 'U' replaced, 'E' executed, 'C' cancelled, 'M' modified, 'J' rejected), so replaying
    it gives the orders as they were when the last message was written.

    A System Event 'E' in the stream was written by a gateway that stopped (an orderly stop, or the
    supervisor stopping everything after a child died): it ended that run of the session, not the
    trading day. The restored session takes orders again; returns True when the stream's last
    System Event is such an 'E' (the caller announces the reopening with a System Event 'S').
    """
    if stream is not s.stream:
        s.stream = list(stream)
    by_urn: dict[int, int] = {}
    orders = s.orders
    sid = s.session_id
    last = 0
    stopped = False
    o: _Order | None
    for msg in s.stream:
        t = msg[:1]
        try:
            m, _opts = L.decode(msg, L.OUTBOUND)
        except ValueError:
            continue
        if t == b"A":
            urn = m.user_ref_num
            last = max(last, urn)
            ins = s.instruments.get(m.symbol)
            oid = (sid << 32) | urn
            o = _Order(oid, urn, ins.locate if ins else 0, m.symbol, m.side, m.quantity, m.price,
                       m.time_in_force, m.display, m.capacity, m.iso, m.cross_type, m.cl_ord_id)
            o.ref = m.order_ref
            orders[oid] = o
            by_urn[urn] = oid
        elif t == b"U":
            last = max(last, m.user_ref_num)
            oid = by_urn.pop(m.orig_user_ref_num, None)
            o = orders.get(oid) if oid is not None else None
            if o is None:
                continue
            o.urn = m.user_ref_num
            by_urn[o.urn] = o.order_id
            o.price = m.price
            o.leaves = m.quantity
            o.qty = o.filled + o.leaves
            o.ref = m.order_ref
            o.tif = m.time_in_force
            o.display = m.display
            o.iso = m.iso
            o.cl_ord_id = m.cl_ord_id
            if not o.leaves:
                _retire(o, orders, by_urn)
        elif t in (b"E", b"C", b"M"):
            oid = by_urn.get(m.user_ref_num)
            o = orders.get(oid) if oid is not None else None
            if o is None:
                continue
            if t == b"E":
                o.leaves -= m.quantity
                o.filled += m.quantity
            elif t == b"C":
                o.leaves -= m.quantity
                if m.reason == b"Q" and o.leaves:
                    o.decremented += m.quantity
                o.qty = o.filled + o.leaves
            else:
                o.side = m.side
                o.leaves = m.quantity
                o.qty = o.filled + o.leaves
            if o.leaves <= 0:
                _retire(o, orders, by_urn)
        elif t == b"J":
            last = max(last, m.user_ref_num)
            oid = (sid << 32) | m.user_ref_num
            o = orders.get(oid)
            if o is not None and not o.ref:
                _retire(o, orders, by_urn)
        elif t == b"Q":
            last = max(last, m.next_user_ref_num - 1)
        elif t == b"S":
            stopped = m.event_code == b"E"
    s._by_urn = by_urn
    s.last_user_ref_num = max(s.last_user_ref_num, last)
    s.ended = False
    return stopped


def _retire(o: _Order, orders: dict[int, _Order], by_urn: dict[int, int]) -> None:
    o.done = True
    orders.pop(o.order_id, None)
    if by_urn.get(o.urn) == o.order_id:
        del by_urn[o.urn]


def adopt_ouch_order(s: OuchSession, o: NewOrder) -> None:
    """An order entered before a restart whose acceptance comes in the catch-up: the session learns
    it from the event (OUCH-only attributes take their usual values: display Y, capacity A)."""
    if o.order_id in s.orders:
        return
    urn = o.order_id & 0xFFFF_FFFF
    ins = next((i for i in s.instruments.values() if i.locate == o.locate), None)
    symbol = ins.stock8 if ins else b" " * 8
    mine = _Order(o.order_id, urn, o.locate, symbol, b"B" if o.side == BUY else b"S", o.qty, o.price,
                  _TIF_LETTER.get(o.tif, b"0"), b"A" if o.mpid else b"Y", b"A", b"N", b"N",
                  o.cl_ord_id.encode("ascii", "replace")[:_CL_WIDTH].ljust(_CL_WIDTH))
    s.orders[o.order_id] = mine
    s._by_urn[urn] = o.order_id
    if urn > s.last_user_ref_num:
        s.last_user_ref_num = urn


# ================================================================================================
# The journal of a gateway's sessions
# ================================================================================================

class JournalSlot(Protocol):
    """What the journal reads and writes of a session's slot (server.Slot)."""

    @property
    def kind(self) -> str: ...
    @property
    def sid(self) -> int: ...
    @property
    def session(self) -> Any: ...
    @property
    def store(self) -> MessageStore | None: ...
    journaled: int
    jseqs: tuple[int, int, int, int] | None


class JournalKeeper:
    """The gateway's journal and session stores: a part of GatewayServer, on its event loop."""

    name: str
    dir: str
    slots: Sequence[JournalSlot]
    marks: dict[int, int]
    journal_path: str
    journal_fd: int
    journal_bytes: int
    count: Callable[[str], None]
    _marks_dirty = False

    def _open_store(self, sid: int, name: str, committed: int) -> MessageStore:
        """A session's store, cut back to the count the journal committed."""
        store = MessageStore(self.dir, store_label(sid), name)
        for n in store.notes:
            log(self.name, "store: " + n)
        if store.count > committed:
            store.truncate(committed)
        elif store.count < committed:
            log(self.name, f"store {store.data_path}: {store.count} messages, the journal counts {committed}: "
                           "the missing ones are gap-filled on resend")
        return store

    def compact_journal(self) -> None:
        """Replace the journal by one snapshot of the sessions' state and the marks."""
        recs: list[bytes] = []
        for slot in self.slots:
            if slot.kind == "ouch":
                recs.append(ouch_count_record(slot.sid, slot.journaled))
            else:
                slot.jseqs = fix_snapshot(slot.sid, slot.session.state, recs)
        recs.append(mark_record(self.marks))
        if self.journal_fd >= 0:
            os.close(self.journal_fd)
        self.journal_fd = write_journal(self.journal_path, recs)
        self.journal_bytes = sum(len(r) for r in recs)
        self.count("journal_compactions")

    def journal(self, slots: Sequence[JournalSlot]) -> None:
        """What the sessions changed since their last flush, and the marks, as one write ended by a
        MARK (nothing changed: nothing written); compacted when it passes COMPACT_BYTES."""
        recs: list[bytes] = []
        for slot in slots:
            s = slot.session
            store = slot.store
            if slot.kind == "ouch":
                # The session's stream is its store: what it sequenced since the last flush is
                # pending there, written now, then counted.
                if store is not None and store.pending:
                    store.flush()
                    n = store.count
                    recs.append(ouch_count_record(slot.sid, n))
                    slot.journaled = n
            else:
                st = s.state
                if store is not None and store.pending:
                    store.flush()
                if st.dirty or slot.jseqs is None:
                    slot.jseqs = fix_increments(slot.sid, st, slot.jseqs, recs)
                    st.dirty = False
        if recs or self._marks_dirty:
            recs.append(mark_record(self.marks))
            data = b"".join(recs)
            os.write(self.journal_fd, data)
            self._marks_dirty = False
            self.journal_bytes += len(data)
            if self.journal_bytes >= COMPACT_BYTES:
                self.compact_journal()
