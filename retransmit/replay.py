"""TCP replay (SoupBinTCP): Sequenced Data packets read from the feed stores, then live or End of Session.

A client logs in with the server's username and password, a session (blank: the current L3 session
of the first store directory) and the sequence number it wants next. The Login Accepted carries the
sequence number of the first Sequenced Data packet that follows:

    requested 0                     -> the next new message (store count + 1): live only
    requested 1 .. count + 1        -> that message
    requested past count + 1        -> count + 1 (SoupBinTCP: the server starts at its next message)
    requested <= count - retain     -> Login Rejected 'S' (purged; only with retain_messages)
    unknown session                 -> Login Rejected 'S'

Then messages are streamed from the store, which is tailed (a store that grows while it is served
is followed). Without a Debug ``REPLAY-ONLY`` packet before the login the stream continues live
for as long as the client stays. With ``REPLAY-ONLY n`` it ends with End of Session ('Z') after n
messages (waiting for the publisher to store them if need be); with ``REPLAY-ONLY`` alone, after
the last message the store held at login.
"""
from __future__ import annotations

import struct
from typing import Final

from feeds.layout import alpha
from feeds.moldudp64 import BLOCK_LENGTH_SIZE
from feeds.soupbintcp import REJECT_SESSION_NOT_AVAILABLE, SEQUENCED_DATA, TYPE_SIZE, LoginRequest
from feeds.store import FeedStore
from retransmit.stores import StoreSet

__all__ = ["ReplayStream", "ReplaySource", "blocks_to_sequenced"]

_SEQ_HEAD: Final = struct.Struct(">Hc")
#: The Sequenced Data packet header of each message length that fits a MoldUDP64 datagram.
_HEADS: Final = [_SEQ_HEAD.pack(TYPE_SIZE + n, SEQUENCED_DATA) for n in range(2048)]


def blocks_to_sequenced(raw: bytes) -> bytes:
    """Stored ``u16 length + message`` blocks -> SoupBinTCP Sequenced Data packets
    (``u16 length + 1``, ``'S'``, message), one per block."""
    out = bytearray()
    heads = _HEADS
    mv = memoryview(raw)
    pos, end = 0, len(raw)
    while pos < end:
        n = (raw[pos] << 8) | raw[pos + 1]
        p = pos + BLOCK_LENGTH_SIZE
        out += heads[n] if n < 2048 else _SEQ_HEAD.pack(TYPE_SIZE + n, SEQUENCED_DATA)
        pos = p + n
        out += mv[p:pos]
    return bytes(out)


class ReplayStream:
    """Owned by the server's event-loop thread: messages of one stored session from ``next_seq``
    up to ``end`` (exclusive; None: live, for ever)."""

    __slots__ = ("stores", "store", "session", "next_seq", "end", "finished", "messages")

    def __init__(self, stores: StoreSet, store: FeedStore, session: bytes, first: int, end: int | None) -> None:
        self.stores = stores
        self.store = store
        self.session = session
        self.next_seq = first
        self.end = end
        self.finished = end is not None and first >= end
        self.messages = 0

    def produce(self, now_ns: int, max_bytes: int) -> bytes:
        out: list[bytes] = []
        size = 0
        end = self.end
        while size < max_bytes:
            nxt = self.next_seq
            if end is not None and nxt >= end:
                self.finished = True
                break
            held = self.store.count
            if nxt > held:
                held = self.stores.available(self.store, nxt)
                if nxt > held:
                    break                     # caught up with the publisher
            n = min(held - nxt + 1, max(1, (max_bytes - size) // 24))
            if end is not None:
                n = min(n, end - nxt)
            data = blocks_to_sequenced(self.store.read_raw(nxt, n))
            out.append(data)
            size += len(data)
            self.next_seq = nxt + n
            self.messages += n
        if end is not None and self.next_seq >= end:
            self.finished = True
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        pass      # the store stays open in the StoreSet for the next client


class ReplaySource:
    """Owned by the server's event-loop thread: opens a ReplayStream per login (see the module doc)."""

    def __init__(self, stores: StoreSet, *, retain_messages: int = 0, default_channel: str = "l3") -> None:
        self.stores = stores
        self.retain_messages = retain_messages
        self.default_channel = default_channel
        self.counters = {"replay_only": 0, "live": 0, "unknown_session": 0, "purged": 0}

    def open_stream(self, request: LoginRequest, replay_only: int | None, now_ns: int) -> ReplayStream | bytes | None:
        c = self.counters
        if request.session:
            try:
                session: bytes | None = alpha(request.session, 10)
            except (ValueError, UnicodeEncodeError):
                session = None
        else:
            session = self.stores.current(self.default_channel)
        store = self.stores.get(session, now_ns) if session is not None else None
        if store is None or session is None:
            c["unknown_session"] += 1
            return REJECT_SESSION_NOT_AVAILABLE
        held = self.stores.available(store, store.count + 1)
        first = request.sequence
        if first == 0 or first > held + 1:
            first = held + 1
        if self.retain_messages and first <= held - self.retain_messages:
            c["purged"] += 1
            return REJECT_SESSION_NOT_AVAILABLE
        if replay_only is None:
            c["live"] += 1
            end = None
        else:
            c["replay_only"] += 1
            end = first + replay_only if replay_only else held + 1
        return ReplayStream(self.stores, store, session, first, end)
