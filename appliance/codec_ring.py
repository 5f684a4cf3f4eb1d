"""Ring records between a gateway and a partition: commands in, engine events out. Layouts once, as data.

One record is one ring slot (appliance.ring); integers are little-endian like the WAL.

Command record (gateway -> partition, ring ``cmd``)::

    0      1
    +------+-------------------------------------------------------------+
    | kind |  the command's WAL body: walcodec.LAYOUTS[kind].body        |
    |  u8  |  (catalogue FIELDS in order; 87 bytes for a NewOrder)         |
    +------+-------------------------------------------------------------+

Routing needs no field of its own: the ring names the gateway, the body's ``session`` the session.

Event record (partition -> gateway, ring ``evt``)::

    0      1               9               17
    +------+---------------+---------------+---------------------------------------+
    | kind |      seq      |     ts_ns     |  fields: EVENT_RECORD_FIELDS[kind]     |
    |  u8  |      u64      |      u64      |                                        |
    +------+---------------+---------------+---------------------------------------+
    kind: catalogue.Ev.* (1..8, 11) or a control kind (CTL_*), | LAST (0x80) on the last record of a
          command's events for this gateway: the gateway hands a command's events to its sessions
          only once it has them all.

    ORDER (45 bytes: the order's immutable fields; every quantity an event needs is a copy in it)
    +----------+---------+---------+------+--------+------+--------+-----+---------+------------+
    | order_id |   ref   | session | firm | locate | side | ord_ty | tif |  price  | stop_price |
    |   u64    |   u64   |   u32   | u32  |  u16   |  u8  |   u8   | u8  |   i64   |    i64     |
    +----------+---------+---------+------+--------+------+--------+-----+---------+------------+
    OREF (27 bytes, an execution's maker and taker): order_id u64, ref u64, session u32, firm u32,
          locate u16, side u8
    COMMAND (rest of the record): kind u8 + the WAL body, as in a command record

    CROSS (Ev.CROSS_EXECUTED, an auction fill): as OrderExecuted (buy order in the maker slot, sell
          in the taker slot) + cross_type u8 (model.CROSS_*, 0 unknown); it reaches both sides'
          sessions as a fill. The decoded tuple is CrossExecuted's ten fields + cross_type.

Not every engine event crosses: OrderAdded says nothing a session or the risk checker needs, so it
stays in the partition; nor do the feed-only events of trading phases (``FEED_ONLY``:
TradingStateChanged, MarketEvent, AuctionUncrossed, AuctionImbalance, AuctionCollar,
LimitStateChanged), which the feed publisher takes from the engine itself. They are skipped,
never an error. The largest record (OrderReplaced, 111 bytes) fits a 128-byte slot
(``MIN_SLOT_SIZE``).

Control records from the partition at start-up (their seq is the partition's last seq):
    CTL_POSITION    firm u32, locate u16, position i64      risk bootstrap: a firm's net position
    CTL_LAST_PRICE  locate u16, price i64                   risk bootstrap: last trade price
    CTL_OPEN_ORDER  ORDER + leaves u32 + qty u32            risk bootstrap: a live order
    CTL_REPLAY      (nothing)                               what follows until CTL_LIVE is catch-up:
                                                            events the gateway had not yet processed
                                                            before a restart (sessions only, not risk)
    CTL_LIVE        (nothing)                               live from here on
and, live, to the gateway that sent it, after an admin Halt/Resume/Close the engine applied (a
refused one comes back as its CommandRejected):
    CTL_ADMIN       command u8, locate u16, changed u32     the command's KIND, its locate, how
                                                            many instruments changed state

Nothing above is restated in the tables below: an order's fields are projections of the catalogue's
ORDER_IMAGE (ORDER, OREF, an acceptance's cl_ord_id, a replace's old ref), an event's own fields
are catalogue.EVENT_FIELDS in the catalogue's order, a replace's command fields ReplaceOrder.FIELDS.
The ring is another encoding than appliance.eventcodec's canonical frames (which hash and compare
the engine's output): it carries what a gateway's sessions and risk checks need, the order's client
ids included, and leaves out the rest; and it narrows an event's quantities and prices from the
catalogue's i64 to u32 (``_narrow``) so that a record fits its slot. A field that differs otherwise
says why beside its table entry (a cancel's reason is a byte).

The gateway rebuilds the engine's event tuples from these records (``EventDecoder``): order objects
are ``NewOrder`` instances cached per order id (the gateway's own firms only) whose ref, qty, leaves,
filled and cl_ord_id follow the events, so that OuchSession, FixSession and RiskChecker take the
same tuples they would take from the engine itself. docs/operations.md has the tables.
"""
from __future__ import annotations

import struct
from typing import Any, Final, Iterable, Sequence

from appliance.catalogue import (
    COMMAND_VALUE,
    EVENT_FIELDS,
    ORDER_IMAGE,
    ORDER_VALUE,
    REPL_IN_PLACE,
    Command,
    Ev,
    Event,
    NewOrder,
    ReplaceOrder,
    fields_of,
)
from appliance.model import BUY
from appliance.ring import LENGTH_BYTES
from appliance.walcodec import LAYOUTS, RECORD_HEADER_SIZE, MalformedCommand

# The event kinds this module's per-event code compares or builds, as module globals (one
# LOAD_GLOBAL each; Ev.X is a class attribute lookup, which CPython 3.11 does not specialize).
EV_ACCEPTED: Final = Ev.ACCEPTED
EV_REJECTED: Final = Ev.REJECTED
EV_EXECUTED: Final = Ev.EXECUTED
EV_CANCELLED: Final = Ev.CANCELLED
EV_REPLACED: Final = Ev.REPLACED
EV_STOP_TRIGGERED: Final = Ev.STOP_TRIGGERED
EV_MASS_CANCELLED: Final = Ev.MASS_CANCELLED
EV_CROSS_EXECUTED: Final = Ev.CROSS_EXECUTED
EV_UNCROSSED: Final = Ev.UNCROSSED

LAST: Final = 0x80          # flag on the kind byte: the last record of a command's events
KIND_MASK: Final = 0x7F
# the kind bytes of the commonest records, flagged LAST (EventEncoder packs them so)
ACCEPTED_LAST: Final = EV_ACCEPTED | LAST
EXECUTED_LAST: Final = EV_EXECUTED | LAST
CANCELLED_LAST: Final = EV_CANCELLED | LAST
CTL_POSITION: Final = 0x70
CTL_LAST_PRICE: Final = 0x71
CTL_OPEN_ORDER: Final = 0x72
CTL_REPLAY: Final = 0x73
CTL_LIVE: Final = 0x74
CTL_ADMIN: Final = 0x75
MIN_SLOT_SIZE: Final = 128

HEADER_FIELDS: Final = (("kind", "B"), ("seq", "Q"), ("ts_ns", "Q"))
# Projections of the catalogue's ORDER_IMAGE (codes as declared there unless overridden):
# ORDER, an order's immutable fields that sessions and risk checks need; OREF, what identifies and
# routes an execution's maker and taker.
ORDER_FIELDS: Final = fields_of(
    ORDER_IMAGE, "order_id", "ref", "session", "firm", "locate", "side", "ord_type", "tif", "price", "stop_price",
)
OREF_FIELDS: Final = fields_of(ORDER_IMAGE, "order_id", "ref", "session", "firm", "locate", "side")
COMMAND_REST: Final = (("command", COMMAND_VALUE),)   # the rest of the record is a command


def _narrow(fields: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Quantities and prices (i64 in the catalogue) cross as u32, as ITCH carries them: the engine
    accepts 1..2^32-1 shares, and a record stays within MIN_SLOT_SIZE."""
    return tuple((name, "I" if code == "q" else code) for name, code in fields)


def _scalars(kind: int, **codes: str) -> tuple[tuple[str, str], ...]:
    """The event's own fields (not its orders or command) in catalogue order, narrowed (_narrow);
    ``codes`` overrides single fields."""
    table = _narrow(tuple(f for f in EVENT_FIELDS[kind] if f[1] not in (ORDER_VALUE, COMMAND_VALUE)))
    unknown = set(codes) - {name for name, _ in table}
    if unknown:
        raise ValueError(f"ring: {sorted(unknown)} are not fields of event kind {kind}")
    return fields_of(table, *((name, codes[name]) if name in codes else name for name, _ in table))


def _prefixed(prefix: str, fields: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((prefix + name, code) for name, code in fields)


_EXECUTION: Final = _prefixed("maker_", OREF_FIELDS) + _prefixed("taker_", OREF_FIELDS) + _scalars(Ev.EXECUTED)

#: Fields after the header, per record kind (COMMAND_VALUE: the rest of the record is a command).
EVENT_RECORD_FIELDS: Final[dict[int, tuple[tuple[str, str], ...]]] = {
    Ev.ACCEPTED: ORDER_FIELDS + _scalars(Ev.ACCEPTED) + fields_of(ORDER_IMAGE, "cl_ord_id"),
    Ev.REJECTED: _scalars(Ev.REJECTED) + COMMAND_REST,
    Ev.EXECUTED: _EXECUTION,
    Ev.CANCELLED: ORDER_FIELDS + _scalars(Ev.CANCELLED, reason="B"),   # cancel reasons (reasons.CANCEL_*) fit a byte
    Ev.REPLACED: _prefixed("new_", ORDER_FIELDS) + _prefixed("old_", fields_of(ORDER_IMAGE, "ref"))
    + _scalars(Ev.REPLACED) + _prefixed("command_", fields_of(ReplaceOrder.FIELDS, "qty", "cl_ord_id")),
    Ev.STOP_TRIGGERED: ORDER_FIELDS + _scalars(Ev.STOP_TRIGGERED),
    # An auction fill: OrderExecuted's layout (buy order in the maker slot, sell in the taker slot)
    # plus the auction's cross type (model.CROSS_*, from the command's AuctionUncrossed; 0 unknown).
    Ev.CROSS_EXECUTED: _EXECUTION + fields_of(EVENT_FIELDS[Ev.UNCROSSED], "cross_type"),
    Ev.MASS_CANCELLED: _scalars(Ev.MASS_CANCELLED) + COMMAND_REST,
    CTL_POSITION: fields_of(ORDER_IMAGE, "firm", "locate") + (("position", "q"),),
    CTL_LAST_PRICE: fields_of(ORDER_IMAGE, "locate", "price"),
    CTL_OPEN_ORDER: ORDER_FIELDS + _narrow(fields_of(ORDER_IMAGE, "leaves", "qty")),
    CTL_REPLAY: (),
    CTL_LIVE: (),
    CTL_ADMIN: (("command", "B"), ("locate", "H"), ("changed", "I")),
}
#: Events that never cross to a gateway: OrderAdded, and the feed-only events of trading phases
#: (state changes, market events, auction results and imbalances, collars, limit states). The feed
#: publisher takes those from the engine directly; no session or risk check needs them.
FEED_ONLY: Final = frozenset((Ev.TRADING_STATE, Ev.MARKET_EVENT, Ev.UNCROSSED, Ev.IMBALANCE, Ev.COLLAR,
                              Ev.LIMIT_STATE))
NOT_FORWARDED: Final = frozenset((Ev.ADDED,)) | FEED_ONLY


def _struct(fields: Sequence[tuple[str, str]]) -> struct.Struct:
    return struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS + tuple(fields)
                                       if code != COMMAND_VALUE))


STRUCTS: Final[dict[int, struct.Struct]] = {k: _struct(f) for k, f in EVENT_RECORD_FIELDS.items()}
HEADER: Final = struct.Struct("<BQQ")
HEADER_SIZE: Final = HEADER.size  # 17

_ACC = STRUCTS[Ev.ACCEPTED]
_REJ = STRUCTS[Ev.REJECTED]
_EXE = STRUCTS[Ev.EXECUTED]
_CAN = STRUCTS[Ev.CANCELLED]
_REP = STRUCTS[Ev.REPLACED]
_STP = STRUCTS[Ev.STOP_TRIGGERED]
_CRX = STRUCTS[Ev.CROSS_EXECUTED]
_MAS = STRUCTS[Ev.MASS_CANCELLED]
_POS = STRUCTS[CTL_POSITION]
_LPX = STRUCTS[CTL_LAST_PRICE]
_OPN = STRUCTS[CTL_OPEN_ORDER]


def max_record_size() -> int:
    """The largest event record (a NewOrder command in a CommandRejected)."""
    biggest_cmd = 1 + max(lay.body.size for lay in LAYOUTS.values())
    return max(s.size + (biggest_cmd if any(c == COMMAND_VALUE for _, c in EVENT_RECORD_FIELDS[k]) else 0)
               for k, s in STRUCTS.items())


# ================================================================================================
# Commands
# ================================================================================================

def encode_command(cmd: Command) -> bytes:
    """kind + WAL body. MalformedCommand if the command cannot be written as declared."""
    try:
        layout = LAYOUTS[cmd.KIND]
    except (AttributeError, KeyError):
        raise MalformedCommand(f"{cmd!r} is not a catalogue command") from None
    return bytes((layout.kind,)) + layout.encode_body(cmd)


#: kind -> (record length, decode(buf, off_of_kind_byte)) with the WAL's generated decoders.
COMMAND_SIZES: Final[dict[int, int]] = {k: 1 + lay.body.size for k, lay in LAYOUTS.items()}
_CMD_DECODERS: Final[list[Any]] = [LAYOUTS[k].decode if k in LAYOUTS else None for k in range(256)]
_CMD_SIZES: Final[list[int]] = [COMMAND_SIZES.get(k, -1) for k in range(256)]   # -1: not a kind


def decode_command(buf: bytes, off: int = 0) -> Command:
    """The command whose kind byte is at buf[off] (its body follows). ValueError if unknown."""
    kind = buf[off]
    dec = _CMD_DECODERS[kind]
    if dec is None:
        raise ValueError(f"ring: command kind {kind} unknown")
    # The WAL decoders read the body after a record header: shift accordingly.
    cmd: Command = dec(buf, off + 1 - RECORD_HEADER_SIZE)
    return cmd


def decode_command_block(block: bytes, count: int, slot_size: int, out: list[Command],
                         bodies: list[bytes | None] | None = None) -> int:
    """Decode ``count`` command records of a ``RingConsumer.poll_block`` block into ``out``; with
    ``bodies``, append each command's WAL body as it came (the bytes after its kind) beside it, so
    that the partition logs what the gateway encoded instead of encoding the command again.

    Returns how many records were refused (unknown kind or a length that does not fit the kind).
    """
    bad = 0
    decoders = _CMD_DECODERS
    sizes = _CMD_SIZES
    append = out.append
    at_kind = LENGTH_BYTES                  # the kind byte follows the slot's length
    at_record = at_kind + 1 - RECORD_HEADER_SIZE   # where a WAL decoder finds the body after the kind
    keep = bodies.append if bodies is not None else None
    for k in range(count):
        base = k * slot_size
        off = base + at_kind
        kind = block[off]
        dec = decoders[kind]
        size = sizes[kind]
        if dec is None or size != block[base] | (block[base + 1] << 8):
            bad += 1
            continue
        append(dec(block, base + at_record))
        if keep is not None:
            keep(block[off + 1:off + size])
    return bad


# ================================================================================================
# Events: partition side
# ================================================================================================

_CL_WIDTH: Final = struct.calcsize(dict(ORDER_IMAGE)["cl_ord_id"])


def _cl(s: str) -> bytes:
    try:
        return s.encode("ascii")[:_CL_WIDTH]
    except (UnicodeEncodeError, AttributeError):
        return b""


def _command_bytes(cmd: Any) -> bytes:
    try:
        return encode_command(cmd)
    except MalformedCommand:
        # Rejected before sequencing because it could not be written: keep what routes the answer.
        return _sanitized(cmd) if getattr(cmd, "KIND", 0) in LAYOUTS else b"\x00"


def _sanitized(cmd: Any) -> bytes:
    layout = LAYOUTS[cmd.KIND]
    vals: list[Any] = []
    for name, code in zip(layout.names, layout.codes):
        v = getattr(cmd, name, 0)
        if code.endswith("s"):
            vals.append(b"")
        else:
            lim = struct.calcsize("<" + code) * 8
            signed = code.islower()
            ok = isinstance(v, int) and (-(1 << (lim - 1)) <= v < (1 << (lim - 1)) if signed else 0 <= v < (1 << lim))
            vals.append(v if ok else 0)
    return bytes((layout.kind,)) + layout.body.pack(*vals)


class EventEncoder:
    """Partition side: a batch's results -> event records per gateway. Owned by the matching thread.

    ``gateway_of_firm`` routes order events by the order's firm (each firm trades through one
    gateway); rejects and mass-cancel reports by the command's firm, else ``origin``; executions go
    to every gateway (both sides' gateways, and every risk checker learns the last trade price).
    """

    def __init__(self, gateway_of_firm: dict[int, int], gateways: int) -> None:
        self.gateway_of_firm = gateway_of_firm
        self.gateways = gateways
        self.dropped = 0   # events of a firm no gateway owns
        # (firm, locate) -> net position from every execution encoded or counted: the gateways'
        # risk views are bootstrapped from it after a restart (feed checkpoints carry it).
        self.positions: dict[tuple[int, int], int] = {}
        # gateway -> the last seq whose events it was sent (a restart from a feed checkpoint at S
        # needs no catch-up before S for a gateway whose journal reaches this)
        self.routed: dict[int, int] = {}

    def count_fills(self, events: list[Event]) -> None:
        """Add a command's executions to ``positions`` without encoding them (replay)."""
        for ev in events:
            k = ev[0]
            if k == EV_EXECUTED or k == EV_CROSS_EXECUTED:
                self._fill(ev[1], ev[2], ev[3])

    def _fill(self, m: Any, t: Any, qty: int) -> None:
        pos = self.positions
        for o in (m, t):
            key = (o.firm, o.locate)
            pos[key] = pos.get(key, 0) + (qty if o.side == BUY else -qty)

    def encode(self, results: Sequence[tuple[int, int, Command, list[Event]]], out: list[list[bytes]],
               origin: dict[int, int] | None = None) -> None:
        """Append each command's records to out[gateway]; the last record of a command gets LAST.

        ``origin``: id(command) -> gateway, for commands of a firm no gateway owns; without it such
        a command's answer goes to the only gateway, if there is one.

        Every record is packed with LAST set; a second record of the same command for the same
        gateway clears it on the one before (most commands have one record per gateway).
        """
        gw_of = self.gateway_of_firm
        all_gw = range(self.gateways)
        sole = 0 if self.gateways == 1 else -1
        acc, rej, exe, can, rep, stp, mas = _ACC, _REJ, _EXE, _CAN, _REP, _STP, _MAS
        skip = NOT_FORWARDED
        mask = KIND_MASK
        # per gateway: the index in results of the command whose record is last in out[g]
        mark = [-1] * self.gateways
        for i, (seq, ts, cmd, events) in enumerate(results):
            for ev in events:
                k = ev[0]
                if k == EV_EXECUTED or k == EV_CROSS_EXECUTED:
                    m = ev[1]
                    t = ev[2]
                    if k == EV_EXECUTED:
                        rec = exe.pack(EXECUTED_LAST, seq, ts, m.order_id, m.ref, m.session, m.firm, m.locate,
                                       m.side, t.order_id, t.ref, t.session, t.firm, t.locate, t.side,
                                       ev[3], ev[4], ev[5], ev[6], ev[7], ev[8], ev[9])
                    else:
                        rec = _CRX.pack(k | LAST, seq, ts, m.order_id, m.ref, m.session, m.firm, m.locate, m.side,
                                        t.order_id, t.ref, t.session, t.firm, t.locate, t.side,
                                        ev[3], ev[4], ev[5], ev[6], ev[7], ev[8], ev[9],
                                        cross_type_of(events, m.locate))
                    for g in all_gw:
                        lst = out[g]
                        if mark[g] == i:
                            last = lst[-1]
                            lst[-1] = bytes((last[0] & mask,)) + last[1:]
                        else:
                            mark[g] = i
                        lst.append(rec)
                    self._fill(m, t, ev[3])
                    continue
                if k == EV_ACCEPTED:
                    o = ev[1]
                    # cl_ord_id: ASCII within its width (the WAL's encoder checked the command)
                    rec = acc.pack(ACCEPTED_LAST, seq, ts, o.order_id, o.ref, o.session, o.firm, o.locate,
                                   o.side, o.ord_type, o.tif, o.price, o.stop_price, ev[2], o.cl_ord_id.encode())
                    firm = o.firm
                elif k == EV_CANCELLED:
                    o = ev[1]
                    rec = can.pack(CANCELLED_LAST, seq, ts, o.order_id, o.ref, o.session, o.firm, o.locate,
                                   o.side, o.ord_type, o.tif, o.price, o.stop_price, ev[2], ev[3], ev[4], ev[5],
                                   ev[6])
                    firm = o.firm
                elif k in skip:
                    continue
                elif k == EV_REPLACED:
                    o = ev[2]
                    c = ev[7]
                    rec = rep.pack(k | LAST, seq, ts, o.order_id, o.ref, o.session, o.firm, o.locate, o.side,
                                   o.ord_type, o.tif, o.price, o.stop_price, ev[1].ref, ev[3], ev[4], ev[5],
                                   ev[6], c.qty, _cl(c.cl_ord_id))
                    firm = o.firm
                elif k == EV_REJECTED:
                    c = ev[1]
                    rec = rej.pack(k | LAST, seq, ts, ev[2]) + _command_bytes(c)
                    firm = getattr(c, "firm", -1)
                elif k == EV_STOP_TRIGGERED:
                    o = ev[1]
                    rec = stp.pack(k | LAST, seq, ts, o.order_id, o.ref, o.session, o.firm, o.locate, o.side,
                                   o.ord_type, o.tif, o.price, o.stop_price, ev[2])
                    firm = o.firm
                elif k == EV_MASS_CANCELLED:
                    c = ev[1]
                    rec = mas.pack(k | LAST, seq, ts, ev[2]) + _command_bytes(c)
                    firm = c.firm
                else:
                    raise ValueError(f"ring: event kind {k} has no record")
                g = gw_of.get(firm, -1)
                if g < 0:
                    g = origin.get(id(cmd), -1) if origin is not None else sole
                    if g < 0:
                        self.dropped += 1
                        continue
                lst = out[g]
                if mark[g] == i:
                    last = lst[-1]
                    lst[-1] = bytes((last[0] & mask,)) + last[1:]
                else:
                    mark[g] = i
                lst.append(rec)
        routed = self.routed
        for g, i in enumerate(mark):
            if i >= 0:
                routed[g] = results[i][0]


def cross_type_of(events: Sequence[Event], locate: int) -> int:
    """The cross type (model.CROSS_*) of the auction on ``locate`` among a command's events, 0 if none.

    An auction's CrossExecuted fills come before its AuctionUncrossed in the same event list.
    """
    for ev in events:
        if ev[0] == EV_UNCROSSED and ev[1] == locate:
            ct: int = ev[2]
            return ct
    return 0


def control_record(kind: int, seq: int, *fields: Any) -> bytes:
    """A CTL_* record (LAST set: each control record stands alone)."""
    return STRUCTS[kind].pack(kind | LAST, seq, 0, *fields)


def open_order_record(seq: int, o: NewOrder) -> bytes:
    return _OPN.pack(CTL_OPEN_ORDER | LAST, seq, 0, o.order_id, o.ref, o.session, o.firm, o.locate, o.side,
                     o.ord_type, o.tif, o.price, o.stop_price, o.leaves, o.qty)


# ================================================================================================
# Events: gateway side
# ================================================================================================

Group = tuple[int, int, list[Event]]   # (seq, ts_ns, events of one command)


class EventDecoder:
    """Gateway side: event records -> the engine's event tuples. Owned by the gateway's I/O thread.

    ``feed(records)`` returns the complete commands' events as (seq, ts_ns, events) groups; a command
    whose records are split across two polls is held until its LAST record arrives. Control records
    come back as ``(seq, 0, [(CTL_*, ...)])`` groups of their own. Orders of ``firms`` are cached
    per order id while live, so one order is one object across events, as in the engine.
    """

    def __init__(self, firms: Iterable[int] | None = None) -> None:
        self.firms = None if firms is None else frozenset(firms)
        self.orders: dict[int, NewOrder] = {}
        self._partial: list[Event] = []
        self._partial_seq = 0
        self._partial_ts = 0
        self.records = 0

    def _mine(self, firm: int) -> bool:
        return self.firms is None or firm in self.firms

    def _order(self, order_id: int, ref: int, session: int, firm: int, locate: int, side: int,
               ord_type: int = 2, tif: int = 0, price: int = 0, stop_price: int = 0) -> NewOrder:
        o = self.orders.get(order_id)
        if o is None or o.ref != ref:
            o = NewOrder(order_id, locate, side, 0, price, ord_type, tif, stop_price, firm, session)
            o.ref = ref
            firms = self.firms
            if firms is None or firm in firms:
                self.orders[order_id] = o
        return o

    def _done(self, o: NewOrder) -> None:
        if self.orders.get(o.order_id) is o:
            del self.orders[o.order_id]

    def feed(self, records: Iterable[bytes]) -> list[Group]:
        groups: list[Group] = []
        events = self._partial
        orders = self.orders
        first_seq = self._partial_seq     # of the command whose events are in ``events``
        first_ts = self._partial_ts
        n = 0
        for rec in records:
            n += 1
            flag = rec[0]
            k = flag & KIND_MASK
            if k == EV_ACCEPTED:   # the commonest record first: _order, inline
                (_, seq, ts, oid, ref, ses, firm, loc, side, ot, tif, px, spx, qty, cl) = _ACC.unpack(rec)
                o = orders.get(oid)
                if o is None or o.ref != ref:
                    o = NewOrder(oid, loc, side, 0, px, ot, tif, spx, firm, ses)
                    o.ref = ref
                    if self.firms is None or firm in self.firms:
                        orders[oid] = o
                o.qty = o.leaves = qty
                o.filled = 0
                o.cl_ord_id = cl.rstrip(b" \x00").decode("ascii", "replace")
                ev: Event = (EV_ACCEPTED, o, qty)
            elif k == EV_EXECUTED:
                (_, seq, ts, m_id, m_ref, m_ses, m_firm, m_loc, m_side, t_id, t_ref, t_ses, t_firm, t_loc,
                 t_side, qty, price, match, ml, mf, tl, tf) = _EXE.unpack(rec)
                m = self._order(m_id, m_ref, m_ses, m_firm, m_loc, m_side)
                t = self._order(t_id, t_ref, t_ses, t_firm, t_loc, t_side)
                m.leaves, m.filled = ml, mf
                t.leaves, t.filled = tl, tf
                if not ml:
                    self._done(m)
                if not tl:
                    self._done(t)
                ev = (EV_EXECUTED, m, t, qty, price, match, ml, mf, tl, tf)
            elif k == EV_CROSS_EXECUTED:
                (_, seq, ts, m_id, m_ref, m_ses, m_firm, m_loc, m_side, t_id, t_ref, t_ses, t_firm, t_loc,
                 t_side, qty, price, match, ml, mf, tl, tf, ctype) = _CRX.unpack(rec)
                m = self._order(m_id, m_ref, m_ses, m_firm, m_loc, m_side)
                t = self._order(t_id, t_ref, t_ses, t_firm, t_loc, t_side)
                m.leaves, m.filled = ml, mf
                t.leaves, t.filled = tl, tf
                if not ml:
                    self._done(m)
                if not tl:
                    self._done(t)
                # CrossExecuted's fields, then the cross type the ring carries (sessions read it as
                # ev[10]; from the engine directly they find it in the AuctionUncrossed that follows).
                ev = (EV_CROSS_EXECUTED, m, t, qty, price, match, ml, mf, tl, tf, ctype)
            elif k == EV_CANCELLED:
                (_, seq, ts, oid, ref, ses, firm, loc, side, ot, tif, px, spx, qty, leaves, filled, reason,
                 on_book) = _CAN.unpack(rec)
                o = self._order(oid, ref, ses, firm, loc, side, ot, tif, px, spx)
                o.leaves = leaves
                o.filled = filled
                o.qty = filled + leaves
                if not leaves:
                    self._done(o)
                ev = (EV_CANCELLED, o, qty, leaves, filled, reason, on_book)
            elif k == EV_REPLACED:
                (_, seq, ts, oid, ref, ses, firm, loc, side, ot, tif, px, spx, old_ref, old_leaves, new_leaves,
                 filled, action, cqty, ccl) = _REP.unpack(rec)
                old = self.orders.get(oid)
                if old is None or old.ref != old_ref:
                    old = NewOrder(oid, loc, side, filled + old_leaves, px, ot, tif, spx, firm, ses)
                    old.ref = old_ref
                    old.leaves = old_leaves
                    old.filled = filled
                cl = ccl.rstrip(b" \x00").decode("ascii", "replace")
                if action == REPL_IN_PLACE:
                    new = old
                else:
                    new = NewOrder(oid, loc, side, cqty, px, ot, tif, spx, firm, ses, old.account,
                                   old.cl_ord_id, old.mpid, old.stp)
                    new.ref = ref
                new.leaves = new_leaves
                new.filled = filled
                new.qty = filled + new_leaves
                if cl:
                    new.cl_ord_id = cl
                if new_leaves:
                    if self._mine(firm):
                        self.orders[oid] = new
                else:
                    self.orders.pop(oid, None)
                cmd = ReplaceOrder(oid, cqty, px, firm, ses, spx, cl)
                ev = (EV_REPLACED, old, new, old_leaves, new_leaves, filled, action, cmd)
            elif k == EV_REJECTED:
                _, seq, ts, reason = _REJ.unpack_from(rec)
                ev = (EV_REJECTED, decode_command(rec, _REJ.size), reason)
            elif k == EV_STOP_TRIGGERED:
                (_, seq, ts, oid, ref, ses, firm, loc, side, ot, tif, px, spx, trig) = _STP.unpack(rec)
                o = self._order(oid, ref, ses, firm, loc, side, ot, tif, px, spx)
                ev = (EV_STOP_TRIGGERED, o, trig)
            elif k == EV_MASS_CANCELLED:
                _, seq, ts, count = _MAS.unpack_from(rec)
                ev = (EV_MASS_CANCELLED, decode_command(rec, _MAS.size), count)
            elif k in NOT_FORWARDED:   # never encoded; tolerated if met
                continue
            elif k in STRUCTS:   # control records
                vals = STRUCTS[k].unpack(rec)
                if k == CTL_OPEN_ORDER:
                    (_, seq, _ts, oid, ref, ses, firm, loc, side, ot, tif, px, spx, leaves, qty) = vals
                    o = self._order(oid, ref, ses, firm, loc, side, ot, tif, px, spx)
                    o.qty = qty
                    o.leaves = leaves
                    o.filled = qty - leaves
                    groups.append((seq, 0, [(k, o)]))
                else:
                    groups.append((vals[1], 0, [(k,) + tuple(vals[3:])]))
                continue
            else:
                raise ValueError(f"ring: event record kind {k} unknown")
            if not events:
                first_seq = seq
                first_ts = ts
            events.append(ev)
            if flag & LAST:
                groups.append((first_seq, first_ts, events))
                events = []
        self._partial = events
        self._partial_seq = first_seq
        self._partial_ts = first_ts
        self.records += n
        return groups
