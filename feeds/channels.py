"""The three market-data channels of a partition, their configuration, and the L2/L1 messages.

Every channel is its own MoldUDP64 session on its own pair of multicast groups (A and B carry
identical datagrams)::

    channel  carries                                        session name (10 alpha)
    l3       TotalView-ITCH 5.0, order by order             YYMMDD PP 3 G
    l2       ITCH framing messages + 'd' Price Level Update YYMMDD PP 2 G
    l1       ITCH framing messages + 'q' Best Bid and Offer YYMMDD PP 1 G
                                     + 't' Last Trade
             (YYMMDD: the trading day; PP: partition 00-99; 3/2/1: the channel;
              G: the generation 0-9A-Z, +1 each time the sequence cannot continue)

Our own messages keep the ITCH 5.0 header (type, stock locate, tracking number, timestamp) and
use lower-case type letters, which ITCH 5.0 does not use (its only lower-case type is 'h'). Each
carries a per-instrument sequence number: 1, 2, 3 ... per stock locate and per channel, so a
client that lost datagrams keeps every book whose next message continues its own sequence.
docs/feeds.md has the layouts as tables::

    'd' Price Level Update (33 bytes)
    +---+------+------+---------+----------+----+--------+-------------+--------+-----+
    |'d'|locate|track | ts (6)  | inst seq |side| price  | total shares| orders | end |
    | 0 |   1  |   3  |    5    | u32 @11  |@15 |u32 @16 |  u64 @20    |u32 @28 | @32 |
    +---+------+------+---------+----------+----+--------+-------------+--------+-----+

    'q' Best Bid and Offer (47 bytes)
    +---+------+------+-------+---------+--------+---------+--------+--------+---------+--------+
    |'q'|locate|track |ts (6) |inst seq |bid px  |bid shs  |bid ords|ask px  |ask shs  |ask ords|
    | 0 |   1  |   3  |   5   | u32 @11 |u32 @15 | u64 @19 |u32 @27 |u32 @31 | u64 @35 |u32 @43 |
    +---+------+------+-------+---------+--------+---------+--------+--------+---------+--------+

    't' Last Trade (40 bytes)
    +---+------+------+-------+---------+--------+--------+-------------+-----+-------------+
    |'t'|locate|track |ts (6) |inst seq | price  | shares | match number|aggr.| volume      |
    | 0 |   1  |   3  |   5   | u32 @11 |u32 @15 |u32 @19 |  u64 @23    | @31 |  u64 @32    |
    +---+------+------+-------+---------+--------+--------+-------------+-----+-------------+

L2 and L1 are derived per command (never per batch), from the engine's events by a
``DepthTracker`` kept by the publisher, so that the messages and their sequence numbers are a
pure function of the command sequence (the WAL), whatever the batching was.
"""
from __future__ import annotations

import dataclasses
import struct
import time
from bisect import bisect_left, insort
from typing import Any, Callable, Final, NamedTuple

from appliance.catalogue import (
    REPL_IN_PLACE,
    REPL_REMOVE,
    REPL_REPOST,
    Ev,
    Event,
)
from feeds import itch
# The 'd', 'q' and 't' layouts are declared in feeds/depth_layout.py, which the compiled build leaves
# interpreted (a layout is read from its class's annotations; a compiled class does not keep them).
from feeds.depth_layout import (
    BEST_BID_OFFER as BEST_BID_OFFER,
    LAST_TRADE as LAST_TRADE,
    PRICE_LEVEL_UPDATE as PRICE_LEVEL_UPDATE,
    BestBidOffer as BestBidOffer,
    LastTrade as LastTrade,
    PriceLevelUpdate as PriceLevelUpdate,
)
from feeds.layout import Buffer, Msg
from feeds.moldudp64 import BLOCK_LENGTH

# The event kinds this module's per-event code compares or builds, as module globals (one
# LOAD_GLOBAL each; Ev.X is a class attribute lookup, which CPython 3.11 does not specialize).
EV_ACCEPTED: Final = Ev.ACCEPTED
EV_ADDED: Final = Ev.ADDED
EV_EXECUTED: Final = Ev.EXECUTED
EV_CANCELLED: Final = Ev.CANCELLED
EV_REPLACED: Final = Ev.REPLACED
EV_CROSS_EXECUTED: Final = Ev.CROSS_EXECUTED
EV_UNCROSSED: Final = Ev.UNCROSSED

__all__ = [
    "L3", "L2", "L1", "CHANNELS", "CHANNEL_DIGIT", "NETWORK_TRANSPORTS", "AFXDP_MODES", "Endpoint", "ChannelGroups", "FeedConfig",
    "session_for", "channel_of_session", "day_of_midnight",
    "PriceLevelUpdate", "BestBidOffer", "LastTrade", "PRICE_LEVEL_UPDATE", "BEST_BID_OFFER",
    "LAST_TRADE", "BlockPacker", "block_packer", "OWN_LAYOUTS", "ALL_LAYOUTS", "decode_any", "DepthTracker", "L2Encoder",
    "L1Encoder", "encode_depth", "END_OF_UPDATE", "MORE_TO_COME",
]

L3: Final = "l3"
L2: Final = "l2"
L1: Final = "l1"
CHANNELS: Final = (L3, L2, L1)
CHANNEL_DIGIT: Final = {L3: "3", L2: "2", L1: "1"}
#: How a channel's datagrams reach the network (feeds/transport.py, feeds/afxdp.py): one send per
#: datagram per group, one sendmmsg per batch per group, or frames through an AF_XDP socket.
NETWORK_TRANSPORTS: Final = ("udp", "sendmmsg", "afxdp")
AFXDP_MODES: Final = ("auto", "copy", "zerocopy")
_GENERATIONS: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

Endpoint = tuple[str, int]  # (IPv4 multicast group, UDP port)


class ChannelGroups(NamedTuple):
    """The A and B multicast groups of one channel."""

    a: Endpoint
    b: Endpoint


def default_groups(partition: int) -> dict[str, ChannelGroups]:
    """Groups of a partition: 239.192.P.{31,32,33} (A) and 239.193.P.{31,32,33} (B), ports 300PL."""
    out: dict[str, ChannelGroups] = {}
    for i, ch in enumerate(CHANNELS):
        port = 30000 + partition * 10 + i + 1
        out[ch] = ChannelGroups((f"239.192.{partition}.{31 + i}", port), (f"239.193.{partition}.{31 + i}", port))
    return out


@dataclasses.dataclass
class FeedConfig:
    """What a partition publishes and where. The defaults never leave the host (127.0.0.1, TTL 0)."""

    partition: int = 1
    channels: tuple[str, ...] = CHANNELS            # which channels to publish
    groups: dict[str, ChannelGroups] | None = None  # None: default_groups(partition)
    interface: str = "127.0.0.1"                    # IP_MULTICAST_IF of every sender
    ttl: int = 0                                    # IP_MULTICAST_TTL (0: never off the host)
    dscp: int = 0                                   # IP_TOS = dscp << 2 (46 = EF)
    depth_levels: int = 10                          # L2: price levels per side
    max_payload: int = 1472                         # MoldUDP64 datagram size limit
    heartbeat_ns: int = 1_000_000_000               # idle time before a heartbeat
    end_of_session_ns: int = 3_000_000_000          # how long End of Session packets repeat
    tracking: int = 0                               # ITCH tracking number of every message
    source_port: int = 29999                        # UDP source port of frames built here (pcap, afxdp)
    transports: dict[str, str] | None = None        # channel -> NETWORK_TRANSPORTS (None: all "udp")
    afxdp_mode: str = "auto"                        # AFXDP_MODES: zero-copy tried first with "auto"
    afxdp_required: bool = False                    # True: no AF_XDP is an error, not a fallback to udp
    afxdp_queue: int = 0                            # the interface queue the AF_XDP socket binds
    # Stock Directory (R) per stock locate: (Market Category, LULD Reference Price Tier); a locate
    # not listed: b"Q" (NASDAQ Global Select) and b" " (no LULD tier).
    directory: dict[int, tuple[bytes, bytes]] = dataclasses.field(default_factory=dict)
    source_port_a: int = 0                          # UDP source port of every A sender (0: ephemeral)
    source_port_b: int = 0                          # and of every B sender

    def __post_init__(self) -> None:
        if not 0 <= self.partition <= 99:
            raise ValueError(f"feed: partition {self.partition} outside 0..99 (it is part of the session name)")
        for ch in self.channels:
            if ch not in CHANNELS:
                raise ValueError(f"feed: unknown channel {ch!r} (expected one of {CHANNELS})")
        if self.groups is None:
            self.groups = default_groups(self.partition)
        if not 1 <= self.depth_levels <= 1000:
            raise ValueError(f"feed: depth_levels {self.depth_levels} outside 1..1000")
        if not 0 <= self.ttl <= 255 or not 0 <= self.dscp <= 63:
            raise ValueError(f"feed: ttl {self.ttl} or dscp {self.dscp} out of range")
        for loc, (category, luld) in self.directory.items():
            if len(category) != 1 or len(luld) != 1:
                raise ValueError(f"feed: stock locate {loc}: market category and LULD tier are one byte each")
        if not (0 <= self.source_port_a <= 0xFFFF and 0 <= self.source_port_b <= 0xFFFF):
            raise ValueError(f"feed: source ports {self.source_port_a}, {self.source_port_b} outside 0..65535")
        if not 0 <= self.tracking <= 0xFFFF:
            raise ValueError(f"feed: tracking number {self.tracking} outside u16")
        for ch, kind in (self.transports or {}).items():
            if ch not in CHANNELS or kind not in NETWORK_TRANSPORTS:
                raise ValueError(f"feed: transport {kind!r} of channel {ch!r} (expected one of {NETWORK_TRANSPORTS})")
        if self.afxdp_mode not in AFXDP_MODES:
            raise ValueError(f"feed: afxdp_mode {self.afxdp_mode!r} (expected one of {AFXDP_MODES})")

    def transport_of(self, channel: str) -> str:
        """The network transport of a channel ("udp" unless configured)."""
        return (self.transports or {}).get(channel, "udp")

    def groups_of(self, channel: str) -> ChannelGroups:
        assert self.groups is not None
        return self.groups[channel]

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change message content: a store made under others cannot be continued."""
        return {"partition": self.partition, "depth_levels": self.depth_levels, "tracking": self.tracking}


def day_of_midnight(midnight_ns: int) -> str:
    """YYMMDD of the day that starts at ``midnight_ns`` (epoch ns of local midnight).

    Noon UTC of the local day falls on the same calendar date for every offset within +-12 h,
    so no time zone database is needed. A conversion, not a clock read.
    """
    t = time.gmtime(midnight_ns // 1_000_000_000 + 12 * 3600)
    return f"{t.tm_year % 100:02d}{t.tm_mon:02d}{t.tm_mday:02d}"


def session_for(day: str, partition: int, channel: str, generation: int) -> bytes:
    """The 10-character MoldUDP64 session of a channel: YYMMDD + PP + channel digit + generation."""
    if len(day) != 6 or not day.isdigit():
        raise ValueError(f"feed: day {day!r} is not YYMMDD")
    if not 0 <= generation < len(_GENERATIONS):
        raise ValueError(f"feed: session generation {generation} exhausted (at most {len(_GENERATIONS)} a day)")
    return f"{day}{partition:02d}{CHANNEL_DIGIT[channel]}{_GENERATIONS[generation]}".encode("ascii")


def channel_of_session(session: bytes) -> str | None:
    """The channel a session name of ours belongs to (None for another naming scheme)."""
    if len(session) != 10 or not session[:8].isdigit():
        return None
    return {b"3": L3, b"2": L2, b"1": L1}.get(session[8:9])


# ================================================================================================
# L2 / L1 messages
# ================================================================================================

END_OF_UPDATE: Final = b"Y"   # 'd'.end: the book of this instrument is consistent after this message
MORE_TO_COME: Final = b"N"

#: Our messages, keyed by type byte.
OWN_LAYOUTS: Final[dict[bytes, Msg[Any]]] = {m.type_byte: m for m in (PRICE_LEVEL_UPDATE, BEST_BID_OFFER, LAST_TRADE)}  # type: ignore[misc]
assert not OWN_LAYOUTS.keys() & itch.LAYOUTS.keys()
#: Everything any of our channels carries.
ALL_LAYOUTS: Final[dict[bytes, Msg[Any]]] = {**itch.LAYOUTS, **OWN_LAYOUTS}
_BY_ORD: list[Msg[Any] | None] = [None] * 256
for _t, _m in ALL_LAYOUTS.items():
    _BY_ORD[_t[0]] = _m


def decode_any(buf: Buffer) -> Any:
    """Decode one ITCH 5.0 or L2/L1 message; ValueError for an unknown type or a wrong length."""
    if not buf:
        raise ValueError("feed: empty message")
    layout = _BY_ORD[buf[0]]
    if layout is None:
        raise ValueError(f"feed: unknown message type {bytes(buf[:1])!r}")
    return layout.decode(buf)


class BlockPacker(NamedTuple):
    """A layout as a MoldUDP64 message block (u16 length + the message) in one struct call:
    ``pack(head, fields...)``. ``head`` is the block's first bytes, the same for every message of
    the layout (its size, then its type byte), so that no call site restates either; one 3-byte
    argument also packs faster than the two it replaces."""

    pack: Callable[..., bytes]
    head: bytes


def block_packer(layout: Msg[Any]) -> BlockPacker:
    """The BlockPacker of a layout that has a type byte (the layout's own struct, the head in front)."""
    fmt = layout.struct.format
    if layout.type_byte is None or not fmt.startswith(">c"):
        raise ValueError(f"{layout.name}: a message block needs a layout that starts with its type byte")
    head = BLOCK_LENGTH.pack(layout.size) + layout.type_byte
    return BlockPacker(struct.Struct(f">{len(head)}s" + fmt[2:]).pack, head)


_PLU: Final = block_packer(PRICE_LEVEL_UPDATE)
_BBO: Final = block_packer(BEST_BID_OFFER)
_LTR: Final = block_packer(LAST_TRADE)
_PLU_HEAD: Final = _PLU.head
_BBO_HEAD: Final = _BBO.head
_LTR_HEAD: Final = _LTR.head

_SIDE_LETTER: Final = (b"B", b"S")
_EMPTY: Final = (0, 0, 0)


# ================================================================================================
# Price levels derived from the engine's events
# ================================================================================================

class _Side:
    """One side of one instrument: price -> [total shares, orders], and the sorted prices."""

    __slots__ = ("levels", "prices")

    def __init__(self) -> None:
        self.levels: dict[int, list[int]] = {}
        self.prices: list[int] = []   # ascending; best bid is the last, best ask the first


class DepthTracker:
    """Price-level aggregates of every instrument, kept from engine events; owned by the publisher.

    ``apply(events)`` updates the levels and returns the (locate, side, price) of every level a
    command touched, in event order; the command's executions are in ``trades`` as
    (event, instrument volume after it). Both lists are reused by the next ``apply``. The books equal the engine's ``Book.depth`` after every
    command (the tests check it), but are built from events alone: they can run in the publisher
    after the engine has moved on, and in recovery from replayed events.
    """

    __slots__ = ("sides", "volume", "touched", "trades")

    def __init__(self) -> None:
        self.sides: dict[int, tuple[_Side, _Side]] = {}
        self.volume: dict[int, int] = {}
        self.touched: list[tuple[int, int, int]] = []
        self.trades: list[tuple[Event, int]] = []   # (Ev.EXECUTED, instrument volume after it)

    def _side(self, locate: int, side: int) -> _Side:
        pair = self.sides.get(locate)
        if pair is None:
            pair = self.sides[locate] = (_Side(), _Side())
        return pair[side]

    def _add(self, locate: int, side: int, price: int, shares: int) -> None:
        s = self._side(locate, side)
        lvl = s.levels.get(price)
        if lvl is None:
            s.levels[price] = [shares, 1]
            insort(s.prices, price)
        else:
            lvl[0] += shares
            lvl[1] += 1
        self.touched.append((locate, side, price))

    def _reduce(self, locate: int, side: int, price: int, shares: int, gone: bool) -> None:
        s = self._side(locate, side)
        lvl = s.levels[price]
        lvl[0] -= shares
        if gone:
            lvl[1] -= 1
        if not lvl[1]:
            if lvl[0]:
                raise AssertionError(f"level {locate}/{side}/{price}: {lvl[0]} shares and no order")
            del s.levels[price]
            prices = s.prices
            prices.pop(bisect_left(prices, price))
        self.touched.append((locate, side, price))

    def apply(self, events: list[Event]) -> list[tuple[int, int, int]]:
        """Apply one command's events; return the touched levels (the list is reused: read it now).

        Adds, cancels and executions (nearly every event) are handled inline.
        """
        touched = self.touched
        touched.clear()
        if self.trades:
            self.trades.clear()
        sides = self.sides
        for ev in events:
            k = ev[0]
            if k == EV_ACCEPTED:        # the first event of most commands: no level yet
                continue
            if k == EV_ADDED:
                o = ev[1]
                locate = o.locate
                price = o.price
                pair = sides.get(locate)
                if pair is None:
                    pair = sides[locate] = (_Side(), _Side())
                s = pair[o.side]
                lvl = s.levels.get(price)
                if lvl is None:
                    s.levels[price] = [ev[2], 1]
                    insort(s.prices, price)
                else:
                    lvl[0] += ev[2]
                    lvl[1] += 1
                touched.append((locate, o.side, price))
            elif k == EV_CANCELLED:
                if ev[6]:
                    o = ev[1]
                    self._reduce(o.locate, o.side, o.price, ev[2], not ev[3])
            elif k == EV_EXECUTED:
                m = ev[1]
                self._reduce(m.locate, m.side, m.price, ev[3], not ev[6])
                volume = self.volume.get(m.locate, 0) + ev[3]
                self.volume[m.locate] = volume
                self.trades.append((ev, volume))
            elif k == EV_REPLACED:
                action = ev[6]
                old = ev[1]
                if action == REPL_IN_PLACE:
                    if ev[3] != ev[4]:
                        self._reduce(old.locate, old.side, old.price, ev[3] - ev[4], False)
                elif action == REPL_REPOST:
                    new = ev[2]
                    self._reduce(old.locate, old.side, old.price, ev[3], True)
                    self._add(new.locate, new.side, new.price, ev[4])
                elif action == REPL_REMOVE:
                    self._reduce(old.locate, old.side, old.price, ev[3], True)
                # REPL_HIDDEN: a pending stop, not on the book
            elif k == EV_CROSS_EXECUTED:
                # an auction fill: both orders are collected; the limit ones are on the book
                for o, leaves in ((ev[1], ev[6]), (ev[2], ev[8])):
                    if o.price:
                        self._reduce(o.locate, o.side, o.price, ev[3], not leaves)
            elif k == EV_UNCROSSED and ev[4]:
                # one Last Trade for the whole cross, as the L3 Q
                volume = self.volume.get(ev[1], 0) + ev[4]
                self.volume[ev[1]] = volume
                self.trades.append((ev, volume))
        return touched

    # -- checkpoint (feeds/publisher.py: restart from a snapshot instead of the day's whole WAL) --
    def state(self) -> dict[str, Any]:
        """The levels and volumes as JSON-ready lists (prices ascending per side)."""
        return {
            "levels": [[locate, side, [[p, *pair[side].levels[p]] for p in pair[side].prices]]
                       for locate, pair in sorted(self.sides.items()) for side in (0, 1)],
            "volume": sorted([k, v] for k, v in self.volume.items()),
        }

    def load(self, state: dict[str, Any]) -> None:
        """Replace the levels and volumes with ``state()``'s."""
        self.sides = {}
        for locate, side, rows in state["levels"]:
            s = self._side(int(locate), int(side))
            s.levels = {int(p): [int(t), int(c)] for p, t, c in rows}
            s.prices = sorted(s.levels)
        self.volume = {int(k): int(v) for k, v in state["volume"]}

    def level(self, locate: int, side: int, price: int) -> list[int] | None:
        """[total, orders] of a level, or None."""
        pair = self.sides.get(locate)
        return None if pair is None else pair[side].levels.get(price)

    def depth(self, locate: int, side: int, n: int | None = None) -> list[tuple[int, int, int]]:
        """[(price, total, orders), ...] best first, as the engine's Book.depth."""
        pair = self.sides.get(locate)
        if pair is None:
            return []
        s = pair[side]
        if side == 0:
            prices = s.prices[::-1] if n is None else s.prices[:-n - 1:-1]
        else:
            prices = s.prices if n is None else s.prices[:n]
        lv = s.levels
        return [(p, lv[p][0], lv[p][1]) for p in prices]

    def best(self, locate: int, side: int) -> tuple[int, int, int]:
        """(price, total, orders) of the best level, or (0, 0, 0) for an empty side."""
        pair = self.sides.get(locate)
        if pair is None:
            return (0, 0, 0)
        s = pair[side]
        if not s.prices:
            return (0, 0, 0)
        p = s.prices[-1] if side == 0 else s.prices[0]
        lvl = s.levels[p]
        return (p, lvl[0], lvl[1])


class L2Encoder:
    """Owned by the publisher: per command, 'd' updates for the top ``levels`` levels of each touched side.

    The client's book of an instrument side is price -> (shares, orders) for the published prices;
    after each group (``end_of_update`` = 'Y' on its last message) it equals the engine's top N:
    every price whose (shares, orders) changed is sent, and a price that left the top N (emptied, or
    pushed out by better levels) is sent with shares 0 and orders 0.

    A touched level that was published and still exists changes only its own values (the set of the
    top N prices is the same): one update, no recomputation. A level created or emptied within the
    window recomputes that side's top N and sends the difference. A level strictly worse than a
    full window's worst price sends nothing.
    """

    __slots__ = ("tracker", "levels", "tracking", "published", "worst", "inst_seq", "_pack")

    def __init__(self, tracker: DepthTracker, levels: int, tracking: int = 0) -> None:
        self.tracker = tracker
        self.levels = levels
        self.tracking = tracking
        # (locate, side) -> {price: (shares, orders)} as last published, and its worst price
        self.published: dict[tuple[int, int], dict[int, tuple[int, int]]] = {}
        self.worst: dict[tuple[int, int], int] = {}
        self.inst_seq: dict[int, int] = {}
        self._pack = _PLU.pack

    def state(self) -> dict[str, Any]:
        """What was last published per instrument side, and the per-instrument sequence numbers."""
        return {
            "published": [[loc, side, self.worst.get((loc, side), 0), sorted([p, *v] for p, v in pub.items())]
                          for (loc, side), pub in sorted(self.published.items())],
            "inst_seq": sorted([k, v] for k, v in self.inst_seq.items()),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.published = {}
        self.worst = {}
        for loc, side, worst, rows in state["published"]:
            key = (int(loc), int(side))
            self.published[key] = {int(p): (int(t), int(c)) for p, t, c in rows}
            if rows:
                self.worst[key] = int(worst)
        self.inst_seq = {int(k): int(v) for k, v in state["inst_seq"]}

    def encode(self, touched: list[tuple[int, int, int]], ts6: bytes, out: list[bytes]) -> None:
        """Append the framed messages of one command (``touched`` from DepthTracker.apply)."""
        if not touched:
            return
        n = self.levels
        published = self.published
        if len(touched) == 1:
            # the common command: one level touched. Settle it here when the window keeps its prices.
            locate, side, price = touched[0]
            key = (locate, side)
            pub = published.get(key)
            if pub is not None:
                if price in pub:
                    lvl = self.tracker.sides[locate][side].levels.get(price)
                    if lvl is not None:
                        v = (lvl[0], lvl[1])
                        if pub[price] != v:
                            pub[price] = v
                            seq = self.inst_seq.get(locate, 0) + 1
                            self.inst_seq[locate] = seq
                            out.append(self._pack(_PLU_HEAD, locate, self.tracking, ts6, seq, _SIDE_LETTER[side],
                                                  price, v[0], v[1], END_OF_UPDATE))
                        return
                elif len(pub) >= n:
                    worst = self.worst[key]
                    if (side == 0 and price < worst) or (side == 1 and price > worst):
                        return
        level = self.tracker.level
        full: list[tuple[int, int]] = []
        single: list[tuple[tuple[int, int], int]] = []
        for locate, side, price in touched:
            key = (locate, side)
            if key in full:
                continue
            pub = published.get(key)
            if pub is None:
                full.append(key)
                continue
            if price in pub:
                if level(locate, side, price) is None:
                    full.append(key)          # a published level emptied: the window shifts
                else:
                    single.append((key, price))
            elif len(pub) < n:
                full.append(key)
            else:
                worst = self.worst[key]
                if (side == 0 and price > worst) or (side == 1 and price < worst):
                    full.append(key)          # a new level inside a full window
        if not full and not single:
            return
        groups: dict[int, list[tuple[int, int, int, int]]] = {}
        for key, price in single:
            if key in full:
                continue
            locate, side = key
            lvl = level(locate, side, price)
            v = (lvl[0], lvl[1])  # type: ignore[index]
            pub = published[key]
            if pub[price] != v:
                pub[price] = v
                groups.setdefault(locate, []).append((side, price, v[0], v[1]))
        depth = self.tracker.depth
        for key in full:
            locate, side = key
            top = depth(locate, side, n)
            now = {p: (t, c) for p, t, c in top}
            pub = published.get(key, {})
            changes = [(side, p, v[0], v[1]) for p, v in now.items() if pub.get(p) != v]
            changes += [(side, p, 0, 0) for p in pub if p not in now]
            if changes:
                groups.setdefault(locate, []).extend(changes)
            published[key] = now
            if top:
                self.worst[key] = top[-1][0]
        pack = self._pack
        head = _PLU_HEAD
        trk = self.tracking
        for locate, changes in groups.items():
            if len(changes) > 1:
                changes.sort(key=_best_first)
            seq = self.inst_seq.get(locate, 0)
            last = len(changes) - 1
            for i, (side, p, total, count) in enumerate(changes):
                seq += 1
                out.append(pack(head, locate, trk, ts6, seq, _SIDE_LETTER[side], p, total, count,
                                END_OF_UPDATE if i == last else MORE_TO_COME))
            self.inst_seq[locate] = seq


def _best_first(change: tuple[int, int, int, int]) -> tuple[int, int]:
    """Sort key of an update group: bids before offers, each side best price first."""
    side, price = change[0], change[1]
    return (side, -price if side == 0 else price)


class L1Encoder:
    """Owned by the publisher: per command, a 't' for each execution, then a 'q' for each touched
    instrument whose best bid or offer (price, shares, orders) changed."""

    __slots__ = ("tracker", "tracking", "published", "inst_seq", "_pack_q", "_pack_t")

    def __init__(self, tracker: DepthTracker, tracking: int = 0) -> None:
        self.tracker = tracker
        self.tracking = tracking
        self.published: dict[int, tuple[tuple[int, int, int], tuple[int, int, int]]] = {}
        self.inst_seq: dict[int, int] = {}
        self._pack_q = _BBO.pack
        self._pack_t = _LTR.pack

    def state(self) -> dict[str, Any]:
        """The best bid and offer last published per instrument, and the per-instrument sequence numbers."""
        return {
            "published": sorted([loc, *bid, *ask] for loc, (bid, ask) in self.published.items()),
            "inst_seq": sorted([k, v] for k, v in self.inst_seq.items()),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.published = {}
        for row in state["published"]:
            v = [int(x) for x in row]
            self.published[v[0]] = ((v[1], v[2], v[3]), (v[4], v[5], v[6]))
        self.inst_seq = {int(k): int(v) for k, v in state["inst_seq"]}

    def encode(self, touched: list[tuple[int, int, int]], trades: list[tuple[Event, int]], ts6: bytes,
               out: list[bytes]) -> None:
        """Append the framed messages of one command (``touched`` and ``trades`` from the tracker)."""
        if len(touched) == 1 and not trades:
            # The commonest command touches one level. Strictly behind its side's best price it
            # cannot have been the best before either (the best level was not touched): no change.
            locate, side, price = touched[0]
            prices = self.tracker.sides[locate][side].prices
            if prices and (price < prices[-1] if side == 0 else price > prices[0]):
                return
        trk = self.tracking
        inst_seq = self.inst_seq
        if trades:
            pack_t = self._pack_t
            head = _LTR_HEAD
            for ev, v in trades:
                if ev[0] == EV_UNCROSSED:  # a cross: no aggressor
                    locate = ev[1]
                    seq = inst_seq.get(locate, 0) + 1
                    inst_seq[locate] = seq
                    out.append(pack_t(head, locate, trk, ts6, seq, ev[3], min(ev[4], 0xFFFF_FFFF), ev[5], b" ", v))
                    continue
                locate = ev[1].locate
                seq = inst_seq.get(locate, 0) + 1
                inst_seq[locate] = seq
                out.append(pack_t(head, locate, trk, ts6, seq, ev[4], ev[3], ev[5],
                                  _SIDE_LETTER[ev[2].side], v))
        if not touched:
            return
        sides = self.tracker.sides
        prev_locate = -1
        for locate, _side, _price in touched:
            if locate != prev_locate:
                prev_locate = locate
                self.quote(locate, sides[locate], ts6, out)

    def quote(self, locate: int, pair: tuple[_Side, _Side], ts6: bytes, out: list[bytes]) -> None:
        """Append a 'q' for the instrument (``pair``: its bid and ask sides) if its best bid or
        offer changed since the last one published."""
        bids, asks = pair
        bp = bids.prices
        ap = asks.prices
        if bp:
            p = bp[-1]
            lvl = bids.levels[p]
            bid = (p, lvl[0], lvl[1])
        else:
            bid = _EMPTY
        if ap:
            p = ap[0]
            lvl = asks.levels[p]
            ask = (p, lvl[0], lvl[1])
        else:
            ask = _EMPTY
        bbo = (bid, ask)
        published = self.published
        if published.get(locate) == bbo:
            return
        published[locate] = bbo
        seq = self.inst_seq.get(locate, 0) + 1
        self.inst_seq[locate] = seq
        out.append(self._pack_q(_BBO_HEAD, locate, self.tracking, ts6, seq, bid[0], bid[1], bid[2],
                                ask[0], ask[1], ask[2]))


def encode_depth(results: Any, midnight_ns: int, tracker: DepthTracker, l2: L2Encoder | None,
                 l1: L1Encoder | None, l2_out: list[bytes], l1_out: list[bytes]) -> None:
    """Append the framed L2 and L1 messages of a batch's results (``(seq, ts_ns, command, events)``
    each) to ``l2_out`` and ``l1_out``: per command, what ``tracker.apply(events)`` then
    ``l2.encode`` and ``l1.encode`` give, byte for byte.

    Most commands touch one price level: a new order that rests (ACCEPTED, ADDED), the cancel of
    a resting order (CANCELLED), an order that fills against one price level (ACCEPTED, then
    EXECUTED on makers at one price). For those this loop updates the level itself, sends the
    'd' itself when the L2 window keeps its prices (the level was and stays published: one 'd';
    it lies behind a full window: none), and the 't' of each fill; the 'q' only when the level is
    (or was) at the best price. Everything else goes through the general code, per command.
    """
    sides = tracker.sides
    volumes = tracker.volume
    apply = tracker.apply
    if l2 is not None:
        l2_published, l2_worst, l2_seq = l2.published, l2.worst, l2.inst_seq
        window, pack_d, l2_trk = l2.levels, l2._pack, l2.tracking
    if l1 is not None:
        l1_seq, pack_t, l1_trk = l1.inst_seq, l1._pack_t, l1.tracking
    last_ts = -1
    ts6 = b""
    for _seq, cts, _cmd, events in results:
        if cts != last_ts:
            ts6 = (cts - midnight_ns).to_bytes(6, "big")
            last_ts = cts
        # -- the commonest shapes: one level (locate, side, price), updated here ---------------
        n_ev = len(events)
        first = events[0][0] if n_ev else 0
        if n_ev == 2 and first == EV_ACCEPTED and events[1][0] == EV_ADDED:
            ev = events[1]
            o = ev[1]
            locate, side, price = o.locate, o.side, o.price
            pair = sides.get(locate)
            if pair is None:
                pair = sides[locate] = (_Side(), _Side())
            s = pair[side]
            lvl = s.levels.get(price)
            if lvl is None:
                s.levels[price] = lvl = [ev[2], 1]
                insort(s.prices, price)
            else:
                lvl[0] += ev[2]
                lvl[1] += 1
        elif n_ev == 1 and first == EV_CANCELLED and events[0][6]:
            ev = events[0]
            o = ev[1]
            locate, side, price = o.locate, o.side, o.price
            pair = sides[locate]
            s = pair[side]
            lvl = s.levels[price]
            lvl[0] -= ev[2]
            if not ev[3]:
                lvl[1] -= 1
        elif first == EV_ACCEPTED and n_ev > 1 and events[1][0] == EV_EXECUTED \
                and _fills_at_one_level(events):
            m = events[1][1]
            locate, side, price = m.locate, m.side, m.price
            pair = sides[locate]
            s = pair[side]
            lvl = s.levels[price]
            volume = volumes.get(locate, 0)
            for i in range(1, n_ev):
                ev = events[i]
                lvl[0] -= ev[3]
                if not ev[6]:
                    lvl[1] -= 1
                volume += ev[3]
                if l1 is not None:   # 't' Last Trade: price, shares, match, aggressor, volume
                    seq = l1_seq.get(locate, 0) + 1
                    l1_seq[locate] = seq
                    l1_out.append(pack_t(_LTR_HEAD, locate, l1_trk, ts6, seq, ev[4], ev[3], ev[5],
                                         _SIDE_LETTER[ev[2].side], volume))
            volumes[locate] = volume
        else:
            # -- anything else: the general code ----------------------------------------------
            touched = apply(events)
            trades = tracker.trades
            if touched or trades:
                if l2 is not None:
                    l2.encode(touched, ts6, l2_out)
                if l1 is not None:
                    l1.encode(touched, trades, ts6, l1_out)
            continue
        if lvl[1] <= 0:                                     # the level's last order left it
            if lvl[1] or lvl[0]:
                raise AssertionError(f"level {locate}/{side}/{price}: {lvl[0]} shares and {lvl[1]} orders")
            del s.levels[price]
            s.prices.pop(bisect_left(s.prices, price))
            lvl = None
        # -- L2: settled here when the window keeps its prices ----------------------------------
        if l2 is not None:
            key = (locate, side)
            pub = l2_published.get(key)
            if pub is None:
                l2.encode([(locate, side, price)], ts6, l2_out)
            elif price in pub:
                if lvl is None:                             # a published level emptied: the window shifts
                    l2.encode([(locate, side, price)], ts6, l2_out)
                else:
                    v = (lvl[0], lvl[1])
                    if pub[price] != v:
                        pub[price] = v
                        seq = l2_seq.get(locate, 0) + 1
                        l2_seq[locate] = seq
                        l2_out.append(pack_d(_PLU_HEAD, locate, l2_trk, ts6, seq, _SIDE_LETTER[side], price,
                                             v[0], v[1], END_OF_UPDATE))
            elif len(pub) < window or (price > l2_worst[key] if side == 0 else price < l2_worst[key]):
                l2.encode([(locate, side, price)], ts6, l2_out)   # a new level inside the window
            # else: a level behind a full window: nothing
        # -- L1: a level strictly behind its side's best was not the best before either ----------
        if l1 is not None:
            prices = s.prices
            if not prices or (price >= prices[-1] if side == 0 else price <= prices[0]):
                l1.quote(locate, pair, ts6, l1_out)   # at (or was at) the best: a 'q' if it changed


def _fills_at_one_level(events: list[Event]) -> bool:
    """After events[0]: only executions, all against makers at one price level."""
    m = events[1][1]
    locate, side, price = m.locate, m.side, m.price
    for i in range(2, len(events)):
        ev = events[i]
        if ev[0] != EV_EXECUTED:
            return False
        m = ev[1]
        if m.price != price or m.side != side or m.locate != locate:
            return False
    return True
