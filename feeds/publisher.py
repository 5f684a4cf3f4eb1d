"""The market-data publisher: engine events -> ITCH 5.0 (L3), L2, L1 -> MoldUDP64 -> A and B groups.

Owned by the matching thread. It reads no clock: every message carries the sequencer's ``ts_ns`` of
the command that caused it (minus the session's midnight), and idle work gets ``now_ns`` from the
caller. The daemon's duty cycle, after the WAL commit of a batch::

    results = partition.process_batch(cmds, now_ns)   # [(seq, ts_ns, cmd, events), ...]
    publisher.publish(results)                        # encode, pack, send A and B, store
    ...
    publisher.poll(now_ns)                            # when idle: heartbeats after 1 s

Start-up is recovery (crash-only): the publisher opens its feed store; if the store already holds
part of today's session, the daemon replays the WAL from the start of the day through
``publisher.replay(results)``. Message numbering is a pure function of the command sequence
(start-of-session messages, then per command its messages, in order), so the regenerated messages
carry the numbers they had: those the store holds are skipped, the rest are sent and stored. The
first ``publish`` ends the replay; the feed continues in the same session with no gap and no
duplicate. Only when the sequence cannot continue (the store holds more than the WAL gives back,
the previous run ended the session, or the configuration changed what messages say) does the
session change (a new generation, see feeds.channels.session_for).

Checkpoints shorten that replay. When the partition has written an engine snapshot at seq S and
the publisher has published exactly through S, the daemon writes ``checkpoint(S)`` beside the
store (``CHECKPOINT-<S>.json``: each channel's session and next sequence number, the depth
tracker's levels, what L2 and L1 last published, and the daemon's own additions). A restart that
loads snapshot S and finds that checkpoint calls ``resume(checkpoint)`` instead of ``start`` and
replays only the WAL after S; everything else (skipping what the store holds, the boundary check,
going live) is as above. A missing, unreadable or mismatched checkpoint means the full replay.

Send, then store: a batch is sent first and appended to the store right after. A crash between
the two makes recovery send that batch again (receivers drop the copies by sequence number); the
opposite order could lose it. The store is never fsynced (feeds.store explains why it need not be).

Within a batch the L3 messages are encoded by one struct call each (the ITCH layout's struct with
the MoldUDP64 length prefix in front, so that the message is a ready block), collected in a list,
and cut into datagrams of at most ``max_payload`` bytes with C-level accumulate/bisect: there is
no per-message call into the packetizer and no syscall per message.
"""
from __future__ import annotations

import json
import os
from typing import Any, Final, Iterable, Mapping, NamedTuple, Sequence

from appliance.catalogue import (
    REPL_HIDDEN,
    REPL_IN_PLACE,
    REPL_REMOVE,
    REPL_REPOST,
    Command,
    Ev,
    Event,
)
from appliance.model import (
    CAUSE_ADMIN,
    CAUSE_CIRCUIT,
    CAUSE_LULD,
    CAUSE_MARKET,
    CAUSE_SCHEDULE,
    CROSS_CLOSE,
    CROSS_OPEN,
    CROSS_REOPEN,
    IMBALANCE_BUY,
    IMBALANCE_NO_PRICE,
    IMBALANCE_NONE,
    IMBALANCE_SELL,
    LIMIT,
    MARKET_CLOSE,
    MARKET_HALT,
    MARKET_OPEN,
    MARKET_SYSTEM_HOURS,
    STOP_LIMIT,
    TS_CLOSED,
    TS_CLOSING_AUCTION,
    TS_CONTINUOUS,
    TS_HALTED,
    TS_OPENING_AUCTION,
    TS_PAUSED,
    TS_PRE_OPEN,
    TS_REOPENING_AUCTION,
    Instrument,
)
from appliance.fsutil import atomic_write
from appliance.metrics import S_L2L1, S_L3, S_PACKETIZE, S_SEND, S_STORE, StageClock
from feeds import itch
from feeds.channels import (
    CHANNELS,
    L1,
    L2,
    L3,
    DepthTracker,
    FeedConfig,
    L1Encoder,
    L2Encoder,
    day_of_midnight,
    block_packer,
    encode_depth,
    session_for,
)
from feeds.moldudp64 import BLOCK_LENGTH_SIZE, END_OF_SESSION_COUNT, HEADER, packetize
from feeds.store import FeedStore
from feeds.transport import ChannelSender, Transport

# The event kinds this module's per-event code compares or builds, as module globals (one
# LOAD_GLOBAL each; Ev.X is a class attribute lookup, which CPython 3.11 does not specialize).
EV_ACCEPTED: Final = Ev.ACCEPTED
EV_ADDED: Final = Ev.ADDED
EV_EXECUTED: Final = Ev.EXECUTED
EV_CANCELLED: Final = Ev.CANCELLED
EV_REPLACED: Final = Ev.REPLACED
EV_TRADING_STATE: Final = Ev.TRADING_STATE
EV_MARKET_EVENT: Final = Ev.MARKET_EVENT
EV_CROSS_EXECUTED: Final = Ev.CROSS_EXECUTED
EV_UNCROSSED: Final = Ev.UNCROSSED
EV_IMBALANCE: Final = Ev.IMBALANCE

__all__ = ["Publisher", "ChannelPublisher", "FeedDivergence", "L3_MAPPING", "L3_MESSAGES",
           "encode_l3", "packetize", "start_of_session", "end_of_session_messages", "Result",
           "SessionOpening", "session_opening", "STATE_LETTER", "CAUSE_REASON", "price_variation"]

Result = tuple[int, int, Command, list[Event]]   # (seq, ts_ns, command, events): Partition's output

# ================================================================================================
# L3: what each engine event says on the TotalView-ITCH 5.0 feed. Every event kind of the catalogue
# has a row, "nothing" included (tests/test_publisher.py checks the catalogue against it).
# ================================================================================================

L3_MAPPING: Final[dict[int, str]] = {
    Ev.ACCEPTED: "nothing: an order appears on the feed only when it rests (OrderAdded)",
    Ev.REJECTED: "nothing: a rejected command changed nothing",
    Ev.ADDED: "A Add Order (order.ref, side, shares, stock, order.price); F with order.mpid when set",
    Ev.EXECUTED: "E Order Executed on maker.ref (qty, match); C with price when price != maker.price; "
                 "nothing for the taker, which is not on the book",
    Ev.CANCELLED: "on the book: X Order Cancel (qty) when leaves > 0, D Order Delete when 0; "
                  "not on the book (IOC/FOK/market remainder, pending stop): nothing",
    Ev.REPLACED: "IN_PLACE: X for old_leaves - new_leaves (nothing when 0); REPOST: U (old.ref -> "
                 "new.ref, new_leaves, new.price); REMOVE: D old.ref (the new order's executions "
                 "and Add follow as their own events); HIDDEN (pending stop): nothing",
    Ev.STOP_TRIGGERED: "nothing: the triggered order's executions and Add are their own events",
    Ev.MASS_CANCELLED: "nothing: each cancelled order has its own OrderCancelled",
    Ev.TRADING_STATE: "H Stock Trading Action (stock, state: T continuous, Q pre-open and auctions, "
                      "H halted or closed, P paused; reason: the cause's code, CAUSE_REASON)",
    Ev.MARKET_EVENT: "S System Event (S start of system hours, Q start of market hours, M end of market "
                     "hours); a market-wide halt: W MWCB Status, breached level 1",
    Ev.CROSS_EXECUTED: "C Order Executed With Price (printable N: the cross's Q prints the volume) on the "
                       "ref of each side that is on the book (limit and stop-limit orders); a collected "
                       "market order is not on the book: nothing for it",
    Ev.UNCROSSED: "Q Cross Trade (shares, stock, cross price, match, cross type O open, C close, H "
                  "reopening); nothing crossed: shares 0, price 0, match 0",
    Ev.IMBALANCE: "I NOII (paired, imbalance, direction B/S/N/O, stock, far, near, current reference, "
                  "cross type, price variation of near against the reference)",
    Ev.LIMIT_STATE: "nothing: the limit state is the engine's; the pause it may lead to is an H",
    Ev.COLLAR: "J LULD Auction Collar (stock, reference, upper, lower, extension)",
}
#: The ITCH message types each event kind can produce (empty: nothing).
L3_MESSAGES: Final[dict[int, tuple[bytes, ...]]] = {
    Ev.ACCEPTED: (),
    Ev.REJECTED: (),
    Ev.ADDED: (b"A", b"F"),
    Ev.EXECUTED: (b"E", b"C"),
    Ev.CANCELLED: (b"X", b"D"),
    Ev.REPLACED: (b"X", b"U", b"D"),
    Ev.STOP_TRIGGERED: (),
    Ev.MASS_CANCELLED: (),
    Ev.TRADING_STATE: (b"H",),
    Ev.MARKET_EVENT: (b"S", b"W"),
    Ev.CROSS_EXECUTED: (b"C",),
    Ev.UNCROSSED: (b"Q",),
    Ev.IMBALANCE: (b"I",),
    Ev.LIMIT_STATE: (),
    Ev.COLLAR: (b"J",),
}
_SILENT: Final = frozenset(k for k, v in L3_MESSAGES.items() if not v)
_TRADING: Final = frozenset((Ev.TRADING_STATE, Ev.MARKET_EVENT, Ev.CROSS_EXECUTED, Ev.UNCROSSED, Ev.IMBALANCE,
                             Ev.COLLAR))

#: Trading state -> ITCH Stock Trading Action state.
STATE_LETTER: Final[dict[int, bytes]] = {
    TS_CLOSED: b"H", TS_PRE_OPEN: b"Q", TS_OPENING_AUCTION: b"Q", TS_CONTINUOUS: b"T", TS_HALTED: b"H",
    TS_PAUSED: b"P", TS_REOPENING_AUCTION: b"Q", TS_CLOSING_AUCTION: b"Q",
}
#: Cause of a trading state change -> ITCH Trading Action reason (NASDAQ codes).
CAUSE_REASON: Final[dict[int, bytes]] = {
    CAUSE_SCHEDULE: b"    ",   # the schedule: no reason
    CAUSE_ADMIN: b"O1  ",      # operations halt
    CAUSE_LULD: b"LUDP",       # limit up-limit down trading pause
    CAUSE_CIRCUIT: b"T5  ",    # single-stock trading pause
    CAUSE_MARKET: b"MWC1",     # market-wide circuit breaker, level 1
}
CROSS_LETTER: Final[dict[int, bytes]] = {CROSS_OPEN: b"O", CROSS_CLOSE: b"C", CROSS_REOPEN: b"H"}
IMBALANCE_LETTER: Final[dict[int, bytes]] = {IMBALANCE_NONE: b"N", IMBALANCE_BUY: b"B", IMBALANCE_SELL: b"S",
                                             IMBALANCE_NO_PRICE: b"O"}
MARKET_EVENT_CODE: Final[dict[int, bytes]] = {MARKET_SYSTEM_HOURS: b"S", MARKET_OPEN: b"Q", MARKET_CLOSE: b"M"}

_SIDE: Final = (b"B", b"S")
_fA, _hA = block_packer(itch.ADD_ORDER)
_fF, _hF = block_packer(itch.ADD_ORDER_MPID)
_fE, _hE = block_packer(itch.ORDER_EXECUTED)
_fC, _hC = block_packer(itch.ORDER_EXECUTED_WITH_PRICE)
_fX, _hX = block_packer(itch.ORDER_CANCEL)
_fD, _hD = block_packer(itch.ORDER_DELETE)
_fU, _hU = block_packer(itch.ORDER_REPLACE)
_fS, _hS = block_packer(itch.SYSTEM_EVENT)
_fR, _hR = block_packer(itch.STOCK_DIRECTORY)
_fH, _hH = block_packer(itch.STOCK_TRADING_ACTION)
_fW, _hW = block_packer(itch.MWCB_STATUS)
_fQ, _hQ = block_packer(itch.CROSS_TRADE)
_fI, _hI = block_packer(itch.NOII)
_fJ, _hJ = block_packer(itch.LULD_AUCTION_COLLAR)


def price_variation(near: int, ref: int) -> bytes:
    """NOII Price Variation Indicator: how far the near price is from the reference (' ': unknown)."""
    if not near or not ref:
        return b" "
    pct = abs(near - ref) * 100 // ref
    if pct < 1:
        return b"L"
    if pct < 10:
        return str(pct).encode()
    return b"A" if pct < 20 else b"B" if pct < 30 else b"C"


def _encode_trading(ev: Event, append: Any, ts6: bytes, stocks: Sequence[bytes], tracking: int) -> None:
    """The ITCH of a trading-state, market or auction event (rare: out of encode_l3's main loop)."""
    k = ev[0]
    if k == EV_TRADING_STATE:
        _, loc, state, cause = ev
        append(_fH(_hH, loc, tracking, ts6, stocks[loc], STATE_LETTER[state], b" ", CAUSE_REASON[cause]))
    elif k == EV_MARKET_EVENT:
        if ev[1] == MARKET_HALT:
            append(_fW(_hW, 0, tracking, ts6, b"1"))
        else:
            append(_fS(_hS, 0, tracking, ts6, MARKET_EVENT_CODE[ev[1]]))
    elif k == EV_CROSS_EXECUTED:
        qty, price, match = ev[3], ev[4], ev[5]
        for o in (ev[1], ev[2]):
            if o.ord_type == LIMIT or o.ord_type == STOP_LIMIT:
                append(_fC(_hC, o.locate, tracking, ts6, o.ref, qty, match, b"N", price))
    elif k == EV_UNCROSSED:
        _, loc, cross_type, price, qty, match = ev
        append(_fQ(_hQ, loc, tracking, ts6, qty, stocks[loc], price, match, CROSS_LETTER[cross_type]))
    elif k == EV_IMBALANCE:
        _, loc, cross_type, paired, imbalance, direction, far, near, ref = ev
        append(_fI(_hI, loc, tracking, ts6, paired, imbalance, IMBALANCE_LETTER[direction], stocks[loc],
                   far, near, ref, CROSS_LETTER[cross_type], price_variation(near, ref)))
    else:  # Ev.COLLAR
        _, loc, ref, upper, lower, extension = ev
        append(_fJ(_hJ, loc, tracking, ts6, stocks[loc], ref, upper, lower, extension))


def _mpid4(mpid: Any) -> bytes:
    raw = mpid.encode("ascii") if isinstance(mpid, str) else bytes(mpid)
    return raw.strip().ljust(4)[:4]


def encode_l3(results: Sequence[Result], out: list[bytes], midnight_ns: int, stocks: Sequence[bytes],
              tracking: int = 0) -> None:
    """Append the framed (``u16 length + message``) ITCH messages of a batch's results to ``out``.

    ``stocks[locate]`` is the 8-byte symbol. The hot path: one struct call per message, the 6-byte
    timestamp converted once per distinct ``ts_ns``.
    """
    append = out.append
    fA, fE, fX, fD = _fA, _fE, _fX, _fD
    hA, hE, hX, hD = _hA, _hE, _hX, _hD
    accepted, added, executed, cancelled = EV_ACCEPTED, EV_ADDED, EV_EXECUTED, EV_CANCELLED
    side_letter = _SIDE
    last_ts = -1
    ts6 = b""
    for _seq, ts, _cmd, events in results:
        if ts != last_ts:
            ts6 = (ts - midnight_ns).to_bytes(6, "big")
            last_ts = ts
        for ev in events:
            k = ev[0]
            if k == accepted:
                continue
            if k == added:
                o = ev[1]
                loc = o.locate
                if o.mpid:
                    append(_fF(_hF, loc, tracking, ts6, o.ref, side_letter[o.side], ev[2],
                               stocks[loc], o.price, _mpid4(o.mpid)))
                else:
                    append(fA(hA, loc, tracking, ts6, o.ref, side_letter[o.side], ev[2],
                              stocks[loc], o.price))
            elif k == executed:
                m = ev[1]
                if ev[4] == m.price:
                    append(fE(hE, m.locate, tracking, ts6, m.ref, ev[3], ev[5]))
                else:
                    append(_fC(_hC, m.locate, tracking, ts6, m.ref, ev[3], ev[5], b"Y", ev[4]))
            elif k == cancelled:
                if ev[6]:
                    o = ev[1]
                    if ev[3]:
                        append(fX(hX, o.locate, tracking, ts6, o.ref, ev[2]))
                    else:
                        append(fD(hD, o.locate, tracking, ts6, o.ref))
            elif k == EV_REPLACED:
                action = ev[6]
                old = ev[1]
                if action == REPL_IN_PLACE:
                    if ev[3] > ev[4]:
                        append(fX(hX, old.locate, tracking, ts6, old.ref, ev[3] - ev[4]))
                elif action == REPL_REPOST:
                    new = ev[2]
                    append(_fU(_hU, old.locate, tracking, ts6, old.ref, new.ref, ev[4], new.price))
                elif action == REPL_REMOVE:
                    append(fD(hD, old.locate, tracking, ts6, old.ref))
                elif action != REPL_HIDDEN:
                    raise ValueError(f"L3: replace action {action} has no feed mapping")
            elif k in _TRADING:
                _encode_trading(ev, append, ts6, stocks, tracking)
            elif k not in _SILENT:
                raise ValueError(f"L3: event kind {k} has no feed mapping (feeds.publisher.L3_MAPPING)")


class SessionOpening(NamedTuple):
    """What a feed session announces at its start besides the directory: each instrument's trading
    state, whether the system and market hours have begun, and the orders carried on the books (GTC
    orders from a previous day, or everything after a restart), in priority order."""

    states: dict[int, tuple[int, int]]      # locate -> (state, cause)
    system_hours: bool
    market_hours: bool
    orders: Sequence[Any]                   # live resting orders (catalogue.NewOrder): ref, side, leaves, price


def session_opening(engine: Any) -> SessionOpening:
    """The SessionOpening of a matching engine as it is now (for Publisher.start). With a schedule,
    the hours are as far as its day's market-wide events have gone (after its close: none, as for
    the next day's session); with none, they have begun unless every instrument is closed."""
    states = {b.locate: (b.state, b.cause) for b in engine.book_list}
    orders = [o for b in engine.book_list for side in (0, 1) for o in b.orders_in_priority(side)]
    if not engine.close_ns:
        begun = any(b.state != TS_CLOSED for b in engine.book_list)
        return SessionOpening(states, begun, begun, orders)
    return SessionOpening(states, engine.market_phase in (1, 2), engine.market_phase == 2, orders)


def start_of_session(instruments: Iterable[Instrument], ts_since_midnight: int, tracking: int = 0,
                     opening: SessionOpening | None = None,
                     directory: Mapping[int, tuple[bytes, bytes]] | None = None) -> list[bytes]:
    """Framed start-of-session messages: S 'O', R per instrument, S 'S', S 'Q', H 'T' per instrument.

    Each R carries the instrument's Market Category and LULD Reference Price Tier from ``directory``
    (FeedConfig.directory; a locate not in it: 'Q' and ' ').

    With an ``opening``: S 'S' and S 'Q' only if those hours have begun, each instrument's H with its
    state, then an A (F with an MPID) for every carried order, instrument by instrument, bids then
    asks, in priority order.
    """
    ts6 = ts_since_midnight.to_bytes(6, "big")
    ins = sorted(instruments, key=lambda i: i.locate)
    out = [_fS(_hS, 0, tracking, ts6, b"O")]
    known = directory or {}
    for i in ins:
        category, luld = known.get(i.locate, (b"Q", b" "))
        out.append(_fR(_hR, i.locate, tracking, ts6, i.stock8, category, b"N", i.round_lot, b"N", b"C",
                       b"Z ", b"P", b"N", b" ", luld, b"N", 0, b"N"))
    if opening is None or opening.system_hours:
        out.append(_fS(_hS, 0, tracking, ts6, b"S"))
    if opening is None or opening.market_hours:
        out.append(_fS(_hS, 0, tracking, ts6, b"Q"))
    for i in ins:
        state, cause = (TS_CONTINUOUS, CAUSE_SCHEDULE) if opening is None else opening.states[i.locate]
        out.append(_fH(_hH, i.locate, tracking, ts6, i.stock8, STATE_LETTER[state], b" ", CAUSE_REASON[cause]))
    if opening is not None:
        stocks = {i.locate: i.stock8 for i in ins}
        for o in opening.orders:
            if o.mpid:
                out.append(_fF(_hF, o.locate, tracking, ts6, o.ref, _SIDE[o.side], o.leaves, stocks[o.locate],
                               o.price, _mpid4(o.mpid)))
            else:
                out.append(_fA(_hA, o.locate, tracking, ts6, o.ref, _SIDE[o.side], o.leaves, stocks[o.locate],
                               o.price))
    return out


def end_of_session_messages(ts_since_midnight: int, tracking: int = 0, market_close: bool = True) -> list[bytes]:
    """Framed end-of-session System Events: M end of market hours (unless the engine's close has
    published it: market_close False), E end of system hours, C end of messages."""
    ts6 = ts_since_midnight.to_bytes(6, "big")
    codes = (b"M", b"E", b"C") if market_close else (b"E", b"C")
    return [_fS(_hS, 0, tracking, ts6, code) for code in codes]


_pack_header = HEADER.struct.pack


CHECKPOINT_FORMAT: Final = "matchwire-feed-checkpoint-1"


def checkpoint_path(store_dir: str, seq: int) -> str:
    return os.path.join(store_dir, f"CHECKPOINT-{seq:012d}.json")


def write_checkpoint(store_dir: str, ckpt: dict[str, Any], keep: int = 3) -> str:
    """Write atomically (temp file, rename; not fsynced: losing one costs replay time only) and
    keep the newest ``keep``."""
    from feeds import checkpoint as layout   # the file's typed layout (msgspec)

    path = checkpoint_path(store_dir, int(ckpt["seq"]))
    atomic_write(path, layout.encode(ckpt), durable=False)
    names = sorted(n for n in os.listdir(store_dir) if n.startswith("CHECKPOINT-") and n.endswith(".json"))
    for n in names[:-keep]:
        os.unlink(os.path.join(store_dir, n))
    return path


def read_checkpoint(store_dir: str, seq: int) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint written at ``seq`` and its path, or None and why not."""
    import msgspec

    from feeds import checkpoint as layout   # the file's typed layout (msgspec)

    path = checkpoint_path(store_dir, seq)
    try:
        with open(path, "rb") as f:
            ckpt = layout.decode(f.read())
    except FileNotFoundError:
        return None, f"no feed checkpoint at seq {seq}"
    except msgspec.ValidationError as e:
        return None, f"{path}: not a feed checkpoint ({e})"
    except (OSError, ValueError) as e:
        return None, f"{path}: unreadable ({e})"
    if ckpt["format"] != CHECKPOINT_FORMAT or ckpt["seq"] != seq:
        return None, f"{path}: not a feed checkpoint at seq {seq}"
    return ckpt, path


class FeedDivergence(Exception):
    """The regenerated feed differs from what the store says was published: a bug or another WAL."""


class ChannelPublisher:
    """One channel's MoldUDP64 session: numbering, packing, sending (A and B), storing.

    Owned by the publishing thread. ``next_seq`` is the sequence number of the next message;
    while ``skip_through`` >= it, messages are regenerated but neither sent nor stored.
    """

    __slots__ = ("name", "session", "generation", "next_seq", "skip_through", "sender", "store",
                 "max_payload", "last_send_ns", "messages", "packets", "heartbeats", "last_skipped")

    def __init__(self, name: str, session: bytes, generation: int, sender: ChannelSender,
                 store: FeedStore | None, max_payload: int) -> None:
        self.name = name
        self.session = session
        self.generation = generation
        self.sender = sender
        self.store = store
        self.max_payload = max_payload
        self.next_seq = 1
        self.skip_through = store.count if store is not None else 0
        self.last_send_ns: int | None = None
        self.messages = 0      # sent (not counting skipped regenerated ones)
        self.packets = 0
        self.heartbeats = 0
        self.last_skipped = b""

    def emit(self, framed: list[bytes], ts_ns: int, st: StageClock | None = None) -> None:
        """Number, pack, send and store a batch's framed messages (st: the stage clock, if timing)."""
        n = len(framed)
        if not n:
            return
        first = self.next_seq
        self.next_seq = first + n
        if self.skip_through >= first:
            skip = min(n, self.skip_through - first + 1)
            if first + skip - 1 == self.skip_through:
                self._check_boundary(framed[skip - 1])
            self.last_skipped = framed[skip - 1]
            if skip == n:
                return
            framed = framed[skip:]
            first += skip
        packets = packetize(self.session, first, framed, self.max_payload)
        if st is not None:
            st.lap(S_PACKETIZE)
        self.sender.send_packets(packets, ts_ns)
        if st is not None:
            st.lap(S_SEND)
        if self.store is not None:
            self.store.append_packets(packets)
            if st is not None:
                st.lap(S_STORE)
        self.last_send_ns = ts_ns
        self.messages += len(framed)
        self.packets += len(packets)

    def _check_boundary(self, framed_msg: bytes) -> None:
        """The regenerated message numbered like the store's last must be that message."""
        assert self.store is not None
        stored = self.store.read(self.skip_through, 1)
        if not stored or stored[0] != framed_msg[BLOCK_LENGTH_SIZE:]:
            raise FeedDivergence(
                f"{self.name}: regenerated message {self.skip_through} of session {self.session!r} differs "
                f"from the stored one ({framed_msg[BLOCK_LENGTH_SIZE:].hex()} != {stored[0].hex() if stored else None})")

    def heartbeat(self, now_ns: int) -> None:
        self.sender.send_packets([_pack_header(self.session, self.next_seq, 0)], now_ns)
        self.last_send_ns = now_ns
        self.heartbeats += 1

    def end_of_session(self, now_ns: int) -> None:
        self.sender.send_packets([_pack_header(self.session, self.next_seq, END_OF_SESSION_COUNT)], now_ns)
        self.last_send_ns = now_ns

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.sender.close()


class Publisher:
    """Every channel of one partition (see the module docstring). Owned by the matching thread.

    The daemon's calls, in order:
        Publisher(config, instruments, midnight_ns, transport, store_dir)
        start(ts_ns)                  start-of-session messages (after a crash: regenerated)
        replay(results)               per replayed WAL batch, from the start of the day (recovery only),
          or replay_command(seq, ts_ns, cmd, events) per replayed command
        publish(results)              per live batch, after the WAL commit
        poll(now_ns)                  when idle: heartbeats; after end_session: End of Session packets
        end_session(ts_ns)            System Events M, E, C; then poll until ``finished``
        close()
    """

    stages: StageClock | None = None    # the daemon's stage clock when stage timing is on

    def __init__(self, config: FeedConfig, instruments: Iterable[Instrument], midnight_ns: int,
                 transport: Transport, store_dir: str | None = None, *, day: str | None = None) -> None:
        self.config = config
        self.instruments = sorted(instruments, key=lambda i: i.locate)
        self.midnight_ns = midnight_ns
        self.day = day or day_of_midnight(midnight_ns)
        self.store_dir = store_dir
        self.tracking = config.tracking
        stocks: list[bytes] = [b"        "] * 0x10000
        for ins in self.instruments:
            stocks[ins.locate] = ins.stock8
        self._stocks = stocks
        self.notes: list[str] = []
        self.channels: dict[str, ChannelPublisher] = {}
        self._state: dict[str, dict[str, Any]] = {}
        for name in CHANNELS:
            if name not in config.channels:
                continue
            state = self._open_state(name)
            session = state["session"].encode("ascii")
            store = FeedStore(store_dir, session) if store_dir is not None else None
            if store is not None and store.notes:
                self.notes.extend(store.notes)
            sender = transport.channel(name, config.groups_of(name))
            self.channels[name] = ChannelPublisher(name, session, state["generation"], sender, store,
                                                   config.max_payload)
            self._state[name] = state
        self.l3 = self.channels.get(L3)
        self.l2 = self.channels.get(L2)
        self.l1 = self.channels.get(L1)
        self.tracker = DepthTracker() if (self.l2 or self.l1) else None
        self.l2_encoder = L2Encoder(self.tracker, config.depth_levels, self.tracking) if self.l2 and self.tracker else None
        self.l1_encoder = L1Encoder(self.tracker, self.tracking) if self.l1 and self.tracker else None
        self.recovering = any(ch.skip_through for ch in self.channels.values())
        self.started = False
        self.live = False
        self.replay_batch = 1024
        self._pending: list[Result] = []
        self.ending_since: int | None = None
        self.finished = False
        self._last_eos: int | None = None

    # -- session state ------------------------------------------------------------------------
    def _state_path(self, channel: str) -> str | None:
        if self.store_dir is None:
            return None
        return os.path.join(self.store_dir, f"CHANNEL-{channel}.json")

    def _open_state(self, channel: str) -> dict[str, Any]:
        """The channel's session: today's from the store directory when it can be continued."""
        fingerprint = dict(self.config.fingerprint(), midnight_ns=self.midnight_ns,
                           instruments=[[i.symbol, i.locate, i.round_lot] for i in self.instruments])
        path = self._state_path(channel)
        prev: dict[str, Any] | None = None
        if path is not None and os.path.exists(path):
            with open(path, "rb") as f:
                prev = json.loads(f.read())
        generation = 0
        if prev is not None and prev.get("day") == self.day:
            if prev.get("fingerprint") == fingerprint and not prev.get("ended"):
                return prev
            generation = int(prev["generation"]) + 1
            why = "the session ended" if prev.get("ended") else "the feed configuration changed"
            self.notes.append(f"{channel}: {why}: new session generation {generation}")
        state = {"format": "matchwire-feed-channel", "day": self.day, "channel": channel,
                 "generation": generation,
                 "session": session_for(self.day, self.config.partition, channel, generation).decode("ascii"),
                 "fingerprint": fingerprint, "start_ts_ns": None, "ended": False}
        self._write_state(channel, state)
        return state

    def _write_state(self, channel: str, state: dict[str, Any]) -> None:
        path = self._state_path(channel)
        if path is None:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # rare (session start, change, end): which session is current must survive
        atomic_write(path, json.dumps(state, indent=1, sort_keys=True).encode())

    def sessions(self) -> dict[str, bytes]:
        return {name: ch.session for name, ch in self.channels.items()}

    # -- the duty cycle -----------------------------------------------------------------------
    def start(self, ts_ns: int, opening: SessionOpening | None = None) -> None:
        """Start of session: System Event O, Stock Directory per instrument, System Events S and Q,
        Trading Action T per instrument, on every channel. After a crash the stored start time is
        used, so that the regenerated messages are the ones published.

        With ``opening`` (``session_opening(engine)`` of the engine the session starts from: a new
        day's carried GTC orders, its instruments' states), the hours and states it says, then an Add
        Order per carried order (on L2 and L1: the price levels and best prices they make). A restart
        must pass the same opening (the engine at the session's start, before any replay) for the
        regenerated messages to be those published."""
        if self.started:
            raise RuntimeError("feed: start() called twice")
        self.started = True
        touched: list[tuple[int, int, int]] = []
        if opening is not None and self.tracker is not None:
            touched = list(self.tracker.apply([(EV_ADDED, o, o.leaves) for o in opening.orders]))
        unbooked = opening._replace(orders=()) if opening is not None else None
        for name, ch in self.channels.items():
            state = self._state[name]
            if state["start_ts_ns"] is None:
                state["start_ts_ns"] = ts_ns
                self._write_state(name, state)
            start_ts = int(state["start_ts_ns"])
            since = start_ts - self.midnight_ns
            msgs = start_of_session(self.instruments, since, self.tracking, opening if name == L3 else unbooked,
                                    self.config.directory)
            if touched:
                ts6 = since.to_bytes(6, "big")
                if name == L2 and self.l2_encoder is not None:
                    self.l2_encoder.encode(touched, ts6, msgs)
                elif name == L1 and self.l1_encoder is not None:
                    self.l1_encoder.encode(touched, [], ts6, msgs)
            ch.emit(msgs, start_ts)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, seq: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The publisher's state after publishing everything through ``seq`` (JSON-ready)."""
        if not self.started or self._pending:
            raise RuntimeError("feed: checkpoint before start() or during a replay")
        ckpt: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "seq": seq, "day": self.day,
            "channels": {name: {"session": ch.session.decode("ascii"), "next_seq": ch.next_seq}
                         for name, ch in self.channels.items()},
        }
        if self.tracker is not None:
            ckpt["tracker"] = self.tracker.state()
        if self.l2_encoder is not None:
            ckpt["l2"] = self.l2_encoder.state()
        if self.l1_encoder is not None:
            ckpt["l1"] = self.l1_encoder.state()
        ckpt["extra"] = extra or {}
        return ckpt

    def resume_problem(self, ckpt: dict[str, Any]) -> str | None:
        """Why this publisher cannot resume from ``ckpt`` (None: it can)."""
        if self.started:
            return "the feed has started"
        if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("day") != self.day:
            return "another format or day"
        chans = ckpt.get("channels", {})
        if set(chans) != set(self.channels):
            return "other channels"
        for name, ch in self.channels.items():
            c = chans[name]
            if c["session"].encode("ascii") != ch.session:
                return f"{name}: session {c['session']} is not the current {ch.session.decode('ascii')}"
            if ch.store is None or ch.store.count < int(c["next_seq"]) - 1:
                return f"{name}: the store holds fewer messages than the checkpoint published"
        for part, present in (("tracker", self.tracker), ("l2", self.l2_encoder), ("l1", self.l1_encoder)):
            if (part in ckpt) != (present is not None):
                return f"{part}: the checkpoint and the configuration disagree"
        return None

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Instead of ``start``: continue from a checkpoint (``resume_problem`` said None); the
        caller then replays the commands after ``ckpt['seq']``."""
        problem = self.resume_problem(ckpt)
        if problem:
            raise ValueError(f"feed: cannot resume from the checkpoint at seq {ckpt.get('seq')}: {problem}")
        self.started = True
        for name, ch in self.channels.items():
            ch.next_seq = int(ckpt["channels"][name]["next_seq"])
            if ch.next_seq > 1 and ch.store is not None:
                last = ch.store.read(ch.next_seq - 1, 1)[0]
                ch.last_skipped = len(last).to_bytes(2, "big") + last   # framed, as emit() keeps it
        if self.tracker is not None:
            self.tracker.load(ckpt["tracker"])
        if self.l2_encoder is not None:
            self.l2_encoder.load(ckpt["l2"])
        if self.l1_encoder is not None:
            self.l1_encoder.load(ckpt["l1"])

    def replay(self, results: Sequence[Result]) -> None:
        """Regenerate the messages of a replayed WAL batch (recovery); the stored ones are not sent.

        With an empty store (a new day, or the store directory was lost) everything is published.
        """
        if self.live:
            raise RuntimeError("feed: replay() after the first publish()")
        self._encode(results)

    def replay_command(self, seq: int, ts_ns: int, cmd: Command, events: list[Event]) -> bool:
        """``replay`` one command at a time, as ``appliance.recovery.recover_state(on_command=...)``
        hands them over (its events list is reused: it is copied here). Commands are gathered into
        batches of ``replay_batch`` so that what must be sent goes in full datagrams. Returns False
        (the recovery callback's "go on")."""
        pending = self._pending
        pending.append((seq, ts_ns, cmd, list(events)))
        if len(pending) >= self.replay_batch:
            self._flush_replay()
        return False

    def _flush_replay(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self.replay(pending)

    def publish(self, results: Sequence[Result]) -> None:
        """Encode a committed batch's events on every channel, pack, send to A and B, store."""
        self._flush_replay()
        if self.recovering:
            self._go_live()
        self.live = True
        self._encode(results)

    def _encode(self, results: Sequence[Result]) -> None:
        if not self.started:
            raise RuntimeError("feed: publish before start()")
        if not results:
            return
        ts = results[-1][1]
        st = self.stages
        if self.l3 is not None:
            out: list[bytes] = []
            encode_l3(results, out, self.midnight_ns, self._stocks, self.tracking)
            if st is not None:
                st.lap(S_L3)
            self.l3.emit(out, ts, st)
        if self.tracker is not None:
            l2_out: list[bytes] = []
            l1_out: list[bytes] = []
            encode_depth(results, self.midnight_ns, self.tracker, self.l2_encoder, self.l1_encoder, l2_out, l1_out)
            if st is not None:
                st.lap(S_L2L1)
            if self.l2 is not None:
                self.l2.emit(l2_out, ts, st)
            if self.l1 is not None:
                self.l1.emit(l1_out, ts, st)

    def _go_live(self) -> None:
        """End of replay: each channel continues its session, or changes it if it cannot."""
        self.recovering = False
        for name, ch in self.channels.items():
            regenerated = ch.next_seq - 1
            if regenerated >= ch.skip_through:
                ch.skip_through = 0
                continue
            # The store holds messages the WAL no longer produces: they were published, so the
            # session cannot continue. The next generation starts with the regenerated prefix.
            assert ch.store is not None
            if regenerated:
                ch.skip_through = regenerated
                ch._check_boundary(ch.last_skipped)
            old = ch.store
            state = dict(self._state[name])
            state["generation"] = ch.generation + 1
            state["session"] = session_for(self.day, self.config.partition, name, ch.generation + 1).decode("ascii")
            session = state["session"].encode("ascii")
            new = FeedStore(self.store_dir, session)  # type: ignore[arg-type]
            for first in range(1, regenerated + 1, 65536):
                new.append_messages(old.read(first, min(65536, regenerated - first + 1)))
            old.close()
            self.notes.append(f"{name}: the store of {ch.session!r} holds {ch.skip_through} messages, the WAL "
                              f"gives {regenerated}: new session {session!r}")
            self._state[name] = state
            self._write_state(name, state)
            ch.store = new
            ch.session = session
            ch.generation += 1
            ch.skip_through = 0
            ch.last_send_ns = None   # announce the new session at the next poll

    def poll(self, now_ns: int) -> int:
        """Idle work: a heartbeat on each channel silent for ``heartbeat_ns``; while the session is
        ending, End of Session packets instead, for ``end_of_session_ns``. Returns packets sent."""
        self._flush_replay()
        if self.recovering or not self.started or self.finished:
            return 0
        sent = 0
        interval = self.config.heartbeat_ns
        if self.ending_since is not None:
            if now_ns - self.ending_since >= self.config.end_of_session_ns:
                self.finished = True
                return 0
            if self._last_eos is None or now_ns - self._last_eos >= interval:
                for ch in self.channels.values():
                    ch.end_of_session(now_ns)
                    sent += 1
                self._last_eos = now_ns
            return sent
        for ch in self.channels.values():
            if ch.last_send_ns is None or now_ns - ch.last_send_ns >= interval:
                ch.heartbeat(now_ns)
                sent += 1
        return sent

    def end_session(self, ts_ns: int, market_close: bool = True) -> None:
        """System Events M, E and C on every channel, then End of Session packets (``poll``).
        market_close False: no M (the engine's scheduled close published it)."""
        self._flush_replay()
        if self.recovering:
            self._go_live()
        if self.ending_since is not None:
            return
        for name, ch in self.channels.items():
            ch.emit(end_of_session_messages(ts_ns - self.midnight_ns, self.tracking, market_close), ts_ns)
            self._state[name]["ended"] = True
            self._write_state(name, self._state[name])
        self.ending_since = ts_ns
        self.poll(ts_ns)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: {"session": ch.session.decode("ascii"), "next_seq": ch.next_seq,
                       "messages_sent": ch.messages, "packets": ch.packets, "heartbeats": ch.heartbeats}
                for name, ch in self.channels.items()}
