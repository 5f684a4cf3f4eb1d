"""OUCH 5.0 inside SoupBinTCP 3.0, server side, sans-IO: ``OuchSession``.

Owned by the gateway's I/O thread. One ``OuchSession`` is one OUCH port: a SoupBinTCP session name,
a sequenced output stream and the UserRefNum space of the day. It outlives TCP connections: a
client that reconnects logs in again and asks for the stream from any sequence number.

What the I/O shell calls, in order::

    s = OuchSession(session_id, credentials, instruments, midnight_ns=...)
    s.start_of_day(now_ns)                    # optional: System Event 'S' (sequenced)
    # per TCP connection
    s.connection_made(now_ns)
    s.receive_data(data, now_ns)              # bytes from the socket, any chunking
    s.poll(now_ns)                            # timers: server heartbeat, client timeout
    s.on_events(ts_ns, events)                # engine events (the shell routes by order.session)
    s.take_commands() -> [Command]            # submit to the partition, in this order
    s.data_to_send() -> bytes                 # write to the socket
    s.take_events() -> [SessionEvent]         # log / count
    s.should_close                            # True: flush data_to_send(), then close the socket
    s.on_disconnect() -> [Command]            # the socket is gone: cancel-on-disconnect commands
    s.end_of_session(now_ns)                  # System Event 'E' (sequenced), then 'Z'

Client packets and their answers (SoupBinTCP)::

    state          packet                     answer
    -------------  -------------------------  ------------------------------------------------
    await login    L, known user, password    A (session, next seq) + replay from the requested
                                              sequence number; 'Z' too if the session ended
    await login    L, bad user or password    J 'A', close
    await login    L, other session name      J 'S', close
    await login    anything else              close (protocol error)
    logged in      U + OUCH message           commands and/or sequenced replies (below)
    logged in      U + malformed OUCH         Debug '+' with the reason; the message is dropped
    logged in      R                          nothing (the client is alive)
    logged in      O                          close (logged out)
    logged in      L or unknown type          close (protocol error)
    logged in      over the message budget    Enter/Replace: 'J' 0x29; others: Debug '+';
                   (shell-set ``budget``)     too many in a second: Debug with the reason, close
    any            broken framing             close (protocol error)
    any            silent for 15 s            close (timed out); poll() sends 'H' after 1 s idle

OUCH inbound messages and what they become (order ids: ``(session_id << 32) | UserRefNum`` of the
Enter Order that created the order; a Replace keeps the order id, so the engine's order id is
unique among live orders and never reused in a day):

    Enter Order O    NewOrder (limit; Price i64 = our Price(4) units). UserRefNum must exceed every
                     UserRefNum used before in the session; a lower or repeated one is ignored, as
                     the OUCH spec says (it is taken for a retransmission), unless the session was
                     built with ``reject_stale_user_ref_num`` (then 'J' Other). TIF '0' DAY,
                     '3' IOC, '5' GTX -> DAY (one trading session: it ends with the day), '6' GTT
                     and 'E' after hours rejected. Display 'Y' (or 'A' with the port's MPID);
                     ISO 'N'; Cross Type 'N'. Options: Firm, CustomerType, TradeNow, HandleInst,
                     BBO weight, GroupID, SharesLocated, LocateBroker accepted and not used;
                     PostOnly (12) 'P': a post-only order (NewOrder.post_only; one that would take is
                     rejected or re-priced, as the instrument says, and 'A' carries its price);
                     MinQty, MaxFloor, PriceType other than limit and the rest rejected. On a
                     Replace, PostOnly is accepted and changes nothing (the order keeps its own).
    Replace Order U  ReplaceOrder. Quantity is the total liable for the order chain, previous
                     executions and self-match decrements included (spec), so the engine total is
                     Quantity - decremented; at or below the executed shares the order is cancelled
                     (CancelOrder) and the new UserRefNum is not consumed. Original not live or new
                     UserRefNum not increasing: ignored. TIF, display and ISO cannot change the
                     order's engine attributes: otherwise 'J' Replace Not Allowed.
    Cancel Order X   Quantity 0 or at/below the executed shares: CancelOrder. Otherwise Quantity is
                     the new intended order size (executions included): ReplaceOrder at the same
                     price with that total (priority kept); answered 'C' with the decrement. A size
                     at or above the order's: ignored.
    Modify Order M   Side among S/T/E of a sell (B stays B; the engine side never changes) and/or a
                     quantity reduction (intended order size as for Cancel) -> ReplaceOrder, answered
                     'M'. A side-only change is answered at once. Increases and B<->S: ignored.
    Account Query Q  'Q' with the next UserRefNum; after UserRefNum 0xFFFFFFFF (there is no next
                     one) a Debug '+' saying so instead, the connection kept.

Engine events -> sequenced OUCH messages: see ``on_events``; reason mappings: REJECT_REASON and
CANCEL_REASON below (one table each).

Not supported: OUCH stop, peg, discretion, reserve (MaxFloor), MinQty, routing, GTT/
ExpireTime, after-hours TIF, cross orders, UserRefIdx, Mass Cancel / Disable Order Entry requests;
the short-sale marking (T/E) lives in the session only (the engine and WAL know BUY/SELL). The
sequenced stream is a list here (it survives reconnects); the gateway gives the session a
file-backed store instead (appliance/gateway/store.py: append, len, ``stream[i:]``), which survives
restarts and holds nothing of the day in memory.
"""
from __future__ import annotations

import struct
from typing import Any, Final, Iterable, Iterator, Mapping, Protocol, Sequence

from appliance import reasons as R
from appliance.catalogue import (
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
from appliance.model import BUY, CROSS_CLOSE, CROSS_OPEN, CROSS_REOPEN, DAY, IOC, LIMIT, SELL, Instrument
from feeds import ouch_layout as L
from feeds import soupbintcp as soup

__all__ = [
    "OuchSession", "REJECT_REASON", "CANCEL_REASON", "REJECT_OTHER", "order_id_for",
    "HEARTBEAT_INTERVAL_NS", "CLIENT_TIMEOUT_NS",
]

HEARTBEAT_INTERVAL_NS: Final = 1_000_000_000
#: A login's replay goes out this many messages per data_to_send() call: the shell asks for more as
#: the socket drains, so a replay of the whole day never sits in memory at once.
REPLAY_CHUNK: Final = 1024
CLIENT_TIMEOUT_NS: Final = 15_000_000_000
# The event kinds the per-event code compares, bound to module globals (catalogue.Ev: a class
# attribute load, which CPython 3.11 does not specialize).
EV_ACCEPTED: Final = Ev.ACCEPTED
EV_EXECUTED: Final = Ev.EXECUTED
EV_CROSS_EXECUTED: Final = Ev.CROSS_EXECUTED
EV_CANCELLED: Final = Ev.CANCELLED
EV_REPLACED: Final = Ev.REPLACED
EV_REJECTED: Final = Ev.REJECTED

# --- OUCH 5.0 reject reasons (Order Rejected, u16) -----------------------------------------------
QUOTE_UNAVAILABLE: Final = 0x0001
DESTINATION_CLOSED: Final = 0x0002
INVALID_DISPLAY: Final = 0x0003
INVALID_MAX_FLOOR: Final = 0x0004
INVALID_PEG_TYPE: Final = 0x0005
FAT_FINGER: Final = 0x0006
HALTED: Final = 0x0007
ISO_NOT_ALLOWED: Final = 0x0008
INVALID_SIDE: Final = 0x0009
PROCESSING_ERROR: Final = 0x000A
CANCEL_PENDING: Final = 0x000B
FIRM_NOT_AUTHORIZED: Final = 0x000C
INVALID_MIN_QUANTITY: Final = 0x000D
REJECT_OTHER: Final = 0x000F
INVALID_QUANTITY: Final = 0x0013
INVALID_CROSS_ORDER: Final = 0x0014
REPLACE_NOT_ALLOWED: Final = 0x0015
INVALID_SYMBOL: Final = 0x0017
INVALID_PRICE: Final = 0x001D
SHARES_EXCEED_THRESHOLD: Final = 0x001E
EXCEEDS_MAX_NOTIONAL: Final = 0x001F
AGGREGATE_EXPOSURE_EXCEEDED: Final = 0x0020
PORT_MESSAGE_RATE: Final = 0x0029

#: The reject reasons above by name, as clients and tools print them.
REJECT_NAMES: Final[dict[int, str]] = {
    QUOTE_UNAVAILABLE: "quote unavailable", DESTINATION_CLOSED: "destination closed",
    INVALID_DISPLAY: "invalid display", INVALID_MAX_FLOOR: "invalid max floor",
    INVALID_PEG_TYPE: "invalid peg type", FAT_FINGER: "fat finger (price collar)", HALTED: "halted",
    ISO_NOT_ALLOWED: "ISO not allowed", INVALID_SIDE: "invalid side", PROCESSING_ERROR: "processing error",
    CANCEL_PENDING: "cancel pending", FIRM_NOT_AUTHORIZED: "firm not authorized",
    INVALID_MIN_QUANTITY: "invalid min quantity", REJECT_OTHER: "other", INVALID_QUANTITY: "invalid quantity",
    INVALID_CROSS_ORDER: "invalid cross order", REPLACE_NOT_ALLOWED: "replace not allowed",
    INVALID_SYMBOL: "invalid symbol", INVALID_PRICE: "invalid price",
    SHARES_EXCEED_THRESHOLD: "shares exceed threshold", EXCEEDS_MAX_NOTIONAL: "exceeds max notional",
    AGGREGATE_EXPOSURE_EXCEEDED: "aggregate exposure exceeded", PORT_MESSAGE_RATE: "port message rate",
}

#: Our reject reasons (appliance.reasons) -> OUCH Order Rejected reason. The one table.
REJECT_REASON: Final[dict[int, int]] = {
    R.SESSION_NOT_LOGGED_IN: REJECT_OTHER,
    R.SESSION_MALFORMED: REJECT_OTHER,
    R.SESSION_THROTTLED: PORT_MESSAGE_RATE,
    R.SESSION_DUPLICATE_CLIENT_ID: REJECT_OTHER,
    R.SESSION_BACK_PRESSURE: PROCESSING_ERROR,
    R.RISK_PRICE_COLLAR: FAT_FINGER,
    R.RISK_MAX_QTY: SHARES_EXCEED_THRESHOLD,
    R.RISK_MAX_NOTIONAL: EXCEEDS_MAX_NOTIONAL,
    R.RISK_POSITION_LIMIT: AGGREGATE_EXPOSURE_EXCEEDED,
    R.RISK_RATE_LIMIT: PORT_MESSAGE_RATE,
    R.RISK_KILL_SWITCH: FIRM_NOT_AUTHORIZED,
    R.UNKNOWN_INSTRUMENT: INVALID_SYMBOL,
    R.PRICE_OFF_TICK: INVALID_PRICE,
    R.INVALID_QUANTITY: INVALID_QUANTITY,
    R.INVALID_PRICE: INVALID_PRICE,
    R.DUPLICATE_ORDER_ID: PROCESSING_ERROR,
    R.UNKNOWN_ORDER: REJECT_OTHER,
    R.TOO_LATE_FILLED: REJECT_OTHER,        # a cancel is answered Cancel Reject 'I' (no reason field)
    R.TOO_LATE_CANCELLED: REJECT_OTHER,
    R.TOO_LATE_EXPIRED: REJECT_OTHER,
    R.POST_ONLY_WOULD_TAKE: REJECT_OTHER,   # OUCH 5.0 has no "would remove liquidity" reason
    R.REPLACE_BELOW_FILLED: INVALID_QUANTITY,
    R.INVALID_ORDER_TYPE: REJECT_OTHER,
    R.INVALID_STOP_PRICE: REJECT_OTHER,
    R.INVALID_TIME_IN_FORCE: REJECT_OTHER,
    R.INVALID_SIDE: INVALID_SIDE,
    R.INVALID_STP_MODE: REJECT_OTHER,
    R.REPLACE_NOT_ALLOWED: REPLACE_NOT_ALLOWED,
    R.INSTRUMENT_CLOSED: DESTINATION_CLOSED,
    R.PRICE_OUTSIDE_BAND: INVALID_PRICE,
    R.TIF_NOT_ALLOWED_IN_STATE: REJECT_OTHER,
    R.ADMIN_UNKNOWN_COMMAND: PROCESSING_ERROR,
    R.ADMIN_CLOCK_BACKWARDS: PROCESSING_ERROR,
    R.ADMIN_INVALID_TRANSITION: PROCESSING_ERROR,
    R.ADMIN_INVALID_SCHEDULE: PROCESSING_ERROR,
}

#: Our cancel reasons (OrderCancelled.reason) -> OUCH Order Canceled reason. The one table.
CANCEL_REASON: Final[dict[int, bytes]] = {
    R.CANCEL_USER: b"U",                 # user requested
    R.CANCEL_IOC_REMAINDER: b"I",        # immediate or cancel
    R.CANCEL_FOK: b"I",
    R.CANCEL_MARKET_NO_LIQUIDITY: b"I",
    R.CANCEL_STP: b"Q",                  # self match prevention
    R.CANCEL_EXPIRED: b"T",              # time in force expired
    R.CANCEL_MASS: b"U",                 # the firm's mass cancel or its cancel-on-disconnect
    R.CANCEL_KILL_SWITCH: b"S",          # supervisory
    R.CANCEL_MARKET_COLLAR: b"K",        # market collar
    R.CANCEL_OUTSIDE_BAND: b"D",         # regulatory restriction (the LULD band)
}

# Entered TIF letter -> engine TIF. GTX ('5', until the end of extended hours) is DAY here: the
# appliance has one trading session and DAY orders live until the end of the day.
_TIF: Final[dict[bytes, int]] = {b"0": DAY, b"3": IOC, b"5": DAY}
_SELLS: Final = frozenset((b"S", b"T", b"E"))
# Appendage options accepted and not acted on; and options accepted only at their neutral value.
_HARMLESS_OPTIONS: Final = frozenset((2, 4, 16, 17, 18, 24, 25, 26))
_NEUTRAL_OPTIONS: Final[dict[int, bytes]] = {3: bytes(4), 5: bytes(4), 6: b"L", 12: b"N"}
# PostOnly (option 12): 'P' makes the order post-only (NewOrder.post_only); 'N' is the default.
POST_ONLY_TAG: Final = 12
_POST_ONLY: Final = b"P"
_OPTION_REJECT: Final[dict[int, int]] = {3: INVALID_MIN_QUANTITY, 5: INVALID_MAX_FLOOR,
                                         6: INVALID_PEG_TYPE, 7: INVALID_PEG_TYPE}

# Engine answers that say the order is no longer live: a Replace of it is dropped, as for a
# Replace whose original UserRefNum is not live when it arrives.
_NOT_LIVE: Final = frozenset((R.UNKNOWN_ORDER, R.TOO_LATE_FILLED, R.TOO_LATE_CANCELLED, R.TOO_LATE_EXPIRED))

# Connection states.
_IDLE: Final = 0          # no connection
_AWAIT_LOGIN: Final = 1
_ACTIVE: Final = 2
_CLOSED: Final = 3        # the connection must close; input is ignored

# Pending request kinds (one per command sent for a live order, answered by one engine event).
_REPLACE: Final = 1       # Replace Order -> ReplaceOrder
_REDUCE: Final = 2        # Cancel Order with a size -> ReplaceOrder
_MODIFY: Final = 3        # Modify Order with a size -> ReplaceOrder
_CANCEL: Final = 4        # Cancel Order -> CancelOrder
_COD: Final = 5           # cancel-on-disconnect -> CancelOrder (answers are not reported)

_STRUCT_A = L.ORDER_ACCEPTED.struct.pack
_STRUCT_U = L.ORDER_REPLACED.struct.pack
_STRUCT_C = L.ORDER_CANCELED.struct.pack
_STRUCT_E = L.ORDER_EXECUTED.struct.pack
_STRUCT_J = L.ORDER_REJECTED.struct.pack
_STRUCT_I = L.CANCEL_REJECT.struct.pack
_STRUCT_M = L.ORDER_MODIFIED.struct.pack
_STRUCT_Q = L.ACCOUNT_QUERY_RESPONSE.struct.pack
_STRUCT_S = L.SYSTEM_EVENT.struct.pack
_MAX_USER_REF_NUM: Final = 0xFFFF_FFFF
_SEQUENCED_HEAD = struct.Struct(">Hc").pack   # SoupBinTCP packet length and type (an OUCH message is < 64 KiB)
_NO_OTHER_EVENTS: Final[dict[int, bool]] = {}


def order_id_for(session_id: int, user_ref_num: int) -> int:
    """The engine order id of the order an Enter Order with ``user_ref_num`` creates."""
    return (session_id << 32) | user_ref_num


class _Request:
    """One command in flight for an order, waiting for its engine answer."""

    __slots__ = ("kind", "new_urn", "prev_last_urn", "tif", "display", "iso", "cl_ord_id", "side",
                 "qty", "price")

    def __init__(self, kind: int, qty: int = 0, price: int = 0) -> None:
        self.kind = kind
        self.qty = qty
        self.price = price
        self.new_urn = 0
        self.prev_last_urn = 0
        self.tif = b""
        self.display = b""
        self.iso = b""
        self.cl_ord_id = b""
        self.side = b""


class _Order:
    """The session's view of one of its orders (engine quantities as the events report them)."""

    __slots__ = ("order_id", "urn", "locate", "symbol", "side", "price", "tif", "display",
                 "capacity", "iso", "cross", "cl_ord_id", "qty", "filled", "leaves", "decremented",
                 "ref", "done", "pending")

    def __init__(self, order_id: int, urn: int, locate: int, symbol: bytes, side: bytes, qty: int,
                 price: int, tif: bytes, display: bytes, capacity: bytes, iso: bytes,
                 cross: bytes, cl_ord_id: bytes) -> None:
        self.order_id = order_id
        self.urn = urn
        self.locate = locate
        self.symbol = symbol
        self.side = side
        self.price = price
        self.tif = tif
        self.display = display
        self.capacity = capacity
        self.iso = iso
        self.cross = cross
        self.cl_ord_id = cl_ord_id
        self.qty = qty            # engine total (filled + leaves)
        self.filled = 0
        self.leaves = qty
        self.decremented = 0      # shares taken by self-match prevention (DC) while it lived on
        self.ref = 0
        self.done = False
        self.pending: list[_Request] = []   # requests in flight, oldest first (rarely more than one)


class Stream(Protocol):
    """A session's sequenced stream, stream[i] the message with sequence number i + 1: a list here,
    the gateway's file-backed store there (appliance/gateway/store.py)."""

    def append(self, msg: bytes, /) -> None: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Iterable[bytes]: ...

    def __iter__(self) -> Iterator[bytes]: ...


class OuchSession(SessionOutbox):
    """One OUCH 5.0 port over SoupBinTCP; owned by the gateway's I/O thread. See the module doc."""

    def __init__(
        self,
        session_id: int,
        credentials: Mapping[str, tuple[str, int]],
        instruments: Iterable[Instrument],
        *,
        session_name: str | None = None,
        midnight_ns: int = 0,
        cancel_on_disconnect: bool = True,
        cancel_on_disconnect_scope: str = "session",
        reject_stale_user_ref_num: bool = False,
        mpid: str = "",
        heartbeat_interval_ns: int = HEARTBEAT_INTERVAL_NS,
        client_timeout_ns: int = CLIENT_TIMEOUT_NS,
    ) -> None:
        """
        Args:
            session_id: this port's gateway session id (u32; NewOrder.session, high half of order ids).
            credentials: username -> (password, firm id); every user of this port must map to one firm.
            instruments: what can be traded (the symbol picks the stock locate).
            session_name: SoupBinTCP session name (up to 10 alphanumerics); default the session id.
            midnight_ns: subtracted from event and clock times: OUCH timestamps count from midnight.
            cancel_on_disconnect: cancel the port's live orders when its connection drops.
            cancel_on_disconnect_scope: "session": one CancelOrder per live order of this port (exact);
                "firm": one MassCancel(firm), which also cancels the firm's orders entered elsewhere.
            reject_stale_user_ref_num: answer a stale UserRefNum with 'J' instead of ignoring it.
            mpid: attribution for orders entered with Display 'A' (empty: 'A' is refused).
        """
        if not 0 <= session_id <= 0xFFFF_FFFF:
            raise ValueError(f"OUCH session id {session_id} is not a u32")
        if cancel_on_disconnect_scope not in ("session", "firm"):
            raise ValueError("cancel_on_disconnect_scope must be 'session' or 'firm'")
        name = str(session_id) if session_name is None else session_name
        if not 1 <= len(name) <= 10 or not name.isascii() or not name.isalnum():
            raise ValueError(f"SoupBinTCP session name {name!r}: 1 to 10 ASCII letters or digits")
        firms = {firm for _, firm in credentials.values()}
        if len(firms) > 1:
            raise ValueError(f"OUCH session {session_id}: its users map to several firms {sorted(firms)}")
        self.session_id = session_id
        self.session_name = name
        self.credentials = dict(credentials)
        self.firm: int | None = firms.pop() if firms else None
        self.instruments: dict[bytes, Instrument] = {ins.stock8: ins for ins in instruments}
        self.midnight_ns = midnight_ns
        self.cancel_on_disconnect = cancel_on_disconnect
        self.cancel_on_disconnect_scope = cancel_on_disconnect_scope
        self.reject_stale_user_ref_num = reject_stale_user_ref_num
        self.mpid = mpid
        self.heartbeat_interval_ns = heartbeat_interval_ns
        self.client_timeout_ns = client_timeout_ns
        # The sequenced stream: stream[i] is the OUCH message with sequence number i + 1.
        self.stream: Stream = []
        self.last_user_ref_num = 0
        self.ended = False
        self._replay_next = 0                       # next sequence number of a login's replay (0: none)
        self.orders: dict[int, _Order] = {}        # order id -> order (live, pending, or answers due)
        self._by_urn: dict[int, int] = {}           # current UserRefNum of a live order -> order id
        self._state = _IDLE
        self._logged_in = False                     # this connection logged in
        self._parser = soup.FrameParser()
        SessionOutbox.__init__(self)
        self._last_rx_ns = 0
        self._last_tx_ns = 0
        # Inbound messages of every kind (set by the shell; None: no limit): see ``_throttled``.
        self.budget: MessageBudget | None = None

    # ============================================================================================
    # shell interface
    # ============================================================================================
    @property
    def should_close(self) -> bool:
        """The connection must be closed (after sending what data_to_send() returns)."""
        return self._state == _CLOSED

    @property
    def logged_in(self) -> bool:
        return self._state == _ACTIVE

    @property
    def next_sequence(self) -> int:
        """The sequence number the next sequenced message will carry."""
        return len(self.stream) + 1

    def connection_made(self, now_ns: int) -> None:
        """A client connected; it has 15 s to log in. One connection at a time per port."""
        if self._state in (_AWAIT_LOGIN, _ACTIVE):
            raise RuntimeError(f"OUCH session {self.session_id} already has a connection")
        self._state = _AWAIT_LOGIN
        self._logged_in = False
        self._replay_next = 0
        self._parser = soup.FrameParser()
        self._out.clear()
        self._last_rx_ns = self._last_tx_ns = now_ns

    def on_disconnect(self) -> list[Command]:
        """The connection is gone. Returns the cancel-on-disconnect commands (submit them)."""
        was_logged_in = self._logged_in
        self._state = _IDLE
        self._logged_in = False
        self._replay_next = 0
        self._out.clear()
        if not (was_logged_in and self.cancel_on_disconnect and self.firm is not None):
            return []
        if self.cancel_on_disconnect_scope == "firm":
            return [MassCancel(self.firm, session=self.session_id)]
        out: list[Command] = []
        for o in self.orders.values():
            if not o.done:
                o.pending.append(_Request(_COD))
                out.append(CancelOrder(o.order_id, self.firm, self.session_id))
        return out

    def start_of_day(self, now_ns: int) -> None:
        """Sequenced System Event 'S' (start of day)."""
        self._emit(_STRUCT_S(b"S", self._ts(now_ns), b"S"), now_ns)

    def end_of_session(self, now_ns: int) -> None:
        """Sequenced System Event 'E', then End of Session 'Z'; new orders are refused from now on."""
        if self.ended:
            return
        self._emit(_STRUCT_S(b"S", self._ts(now_ns), b"E"), now_ns)
        self.ended = True
        if self._state == _ACTIVE and not self._replay_next:   # else 'Z' ends the replay
            self._out += soup.encode_end_of_session()
            self._state = _CLOSED
            self._events.append(SessionEvent(E.END_OF_SESSION))

    def poll(self, now_ns: int) -> None:
        """Timers: a server heartbeat after 1 s without output, a timeout after 15 s without input."""
        state = self._state
        if state != _ACTIVE and state != _AWAIT_LOGIN:
            return
        if now_ns - self._last_rx_ns >= self.client_timeout_ns:
            self._close(E.TIMED_OUT, f"no data from the client for {(now_ns - self._last_rx_ns) // 1_000_000} ms")
            return
        if state == _ACTIVE and now_ns - self._last_tx_ns >= self.heartbeat_interval_ns:
            self._out += soup.encode_server_heartbeat()
            self._last_tx_ns = now_ns

    def receive_data(self, data: bytes, now_ns: int) -> None:
        """Bytes from the socket (any chunking)."""
        if self._state != _ACTIVE and self._state != _AWAIT_LOGIN:
            return
        self._last_rx_ns = now_ns
        try:
            packets = self._parser.feed(data)
        except ValueError as exc:
            self._close(E.PROTOCOL_ERROR, str(exc))
            return
        budget = self.budget
        for kind, payload in packets:
            if self._state == _ACTIVE:
                if budget is not None and kind != soup.LOGOUT_REQUEST:
                    verdict = budget.admit(now_ns)
                    if verdict:
                        self._throttled(kind, payload, verdict == DISCONNECT, now_ns)
                        continue
                if kind == soup.UNSEQUENCED_DATA:
                    self._ouch(payload, now_ns)
                elif kind == soup.CLIENT_HEARTBEAT or kind == soup.DEBUG:
                    pass
                elif kind == soup.LOGOUT_REQUEST:
                    self._close(E.LOGGED_OUT, "logout request")
                else:
                    self._close(E.PROTOCOL_ERROR, f"unexpected packet type {kind!r} after login")
            elif self._state == _AWAIT_LOGIN:
                if kind == soup.LOGIN_REQUEST:
                    self._login(payload, now_ns)
                elif kind != soup.DEBUG:
                    self._close(E.PROTOCOL_ERROR, f"packet type {kind!r} before login")
            else:
                break

    # ============================================================================================
    # SoupBinTCP
    # ============================================================================================
    def _close(self, kind: str, text: str) -> None:
        self._state = _CLOSED
        self._events.append(SessionEvent(kind, text))

    def _login(self, payload: bytes, now_ns: int) -> None:
        try:
            req = soup.parse_login_request(payload)
        except ValueError as exc:
            self._out += soup.encode_login_rejected(soup.REJECT_NOT_AUTHORIZED)
            self._close(E.LOGIN_REJECTED, str(exc))
            return
        cred = self.credentials.get(req.username)
        if cred is None or cred[0] != req.password:
            self._out += soup.encode_login_rejected(soup.REJECT_NOT_AUTHORIZED)
            self._close(E.LOGIN_REJECTED, f"user {req.username!r}: not authorized")
            return
        if req.session and req.session != self.session_name:
            self._out += soup.encode_login_rejected(soup.REJECT_SESSION_NOT_AVAILABLE)
            self._close(E.LOGIN_REJECTED, f"user {req.username!r}: session {req.session!r} not available")
            return
        self.firm = cred[1]
        nxt = len(self.stream) + 1
        first = req.sequence if 1 <= req.sequence <= nxt else nxt  # 0: from the next new message
        out = self._out
        out += soup.encode_login_accepted(self.session_name, first)
        self._state = _ACTIVE
        self._logged_in = True
        self._last_tx_ns = now_ns
        self._events.append(SessionEvent(E.LOGGED_IN, f"user {req.username!r} from sequence {first}"))
        self._replay_next = first
        self._replay()

    @property
    def replaying(self) -> bool:
        """A login's replay has messages still to go out (``data_to_send`` gives the next ones)."""
        return self._replay_next != 0

    def _replay(self) -> None:
        """The next REPLAY_CHUNK messages of a login's replay; at its end 'Z' if the session ended.
        Messages sequenced meanwhile are part of the replay (they are in the stream)."""
        first = self._replay_next
        if not first:
            return
        out = self._out
        n = 0
        for msg in self.stream[first - 1:first - 1 + REPLAY_CHUNK]:
            out += soup.encode_sequenced_data(msg)
            n += 1
        if first + n > len(self.stream):
            self._replay_next = 0
            if self.ended and self._state == _ACTIVE:
                out += soup.encode_end_of_session()
                self._close(E.END_OF_SESSION, "the session has ended")
        else:
            self._replay_next = first + n

    def data_to_send(self) -> bytes:
        """Bytes for the socket; during a login's replay, its next REPLAY_CHUNK messages too (call
        again while ``replaying`` and the socket takes more)."""
        if self._replay_next and len(self._out) < 65536:
            self._replay()
        out = self._out          # SessionOutbox.data_to_send, here: called twice per order
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data

    def _throttled(self, kind: bytes, payload: bytes, disconnect: bool, now_ns: int) -> None:
        """A packet over the session's message budget: not processed. An Enter or Replace Order is
        answered Order Rejected 0x29 (port message rate; its UserRefNum is consumed, as a reject's
        is), anything else (queries, cancels, heartbeats) with a Debug packet. Too many in one second:
        a Debug with the reason, and the connection is closed."""
        assert self.budget is not None
        if disconnect:
            why = self.budget.why()
            self._out += soup.encode_debug(f"disconnected: {why}".encode("ascii")[:200])
            self._close(E.OVER_BUDGET, why)
            return
        self._events.append(SessionEvent(E.THROTTLED))
        if kind == soup.UNSEQUENCED_DATA and payload[:1] in (b"O", b"U"):
            try:
                msg, _ = L.decode(payload, L.INBOUND)
            except ValueError:
                msg = None
            if msg is not None and msg.user_ref_num > self.last_user_ref_num and msg.cl_ord_id.isascii():
                self.last_user_ref_num = msg.user_ref_num
                self._reject_now(msg.user_ref_num, PORT_MESSAGE_RATE, msg.cl_ord_id, now_ns)
                return
        self._out += soup.encode_debug(b"throttled: over %d messages/s" % self.budget.rate_per_s)

    def _emit(self, msg: bytes, now_ns: int) -> None:
        """Append a sequenced message to the stream; send it if the client is logged in."""
        self.stream.append(msg)
        if self._state == _ACTIVE and not self._replay_next:
            out = self._out
            out += _SEQUENCED_HEAD(len(msg) + 1, soup.SEQUENCED_DATA)   # soup.encode_sequenced_data
            out += msg
            self._last_tx_ns = now_ns

    def _ts(self, ns: int) -> int:
        ts = ns - self.midnight_ns
        return ts if ts > 0 else 0

    def _malformed(self, text: str) -> None:
        self._events.append(SessionEvent(E.MALFORMED, text))
        self._out += soup.encode_debug(text.encode("ascii", "replace")[:200])

    def _ignored(self, text: str) -> None:
        self._events.append(SessionEvent(E.IGNORED, text))

    # ============================================================================================
    # OUCH inbound
    # ============================================================================================
    def _ouch(self, payload: bytes, now_ns: int) -> None:
        try:
            msg, options = L.decode(payload, L.INBOUND)
        except ValueError as exc:
            self._malformed(str(exc))
            return
        cls = type(msg)
        if cls is L.EnterOrder:
            if not msg.cl_ord_id.isascii():
                self._malformed("OUCH: cl_ord_id is not ASCII")
            elif not msg.symbol.isascii():
                self._malformed("OUCH: symbol is not ASCII")
            else:
                self._enter(msg, options, now_ns)
        elif cls is L.CancelOrder:
            self._cancel(msg, now_ns)
        elif cls is L.ReplaceOrder:
            if not msg.cl_ord_id.isascii():
                self._malformed("OUCH: cl_ord_id is not ASCII")
            else:
                self._replace(msg, options, now_ns)
        elif cls is L.ModifyOrder:
            self._modify(msg, now_ns)
        else:  # Account Query
            if self.last_user_ref_num >= _MAX_USER_REF_NUM:
                # No next UserRefNum exists (u32): no Account Query Response can say one. The
                # client is told in a Debug packet; the connection stays up (cancels still work).
                self._malformed(f"Account Query: every UserRefNum of the day is used (the last was "
                                f"{_MAX_USER_REF_NUM}); no order can be entered on this session today")
                return
            self._emit(_STRUCT_Q(b"Q", self._ts(now_ns), self.last_user_ref_num + 1), now_ns)

    def _reject_now(self, urn: int, reason: int, cl_ord_id: bytes, now_ns: int) -> None:
        self._emit(_STRUCT_J(b"J", self._ts(now_ns), urn, reason, cl_ord_id), now_ns)

    @staticmethod
    def _options_reason(options: list[L.Option]) -> int:
        """0 if every appendage option is one we accept, else the OUCH reject reason."""
        for tag, value in options:
            if tag in _HARMLESS_OPTIONS or _NEUTRAL_OPTIONS.get(tag) == value:
                continue
            if tag == POST_ONLY_TAG and value == _POST_ONLY:
                continue
            return _OPTION_REJECT.get(tag, REJECT_OTHER)
        return 0

    def _display_mpid(self, display: bytes) -> str | None:
        """The MPID an order with this Display carries, or None if the display is not supported."""
        if display == b"Y":
            return ""
        if display == b"A" and self.mpid:
            return self.mpid
        return None

    def _enter(self, m: L.EnterOrder, options: list[L.Option], now_ns: int) -> None:
        urn, side_b, quantity, symbol, price, tif_b, display, capacity, iso, cross, cl_ord_id, _ = m
        if urn <= self.last_user_ref_num:
            text = f"Enter Order: UserRefNum {urn} is not above {self.last_user_ref_num}"
            if self.reject_stale_user_ref_num:
                self._events.append(SessionEvent(E.MALFORMED, text))
                self._reject_now(urn, REJECT_OTHER, m.cl_ord_id, now_ns)
            else:
                self._ignored(text)
            return
        self.last_user_ref_num = urn  # consumed, rejected or not
        ins = self.instruments.get(symbol)
        mpid = "" if display == b"Y" else self._display_mpid(display)
        side = BUY if side_b == b"B" else SELL if side_b in _SELLS else -1
        tif = _TIF.get(tif_b, -1)
        reason = (
            DESTINATION_CLOSED if self.ended
            else INVALID_SYMBOL if ins is None
            else INVALID_SIDE if side < 0
            else REJECT_OTHER if tif < 0
            else INVALID_DISPLAY if mpid is None
            else ISO_NOT_ALLOWED if iso != b"N"
            else INVALID_CROSS_ORDER if cross != b"N"
            else self._options_reason(options) if options
            else 0
        )
        firm = self.firm
        if reason or ins is None or mpid is None or firm is None:
            self._reject_now(urn, reason or PROCESSING_ERROR, cl_ord_id, now_ns)
            return
        sid = self.session_id
        order_id = (sid << 32) | urn
        locate = ins.locate
        self.orders[order_id] = _Order(order_id, urn, locate, ins.stock8, side_b, quantity, price, tif_b,
                                       display, capacity, iso, cross, cl_ord_id)
        self._by_urn[urn] = order_id
        post_only = 1 if options and (POST_ONLY_TAG, _POST_ONLY) in options else 0
        self._commands.append(NewOrder(
            order_id, locate, side, quantity, price, LIMIT, tif, 0, firm,
            sid, "", cl_ord_id.decode("ascii").strip(), mpid, post_only=post_only))

    def _live(self, urn: int, what: str) -> _Order | None:
        oid = self._by_urn.get(urn)
        if oid is None:
            self._ignored(f"{what}: UserRefNum {urn} is not a live order")
            return None
        return self.orders[oid]

    def _submit_cancel(self, o: _Order, kind: int = _CANCEL) -> None:
        assert self.firm is not None
        o.pending.append(_Request(kind))
        self._commands.append(CancelOrder(o.order_id, self.firm, self.session_id))

    def _submit_resize(self, o: _Order, req: _Request, cl_ord_id: str = "") -> None:
        assert self.firm is not None
        o.pending.append(req)
        self._commands.append(ReplaceOrder(o.order_id, req.qty, req.price, self.firm, self.session_id,
                                           0, cl_ord_id))

    def _cancel(self, m: L.CancelOrder, now_ns: int) -> None:
        o = self._live(m.user_ref_num, "Cancel Order")
        if o is None:
            return
        q = m.quantity
        if q <= o.filled:
            self._submit_cancel(o)
        elif q >= o.filled + o.leaves:
            self._ignored(f"Cancel Order: size {q} does not reduce UserRefNum {m.user_ref_num}")
        else:
            self._submit_resize(o, _Request(_REDUCE, q, o.price))

    def _modify(self, m: L.ModifyOrder, now_ns: int) -> None:
        o = self._live(m.user_ref_num, "Modify Order")
        if o is None:
            return
        side = m.side
        if side != o.side and not (side in _SELLS and o.side in _SELLS):
            self._ignored(f"Modify Order: side {o.side!r} cannot become {side!r}")
            return
        q = m.quantity
        total = o.filled + o.leaves
        if q > total:
            self._ignored(f"Modify Order: size {q} would increase UserRefNum {m.user_ref_num}")
        elif q == total:
            o.side = side
            self._emit(_STRUCT_M(b"M", self._ts(now_ns), o.urn, side, o.leaves), now_ns)
        elif q <= o.filled:
            self._submit_cancel(o)
        else:
            req = _Request(_MODIFY, q, o.price)
            req.side = side
            self._submit_resize(o, req)

    def _replace(self, m: L.ReplaceOrder, options: list[L.Option], now_ns: int) -> None:
        o = self._live(m.orig_user_ref_num, "Replace Order")
        if o is None:
            return
        new_urn = m.user_ref_num
        if new_urn <= self.last_user_ref_num:
            self._ignored(f"Replace Order: UserRefNum {new_urn} is not above {self.last_user_ref_num}")
            return
        qty = m.quantity - o.decremented
        if qty <= o.filled:  # the chain already executed what it may: the order is cancelled
            self._submit_cancel(o)
            return
        prev = self.last_user_ref_num
        self.last_user_ref_num = new_urn
        mpid = self._display_mpid(m.display)
        if (
            _TIF.get(m.time_in_force, -1) != _TIF[o.tif]
            or mpid is None or mpid != self._display_mpid(o.display)
            or m.iso != b"N"
        ):
            self._reject_now(new_urn, REPLACE_NOT_ALLOWED, m.cl_ord_id, now_ns)
            return
        reason = self._options_reason(options)
        if reason:
            self._reject_now(new_urn, reason, m.cl_ord_id, now_ns)
            return
        req = _Request(_REPLACE, qty, m.price)
        req.new_urn = new_urn
        req.prev_last_urn = prev
        req.tif = m.time_in_force
        req.display = m.display
        req.iso = m.iso
        req.cl_ord_id = m.cl_ord_id
        self._submit_resize(o, req, m.cl_ord_id.decode("ascii").strip())

    # ============================================================================================
    # engine events -> OUCH outbound
    # ============================================================================================
    def on_events(self, ts_ns: int, events: Sequence[Event]) -> None:
        """Engine events of one batch, stamped ``ts_ns`` by the sequencer.

        Events of other sessions' orders are skipped. Mapping (all sequenced):
          OrderAccepted   -> 'A' (Order State 'D' when the order is no longer live at the end of
                             the batch: IOC remainders, fully filled on entry)
          OrderExecuted   -> 'E' for our maker (liquidity 'A') and/or our taker ('R')
          CrossExecuted   -> 'E' for our buy and/or sell order, liquidity by the auction (CROSS_FLAG:
                             'O' opening, 'C' closing, 'H' halt/reopening cross)
          OrderCancelled  -> 'C' (shares decremented, CANCEL_REASON)
          OrderReplaced   -> 'U' for a Replace Order, 'C' for a Cancel Order with a size,
                             'M' for a Modify Order
          CommandRejected -> 'J' for Enter and Replace (REJECT_REASON), Cancel Reject 'I' for a
                             cancel or size reduction; a Replace of an order that died meanwhile is
                             dropped (its UserRefNum is not consumed), as the spec says
          OrderAdded, StopTriggered, MassCancelled: nothing
        """
        sid = self.session_id
        orders = self.orders
        ts = ts_ns - self.midnight_ns      # self._ts(ts_ns)
        if ts < 0:
            ts = 0
        alive: dict[int, bool] | None = None
        for ev in events:
            kind = ev[0]
            if kind == EV_ACCEPTED:   # the commonest first
                order = ev[1]
                o = orders.get(order.order_id) if order.session == sid else None
                if o is None:
                    continue
                if alive is None:   # alone in its batch: live (the default of alive.get)
                    alive = _alive_after(events) if len(events) > 1 else _NO_OTHER_EVENTS
                o.ref = order.ref
                o.qty = o.leaves = ev[2]
                o.price = order.price          # a re-priced post-only order says its new price
                state = b"L" if alive.get(o.order_id, True) else b"D"
                self._emit(_STRUCT_A(
                    b"A", ts, o.urn, o.side, ev[2], o.symbol, o.price, o.tif, o.display, o.ref,
                    o.capacity, o.iso, o.cross, state, o.cl_ord_id, 0), ts_ns)
            elif kind == EV_EXECUTED:
                maker = ev[1]
                taker = ev[2]
                if maker.session == sid:
                    o = orders.get(maker.order_id)
                    if o is not None:
                        self._executed(o, ev[3], ev[4], b"A", ev[5], ev[6], ev[7], ts, ts_ns)
                if taker.session == sid:
                    o = orders.get(taker.order_id)
                    if o is not None:
                        self._executed(o, ev[3], ev[4], b"R", ev[5], ev[8], ev[9], ts, ts_ns)
            elif kind == EV_CROSS_EXECUTED:
                buy = ev[1]
                sell = ev[2]
                flag = _cross_flag(ev, events)
                if buy.session == sid:
                    o = orders.get(buy.order_id)
                    if o is not None:
                        self._executed(o, ev[3], ev[4], flag, ev[5], ev[6], ev[7], ts, ts_ns)
                if sell.session == sid:
                    o = orders.get(sell.order_id)
                    if o is not None:
                        self._executed(o, ev[3], ev[4], flag, ev[5], ev[8], ev[9], ts, ts_ns)
            elif kind == EV_CANCELLED:
                order = ev[1]
                o = orders.get(order.order_id) if order.session == sid else None
                if o is None:
                    continue
                reason = ev[5]
                if reason == R.CANCEL_USER:  # the answer to our CancelOrder
                    _pop_kind(o, (_CANCEL, _COD))
                qty = ev[2]
                leaves = ev[3]
                if reason == R.CANCEL_STP and leaves:
                    o.decremented += qty
                o.leaves = leaves
                o.qty = o.filled + leaves
                self._emit(_STRUCT_C(b"C", ts, o.urn, qty, CANCEL_REASON.get(reason, b"Z")), ts_ns)
                if not leaves:
                    self._retire(o)
            elif kind == EV_REPLACED:
                new = ev[2]
                o = orders.get(new.order_id) if new.session == sid else None
                if o is None:
                    continue
                if alive is None:   # alone in its batch: _replaced looks at its new leaves
                    alive = _alive_after(events) if len(events) > 1 else _NO_OTHER_EVENTS
                self._replaced(o, new, ev, alive, ts, ts_ns)
            elif kind == EV_REJECTED:
                cmd = ev[1]
                if cmd.session == sid and type(cmd) is not MassCancel:
                    o = orders.get(cmd.order_id)
                    if o is not None:
                        self._rejected(o, cmd, ev[2], ts, ts_ns)

    def _executed(self, o: _Order, qty: int, price: int, flag: bytes, match: int, leaves: int,
                  filled: int, ts: int, ts_ns: int) -> None:
        o.leaves = leaves
        o.filled = filled
        self._emit(_STRUCT_E(b"E", ts, o.urn, qty, price, flag, match, 0), ts_ns)
        if not leaves:
            self._retire(o)

    def _replaced(self, o: _Order, new: Any, ev: Event, alive: dict[int, bool], ts: int,
                  ts_ns: int) -> None:
        req = _pop_kind(o, (_REPLACE, _REDUCE, _MODIFY))
        old_leaves = ev[3]
        new_leaves = ev[4]
        o.leaves = new_leaves
        o.filled = ev[5]
        o.qty = o.filled + new_leaves
        o.ref = new.ref
        o.price = new.price
        if req is None or req.kind == _REPLACE:
            orig = o.urn
            if req is not None:
                if self._by_urn.get(orig) == o.order_id:
                    del self._by_urn[orig]
                o.urn = req.new_urn
                self._by_urn[o.urn] = o.order_id
                o.tif = req.tif
                o.display = req.display
                o.iso = req.iso
                o.cl_ord_id = req.cl_ord_id
            state = b"L" if alive.get(o.order_id, True) and new_leaves else b"D"
            self._emit(_STRUCT_U(
                b"U", ts, orig, o.urn, o.side, new_leaves, o.symbol, o.price, o.tif, o.display,
                o.ref, o.capacity, o.iso, o.cross, state, o.cl_ord_id, 0), ts_ns)
        elif req.kind == _REDUCE:
            self._emit(_STRUCT_C(b"C", ts, o.urn, old_leaves - new_leaves, b"U"), ts_ns)
        else:  # _MODIFY
            o.side = req.side
            self._emit(_STRUCT_M(b"M", ts, o.urn, o.side, new_leaves), ts_ns)

    def _rejected(self, o: _Order, cmd: Any, reason: int, ts: int, ts_ns: int) -> None:
        cls = type(cmd)
        if cls is NewOrder:
            if o.ref:  # not this order's entry (a duplicate id cannot come from this session)
                return
            self._emit(_STRUCT_J(b"J", ts, o.urn, REJECT_REASON.get(reason, REJECT_OTHER),
                                 o.cl_ord_id), ts_ns)
            o.done = True
            o.pending.clear()
            self._retire(o)
            return
        if cls is CancelOrder:
            req = _pop_kind(o, (_CANCEL, _COD))
            if req is None or req.kind == _CANCEL:
                self._emit(_STRUCT_I(b"I", ts, o.urn), ts_ns)
            self._retire_if_idle(o)
            return
        req = _pop_kind(o, (_REPLACE, _REDUCE, _MODIFY))
        if req is not None and reason == R.REPLACE_BELOW_FILLED and not o.done:
            # Executions overtook the request: the intended size is reached, cancel the rest.
            if req.kind == _REPLACE and self.last_user_ref_num == req.new_urn:
                self.last_user_ref_num = req.prev_last_urn
            self._submit_cancel(o)
        elif req is None or req.kind == _REPLACE:
            if req is not None and reason in _NOT_LIVE:
                if self.last_user_ref_num == req.new_urn:  # not consumed
                    self.last_user_ref_num = req.prev_last_urn
                self._ignored(f"Replace Order: UserRefNum {o.urn} died before the replace")
            else:
                urn = req.new_urn if req is not None else o.urn
                cl = req.cl_ord_id if req is not None else o.cl_ord_id
                self._emit(_STRUCT_J(b"J", ts, urn, REJECT_REASON.get(reason, REJECT_OTHER), cl), ts_ns)
        else:
            self._emit(_STRUCT_I(b"I", ts, o.urn), ts_ns)
        self._retire_if_idle(o)

    def _retire(self, o: _Order) -> None:
        """The order is done: its UserRefNum no longer names a live order."""
        o.done = True
        if self._by_urn.get(o.urn) == o.order_id:
            del self._by_urn[o.urn]
        self._retire_if_idle(o)

    def _retire_if_idle(self, o: _Order) -> None:
        if o.done and not o.pending:
            self.orders.pop(o.order_id, None)


def _pop_kind(o: _Order, kinds: tuple[int, ...]) -> _Request | None:
    """Take the oldest pending request of one of ``kinds`` (the engine answers in order)."""
    for i, req in enumerate(o.pending):
        if req.kind in kinds:
            del o.pending[i]
            return req
    return None


#: OUCH liquidity flag of an auction fill, by cross type (model.CROSS_*): 'O' opening cross,
#: 'C' closing cross, 'H' halt/IPO cross (a reopening auction after a halt or pause). A cross of
#: unknown type reads as 'O'.
CROSS_FLAG: Final = {CROSS_OPEN: b"O", CROSS_CLOSE: b"C", CROSS_REOPEN: b"H"}


def _cross_flag(ev: Event, events: Sequence[Event]) -> bytes:
    """The liquidity flag of CrossExecuted ``ev``: its cross type comes from the ring (ev[10]) or,
    from the engine directly, from the AuctionUncrossed of the same locate in the same events."""
    ct = ev[10] if len(ev) > 10 else 0
    if not ct:
        locate = ev[1].locate
        for e in events:
            if e[0] == Ev.UNCROSSED and e[1] == locate:
                ct = e[2]
                break
    return CROSS_FLAG.get(ct, b"O")


def _alive_after(events: Sequence[Event]) -> dict[int, bool]:
    """Order id -> whether the order is still live (leaves > 0) after this batch of events."""
    alive: dict[int, bool] = {}
    for ev in events:
        kind = ev[0]
        if kind == EV_ACCEPTED:
            alive[ev[1].order_id] = True
        elif kind == EV_EXECUTED or kind == EV_CROSS_EXECUTED:
            alive[ev[1].order_id] = ev[6] > 0
            alive[ev[2].order_id] = ev[8] > 0
        elif kind == EV_CANCELLED:
            alive[ev[1].order_id] = ev[3] > 0
        elif kind == EV_REPLACED:
            alive[ev[2].order_id] = ev[4] > 0
    return alive
