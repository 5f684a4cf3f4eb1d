"""The gateway's journal: what its sessions must get back after a restart, as increments.

Owned by the gateway's event loop. ``{state_dir}/gateways/{name}/journal.bin`` is append-only; each
flush writes one buffer of records ended by a MARK, and only what a MARK ends counts (a torn or
unmarked tail is cut on start-up). All integers little-endian::

    record   length u32 (whole record) | crc32 u32 (of type + payload) | type u8 | payload
    type 3   MARK         count u8, then (partition id u8, seq u64) per partition: every event of every
                          command up to seq of that partition has been handed to the sessions and
                          what it changed is in the journal and the stores
    type 4   OUCH COUNT   session u32, messages u64: the OUCH session's stream holds that many
                          (the messages themselves are in its store, appliance/gateway/store.py)
    type 5   FIX SEQS     session u32, next_in u64, next_out u64, next_order u64, next_exec u64
                          (the store of sent messages holds next_out - 1 of them)
    type 6   FIX ORDER    session u32, the order as a JSON array (FixOrder.to_list, compact, UTF-8):
                          added or changed
    type 7   FIX GONE     session u32, order id u64: forgotten (done, nothing pending)
    type 8   FIX CLORDID  session u32, order id u64 (0: none), the ClOrdID (latin-1): remembered

Types 1 and 2 (whole OUCH and FIX messages) belong to an older layout and are no longer read: the
messages live in the stores, indexed by sequence number, so that nothing of them stays in memory.

A flush costs what changed in it (a few records per message), never the session's whole state. The
file is compacted, replaced by one snapshot of the state (sequence numbers, live orders, remembered
ClOrdIDs, counts, marks), at start-up and whenever it passes COMPACT_BYTES in a day, so its size and
the time to read it are bounded by the live state, not by the day's traffic. Nothing is fsynced:
the journal survives a crash of the process (SIGKILL), not of the host.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Any, Final, Iterable

import msgspec

from appliance.fsutil import atomic_write
from appliance.gateway.fix import FixSessionState

__all__ = [
    "J_MARK", "J_OUCH_COUNT", "J_FIX_SEQS", "J_FIX_ORDER", "J_FIX_GONE", "J_FIX_CLORD", "COMPACT_BYTES",
    "journal_record", "mark_record", "ouch_count_record", "fix_increments", "fix_snapshot",
    "JournalState", "FixJournal", "read_journal", "write_journal", "JOURNAL_MODE",
]

J_MARK: Final = 3
J_OUCH_COUNT: Final = 4
J_FIX_SEQS: Final = 5
J_FIX_ORDER: Final = 6
J_FIX_GONE: Final = 7
J_FIX_CLORD: Final = 8
COMPACT_BYTES: Final = 16 << 20      # a journal this long is compacted at the next flush
JOURNAL_MODE: Final = 0o600
_READ_CHUNK: Final = 1 << 20

_JHEAD: Final = struct.Struct("<IIB")       # length (whole record), crc32 (type + payload), type
_MARK: Final = struct.Struct("<BQ")
_SID: Final = struct.Struct("<I")
_SID_U64: Final = struct.Struct("<IQ")
_SEQS: Final = struct.Struct("<IQQQQ")
_crc = zlib.crc32
_order_json: Final = msgspec.json.Encoder().encode
_order_values: Final = msgspec.json.Decoder(list[Any]).decode   # a FixOrder.to_list() array


# crc32 of each record type's byte: a record's crc continues from it over the payload, so that
# type + payload need not be concatenated first (crc32(b, crc32(a)) == crc32(a + b)).
_TYPE_CRC: Final = [_crc(bytes((t,))) for t in range(256)]
_MARK_ONE: Final = struct.Struct("<BBQ")      # a MARK's payload with one partition: 1, (id, seq)
_MARK_ONE_SIZE: Final = _JHEAD.size + _MARK_ONE.size
_OUCH_COUNT_SIZE: Final = _JHEAD.size + _SID_U64.size


def journal_record(rtype: int, payload: bytes) -> bytes:
    return _JHEAD.pack(_JHEAD.size + len(payload), _crc(payload, _TYPE_CRC[rtype]), rtype) + payload


def mark_record(marks: dict[int, int]) -> bytes:
    if len(marks) == 1:   # one partition (written at every flush that moves it)
        for p, s in marks.items():
            payload = _MARK_ONE.pack(1, p, s)
            return _JHEAD.pack(_MARK_ONE_SIZE, _crc(payload, _TYPE_CRC[J_MARK]), J_MARK) + payload
    return journal_record(J_MARK, bytes((len(marks),)) + b"".join([_MARK.pack(p, s) for p, s in sorted(marks.items())]))


def ouch_count_record(sid: int, count: int) -> bytes:
    payload = _SID_U64.pack(sid, count)
    return _JHEAD.pack(_OUCH_COUNT_SIZE, _crc(payload, _TYPE_CRC[J_OUCH_COUNT]), J_OUCH_COUNT) + payload


def _seqs(st: FixSessionState) -> tuple[int, int, int, int]:
    return (st.next_in, st.next_out, st.next_order, st.next_exec)


def _order_record(sid: int, order: Any) -> bytes:
    return journal_record(J_FIX_ORDER, _SID.pack(sid) + _order_json(order.to_list()))


def fix_increments(sid: int, st: FixSessionState, last_seqs: tuple[int, int, int, int] | None,
                   out: list[bytes]) -> tuple[int, int, int, int]:
    """Append to ``out`` the records of what changed in ``st`` since the last call (the sequence
    numbers when they moved, each order touched, each ClOrdID remembered); empty the state's change
    lists; return the sequence numbers now journalled."""
    seqs = _seqs(st)
    if seqs != last_seqs:
        out.append(journal_record(J_FIX_SEQS, _SEQS.pack(sid, *seqs)))
    if st.new_cl_ord_ids:
        for cl, oid in st.new_cl_ord_ids:
            out.append(journal_record(J_FIX_CLORD, _SID_U64.pack(sid, oid) + cl.encode("latin-1", "replace")))
        st.new_cl_ord_ids.clear()
    if st.touched:
        orders = st.orders
        for oid in sorted(st.touched):
            o = orders.get(oid)
            if o is None:
                out.append(journal_record(J_FIX_GONE, _SID_U64.pack(sid, oid)))
            else:
                out.append(_order_record(sid, o))
        st.touched.clear()
    return seqs


def fix_snapshot(sid: int, st: FixSessionState, out: list[bytes]) -> tuple[int, int, int, int]:
    """Append the records of the whole state (compaction); empty its change lists."""
    seqs = _seqs(st)
    out.append(journal_record(J_FIX_SEQS, _SEQS.pack(sid, *seqs)))
    for o in st.orders.values():
        out.append(_order_record(sid, o))
    for cl, oid in st.remembered_cl_ord_ids():
        out.append(journal_record(J_FIX_CLORD, _SID_U64.pack(sid, oid) + cl.encode("latin-1", "replace")))
    st.new_cl_ord_ids.clear()
    st.touched.clear()
    return seqs


class FixJournal:
    """One FIX session's state as the journal has it."""

    __slots__ = ("seqs", "orders", "cl_ord_ids")

    def __init__(self) -> None:
        self.seqs: tuple[int, int, int, int] = (1, 1, 1, 1)
        self.orders: dict[int, list[Any]] = {}
        self.cl_ord_ids: dict[str, int] = {}      # in the order remembered

    def state(self) -> FixSessionState:
        """A FixSessionState with these sequence numbers, orders and ClOrdIDs (``sent``: a dict,
        empty; the shell gives it the session's store)."""
        from appliance.gateway.fix import FixOrder
        st = FixSessionState()
        st.next_in, st.next_out, st.next_order, st.next_exec = self.seqs
        st.orders = {oid: FixOrder.from_list(v) for oid, v in self.orders.items()}
        st.restore_cl_ord_ids(self.cl_ord_ids.items())
        return st


class JournalState:
    """What a journal holds, up to its last MARK."""

    def __init__(self) -> None:
        self.ouch: dict[int, int] = {}             # OUCH session -> messages in its stream
        self.fix: dict[int, FixJournal] = {}
        self.marks: dict[int, int] = {}
        self.valid_end = 0
        self.size = 0
        self.notes: list[str] = []


def _apply(st: JournalState, rtype: int, payload: bytes) -> None:
    if rtype == J_OUCH_COUNT:
        sid, n = _SID_U64.unpack_from(payload)
        st.ouch[sid] = n
        return
    (sid,) = _SID.unpack_from(payload)
    fj = st.fix.get(sid)
    if fj is None:
        fj = st.fix[sid] = FixJournal()
    if rtype == J_FIX_SEQS:
        fj.seqs = _SEQS.unpack_from(payload)[1:]
    elif rtype == J_FIX_ORDER:
        values = _order_values(payload[4:])
        fj.orders[int(values[0])] = values
    elif rtype == J_FIX_GONE:
        fj.orders.pop(_SID_U64.unpack_from(payload)[1], None)
    else:   # J_FIX_CLORD
        fj.cl_ord_ids[payload[_SID_U64.size:].decode("latin-1")] = _SID_U64.unpack_from(payload)[1]


_KNOWN: Final = frozenset((J_OUCH_COUNT, J_FIX_SEQS, J_FIX_ORDER, J_FIX_GONE, J_FIX_CLORD))


def read_journal(path: str) -> JournalState:
    """Parse a journal, one record at a time through a buffered reader; everything after the last
    valid MARK is ignored (``valid_end`` says where)."""
    st = JournalState()
    try:
        f = open(path, "rb", buffering=_READ_CHUNK)
    except FileNotFoundError:
        return st
    pending: list[tuple[int, bytes]] = []
    pos = 0
    with f:
        st.size = os.fstat(f.fileno()).st_size
        while True:
            head = f.read(_JHEAD.size)
            if len(head) < _JHEAD.size:
                if head:
                    st.notes.append(f"{path}: torn record at offset {pos}")
                break
            length, crc, rtype = _JHEAD.unpack(head)
            payload = f.read(length - _JHEAD.size) if length >= _JHEAD.size else b""
            if length < _JHEAD.size or len(payload) != length - _JHEAD.size or _crc(head[8:] + payload) != crc:
                st.notes.append(f"{path}: torn or damaged record at offset {pos}")
                break
            pos += length
            if rtype == J_MARK:
                for r, p in pending:
                    _apply(st, r, p)
                pending.clear()
                for i in range(payload[0]):
                    part, seq = _MARK.unpack_from(payload, 1 + i * _MARK.size)
                    st.marks[part] = seq
                st.valid_end = pos
            elif rtype in _KNOWN:
                pending.append((rtype, payload))
            else:
                st.notes.append(f"{path}: unknown record type {rtype} at offset {pos - length}")
                break
    if st.valid_end < st.size and not st.notes:
        st.notes.append(f"{path}: {st.size - st.valid_end} bytes after the last mark ignored (an unfinished flush)")
    elif st.notes:
        st.notes[-1] += f": {st.size - st.valid_end} bytes after the last mark ignored"
    return st


def write_journal(path: str, records: Iterable[bytes]) -> int:
    """Replace the journal by ``records`` (a snapshot ending in a MARK) atomically (not fsynced, as
    the rest of the journal). Returns an append descriptor on the new file."""
    atomic_write(path, b"".join(records), durable=False, mode=JOURNAL_MODE)
    return os.open(path, os.O_WRONLY | os.O_APPEND)
