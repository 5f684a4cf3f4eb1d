"""GLIMPSE-style snapshots (SoupBinTCP), built from a subscriber's books: L3, and the same for L2 and L1.

A snapshot session is a SoupBinTCP session whose Sequenced Data packets (numbered from 1) carry the
book of one feed session as it stood after message N-1, then End of Snapshot, then End of Session::

    L3 (ITCH 5.0)   System Event (the latest one seen)
                    per instrument, ascending stock locate:
                      Stock Directory, Stock Trading Action (as last published),
                      one Add Order per resting order: bids best price first, then asks best
                      price first, time priority within a price; 'F' with the MPID for orders
                      that came as 'F'. The engine's order references; the timestamp of message N-1.
    L2              System Event; per instrument: Stock Directory, Trading Action, one 'd' Price
                    Level Update per level (bids best first, then asks), End of Update 'N' but
                    'Y' on the instrument's last; Instrument Sequence Number = the instrument's
                    last one, so the live feed continues it. An instrument with a sequence number
                    and no level gets one 'd' (side B, price 0, shares 0, orders 0, 'Y').
    L1              System Event; per instrument: Stock Directory, Trading Action, the last 't'
                    Last Trade and 'q' Best Bid and Offer as published (by instrument sequence).
    End of Snapshot 'G' + 20 ASCII digits (zero-padded): N, the MoldUDP64 sequence number from
                    which the multicast feed continues the snapshot.

The server is a subscriber of the feed (retransmit/snapshot_server.py): it builds a snapshot
between two datagrams, when its receiver has delivered exactly messages 1..N-1 and nothing is
missing, so the snapshot and N agree. ``ReferenceSink`` keeps what the books do not: the raw
System Event, Stock Directory, Trading Action, the MPIDs of 'F' orders, the last 'q' and 't', and
the timestamp of the last message.
"""
from __future__ import annotations

import struct
from operator import itemgetter
from typing import Any, Final

from feeds import itch
from feeds.books import L1Book, L2Book, L3Book
from feeds.channels import BEST_BID_OFFER, L1, L2, L3, LAST_TRADE, PRICE_LEVEL_UPDATE
from feeds.layout import Buffer, Msg
from feeds.moldudp64 import BLOCK_LENGTH_SIZE
from feeds.soupbintcp import SEQUENCED_DATA, TYPE_SIZE, FrameParser

__all__ = ["END_OF_SNAPSHOT", "encode_end_of_snapshot", "parse_end_of_snapshot", "ReferenceSink",
           "build_l3_snapshot", "build_l2_snapshot", "build_l1_snapshot", "build_snapshot",
           "SnapshotStream", "soup_messages"]

END_OF_SNAPSHOT: Final = b"G"
_SIDE: Final = (b"B", b"S")


def _soup_packer(layout: Msg[Any]) -> tuple[Any, bytes]:
    """``(pack, head)``: ``pack(head, fields...)`` is a Sequenced Data packet of the layout's message
    in one struct call; ``head`` (the packet's length, 'S' and the message's type byte) is derived
    from the layout, the same for every message."""
    assert layout.type_byte is not None and layout.struct.format.startswith(">c")
    head = _SEQ_HEAD.pack(TYPE_SIZE + layout.size, SEQUENCED_DATA) + layout.type_byte
    return struct.Struct(f">{len(head)}s" + layout.struct.format[2:]).pack, head


_SEQ_HEAD: Final = struct.Struct(">Hc")
_sA, _hA = _soup_packer(itch.ADD_ORDER)
_sF, _hF = _soup_packer(itch.ADD_ORDER_MPID)
_sd, _hd = _soup_packer(PRICE_LEVEL_UPDATE)
# Where the fields the reference sink reads sit in their messages (block payload offsets).
_F_REF: Final = itch.ADD_ORDER_MPID.fields[itch.ADD_ORDER_MPID.names.index("order_ref")]
_F_MPID: Final = itch.ADD_ORDER_MPID.fields[itch.ADD_ORDER_MPID.names.index("attribution")]
_U_OLD: Final = itch.ORDER_REPLACE.fields[itch.ORDER_REPLACE.names.index("original_order_ref")]
_U_NEW: Final = itch.ORDER_REPLACE.fields[itch.ORDER_REPLACE.names.index("new_order_ref")]
_R_STOCK: Final = itch.STOCK_DIRECTORY.fields[itch.STOCK_DIRECTORY.names.index("stock")]
# the instrument sequence number: at the same place in 'q' and 't'
_ISEQ: Final = BEST_BID_OFFER.fields[BEST_BID_OFFER.names.index("instrument_seq")]
assert LAST_TRADE.fields[LAST_TRADE.names.index("instrument_seq")] == _ISEQ


def encode_end_of_snapshot(next_seq: int) -> bytes:
    """'G' + the sequence number (20 ASCII digits, zero-padded) the feed continues from."""
    if not 0 < next_seq < 10**20:
        raise ValueError(f"End of Snapshot: sequence {next_seq} outside 1..10**20-1")
    return END_OF_SNAPSHOT + b"%020d" % next_seq


def parse_end_of_snapshot(message: Buffer) -> int:
    """The sequence number of an End of Snapshot message; ValueError if it is not one."""
    raw = bytes(message)
    digits = raw[1:].strip(b" ")
    if len(raw) != 21 or raw[:1] != END_OF_SNAPSHOT or not digits.isdigit():
        raise ValueError(f"not an End of Snapshot message: {raw[:32]!r}")
    return int(digits)


def _seq_packet(message: bytes) -> bytes:
    return _SEQ_HEAD.pack(len(message) + 1, b"S") + message


def soup_messages(packets: bytes) -> list[bytes]:
    """The payloads of back-to-back SoupBinTCP packets (tests, tools)."""
    return [p.payload for p in FrameParser().feed(packets)]


class ReferenceSink:
    """Owned by the thread that runs its receiver: what a snapshot needs besides the book.

    A sink placed after the book on the same ChannelReceiver: the latest System Event, each
    instrument's Stock Directory and Trading Action (raw bytes), the MPID of each 'F' order (moved
    by 'U' to the new reference), the last 'q' and 't' per instrument (L1), and the timestamp of the
    last message applied.
    """

    def __init__(self) -> None:
        self.system_event: bytes | None = None
        self.directory: dict[int, bytes] = {}     # locate -> its last Stock Directory
        self.trading: dict[int, bytes] = {}       # locate -> its last Stock Trading Action
        self.mpids: dict[int, bytes] = {}         # order ref -> MPID of an 'F' order
        self.bbo: dict[int, bytes] = {}           # locate -> its last 'q'
        self.trade: dict[int, bytes] = {}         # locate -> its last 't'
        self.last_ts6 = b"\x00" * 6                # the timestamp of the last message applied
        self.tracking = 0                          # the tracking number of the System Event

    def apply_blocks(self, buf: Buffer, pos: int, count: int, first_seq: int = 0) -> int:
        last = -1
        lb = BLOCK_LENGTH_SIZE
        for _ in range(count):
            p = pos + lb
            pos = p + ((buf[pos] << 8) | buf[pos + 1])
            last = p
            t = buf[p]
            if t < 97:                          # upper case: ITCH
                if t == 70:                     # F
                    self.mpids[int.from_bytes(buf[p + _F_REF.offset:p + _F_REF.offset + _F_REF.size], "big")] = bytes(
                        buf[p + _F_MPID.offset:p + _F_MPID.offset + _F_MPID.size])
                elif t == 85:                   # U: the MPID follows the order to its new reference
                    if self.mpids:
                        mpid = self.mpids.pop(
                            int.from_bytes(buf[p + _U_OLD.offset:p + _U_OLD.offset + _U_OLD.size], "big"), None)
                        if mpid is not None:
                            self.mpids[int.from_bytes(buf[p + _U_NEW.offset:p + _U_NEW.offset + _U_NEW.size], "big")] = mpid
                elif t == 83 or t == 82 or t == 72:   # S, R, H
                    raw = bytes(buf[p:pos])
                    if t == 83:
                        self.system_event = raw
                        self.tracking = (raw[3] << 8) | raw[4]
                    elif t == 82:
                        self.directory[(raw[1] << 8) | raw[2]] = raw
                    else:
                        self.trading[(raw[1] << 8) | raw[2]] = raw
            elif t == 113:                      # q
                self.bbo[(buf[p + 1] << 8) | buf[p + 2]] = bytes(buf[p:pos])
            elif t == 116:                      # t
                self.trade[(buf[p + 1] << 8) | buf[p + 2]] = bytes(buf[p:pos])
        if last >= 0:
            self.last_ts6 = bytes(buf[last + itch.TIMESTAMP_AT:last + itch.HEADER_SIZE])
        return pos

    def on_gap(self, first_seq: int, count: int) -> None:
        pass

    def on_filled(self) -> None:
        pass

    def reset(self) -> None:
        self.system_event = None
        for table in (self.directory, self.trading, self.mpids, self.bbo, self.trade):
            table.clear()
        self.last_ts6 = b"\x00" * 6
        self.tracking = 0

    def forget_mpids(self, live: dict[int, Any]) -> None:
        """Drop MPIDs of orders no longer on the book (they are kept until a snapshot is built)."""
        if len(self.mpids) > 2 * len(live) + 1024:
            self.mpids = {ref: m for ref, m in self.mpids.items() if ref in live}

    def header(self, out: list[bytes], locates: set[int]) -> None:
        """Append the System Event; add the instruments with reference data to ``locates``."""
        if self.system_event is not None:
            out.append(_seq_packet(self.system_event))
        locates.update(self.directory, self.trading)

    def instrument(self, out: list[bytes], locate: int) -> int:
        """Append an instrument's Stock Directory and Trading Action; return how many."""
        n = 0
        for table in (self.directory, self.trading):
            raw = table.get(locate)
            if raw is not None:
                out.append(_seq_packet(raw))
                n += 1
        return n


def _stock(ref: ReferenceSink, book_symbols: dict[int, str], locate: int) -> bytes:
    raw = ref.directory.get(locate)
    if raw is not None:
        return raw[_R_STOCK.offset:_R_STOCK.offset + _R_STOCK.size]
    return itch.stock8(book_symbols.get(locate, ""))


def build_l3_snapshot(book: L3Book, ref: ReferenceSink, next_seq: int) -> tuple[bytes, int]:
    """The L3 snapshot as Sequenced Data packets (End of Snapshot included) and their count."""
    # (locate, side) -> [(price, ref, shares)] in arrival order, which is time priority within a price
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for oref, (shares, lvl) in book.orders.items():
        key = (lvl[4], lvl[5])
        lst = groups.get(key)
        if lst is None:
            lst = groups[key] = []
        lst.append((lvl[2], oref, shares))
    ref.forget_mpids(book.orders)
    out: list[bytes] = []
    locates: set[int] = {loc for loc, _ in groups}
    ref.header(out, locates)
    n = len(out)
    ts6 = ref.last_ts6
    tracking = ref.tracking
    mpids = ref.mpids
    by_price = itemgetter(0)
    for loc in sorted(locates):
        n += ref.instrument(out, loc)
        stock = _stock(ref, book.directory.symbols, loc)
        for side in (0, 1):
            orders = groups.get((loc, side))
            if not orders:
                continue
            orders.sort(key=by_price, reverse=side == 0)     # stable: time priority kept
            letter = _SIDE[side]
            if mpids:
                for price, oref, shares in orders:
                    mpid = mpids.get(oref)
                    if mpid is None:
                        out.append(_sA(_hA, loc, tracking, ts6, oref, letter, shares, stock, price))
                    else:
                        out.append(_sF(_hF, loc, tracking, ts6, oref, letter, shares, stock, price, mpid))
            else:
                out.extend([_sA(_hA, loc, tracking, ts6, oref, letter, shares, stock, price)
                            for price, oref, shares in orders])
            n += len(orders)
    out.append(_seq_packet(encode_end_of_snapshot(next_seq)))
    return b"".join(out), n + 1


def build_l2_snapshot(book: L2Book, ref: ReferenceSink, next_seq: int) -> tuple[bytes, int]:
    """The L2 depth snapshot as Sequenced Data packets (End of Snapshot included) and their count."""
    out: list[bytes] = []
    last_seq = book.seqs.last
    locates: set[int] = set(last_seq)
    ref.header(out, locates)
    n = len(out)
    ts6 = ref.last_ts6
    tracking = ref.tracking
    for loc in sorted(locates):
        n += ref.instrument(out, loc)
        iseq = last_seq.get(loc)
        if iseq is None:
            continue
        levels: list[tuple[int, int, int, int]] = []
        pair = book.levels.get(loc)
        if pair is not None:
            for side in (0, 1):
                lv = pair[side]
                for price in sorted(lv, reverse=side == 0):
                    shares, orders = lv[price]
                    levels.append((side, price, shares, orders))
        if not levels:
            levels.append((0, 0, 0, 0))
        last = len(levels) - 1
        for i, (side, price, shares, orders) in enumerate(levels):
            out.append(_sd(_hd, loc, tracking, ts6, iseq, _SIDE[side], price, shares, orders,
                           b"Y" if i == last else b"N"))
        n += len(levels)
    out.append(_seq_packet(encode_end_of_snapshot(next_seq)))
    return b"".join(out), n + 1


def build_l1_snapshot(book: L1Book, ref: ReferenceSink, next_seq: int) -> tuple[bytes, int]:
    """The L1 snapshot (last 't' and 'q' per instrument) as Sequenced Data packets and their count."""
    out: list[bytes] = []
    locates: set[int] = set(ref.bbo) | set(ref.trade)
    ref.header(out, locates)
    n = len(out)
    for loc in sorted(locates):
        n += ref.instrument(out, loc)
        msgs = [m for m in (ref.trade.get(loc), ref.bbo.get(loc)) if m is not None]
        msgs.sort(key=lambda m: m[_ISEQ.offset:_ISEQ.offset + _ISEQ.size])   # instrument seq, big-endian
        for m in msgs:
            out.append(_seq_packet(m))
        n += len(msgs)
    out.append(_seq_packet(encode_end_of_snapshot(next_seq)))
    return b"".join(out), n + 1


def build_snapshot(channel: str, book: Any, ref: ReferenceSink, next_seq: int) -> tuple[bytes, int]:
    """The snapshot of one channel's book: Sequenced Data packets and their count."""
    if channel == L3:
        return build_l3_snapshot(book, ref, next_seq)
    if channel == L2:
        return build_l2_snapshot(book, ref, next_seq)
    if channel == L1:
        return build_l1_snapshot(book, ref, next_seq)
    raise ValueError(f"snapshot: unknown channel {channel!r}")


class SnapshotStream:
    """Owned by the server's event-loop thread: a built snapshot, handed out as the socket takes it."""

    __slots__ = ("session", "next_seq", "finished", "data", "pos", "messages")

    def __init__(self, session: bytes, data: bytes, messages: int) -> None:
        self.session = session
        self.next_seq = 1
        self.data = data
        self.pos = 0
        self.messages = messages
        self.finished = not data

    def produce(self, now_ns: int, max_bytes: int) -> bytes:
        data, pos = self.data, self.pos
        if pos >= len(data):
            self.finished = True
            return b""
        end = min(len(data), pos + max_bytes)
        self.pos = end
        if end >= len(data):
            self.finished = True
        return data[pos:end] if pos or end < len(data) else data

    def close(self) -> None:
        self.data = b""
