"""FIX 4.4 acceptor session, sans-IO: ``FixSession``.

Owned by the gateway's I/O thread. One ``FixSession`` is one counterparty: the CompID pair of the
config, the sequence numbers and the store of sent messages (``FixSessionState``, a plain object the
shell persists: the gateway journals its changes as increments and keeps the sent messages in a
file-backed store, appliance/gateway/journal.py and store.py), and the orders entered on it.

Identity and credentials: the counterparty is its SenderCompID (49), as FIX sessions are; the shell
reads the CompIDs of the first message with ``logon_comp_ids`` and hands the connection to the
session configured for them (an unknown CompID: close without answering). The Logon must then carry
Password (554) equal to the config's (and Username (553) when the config names one). The config
names the firm; every order of the session is that firm's.

What the I/O shell calls, in order::

    s = FixSession(config, state, instruments)    # state: FixSessionState.from_json_obj(saved)
    s.connection_made(now_ns)
    s.receive_data(data, now_ns)
    s.poll(now_ns)                                # heartbeats, TestRequest, timeouts
    s.on_events(ts_ns, events, now_ns)            # engine events (routed by order.session)
    s.take_commands() -> [Command]                # submit to the partition, in order
    s.data_to_send() -> bytes                     # write to the socket ...
    s.state.to_json_obj()                         # ... after saving the state if s.state.dirty
    s.take_events() -> [SessionEvent]
    s.should_close                                # flush data_to_send(), then close
    s.connection_lost(now_ns)
    s.logout(now_ns, text)                        # initiate an orderly logout (end of day)

Session layer (FIX 4.4 rules):
    Logon A         first message; CompIDs, Password/Username, EncryptMethod 0, HeartBtInt > 0;
                    ResetSeqNumFlag (141=Y, with MsgSeqNum 1) resets both sides to 1. Answered with
                    Logon (same HeartBtInt); a MsgSeqNum above the expected one is then answered with
                    ResendRequest. Anything else first: close. A Logon without the counterparty's
                    Password/Username: close without answering, the session untouched (no
                    MsgSeqNum used, nothing stored). A failed check after that: Logout, close.
    MsgSeqNum       equal: processed. Higher: ResendRequest(7=expected, 16=0) once, and the message
                    is dropped (it comes again in the resend). Lower without PossDupFlag: Logout
                    "MsgSeqNum too low", close; lower with PossDupFlag=Y: ignored.
    Heartbeat 0     nothing (a TestRequest answered); TestRequest 1 -> Heartbeat with TestReqID 112.
    ResendRequest 2 stored application messages (and Rejects) resent with PossDupFlag 43=Y and
                    OrigSendingTime 122; runs of other session messages become SequenceReset-GapFill
                    (123=Y, 36=NewSeqNo).
    SequenceReset 4 GapFill: MsgSeqNum checked, expected := NewSeqNo. Reset: expected := NewSeqNo
                    whatever MsgSeqNum. A NewSeqNo below the expected one: Reject (373=5).
    Reject 3        counted (event), nothing else. Logout 5: answered with Logout, close.
    over budget     (shell-set ``budget``, every message but Logout and SequenceReset) answered, not
                    processed: application BusinessMessageReject 380=0, session Reject 373=99;
                    too many in a second: Logout with the reason, close.
    malformed       Reject 3 with SessionRejectReason 373 (0 invalid tag, 1 required tag missing,
                    4 no value, 5 value out of range, 6 bad format, 9 CompID, 11 invalid MsgType,
                    14 out of order) and RefSeqNum/RefTagID/RefMsgType; the sequence number is used.
                    Bad checksum: dropped (no sequence number). Framing lost: Logout, close.
    timers          Heartbeat after HeartBtInt of silence on our side; TestRequest after HeartBtInt
                    + 20% of silence on theirs; Logout and close when that gets no answer within a
                    further HeartBtInt; close 10 s after an unanswered Logout or a missing Logon.

Application (see ``_new_order`` and ``on_events``): NewOrderSingle D, OrderCancelRequest F,
OrderCancelReplaceRequest G, OrderMassCancelRequest q (530=1 by symbol, 7 all; 54 optional) in;
ExecutionReport 8, OrderCancelReject 9, OrderMassCancelReport r, BusinessMessageReject j out.
Engine order ids: ``(session_id << 32) | n``, n counting the session's orders from 1 (in the state).
Business rejects of an order are ExecutionReports (150=8, 39=8, 103, 58), duplicate ClOrdID
included (103=6); malformed messages are session Rejects. A cancel or replace of an ended order:
OrderCancelReject 102=0 with its OrderID and OrdStatus; of an unknown one: 37=NONE 102=1
(docs/order-entry.md). Custom tag 7928 SelfTradePreventionMode:
N none, CN cancel newest, CO cancel oldest, DC decrement and cancel; absent: the firm's mode.
ExecInst (18) containing 6 (participate don't initiate): a post-only order (docs/matching.md).

Not supported: data fields with SOH, repeating groups in orders (parties are ignored), MinQty 110
and MaxFloor 111 (rejected), TIFs other than 0/1/3/4 (rejected), OrdTypes other than 1-4, pending
ExecutionReports (150=A/6/E are not sent), OrderStatusRequest and the rest (BusinessMessageReject).
A mass cancel cancels every order of the firm (other sessions' too): MassCancel has no session
filter.
"""
from __future__ import annotations

import datetime
import operator
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Iterable, Iterator, Sequence

from appliance import reasons as R
from appliance.catalogue import (
    MASS_ANY_INSTRUMENT,
    MASS_ANY_SIDE,
    CancelOrder,
    Command,
    Ev,
    Event,
    MassCancel,
    NewOrder,
    ReplaceOrder,
)
from appliance.gateway import events as E
from appliance.gateway.budget import DISCONNECT, MessageBudget
from appliance.gateway.events import SessionEvent, SessionOutbox
from appliance.gateway.fixcodec import FixFramingError, FixMessage, FixParser, Garbled, encode
from appliance.model import (
    BUY,
    DAY,
    MARKET,
    SELL,
    STOP,
    STP_CN,
    STP_CO,
    STP_DC,
    STP_DEFAULT,
    STP_NONE,
    Instrument,
    price_from_text,
    price_to_text,
)

__all__ = [
    "FixSession", "FixSessionConfig", "FixSessionState", "FixOrder", "FIX_REJECT", "logon_comp_ids", "logon_identity",
    "utc_timestamp", "avg_px_text", "STP_TAG",
]

STP_TAG: Final = 7928
_STP_VALUES: Final = {"N": STP_NONE, "CN": STP_CN, "CO": STP_CO, "DC": STP_DC}
_ADMIN_TYPES: Final = frozenset(("0", "1", "2", "4", "5", "A"))   # gap-filled on resend
_SIDES: Final = {"1": BUY, "2": SELL, "5": SELL, "6": SELL}       # 5/6: sell short (exempt)
_ORD_TYPES: Final = frozenset(("1", "2", "3", "4"))
_TIFS: Final = frozenset(("0", "1", "3", "4"))
_DECIMAL: Final = re.compile(r"-?[0-9]+(\.[0-9]*)?\Z")
_QTY: Final = re.compile(r"[0-9]+(\.0*)?\Z")
_MSG_TYPE: Final = re.compile(r"[0-9A-Za-z]\Z|A[A-Z]\Z|B[A-H]\Z")   # FIX 4.4 MsgType values
_TEN_S: Final = 10_000_000_000
#: A ResendRequest is answered this many MsgSeqNums per data_to_send() call: the shell asks for more
#: as the socket drains, so resending the whole day never sits in memory at once.
RESEND_CHUNK: Final = 512
#: ClOrdIDs of orders that are done (and of refused requests) remembered for duplicate detection:
#: the most recent CL_ORD_ID_WINDOW of them (FixSessionConfig.cl_ord_id_window). A live order's
#: ClOrdIDs are always remembered.
CL_ORD_ID_WINDOW: Final = 10_000
#: OrdStatus of an order the engine says has ended, by its "too late" reason.
_TOO_LATE_STATUS: Final = {R.TOO_LATE_FILLED: "2", R.TOO_LATE_CANCELLED: "4", R.TOO_LATE_EXPIRED: "C"}
#: How many ended orders a session recalls (OrderID and OrdStatus) to answer a late cancel or
#: replace with OrderCancelReject 102=0 and the real 37/39; the oldest is forgotten first.
ENDED_RECALL: Final = 1 << 16

#: Our reject reasons -> (OrdRejReason 103, CxlRejReason 102). The one table; Text (58) is
#: appliance.reasons.describe(reason).
FIX_REJECT: Final[dict[int, tuple[int, int]]] = {
    R.SESSION_NOT_LOGGED_IN: (99, 99),
    R.SESSION_MALFORMED: (99, 99),
    R.SESSION_THROTTLED: (99, 99),
    R.SESSION_DUPLICATE_CLIENT_ID: (6, 6),      # duplicate order / duplicate ClOrdID
    R.SESSION_BACK_PRESSURE: (0, 2),            # exchange option
    R.RISK_PRICE_COLLAR: (0, 2),
    R.RISK_MAX_QTY: (3, 2),                     # order exceeds limit
    R.RISK_MAX_NOTIONAL: (3, 2),
    R.RISK_POSITION_LIMIT: (3, 2),
    R.RISK_RATE_LIMIT: (99, 99),
    R.RISK_KILL_SWITCH: (0, 2),
    R.UNKNOWN_INSTRUMENT: (1, 99),              # unknown symbol
    R.PRICE_OFF_TICK: (99, 99),                 # FIX 4.4 has no "invalid price increment"
    R.INVALID_QUANTITY: (13, 99),               # incorrect quantity
    R.INVALID_PRICE: (99, 99),
    R.DUPLICATE_ORDER_ID: (6, 6),
    R.UNKNOWN_ORDER: (5, 1),                    # unknown order
    R.TOO_LATE_FILLED: (99, 0),                 # too late to cancel (OrdStatus 2)
    R.TOO_LATE_CANCELLED: (99, 0),              # too late to cancel (OrdStatus 4)
    R.TOO_LATE_EXPIRED: (99, 0),                # too late to cancel (OrdStatus C)
    R.POST_ONLY_WOULD_TAKE: (99, 99),           # ExecInst 6 and the price would take; Text says so
    R.REPLACE_BELOW_FILLED: (99, 0),
    R.INVALID_ORDER_TYPE: (11, 99),             # unsupported order characteristic
    R.INVALID_STOP_PRICE: (11, 99),
    R.INVALID_TIME_IN_FORCE: (11, 99),
    R.INVALID_SIDE: (11, 99),
    R.INVALID_STP_MODE: (11, 99),
    R.REPLACE_NOT_ALLOWED: (99, 2),
    R.INSTRUMENT_CLOSED: (2, 2),                # exchange closed
    R.PRICE_OUTSIDE_BAND: (0, 2),
    R.TIF_NOT_ALLOWED_IN_STATE: (11, 99),
    R.ADMIN_UNKNOWN_COMMAND: (99, 99),
    R.ADMIN_CLOCK_BACKWARDS: (99, 99),
    R.ADMIN_INVALID_TRANSITION: (99, 99),
    R.ADMIN_INVALID_SCHEDULE: (99, 99),
}

# Connection states.
_IDLE: Final = 0
_AWAIT_LOGON: Final = 1
_ACTIVE: Final = 2
_LOGOUT_SENT: Final = 3
_CLOSED: Final = 4

_EPOCH: Final = datetime.datetime(1970, 1, 1)


# second -> its "YYYYMMDD-HH:MM:SS", for the last few seconds formatted: an execution report carries
# two clocks (SendingTime: the gateway's; TransactTime: the sequencer's), which need not share a
# second, so one remembered second would be formatted again at almost every message.
_seconds: dict[int, str] = {}
_SECONDS_KEPT: Final = 8


def utc_timestamp(ns: int) -> str:
    """FIX UTCTimestamp with milliseconds: 20240131-14:05:09.123 (integer arithmetic only)."""
    sec, milli = divmod(ns // 1_000_000, 1000)
    day_and_time = _seconds.get(sec)
    if day_and_time is None:   # the date and time of day are formatted once a second per clock
        if len(_seconds) >= _SECONDS_KEPT:
            _seconds.clear()
        day_and_time = _seconds[sec] = (_EPOCH + datetime.timedelta(seconds=sec)).strftime("%Y%m%d-%H:%M:%S")
    return day_and_time + ".%03d" % milli


def avg_px_text(notional: int, qty: int) -> str:
    """Average price of ``qty`` shares worth ``notional`` (Price(4) units x shares) as decimal text,
    rounded half up at 8 decimals, trailing zeros dropped: 150.1, 150.12345679, 0."""
    if qty <= 0:
        return "0"
    scaled = (notional * 10_000 * 2 + qty) // (2 * qty)   # units of 1e-8
    whole, frac = divmod(scaled, 100_000_000)
    return f"{whole}.{frac:08d}".rstrip("0").rstrip(".")


def logon_comp_ids(data: bytes) -> tuple[str, str] | None:
    """(SenderCompID, TargetCompID) of the first message in ``data`` if it is a complete Logon, None
    if more bytes are needed. FixFramingError if the bytes are not FIX or the message is no Logon."""
    ident = logon_identity(data)
    return None if ident is None else (ident[0], ident[1])


def logon_identity(data: bytes) -> tuple[str, str, str | None, str | None] | None:
    """(SenderCompID, TargetCompID, Username 553, Password 554) of the first message in ``data`` if
    it is a complete Logon (absent fields None), None if more bytes are needed. FixFramingError if
    the bytes are not FIX or the message is no Logon. Only the first message is looked at: what
    follows it is the session's to answer once the Logon is."""
    items = FixParser().feed(data, limit=1)
    if not items:
        return None
    first = items[0]
    if isinstance(first, Garbled) or first.msg_type != "A" or first.get(49) is None or first.get(56) is None:
        raise FixFramingError("the first message is not a well-formed Logon")
    return first.get(49) or "", first.get(56) or "", first.get(553), first.get(554)


@dataclass(frozen=True)
class FixSessionConfig:
    """What the venue configures for one counterparty."""

    session_id: int                  # gateway session id (u32), unique across OUCH and FIX sessions
    sender_comp_id: str              # ours (their TargetCompID)
    target_comp_id: str              # theirs (their SenderCompID)
    firm: int
    password: str = ""               # required in Logon 554 when not empty
    username: str = ""               # required in Logon 553 when not empty
    default_stp: int = STP_DEFAULT   # when an order has no 7928
    logon_timeout_ns: int = _TEN_S
    logout_timeout_ns: int = _TEN_S
    cl_ord_id_window: int = CL_ORD_ID_WINDOW   # ClOrdIDs of done orders remembered (at least)


class FixOrder:
    """The session's view of one of its orders."""

    __slots__ = ("order_id", "cl_ord_id", "symbol", "locate", "side", "ord_type", "tif", "price",
                 "stop_price", "qty", "cum", "leaves", "notional", "ref", "done", "status", "account",
                 "pending")

    FIELDS: Final = ("order_id", "cl_ord_id", "symbol", "locate", "side", "ord_type", "tif", "price",
                     "stop_price", "qty", "cum", "leaves", "notional", "ref", "done", "status", "account")

    def __init__(self, order_id: int, cl_ord_id: str, symbol: str, locate: int, side: str,
                 ord_type: str, tif: str, price: int, stop_price: int, qty: int, account: str) -> None:
        self.order_id = order_id
        self.cl_ord_id = cl_ord_id   # the latest accepted ClOrdID
        self.symbol = symbol
        self.locate = locate
        self.side = side             # FIX Side as entered
        self.ord_type = ord_type     # FIX OrdType as entered
        self.tif = tif               # FIX TimeInForce as entered ("0" when absent)
        self.price = price
        self.stop_price = stop_price
        self.qty = qty
        self.cum = 0
        self.leaves = qty
        self.notional = 0            # sum of fill price x fill qty, Price(4) units
        self.ref = 0
        self.done = False
        self.status = "A"            # OrdStatus; "A" pending new until accepted
        self.account = account
        self.pending: list[tuple[str, str, str]] = []   # (kind, ClOrdID, OrigClOrdID), oldest first

    def to_list(self) -> list[Any]:
        return list(_FIX_ORDER_VALUES(self))

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> FixOrder:
        (order_id, cl_ord_id, symbol, locate, side, ord_type, tif, price, stop_price, qty, cum, leaves,
         notional, ref, done, status, account) = values
        o = cls(order_id, cl_ord_id, symbol, locate, side, ord_type, tif, price, stop_price, qty, account)
        o.cum, o.leaves, o.notional, o.ref, o.done, o.status = cum, leaves, notional, ref, done, status
        return o


_FIX_ORDER_VALUES: Final = operator.attrgetter(*FixOrder.FIELDS)   # FixOrder -> its FIELDS' values
_EVICT_PER_ADD: Final = 4   # oldest ClOrdIDs looked at per new one (live ones go to the back)


class FixSessionState:
    """What must survive a restart: sequence numbers, the sent-message store, the session's orders
    and the ClOrdIDs still remembered.

    ``to_json_obj()`` / ``from_json_obj()`` give a plain JSON-able object. ``dirty`` is set on every
    change; the shell saves the state (and clears it) before writing data_to_send() to the socket.
    What changed since the shell last looked is listed for journalling increments: ``touched``
    (order ids whose FixOrder changed, was added or was forgotten) and ``new_cl_ord_ids`` ((ClOrdID,
    order id) pairs remembered); the shell empties both. ``sent`` is a dict here; the gateway gives
    it a file-backed store with the same ``[seq] =``, ``get`` and ``clear``.
    In-flight requests are not kept: after a restart their answers are reported without them.

    ClOrdIDs (duplicate detection, OrigClOrdID lookup): at most ``cl_window`` + (orders held)
    are remembered: every ClOrdID of an order still held (live, or with answers due), and of the
    others (done orders, refused requests) the most recent ones, the oldest forgotten first. A
    forgotten ClOrdID is new again: its reuse is accepted, and an OrigClOrdID naming it is an
    unknown order.
    """

    __slots__ = ("next_in", "next_out", "sent", "next_order", "next_exec", "cl_ord_ids", "orders", "dirty",
                 "touched", "new_cl_ord_ids", "cl_window", "_cl_fifo")

    def __init__(self) -> None:
        self.next_in = 1                             # the MsgSeqNum we expect next
        self.next_out = 1                            # the MsgSeqNum we send next
        self.sent: Any = {}                          # MsgSeqNum -> the message as sent (latin-1)
        self.next_order = 1
        self.next_exec = 1
        self.cl_ord_ids: dict[str, int] = {}         # ClOrdID remembered -> order id (0: none)
        self.orders: dict[int, FixOrder] = {}        # order id -> order, live or with answers due
        self.dirty = False
        self.touched: set[int] = set()
        self.new_cl_ord_ids: list[tuple[str, int]] = []
        self.cl_window = CL_ORD_ID_WINDOW
        self._cl_fifo: deque[str] = deque()          # remembered ClOrdIDs, oldest first

    def reset_sequences(self) -> None:
        self.next_in = 1
        self.next_out = 1
        self.sent.clear()
        self.dirty = True

    def touch(self, order_id: int) -> None:
        self.touched.add(order_id)
        self.dirty = True

    def remember_cl_ord_id(self, cl: str, order_id: int) -> None:
        """Remember ``cl`` (for ``order_id``, 0: none), then forget the oldest ClOrdIDs beyond the
        window whose order is gone (a few per call: constant work)."""
        ids = self.cl_ord_ids
        if cl not in ids:
            self._cl_fifo.append(cl)
        ids[cl] = order_id
        self.new_cl_ord_ids.append((cl, order_id))
        self.dirty = True
        self._forget_cl_ord_ids(_EVICT_PER_ADD)

    def _forget_cl_ord_ids(self, tries: int) -> None:
        ids, fifo, orders = self.cl_ord_ids, self._cl_fifo, self.orders
        while len(ids) > self.cl_window + len(orders) and tries > 0 and fifo:
            tries -= 1
            cl = fifo.popleft()
            oid = ids.get(cl)
            if oid is None:
                continue
            if oid and oid in orders:     # live (or answers due): keep, look again later
                fifo.append(cl)
            else:
                del ids[cl]

    def set_cl_window(self, window: int) -> None:
        """Remember at least ``window`` ClOrdIDs of done orders; forget the oldest beyond it now."""
        self.cl_window = window
        self.restore_cl_ord_ids(())

    def restore_cl_ord_ids(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Remembered ClOrdIDs in the order they were remembered (recovery), then the window kept."""
        ids = self.cl_ord_ids
        for cl, oid in pairs:
            if cl not in ids:
                self._cl_fifo.append(cl)
            ids[cl] = oid
        self._forget_cl_ord_ids(len(self._cl_fifo))
        self._cl_fifo = deque(cl for cl in self._cl_fifo if cl in ids)
        self.cl_ord_ids = dict(self.remembered_cl_ord_ids())   # a table sized for what is kept

    def remembered_cl_ord_ids(self) -> Iterator[tuple[str, int]]:
        """(ClOrdID, order id) remembered, oldest first (compaction)."""
        ids = self.cl_ord_ids
        for cl in self._cl_fifo:
            oid = ids.get(cl)
            if oid is not None:
                yield cl, oid

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "next_in": self.next_in, "next_out": self.next_out,
            "sent": {str(k): v for k, v in self.sent.items()},
            "next_order": self.next_order, "next_exec": self.next_exec,
            "cl_ord_ids": dict(self.remembered_cl_ord_ids()),
            "orders": [o.to_list() for o in self.orders.values()],
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> FixSessionState:
        s = cls()
        s.next_in = int(obj["next_in"])
        s.next_out = int(obj["next_out"])
        s.sent = {int(k): str(v) for k, v in obj["sent"].items()}
        s.next_order = int(obj["next_order"])
        s.next_exec = int(obj["next_exec"])
        s.orders = {o.order_id: o for o in (FixOrder.from_list(v) for v in obj["orders"])}
        s.restore_cl_ord_ids((str(k), int(v)) for k, v in obj["cl_ord_ids"].items())
        return s


class _Malformed(Exception):
    """A field of an application message is missing or malformed: answered with a session Reject."""

    def __init__(self, reason: int, tag: int, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.tag = tag
        self.text = text


class _Refused(Exception):
    """An order is refused before it reaches the engine: answered with a reject ExecutionReport."""

    def __init__(self, reason: int, text: str = "", ord_rej: int | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text or R.describe(reason)
        self.ord_rej = ord_rej


class FixSession(SessionOutbox):
    """One FIX 4.4 counterparty, acceptor side; owned by the gateway's I/O thread. See the module doc."""

    def __init__(self, config: FixSessionConfig, state: FixSessionState | None,
                 instruments: Iterable[Instrument]) -> None:
        self.config = config
        self.state = state if state is not None else FixSessionState()
        self.state.set_cl_window(config.cl_ord_id_window)
        self.instruments: dict[str, Instrument] = {ins.symbol: ins for ins in instruments}
        self._by_locate: dict[int, Instrument] = {ins.locate: ins for ins in self.instruments.values()}
        self._conn = _IDLE
        self._parser = FixParser()
        SessionOutbox.__init__(self)
        self.heartbeat_ns = 30_000_000_000
        self._last_rx = 0
        self._last_tx = 0
        self._since = 0                       # when the current wait (logon, logout) began
        self._test_req: str | None = None
        self._test_req_at = 0
        self._resend_until = 0                # we asked for a resend up to this MsgSeqNum
        # a ResendRequest being answered: next MsgSeqNum to resend, the last, a gap-fill run's start
        self._resending = 0
        self._resend_end = 0
        self._gap_from = 0
        self._held_from = 0                   # messages from this MsgSeqNum on wait for the resend
        # pending mass cancels: [ClOrdID, 530, 55, answers still due, orders cancelled so far]
        self._mass: deque[list[Any]] = deque()
        # Inbound messages of every kind (set by the shell; None: no limit): see ``_throttled``.
        self.budget: MessageBudget | None = None
        # ended orders: order id -> (OrderID 37, OrdStatus 39), at most ENDED_RECALL, oldest first
        self._ended: dict[int, tuple[str, str]] = {}

    # ============================================================================================
    # shell interface
    # ============================================================================================
    @property
    def should_close(self) -> bool:
        return self._conn == _CLOSED

    @property
    def logged_on(self) -> bool:
        return self._conn == _ACTIVE

    def authenticates(self, username: str | None, password: str | None) -> bool:
        """Whether a Logon with these Username (553) and Password (554) is the counterparty's."""
        cfg = self.config
        return not ((cfg.password and password != cfg.password) or (cfg.username and username != cfg.username))

    def connection_made(self, now_ns: int) -> None:
        if self._conn in (_AWAIT_LOGON, _ACTIVE, _LOGOUT_SENT):
            raise RuntimeError(f"FIX session {self.config.target_comp_id} already has a connection")
        self._conn = _AWAIT_LOGON
        self._parser = FixParser()
        self._out.clear()
        self._last_rx = self._last_tx = self._since = now_ns
        self._test_req = None
        self._resend_until = 0
        self._resending = 0

    def connection_lost(self, now_ns: int) -> None:
        self._conn = _IDLE
        self._resending = 0
        self._out.clear()

    @property
    def replaying(self) -> bool:
        """A ResendRequest's answer has messages still to go out (``data_to_send`` gives the next)."""
        return self._resending != 0

    def data_to_send(self) -> bytes:
        """Bytes for the socket; while answering a ResendRequest, its next RESEND_CHUNK messages
        too (call again while ``replaying`` and the socket takes more)."""
        if self._resending and len(self._out) < 65536:
            now = max(self._last_rx, self._last_tx)
            self._resend_more(utc_timestamp(now), now)
        return SessionOutbox.data_to_send(self)

    def logout(self, now_ns: int, text: str = "") -> None:
        """Start an orderly logout; the session closes when the peer answers (or after 10 s)."""
        if self._conn == _ACTIVE:
            self._send("5", [(58, text)] if text else [], now_ns)
            self._conn = _LOGOUT_SENT
            self._since = now_ns

    def poll(self, now_ns: int) -> None:
        conn = self._conn
        if conn == _AWAIT_LOGON:
            if now_ns - self._since >= self.config.logon_timeout_ns:
                self._close(E.TIMED_OUT, "no Logon")
        elif conn == _LOGOUT_SENT:
            if now_ns - self._since >= self.config.logout_timeout_ns:
                self._close(E.TIMED_OUT, "no answer to our Logout")
        elif conn == _ACTIVE:
            hb = self.heartbeat_ns
            if self._test_req is not None:
                if now_ns - self._test_req_at >= hb:
                    self._logout_close(now_ns, "no answer to TestRequest", E.TIMED_OUT)
                    return
            elif now_ns - self._last_rx >= hb + hb // 5:
                self._test_req = f"TEST{self.state.next_out}"
                self._test_req_at = now_ns
                self._send("1", [(112, self._test_req)], now_ns)
                return
            if now_ns - self._last_tx >= hb:
                self._send("0", [], now_ns)

    def receive_data(self, data: bytes, now_ns: int) -> None:
        if self._conn not in (_AWAIT_LOGON, _ACTIVE, _LOGOUT_SENT):
            return
        self._last_rx = now_ns
        try:
            items = self._parser.feed(data)
        except FixFramingError as exc:
            if self._conn == _AWAIT_LOGON:   # not a FIX peer we know: nothing to say to it
                self._close(E.PROTOCOL_ERROR, str(exc))
            else:
                self._logout_close(now_ns, str(exc), E.PROTOCOL_ERROR)
            return
        for item in items:
            if self._conn not in (_AWAIT_LOGON, _ACTIVE, _LOGOUT_SENT):
                break
            if isinstance(item, Garbled):
                self._events.append(SessionEvent(E.GARBLED, item.reason))
                continue
            self._test_req = None
            budget = self.budget
            if budget is not None and self._conn == _ACTIVE and item.msg_type not in ("4", "5"):
                verdict = budget.admit(now_ns)
                if verdict and self._throttled(item, verdict == DISCONNECT, now_ns):
                    continue
            self._on_message(item, now_ns)
        lost = self._parser.error
        if lost is not None and self._conn in (_AWAIT_LOGON, _ACTIVE, _LOGOUT_SENT):
            # The messages before the break were answered (a Logon included); then the framing.
            if self._conn == _AWAIT_LOGON:
                self._close(E.PROTOCOL_ERROR, lost)
            else:
                self._logout_close(now_ns, lost, E.PROTOCOL_ERROR)

    # ============================================================================================
    # sending
    # ============================================================================================
    def _header(self, seq: int, sending_time: str) -> list[tuple[int, str | bytes | int]]:
        return [(49, self.config.sender_comp_id), (56, self.config.target_comp_id), (34, seq),
                (52, sending_time)]

    def _send(self, msg_type: str, fields: list[tuple[int, str | bytes | int]], now_ns: int) -> None:
        """Number, store and (when connected) send a message."""
        st = self.state
        seq = st.next_out
        raw = encode(msg_type, self._header(seq, utc_timestamp(now_ns)) + fields)
        st.sent[seq] = raw.decode("latin-1")
        st.next_out = seq + 1
        st.dirty = True
        conn = self._conn
        # Before the Logon exchange only Logon and Logout go out; the rest waits in the store for
        # the peer's ResendRequest (our Logon's MsgSeqNum shows it the gap).
        # During a resend, messages sent go out after it, from the store, in MsgSeqNum order.
        if self._resending:
            self._last_tx = now_ns
        elif conn == _ACTIVE or conn == _LOGOUT_SENT or (conn == _AWAIT_LOGON and msg_type in ("A", "5")):
            self._out += raw
            self._last_tx = now_ns

    def _close(self, kind: str, text: str) -> None:
        if self._resending:          # the resend is abandoned; what was sent meanwhile goes out
            self._flush_held(self._held_from)
        self._conn = _CLOSED
        self._events.append(SessionEvent(kind, text))

    def _logout_close(self, now_ns: int, text: str, kind: str = E.PROTOCOL_ERROR) -> None:
        self._send("5", [(58, text[:200])], now_ns)
        self._close(kind, text)

    def _reject(self, msg: FixMessage, reason: int, tag: int, text: str, now_ns: int) -> None:
        fields: list[tuple[int, str | bytes | int]] = []
        seq = msg.get(34)
        fields.append((45, seq if seq and seq.isdigit() else 0))
        if tag:
            fields.append((371, tag))
        if msg.msg_type:
            fields.append((372, msg.msg_type))
        fields += [(373, reason), (58, text[:200])]
        self._send("3", fields, now_ns)
        self._events.append(SessionEvent(E.MALFORMED, text))

    # ============================================================================================
    # session layer
    # ============================================================================================
    def _on_message(self, msg: FixMessage, now_ns: int) -> None:
        st = self.state
        mt = msg.msg_type
        seq_text = msg.get(34)
        seq = int(seq_text) if seq_text is not None and seq_text.isdigit() else None
        if self._conn == _AWAIT_LOGON:
            self._on_logon(msg, seq, now_ns)
            return
        if seq is None:
            self._logout_close(now_ns, "MsgSeqNum (34) missing or not a number")
            return
        if msg.get(49) != self.config.target_comp_id or msg.get(56) != self.config.sender_comp_id:
            self._reject(msg, 9, 49 if msg.get(49) != self.config.target_comp_id else 56,
                         "CompID problem", now_ns)
            self._logout_close(now_ns, "CompID problem")
            return
        if mt == "4" and msg.get(123) != "Y":       # SequenceReset-Reset: MsgSeqNum does not count
            self._sequence_reset(msg, now_ns)
            return
        if seq > st.next_in:
            if mt == "5":
                self._logout_close(now_ns, "logout", E.LOGGED_OUT)
                return
            if mt == "2":
                self._resend(msg, now_ns)
            if self._resend_until < st.next_in:
                self._send("2", [(7, st.next_in), (16, 0)], now_ns)
                self._resend_until = seq
            return
        if seq < st.next_in:
            if msg.get(43) == "Y":
                return   # a duplicate we have already processed
            self._logout_close(now_ns, f"MsgSeqNum too low, expecting {st.next_in} but received {seq}")
            return
        error = msg.error
        if error is None and msg.get(52) is None:
            error = (1, 52, "SendingTime (52) missing")
        if error is None and msg.get(43) == "Y" and msg.get(122) is None and mt != "4":
            error = (1, 122, "OrigSendingTime (122) missing on a possible duplicate")
        if error is not None:
            st.next_in = seq + 1
            st.dirty = True
            self._reject(msg, error[0], error[1], error[2], now_ns)
            return
        if mt == "4":                                # GapFill at the expected number
            self._sequence_reset(msg, now_ns)
            return
        st.next_in = seq + 1
        st.dirty = True
        if mt == "0":
            pass
        elif mt == "1":
            test_id = msg.get(112)
            if test_id is None:
                self._reject(msg, 1, 112, "TestReqID (112) missing", now_ns)
            else:
                self._send("0", [(112, test_id)], now_ns)
        elif mt == "2":
            self._resend(msg, now_ns)
        elif mt == "3":
            self._events.append(SessionEvent(E.MALFORMED, f"Reject from the peer: {msg.get(58) or ''}"))
        elif mt == "5":
            if self._conn == _LOGOUT_SENT:
                self._close(E.LOGGED_OUT, "logout answered")
            else:
                self._send("5", [], now_ns)
                self._close(E.LOGGED_OUT, msg.get(58) or "logout")
        elif mt == "A":
            self._logout_close(now_ns, "Logon received on a logged-on session")
        elif self._conn == _ACTIVE:
            self._application(msg, mt or "", now_ns)

    def _on_logon(self, msg: FixMessage, seq: int | None, now_ns: int) -> None:
        cfg = self.config
        st = self.state
        if msg.msg_type != "A":
            self._close(E.PROTOCOL_ERROR, f"first message is {msg.msg_type!r}, not a Logon")
            return
        if not self.authenticates(msg.get(553), msg.get(554)):
            # Not the counterparty: nothing of the session changes (no sequence number used, nothing
            # stored or journalled) and nothing is said to the peer; the connection is closed.
            self._close(E.LOGIN_REJECTED, "not authorized")
            return
        problem = (
            "malformed Logon: " + msg.error[2] if msg.error is not None
            else "MsgSeqNum (34) missing" if seq is None
            else "CompID problem" if msg.get(49) != cfg.target_comp_id or msg.get(56) != cfg.sender_comp_id
            else "EncryptMethod (98) must be 0" if msg.get(98) != "0"
            else "HeartBtInt (108) must be a positive number" if not (msg.get(108) or "").isdigit()
            or int(msg.get(108) or "0") <= 0
            else ""
        )
        if problem:
            self._logout_close(now_ns, problem, E.LOGIN_REJECTED)
            return
        assert seq is not None
        reset = msg.get(141) == "Y"
        if reset:
            if seq != 1:
                self._logout_close(now_ns, "ResetSeqNumFlag with MsgSeqNum other than 1", E.LOGIN_REJECTED)
                return
            st.reset_sequences()
        if seq < st.next_in:
            self._logout_close(now_ns, f"MsgSeqNum too low, expecting {st.next_in} but received {seq}",
                               E.LOGIN_REJECTED)
            return
        self.heartbeat_ns = int(msg.get(108) or "30") * 1_000_000_000
        self._conn = _ACTIVE
        fields: list[tuple[int, str | bytes | int]] = [(98, 0), (108, msg.get(108) or "30")]
        if reset:
            fields.append((141, "Y"))
        self._send("A", fields, now_ns)
        self._events.append(SessionEvent(E.LOGGED_IN, cfg.target_comp_id))
        if seq > st.next_in:
            self._send("2", [(7, st.next_in), (16, 0)], now_ns)
            self._resend_until = seq
        else:
            st.next_in = seq + 1
            st.dirty = True

    def _throttled(self, msg: FixMessage, disconnect: bool, now_ns: int) -> bool:
        """A message over the session's message budget (Logout and SequenceReset never are). In
        sequence and well-formed: its MsgSeqNum is used and it is answered, not processed: an
        application message with BusinessMessageReject (380=0, 58 the reason), a session message
        (Heartbeat, TestRequest, ResendRequest, Reject) with Reject (373=99). Too many in one second:
        Logout with the reason, close. Returns False when the ordinary rules must answer it (a gap,
        a low MsgSeqNum, a malformed message)."""
        assert self.budget is not None
        if disconnect:
            self._logout_close(now_ns, "disconnected: " + self.budget.why(), E.OVER_BUDGET)
            return True
        st = self.state
        seq_text = msg.get(34)
        if (msg.error is not None or seq_text is None or not seq_text.isdigit() or int(seq_text) != st.next_in
                or msg.get(49) != self.config.target_comp_id or msg.get(56) != self.config.sender_comp_id):
            return False
        st.next_in += 1
        st.dirty = True
        mt = msg.msg_type or ""
        text = f"throttled: over {self.budget.rate_per_s} messages/s"
        if mt in _ADMIN_TYPES or mt == "3":
            self._send("3", [(45, seq_text), (372, mt), (373, 99), (58, text)], now_ns)
        else:
            self._send("j", [(45, seq_text), (372, mt), (380, 0), (58, text)], now_ns)
        self._events.append(SessionEvent(E.THROTTLED))
        return True

    def _sequence_reset(self, msg: FixMessage, now_ns: int) -> None:
        st = self.state
        new = msg.get(36)
        if new is None or not new.isdigit():
            self._reject(msg, 1 if new is None else 6, 36, "NewSeqNo (36) missing or not a number", now_ns)
            return
        n = int(new)
        if n < st.next_in:
            self._reject(msg, 5, 36, f"NewSeqNo {n} below the expected MsgSeqNum {st.next_in}", now_ns)
            return
        st.next_in = n
        st.dirty = True

    def _resend(self, msg: FixMessage, now_ns: int) -> None:
        begin_t, end_t = msg.get(7), msg.get(16)
        if not (begin_t and begin_t.isdigit() and end_t and end_t.isdigit()):
            self._reject(msg, 1, 7 if not (begin_t and begin_t.isdigit()) else 16,
                         "BeginSeqNo (7) and EndSeqNo (16) are required numbers", now_ns)
            return
        st = self.state
        last = st.next_out - 1
        begin = max(1, int(begin_t))
        end = int(end_t)
        end = last if end == 0 or end > last else end
        if begin > end:
            return
        if not self._resending:      # a new request during one replaces it; messages stay held
            self._held_from = st.next_out
        self._resending = begin
        self._resend_end = end
        self._gap_from = 0
        self._resend_more(utc_timestamp(now_ns), now_ns)

    def _resend_more(self, now_text: str, now_ns: int) -> None:
        """The next RESEND_CHUNK MsgSeqNums of the ResendRequest being answered: stored application
        messages (and Rejects) resent, runs of session messages as one SequenceReset-GapFill. At
        its end, the messages sent meanwhile (never sent before), as they are in the store."""
        st = self.state
        seq = self._resending
        end = self._resend_end
        stop = min(end, seq + RESEND_CHUNK - 1)
        gap_from = self._gap_from
        while seq <= stop:
            raw = st.sent.get(seq)
            stored = None
            if raw is not None:
                items = FixParser().feed(raw.encode("latin-1"))
                stored = items[0] if items and isinstance(items[0], FixMessage) else None
            if stored is None or stored.msg_type in _ADMIN_TYPES:
                if not gap_from:
                    gap_from = seq
            else:
                if gap_from:
                    self._gap_fill(gap_from, seq, now_text, now_ns)
                    gap_from = 0
                self._resend_one(stored, seq, now_text, now_ns)
            seq += 1
        if seq <= end:
            self._resending = seq
            self._gap_from = gap_from
            return
        if gap_from:
            self._gap_fill(gap_from, end + 1, now_text, now_ns)
        self._resending = 0
        self._gap_from = 0
        self._flush_held(max(end + 1, self._held_from))

    def _flush_held(self, first: int) -> None:
        """Messages numbered from ``first`` that were sent during a resend (held), out now in order."""
        st = self.state
        self._resending = 0
        for seq in range(first, st.next_out):
            raw = st.sent.get(seq)
            if raw is not None:
                self._out += raw.encode("latin-1")

    def _gap_fill(self, seq: int, new_seq: int, now_text: str, now_ns: int) -> None:
        raw = encode("4", self._header(seq, now_text) + [(43, "Y"), (122, now_text), (123, "Y"), (36, new_seq)])
        self._out += raw
        self._last_tx = now_ns

    def _resend_one(self, stored: FixMessage, seq: int, now_text: str, now_ns: int) -> None:
        orig_time = stored.get(52) or now_text
        body = [(t, v) for t, v in stored.fields[1:] if t not in (49, 56, 34, 52, 43, 122, 97)]
        fields: list[tuple[int, str | bytes | int]] = self._header(seq, now_text)
        fields += [(43, "Y"), (122, orig_time)]
        fields += body
        self._out += encode(stored.msg_type or "", fields)
        self._last_tx = now_ns

    # ============================================================================================
    # application messages in
    # ============================================================================================
    def _application(self, msg: FixMessage, mt: str, now_ns: int) -> None:
        try:
            if mt == "D":
                self._new_order(msg, now_ns)
            elif mt == "F":
                self._cancel(msg, now_ns)
            elif mt == "G":
                self._replace(msg, now_ns)
            elif mt == "q":
                self._mass_cancel(msg, now_ns)
            elif _MSG_TYPE.match(mt):
                self._send("j", [(45, msg.get(34) or "0"), (372, mt), (380, 3),
                                 (58, f"MsgType {mt} is not supported")], now_ns)
            else:
                self._reject(msg, 11, 35, f"invalid MsgType {mt!r}", now_ns)
        except _Malformed as exc:
            self._reject(msg, exc.reason, exc.tag, exc.text, now_ns)

    @staticmethod
    def _required(msg: FixMessage, tag: int) -> str:
        v = msg.get(tag)
        if v is None:
            raise _Malformed(1, tag, f"required tag {tag} missing")
        return v

    @staticmethod
    def _qty(msg: FixMessage, tag: int = 38) -> int:
        v = FixSession._required(msg, tag)
        if not _QTY.match(v):
            if _DECIMAL.match(v):
                raise _Refused(R.INVALID_QUANTITY, f"OrderQty {v} is not a whole positive number")
            raise _Malformed(6, tag, f"tag {tag} value {v!r} is not a quantity")
        return int(v.split(".")[0])

    @staticmethod
    def _price(msg: FixMessage, tag: int, tick: int, off_tick: int) -> int:
        """Price(4) units of an optional price tag (0 when absent); off tick or finer than 4
        decimals: _Refused(off_tick), never rounded."""
        v = msg.get(tag)
        if v is None:
            return 0
        if not _DECIMAL.match(v):
            raise _Malformed(6, tag, f"tag {tag} value {v!r} is not a decimal price")
        try:
            return price_from_text(v, tick)
        except ValueError as exc:
            raise _Refused(off_tick, str(exc)) from None

    def _new_order(self, msg: FixMessage, now_ns: int) -> None:
        cl = self._required(msg, 11)
        symbol = self._required(msg, 55)
        side_t = self._required(msg, 54)
        ord_type = self._required(msg, 40)
        st = self.state
        try:
            if cl in st.cl_ord_ids:
                raise _Refused(R.SESSION_DUPLICATE_CLIENT_ID, f"ClOrdID {cl} already used")
            st.remember_cl_ord_id(cl, 0)
            qty = self._qty(msg)
            if len(cl) > 20:
                raise _Refused(R.SESSION_MALFORMED, "ClOrdID longer than 20 characters")
            ins = self.instruments.get(symbol)
            if ins is None:
                raise _Refused(R.UNKNOWN_INSTRUMENT, f"unknown symbol {symbol}")
            side = _SIDES.get(side_t)
            if side is None:
                raise _Refused(R.INVALID_SIDE, f"Side {side_t} is not supported")
            if ord_type not in _ORD_TYPES:
                raise _Refused(R.INVALID_ORDER_TYPE, f"OrdType {ord_type} is not supported")
            tif_t = msg.get(59) or "0"
            if tif_t not in _TIFS:
                raise _Refused(R.INVALID_TIME_IN_FORCE, f"TimeInForce {tif_t} is not supported")
            price = self._price(msg, 44, ins.tick, R.PRICE_OFF_TICK)
            stop = self._price(msg, 99, ins.tick, R.INVALID_STOP_PRICE)
            account = msg.get(1) or ""
            if len(account) > 16:
                raise _Refused(R.SESSION_MALFORMED, "Account longer than 16 characters")
            stp_t = msg.get(STP_TAG)
            stp = self.config.default_stp if stp_t is None else _STP_VALUES.get(stp_t, -1)
            if stp < 0:
                raise _Refused(R.INVALID_STP_MODE, f"SelfTradePreventionMode {stp_t} is not N, CN, CO or DC")
            # ExecInst (18, space-separated values): 6 participate don't initiate = post-only;
            # the other values are not acted on.
            post_only = 1 if "6" in (msg.get(18) or "").split() else 0
            for tag, name in ((110, "MinQty"), (111, "MaxFloor")):
                v = msg.get(tag)
                if v is not None and v.strip("0.") != "":
                    raise _Refused(R.SESSION_MALFORMED, f"{name} ({tag}) is not supported", ord_rej=11)
        except _Refused as exc:
            self._reject_new(msg, cl, exc, now_ns)
            return
        order_id = (self.config.session_id << 32) | st.next_order
        st.next_order += 1
        st.orders[order_id] = FixOrder(order_id, cl, symbol, ins.locate, side_t, ord_type, tif_t, price,
                                       stop, qty, account)
        st.remember_cl_ord_id(cl, order_id)
        st.touch(order_id)
        self._commands.append(NewOrder(order_id, ins.locate, side, qty, price, int(ord_type), int(tif_t),
                                       stop, self.config.firm, self.config.session_id, account, cl, "",
                                       stp, post_only))

    def _reject_new(self, msg: FixMessage, cl: str, exc: _Refused, now_ns: int) -> None:
        ord_rej = exc.ord_rej if exc.ord_rej is not None else FIX_REJECT.get(exc.reason, (99, 99))[0]
        fields: list[tuple[int, str | bytes | int]] = [
            (37, "NONE"), (11, cl), (17, self._exec_id()), (150, "8"), (39, "8"), (103, ord_rej)]
        for tag in (1, 55, 54, 38, 40, 44, 99, 59):
            v = msg.get(tag)
            if v:
                fields.append((tag, v))
        fields += [(151, 0), (14, 0), (6, 0), (60, utc_timestamp(now_ns)), (58, exc.text[:200])]
        self._send("8", fields, now_ns)

    def _lookup(self, msg: FixMessage, kind: str, now_ns: int) -> tuple[str, str, FixOrder] | None:
        """ClOrdID, OrigClOrdID and the live order of a cancel or replace; answers the refusals."""
        cl = self._required(msg, 11)
        orig = self._required(msg, 41)
        st = self.state
        oid = st.cl_ord_ids.get(orig, 0)
        o = st.orders.get(oid)
        response_to = "1" if kind == "F" else "2"
        if cl in st.cl_ord_ids:
            self._cancel_reject(cl, orig, o, response_to, 6, f"ClOrdID {cl} already used", now_ns)
            return None
        st.remember_cl_ord_id(cl, oid)
        if o is None and oid:
            ended = self._ended.get(oid)
            if ended is None:   # ended too long ago (or before a restart) to recall its 37 and 39
                self._cancel_reject(cl, orig, None, response_to, 0, "too late: the order has ended", now_ns)
            else:
                self._send("9", [(37, ended[0]), (11, cl), (41, orig), (39, ended[1]), (434, response_to),
                                 (102, 0), (58, _ENDED_TEXT.get(ended[1], "too late: the order has ended"))],
                           now_ns)
            return None
        if o is None:
            self._cancel_reject(cl, orig, None, response_to, 1, f"unknown order {orig}", now_ns)
            return None
        if o.done:
            self._cancel_reject(cl, orig, o, response_to, 0,
                                _ENDED_TEXT.get(o.status, "too late: the order has ended"), now_ns)
            return None
        return cl, orig, o

    def _cancel_reject(self, cl: str, orig: str, o: FixOrder | None, response_to: str, reason: int,
                       text: str, now_ns: int, status: str | None = None) -> None:
        self._send("9", [
            (37, str(o.ref) if o is not None and o.ref else "NONE"), (11, cl), (41, orig),
            (39, status or (o.status if o is not None and o.status != "A" else "8" if o is None else "A")),
            (434, response_to), (102, reason), (58, text[:200])], now_ns)

    def _cancel(self, msg: FixMessage, now_ns: int) -> None:
        found = self._lookup(msg, "F", now_ns)
        if found is None:
            return
        cl, orig, o = found
        o.pending.append(("F", cl, orig))
        self._commands.append(CancelOrder(o.order_id, self.config.firm, self.config.session_id, cl))

    def _replace(self, msg: FixMessage, now_ns: int) -> None:
        for tag in (38, 40, 54, 55):
            self._required(msg, tag)
        found = self._lookup(msg, "G", now_ns)
        if found is None:
            return
        cl, orig, o = found
        ins = self._by_locate[o.locate]
        try:
            qty = self._qty(msg)
            if msg.get(55) != o.symbol or msg.get(54) != o.side or msg.get(40) != o.ord_type or (
                    msg.get(59) or "0") != o.tif:
                raise _Refused(R.REPLACE_NOT_ALLOWED, "only OrderQty, Price and StopPx can change")
            price = self._price(msg, 44, ins.tick, R.PRICE_OFF_TICK)
            stop = self._price(msg, 99, ins.tick, R.INVALID_STOP_PRICE)
        except _Refused as exc:
            self._cancel_reject(cl, orig, o, "2", FIX_REJECT.get(exc.reason, (99, 99))[1], exc.text, now_ns)
            return
        o.pending.append(("G", cl, orig))
        self._commands.append(ReplaceOrder(o.order_id, qty, price, self.config.firm, self.config.session_id,
                                           stop, cl))

    def _mass_cancel(self, msg: FixMessage, now_ns: int) -> None:
        cl = self._required(msg, 11)
        req_type = self._required(msg, 530)
        symbol = msg.get(55) or ""
        side_t = msg.get(54)
        locate = MASS_ANY_INSTRUMENT
        reject = -1
        if req_type == "1":
            ins = self.instruments.get(symbol)
            if ins is None:
                reject = 1          # invalid or unknown security
            else:
                locate = ins.locate
        elif req_type != "7":
            reject = 0              # mass cancel (of that type) not supported
        side = MASS_ANY_SIDE if side_t is None else _SIDES.get(side_t, -1)
        if side < 0 and reject < 0:
            reject = 99
        if reject >= 0:
            self._send("r", [(37, "NONE"), (11, cl), (530, req_type), (531, 0), (532, reject),
                             (58, "mass cancel request refused")], now_ns)
            return
        self._mass.append([cl, req_type, symbol, 1, 0])
        self._commands.append(MassCancel(self.config.firm, locate, side, self.config.session_id, cl))

    def mass_cancel_fanout(self, cl_ord_id: str, partitions: int) -> None:
        """The shell sent this mass cancel to ``partitions`` partitions: the report waits for each
        one's answer and gives the sum of the orders cancelled (533)."""
        for m in reversed(self._mass):
            if m[0] == cl_ord_id:
                m[3] = partitions
                return

    # ============================================================================================
    # engine events -> ExecutionReports
    # ============================================================================================
    def _exec_id(self) -> str:
        st = self.state
        n = st.next_exec
        st.next_exec = n + 1
        return f"{self.config.session_id}-{n}"

    def _report(self, o: FixOrder, exec_type: str, ts_ns: int, now_ns: int,
                extra: list[tuple[int, str | bytes | int]], cl: str | None = None, orig: str | None = None,
                exec_id: str | None = None) -> None:
        fields: list[tuple[int, str | bytes | int]] = [(37, o.ref or "NONE"), (11, cl or o.cl_ord_id)]
        if orig:
            fields.append((41, orig))
        fields += [(17, exec_id or self._exec_id()), (150, exec_type), (39, o.status)]
        if o.account:
            fields.append((1, o.account))
        fields += [(55, o.symbol), (54, o.side), (38, o.qty), (40, o.ord_type)]
        if o.price:
            fields.append((44, price_to_text(o.price)))
        if o.stop_price:
            fields.append((99, price_to_text(o.stop_price)))
        fields.append((59, o.tif))
        fields += extra
        fields += [(151, o.leaves), (14, o.cum), (6, avg_px_text(o.notional, o.cum)),
                   (60, utc_timestamp(ts_ns))]
        self.state.touch(o.order_id)
        self._send("8", fields, now_ns)

    def on_events(self, ts_ns: int, events: Sequence[Event], now_ns: int | None = None) -> None:
        """Engine events of one batch (stamped ``ts_ns``); events of other sessions are skipped.

          OrderAccepted   -> 150=0 39=0            StopTriggered -> 150=D 378=8 (restated: the
                                                   stop is now working; 58 says at which price)
          OrderExecuted   -> 150=F 39=1/2 31 32    (maker and/or taker, ExecID T<match><B|S>)
          OrderCancelled  -> 150=4 39=4 (expired: 150=C 39=C; a partial self-trade decrement:
                             150=D restated, OrderQty lowered)
          OrderReplaced   -> 150=5 39=0/1 with ClOrdID/OrigClOrdID of the request
          CommandRejected -> new order: 150=8 39=8 103; cancel/replace: OrderCancelReject 9 with
                             102 and 434; mass cancel: OrderMassCancelReport 531=0
          MassCancelled   -> OrderMassCancelReport r (533 = orders cancelled)
        """
        now = ts_ns if now_ns is None else now_ns
        sid = self.config.session_id
        orders = self.state.orders
        for ev in events:
            kind = ev[0]
            if kind == Ev.EXECUTED or kind == Ev.CROSS_EXECUTED:   # an auction fill: buy, sell
                for pos, leaves_at in ((1, 6), (2, 8)):
                    order = ev[pos]
                    if order.session == sid and order.order_id in orders:
                        self._executed(orders[order.order_id], ev, leaves_at, ts_ns, now)
                continue
            if kind == Ev.REJECTED or kind == Ev.MASS_CANCELLED:
                cmd = ev[1]
                if cmd.session != sid:
                    continue
                if kind == Ev.MASS_CANCELLED:
                    self._mass_report(cmd, ev[2], now)
                else:
                    self._rejected(cmd, ev[2], ts_ns, now)
                continue
            if kind > Ev.MASS_CANCELLED:   # the feed-only events of trading phases: nothing to say
                continue
            order = ev[2] if kind == Ev.REPLACED else ev[1]
            if order.session != sid:
                continue
            o = orders.get(order.order_id)
            if o is None:
                continue
            if kind == Ev.ACCEPTED:
                o.ref = order.ref
                o.qty = o.leaves = ev[2]
                o.price = order.price      # a re-priced post-only order: its new price
                o.status = "0"
                self._report(o, "0", ts_ns, now, [])
            elif kind == Ev.CANCELLED:
                self._cancelled(o, ev, ts_ns, now)
            elif kind == Ev.REPLACED:
                self._replaced(o, order, ev, ts_ns, now)
            elif kind == Ev.STOP_TRIGGERED:
                self._report(o, "D", ts_ns, now, [(378, 8), (58, "stop triggered at " + price_to_text(ev[2]))])
            self.state.dirty = True

    def _executed(self, o: FixOrder, ev: Event, leaves_at: int, ts_ns: int, now: int) -> None:
        qty = ev[3]
        price = ev[4]
        o.leaves = ev[leaves_at]
        o.cum = ev[leaves_at + 1]
        o.notional += qty * price
        o.status = "1" if o.leaves else "2"
        side = "B" if _SIDES[o.side] == BUY else "S"
        self._report(o, "F", ts_ns, now, [(32, qty), (31, price_to_text(price))], exec_id=f"T{ev[5]}{side}")
        if not o.leaves:
            self._done(o)

    def _cancelled(self, o: FixOrder, ev: Event, ts_ns: int, now: int) -> None:
        leaves, reason = ev[3], ev[5]
        o.leaves = leaves
        text = R.CANCEL_REASONS.get(reason, "cancelled")
        if leaves:                                          # a self-trade decrement: restated
            o.qty = o.cum + leaves                          # with OrderQty lowered
            o.status = "1" if o.cum else "0"
            self._report(o, "D", ts_ns, now, [(378, 99), (58, text)])
            return
        cl = orig = None
        if reason == R.CANCEL_USER:
            req = _pop(o, "F")
            if req is not None:
                cl, orig = req[1], req[2]
        elif reason == R.CANCEL_MASS and self._mass:
            cl, orig = self._mass[0][0], o.cl_ord_id
        if reason == R.CANCEL_EXPIRED:
            o.status = "C"
            self._report(o, "C", ts_ns, now, [(58, text)], cl, orig)
        else:
            o.status = "4"
            self._report(o, "4", ts_ns, now, [(58, text)], cl, orig)
        if cl is not None and reason == R.CANCEL_USER:
            o.cl_ord_id = cl
        self._done(o)

    def _replaced(self, o: FixOrder, new: Any, ev: Event, ts_ns: int, now: int) -> None:
        cmd = ev[7]
        req = _pop(o, "G")
        o.leaves = ev[4]
        o.cum = ev[5]
        o.qty = cmd.qty
        o.ref = new.ref
        o.price = new.price
        o.stop_price = new.stop_price
        o.status = "1" if o.cum else "0"
        cl = req[1] if req is not None else (cmd.cl_ord_id or o.cl_ord_id)
        orig = req[2] if req is not None else o.cl_ord_id
        o.cl_ord_id = cl
        self._report(o, "5", ts_ns, now, [], cl, orig)

    def _rejected(self, cmd: Any, reason: int, ts_ns: int, now: int) -> None:
        orders = self.state.orders
        text = R.describe(reason)
        cls = type(cmd)
        if cls is MassCancel:
            if self._mass and self._mass[0][0] == cmd.cl_ord_id:   # the first refusal answers
                cl, req_type = self._mass.popleft()[:2]
                self._send("r", [(37, "NONE"), (11, cl), (530, req_type), (531, 0), (532, 99),
                                 (58, text[:200])], now)
            return
        o = orders.get(cmd.order_id)
        if o is None:
            return
        if cls is NewOrder:
            if o.ref:
                return
            o.status = "8"
            o.leaves = 0
            ord_rej, _ = FIX_REJECT.get(reason, (99, 99))
            fields: list[tuple[int, str | bytes | int]] = [
                (37, "NONE"), (11, o.cl_ord_id), (17, self._exec_id()), (150, "8"), (39, "8"), (103, ord_rej)]
            if o.account:
                fields.append((1, o.account))
            fields += [(55, o.symbol), (54, o.side), (38, o.qty), (40, o.ord_type)]
            if o.price:
                fields.append((44, price_to_text(o.price)))
            if o.stop_price:
                fields.append((99, price_to_text(o.stop_price)))
            fields += [(59, o.tif), (151, 0), (14, 0), (6, 0), (60, utc_timestamp(ts_ns)), (58, text[:200])]
            self._send("8", fields, now)
            o.pending.clear()
            self._done(o)
            return
        kind = "F" if cls is CancelOrder else "G"
        req = _pop(o, kind)
        cl = req[1] if req is not None else cmd.cl_ord_id
        orig = req[2] if req is not None else o.cl_ord_id
        cxl = FIX_REJECT.get(reason, (99, 99))[1]
        self._cancel_reject(cl, orig, o, "1" if kind == "F" else "2", cxl, text, now,
                            _TOO_LATE_STATUS.get(reason))
        self._done(o, retire_only=True)

    def _mass_report(self, cmd: Any, count: int, now: int) -> None:
        if not self._mass or self._mass[0][0] != cmd.cl_ord_id:
            return
        m = self._mass[0]
        m[3] -= 1
        m[4] += count
        if m[3] > 0:   # other partitions have yet to answer
            return
        self._mass.popleft()
        cl, req_type, symbol, _, total = m
        fields: list[tuple[int, str | bytes | int]] = [
            (37, f"M{self._exec_id()}"), (11, cl), (530, req_type), (531, req_type), (533, total)]
        if symbol and req_type == "1":
            fields.append((55, symbol))
        self._send("r", fields, now)

    def _done(self, o: FixOrder, retire_only: bool = False) -> None:
        """Forget an order once it is done and nothing it asked for is still unanswered."""
        if not retire_only:
            o.done = True
        if o.done and not o.pending:
            if self.state.orders.pop(o.order_id, None) is not None:
                ended = self._ended
                ended.pop(o.order_id, None)
                ended[o.order_id] = (str(o.ref) if o.ref else "NONE", o.status)
                if len(ended) > ENDED_RECALL:
                    del ended[next(iter(ended))]
        self.state.touch(o.order_id)


_ENDED_TEXT: Final = {"2": "too late: the order has filled", "4": "too late: the order was cancelled",
                      "C": "too late: the order expired", "8": "too late: the order was rejected"}


def _pop(o: FixOrder, kind: str) -> tuple[str, str, str] | None:
    for i, req in enumerate(o.pending):
        if req[0] == kind:
            del o.pending[i]
            return req
    return None
