"""MoldUDP64: the framing of every multicast feed, as sans-IO code (bytes in, bytes out).

Downstream packet (one UDP datagram, at most ``max_payload`` bytes, 1472 by default)::

     0                   10                  18      20
    +-------------------+-------------------+-------+------------------------------//--+
    |      session      |  sequence number  | count |  message blocks                   |
    |  10 alpha         |  u64, of the      |  u16  |                                   |
    |                   |  first message    |       |                                   |
    +-------------------+-------------------+-------+------------------------------//--+

    message block (repeated ``count`` times)
    +-------+----------------------------//--+
    |length |  message (length bytes)         |
    |  u16  |  e.g. one ITCH 5.0 message      |
    +-------+----------------------------//--+

    count = 0       heartbeat: no blocks, sequence = next expected
    count = 0xFFFF  end of session: no blocks, sequence = next expected

    Re-request (client -> request server, 20 bytes):
    +-------------------+-------------------+-------+
    |      session      | first seq wanted  | count |
    |     10 alpha      |       u64         |  u16  |
    +-------------------+-------------------+-------+

Sequence numbers start at 1 per session, one per message; the next packet's sequence is
this one's sequence + count. ``PacketBuilder`` packs messages into as few datagrams as
fit and computes counts and sequence numbers itself; ``parse_packet`` validates every
length and raises ValueError on malformed input.
"""
from __future__ import annotations

import struct
from bisect import bisect_right
from itertools import accumulate
from typing import Final, NamedTuple

from feeds.layout import U16, U64, Alpha10, Buffer, Msg, alpha

__all__ = [
    "HEADER", "HEADER_SIZE", "REREQUEST", "REREQUEST_SIZE", "END_OF_SESSION_COUNT", "BLOCK_LENGTH",
    "BLOCK_LENGTH_SIZE", "MIN_PAYLOAD",
    "DEFAULT_MAX_PAYLOAD", "MAX_UDP_PAYLOAD", "Header", "ReRequest", "MoldPacket", "Session",
    "PacketBuilder", "packetize", "runs_within", "session_name", "heartbeat", "end_of_session", "parse_packet",
    "encode_rerequest", "decode_rerequest", "frame_blocks", "split_blocks",
]


class Header(NamedTuple):
    """The 20-byte downstream packet header."""

    session: Alpha10
    sequence: U64
    message_count: U16


class ReRequest(NamedTuple):
    """The 20-byte re-request: ``message_count`` messages from ``sequence`` (inclusive)."""

    session: Alpha10
    sequence: U64
    message_count: U16


HEADER = Msg(None, "MoldUDP64 header", Header)
REREQUEST = Msg(None, "MoldUDP64 re-request", ReRequest)
HEADER_SIZE = HEADER.size
REREQUEST_SIZE = REREQUEST.size

#: Message count of an End of Session packet.
END_OF_SESSION_COUNT = 0xFFFF
#: Largest UDP payload that avoids IP fragmentation on a 1500-byte MTU (1500 - 20 - 8).
DEFAULT_MAX_PAYLOAD = 1472
#: Largest payload a UDP datagram over IPv4 can carry.
MAX_UDP_PAYLOAD = 65507

_pack_header = HEADER.struct.pack
_unpack_header_from = HEADER.struct.unpack_from
#: A message block's length prefix (u16), before each message of a packet.
BLOCK_LENGTH: Final = struct.Struct(">H")
BLOCK_LENGTH_SIZE: Final = BLOCK_LENGTH.size
_pack_u16 = BLOCK_LENGTH.pack
_unpack_u16_from = BLOCK_LENGTH.unpack_from
#: The smallest max_payload a builder accepts: a header and one block of a 1-byte message.
MIN_PAYLOAD: Final = HEADER_SIZE + BLOCK_LENGTH_SIZE + 1


class MoldPacket(NamedTuple):
    """A parsed downstream packet. ``messages`` is empty for heartbeats and end of session."""

    session: bytes
    sequence: int
    message_count: int
    messages: list[bytes]

    @property
    def is_heartbeat(self) -> bool:
        return self.message_count == 0

    @property
    def is_end_of_session(self) -> bool:
        return self.message_count == END_OF_SESSION_COUNT


def session_name(name: str | bytes) -> bytes:
    """The 10-byte session field: ASCII, left-justified, space-padded (ValueError if longer)."""
    return alpha(name, 10)


def heartbeat(session: bytes, next_sequence: int) -> bytes:
    """A heartbeat: count 0, sequence = the next sequence number the receiver should expect."""
    return _pack_header(session_name(session), next_sequence, 0)


def end_of_session(session: bytes, next_sequence: int) -> bytes:
    """An End of Session packet: count 0xFFFF, sequence = the next expected sequence number."""
    return _pack_header(session_name(session), next_sequence, END_OF_SESSION_COUNT)


def frame_blocks(messages: list[bytes]) -> bytes:
    """Frame messages as ``u16 length + message`` blocks (also the NASDAQ BinaryFILE layout)."""
    parts: list[bytes] = []
    for m in messages:
        if len(m) > 0xFFFF:
            raise ValueError(f"MoldUDP64: a message of {len(m)} bytes does not fit a u16 length")
        parts.append(_pack_u16(len(m)))
        parts.append(m)
    return b"".join(parts)


def split_blocks(data: Buffer) -> list[bytes]:
    """Split a run of ``u16 length + message`` blocks; ValueError if the last one is cut short."""
    out: list[bytes] = []
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < BLOCK_LENGTH_SIZE:
            raise ValueError(f"blocks: 1 stray byte at offset {pos}")
        (n,) = _unpack_u16_from(view, pos)
        pos += BLOCK_LENGTH_SIZE
        if pos + n > end:
            raise ValueError(f"blocks: block at offset {pos - BLOCK_LENGTH_SIZE} claims {n} bytes, {end - pos} left")
        out.append(bytes(view[pos:pos + n]))
        pos += n
    return out


def parse_packet(data: Buffer) -> MoldPacket:
    """Parse one downstream datagram; raise ValueError if it is malformed.

    Checks: at least a header; heartbeats and end of session carry nothing after it;
    exactly ``count`` blocks, each within the datagram; no bytes after the last block.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise ValueError(f"MoldUDP64: {size} bytes is shorter than the {HEADER_SIZE}-byte header")
    session, sequence, count = _unpack_header_from(data, 0)
    if count == 0 or count == END_OF_SESSION_COUNT:
        if size != HEADER_SIZE:
            kind = "heartbeat" if count == 0 else "end of session"
            raise ValueError(f"MoldUDP64: {kind} packet with {size - HEADER_SIZE} trailing bytes")
        return MoldPacket(session, sequence, count, [])
    messages: list[bytes] = []
    append = messages.append
    pos = HEADER_SIZE
    lb = BLOCK_LENGTH_SIZE
    for index in range(count):
        if pos + lb > size:
            raise ValueError(f"MoldUDP64: count {count} but the datagram ends after {index} messages")
        (n,) = _unpack_u16_from(data, pos)
        pos += lb
        end = pos + n
        if end > size:
            raise ValueError(f"MoldUDP64: message {index} claims {n} bytes, only {size - pos} left")
        append(bytes(data[pos:end]))
        pos = end
    if pos != size:
        raise ValueError(f"MoldUDP64: {size - pos} bytes after the last of {count} messages")
    return MoldPacket(session, sequence, count, messages)


def encode_rerequest(session: bytes, first_sequence: int, count: int) -> bytes:
    """A 20-byte re-request for ``count`` messages starting at ``first_sequence``."""
    if not 0 < count < END_OF_SESSION_COUNT:
        raise ValueError(f"MoldUDP64 re-request: count {count} outside 1..65534")
    return REREQUEST.encode(ReRequest(session_name(session), first_sequence, count))


def decode_rerequest(data: Buffer) -> ReRequest:
    """Decode a 20-byte re-request; ValueError on any other length."""
    if len(data) != REREQUEST_SIZE:
        raise ValueError(f"MoldUDP64 re-request: expected {REREQUEST_SIZE} bytes, got {len(data)}")
    return REREQUEST.decode(data)


class Session:
    """The state of one MoldUDP64 session: its 10-byte name and next sequence number.

    Owned by the single thread that publishes the session. ``next_seq`` is the sequence
    number of the first message not yet handed out in a packet, so a heartbeat sent now
    tells receivers exactly what to expect next.
    """

    __slots__ = ("name", "next_seq")

    def __init__(self, name: str | bytes, next_seq: int = 1) -> None:
        if next_seq < 1:
            raise ValueError(f"MoldUDP64: sequence numbers start at 1, got {next_seq}")
        self.name: bytes = session_name(name)
        self.next_seq: int = next_seq

    def heartbeat(self) -> bytes:
        """A heartbeat carrying the next expected sequence number."""
        return _pack_header(self.name, self.next_seq, 0)

    def end_of_session(self) -> bytes:
        """An End of Session packet carrying the next expected sequence number."""
        return _pack_header(self.name, self.next_seq, END_OF_SESSION_COUNT)

    def rerequest(self, first_sequence: int, count: int) -> bytes:
        """A re-request for this session."""
        return encode_rerequest(self.name, first_sequence, count)

    def __repr__(self) -> str:
        return f"Session({self.name!r}, next_seq={self.next_seq})"


def runs_within(parts: list[bytes], room: int) -> list[tuple[int, int]]:
    """Cut ``parts`` into consecutive runs [i, j) of at most ``room`` bytes each, each as long as the
    next part allows: one C-level ``accumulate`` over the lengths and a ``bisect`` per run (no Python
    step per part). ValueError when one part alone exceeds ``room``."""
    n = len(parts)
    if not n:
        return []
    cum = list(accumulate(map(len, parts)))
    if cum[-1] <= room:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    i = 0
    base = 0
    while i < n:
        j = bisect_right(cum, base + room, i)
        if j == i:
            raise ValueError(f"a part of {len(parts[i])} bytes does not fit {room}")
        out.append((i, j))
        base = cum[j - 1]
        i = j
    return out


def packetize(session: bytes, first_seq: int, framed: list[bytes], max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[bytes]:
    """The one packetizer: cut framed messages (``u16 length + message``) into MoldUDP64 datagrams of
    at most ``max_payload`` bytes, in order, each as full as the next message allows
    (``runs_within``); one header pack and one join each."""
    try:
        runs = runs_within(framed, max_payload - HEADER_SIZE)
    except ValueError:
        big = max(len(f) for f in framed) - BLOCK_LENGTH_SIZE
        raise ValueError(f"MoldUDP64: a message of {big} bytes does not fit {max_payload}") from None
    join = b"".join
    return [_pack_header(session, first_seq + i, j - i) + join(framed[i:j]) for i, j in runs]


class PacketBuilder:
    """Packs messages into as few MoldUDP64 datagrams as fit (``packetize``); owned by the publishing
    thread.

    ``add(message)`` assigns the message its sequence number and returns it. ``drain()`` hands over
    the datagrams that are full (the last, still open, keeps its messages), ``flush()`` every one,
    the open one included; either advances ``session.next_seq`` past every message handed over. The
    caller never passes a length, count or sequence number. The builder takes over the session's
    numbering from ``session.next_seq`` at construction: one builder per session, and nothing else
    changes ``next_seq`` while it is in use.
    """

    __slots__ = ("session", "max_payload", "_framed", "_first", "_lens")

    def __init__(self, session: Session, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not MIN_PAYLOAD <= max_payload <= MAX_UDP_PAYLOAD:
            raise ValueError(f"MoldUDP64: max_payload {max_payload} outside {MIN_PAYLOAD}..{MAX_UDP_PAYLOAD}")
        self.session = session
        self.max_payload = max_payload
        self._first = session.next_seq      # sequence of the first message not handed over
        self._framed: list[bytes] = []      # the messages not handed over, framed
        # the u16 length prefix of every size that fits: a list index is ~20% faster than a
        # struct call per message
        self._lens: list[bytes] = [_pack_u16(i) for i in range(self.max_message + 1)]

    @property
    def max_message(self) -> int:
        """The largest message that fits a packet."""
        return self.max_payload - HEADER_SIZE - BLOCK_LENGTH_SIZE

    @property
    def next_seq(self) -> int:
        """The sequence number the next added message will get."""
        return self._first + len(self._framed)

    @property
    def pending_messages(self) -> int:
        """Messages not handed over yet."""
        return len(self._framed)

    def add(self, message: bytes) -> int:
        """Append one message (ValueError if empty or larger than ``max_message``); return its sequence."""
        n = len(message)
        if not 0 < n <= self.max_payload - HEADER_SIZE - BLOCK_LENGTH_SIZE:
            raise ValueError(f"MoldUDP64: message of {n} bytes; allowed 1..{self.max_message}")
        self._framed.append(self._lens[n] + message)
        return self._first + len(self._framed) - 1

    def add_many(self, messages: list[bytes]) -> int:
        """Append messages in order; return the sequence number of the first."""
        first = self.next_seq
        add = self.add
        for m in messages:
            add(m)
        return first

    def drain(self) -> list[bytes]:
        """Hand over the full datagrams (the open one, the last, stays open)."""
        packets = packetize(self.session.name, self._first, self._framed, self.max_payload)
        if len(packets) <= 1:
            return []
        ready = packets[:-1]
        done = sum(_unpack_u16_from(p, 18)[0] for p in ready)
        del self._framed[:done]
        self._first += done
        self.session.next_seq = self._first
        return ready

    def flush(self) -> list[bytes]:
        """Hand over every datagram, the open one included: call at the end of a batch."""
        packets = packetize(self.session.name, self._first, self._framed, self.max_payload)
        self._first += len(self._framed)
        self._framed = []
        if packets:
            self.session.next_seq = self._first
        return packets
