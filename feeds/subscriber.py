"""The subscriber library: A/B arbitration, gap detection and books, sans-IO, with a thin socket shell.

    datagram (A or B) ──► ChannelReceiver ──► sinks: L3Book / L2Book / L1Book / MessageTap
                          session, next expected sequence,
                          duplicates dropped (first copy wins),
                          gaps -> on_gap hook + sinks marked stale,
                          heartbeats, end of session, session change

``ChannelReceiver.receive(ts_ns, datagram, leg)`` is the whole protocol: bytes and a time in,
calls to the sinks out. ``MulticastSubscriber`` only moves bytes: it joins the A and B groups of
each channel on a named interface (bound to the group, SO_RCVBUF raised), reads them non-blocking
and hands each datagram to its channel's receiver. ``FeedSubscriber`` wires both for the channels
of a ``FeedConfig``, with the three books.

Gaps. A datagram whose first sequence is past the next expected one means lost messages: the
receiver calls ``on_gap(session, first_missing, count)`` (the hook for the retransmission client)
and the sinks' ``on_gap``. Then, by default, it delivers what follows at once: the L3 book stays
stale (ITCH after a gap may name orders it never saw) and L2/L1 books judge each instrument by its
own sequence number. With ``hold_after_gap=True`` it keeps what follows (up to ``max_held``
messages) until the missing messages arrive (from either group, or from a retransmission fed to
``receive``), then delivers everything in order and calls the sinks' ``on_filled``: the books
are exact again.

Recovery (retransmit/recovery.py drives these): ``resume_at(next_seq)`` continues from a state
the sinks got elsewhere, and ``load_snapshot(blocks, count, next_seq)`` resets the sinks, applies
a snapshot's messages and resumes after it: held messages below ``next_seq`` are dropped, the
held run from it is delivered, and a hole still left is reported as a gap. ``gave_up`` counts
the times the held messages overflowed ``max_held`` (the books are stale for good then).
"""
from __future__ import annotations

import selectors
import socket
import struct
import time
from typing import Any, Callable, Protocol

from feeds.books import L1Book, L2Book, L3Book
from feeds.channels import L1, L2, L3, ChannelGroups, FeedConfig
from feeds.layout import Buffer
from feeds.moldudp64 import BLOCK_LENGTH_SIZE, END_OF_SESSION_COUNT, HEADER_SIZE
from feeds.transport import A, multicast_receiver

__all__ = ["Sink", "ChannelReceiver", "MessageTap", "MulticastSubscriber", "FeedSubscriber", "poll_until"]

_HEADER_FROM = struct.Struct(">10sQH").unpack_from


class Sink(Protocol):
    def apply_blocks(self, buf: Buffer, pos: int, count: int, first_seq: int) -> int:
        """Apply ``count`` blocks from ``pos``; return the offset after the last."""

    def on_gap(self, first_seq: int, count: int) -> None: ...

    def on_filled(self) -> None: ...

    def reset(self) -> None: ...


class MessageTap:
    """A sink that calls ``callback(seq, message)`` for every message, in sequence order."""

    def __init__(self, callback: Callable[[int, bytes], None]) -> None:
        self.callback = callback

    def apply_blocks(self, buf: Buffer, pos: int, count: int, first_seq: int) -> int:
        cb = self.callback
        lb = BLOCK_LENGTH_SIZE
        for i in range(count):
            n = (buf[pos] << 8) | buf[pos + 1]
            cb(first_seq + i, bytes(buf[pos + lb:pos + lb + n]))
            pos += lb + n
        return pos

    def on_gap(self, first_seq: int, count: int) -> None:
        pass

    def on_filled(self) -> None:
        pass

    def reset(self) -> None:
        pass


def _check_blocks(buf: Buffer, pos: int, count: int) -> int:
    """Walk ``count`` blocks from ``pos``; return the offset after them, -1 if they do not fit."""
    size = len(buf)
    lb = BLOCK_LENGTH_SIZE
    for _ in range(count):
        if pos + lb > size:
            return -1
        pos += lb + ((buf[pos] << 8) | buf[pos + 1])
    return pos if pos <= size else -1


class ChannelReceiver:
    """Owned by the thread that reads the channel: its sans-IO receiving side (one MoldUDP64
    session at a time, legs A and B). Counters are plain integers, read out of band.
    """

    def __init__(self, name: str, sinks: list[Any], *, hold_after_gap: bool = False,
                 max_held: int = 1_000_000,
                 on_gap: Callable[[bytes, int, int], None] | None = None,
                 on_session: Callable[[bytes | None, bytes], None] | None = None,
                 on_end_of_session: Callable[[bytes, int], None] | None = None) -> None:
        self.name = name
        self.sinks = list(sinks)
        self.hold_after_gap = hold_after_gap
        self.max_held = max_held
        self.on_gap = on_gap
        self.on_session = on_session
        self.on_end_of_session = on_end_of_session
        self.session: bytes | None = None
        self.expected = 1            # the next sequence number to deliver
        self.high = 1                # one past the highest sequence number heard of
        self.held: dict[int, bytes] = {}   # hold mode: seq -> framed block, past a gap
        self.ended = False
        self.left_sessions: set[bytes] = set()
        self.last_ts_ns = 0
        # counters
        self.packets = [0, 0]        # per leg
        self.messages = 0            # delivered
        self.duplicates = 0          # datagrams wholly seen before (mostly the other leg's copies)
        self.heartbeats = 0
        self.gaps = 0
        self.missing = 0             # messages reported missing
        self.malformed = 0
        self.old_session_packets = 0
        self.gave_up = 0             # hold mode: times max_held overflowed (delivered over holes)

    # -- the protocol ---------------------------------------------------------------------------
    def receive(self, ts_ns: int, data: Buffer, leg: int = A) -> int:
        """Take one datagram from leg A (0) or B (1); return how many messages were delivered."""
        self.last_ts_ns = ts_ns
        self.packets[leg] += 1
        if len(data) < HEADER_SIZE:
            self.malformed += 1
            return 0
        session: bytes
        seq: int
        count: int
        session, seq, count = _HEADER_FROM(data, 0)
        if session != self.session and not self._switch(session):
            return 0
        if count == 0 or count == END_OF_SESSION_COUNT:
            if len(data) != HEADER_SIZE:
                self.malformed += 1
                return 0
            if count == 0:
                self.heartbeats += 1
            elif not self.ended:
                self.ended = True
                if self.on_end_of_session is not None:
                    self.on_end_of_session(session, seq)
            if seq > self.high:
                self._gap(self.high, seq - self.high)
                self.high = seq
            return 0
        expected = self.expected
        end = seq + count
        if end <= expected:
            self.duplicates += 1
            return 0
        if seq == expected and not self.held:
            # the common case: in order, nothing held. The sinks walk the blocks; a datagram whose
            # blocks do not add up is treated as lost (its messages count as a gap).
            stop = -1
            try:
                for sink in self.sinks:
                    stop = sink.apply_blocks(data, HEADER_SIZE, count, seq)
            except (IndexError, struct.error):
                stop = -1
            if stop != len(data):
                self.malformed += 1
                self._gap(seq, count)
                self.expected = self.high = end
                return 0
            self.expected = end
            if end > self.high:
                self.high = end
            self.messages += count
            return count
        return self._slow(data, seq, count)

    def _switch(self, session: bytes) -> bool:
        """A datagram of another session: adopt it (first or new session), or ignore an old one."""
        if session in self.left_sessions:
            self.old_session_packets += 1
            return False
        old = self.session
        if old is not None:
            self.left_sessions.add(old)
            for sink in self.sinks:
                sink.reset()
        self.session = session
        self.expected = 1
        self.high = 1
        self.held.clear()
        self.ended = False
        if self.on_session is not None:
            self.on_session(old, session)
        return True

    def _gap(self, first: int, count: int) -> None:
        self.gaps += 1
        self.missing += count
        for sink in self.sinks:
            sink.on_gap(first, count)
        if self.on_gap is not None and self.session is not None:
            self.on_gap(self.session, first, count)

    def _slow(self, data: Buffer, seq: int, count: int) -> int:
        """Partial overlap, a gap, or filling a gap in hold mode."""
        end = seq + count
        if _check_blocks(data, HEADER_SIZE, count) < 0:
            self.malformed += 1
            return 0
        if seq > self.high:
            self._gap(self.high, seq - self.high)
        if end > self.high:
            self.high = end
        expected = self.expected
        if seq > expected and self.hold_after_gap:
            self._hold(data, seq, count)
            return 0
        # skip what was delivered already (partial overlap), or jump over a gap (not holding)
        pos = HEADER_SIZE
        first = seq
        while first < expected:
            pos += BLOCK_LENGTH_SIZE + ((data[pos] << 8) | data[pos + 1])
            first += 1
        n = end - first
        for sink in self.sinks:
            sink.apply_blocks(data, pos, n, first)
        self.messages += n
        self.expected = end
        held = self.held
        if held:
            # held copies of what was just delivered (a datagram spanning a hole and held messages,
            # e.g. a retransmission of a wider range) are stale: drop them
            if len(held) < n:
                for q in [q for q in held if q < end]:
                    del held[q]
            else:
                for q in range(first, end):
                    held.pop(q, None)
            return n + self._drain()
        return n

    def _hold(self, data: Buffer, seq: int, count: int) -> None:
        held = self.held
        pos = HEADER_SIZE
        lb = BLOCK_LENGTH_SIZE
        for i in range(count):
            n = (data[pos] << 8) | data[pos + 1]
            if seq + i not in held:
                held[seq + i] = bytes(data[pos:pos + lb + n])
            pos += lb + n
        if len(held) > self.max_held:
            self._give_up()

    def _drain(self) -> int:
        """Deliver the held messages that now continue the sequence; on_filled when none is left."""
        held = self.held
        delivered = 0
        expected = self.expected
        run: list[bytes] = []
        while expected in held:
            run.append(held.pop(expected))
            expected += 1
        if run:
            blob = b"".join(run)
            for sink in self.sinks:
                sink.apply_blocks(blob, 0, len(run), self.expected)
            delivered = len(run)
            self.messages += delivered
            self.expected = expected
        if not held:
            for sink in self.sinks:
                sink.on_filled()
        return delivered

    def _give_up(self) -> None:
        """Too much held: deliver it in order over the holes; the books stay stale."""
        self.gave_up += 1
        held = self.held
        for seq in sorted(held):
            block = held[seq]
            for sink in self.sinks:
                sink.apply_blocks(block, 0, 1, seq)
            self.messages += 1
            self.expected = seq + 1
        held.clear()

    def skip_gap(self) -> int:
        """Stop waiting for the missing messages (hold mode): deliver what is held over the holes."""
        n = len(self.held)
        if n:
            self._give_up()
        return n

    def resume_at(self, next_seq: int) -> int:
        """The sinks now hold the state as of message ``next_seq - 1`` (a snapshot was loaded):
        drop held messages below it, deliver the held run from it on, and report each hole still
        left below the highest sequence heard of as a gap (``on_gap``: the recovery fills it).
        Returns how many held messages were delivered."""
        if next_seq < 1:
            raise ValueError(f"resume_at: sequence numbers start at 1, got {next_seq}")
        held = self.held
        for seq in [q for q in held if q < next_seq]:
            del held[seq]
        self.expected = next_seq
        if next_seq > self.high:
            self.high = next_seq
        if held:
            delivered = self._drain()
        else:
            delivered = 0
            for sink in self.sinks:
                sink.on_filled()
        prev = self.expected
        for seq in sorted(held):
            if seq > prev:
                self._gap(prev, seq - prev)
            prev = seq + 1
        if prev < self.high:
            self._gap(prev, self.high - prev)
        return delivered

    def load_snapshot(self, blocks: Buffer, count: int, next_seq: int, session: bytes | None = None) -> int:
        """Replace the sinks' state with a snapshot, then ``resume_at(next_seq)``.

        ``blocks`` holds the snapshot's ``count`` messages as ``u16 length + message`` blocks
        (e.g. System Event, Stock Directory, Trading Action and Add Orders of a GLIMPSE-style
        snapshot): the book as of message ``next_seq - 1`` of ``session`` (adopted first when
        given and not the receiver's; ValueError for a session it left). Each sink is reset and
        gets them with sequence number 0 (they are not feed messages). Books that track
        instrument sequence numbers (L2, L1) take the snapshot's numbers as their last ones, none
        stale."""
        if _check_blocks(blocks, 0, count) != len(blocks):
            raise ValueError(f"snapshot: {count} blocks do not fill {len(blocks)} bytes")
        if session is not None and session != self.session and not self._switch(session):
            raise ValueError(f"snapshot of session {session!r}, which this receiver left")
        for sink in self.sinks:
            sink.reset()
            sink.apply_blocks(blocks, 0, count, 0)
            _snapshot_loaded(sink)
        return self.resume_at(next_seq)

    @property
    def stale(self) -> bool:
        """True while messages are missing (hold mode) or after an unrecovered gap (see the books)."""
        return bool(self.held)


def _snapshot_loaded(sink: Any) -> None:
    """After a snapshot: a sink's own hook, or, for the books with instrument sequence numbers
    (L2Book, L1Book), nothing stale or suspect (the snapshot set every instrument's last number)."""
    hook = getattr(sink, "on_snapshot", None)
    if hook is not None:
        hook()
        return
    seqs = getattr(sink, "seqs", None)
    if seqs is not None:
        seqs.stale.clear()
        seqs.suspect.clear()


# ================================================================================================
# Socket shell
# ================================================================================================

def poll_until(poll: Callable[[float], Any], done: Callable[[], bool], timeout_s: float) -> bool:
    """Call ``poll(wait_s)`` (waits of at most 50 ms) until ``done()`` or ``timeout_s`` seconds have
    passed; return ``done()``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return done()
        poll(min(left, 0.05))
    return True


class MulticastSubscriber:
    """Joins each channel's A and B groups on ``interface`` and feeds its receiver; polls
    non-blocking sockets (no thread of its own: the caller's loop calls ``poll``).

    ``add_socket(sock, callback)`` puts another socket in the same poll (the recovery client's
    UDP and TCP sockets): ``callback(events)`` is called when it is ready.
    """

    def __init__(self, receivers: dict[str, tuple[ChannelGroups, ChannelReceiver]],
                 interface: str = "127.0.0.1", rcvbuf: int = 8 << 20,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.interface = interface
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        try:
            for _name, (groups, receiver) in receivers.items():
                for leg, group in enumerate(groups):
                    s = multicast_receiver(group, interface, rcvbuf)
                    self.sockets.append(s)
                    self.selector.register(s, selectors.EVENT_READ, (receiver, leg))
        except BaseException:
            self.close()
            raise
        self.datagrams = 0

    def poll(self, timeout_s: float = 0.0, max_datagrams: int = 100_000) -> int:
        """Wait up to ``timeout_s`` for data, then read every queued datagram (at most
        ``max_datagrams``); return how many were read."""
        read = 0
        for key, events in self.selector.select(timeout_s):
            if callable(key.data):
                key.data(events)
                continue
            receiver, leg = key.data
            recv = key.fileobj.recv  # type: ignore[union-attr]
            while read < max_datagrams:
                try:
                    data = recv(65536)
                except BlockingIOError:
                    break
                receiver.receive(self.clock(), data, leg)
                read += 1
        self.datagrams += read
        return read

    def add_socket(self, sock: socket.socket, callback: Callable[[int], None],
                   events: int = selectors.EVENT_READ) -> None:
        """Poll ``sock`` too: ``callback(events)`` when it is ready (events: EVENT_READ/EVENT_WRITE)."""
        self.selector.register(sock, events, callback)

    def modify_socket(self, sock: socket.socket, callback: Callable[[int], None], events: int) -> None:
        self.selector.modify(sock, events, callback)

    def remove_socket(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def fileno(self) -> int:
        """The poller's descriptor (epoll): readable when a socket is, for an outer event loop."""
        return self.selector.fileno()

    def run_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Poll until ``done()`` or ``timeout_s`` seconds have passed; return ``done()``."""
        return poll_until(self.poll, done, timeout_s)

    def close(self) -> None:
        for s in self.sockets:
            try:
                self.selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.sockets.clear()
        self.selector.close()


class FeedSubscriber:
    """The books of a partition's channels, their receivers, and (``open()``) the sockets.

    ``receive(channel, ts_ns, datagram, leg)`` feeds a datagram by hand (pcap replay, tests);
    ``open()`` joins the groups and ``poll()`` reads them.
    """

    def __init__(self, config: FeedConfig, channels: tuple[str, ...] | None = None, *,
                 hold_after_gap: bool = False,
                 on_gap: Callable[[str, bytes, int, int], None] | None = None) -> None:
        self.config = config
        self.books: dict[str, Any] = {}
        self.receivers: dict[str, ChannelReceiver] = {}
        makers = {L3: L3Book, L2: L2Book, L1: L1Book}
        for name in channels or config.channels:
            book = makers[name]()
            self.books[name] = book
            hook = None
            if on_gap is not None:
                hook = (lambda ch: (lambda s, f, c: on_gap(ch, s, f, c)))(name)
            self.receivers[name] = ChannelReceiver(name, [book], hold_after_gap=hold_after_gap, on_gap=hook)
        self.shell: MulticastSubscriber | None = None

    @property
    def l3(self) -> L3Book:
        return self.books[L3]  # type: ignore[no-any-return]

    @property
    def l2(self) -> L2Book:
        return self.books[L2]  # type: ignore[no-any-return]

    @property
    def l1(self) -> L1Book:
        return self.books[L1]  # type: ignore[no-any-return]

    def receive(self, channel: str, ts_ns: int, data: Buffer, leg: int = A) -> int:
        return self.receivers[channel].receive(ts_ns, data, leg)

    def open(self, interface: str | None = None, rcvbuf: int = 8 << 20) -> MulticastSubscriber:
        self.shell = MulticastSubscriber(
            {name: (self.config.groups_of(name), r) for name, r in self.receivers.items()},
            interface or self.config.interface, rcvbuf)
        return self.shell

    def poll(self, timeout_s: float = 0.0) -> int:
        assert self.shell is not None, "open() first"
        return self.shell.poll(timeout_s)

    def close(self) -> None:
        if self.shell is not None:
            self.shell.close()
            self.shell = None
