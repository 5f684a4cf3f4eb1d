"""The MoldUDP64 re-request server: a sans-IO core that answers from the feed stores, and a UDP shell.

Request (client -> server, one UDP datagram of exactly 20 bytes)::

    +-------------------+-------------------+-------+
    |      session      | first seq wanted  | count |
    |     10 alpha      |       u64         |  u16  |
    +-------------------+-------------------+-------+

The answer is ordinary downstream MoldUDP64 packets (at most ``max_payload`` bytes each) sent to
the requester's address and port, carrying messages ``first`` .. ``first + n - 1`` of the session,
where ``n`` is what the checks below leave. Every request ends in exactly one of the outcomes
counted in ``RerequestCore.counters`` (docs/retransmit.md has the table):

    malformed          not 20 bytes, count 0 or 0xFFFF, sequence 0       nothing
    unknown_session    no store holds the session (or the name is not    nothing
                       letters and digits)
    purged             first < the oldest message kept (retain_messages) nothing
    not_yet_published  first past the last stored message               nothing
    quota_refused      the client's quota is used up now                 nothing
    answered           what is left after clipping by these rules (each counted too):
      partial            the range runs past the last stored message     what exists
      clipped            count > max_count                                the first max_count
      clipped_bytes      the messages take more than max_bytes            the first that fit (one at
                         (length prefixes included)                       least)
      over_quota         more than the client's quota allows now          what the quota allows
                         (also counted when that is nothing: quota_refused)

The core reads no clock: ``handle(datagram, client, now_ns)`` returns the datagrams to send back.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any, Callable

from feeds.batchsend import BatchSender
from feeds.moldudp64 import (
    BLOCK_LENGTH_SIZE,
    DEFAULT_MAX_PAYLOAD,
    END_OF_SESSION_COUNT,
    HEADER,
    HEADER_SIZE,
    MAX_UDP_PAYLOAD,
    MIN_PAYLOAD,
    REREQUEST_SIZE,
)
from retransmit.quota import ClientQuotas
from retransmit.stores import StoreSet

__all__ = ["RerequestCore", "RerequestServer", "pack_datagrams", "DEFAULT_MAX_COUNT", "DEFAULT_MAX_BYTES",
           "OUTCOMES", "clip_blocks"]

#: The largest count answered per request (a larger one is clipped to it).
DEFAULT_MAX_COUNT = 4096
#: The most message bytes (each with its u16 length) answered per request: a 20-byte request
#: makes at most about this much traffic (plus a 20-byte header per datagram), whatever it asks.
DEFAULT_MAX_BYTES = 16384

#: Every counter of the core, in the order of docs/retransmit.md.
OUTCOMES = ("requests", "malformed", "unknown_session", "purged", "not_yet_published", "quota_refused",
            "answered", "partial", "clipped", "clipped_bytes", "over_quota", "quota_refused_messages", "messages", "datagrams",
            "send_errors")

_pack_header = HEADER.struct.pack
_REQUEST = struct.Struct(">10sQH")
_unpack_request = _REQUEST.unpack


def pack_datagrams(session: bytes, first: int, raw: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[bytes]:
    """Cut stored ``u16 length + message`` blocks into MoldUDP64 datagrams of at most
    ``max_payload`` bytes (a single block larger than that goes alone)."""
    room = max_payload - HEADER_SIZE
    out: list[bytes] = []
    pos, end, seq = 0, len(raw), first
    while pos < end:
        start = pos
        n = 0
        while pos < end and n < END_OF_SESSION_COUNT - 1:
            size = BLOCK_LENGTH_SIZE + ((raw[pos] << 8) | raw[pos + 1])
            if n and pos + size - start > room:
                break
            pos += size
            n += 1
        out.append(_pack_header(session, seq, n) + raw[start:pos])
        seq += n
    return out


def clip_blocks(raw: bytes, max_bytes: int) -> tuple[bytes, int]:
    """The longest prefix of whole ``u16 length + message`` blocks of ``raw`` within ``max_bytes``
    (at least one block), and how many blocks it holds."""
    pos, end, n = 0, len(raw), 0
    while pos < end:
        size = BLOCK_LENGTH_SIZE + ((raw[pos] << 8) | raw[pos + 1])
        if n and pos + size > max_bytes:
            break
        pos += size
        n += 1
    return raw[:pos], n


class RerequestCore:
    """Owned by the server's event-loop thread: answers MoldUDP64 re-requests (sans-IO)."""

    def __init__(self, stores: StoreSet, quotas: ClientQuotas, *, max_count: int = DEFAULT_MAX_COUNT,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, retain_messages: int = 0,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not 1 <= max_count < END_OF_SESSION_COUNT:
            raise ValueError(f"re-request: max_count {max_count} outside 1..65534")
        if not MIN_PAYLOAD <= max_payload <= MAX_UDP_PAYLOAD:
            raise ValueError(f"re-request: max_payload {max_payload} outside {MIN_PAYLOAD}..{MAX_UDP_PAYLOAD}")
        if max_bytes < 1:
            raise ValueError(f"re-request: max_bytes {max_bytes} must be positive")
        self.stores = stores
        self.quotas = quotas
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.max_payload = max_payload
        self.retain_messages = retain_messages     # 0: every stored message is served
        self.counters: dict[str, int] = dict.fromkeys(OUTCOMES, 0)

    def handle(self, data: bytes, client: Any, now_ns: int) -> list[bytes]:
        """The datagrams that answer one request datagram from ``client`` (maybe none)."""
        c = self.counters
        c["requests"] += 1
        if len(data) != REREQUEST_SIZE:
            c["malformed"] += 1
            return []
        session, first, count = _unpack_request(data)
        if count == 0 or count == END_OF_SESSION_COUNT or first == 0:
            c["malformed"] += 1
            return []
        store = self.stores.get(session, now_ns)
        if store is None:
            c["unknown_session"] += 1
            return []
        last = first + count - 1
        held = self.stores.available(store, last)
        if self.retain_messages and first <= held - self.retain_messages:
            c["purged"] += 1
            return []
        if first > held:
            c["not_yet_published"] += 1
            return []
        n = count
        if last > held:
            c["partial"] += 1
            n = held - first + 1
        if n > self.max_count:
            c["clipped"] += 1
            n = self.max_count
        granted = self.quotas.grant(client, n, now_ns)
        if granted < n:
            c["over_quota"] += 1
            c["quota_refused_messages"] += n - granted
            n = granted
            if not n:
                c["quota_refused"] += 1
                return []
        raw = store.read_raw(first, n)
        if len(raw) > self.max_bytes:
            raw, k = clip_blocks(raw, self.max_bytes)
            c["clipped_bytes"] += 1
            self.quotas.give_back(client, n - k, now_ns)
            n = k
        out = pack_datagrams(session, first, raw, self.max_payload)
        c["answered"] += 1
        c["messages"] += n
        c["datagrams"] += len(out)
        return out

    def stats(self) -> dict[str, int]:
        return dict(self.counters, clients=len(self.quotas), clients_refused=self.quotas.refused_table_full)


class RerequestServer:
    """Owned by the asyncio loop's thread: the non-blocking UDP socket in front of a RerequestCore.

    Each wake-up reads at most ``max_per_wakeup`` requests, so a flood cannot starve the loop's
    other work. A send the kernel refuses (EAGAIN, ENOBUFS) is counted and the rest of that answer
    dropped: the client asks again. ``batched``: each answer goes out in one ``sendmmsg`` call
    (feeds/batchsend.py; the same datagrams), where a refused datagram is counted and the rest sent.
    """

    def __init__(self, core: RerequestCore, bind: str = "127.0.0.1", port: int = 0, *,
                 clock: Callable[[], int] = time.time_ns, max_per_wakeup: int = 256,
                 sndbuf: int = 4 << 20, batched: bool = False) -> None:
        self.core = core
        self.batch = BatchSender(to_address=True) if batched else None
        self.clock = clock
        self.max_per_wakeup = max_per_wakeup
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            self.sock.bind((bind, port))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.address: tuple[str, int] = self.sock.getsockname()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self.on_readable)

    def on_readable(self) -> int:
        """Read and answer the queued requests (at most ``max_per_wakeup``); return how many."""
        sock, handle, clock, batch = self.sock, self.core.handle, self.clock, self.batch
        counters = self.core.counters
        n = 0
        while n < self.max_per_wakeup:
            try:
                data, client = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:       # e.g. an ICMP port unreachable reported on this socket
                n += 1
                continue
            n += 1
            answer = handle(data, client, clock())
            if not answer:
                continue
            if batch is not None:
                before = batch.errors
                try:
                    batch.send_to(sock, answer, client)
                except OSError:
                    counters["send_errors"] += 1
                counters["send_errors"] += batch.errors - before
                continue
            for d in answer:
                try:
                    sock.sendto(d, client)
                except OSError:
                    counters["send_errors"] += 1
                    break
        return n

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()
