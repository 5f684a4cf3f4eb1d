"""SoupBinTCP 3.0: the framing of every TCP session (order entry, snapshot, replay), sans-IO.

Every logical packet; packets do not align with TCP segments::

     0       2      3
    +-------+------+----------------------------------//--+
    |length | type |  payload (length - 1 bytes)           |
    |  u16  | char |                                       |
    +-------+------+----------------------------------//--+
     length counts the type byte and the payload, never itself; it is at least 1

    Login Request 'L' (client -> server), payload 46 bytes
    +----------+--------------+-------------------+------------------------------+
    | username |   password   | requested session | requested sequence number    |
    | 6 alpha  |   10 alpha   |  10 alpha (blank  | 20 ASCII digits (0 = from    |
    |          |              |  = current)       | the next new message)        |
    +----------+--------------+-------------------+------------------------------+

    Login Accepted 'A' (server -> client), payload 30 bytes
    +-------------------+------------------------------+
    |      session      | sequence number: the next    |
    |     10 alpha      | sequenced message, 20 digits |
    +-------------------+------------------------------+

    Login Rejected 'J': 1 byte reason, A not authorized, S session not available
    Sequenced Data 'S', Unsequenced Data 'U', Debug '+': free payload
    Server Heartbeat 'H', Client Heartbeat 'R', End of Session 'Z', Logout Request 'O': empty

Encoders left-justify username and password and right-justify session and sequence
number (space padding); the login parsers strip spaces on both sides, since clients pad
either way. ``FrameParser`` turns arbitrary chunks of the TCP byte stream into packets.
"""
from __future__ import annotations

import struct
from typing import Final, NamedTuple

from feeds.layout import Alpha6, Alpha10, Alpha20, Buffer, Msg

__all__ = [
    "DEBUG", "LOGIN_ACCEPTED", "LOGIN_REJECTED", "SEQUENCED_DATA", "SERVER_HEARTBEAT",
    "END_OF_SESSION", "LOGIN_REQUEST", "UNSEQUENCED_DATA", "CLIENT_HEARTBEAT", "LOGOUT_REQUEST",
    "REJECT_NOT_AUTHORIZED", "REJECT_SESSION_NOT_AVAILABLE", "PACKET_TYPES",
    "SERVER_PACKET_TYPES", "CLIENT_PACKET_TYPES", "MAX_PACKET_LENGTH", "LENGTH_SIZE", "HEAD_SIZE", "TYPE_SIZE",
    "SoupPacket", "LoginRequest", "LoginAccepted", "LOGIN_REQUEST_LAYOUT", "LOGIN_ACCEPTED_LAYOUT",
    "encode_packet", "encode_debug", "encode_login_request", "encode_login_accepted",
    "encode_login_rejected", "encode_sequenced_data", "encode_unsequenced_data",
    "encode_server_heartbeat", "encode_client_heartbeat", "encode_end_of_session",
    "encode_logout_request", "parse_login_request", "parse_login_accepted",
    "parse_login_rejected", "FrameParser",
]

DEBUG = b"+"
LOGIN_ACCEPTED = b"A"
LOGIN_REJECTED = b"J"
SEQUENCED_DATA = b"S"
SERVER_HEARTBEAT = b"H"
END_OF_SESSION = b"Z"
LOGIN_REQUEST = b"L"
UNSEQUENCED_DATA = b"U"
CLIENT_HEARTBEAT = b"R"
LOGOUT_REQUEST = b"O"

REJECT_NOT_AUTHORIZED = b"A"
REJECT_SESSION_NOT_AVAILABLE = b"S"

SERVER_PACKET_TYPES = frozenset((DEBUG, LOGIN_ACCEPTED, LOGIN_REJECTED, SEQUENCED_DATA,
                                 SERVER_HEARTBEAT, END_OF_SESSION))
CLIENT_PACKET_TYPES = frozenset((DEBUG, LOGIN_REQUEST, UNSEQUENCED_DATA, CLIENT_HEARTBEAT,
                                 LOGOUT_REQUEST))
PACKET_TYPES = SERVER_PACKET_TYPES | CLIENT_PACKET_TYPES

#: The largest value the u16 length field can hold.
MAX_PACKET_LENGTH = 0xFFFF

_HEAD = struct.Struct(">Hc")   # length, type
_pack_head = _HEAD.pack
#: Bytes of the length field; of the length and the type (where the payload starts); of the type,
#: which the length counts.
LENGTH_SIZE: Final = struct.calcsize(">H")
HEAD_SIZE: Final = _HEAD.size
TYPE_SIZE: Final = HEAD_SIZE - LENGTH_SIZE


class SoupPacket(NamedTuple):
    """One logical packet: its type byte and payload."""

    type: bytes
    payload: bytes


_new_packet = tuple.__new__                       # SoupPacket(a, b) without the Python-level __new__
_ONE_BYTE: Final = tuple(bytes((i,)) for i in range(256))


class _LoginRequestWire(NamedTuple):
    username: Alpha6
    password: Alpha10
    session: Alpha10
    sequence: Alpha20


class _LoginAcceptedWire(NamedTuple):
    session: Alpha10
    sequence: Alpha20


LOGIN_REQUEST_LAYOUT = Msg(None, "SoupBinTCP Login Request", _LoginRequestWire)
LOGIN_ACCEPTED_LAYOUT = Msg(None, "SoupBinTCP Login Accepted", _LoginAcceptedWire)


class LoginRequest(NamedTuple):
    """A parsed Login Request: fields stripped of padding; session "" means the current one."""

    username: str
    password: str
    session: str
    sequence: int


class LoginAccepted(NamedTuple):
    """A parsed Login Accepted: the session and the next sequence number the server will send."""

    session: str
    sequence: int


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------

def encode_packet(packet_type: bytes, payload: bytes = b"") -> bytes:
    """Frame ``payload`` as one packet of ``packet_type``; ValueError if it cannot be framed."""
    if len(packet_type) != 1:
        raise ValueError(f"SoupBinTCP: packet type must be one byte, got {packet_type!r}")
    if len(payload) >= MAX_PACKET_LENGTH:
        raise ValueError(f"SoupBinTCP: payload of {len(payload)} bytes exceeds {MAX_PACKET_LENGTH - 1}")
    return _pack_head(len(payload) + 1, packet_type) + payload


def _text(value: str | bytes, size: int, what: str, *, right: bool) -> bytes:
    raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
    raw = raw.strip(b" ")
    if len(raw) > size:
        raise ValueError(f"SoupBinTCP: {what} {raw!r} is longer than {size}")
    return raw.rjust(size, b" ") if right else raw.ljust(size, b" ")


def _number(value: int, what: str) -> bytes:
    if value < 0 or value >= 10**20:
        raise ValueError(f"SoupBinTCP: {what} {value} is outside 0..10**20-1")
    return str(value).encode("ascii").rjust(20, b" ")


def encode_login_request(username: str | bytes, password: str | bytes, session: str | bytes = b"",
                         sequence: int = 0) -> bytes:
    """Login Request: blank ``session`` = the current session, ``sequence`` 0 = from the next
    new message, else the next sequence number the client wants."""
    payload = LOGIN_REQUEST_LAYOUT.encode(_LoginRequestWire(
        _text(username, 6, "username", right=False), _text(password, 10, "password", right=False),
        _text(session, 10, "session", right=True), _number(sequence, "sequence number")))
    return encode_packet(LOGIN_REQUEST, payload)


def encode_login_accepted(session: str | bytes, sequence: int) -> bytes:
    """Login Accepted: ``sequence`` is the number of the next Sequenced Data packet."""
    payload = LOGIN_ACCEPTED_LAYOUT.encode(_LoginAcceptedWire(
        _text(session, 10, "session", right=True), _number(sequence, "sequence number")))
    return encode_packet(LOGIN_ACCEPTED, payload)


def encode_login_rejected(reason: bytes) -> bytes:
    """Login Rejected with reason A (not authorized) or S (session not available)."""
    if reason not in (REJECT_NOT_AUTHORIZED, REJECT_SESSION_NOT_AVAILABLE):
        raise ValueError(f"SoupBinTCP: login reject reason must be b'A' or b'S', got {reason!r}")
    return _pack_head(TYPE_SIZE + len(reason), LOGIN_REJECTED) + reason


def encode_sequenced_data(message: bytes) -> bytes:
    """Sequenced Data carrying one message (its sequence number is implicit)."""
    n = len(message)
    if n >= MAX_PACKET_LENGTH:
        raise ValueError(f"SoupBinTCP: message of {n} bytes exceeds {MAX_PACKET_LENGTH - 1}")
    return _pack_head(n + 1, SEQUENCED_DATA) + message


def encode_unsequenced_data(message: bytes) -> bytes:
    """Unsequenced Data carrying one message."""
    n = len(message)
    if n >= MAX_PACKET_LENGTH:
        raise ValueError(f"SoupBinTCP: message of {n} bytes exceeds {MAX_PACKET_LENGTH - 1}")
    return _pack_head(n + 1, UNSEQUENCED_DATA) + message


def encode_debug(text: str | bytes) -> bytes:
    """A Debug packet with free text."""
    return encode_packet(DEBUG, text.encode("ascii") if isinstance(text, str) else text)


_SERVER_HEARTBEAT = _pack_head(1, SERVER_HEARTBEAT)
_CLIENT_HEARTBEAT = _pack_head(1, CLIENT_HEARTBEAT)
_END_OF_SESSION = _pack_head(1, END_OF_SESSION)
_LOGOUT_REQUEST = _pack_head(1, LOGOUT_REQUEST)


def encode_server_heartbeat() -> bytes:
    """Server Heartbeat 'H'."""
    return _SERVER_HEARTBEAT


def encode_client_heartbeat() -> bytes:
    """Client Heartbeat 'R'."""
    return _CLIENT_HEARTBEAT


def encode_end_of_session() -> bytes:
    """End of Session 'Z'."""
    return _END_OF_SESSION


def encode_logout_request() -> bytes:
    """Logout Request 'O'."""
    return _LOGOUT_REQUEST


# --------------------------------------------------------------------------------------------
# Payload parsers
# --------------------------------------------------------------------------------------------

def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.strip(b" ").decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"SoupBinTCP: {what} is not ASCII: {raw!r}") from None


def _digits(raw: bytes, what: str) -> int:
    text = _ascii(raw, what)
    if not text:
        return 0
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"SoupBinTCP: {what} {raw!r} is not a decimal number")
    return int(text)


def parse_login_request(payload: Buffer) -> LoginRequest:
    """Parse a Login Request payload (46 bytes); blank sequence number counts as 0."""
    if len(payload) != LOGIN_REQUEST_LAYOUT.size:
        raise ValueError(f"SoupBinTCP: Login Request payload is {len(payload)} bytes, expected {LOGIN_REQUEST_LAYOUT.size}")
    wire = LOGIN_REQUEST_LAYOUT.decode(payload)
    return LoginRequest(_ascii(wire.username, "username"), _ascii(wire.password, "password"),
                        _ascii(wire.session, "session"), _digits(wire.sequence, "sequence number"))


def parse_login_accepted(payload: Buffer) -> LoginAccepted:
    """Parse a Login Accepted payload (30 bytes)."""
    if len(payload) != LOGIN_ACCEPTED_LAYOUT.size:
        raise ValueError(f"SoupBinTCP: Login Accepted payload is {len(payload)} bytes, expected {LOGIN_ACCEPTED_LAYOUT.size}")
    wire = LOGIN_ACCEPTED_LAYOUT.decode(payload)
    return LoginAccepted(_ascii(wire.session, "session"), _digits(wire.sequence, "sequence number"))


def parse_login_rejected(payload: Buffer) -> bytes:
    """The reason byte of a Login Rejected payload (b"A" or b"S")."""
    if len(payload) != 1:
        raise ValueError(f"SoupBinTCP: Login Rejected payload is {len(payload)} bytes, expected 1")
    return bytes(payload)


# --------------------------------------------------------------------------------------------
# Stream parser
# --------------------------------------------------------------------------------------------

class FrameParser:
    """Splits a SoupBinTCP byte stream into packets; owned by the connection's reading side.

    ``feed(chunk)`` accepts any slicing of the stream and returns the packets it completed.
    A zero length field or one above ``max_length`` raises ValueError as soon as its two
    bytes arrive (so a peer cannot make the buffer grow past ``max_length + 2``); the parser
    then stays failed, since the stream has lost its framing. Packet types are not checked
    here: an unknown type is the session's business.
    """

    __slots__ = ("max_length", "_buf", "_error", "_offset")

    def __init__(self, max_length: int = MAX_PACKET_LENGTH) -> None:
        if not 1 <= max_length <= MAX_PACKET_LENGTH:
            raise ValueError(f"SoupBinTCP: max_length {max_length} outside 1..{MAX_PACKET_LENGTH}")
        self.max_length = max_length
        self._buf = bytearray()
        self._error: str | None = None
        self._offset = 0          # stream offset of the first byte in _buf

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: Buffer) -> list[SoupPacket]:
        """Add bytes from the stream; return every packet now complete, in order."""
        if self._error is not None:
            raise ValueError(self._error)
        buf = self._buf
        # Nothing held back and a bytes chunk (a socket read): packets are cut from the chunk itself
        # (one copy each); only an incomplete tail is kept.
        direct = not buf and type(data) is bytes
        if direct:
            size = len(data)
            if size > LENGTH_SIZE:
                length = (data[0] << 8) | data[1]
                if length + LENGTH_SIZE == size and length <= self.max_length:
                    # Exactly one whole packet (a client's usual write): no loop, nothing kept.
                    self._offset += size
                    return [_new_packet(SoupPacket, (_ONE_BYTE[data[LENGTH_SIZE]], data[HEAD_SIZE:]))]
        src: Buffer = data if direct else buf
        if not direct:
            buf += data
        out: list[SoupPacket] = []
        size = len(src)
        pos = 0
        limit = self.max_length
        kinds = _ONE_BYTE
        new = _new_packet
        ls, hs = LENGTH_SIZE, HEAD_SIZE
        while size - pos >= ls:
            length = (src[pos] << 8) | src[pos + 1]
            if length == 0 or length > limit:
                if direct:   # held as if it had been appended (the parser is failed from now on)
                    buf += src
                self._error = (f"SoupBinTCP: packet length {length} at stream offset {self._offset + pos} "
                               + ("is zero" if length == 0 else f"exceeds the maximum {limit}"))
                raise ValueError(self._error)
            end = pos + ls + length
            if end > size:
                break
            out.append(new(SoupPacket, (kinds[src[pos + ls]], bytes(src[pos + hs:end]))))
            pos = end
        if direct:
            if pos < size:
                buf += src[pos:]
            self._offset += pos
        elif pos:
            del buf[:pos]
            self._offset += pos
        return out

    def close(self) -> None:
        """Declare the end of the stream: ValueError if a packet was left incomplete."""
        if self._buf:
            raise ValueError(f"SoupBinTCP: stream ended inside a packet ({len(self._buf)} bytes pending)")
