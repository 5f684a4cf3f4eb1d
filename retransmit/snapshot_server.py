"""The snapshot server: a subscriber of the partitions' feeds that serves GLIMPSE-style snapshots.

One asyncio loop holds, per partition, a ``RecoveringSubscriber`` (its books kept exact through loss
by the retransmission server: UDP re-requests for small gaps, TCP replay from 1 for a late start)
and a SoupBinTCP listener (retransmit/tcpserver.py) whose logins ``SnapshotSource`` answers:

    requested session blank          the current L3 session of the first partition served
    a session of ours (YYMMDDPPCG)   that channel's book; the session must be the one the partition
                                     publishes now (an older one: Login Rejected 'S'; a newer one
                                     not heard of yet: wait)
    requested sequence number        ignored (a snapshot always starts at 1)

The login waits (``wait_timeout_ns``, then Login Rejected 'S') until the channel is fresh: a
session heard, nothing missing, nothing held, no recovery running. The snapshot is then built at
once, in the loop, between two datagrams: it is the book after message N-1 exactly, and its End of
Snapshot says N. Logins that find the same (session, N) share one built snapshot. The session ends
with End of Session after End of Snapshot. Nothing here talks to the matching core.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from feeds.channels import L3, FeedConfig, channel_of_session
from feeds.layout import alpha
from feeds.soupbintcp import REJECT_SESSION_NOT_AVAILABLE, LoginRequest
from retransmit.recovery import RecoveringSubscriber, RecoveryConfig
from retransmit.snapshot import ReferenceSink, SnapshotStream, build_snapshot
from retransmit.soupserver import SoupServerSettings
from retransmit.tcpserver import SoupTcpServer

__all__ = ["SnapshotSource", "SnapshotServer"]


class SnapshotSource:
    """Owned by the server's event-loop thread: answers snapshot logins from the subscribers' books."""

    def __init__(self, subscribers: list[RecoveringSubscriber]) -> None:
        if not subscribers:
            raise ValueError("snapshot: at least one partition's subscriber is needed")
        self.subscribers = subscribers
        self.refs: list[dict[str, ReferenceSink]] = []
        for sub in subscribers:
            refs: dict[str, ReferenceSink] = {}
            for name, receiver in sub.receivers.items():
                refs[name] = ReferenceSink()
                receiver.sinks.append(refs[name])
            self.refs.append(refs)
        self._cache: dict[tuple[bytes, int], tuple[bytes, int]] = {}
        self.counters = {"snapshots": 0, "built": 0, "shared": 0, "unknown_session": 0, "waits": 0,
                         "messages": 0, "build_ns": 0}

    def _find(self, name: str) -> tuple[int, str, bytes] | bytes | None:
        """(subscriber index, channel, session), a reject reason, or None (not known yet)."""
        if not name:
            first = self.subscribers[0]
            default = L3 if L3 in first.receivers else next(iter(first.receivers))
            current = first.receivers[default].session
            return None if current is None else (0, default, current)
        try:
            session = alpha(name, 10)
        except (ValueError, UnicodeEncodeError):
            return REJECT_SESSION_NOT_AVAILABLE
        channel = channel_of_session(session)
        if channel is None:
            return REJECT_SESSION_NOT_AVAILABLE
        partition = int(session[6:8])
        for i, sub in enumerate(self.subscribers):
            if sub.config.partition != partition or channel not in sub.receivers:
                continue
            receiver = sub.receivers[channel]
            if receiver.session == session:
                return i, channel, session
            if session in receiver.left_sessions:
                return REJECT_SESSION_NOT_AVAILABLE
            return None               # not heard of yet (a new generation, or nothing yet)
        return REJECT_SESSION_NOT_AVAILABLE

    def open_stream(self, request: LoginRequest, replay_only: int | None, now_ns: int) -> SnapshotStream | bytes | None:
        found = self._find(request.session)
        if found is None:
            self.counters["waits"] += 1
            return None
        if isinstance(found, bytes):
            self.counters["unknown_session"] += 1
            return found
        index, channel, session = found
        sub = self.subscribers[index]
        if not sub.is_fresh(channel):
            self.counters["waits"] += 1
            return None
        receiver = sub.receivers[channel]
        key = (session, receiver.expected)
        built = self._cache.get(key)
        if built is None:
            t0 = time.perf_counter_ns()
            built = build_snapshot(channel, sub.feed.books[channel], self.refs[index][channel], receiver.expected)
            self.counters["build_ns"] += time.perf_counter_ns() - t0
            self.counters["built"] += 1
            self._cache = {k: v for k, v in self._cache.items() if k[0] != session}
            self._cache[key] = built
        else:
            self.counters["shared"] += 1
        self.counters["snapshots"] += 1
        self.counters["messages"] += built[1]
        return SnapshotStream(session, built[0], built[1])


class SnapshotServer:
    """Owned by the asyncio loop's thread: subscribers + snapshot listener, in one process."""

    def __init__(self, feeds: list[FeedConfig], recovery: RecoveryConfig, settings: SoupServerSettings, *,
                 interface: str | None = None, tick_s: float = 0.005,
                 on_event: Callable[[str, str, str], None] | None = None) -> None:
        self.subscribers = [
            RecoveringSubscriber(fc, recovery,
                                 on_stale=(lambda ch, why: on_event("stale", ch, why)) if on_event else None,
                                 on_fresh=(lambda ch: on_event("fresh", ch, "")) if on_event else None,
                                 on_failed=(lambda ch, why: on_event("failed", ch, why)) if on_event else None)
            for fc in feeds]
        self.interface = interface
        self.tick_s = tick_s
        self.source = SnapshotSource(self.subscribers)
        self.tcp = SoupTcpServer(settings, self.source)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        for sub in self.subscribers:
            sub.open(self.interface)
            loop.add_reader(sub.fileno(), sub.poll, 0.0)
        self._ticker = loop.create_task(self._tick())
        return await self.tcp.start(host, port)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            for sub in self.subscribers:
                sub.poll(0.0)

    def work(self) -> int:
        """What the server has done, as one growing count: messages delivered to its books, snapshots."""
        return sum(r.expected for sub in self.subscribers for r in sub.receivers.values()) + \
            self.source.counters["snapshots"]

    def stats(self) -> dict[str, Any]:
        return {"tcp": self.tcp.stats(), "snapshots": dict(self.source.counters),
                "feeds": [sub.stats() for sub in self.subscribers]}

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        await self.tcp.close()
        for sub in self.subscribers:
            if self._loop is not None and sub.shell is not None:
                self._loop.remove_reader(sub.fileno())
            sub.close()
