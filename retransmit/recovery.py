"""Gap recovery for subscribers: re-request (UDP) or replay (TCP) for small gaps, snapshot for large.

The subscriber library's recovery client. ``RecoveringSubscriber`` is a ``FeedSubscriber`` in hold
mode (what follows a gap is buffered, feeds/subscriber.py) whose gaps a ``ChannelRecovery`` per
channel fills::

    gap reported (a datagram past the next expected one, a heartbeat ahead, a late join = a gap
    from 1): the channel is stale (on_stale), the missing range is noted
      │ wait request_delay (the other group's copy may still come)
      ├─ range <= large_gap_messages: the small-gap method
      │     "rerequest": MoldUDP64 re-requests (UDP, <= max_request messages each, max_inflight
      │                  outstanding); the answers are datagrams fed to the receiver
      │     "replay":    a SoupBinTCP replay (REPLAY-ONLY n) of the merged small ranges
      │   no progress within timeout: ask again; after `retries` attempts: the large-gap method
      └─ range > large_gap_messages: the large-gap method
            "snapshot":  a snapshot session; its End of Snapshot carries N: the books are reset,
                         loaded, held messages below N dropped, those from N applied
                         (ChannelReceiver.load_snapshot); a hole left between N and the held
                         messages is a new small gap
            "replay":    a replay of the range (any size)
          no progress within fetch_timeout: abort, try again; after `retries` failures:
          on_failed(channel, reason), wait backoff, start over
    nothing missing, nothing held, no fetch running: fresh (on_fresh)

A receiver that overflowed ``max_held`` delivered over the holes (its books are wrong): the
channel is recovered whole (a snapshot, or a replay from 1 after a reset).

``ChannelRecovery`` is sans-IO: ``tick(now_ns)`` returns actions ("rerequest", "replay",
"snapshot", "cancel") that the shell performs, and the shell reports back (``fetch_progress``,
``fetch_finished``, ``snapshot_received``). ``RecoveringSubscriber`` is the socket shell: the
multicast sockets, one UDP socket for re-requests (answers come back to it), one TCP connection
per channel for a replay or snapshot, all in one poll (no thread of its own; ``fileno()`` lets an
asyncio loop wait on it).
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import selectors
import socket
import time
from typing import Any, Callable

from feeds.channels import FeedConfig
from feeds.moldudp64 import BLOCK_LENGTH_SIZE, HEADER, encode_rerequest
from feeds.subscriber import ChannelReceiver, FeedSubscriber, MulticastSubscriber, poll_until
from retransmit.snapshot import parse_end_of_snapshot
from retransmit.soupclient import SoupClientSession

__all__ = ["RecoveryConfig", "ChannelRecovery", "RecoveringSubscriber", "feed_blocks", "RERQUEST", "REPLAY",
           "SNAPSHOT"]

RERQUEST, REPLAY, SNAPSHOT = "rerequest", "replay", "snapshot"
Address = tuple[str, int]

_pack_header = HEADER.struct.pack
_MAX_COUNT = 65534                   # messages in one MoldUDP64 datagram


@dataclasses.dataclass(frozen=True)
class RecoveryConfig:
    """How a subscriber fills gaps (docs/retransmit.md)."""

    small_gap: str = RERQUEST            # "rerequest" (UDP) or "replay" (TCP)
    large_gap: str = SNAPSHOT            # "snapshot" or "replay"
    large_gap_messages: int = 5000       # a missing range longer than this is a large gap
    rerequest: Address | None = None     # the re-request server (UDP)
    replay: Address | None = None        # the replay server (TCP)
    snapshot: Address | None = None      # the snapshot server (TCP)
    username: str = "mdata"
    password: str = "mdata"
    request_delay_ns: int = 2_000_000    # wait this long for the other group's copy before asking
    timeout_ns: int = 300_000_000        # a re-request unanswered this long is asked again
    fetch_timeout_ns: int = 3_000_000_000  # a replay or snapshot silent this long is aborted
    retries: int = 3                     # attempts of a method before the next (small -> large)
    backoff_ns: int = 1_000_000_000      # after the large method failed `retries` times
    max_request: int = 4096              # messages per re-request (<= the server's maximum)
    max_inflight: int = 64               # re-requests outstanding per channel
    max_held: int = 4_000_000            # messages a receiver may hold while recovering

    def __post_init__(self) -> None:
        if self.small_gap not in (RERQUEST, REPLAY) or self.large_gap not in (SNAPSHOT, REPLAY):
            raise ValueError(f"recovery: small_gap {self.small_gap!r} must be rerequest|replay, "
                             f"large_gap {self.large_gap!r} snapshot|replay")
        for method in (self.small_gap, self.large_gap):
            if getattr(self, method) is None:
                raise ValueError(f"recovery: method {method!r} needs the {method} server's address")
        if self.large_gap_messages < 1 or not 1 <= self.max_request <= 65534 or self.retries < 1:
            raise ValueError("recovery: large_gap_messages, max_request and retries must be positive")


class _Range:
    __slots__ = ("first", "end", "seen_ns", "asked_ns", "attempts")

    def __init__(self, first: int, end: int, now_ns: int) -> None:
        self.first = first
        self.end = end              # exclusive
        self.seen_ns = now_ns
        self.asked_ns = 0
        self.attempts = 0

    def __repr__(self) -> str:
        return f"[{self.first}, {self.end})"


class _Fetch:
    __slots__ = ("kind", "first", "end", "large", "progress_ns")

    def __init__(self, kind: str, first: int, end: int, large: bool, now_ns: int) -> None:
        self.kind = kind
        self.first = first
        self.end = end
        self.large = large           # the large-gap method (its failures lead to on_failed)
        self.progress_ns = now_ns


class ChannelRecovery:
    """Owned by the thread that polls the subscriber: the gap recovery of one channel (sans-IO).

    Reads its receiver's state (session, expected, high, held, gave_up); ``events(kind, channel,
    detail)`` hears "stale", "fresh" and "failed".
    """

    def __init__(self, channel: str, receiver: ChannelReceiver, config: RecoveryConfig,
                 events: Callable[[str, str, str], None] | None = None) -> None:
        self.channel = channel
        self.receiver = receiver
        self.config = config
        self.events = events
        self.ranges: list[_Range] = []
        self.fetch: _Fetch | None = None
        self.whole = False              # the books are wrong: recover the whole channel
        self.escalated = False          # small gaps go to the large method (small one failed)
        self.failures = 0               # consecutive failures of the large method
        self.backoff_until = 0
        self.gave_up_seen = receiver.gave_up
        self.stale = False
        # counters
        self.gaps = 0
        self.rerequests = 0
        self.replays = 0
        self.snapshots = 0
        self.timeouts = 0
        self.failed = 0
        self.recoveries = 0             # stale -> fresh transitions

    # -- inputs ---------------------------------------------------------------------------------
    def gap(self, first: int, count: int, now_ns: int) -> None:
        """The receiver reported messages ``first`` .. ``first + count - 1`` missing."""
        self.gaps += 1
        self._add(first, first + count, now_ns)
        self._set_stale(now_ns, f"gap of {count} at {first}")

    def session_changed(self, now_ns: int) -> list[tuple[Any, ...]]:
        """A new session: what was missing of the old one is not wanted any more."""
        self.ranges.clear()
        self.whole = False
        self.escalated = False
        self.failures = 0
        self.gave_up_seen = self.receiver.gave_up
        actions: list[tuple[Any, ...]] = []
        if self.fetch is not None:
            self.fetch = None
            actions.append(("cancel",))
        return actions

    def fetch_progress(self, now_ns: int) -> None:
        if self.fetch is not None:
            self.fetch.progress_ns = now_ns

    def fetch_finished(self, ok: bool, now_ns: int, reason: str = "") -> None:
        """The running replay or snapshot ended: ``ok`` when it ended as it should (Z after the
        messages, a snapshot loaded)."""
        fetch, self.fetch = self.fetch, None
        if fetch is None:
            return
        if ok:
            if fetch.large:
                self.failures = 0
            return
        self._failed(fetch, now_ns, reason or "fetch failed")

    def snapshot_received(self, session: bytes, blocks: bytes, count: int, now_ns: int) -> bool:
        """A snapshot's messages (End of Snapshot last) arrived: load it into the receiver's sinks."""
        r = self.receiver
        if r.session != session or count < 1:
            self.fetch_finished(False, now_ns, "snapshot of another session" if count else "empty snapshot")
            return False
        last = 0                        # the offset of the last block: End of Snapshot
        for _ in range(count - 1):
            last += BLOCK_LENGTH_SIZE + ((blocks[last] << 8) | blocks[last + 1])
        try:
            next_seq = parse_end_of_snapshot(blocks[last + BLOCK_LENGTH_SIZE:])
        except ValueError as exc:
            self.fetch_finished(False, now_ns, str(exc))
            return False
        self.whole = False
        self.escalated = False
        r.load_snapshot(blocks[:last], count - 1, next_seq)
        self._prune()
        self.snapshots += 1
        self.fetch_finished(True, now_ns)
        return True

    # -- the decision ---------------------------------------------------------------------------
    def tick(self, now_ns: int) -> list[tuple[Any, ...]]:
        """What to do now: [("rerequest", session, first, count) | ("replay", session, first,
        count) | ("snapshot", session) | ("cancel",)]."""
        r = self.receiver
        session = r.session
        if session is None:
            return []
        cfg = self.config
        actions: list[tuple[Any, ...]] = []
        if r.gave_up != self.gave_up_seen:
            self.gave_up_seen = r.gave_up
            self.whole = True
            self._set_stale(now_ns, "receiver overflowed max_held")
        self._prune()
        fetch = self.fetch
        if fetch is not None:
            if now_ns - fetch.progress_ns < cfg.fetch_timeout_ns:
                return actions
            self.fetch = None
            self.timeouts += 1
            actions.append(("cancel",))
            self._failed(fetch, now_ns, f"{fetch.kind}: no byte for {cfg.fetch_timeout_ns / 1e9:g} s")
        if now_ns < self.backoff_until:
            return actions
        if self.whole:
            if cfg.large_gap == SNAPSHOT:
                return actions + self._start(SNAPSHOT, session, 0, 0, True, now_ns)
            r.load_snapshot(b"", 0, 1)      # reset the books: the gap from 1 is replayed
            self.whole = False
            self._prune()
        if not self.ranges:
            if r.held:
                self._add(r.expected, min(r.held), now_ns)
            else:
                if self.stale:
                    self.stale = False
                    self.recoveries += 1
                    self.escalated = False
                    if self.events is not None:
                        self.events("fresh", self.channel, "")
                return actions
        large = cfg.large_gap_messages
        first = self.ranges[0]
        if self.escalated or first.end - first.first > large:
            return actions + self._large(session, first, now_ns)
        if cfg.small_gap == REPLAY:
            if now_ns - first.seen_ns < cfg.request_delay_ns:
                return actions
            if first.attempts >= cfg.retries:
                self.escalated = True
                return actions + self._large(session, first, now_ns)
            end = first.end
            for rg in self.ranges[1:]:
                if rg.end - first.first > large:
                    break
                end = rg.end
            first.attempts += 1
            return actions + self._start(REPLAY, session, first.first, end, False, now_ns)
        # UDP re-requests: each range on its own, in chunks of max_request
        inflight = sum(1 for rg in self.ranges if rg.asked_ns and now_ns - rg.asked_ns < cfg.timeout_ns)
        for rg in self.ranges:
            if inflight >= cfg.max_inflight:
                break
            if rg.end - rg.first > large:
                break
            if rg.asked_ns:
                if now_ns - rg.asked_ns < cfg.timeout_ns:
                    continue
                self.timeouts += 1
            elif now_ns - rg.seen_ns < cfg.request_delay_ns:
                continue
            if rg.attempts >= cfg.retries:
                self.escalated = True
                return actions + self._large(session, self.ranges[0], now_ns)
            rg.attempts += 1
            rg.asked_ns = now_ns
            for a in range(rg.first, rg.end, cfg.max_request):
                actions.append((RERQUEST, session, a, min(cfg.max_request, rg.end - a)))
                self.rerequests += 1
            inflight += 1
        return actions

    def _large(self, session: bytes, first: _Range, now_ns: int) -> list[tuple[Any, ...]]:
        """The large-gap method: a snapshot, or a replay of the first missing range."""
        if self.config.large_gap == SNAPSHOT:
            return self._start(SNAPSHOT, session, 0, 0, True, now_ns)
        return self._start(REPLAY, session, first.first, first.end, True, now_ns)

    def _start(self, kind: str, session: bytes, first: int, end: int, large: bool,
               now_ns: int) -> list[tuple[Any, ...]]:
        self.fetch = _Fetch(kind, first, end, large, now_ns)
        if kind == SNAPSHOT:
            return [(SNAPSHOT, session)]
        self.replays += 1
        return [(REPLAY, session, first, end - first)]

    def _failed(self, fetch: _Fetch, now_ns: int, reason: str) -> None:
        cfg = self.config
        if not fetch.large:
            return                     # the small method counts its attempts per range
        self.failures += 1
        if self.failures >= cfg.retries:
            self.failed += 1
            self.failures = 0
            self.backoff_until = now_ns + cfg.backoff_ns
            if self.events is not None:
                self.events("failed", self.channel, reason)

    def _add(self, first: int, end: int, now_ns: int) -> None:
        ranges = self.ranges
        if ranges and first >= ranges[-1].first:
            last = ranges[-1]
            if first <= last.end:
                last.end = max(last.end, end)
                return
            ranges.append(_Range(first, end, now_ns))
            return
        ranges.append(_Range(first, end, now_ns))
        ranges.sort(key=lambda rg: rg.first)
        merged: list[_Range] = []
        for rg in ranges:
            if merged and rg.first <= merged[-1].end:
                merged[-1].end = max(merged[-1].end, rg.end)
            else:
                merged.append(rg)
        self.ranges = merged

    def _prune(self) -> None:
        expected = self.receiver.expected
        ranges = self.ranges
        while ranges and ranges[0].end <= expected:
            ranges.pop(0)
        if ranges and ranges[0].first < expected:
            ranges[0].first = expected

    def _set_stale(self, now_ns: int, why: str) -> None:
        if not self.stale:
            self.stale = True
            if self.events is not None:
                self.events("stale", self.channel, why)

    @property
    def idle(self) -> bool:
        """Nothing missing, nothing held, nothing fetched: the books are exact."""
        return not self.ranges and self.fetch is None and not self.whole and not self.receiver.held

    def stats(self) -> dict[str, int]:
        return {"gaps": self.gaps, "rerequests": self.rerequests, "replays": self.replays,
                "snapshots": self.snapshots, "timeouts": self.timeouts, "failed": self.failed,
                "recoveries": self.recoveries, "missing_ranges": len(self.ranges)}


# ================================================================================================
# Socket shell
# ================================================================================================

class _Lossy:
    """A receiver seen through a drop filter (loss drills and tests; multicast only)."""

    __slots__ = ("receiver", "channel", "drop", "dropped")

    def __init__(self, receiver: ChannelReceiver, channel: str, drop: Callable[[str, int, bytes], bool]) -> None:
        self.receiver = receiver
        self.channel = channel
        self.drop = drop
        self.dropped = 0

    def receive(self, ts_ns: int, data: bytes, leg: int = 0) -> int:
        if self.drop(self.channel, leg, data):
            self.dropped += 1
            return 0
        return self.receiver.receive(ts_ns, data, leg)


def feed_blocks(receiver: ChannelReceiver, session: bytes, first: int, count: int, blocks: bytes, now_ns: int) -> int:
    """Hand ``count`` retransmitted messages (MoldUDP64 blocks, from sequence ``first``) to a
    receiver as datagrams of at most 65534 messages (a u16 count); returns how many it delivered."""
    delivered = 0
    pos = 0
    while count > _MAX_COUNT:
        start = pos
        for _ in range(_MAX_COUNT):
            pos += BLOCK_LENGTH_SIZE + ((blocks[pos] << 8) | blocks[pos + 1])
        delivered += receiver.receive(now_ns, _pack_header(session, first, _MAX_COUNT) + blocks[start:pos], 0)
        first += _MAX_COUNT
        count -= _MAX_COUNT
    if count:
        delivered += receiver.receive(now_ns, _pack_header(session, first, count) + blocks[pos:], 0)
    return delivered


class _TcpFetch:
    """Owned by the polling thread: one non-blocking SoupBinTCP connection (a replay or a snapshot)."""

    def __init__(self, owner: RecoveringSubscriber, channel: str, kind: str, address: Address,
                 client: SoupClientSession, now_ns: int) -> None:
        self.owner = owner
        self.channel = channel
        self.kind = kind
        self.client = client
        self.connected = False
        self.closed = False
        self.pending = b""
        self.snapshot_blocks: list[bytes] = []
        self.snapshot_count = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        rc = self.sock.connect_ex(address)
        if rc not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.sock.close()
            raise OSError(rc, f"connect to {address}: {errno.errorcode.get(rc, rc)}")
        client.start(now_ns)
        assert owner.shell is not None
        owner.shell.add_socket(self.sock, self.on_ready, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def on_ready(self, events: int) -> None:
        if self.closed:
            return
        owner = self.owner
        now = owner.clock()
        if not self.connected:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.finish(False, f"connect: {errno.errorcode.get(err, err)}")
                return
            self.connected = True
            assert owner.shell is not None
            owner.shell.modify_socket(self.sock, self.on_ready, selectors.EVENT_READ)
            self.flush()
        if events & selectors.EVENT_READ:
            for _ in range(16):
                try:
                    data = self.sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    self.finish(False, f"recv: {exc}")
                    return
                if not data:
                    self.finish(self.client.ended, "EOF before End of Session")
                    return
                self.take(data, now)
                if self.closed:
                    return
                if self.client.done:
                    self.finish(self.client.ended, self.why())
                    return

    def take(self, data: bytes, now: int) -> None:
        client = self.client
        client.receive_data(data, now)
        owner = self.owner
        core = owner.cores[self.channel]
        core.fetch_progress(now)
        first, n, blocks = client.take_blocks()
        if not n:
            return
        if self.kind == REPLAY:
            assert client.accepted is not None
            feed_blocks(owner.feed.receivers[self.channel], client.accepted[0], first, n, blocks, now)
        else:
            self.snapshot_blocks.append(blocks)
            self.snapshot_count += n

    def why(self) -> str:
        c = self.client
        if c.rejected is not None:
            return f"{self.kind}: login rejected {c.rejected!r}"
        if c.error is not None:
            return f"{self.kind}: {c.error}"
        return f"{self.kind}: ended"

    def tick(self, now: int) -> None:
        if self.connected and not self.closed:
            self.client.poll(now)
            self.flush()

    def flush(self) -> None:
        data = self.pending + self.client.data_to_send()
        if not data:
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.finish(False, f"send: {exc}")
            return
        self.pending = data[sent:]

    def finish(self, ok: bool, reason: str) -> None:
        if self.closed:
            return
        self.close()
        owner = self.owner
        core = owner.cores[self.channel]
        now = owner.clock()
        if self.kind == SNAPSHOT and ok and self.client.accepted is not None:
            core.snapshot_received(self.client.accepted[0], b"".join(self.snapshot_blocks), self.snapshot_count, now)
        else:
            core.fetch_finished(ok, now, reason)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.owner.shell is not None:
                self.owner.shell.remove_socket(self.sock)
            self.sock.close()
            if self.owner.fetches.get(self.channel) is self:
                del self.owner.fetches[self.channel]


class RecoveringSubscriber:
    """Owned by the caller's thread: the books of a partition's channels, kept exact through loss.

    ``open()`` joins the groups; ``poll(timeout_s)`` reads, recovers and calls back:
    ``on_stale(channel, why)``, ``on_fresh(channel)``, ``on_failed(channel, why)``. The books are
    ``l3``, ``l2``, ``l1`` (feeds.books); ``is_fresh(channel)`` says whether one is exact now.
    ``drop(channel, leg, datagram) -> bool`` discards multicast datagrams before the receiver
    (loss drills, tests); re-request answers and TCP data are never dropped.
    """

    def __init__(self, config: FeedConfig, recovery: RecoveryConfig, channels: tuple[str, ...] | None = None, *,
                 on_stale: Callable[[str, str], None] | None = None,
                 on_fresh: Callable[[str], None] | None = None,
                 on_failed: Callable[[str, str], None] | None = None,
                 drop: Callable[[str, int, bytes], bool] | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.config = config
        self.recovery = recovery
        self.clock = clock
        self.on_stale = on_stale
        self.on_fresh = on_fresh
        self.on_failed = on_failed
        self.drop = drop
        self.feed = FeedSubscriber(config, channels, hold_after_gap=True, on_gap=self._on_gap)
        self.cores: dict[str, ChannelRecovery] = {}
        for name, receiver in self.feed.receivers.items():
            receiver.max_held = recovery.max_held
            receiver.on_session = (lambda ch: (lambda old, new: self._on_session(ch)))(name)
            self.cores[name] = ChannelRecovery(name, receiver, recovery, self._on_event)
        self._by_session: dict[bytes, ChannelReceiver] = {}
        self.fetches: dict[str, _TcpFetch] = {}
        self.shell: MulticastSubscriber | None = None
        self.udp: socket.socket | None = None
        self.lossy: dict[str, _Lossy] = {}
        self.events: list[tuple[int, str, str, str]] = []     # the last 1000 (ts, kind, channel, detail)
        self.answers = 0
        self.foreign_answers = 0

    # books
    @property
    def l3(self) -> Any:
        return self.feed.l3

    @property
    def l2(self) -> Any:
        return self.feed.l2

    @property
    def l1(self) -> Any:
        return self.feed.l1

    @property
    def receivers(self) -> dict[str, ChannelReceiver]:
        return self.feed.receivers

    def is_fresh(self, channel: str) -> bool:
        r = self.feed.receivers[channel]
        return r.session is not None and self.cores[channel].idle and channel not in self.fetches

    # -- sockets --------------------------------------------------------------------------------
    def open(self, interface: str | None = None, rcvbuf: int = 8 << 20) -> MulticastSubscriber:
        receivers: dict[str, Any] = {}
        for name, r in self.feed.receivers.items():
            target: Any = r
            if self.drop is not None:
                target = self.lossy[name] = _Lossy(r, name, self.drop)
            receivers[name] = (self.config.groups_of(name), target)
        self.shell = MulticastSubscriber(receivers, interface or self.config.interface, rcvbuf)
        if self.recovery.rerequest is not None:
            host = self.recovery.rerequest[0]
            local = "127.0.0.1" if ipaddress.IPv4Address(host).is_loopback else "0.0.0.0"
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.udp.bind((local, 0))
            self.udp.setblocking(False)
            self.shell.add_socket(self.udp, self._on_udp)
        return self.shell

    def fileno(self) -> int:
        assert self.shell is not None, "open() first"
        return self.shell.fileno()

    def poll(self, timeout_s: float = 0.0) -> int:
        """Wait up to ``timeout_s`` (less while recovering) for data, read it, recover; return the
        number of multicast datagrams read."""
        assert self.shell is not None, "open() first"
        if timeout_s > 0.002 and not all(c.idle for c in self.cores.values()):
            timeout_s = 0.002
        n = self.shell.poll(timeout_s)
        self.tick()
        return n

    def run_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Poll until ``done()`` or ``timeout_s`` seconds have passed; return ``done()``."""
        return poll_until(self.poll, done, timeout_s)

    def tick(self) -> None:
        now = self.clock()
        for fetch in list(self.fetches.values()):
            fetch.tick(now)
        for channel, core in self.cores.items():
            for action in core.tick(now):
                self._act(channel, action, now)

    def _act(self, channel: str, action: tuple[Any, ...], now: int) -> None:
        kind = action[0]
        cfg = self.recovery
        if kind == RERQUEST:
            _, session, first, count = action
            if self.udp is not None and cfg.rerequest is not None:
                try:
                    self.udp.sendto(encode_rerequest(session, first, count), cfg.rerequest)
                except OSError:
                    pass          # counted as a timeout when no answer comes
            return
        if kind == "cancel":
            fetch = self.fetches.pop(channel, None)
            if fetch is not None:
                fetch.close()
            return
        old = self.fetches.pop(channel, None)
        if old is not None:
            old.close()
        if kind == REPLAY:
            _, session, first, count = action
            client = SoupClientSession(cfg.username, cfg.password, session, first, replay_only=count)
            address = cfg.replay
        else:
            _, session = action
            client = SoupClientSession(cfg.username, cfg.password, session, 0)
            address = cfg.snapshot
        assert address is not None
        try:
            self.fetches[channel] = _TcpFetch(self, channel, kind, address, client, now)
        except OSError as exc:
            self.cores[channel].fetch_finished(False, now, str(exc))

    def _on_udp(self, events: int) -> None:
        assert self.udp is not None
        now = self.clock()
        by_session = self._by_session
        for _ in range(1024):
            try:
                data = self.udp.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            receiver = by_session.get(data[:10])
            if receiver is None:
                self._index_sessions()
                receiver = self._by_session.get(data[:10])
                if receiver is None:
                    self.foreign_answers += 1
                    continue
            self.answers += 1
            receiver.receive(now, data, 0)

    def _index_sessions(self) -> None:
        self._by_session = {r.session: r for r in self.feed.receivers.values() if r.session is not None}

    # -- callbacks from the receivers and cores -------------------------------------------------
    def _on_gap(self, channel: str, session: bytes, first: int, count: int) -> None:
        self.cores[channel].gap(first, count, self.clock())

    def _on_session(self, channel: str) -> None:
        self._index_sessions()
        now = self.clock()
        for action in self.cores[channel].session_changed(now):
            self._act(channel, action, now)

    def _on_event(self, kind: str, channel: str, detail: str) -> None:
        self.events.append((self.clock(), kind, channel, detail))
        if len(self.events) > 1000:
            del self.events[:500]
        if kind == "stale" and self.on_stale is not None:
            self.on_stale(channel, detail)
        elif kind == "fresh" and self.on_fresh is not None:
            self.on_fresh(channel)
        elif kind == "failed" and self.on_failed is not None:
            self.on_failed(channel, detail)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, core in self.cores.items():
            r = self.feed.receivers[name]
            out[name] = dict(core.stats(), session=(r.session or b"").decode("ascii"), expected=r.expected,
                             held=len(r.held), duplicates=r.duplicates,
                             dropped=self.lossy[name].dropped if name in self.lossy else 0)
        out["rerequest_answers"] = self.answers
        return out

    def close(self) -> None:
        for fetch in list(self.fetches.values()):
            fetch.close()
        if self.shell is not None and self.udp is not None:
            self.shell.remove_socket(self.udp)
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        self.feed.close()
        if self.shell is not None:
            self.shell.close()
            self.shell = None

