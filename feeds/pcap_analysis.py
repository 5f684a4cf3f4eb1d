"""What a capture says about the feeds in it, sans-IO: datagrams and capture times in, reports out.

    Packet (feeds.pcap) ──► classify ──► MoldUDP64 datagram of a session, on a line (group:port)
                                     ├─► re-request (20 bytes, 0 < count < 0xFFFF)
                                     ├─► other UDP (not MoldUDP64 framing), TCP segment
                                     └─► (frames that are not IPv4 UDP/TCP: the reader counts them)

A *line* is one destination (multicast group and port) carrying a session; the A and B lines of a
session carry the same datagrams. Lines of a session are named A, B, C ... in the order of their
address and port (our A groups 239.192.P.x sort before the B groups 239.193.P.x), unless the caller
names the A groups.

``GapChecker`` keeps, per line and for the session as a whole (every line merged), the set of
sequence numbers heard of as ``SeqTracker`` holes:

    gap           a hole still open at the end: messages no datagram carried (first, last, count)
    duplicate     a datagram whose messages were all heard before on the same line
    out of order  a datagram on a line that filled a hole of that line (it came after later ones)
    late          the same for the session: a message that every line delivered after later ones
    arbitration   per datagram sent on A and B: which line delivered it first, and the skew
                  t(B) - t(A) in ns (positive: A first); datagrams heard on one line only

Sequence number 0 on a data datagram is not MoldUDP64 (sequences start at 1): such sessions (e.g.
captures whose sequence numbers were zeroed) are counted as unsequenced, and no gap can be judged.

``CaptureStats`` counts messages per type, packets and bytes per line, rates per second and the
peaks in any window of 1 s, 1 ms and 100 us (sliding windows over capture times), and a histogram
of datagram sizes. ``percentiles`` is the nearest-rank percentile of integers (no floats).
Every class here is owned by the thread that feeds it.
"""
from __future__ import annotations

import socket
import struct
from array import array
from bisect import bisect_left
from typing import Any, Callable, Iterable, NamedTuple

from feeds import itch
from feeds.channels import ALL_LAYOUTS, channel_of_session
from feeds.moldudp64 import BLOCK_LENGTH_SIZE, END_OF_SESSION_COUNT, HEADER_SIZE
from feeds import ouch_layout
from feeds.pcap import IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST, TCP_SYN, Packet
from feeds.soupbintcp import FrameParser, SoupPacket
from feeds.subscriber import ChannelReceiver, _check_blocks

__all__ = [
    "MOLD", "HEARTBEAT", "END_OF_SESSION", "REREQUEST", "OTHER", "Datagram", "classify",
    "session_text", "percentiles", "Classifier", "SeqTracker", "GapChecker", "CaptureStats", "line_names",
    "max_in_window", "SIZE_BUCKETS", "SessionDemux", "TypeCounter", "SoupStreams", "Flow", "Latency", "infer_midnight",
]

MOLD = "mold"
HEARTBEAT = "heartbeat"
END_OF_SESSION = "end_of_session"
REREQUEST = "rerequest"
OTHER = "other"

_HEADER_FROM = struct.Struct(">10sQH").unpack_from

Line = tuple[str, int]   # (destination address, port)


class Datagram(NamedTuple):
    """A classified UDP payload: ``kind`` one of MOLD, HEARTBEAT, END_OF_SESSION, REREQUEST, OTHER."""

    kind: str
    session: bytes
    seq: int
    messages: int     # the header's message count (a re-request's: how many it asks for)


_OTHER = Datagram(OTHER, b"", 0, 0)


def classify(payload: bytes, trusted: bool = False) -> Datagram:
    """What a UDP payload is: a MoldUDP64 downstream datagram (whose blocks fill it exactly), a
    heartbeat or End of Session (20 bytes), a re-request (20 bytes, a count of messages), or other.
    ``trusted`` (a line already known to carry this session): a data datagram is judged by its
    header and size alone, without walking its blocks (the receivers walk them anyway)."""
    size = len(payload)
    if size < HEADER_SIZE:
        return _OTHER
    session, seq, count = _HEADER_FROM(payload, 0)
    if size == HEADER_SIZE:
        if count == 0:
            return Datagram(HEARTBEAT, session, seq, 0)
        if count == END_OF_SESSION_COUNT:
            return Datagram(END_OF_SESSION, session, seq, 0)
        return Datagram(REREQUEST, session, seq, count)
    if count == 0 or count == END_OF_SESSION_COUNT:
        return _OTHER
    if trusted:
        if size < HEADER_SIZE + BLOCK_LENGTH_SIZE * count:
            return _OTHER
    elif _check_blocks(payload, HEADER_SIZE, count) != size:
        return _OTHER
    return Datagram(MOLD, session, seq, count)


class Classifier:
    """``classify`` with memory: the blocks of the first data datagram of each session on each
    line are walked; later ones of the same session and line are judged by their header."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: set[tuple[Line, bytes]] = set()

    def __call__(self, line: Line, payload: bytes) -> Datagram:
        key = (line, payload[:10])
        if key in self.known:
            return classify(payload, True)
        d = classify(payload)
        if d.kind == MOLD:
            self.known.add(key)
        return d


def session_text(session: bytes) -> str:
    """A session name for people: its ASCII text without the padding, or ``hex:...`` when it is
    not printable (e.g. zeroed)."""
    if all(0x20 <= b < 0x7F for b in session):
        return session.decode("ascii").rstrip() or "(blank)"
    return "hex:" + session.hex()


def percentiles(values: list[int], points: Iterable[tuple[str, int, int]] = (
        ("p50", 50, 100), ("p90", 90, 100), ("p99", 99, 100), ("p999", 999, 1000))) -> dict[str, int]:
    """Nearest-rank percentiles of integers, plus min and max ({} for no values). ``points`` are
    (name, numerator, denominator)."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    out = {"min": ordered[0]}
    for name, num, den in points:
        rank = max(1, -(-num * n // den))     # ceil(num * n / den)
        out[name] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


def line_names(lines: list[Line], a_groups: frozenset[str] = frozenset()) -> dict[Line, str]:
    """Name a session's lines A, B, C ...: the groups in ``a_groups`` first, then by address and port."""
    def key(line: Line) -> tuple[int, bytes, int]:
        return (0 if line[0] in a_groups else 1, socket.inet_aton(line[0]), line[1])
    ordered = sorted(lines, key=key)
    return {line: chr(ord("A") + i) if i < 26 else f"L{i}" for i, line in enumerate(ordered)}


# ================================================================================================
# Sequence tracking
# ================================================================================================

NEW = 0        # continues the sequence
GAP = 1        # new messages past a hole
FILL = 2       # filled (part of) a hole: came after later messages
DUPLICATE = 3  # every message heard before


class SeqTracker:
    """The sequence numbers heard of on one stream, as the range [first, high) minus ``holes``
    (sorted, disjoint, half-open [start, end) ranges)."""

    __slots__ = ("first", "high", "holes", "duplicates", "out_of_order", "gaps_seen", "messages")

    def __init__(self) -> None:
        self.first = 0          # 0: nothing heard yet
        self.high = 0           # one past the highest sequence number heard of
        self.holes: list[list[int]] = []
        self.duplicates = 0
        self.out_of_order = 0
        self.gaps_seen = 0      # holes opened (some may have been filled since)
        self.messages = 0       # distinct messages heard

    def add(self, seq: int, count: int) -> int:
        """Take the range [seq, seq + count) (count 0: a heartbeat naming the next sequence);
        return NEW, GAP, FILL or DUPLICATE."""
        end = seq + count
        if not self.first:
            self.first, self.high = seq, end
            self.messages += count
            return NEW
        high = self.high
        if seq == high:
            self.high = end
            self.messages += count
            return NEW
        if seq > high:
            self.holes.append([high, seq])
            self.gaps_seen += 1
            self.high = end
            self.messages += count
            return GAP
        # below the high-water mark: fills holes, or is heard before
        filled = 0
        if seq < self.first:
            filled = min(end, self.first) - seq
            if end < self.first:
                self.holes.insert(0, [end, self.first])
            self.first = seq
        if end > high:
            self.messages += end - high
            self.high = end
        filled += self._fill(seq, min(end, high))
        if filled:
            self.messages += filled
            self.out_of_order += 1
            return FILL
        if count == 0 or end > high:
            return NEW
        self.duplicates += 1
        return DUPLICATE

    def _fill(self, start: int, end: int) -> int:
        """Remove [start, end) from the holes; return how many sequence numbers that filled."""
        holes = self.holes
        if not holes or start >= end:
            return 0
        i = bisect_left(holes, [start + 1]) - 1
        if i < 0:
            i = 0
        filled = 0
        while i < len(holes) and holes[i][0] < end:
            h0, h1 = holes[i]
            if h1 <= start:
                i += 1
                continue
            lo, hi = max(h0, start), min(h1, end)
            filled += hi - lo
            pieces = []
            if h0 < lo:
                pieces.append([h0, lo])
            if hi < h1:
                pieces.append([hi, h1])
            holes[i:i + 1] = pieces
            i += len(pieces)
        return filled

    def gap_report(self, ranges: int = 20) -> dict[str, Any]:
        """{count, missing, first, last, ranges: [[first, last], ...] (at most ``ranges``)}."""
        holes = self.holes
        if not holes:
            return {"count": 0, "missing": 0}
        return {"count": len(holes), "missing": sum(h1 - h0 for h0, h1 in holes),
                "first": holes[0][0], "last": holes[-1][1] - 1,
                "ranges": [[h0, h1 - 1] for h0, h1 in holes[:ranges]]}


# ================================================================================================
# Gap check
# ================================================================================================

class _LineState:
    __slots__ = ("tracker", "packets", "bytes", "heartbeats", "end_of_session", "unsequenced",
                 "unsequenced_messages")

    def __init__(self) -> None:
        self.tracker = SeqTracker()
        self.packets = 0
        self.bytes = 0
        self.heartbeats = 0
        self.end_of_session: int | None = None
        self.unsequenced = 0
        self.unsequenced_messages = 0


class _SessionState:
    __slots__ = ("session", "lines", "merged", "pending", "skews", "a_first", "b_first", "ties",
                 "evicted", "heartbeats", "end_of_session", "first_line")

    def __init__(self, session: bytes) -> None:
        self.session = session
        self.lines: dict[Line, _LineState] = {}
        self.merged = SeqTracker()
        self.pending: dict[tuple[int, int], tuple[Line, int]] = {}
        self.skews: list[tuple[Line, Line, int]] = []   # (first line, second line, ts2 - ts1)
        self.a_first = self.b_first = self.ties = 0
        self.evicted = 0
        self.heartbeats = 0
        self.end_of_session: int | None = None


class GapChecker:
    """Per session and line: gaps, duplicates, out-of-order and late datagrams, A/B arbitration,
    heartbeats and End of Session. ``add(packet)`` every packet of a capture, then ``report()``.

    ``max_pending`` bounds the datagrams waiting for their copy on the other line (the oldest
    are counted as heard on one line only when it overflows).
    """

    def __init__(self, a_groups: frozenset[str] = frozenset(), max_pending: int = 1_000_000) -> None:
        self.a_groups = a_groups
        self.max_pending = max_pending
        self.sessions: dict[bytes, _SessionState] = {}
        self.classify = Classifier()
        self.rerequests = 0
        self.other_udp = 0
        self.tcp = 0
        self.other_by_destination: dict[Line, int] = {}

    def add(self, packet: Packet) -> None:
        if packet.proto != IPPROTO_UDP:
            if packet.proto == IPPROTO_TCP:
                self.tcp += 1
            return
        self.add_datagram(packet.ts_ns, (packet.dst_ip, packet.dst_port), packet.payload)

    def add_datagram(self, ts_ns: int, line: Line, payload: bytes) -> None:
        d = self.classify(line, payload)
        kind = d.kind
        if kind == OTHER or kind == REREQUEST:
            if kind == OTHER:
                self.other_udp += 1
            else:
                self.rerequests += 1
            self.other_by_destination[line] = self.other_by_destination.get(line, 0) + 1
            return
        s = self.sessions.get(d.session)
        if s is None:
            s = self.sessions[d.session] = _SessionState(d.session)
        ls = s.lines.get(line)
        if ls is None:
            ls = s.lines[line] = _LineState()
        ls.packets += 1
        ls.bytes += len(payload)
        seq = d.seq
        if kind != MOLD:
            if kind == HEARTBEAT:
                ls.heartbeats += 1
            elif ls.end_of_session is None:
                ls.end_of_session = seq
                if s.end_of_session is None:
                    s.end_of_session = seq
            if seq:   # a heartbeat or End of Session names the next sequence number
                ls.tracker.add(seq, 0)
                s.merged.add(seq, 0)
            return
        if seq == 0:
            ls.unsequenced += 1
            ls.unsequenced_messages += d.messages
            return
        ls.tracker.add(seq, d.messages)
        s.merged.add(seq, d.messages)
        key = (seq, d.messages)
        first = s.pending.pop(key, None)
        if first is None:
            s.pending[key] = (line, ts_ns)
            if len(s.pending) > self.max_pending:
                del s.pending[next(iter(s.pending))]
                s.evicted += 1
        elif first[0] == line:
            s.pending[key] = first      # a duplicate on the same line: still waiting for the other
        else:
            s.skews.append((first[0], line, ts_ns - first[1]))

    def report(self) -> dict[str, Any]:
        sessions = []
        for s in self.sessions.values():
            names = line_names(list(s.lines), self.a_groups)
            lines = []
            for line, ls in sorted(s.lines.items(), key=lambda kv: names[kv[0]]):
                t = ls.tracker
                entry: dict[str, Any] = {
                    "line": names[line], "group": f"{line[0]}:{line[1]}", "packets": ls.packets,
                    "bytes": ls.bytes, "messages": t.messages + ls.unsequenced_messages,
                    "gaps": t.gap_report(),
                    "duplicates": t.duplicates, "out_of_order": t.out_of_order,
                    "heartbeats": ls.heartbeats, "end_of_session": ls.end_of_session}
                if ls.unsequenced:
                    entry["unsequenced_packets"] = ls.unsequenced
                    entry["unsequenced_messages"] = ls.unsequenced_messages
                lines.append(entry)
            m = s.merged
            unseq = sum(ls.unsequenced for ls in s.lines.values())
            out: dict[str, Any] = {
                "channel": channel_of_session(s.session), "session": session_text(s.session),
                "first_seq": m.first or None, "next_seq": m.high or None,
                "messages": m.messages + sum(ls.unsequenced_messages for ls in s.lines.values()),
                "gaps": m.gap_report(), "late": m.out_of_order,
                "heartbeats": sum(ls.heartbeats for ls in s.lines.values()),
                "end_of_session": s.end_of_session, "lines": lines,
            }
            if unseq:
                out["unsequenced_packets"] = unseq
                out["note"] = "sequence number 0 on data packets: gaps and arbitration cannot be judged"
            out["arbitration"] = self._arbitration(s, names)
            sessions.append(out)
        sessions.sort(key=lambda r: (r["channel"] or "~", r["session"]))
        return {
            "sessions": sessions,
            "gap": any(r["gaps"]["count"] for r in sessions),
            "other": {"udp": self.other_udp, "rerequests": self.rerequests, "tcp_segments": self.tcp,
                      "by_destination": {f"{d[0]}:{d[1]}": n for d, n in
                                         sorted(self.other_by_destination.items())}},
        }

    @staticmethod
    def _arbitration(s: _SessionState, names: dict[Line, str]) -> dict[str, Any]:
        if len(s.lines) < 2:
            return {}
        first_wins: dict[str, int] = {}
        skews: list[int] = []
        ties = 0
        for l1, l2, dt in s.skews:
            n1, n2 = names[l1], names[l2]
            if dt == 0:
                ties += 1
            else:
                first_wins[n1] = first_wins.get(n1, 0) + 1
            if (n1, n2) == ("A", "B"):
                skews.append(dt)         # t(B) - t(A)
            elif (n1, n2) == ("B", "A"):
                skews.append(-dt)
        only: dict[str, int] = {}
        for line, _ in s.pending.values():
            only[names[line]] = only.get(names[line], 0) + 1
        return {"pairs": len(s.skews), "first": dict(sorted(first_wins.items())), "ties": ties,
                "one_line_only": dict(sorted(only.items())), "skew_b_minus_a_ns": percentiles(skews)}


# ================================================================================================
# Statistics
# ================================================================================================

#: Upper bounds (inclusive) of the datagram size buckets, in UDP payload bytes.
SIZE_BUCKETS: tuple[int, ...] = (64, 128, 256, 512, 1024, 1472, 9000, 65535)


def max_in_window(ts: Any, weights: Any, width_ns: int) -> tuple[int, int]:
    """The largest sum of ``weights`` over the events in any window [t, t + width_ns) of the
    sorted times ``ts``, and where the first such window starts (0, 0 for none)."""
    best = best_at = 0
    total = 0
    left = 0
    for right, t in enumerate(ts):
        total += weights[right]
        limit = t - width_ns
        while ts[left] <= limit:
            total -= weights[left]
            left += 1
        if total > best:
            best, best_at = total, ts[left]
    return best, best_at


WINDOWS: tuple[tuple[str, int], ...] = (("1s", 1_000_000_000), ("1ms", 1_000_000), ("100us", 100_000))


class _GroupStats:
    __slots__ = ("ts", "msgs", "sizes", "packets", "bytes", "messages")

    def __init__(self) -> None:
        # 8 + 4 + 4 bytes a datagram (not three int objects): a capture of millions of datagrams
        self.ts = array("q")
        self.msgs = array("l")
        self.sizes = array("l")
        self.packets = 0
        self.bytes = 0
        self.messages = 0


class TypeCounter:
    """A receiver sink (``apply_blocks``) counting messages by their type byte."""

    __slots__ = ("by_type",)

    def __init__(self) -> None:
        self.by_type = [0] * 256

    def apply_blocks(self, buf: Any, pos: int, count: int, first_seq: int = 0) -> int:
        by_type = self.by_type
        lb = BLOCK_LENGTH_SIZE
        for _ in range(count):
            n = (buf[pos] << 8) | buf[pos + 1]
            if n:
                by_type[buf[pos + lb]] += 1
            pos += lb + n
        return pos

    def on_gap(self, first_seq: int, count: int) -> None:
        pass

    def on_filled(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def counts(self) -> dict[str, int]:
        return {chr(t): n for t, n in enumerate(self.by_type) if n}


class CaptureStats:
    """Messages per type (each message once, the first copy of the A/B lines: ``on_message`` is
    the hook a ``MessageTap`` calls), packets, bytes and messages per line, rate peaks, sizes."""

    def __init__(self) -> None:
        self.groups: dict[Line, _GroupStats] = {}
        self.sessions_of: dict[Line, set[bytes]] = {}
        self.counters: dict[bytes, TypeCounter] = {}
        self.other = 0
        self.first_ts = 0
        self.last_ts = 0

    def add_datagram(self, ts_ns: int, line: Line, payload: bytes, d: Datagram) -> None:
        if not self.first_ts or ts_ns < self.first_ts:
            self.first_ts = ts_ns
        if ts_ns > self.last_ts:
            self.last_ts = ts_ns
        g = self.groups.get(line)
        if g is None:
            g = self.groups[line] = _GroupStats()
        n = d.messages if d.kind == MOLD else 0
        g.ts.append(ts_ns)
        g.msgs.append(n)
        g.sizes.append(len(payload))
        g.packets += 1
        g.bytes += len(payload)
        g.messages += n
        if d.kind == OTHER or d.kind == REREQUEST:
            self.other += 1
        else:
            self.sessions_of.setdefault(line, set()).add(d.session)

    def type_counter(self, session: bytes) -> TypeCounter:
        """A receiver sink counting the session's messages by type."""
        sink = self.counters.get(session)
        if sink is None:
            sink = self.counters[session] = TypeCounter()
        return sink

    @staticmethod
    def _peaks(ts: Any, msgs: Any, sizes: Any) -> dict[str, Any]:
        if not ts:
            return {}
        if any(ts[i] > ts[i + 1] for i in range(len(ts) - 1)):     # capture times out of order
            order = sorted(range(len(ts)), key=ts.__getitem__)
            ts = [ts[i] for i in order]
            msgs = [msgs[i] for i in order]
            sizes = [sizes[i] for i in order]
        ones = [1] * len(ts)
        out: dict[str, Any] = {}
        for name, width in WINDOWS:
            m, m_at = max_in_window(ts, msgs, width)
            p, _ = max_in_window(ts, ones, width)
            b, _ = max_in_window(ts, sizes, width)
            out[name] = {"messages": m, "packets": p, "bytes": b, "messages_at_ns": m_at}
        return out

    def report(self) -> dict[str, Any]:
        duration = self.last_ts - self.first_ts
        groups = []
        all_ts = array("q")
        all_msgs = array("l")
        all_sizes = array("l")
        for line, g in sorted(self.groups.items(), key=lambda kv: (socket.inet_aton(kv[0][0]), kv[0][1])):
            hist = [0] * len(SIZE_BUCKETS)
            for size in g.sizes:
                hist[bisect_left(SIZE_BUCKETS, size)] += 1
            groups.append({
                "group": f"{line[0]}:{line[1]}",
                "sessions": sorted(session_text(s) for s in self.sessions_of.get(line, ())),
                "packets": g.packets, "bytes": g.bytes, "messages": g.messages,
                "messages_per_s": g.messages * 1_000_000_000 // duration if duration else None,
                "size": {"min": min(g.sizes), "max": max(g.sizes), "mean": g.bytes // g.packets,
                         "histogram": {f"<={b}": n for b, n in zip(SIZE_BUCKETS, hist) if n}},
                "peaks": self._peaks(g.ts, g.msgs, g.sizes)})
            all_ts += g.ts
            all_msgs += g.msgs
            all_sizes += g.sizes
        types = {session_text(s): c.counts() for s, c in sorted(self.counters.items())}
        total = sum(sum(c.values()) for c in types.values())
        return {"duration_ns": duration, "first_ns": self.first_ts, "last_ns": self.last_ts,
                "messages": total, "types": types,
                "messages_per_s": total * 1_000_000_000 // duration if duration else None,
                "groups": groups, "peaks_all_groups": self._peaks(all_ts, all_msgs, all_sizes),
                "other_udp": self.other}


# ================================================================================================
# Sessions of a capture into sinks
# ================================================================================================

class SessionDemux:
    """Feeds each session's datagrams to a ``ChannelReceiver`` of its own (A/B arbitration, first
    copy wins; ``hold_after_gap``: messages that come after later ones are delivered in order),
    whose sinks ``sinks_for(session)`` makes; ``None`` from it leaves the session out. Data
    datagrams with sequence number 0 (unsequenced captures) go to the sinks as they come, with
    sequence number 0. ``finish()`` delivers what is still held over the holes."""

    def __init__(self, sinks_for: Callable[[bytes], list[Any] | None], hold_after_gap: bool = True) -> None:
        self.sinks_for = sinks_for
        self.hold_after_gap = hold_after_gap
        self.receivers: dict[bytes, ChannelReceiver | None] = {}
        self.sinks: dict[bytes, list[Any]] = {}
        self.legs: dict[bytes, dict[Line, int]] = {}
        self.unsequenced = 0

    def add(self, ts_ns: int, line: Line, payload: bytes, d: Datagram) -> int:
        """Take a classified datagram; return how many messages went to the sinks."""
        if d.kind == OTHER or d.kind == REREQUEST:
            return 0
        session = d.session
        if session not in self.receivers:
            sinks = self.sinks_for(session)
            self.receivers[session] = None if sinks is None else ChannelReceiver(
                session_text(session), sinks, hold_after_gap=self.hold_after_gap)
            if sinks is not None:
                self.sinks[session] = sinks
        r = self.receivers[session]
        if r is None:
            return 0
        if d.kind == MOLD and d.seq == 0:
            self.unsequenced += 1
            for sink in self.sinks[session]:
                sink.apply_blocks(payload, HEADER_SIZE, d.messages, 0)
            return d.messages
        legs = self.legs.setdefault(session, {})
        leg = legs.setdefault(line, min(len(legs), 1))
        return r.receive(ts_ns, payload, leg)

    def finish(self) -> None:
        for r in self.receivers.values():
            if r is not None:
                r.skip_gap()


# ================================================================================================
# SoupBinTCP streams of a capture
# ================================================================================================

Flow = tuple[str, int, str, int]   # (source address, port, destination address, port)


class _Stream:
    __slots__ = ("next_seq", "parser", "missing", "broken")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.parser = FrameParser()
        self.missing = 0          # stream bytes the capture lacks (the parser restarted after them)
        self.broken = False       # framing lost (bad length): the rest of the stream is skipped


class SoupStreams:
    """Reassembles each direction of each TCP connection by sequence number and splits it into
    SoupBinTCP packets: ``add(packet)`` returns ``[(flow, SoupPacket), ...]`` completed by that
    segment. Retransmitted bytes are dropped; a hole in a stream (bytes the capture missed) is
    counted in ``missing_bytes`` and framing restarts after it, at the next segment boundary.
    A capture that starts mid-connection starts each stream at its first segment."""

    def __init__(self) -> None:
        self.streams: dict[Flow, _Stream] = {}
        self.segments = 0
        self.missing_bytes = 0
        self.framing_errors = 0

    def add(self, p: Packet) -> list[tuple[Flow, SoupPacket]]:
        flow = (p.src_ip, p.src_port, p.dst_ip, p.dst_port)
        st = self.streams.get(flow)
        if st is None:
            st = self.streams[flow] = _Stream()
        self.segments += 1
        seq = p.tcp_seq
        flags = p.tcp_flags
        if flags & TCP_SYN:
            st.next_seq = (seq + 1) & 0xFFFFFFFF
            st.parser = FrameParser()
            st.broken = False
            return []
        data = p.payload
        if flags & TCP_RST or not data or st.broken:
            return []
        if st.next_seq is None:
            st.next_seq = seq
        ahead = (seq - st.next_seq) & 0xFFFFFFFF
        if ahead >= 0x80000000:                  # starts before next_seq: retransmitted bytes
            behind = 0x100000000 - ahead
            if behind >= len(data):
                return []
            data = data[behind:]
        elif ahead:                               # a hole: the capture missed these bytes
            st.missing += ahead
            self.missing_bytes += ahead
            st.parser = FrameParser()
        st.next_seq = (seq + len(p.payload) + (1 if flags & TCP_FIN else 0)) & 0xFFFFFFFF
        try:
            out = st.parser.feed(data)
        except ValueError:
            self.framing_errors += 1
            st.broken = True
            return []
        return [(flow, sp) for sp in out]


# ================================================================================================
# Latency
# ================================================================================================

_QUARTER_HOUR_NS = 900 * 1_000_000_000
_U64 = struct.Struct(">Q").unpack_from


def infer_midnight(capture_ns: int, stamp_ns: int) -> int:
    """The epoch ns of the midnight an ITCH timestamp counts from, given the capture time of its
    message: capture - stamp rounded to the nearest quarter hour (every UTC offset is a whole
    number of quarter hours; the wire latency is far below 7.5 minutes)."""
    offset = capture_ns - stamp_ns
    return (offset + _QUARTER_HOUR_NS // 2) // _QUARTER_HOUR_NS * _QUARTER_HOUR_NS


def _offsets(name: str) -> dict[int, int]:
    """Type byte -> byte offset of field ``name``, for the ITCH layouts that have it."""
    return {t[0]: f.offset for t, m in itch.LAYOUTS.items() for f in m.fields if f.name == name}


_ORDER_REF_AT = _offsets("order_ref")
_ORDER_REF_AT[ord("U")] = next(f.offset for f in itch.ORDER_REPLACE.fields if f.name == "original_order_ref")
_MATCH_AT = _offsets("match_number")
_STAMPED = frozenset(t[0] for t, m in ALL_LAYOUTS.items() if m.fields and m.fields[2].name == "timestamp")
_TS_AT = itch.TIMESTAMP_AT


class Latency:
    """Capture time against the message timestamps, per line; inter-arrival times per line; and
    order entry (OUCH Enter Order seen on the wire) to the first ITCH message about the order
    (by the order reference of its Order Accepted, or the match number of its executions).

    ``midnight_ns``: the epoch ns the timestamps count from; None: inferred per session from its
    first message (``infer_midnight``). Times are integers in ns."""

    def __init__(self, midnight_ns: int | None = None) -> None:
        self.midnight_ns = midnight_ns
        self.midnights: dict[bytes, int] = {}
        self.wire: dict[Line, list[int]] = {}          # capture - (midnight + timestamp), per message
        self.series: dict[Line, list[tuple[int, int]]] = {}   # (capture ns, latency ns) for the plot
        self.gaps: dict[Line, list[int]] = {}          # inter-arrival of datagrams
        self.last: dict[Line, int] = {}
        self.ref_seen: dict[int, int] = {}             # ITCH order ref -> first capture ns
        self.match_seen: dict[int, int] = {}           # ITCH match number -> first capture ns
        self.entered: dict[tuple[Flow, int], int] = {}     # (client flow, user ref) -> capture ns
        self.accepted: dict[tuple[Flow, int], int] = {}    # -> order ref
        self.executed: dict[tuple[Flow, int], int] = {}    # -> first match number

    def add_datagram(self, ts_ns: int, line: Line, payload: bytes, d: Datagram) -> None:
        if d.kind == OTHER or d.kind == REREQUEST:
            return
        last = self.last.get(line)
        if last is not None:
            self.gaps.setdefault(line, []).append(ts_ns - last)
        self.last[line] = ts_ns
        if d.kind != MOLD:
            return
        wire = self.wire.setdefault(line, [])
        series = self.series.setdefault(line, [])
        midnight = self.midnight_ns if self.midnight_ns is not None else self.midnights.get(d.session)
        ref_seen, match_seen = self.ref_seen, self.match_seen
        pos = HEADER_SIZE
        for _ in range(d.messages):
            n = (payload[pos] << 8) | payload[pos + 1]
            m = pos + BLOCK_LENGTH_SIZE
            t = payload[m] if n else 0
            if t in _STAMPED and n >= itch.HEADER_SIZE:
                stamp = int.from_bytes(payload[m + _TS_AT:m + itch.HEADER_SIZE], "big")
                if midnight is None:
                    midnight = self.midnights[d.session] = infer_midnight(ts_ns, stamp)
                lat = ts_ns - midnight - stamp
                wire.append(lat)
                series.append((ts_ns, lat))
            at = _ORDER_REF_AT.get(t)
            if at is not None and n >= at + 8:
                ref_seen.setdefault(_U64(payload, m + at)[0], ts_ns)
            at = _MATCH_AT.get(t)
            if at is not None and n >= at + 8:
                match_seen.setdefault(_U64(payload, m + at)[0], ts_ns)
            pos = m + n

    def add_soup(self, ts_ns: int, flow: Flow, packet: SoupPacket) -> None:
        """A SoupBinTCP packet of ``flow`` (OUCH inside 'U' from the client, 'S' from the server)."""
        body = packet.payload
        if not body:
            return
        try:
            if packet.type == b"U" and body[:1] == b"O":
                msg, _ = ouch_layout.decode(body, ouch_layout.INBOUND)
                self.entered.setdefault((flow, msg.user_ref_num), ts_ns)
            elif packet.type == b"S" and body[:1] in (b"A", b"E"):
                msg, _ = ouch_layout.decode(body, ouch_layout.OUTBOUND)
                client = (flow[2], flow[3], flow[0], flow[1])
                if body[:1] == b"A":
                    self.accepted.setdefault((client, msg.user_ref_num), msg.order_ref)
                else:
                    self.executed.setdefault((client, msg.user_ref_num), msg.match_number)
        except ValueError:
            return

    def order_to_market_data(self) -> list[int]:
        """Per entered order that the market data shows: first ITCH capture time - Enter Order's."""
        out = []
        for key, t0 in self.entered.items():
            seen = []
            ref = self.accepted.get(key)
            if ref is not None and ref in self.ref_seen:
                seen.append(self.ref_seen[ref])
            match = self.executed.get(key)
            if match is not None and match in self.match_seen:
                seen.append(self.match_seen[match])
            if seen:
                out.append(min(seen) - t0)
        return out

    def report(self) -> dict[str, Any]:
        def name(line: Line) -> str:
            return f"{line[0]}:{line[1]}"
        o2m = self.order_to_market_data()
        return {
            "midnight_ns": self.midnight_ns if self.midnight_ns is not None else
            {session_text(s): m for s, m in sorted(self.midnights.items())},
            "wire_minus_timestamp_ns": {name(ln): {"messages": len(v), **percentiles(v)}
                                        for ln, v in sorted(self.wire.items())},
            "inter_arrival_ns": {name(ln): {"gaps": len(v), **percentiles(v)} for ln, v in sorted(self.gaps.items())},
            "order_entry_to_market_data_ns": {"orders_entered": len(self.entered), "matched": len(o2m),
                                              **percentiles(o2m)},
        }
