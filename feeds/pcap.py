"""pcap and pcapng files: a writer of Ethernet/IPv4/UDP and TCP frames (pcap), and readers of UDP
and TCP payloads (``capture_reader`` picks ``PcapReader`` or ``PcapngReader`` by the first bytes;
``udp_datagrams`` is the fast path of the analysis tools).

File layout (libpcap; the writer emits nanosecond little-endian files, as tcpdump
``--time-stamp-precision=nano`` does on x86)::

    global header, 24 bytes
    +-----------+-------+-------+-----------+-----------+-----------+-----------+
    |   magic   | major | minor | thiszone  |  sigfigs  |  snaplen  | linktype  |
    |    u32    |  u16  |  u16  |    i32    |    u32    |    u32    |    u32    |
    +-----------+-------+-------+-----------+-----------+-----------+-----------+
     magic 0xa1b2c3d4: timestamps in microseconds; 0xa1b23c4d: in nanoseconds;
     the byte order it is read in is the byte order of the whole file.

    record, repeated
    +-----------+-----------+-----------+-----------+---------------------//--+
    |  ts_sec   |  ts_frac  | incl_len  | orig_len  |  frame (incl_len bytes)  |
    +-----------+-----------+-----------+-----------+---------------------//--+

    frame (linktype 1, Ethernet), as written:
    +-----------+-----------+------+------------------+----------------+---//--+
    |  dst MAC  |  src MAC  | 0800 |  IPv4 header 20  |  UDP 8/TCP 20  |payload|
    +-----------+-----------+------+------------------+----------------+---//--+
     multicast destination MAC = 01:00:5e + low 23 bits of the group;
     other MACs = 02:00 + the IPv4 address (locally administered, deterministic).

Checksums (IPv4 header, UDP, TCP) are computed, so tshark with checksum validation on
reports none. The reader accepts micro- and nanosecond files in either byte order,
Ethernet (with 802.1Q/802.1ad tags), Linux cooked (SLL, SLL2) and raw IPv4 link types;
it slices payloads by the IP total length, so Ethernet padding and trailers are dropped,
and skips (and counts) everything that is not a complete unfragmented IPv4 UDP or TCP packet.
"""
from __future__ import annotations

import io
import mmap
import socket
import struct
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Iterator, NamedTuple

__all__ = [
    "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LINUX_SLL", "LINKTYPE_LINUX_SLL2",
    "IPPROTO_TCP", "IPPROTO_UDP", "TCP_FIN", "TCP_SYN", "TCP_RST", "TCP_PSH", "TCP_ACK",
    "MAGIC_MICRO", "MAGIC_NANO", "Packet", "internet_checksum", "multicast_mac", "mac_for",
    "ipv4_header", "UdpFrameBuilder", "udp_frame", "tcp_frame", "PcapWriter", "TcpStreamWriter", "PcapReader",
    "parse_frame", "read_pcap", "PcapngReader", "CaptureReader", "capture_reader", "PCAPNG_SHB",
    "udp_datagrams",
]

MAGIC_MICRO = 0xA1B2C3D4
MAGIC_NANO = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
_LINKTYPE_IPV4 = 228
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

_ETHERTYPE_IPV4 = 0x0800
_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_LE = struct.Struct("<IIII")
_RECORD_BE = struct.Struct(">IIII")
_IPV4 = struct.Struct(">BBHHHBBH4s4s")
_UDP = struct.Struct(">HHHH")
_TCP = struct.Struct(">HHIIBBHHH")
_PSEUDO = struct.Struct(">4s4sBBH")
_FRAME_HEADER = struct.Struct(">6s6sHBBHHHBBH4s4sHHHH")   # Ethernet + IPv4 (no options) + UDP
FRAME_HEADER_SIZE = _FRAME_HEADER.size                    # 42
_TCP_HEAD = struct.Struct(">HHI")


class Packet(NamedTuple):
    """One UDP datagram or TCP segment read from a capture (payload may be empty for TCP)."""

    ts_ns: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    proto: int
    payload: bytes
    tcp_seq: int = 0          # TCP: the sequence number of the segment's first byte
    tcp_flags: int = 0        # TCP: FIN SYN RST PSH ACK ... bits


# --------------------------------------------------------------------------------------------
# Building frames
# --------------------------------------------------------------------------------------------

def internet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` (odd length padded with a zero byte).

    ``initial`` is a partial one's-complement sum to fold in (e.g. of a pseudo-header).
    Uses 2**16 == 1 (mod 0xFFFF): the one's-complement sum of the 16-bit words is the
    big-endian integer of the data modulo 0xFFFF, with 0xFFFF standing for a non-zero 0.
    """
    if len(data) & 1:
        data += b"\x00"
    value = int.from_bytes(data, "big") + initial
    total = value % 0xFFFF
    if total == 0 and value:
        total = 0xFFFF
    return 0xFFFF - total


def _ip_bytes(ip: str) -> bytes:
    """The 4 bytes of a dotted-quad IPv4 address; ValueError otherwise."""
    try:
        raw = socket.inet_aton(ip)
    except (OSError, TypeError):
        raise ValueError(f"not a dotted-quad IPv4 address: {ip!r}") from None
    if ip.count(".") != 3:
        raise ValueError(f"not a dotted-quad IPv4 address: {ip!r}")
    return raw


def multicast_mac(group: str) -> bytes:
    """The Ethernet address of an IPv4 multicast group: 01:00:5e + its low 23 bits."""
    raw = _ip_bytes(group)
    if not 224 <= raw[0] <= 239:
        raise ValueError(f"{group} is not an IPv4 multicast address")
    return b"\x01\x00\x5e" + bytes((raw[1] & 0x7F, raw[2], raw[3]))


def mac_for(ip: str) -> bytes:
    """A MAC for ``ip``: the multicast MAC of a group, else 02:00 + the four address bytes."""
    raw = _ip_bytes(ip)
    if 224 <= raw[0] <= 239:
        return multicast_mac(ip)
    return b"\x02\x00" + raw


def ipv4_header(src_ip: str, dst_ip: str, proto: int, payload_len: int, *, ident: int = 0,
                ttl: int = 64, dont_fragment: bool = True, tos: int = 0) -> bytes:
    """A 20-byte IPv4 header (no options) with a correct header checksum."""
    total = 20 + payload_len
    if total > 0xFFFF:
        raise ValueError(f"IPv4: datagram of {total} bytes exceeds 65535")
    flags = 0x4000 if dont_fragment else 0
    src, dst = _ip_bytes(src_ip), _ip_bytes(dst_ip)
    header = _IPV4.pack(0x45, tos, total, ident & 0xFFFF, flags, ttl, proto, 0, src, dst)
    return header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]


def _pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The pseudo-header as an integer. Its place in front of the segment need not be kept:
    shifting by whole 16-bit words does not change a value modulo 0xFFFF."""
    return int.from_bytes(_PSEUDO.pack(src, dst, 0, proto, length), "big")


def _ethernet(src_ip: str, dst_ip: str, src_mac: bytes | None, dst_mac: bytes | None) -> bytes:
    dmac = dst_mac if dst_mac is not None else mac_for(dst_ip)
    smac = src_mac if src_mac is not None else mac_for(src_ip)
    if len(dmac) != 6 or len(smac) != 6:
        raise ValueError("Ethernet: MAC addresses are 6 bytes")
    return dmac + smac + b"\x08\x00"


class UdpFrameBuilder:
    """Ethernet/IPv4/UDP frames of one flow (source address and port -> destination), with the
    addresses, MACs and the constant parts of both checksums worked out once. Used by the pcap
    writer and by transports that put frames on the wire themselves (feeds/afxdp.py)::

        +---------+---------+------+---------------------------------+-------------------+--//--+
        | dst MAC | src MAC | 0800 | IPv4: 45 tos total ident flags  | UDP: sport dport  |payload|
        |         |         |      |  ttl 17 checksum src dst (20)   |  length checksum  |       |
        +---------+---------+------+---------------------------------+-------------------+--//--+
         0         6         12     14                                34                  42

    ``frame(payload, ident, payload_sum)`` returns the frame; ``write_into(buf, at, ...)`` writes it
    into a buffer (a UMEM) and returns its length. ``payload_sum`` is ``payload_sum(payload)``,
    which two flows carrying the same datagram (the A and B groups) can share; -1 computes it.
    ``partial=True`` leaves the UDP checksum to be finished by whoever sends the frame (checksum
    offload: the field holds the pseudo-header sum, as Linux's CHECKSUM_PARTIAL).
    Owned by the thread that builds frames (no state changes after construction).
    """

    __slots__ = ("src", "dst", "src_port", "dst_port", "ttl", "tos", "flags", "eth", "pseudo", "ports",
                 "dst_mac", "src_mac", "ip_sum")

    def __init__(self, src_ip: str, src_port: int, dst_ip: str, dst_port: int, *, ttl: int = 64,
                 tos: int = 0, src_mac: bytes | None = None, dst_mac: bytes | None = None,
                 dont_fragment: bool = True) -> None:
        self.src, self.dst = _ip_bytes(src_ip), _ip_bytes(dst_ip)
        if not (0 <= src_port <= 0xFFFF and 0 <= dst_port <= 0xFFFF):
            raise ValueError(f"UDP: port {src_port} or {dst_port} outside 0..65535")
        if not (0 <= ttl <= 255 and 0 <= tos <= 255):
            raise ValueError(f"IPv4: ttl {ttl} or tos {tos} outside 0..255")
        self.src_port, self.dst_port = src_port, dst_port
        self.ttl, self.tos = ttl, tos
        self.flags = 0x4000 if dont_fragment else 0
        self.eth = _ethernet(src_ip, dst_ip, src_mac, dst_mac)
        self.dst_mac, self.src_mac = self.eth[:6], self.eth[6:12]
        self.pseudo = _pseudo_sum(self.src, self.dst, IPPROTO_UDP, 0)   # + the UDP length
        self.ports = (src_port << 48) | (dst_port << 32)                 # the UDP header as an integer
        # the IPv4 header's 16-bit words but total length and identification (added per frame)
        self.ip_sum = ((0x45 << 8) | tos) + self.flags + ((ttl << 8) | IPPROTO_UDP) + \
            sum(int.from_bytes(a[i:i + 2], "big") for a in (self.src, self.dst) for i in (0, 2))

    @staticmethod
    def payload_sum(payload: bytes) -> int:
        """The payload's share of the UDP checksum (odd lengths padded with a zero byte)."""
        if len(payload) & 1:
            payload += b"\x00"
        return int.from_bytes(payload, "big") % 0xFFFF

    def _fields(self, payload: bytes, ident: int, payload_sum: int, udp_checksum: bool,
                partial: bool) -> tuple[object, ...]:
        length = 8 + len(payload)
        if length > 0xFFFF - 20:
            raise ValueError(f"UDP: payload of {len(payload)} bytes is too large")
        checksum = 0
        if partial:
            checksum = (self.pseudo + length) % 0xFFFF or 0xFFFF
        elif udp_checksum:
            if payload_sum < 0:
                payload_sum = self.payload_sum(payload)
            # One's-complement sum of pseudo-header + header + payload, modulo 0xFFFF (see
            # internet_checksum): the header and an even-padded payload add as integers.
            total = (self.pseudo + length + self.ports + (length << 16) + payload_sum) % 0xFFFF
            checksum = 0xFFFF - (total or 0xFFFF)
            if checksum == 0:
                checksum = 0xFFFF
        ident &= 0xFFFF
        ip = self.ip_sum + 20 + length + ident
        ip = (ip & 0xFFFF) + (ip >> 16)
        ip = (ip & 0xFFFF) + (ip >> 16)
        return (self.dst_mac, self.src_mac, _ETHERTYPE_IPV4, 0x45, self.tos, 20 + length, ident, self.flags,
                self.ttl, IPPROTO_UDP, ip ^ 0xFFFF, self.src, self.dst, self.src_port, self.dst_port, length,
                checksum)

    def frame(self, payload: bytes, ident: int = 0, payload_sum: int = -1, *,
              udp_checksum: bool = True, partial: bool = False) -> bytes:
        return _FRAME_HEADER.pack(*self._fields(payload, ident, payload_sum, udp_checksum, partial)) + payload

    def write_into(self, buf: Any, at: int, payload: bytes, ident: int = 0, payload_sum: int = -1, *,
                   partial: bool = False) -> int:
        """Write the frame at ``buf[at:]`` (a writable buffer); return its length."""
        _FRAME_HEADER.pack_into(buf, at, *self._fields(payload, ident, payload_sum, True, partial))
        end = at + FRAME_HEADER_SIZE + len(payload)
        buf[at + FRAME_HEADER_SIZE:end] = payload
        return end - at


def udp_frame(src_ip: str, src_port: int, dst_ip: str, dst_port: int, payload: bytes, *,
              ident: int = 0, ttl: int = 64, src_mac: bytes | None = None,
              dst_mac: bytes | None = None, udp_checksum: bool = True, tos: int = 0) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying ``payload`` (UDP checksum computed unless disabled)."""
    return UdpFrameBuilder(src_ip, src_port, dst_ip, dst_port, ttl=ttl, tos=tos, src_mac=src_mac,
                           dst_mac=dst_mac).frame(payload, ident, udp_checksum=udp_checksum)


def tcp_frame(src_ip: str, src_port: int, dst_ip: str, dst_port: int, seq: int, ack: int,
              flags: int, payload: bytes = b"", *, window: int = 65535, ident: int = 0,
              ttl: int = 64, src_mac: bytes | None = None, dst_mac: bytes | None = None) -> bytes:
    """An Ethernet/IPv4/TCP frame (20-byte TCP header, no options) with a correct checksum."""
    length = 20 + len(payload)
    header = _TCP.pack(src_port, dst_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                       window, 0, 0)
    initial = _pseudo_sum(_ip_bytes(src_ip), _ip_bytes(dst_ip), IPPROTO_TCP, length)
    checksum = internet_checksum(header + payload, initial)
    tcp = header[:16] + checksum.to_bytes(2, "big") + header[18:]
    ip = ipv4_header(src_ip, dst_ip, IPPROTO_TCP, length, ident=ident, ttl=ttl)
    return _ethernet(src_ip, dst_ip, src_mac, dst_mac) + ip + tcp + payload


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

class PcapWriter:
    """Writes a pcap file (nanosecond by default) of Ethernet frames; owned by one thread.

    ``write_frame`` takes a ready frame; ``write_udp`` and ``write_tcp`` build one. The IPv4
    identification field counts up per written IP packet.
    """

    def __init__(self, out: BinaryIO, *, nanosecond: bool = True, snaplen: int = 262144,
                 linktype: int = LINKTYPE_ETHERNET) -> None:
        self._out = out
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.linktype = linktype
        self._ident = 0
        self._owned = False
        out.write(_GLOBAL_HEADER.pack(MAGIC_NANO if nanosecond else MAGIC_MICRO, 2, 4, 0, 0,
                                      snaplen, linktype))

    @classmethod
    def open(cls, path: str | Path, *, nanosecond: bool = True) -> PcapWriter:
        """Create (truncate) ``path`` and write its global header; close() closes the file."""
        writer = cls(open(path, "wb"), nanosecond=nanosecond)   # closed by close()
        writer._owned = True
        return writer

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def write_frame(self, ts_ns: int, frame: bytes) -> None:
        """Append one record (the frame is cut to ``snaplen``; orig_len keeps its real size)."""
        if ts_ns < 0:
            raise ValueError(f"pcap: negative timestamp {ts_ns}")
        sec, frac = divmod(ts_ns, 1_000_000_000)
        if not self.nanosecond:
            frac //= 1000
        incl = frame[: self.snaplen]
        self._out.write(_RECORD_LE.pack(sec, frac, len(incl), len(frame)))
        self._out.write(incl)

    def write_udp(self, ts_ns: int, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
                  payload: bytes, *, ttl: int = 64) -> None:
        """Append an Ethernet/IPv4/UDP frame (multicast groups get their multicast MAC)."""
        self.write_frame(ts_ns, udp_frame(src_ip, src_port, dst_ip, dst_port, payload,
                                          ident=self._next_ident(), ttl=ttl))

    def write_tcp(self, ts_ns: int, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
                  seq: int, ack: int, flags: int, payload: bytes = b"", *,
                  window: int = 65535, ttl: int = 64) -> None:
        """Append an Ethernet/IPv4/TCP segment."""
        self.write_frame(ts_ns, tcp_frame(src_ip, src_port, dst_ip, dst_port, seq, ack, flags,
                                          payload, window=window, ident=self._next_ident(),
                                          ttl=ttl))

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        """Flush; close the file too if ``open`` created it."""
        self._out.flush()
        if self._owned:
            self._out.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class TcpStreamWriter:
    """Writes one TCP connection's two byte streams into a ``PcapWriter`` with consistent
    sequence and acknowledgement numbers, so that tshark reassembles them.

    ``handshake`` writes SYN, SYN-ACK, ACK; ``send`` cuts data into segments of at most
    ``mss`` bytes (PSH|ACK on the last); ``close`` writes FIN/ACK both ways. Owned by the
    thread that owns the writer.
    """

    def __init__(self, writer: PcapWriter, client: tuple[str, int], server: tuple[str, int], *,
                 client_isn: int = 1000, server_isn: int = 5000, mss: int = 1460) -> None:
        if mss < 1:
            raise ValueError("TCP: mss must be positive")
        self._w = writer
        self.client = client
        self.server = server
        self.mss = mss
        self._client_isn = client_isn
        self._server_isn = server_isn
        self._seq = {True: client_isn, False: server_isn}  # next sequence number per sender
        self._started = False

    def _segment(self, ts_ns: int, from_client: bool, flags: int, payload: bytes) -> None:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        ack = self._seq[not from_client] if flags & TCP_ACK else 0
        self._w.write_tcp(ts_ns, src[0], src[1], dst[0], dst[1], self._seq[from_client], ack,
                          flags, payload)
        self._seq[from_client] += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)

    def handshake(self, ts_ns: int) -> None:
        """SYN, SYN-ACK, ACK (all at ``ts_ns``)."""
        if self._started:
            raise ValueError("TCP: handshake already written")
        self._started = True
        self._segment(ts_ns, True, TCP_SYN, b"")
        self._segment(ts_ns, False, TCP_SYN | TCP_ACK, b"")
        self._segment(ts_ns, True, TCP_ACK, b"")

    def send(self, ts_ns: int, from_client: bool, data: bytes) -> None:
        """Write ``data`` from one side as one or more segments."""
        if not self._started:
            self.handshake(ts_ns)
        for start in range(0, len(data), self.mss):
            chunk = data[start:start + self.mss]
            last = start + self.mss >= len(data)
            self._segment(ts_ns, from_client, TCP_ACK | (TCP_PSH if last else 0), chunk)

    def ack(self, ts_ns: int, from_client: bool) -> None:
        """A bare ACK from one side."""
        self._segment(ts_ns, from_client, TCP_ACK, b"")

    def close(self, ts_ns: int) -> None:
        """FIN/ACK from the client, FIN/ACK from the server, final ACK."""
        self._segment(ts_ns, True, TCP_FIN | TCP_ACK, b"")
        self._segment(ts_ns, False, TCP_FIN | TCP_ACK, b"")
        self._segment(ts_ns, True, TCP_ACK, b"")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _ipv4_packet(ts_ns: int, data: bytes, pos: int) -> Packet | None:
    """Parse IPv4 at ``data[pos:]``; None unless it is a complete unfragmented UDP/TCP packet."""
    end = len(data)
    if end - pos < 20:
        return None
    vihl = data[pos]
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        return None
    _, _, total, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(data, pos)
    if total == 0:                 # captured before TSO filled it in: use what is there
        total = end - pos
    if total < ihl or pos + total > end or frag & 0x3FFF:
        return None                # truncated, inconsistent or a fragment
    l4 = pos + ihl
    stop = pos + total
    if proto == IPPROTO_UDP:
        if stop - l4 < 8:
            return None
        sport, dport, ulen, _ = _UDP.unpack_from(data, l4)
        body_end = l4 + ulen if 8 <= ulen <= stop - l4 else stop
        payload = data[l4 + 8:body_end]
    elif proto == IPPROTO_TCP:
        if stop - l4 < 20:
            return None
        sport, dport, tseq = _TCP_HEAD.unpack_from(data, l4)
        doff = (data[l4 + 12] >> 4) * 4
        if doff < 20 or l4 + doff > stop:
            return None
        return Packet(ts_ns, socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport, proto,
                      data[l4 + doff:stop], tseq, data[l4 + 13])
    else:
        return None
    return Packet(ts_ns, socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport, proto,
                  payload)


def parse_frame(ts_ns: int, frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> Packet | None:
    """Parse one captured frame; None if it is not IPv4 UDP/TCP (or is truncated/fragmented)."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        pos = 12
        ethertype = (frame[12] << 8) | frame[13]
        while ethertype in _VLAN_TAGS:
            pos += 4
            if len(frame) < pos + 2:
                return None
            ethertype = (frame[pos] << 8) | frame[pos + 1]
        if ethertype != _ETHERTYPE_IPV4:
            return None
        return _ipv4_packet(ts_ns, frame, pos + 2)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16 or frame[14:16] != b"\x08\x00":
            return None
        return _ipv4_packet(ts_ns, frame, 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20 or frame[0:2] != b"\x08\x00":
            return None
        return _ipv4_packet(ts_ns, frame, 20)
    if linktype in (LINKTYPE_RAW, _LINKTYPE_IPV4):
        return _ipv4_packet(ts_ns, frame, 0)
    return None


class PcapReader:
    """Reads a pcap file: ``records()`` yields raw frames, iteration yields UDP/TCP ``Packet``s.

    Accepts microsecond and nanosecond files in either byte order. Raises ValueError on a
    bad global header or a record cut short by the end of the file (after yielding every
    complete record before it). ``skipped`` counts frames that were not IPv4 UDP/TCP.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._in = source
        head = source.read(24)
        if len(head) < 24:
            raise ValueError(f"pcap: file of {len(head)} bytes has no 24-byte global header")
        magic_le = int.from_bytes(head[:4], "little")
        magic_be = int.from_bytes(head[:4], "big")
        if magic_le in (MAGIC_MICRO, MAGIC_NANO):
            order, magic = "<", magic_le
        elif magic_be in (MAGIC_MICRO, MAGIC_NANO):
            order, magic = ">", magic_be
        else:
            raise ValueError(f"pcap: unknown magic {head[:4].hex()} (pcapng is not supported)")
        self.big_endian = order == ">"
        self.nanosecond = magic == MAGIC_NANO
        (_, self.version_major, self.version_minor, _, _, self.snaplen,
         linktype) = struct.unpack(order + "IHHiIII", head)
        self.linktype = linktype & 0xFFFF   # the upper bits may carry FCS information
        self._record = _RECORD_BE if self.big_endian else _RECORD_LE
        self.skipped = 0

    def records(self) -> Iterator[tuple[int, bytes, int]]:
        """Yield ``(ts_ns, frame, orig_len)`` for every record."""
        read = self._in.read
        unpack = self._record.unpack
        scale = 1 if self.nanosecond else 1000
        while True:
            head = read(16)
            if not head:
                return
            if len(head) < 16:
                raise ValueError(f"pcap: record header cut short ({len(head)} of 16 bytes)")
            sec, frac, incl, orig = unpack(head)
            frame = read(incl)
            if len(frame) < incl:
                raise ValueError(f"pcap: record of {incl} bytes cut short at {len(frame)}")
            yield sec * 1_000_000_000 + frac * scale, frame, orig

    def frames(self) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(ts_ns, linktype, frame)`` for every record (the pcapng reader's interface)."""
        linktype = self.linktype
        for ts_ns, frame, _ in self.records():
            yield ts_ns, linktype, frame

    def __iter__(self) -> Iterator[Packet]:
        linktype = self.linktype
        for ts_ns, frame, _ in self.records():
            packet = parse_frame(ts_ns, frame, linktype)
            if packet is None:
                self.skipped += 1
            else:
                yield packet


# --------------------------------------------------------------------------------------------
# pcapng
# --------------------------------------------------------------------------------------------

PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_PCAPNG_IDB = 1
_PCAPNG_PB = 2           # obsolete Packet Block
_PCAPNG_SPB = 3
_PCAPNG_EPB = 6
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14
_PCAPNG_MAX_BLOCK = 64 << 20


class _Interface(NamedTuple):
    linktype: int
    snaplen: int
    units_per_s: int      # timestamp units per second (if_tsresol; 10**6 by default)
    offset_ns: int        # if_tsoffset, in ns


class PcapngReader:
    """Reads a pcapng file (what dumpcap and Wireshark write by default), same interface as
    ``PcapReader``: ``frames()`` yields ``(ts_ns, linktype, frame)``, iteration yields ``Packet``s.

    Block layout (every block; the byte order is the Section Header Block's)::

        +-----------+-------------+------------------//--+-------------+
        |   type    | total length|  body, padded to 4   | total length|
        |    u32    |     u32     |                      |     u32     |
        +-----------+-------------+------------------//--+-------------+
         0x0A0D0D0A Section Header (byte-order magic 0x1A2B3C4D first in its body)
         1 Interface Description: linktype u16, reserved u16, snaplen u32, options
           (if_tsresol 9: 10**-n s, or 2**-n s with the top bit set; if_tsoffset 14: seconds)
         6 Enhanced Packet: interface u32, ts high u32, ts low u32, caplen u32, origlen u32, data
         3 Simple Packet: origlen u32, data (no timestamp: 0)
         2 Packet (obsolete): interface u16, drops u16, ts high, ts low, caplen, origlen, data

    Other blocks (statistics, name resolution, custom) are skipped. Several sections and
    interfaces of different link types in one file are read. ValueError on a malformed or
    truncated block (after yielding every complete one before it).
    """

    def __init__(self, source: BinaryIO) -> None:
        self._in = source
        head = source.read(12)
        if len(head) < 12 or int.from_bytes(head[:4], "little") != PCAPNG_SHB:
            raise ValueError("pcapng: no Section Header Block at the start of the file")
        self._pending = head
        self.interfaces: list[_Interface] = []
        self.order = "<"
        self._section(head)
        self.skipped = 0
        self.big_endian = self.order == ">"

    def _section(self, head: bytes) -> None:
        bom_le = int.from_bytes(head[8:12], "little")
        if bom_le == _PCAPNG_BOM:
            self.order = "<"
        elif int.from_bytes(head[8:12], "big") == _PCAPNG_BOM:
            self.order = ">"
        else:
            raise ValueError(f"pcapng: bad byte-order magic {head[8:12].hex()}")
        self.interfaces = []

    @property
    def linktype(self) -> int:
        """The link type of the first interface (0 before any)."""
        return self.interfaces[0].linktype if self.interfaces else 0

    def _options(self, body: bytes, pos: int) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        o = self.order
        while pos + 4 <= len(body):
            code, length = struct.unpack_from(o + "HH", body, pos)
            pos += 4
            if code == 0:
                break
            out.setdefault(code, body[pos:pos + length])
            pos += (length + 3) & ~3
        return out

    def _interface(self, body: bytes) -> None:
        o = self.order
        if len(body) < 8:
            raise ValueError("pcapng: Interface Description Block too short")
        linktype, _, snaplen = struct.unpack_from(o + "HHI", body, 0)
        opts = self._options(body, 8)
        units = 10 ** 6
        res = opts.get(_OPT_IF_TSRESOL)
        if res:
            r = res[0]
            units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** r
        offset_ns = 0
        off = opts.get(_OPT_IF_TSOFFSET)
        if off is not None and len(off) == 8:
            offset_ns = struct.unpack(o + "q", off)[0] * 1_000_000_000
        self.interfaces.append(_Interface(linktype, snaplen, units, offset_ns))

    def _ts_ns(self, iface: _Interface, high: int, low: int) -> int:
        ts = (high << 32) | low
        units = iface.units_per_s
        if units == 1_000_000:
            return ts * 1000 + iface.offset_ns
        if units == 1_000_000_000:
            return ts + iface.offset_ns
        return ts * 1_000_000_000 // units + iface.offset_ns

    def _blocks(self) -> Iterator[tuple[int, bytes]]:
        read = self._in.read
        head = self._pending
        self._pending = b""
        while True:
            if not head:
                head = read(8)
                if not head:
                    return
            if len(head) < 8:
                raise ValueError(f"pcapng: block header cut short ({len(head)} of 8 bytes)")
            btype = int.from_bytes(head[:4], "little")
            if btype == PCAPNG_SHB:
                if len(head) < 12:
                    head += read(12 - len(head))
                    if len(head) < 12:
                        raise ValueError("pcapng: Section Header Block cut short")
                self._section(head)
            o = self.order
            btype, total = struct.unpack_from(o + "II", head, 0)
            if total < 12 or total % 4 or total > _PCAPNG_MAX_BLOCK:
                raise ValueError(f"pcapng: block of type {btype} with a bad length {total}")
            rest = read(total - len(head))
            if len(rest) < total - len(head):
                raise ValueError(f"pcapng: block of {total} bytes cut short at {len(head) + len(rest)}")
            block = head + rest
            if int.from_bytes(block[-4:], "big" if o == ">" else "little") != total:
                raise ValueError(f"pcapng: block of type {btype}: trailing length differs from {total}")
            head = b""
            yield btype, block[8:-4]

    def frames(self) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(ts_ns, linktype, frame)`` for every packet block."""
        unpack_from = struct.unpack_from
        for btype, body in self._blocks():
            o = self.order
            if btype == _PCAPNG_EPB:
                if len(body) < 20:
                    raise ValueError("pcapng: Enhanced Packet Block too short")
                iface_id, high, low, caplen, _ = unpack_from(o + "IIIII", body, 0)
                if iface_id >= len(self.interfaces) or 20 + caplen > len(body):
                    raise ValueError(f"pcapng: Enhanced Packet Block of interface {iface_id} "
                                     f"with {caplen} bytes does not fit")
                iface = self.interfaces[iface_id]
                yield self._ts_ns(iface, high, low), iface.linktype, body[20:20 + caplen]
            elif btype == _PCAPNG_IDB:
                self._interface(body)
            elif btype == _PCAPNG_SPB:
                if not self.interfaces or len(body) < 4:
                    raise ValueError("pcapng: Simple Packet Block without an interface")
                iface = self.interfaces[0]
                orig = unpack_from(o + "I", body, 0)[0]
                caplen = min(orig, len(body) - 4, iface.snaplen or orig)
                yield 0, iface.linktype, body[4:4 + caplen]
            elif btype == _PCAPNG_PB:
                if len(body) < 20:
                    raise ValueError("pcapng: Packet Block too short")
                iface_id, _, high, low, caplen, _ = unpack_from(o + "HHIIII", body, 0)
                if iface_id >= len(self.interfaces) or 20 + caplen > len(body):
                    raise ValueError("pcapng: Packet Block does not fit")
                iface = self.interfaces[iface_id]
                yield self._ts_ns(iface, high, low), iface.linktype, body[20:20 + caplen]

    def __iter__(self) -> Iterator[Packet]:
        for ts_ns, linktype, frame in self.frames():
            packet = parse_frame(ts_ns, frame, linktype)
            if packet is None:
                self.skipped += 1
            else:
                yield packet


CaptureReader = PcapReader | PcapngReader


def capture_reader(source: BinaryIO) -> CaptureReader:
    """A reader for a pcap or a pcapng file, chosen by its first four bytes (the stream must be
    seekable); ValueError naming what the file is not."""
    head = source.read(4)
    source.seek(0)
    if len(head) < 4:
        raise ValueError(f"not a capture: file of {len(head)} bytes (pcap needs a 24-byte header)")
    if int.from_bytes(head, "little") == PCAPNG_SHB:
        return PcapngReader(source)
    magics = (MAGIC_MICRO, MAGIC_NANO)
    if int.from_bytes(head, "little") in magics or int.from_bytes(head, "big") in magics:
        return PcapReader(source)
    raise ValueError(f"not a pcap or pcapng file (starts with {head.hex()})")


def _pcap_frames_mapped(reader: PcapReader) -> Iterator[tuple[int, int, bytes]]:
    """``reader.frames()`` over a memory map of the file (no read call per record); the plain
    ``frames()`` when the source is not a mappable file."""
    try:
        fileno = reader._in.fileno()
        mm = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        yield from reader.frames()
        return
    with mm:
        unpack_from = reader._record.unpack_from
        scale = 1 if reader.nanosecond else 1000
        linktype = reader.linktype
        pos = 24
        size = len(mm)
        while pos < size:
            if size - pos < 16:
                raise ValueError(f"pcap: record header cut short ({size - pos} of 16 bytes)")
            sec, frac, incl, _ = unpack_from(mm, pos)
            pos += 16
            end = pos + incl
            if end > size:
                raise ValueError(f"pcap: record of {incl} bytes cut short at {size - pos}")
            yield sec * 1_000_000_000 + frac * scale, linktype, mm[pos:end]
            pos = end


def udp_datagrams(reader: CaptureReader, counts: dict[str, int]) -> Iterator[tuple[int, tuple[str, int], bytes]]:
    """The fast path of the analysis tools: ``(ts_ns, (destination address, port), payload)`` of
    every UDP datagram, without building a ``Packet``. Untagged Ethernet/IPv4/UDP frames of 20-byte
    IP headers (what feeds are) are sliced in place; every other frame goes through
    ``parse_frame``. ``counts`` gets ``tcp`` (segments) and ``not_ip`` (frames that are not IPv4
    UDP/TCP)."""
    frames = _pcap_frames_mapped(reader) if isinstance(reader, PcapReader) else reader.frames()
    lines: dict[bytes, tuple[str, int]] = {}
    tcp = not_ip = 0
    try:
        for ts_ns, linktype, frame in frames:
            if (linktype == LINKTYPE_ETHERNET and frame[12:14] == b"\x08\x00" and frame[14] == 0x45
                    and frame[23] == IPPROTO_UDP and not (frame[20] & 0x3F or frame[21])):
                total = (frame[16] << 8) | frame[17]
                ulen = (frame[38] << 8) | frame[39]
                if 28 <= total and 14 + total <= len(frame) and 8 <= ulen <= total - 20:
                    key = frame[30:34] + frame[36:38]
                    line = lines.get(key)
                    if line is None:
                        line = lines[key] = (socket.inet_ntoa(key[:4]), (key[4] << 8) | key[5])
                    yield ts_ns, line, frame[42:34 + ulen]
                    continue
            packet = parse_frame(ts_ns, frame, linktype)
            if packet is None:
                not_ip += 1
            elif packet.proto == IPPROTO_UDP:
                yield ts_ns, (packet.dst_ip, packet.dst_port), packet.payload
            else:
                tcp += 1
    finally:
        counts["tcp"] = counts.get("tcp", 0) + tcp
        counts["not_ip"] = counts.get("not_ip", 0) + not_ip


def read_pcap(path: str | Path) -> list[Packet]:
    """Every UDP datagram and TCP segment of the IPv4 packets in a pcap or pcapng file."""
    with open(path, "rb") as f:
        return list(capture_reader(f))
