"""The one catalogue of commands (imperative) and events (past tense).

The WAL, replay, the feed encoders, execution reports, audit export and tools all use this module.

Commands are small classes with ``__slots__``; each declares its persistent fields once, in order,
as ``FIELDS = ((name, struct code), ...)``. The WAL derives its record layout from that table and
nothing else. A ``NewOrder`` that the engine accepts *becomes* the live order: the engine sets the
state slots ``ref`` (the ITCH order reference), ``leaves`` and ``filled`` on it, so an order costs one
allocation from the wire to the book. ``ORDER_IMAGE`` (NewOrder.FIELDS, then that state) is the one
declaration of an order's fields: every encoding of an order is a named projection of it (``fields_of``).

Events are plain tuples whose first item is the event kind; the layouts are declared below in
``EVENT_LAYOUTS`` (field names by position). Tuples are what the engine can afford to build in its
hot path (one BUILD_TUPLE, no __init__ call). Readers index them with the ``*_`` position constants or
unpack them. An event carries a reference to the order object for its immutable fields (order id,
firm, side, price, instrument, ...) and copies of every mutable quantity at the moment of the event.

An order's immutable fields: order_id, locate, side, ord_type, tif, stp, price, stop_price, firm,
session, account, mpid, ref. A replace that loses priority makes a *new* order object with a new
ref, so an order object's price never changes. Mutable: qty (a replace down keeps the object),
cl_ord_id (the latest client id), leaves, filled.
"""
from __future__ import annotations

from typing import Any, Final, Union

from appliance.model import DAY, LIMIT, STP_DEFAULT

# ================================================================================================
# Commands
# ================================================================================================

CMD_NEW_ORDER: Final = 1
CMD_CANCEL_ORDER: Final = 2
CMD_REPLACE_ORDER: Final = 3
CMD_MASS_CANCEL: Final = 4
CMD_CLOCK_TICK: Final = 5
CMD_SET_SCHEDULE: Final = 6
CMD_HALT: Final = 7
CMD_RESUME: Final = 8
CMD_CLOSE: Final = 9


class NewOrder:
    """Enter an order. After acceptance the same object is the live order (engine-owned)."""

    KIND: Final = CMD_NEW_ORDER
    NAME: Final = "NewOrder"
    # Persistent fields, in WAL order. Strings are ASCII, space-padded on the wire, stripped in memory.
    FIELDS: Final = (
        ("order_id", "Q"),     # the gateway's handle for the order: unique among live orders
        ("locate", "H"),       # instrument (ITCH stock locate)
        ("side", "B"),         # model.BUY / model.SELL
        ("ord_type", "B"),     # model.MARKET / LIMIT / STOP / STOP_LIMIT
        ("tif", "B"),          # model.DAY / GTC / IOC / FOK
        ("stp", "B"),          # model.STP_* (STP_DEFAULT: the firm's mode)
        ("price", "q"),        # limit price, Price(4) units; 0 for market and stop
        ("stop_price", "q"),   # stop trigger price; 0 unless stop or stop-limit
        ("qty", "q"),          # order quantity (shares); validated to 1..2^32-1 by the engine
        ("firm", "I"),         # firm id (config maps names to ids)
        ("session", "I"),      # gateway session id (audit)
        ("account", "16s"),
        ("cl_ord_id", "20s"),  # client order id (FIX ClOrdID / OUCH ClOrdID)
        ("mpid", "4s"),        # attribution: when set, the feed shows ITCH 'F' with this MPID
        ("post_only", "B"),    # 1: may not take liquidity on entry (NASDAQ post-only, FIX 18=6)
    )
    # Slots in the order matching touches them, so that the hot ones share the object's first
    # cache line; FIELDS, not this order, is the persistent layout.
    __slots__ = (
        "leaves", "price", "side", "firm", "ord_type", "locate", "order_id", "filled", "qty", "tif",
        "stp", "ref", "stop_price", "session", "account", "cl_ord_id", "mpid", "post_only",
    )

    def __init__(
        self,
        order_id: int,
        locate: int,
        side: int,
        qty: int,
        price: int = 0,
        ord_type: int = LIMIT,
        tif: int = DAY,
        stop_price: int = 0,
        firm: int = 0,
        session: int = 0,
        account: str = "",
        cl_ord_id: str = "",
        mpid: str = "",
        stp: int = STP_DEFAULT,
        post_only: int = 0,
    ) -> None:
        self.order_id = order_id
        self.locate = locate
        self.side = side
        self.ord_type = ord_type
        self.tif = tif
        self.stp = stp
        self.price = price
        self.stop_price = stop_price
        self.qty = qty
        self.firm = firm
        self.session = session
        self.account = account
        self.cl_ord_id = cl_ord_id
        self.mpid = mpid
        self.post_only = post_only
        # Engine state; meaningful only after acceptance.
        self.ref = 0
        self.leaves = 0
        self.filled = 0

    def __repr__(self) -> str:
        return (
            f"NewOrder(id={self.order_id}, ref={self.ref}, locate={self.locate}, side={self.side}, "
            f"type={self.ord_type}, tif={self.tif}, price={self.price}, stop={self.stop_price}, "
            f"qty={self.qty}, leaves={self.leaves}, filled={self.filled}, firm={self.firm})"
        )


Order = NewOrder  # the live order is the accepted command; the alias names the role

# ------------------------------------------------------------------------------------------------
# The order image: every field of a live order, declared once. Each encoding of an order (the WAL
# body, snapshots, the gateway rings, the canonical event frames) is a named projection of it
# (fields_of), so a field's name and code are stated here and nowhere else.
# ------------------------------------------------------------------------------------------------

#: The state the engine sets on an accepted order: the ITCH order reference, remaining and filled shares.
ORDER_STATE: Final = (
    ("ref", "Q"),
    ("leaves", "q"),
    ("filled", "q"),
)
#: The command's persistent fields (NewOrder.FIELDS, the WAL body), then the engine's state.
ORDER_IMAGE: Final = NewOrder.FIELDS + ORDER_STATE

Pick = Union[str, tuple[str, str]]


def fields_of(table: tuple[tuple[str, str], ...], *picks: Pick) -> tuple[tuple[str, str], ...]:
    """A named projection of a (name, struct code) table, in the order of ``picks``.

    A pick is a field name (its code is the table's) or ``(name, code)`` for an encoding that stores
    the field in another type (a narrower integer, say); the caller says why beside it. Called at
    import: a name the table lacks, a field picked twice or an override that restates the table's
    own code raises ValueError, so a projection cannot drift from its declaration.
    """
    codes = dict(table)
    out: list[tuple[str, str]] = []
    for pick in picks:
        if isinstance(pick, str):
            name = pick
            code = codes.get(name, "")
        else:
            name, code = pick
            if codes.get(name) == code:
                raise ValueError(f"fields_of: {name!r} overrides its code with the same code {code!r}")
        if name not in codes:
            raise ValueError(f"fields_of: {name!r} is not a field of {tuple(codes)}")
        if any(name == seen for seen, _ in out):
            raise ValueError(f"fields_of: {name!r} picked twice")
        out.append((name, code))
    return tuple(out)


class CancelOrder:
    """Cancel the whole remaining quantity of a live order of the sending firm."""

    KIND: Final = CMD_CANCEL_ORDER
    NAME: Final = "CancelOrder"
    FIELDS: Final = (
        ("order_id", "Q"),
        ("firm", "I"),
        ("session", "I"),
        ("cl_ord_id", "20s"),  # the cancel request's own client id
    )
    __slots__ = tuple(name for name, _ in FIELDS)

    def __init__(self, order_id: int, firm: int = 0, session: int = 0, cl_ord_id: str = "") -> None:
        self.order_id = order_id
        self.firm = firm
        self.session = session
        self.cl_ord_id = cl_ord_id

    def __repr__(self) -> str:
        return f"CancelOrder(id={self.order_id}, firm={self.firm})"


class ReplaceOrder:
    """Change a live order's quantity (new total, fills included), price and/or stop price.

    Quantity down at the same price keeps time priority and the order reference; a price change
    or a quantity increase loses priority and the order gets a new reference.
    """

    KIND: Final = CMD_REPLACE_ORDER
    NAME: Final = "ReplaceOrder"
    FIELDS: Final = (
        ("order_id", "Q"),
        ("firm", "I"),
        ("session", "I"),
        ("qty", "q"),          # new order quantity, fills included (FIX OrderQty semantics)
        ("price", "q"),        # new limit price (ignored for stop orders)
        ("stop_price", "q"),   # new stop price (stop and stop-limit orders; 0 = unchanged)
        ("cl_ord_id", "20s"),  # the order's new client id
    )
    __slots__ = tuple(name for name, _ in FIELDS)

    def __init__(
        self,
        order_id: int,
        qty: int,
        price: int,
        firm: int = 0,
        session: int = 0,
        stop_price: int = 0,
        cl_ord_id: str = "",
    ) -> None:
        self.order_id = order_id
        self.firm = firm
        self.session = session
        self.qty = qty
        self.price = price
        self.stop_price = stop_price
        self.cl_ord_id = cl_ord_id

    def __repr__(self) -> str:
        return f"ReplaceOrder(id={self.order_id}, qty={self.qty}, price={self.price}, firm={self.firm})"


MASS_ANY_INSTRUMENT: Final = 0
MASS_ANY_SIDE: Final = 255


class MassCancel:
    """Cancel every live order (resting or pending stop) of a firm, optionally one instrument and side."""

    KIND: Final = CMD_MASS_CANCEL
    NAME: Final = "MassCancel"
    FIELDS: Final = (
        ("firm", "I"),
        ("locate", "H"),       # 0: every instrument
        ("side", "B"),         # MASS_ANY_SIDE: both sides
        ("session", "I"),
        ("cl_ord_id", "20s"),
    )
    __slots__ = tuple(name for name, _ in FIELDS)

    def __init__(
        self,
        firm: int,
        locate: int = MASS_ANY_INSTRUMENT,
        side: int = MASS_ANY_SIDE,
        session: int = 0,
        cl_ord_id: str = "",
    ) -> None:
        self.firm = firm
        self.locate = locate
        self.side = side
        self.session = session
        self.cl_ord_id = cl_ord_id

    def __repr__(self) -> str:
        return f"MassCancel(firm={self.firm}, locate={self.locate}, side={self.side})"


# ------------------------------------------------------------------------------------------------
# Admin commands: sequenced and logged like orders, so that a replay of the WAL reproduces the day.
# The engine reads no clock: its time is the latest ClockTick (docs/matching.md, "Time").
# ------------------------------------------------------------------------------------------------
ALL_INSTRUMENTS: Final = 0  # the stock locate of an admin command for every instrument (market-wide)


class ClockTick:
    """The engine's clock moves to now_ns: schedule transitions and timers due by then happen.

    The partition injects one when a deadline passes (Engine.next_deadline_ns) and about once a
    second, with the sequencer's ts_ns, so every timed transition is a WAL record.
    """

    KIND: Final = CMD_CLOCK_TICK
    NAME: Final = "ClockTick"
    FIELDS: Final = (("now_ns", "Q"),)  # epoch nanoseconds
    __slots__ = ("now_ns",)

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __repr__(self) -> str:
        return f"ClockTick({self.now_ns})"


class SetSchedule:
    """The day's schedule for every instrument of the engine, as epoch nanoseconds (converted from
    the configured times of day in the exchange's time zone at the edge: appliance.config).

    All zero: no schedule (instruments change state by admin command only). Otherwise positive and
    non-decreasing. It starts a new day: instruments closed for the day may open again.
    """

    KIND: Final = CMD_SET_SCHEDULE
    NAME: Final = "SetSchedule"
    FIELDS: Final = (
        ("pre_open_ns", "q"),         # closed -> pre-open; System Event S
        ("opening_auction_ns", "q"),  # pre-open -> opening auction (NOII)
        ("open_ns", "q"),             # the opening uncross -> continuous; System Event Q
        ("closing_auction_ns", "q"),  # continuous -> closing auction (NOII)
        ("close_ns", "q"),            # the closing uncross -> closed, DAY orders expire; System Event M
    )
    __slots__ = tuple(name for name, _ in FIELDS)

    def __init__(self, pre_open_ns: int, opening_auction_ns: int, open_ns: int, closing_auction_ns: int,
                 close_ns: int) -> None:
        self.pre_open_ns = pre_open_ns
        self.opening_auction_ns = opening_auction_ns
        self.open_ns = open_ns
        self.closing_auction_ns = closing_auction_ns
        self.close_ns = close_ns

    def times(self) -> tuple[int, int, int, int, int]:
        return (self.pre_open_ns, self.opening_auction_ns, self.open_ns, self.closing_auction_ns, self.close_ns)

    def __repr__(self) -> str:
        return f"SetSchedule{self.times()}"


class Halt:
    """Halt an instrument (its orders stay; new ones are collected for the reopening auction), or
    with ALL_INSTRUMENTS every instrument that is open: a market-wide halt."""

    KIND: Final = CMD_HALT
    NAME: Final = "Halt"
    FIELDS: Final = (("locate", "H"),)
    __slots__ = ("locate",)

    def __init__(self, locate: int) -> None:
        self.locate = locate

    def __repr__(self) -> str:
        return f"Halt(locate={self.locate})"


class Resume:
    """End a halt or pause: a reopening auction (or the phase the schedule is in), or with
    ALL_INSTRUMENTS for every halted or paused instrument."""

    KIND: Final = CMD_RESUME
    NAME: Final = "Resume"
    FIELDS: Final = (("locate", "H"),)
    __slots__ = ("locate",)

    def __init__(self, locate: int) -> None:
        self.locate = locate

    def __repr__(self) -> str:
        return f"Resume(locate={self.locate})"


class Close:
    """Close an instrument now (the closing auction uncrosses if it is in one; DAY orders expire), or
    with ALL_INSTRUMENTS every open instrument. It stays closed until the next SetSchedule's day."""

    KIND: Final = CMD_CLOSE
    NAME: Final = "Close"
    FIELDS: Final = (("locate", "H"),)
    __slots__ = ("locate",)

    def __init__(self, locate: int) -> None:
        self.locate = locate

    def __repr__(self) -> str:
        return f"Close(locate={self.locate})"


Command = Union[NewOrder, CancelOrder, ReplaceOrder, MassCancel, ClockTick, SetSchedule, Halt, Resume, Close]
COMMANDS: Final[dict[int, type[Command]]] = {
    CMD_NEW_ORDER: NewOrder,
    CMD_CANCEL_ORDER: CancelOrder,
    CMD_REPLACE_ORDER: ReplaceOrder,
    CMD_MASS_CANCEL: MassCancel,
    CMD_CLOCK_TICK: ClockTick,
    CMD_SET_SCHEDULE: SetSchedule,
    CMD_HALT: Halt,
    CMD_RESUME: Resume,
    CMD_CLOSE: Close,
}
ADMIN_COMMANDS: Final = (ClockTick, SetSchedule, Halt, Resume, Close)

# ================================================================================================
# Events: tuples (kind, ...) with the layouts below
# ================================================================================================

Event = tuple[Any, ...]

class Ev:
    """Event kinds: the first item of every event tuple (layouts in EVENT_LAYOUTS, by kind).

    One namespace, ``Ev.ADDED`` and so on. Per-event code (the engine, the gateway ring's codec, the L3
    and L2/L1 encoders, and the gateway's sessions, server and risk checks, which see every answer)
    binds the kinds it uses to module globals of its own: in CPython 3.11 ``Ev.X`` is an unspecialized
    class attribute load, about 8 ns against 0 for a global, paid per event. Everywhere else ``Ev.X`` is
    read as it is; mypyc folds these Finals into constants either way.
    """

    ACCEPTED: Final = 1
    REJECTED: Final = 2
    ADDED: Final = 3
    EXECUTED: Final = 4
    CANCELLED: Final = 5
    REPLACED: Final = 6
    STOP_TRIGGERED: Final = 7
    MASS_CANCELLED: Final = 8
    TRADING_STATE: Final = 9
    MARKET_EVENT: Final = 10
    CROSS_EXECUTED: Final = 11
    UNCROSSED: Final = 12
    IMBALANCE: Final = 13
    LIMIT_STATE: Final = 14
    COLLAR: Final = 15


# Replace book actions (Ev.REPLACED.action): what the market-data feed must say about it.
REPL_IN_PLACE: Final = 0   # same order object and ref, priority kept: ITCH X for the decrement
REPL_REPOST: Final = 1     # new ref resting at once at its price: ITCH U (old ref -> new ref)
REPL_REMOVE: Final = 2     # new ref crosses: ITCH D of the old ref, then executions and maybe an Add
REPL_HIDDEN: Final = 3     # a pending stop, not on the book: nothing on the feed

EVENT_LAYOUTS: Final[dict[int, tuple[str, tuple[str, ...]]]] = {
    # The order was accepted (ack). qty is the order quantity at acceptance; leaves = qty, filled = 0.
    Ev.ACCEPTED: ("OrderAccepted", ("kind", "order", "qty")),
    # The command was rejected and changed nothing. reason: appliance.reasons code.
    Ev.REJECTED: ("CommandRejected", ("kind", "command", "reason")),
    # The order now rests on the book showing `shares` at order.price (ITCH A, or F with an MPID).
    Ev.ADDED: ("OrderAdded", ("kind", "order", "shares")),
    # A fill at the maker's price. match: unique match number. *_leaves / *_filled after this fill.
    Ev.EXECUTED: (
        "OrderExecuted",
        ("kind", "maker", "taker", "qty", "price", "match",
         "maker_leaves", "maker_filled", "taker_leaves", "taker_filled"),
    ),
    # `qty` shares of the order were cancelled, `leaves` remain (0: the order is done).
    # on_book: the cancelled shares were resting (ITCH X if leaves > 0, else D).
    Ev.CANCELLED: ("OrderCancelled", ("kind", "order", "qty", "leaves", "filled", "reason", "on_book")),
    # The order was replaced. new is old when priority was kept. action: REPL_* above.
    Ev.REPLACED: (
        "OrderReplaced",
        ("kind", "old", "new", "old_leaves", "new_leaves", "filled", "action", "command"),
    ),
    # A pending stop order triggered on `trigger_price` and now enters the book as market/limit.
    Ev.STOP_TRIGGERED: ("StopTriggered", ("kind", "order", "trigger_price")),
    # A mass cancel finished: `count` orders were cancelled (each also has its Ev.CANCELLED).
    Ev.MASS_CANCELLED: ("MassCancelled", ("kind", "command", "count")),
    # The instrument's trading state changed (model.TS_*), for model.CAUSE_* (ITCH H).
    Ev.TRADING_STATE: ("TradingStateChanged", ("kind", "locate", "state", "cause")),
    # A market-wide event of the partition's schedule or a market-wide halt (model.MARKET_*; ITCH S, W).
    Ev.MARKET_EVENT: ("MarketEvent", ("kind", "event")),
    # An auction fill: both orders were collected in the call phase; they trade at the uncross price.
    # The same shape as OrderExecuted, the buy order in the maker's place, the sell in the taker's.
    Ev.CROSS_EXECUTED: (
        "CrossExecuted",
        ("kind", "buy", "sell", "qty", "price", "match", "buy_leaves", "buy_filled", "sell_leaves", "sell_filled"),
    ),
    # An auction ended (model.CROSS_*): qty shares crossed at price (0 and 0: nothing crossed, match 0),
    # after its CrossExecuted fills (ITCH Q).
    Ev.UNCROSSED: ("AuctionUncrossed", ("kind", "locate", "cross_type", "price", "qty", "match")),
    # Auction imbalance information (ITCH I): paired shares and the surplus at the indicative price
    # (near), its side (model.IMBALANCE_*), far = the indicative price of the limit orders alone.
    Ev.IMBALANCE: (
        "AuctionImbalance",
        ("kind", "locate", "cross_type", "paired", "imbalance", "direction", "far", "near", "ref_price"),
    ),
    # The market sits at a price band (best bid at the upper or best ask at the lower): active, or no
    # more. lower/upper: the band.
    Ev.LIMIT_STATE: ("LimitStateChanged", ("kind", "locate", "active", "lower", "upper")),
    # The price range within which a paused instrument reopens (ITCH J).
    Ev.COLLAR: ("AuctionCollar", ("kind", "locate", "ref_price", "upper", "lower", "extension")),
}

EVENT_NAMES: Final = {kind: layout[0] for kind, layout in EVENT_LAYOUTS.items()}

# What every event field holds, by name, as a struct code of its widest range; ORDER_VALUE: an order
# object (its image: ORDER_IMAGE), COMMAND_VALUE: a command object. Each encoding of events takes its
# field codes from here (appliance.eventcodec as they are, appliance.codec_ring narrowed where it says).
ORDER_VALUE: Final = "order"
COMMAND_VALUE: Final = "command"
EVENT_FIELD_CODES: Final[dict[str, str]] = {
    "order": ORDER_VALUE, "maker": ORDER_VALUE, "taker": ORDER_VALUE, "old": ORDER_VALUE, "new": ORDER_VALUE,
    "command": COMMAND_VALUE,
    "qty": "q", "shares": "q", "price": "q", "trigger_price": "q",
    "match": "Q",
    "maker_leaves": "q", "maker_filled": "q", "taker_leaves": "q", "taker_filled": "q",
    "leaves": "q", "filled": "q", "old_leaves": "q", "new_leaves": "q",
    "reason": "H", "action": "B", "on_book": "?", "count": "I",
    # trading states and auctions
    "buy": ORDER_VALUE, "sell": ORDER_VALUE,
    "buy_leaves": "q", "buy_filled": "q", "sell_leaves": "q", "sell_filled": "q",
    "locate": "H", "state": "B", "cause": "B", "event": "B", "cross_type": "B", "direction": "B",
    "paired": "q", "imbalance": "q", "far": "q", "near": "q", "ref_price": "q",
    "active": "?", "lower": "q", "upper": "q", "extension": "I",
}
#: Each event's fields after ``kind`` as a (name, code) table; a field without a code fails at import.
EVENT_FIELDS: Final[dict[int, tuple[tuple[str, str], ...]]] = {
    kind: tuple((name, EVENT_FIELD_CODES[name]) for name in fields[1:])
    for kind, (_, fields) in EVENT_LAYOUTS.items()
}
_COMMAND_TYPES: Final = frozenset(COMMANDS.values())


def event_as_dict(ev: Event) -> dict[str, Any]:
    """A readable view of an event (tools and tests; not for the hot path)."""
    name, fields = EVENT_LAYOUTS[ev[0]]
    out: dict[str, Any] = {"event": name}
    for field, value in zip(fields[1:], ev[1:]):
        if isinstance(value, NewOrder):
            out[field] = {"order_id": value.order_id, "ref": value.ref}
        elif type(value) in _COMMAND_TYPES:
            out[field] = {"command": value.NAME}
        else:
            out[field] = value
    return out
