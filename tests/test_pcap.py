"""pcap writer and reader: real captures, byte-exact frame rebuilding, round trips, tshark."""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds import pcap
from feeds.pcap import Packet, PcapReader, PcapWriter, TcpStreamWriter

from conftest import needs_shared

SHARED = Path(os.environ.get("MATCHWIRE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CAPTURES = SHARED / "data" / "captures"
ORIGINAL = CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0"
DATED = CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0.20230822"
OUCH = CAPTURES / "Nasdaq.Nsm.Ouch.v5.0"

needs_captures = needs_shared(CAPTURES)   # a skip, except in CI (CI=true): there a failure
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")

T0 = 1_700_000_000_123_456_789


def records(path: Path) -> list[tuple[int, bytes, int]]:
    with open(path, "rb") as f:
        return list(PcapReader(f).records())


def ip_start(frame: bytes) -> int:
    """Offset of the IPv4 header in an Ethernet frame, past any VLAN tags."""
    pos = 12
    while frame[pos:pos + 2] in (b"\x81\x00", b"\x88\xa8"):
        pos += 4
    assert frame[pos:pos + 2] == b"\x08\x00"
    return pos + 2


# --------------------------------------------------------------------------------------------
# Real captures
# --------------------------------------------------------------------------------------------

@needs_captures
def test_reader_reads_every_capture() -> None:
    counts: dict[str, int] = {}
    for path in sorted(CAPTURES.glob("*/*.pcap")):
        with open(path, "rb") as f:
            reader = PcapReader(f)
            packets = list(reader)
        assert reader.linktype == pcap.LINKTYPE_ETHERNET and reader.skipped == 0
        assert packets, path
        counts[path.name] = len(packets)
        for p in packets:
            if path.parent == OUCH:
                assert p.proto == pcap.IPPROTO_TCP
                assert {p.src_port, p.dst_port} & {8001, 8003}
            else:
                assert p.proto == pcap.IPPROTO_UDP
            if path.parent == ORIGINAL:
                assert (p.src_ip, p.dst_ip, p.dst_port) == ("206.200.127.138", "233.54.12.111", 26477)
    assert sum(counts.values()) == 9 + 71 + 6
    assert counts["Multiple.Packets.pcap"] == 2 and counts["SystemEvent.pcap"] == 1


@needs_captures
def test_nanosecond_and_microsecond_timestamps() -> None:
    raw = (ORIGINAL / "OrderDeleteMessage.pcap").read_bytes()
    sec, frac = struct.unpack_from("<II", raw, 24)
    with open(ORIGINAL / "OrderDeleteMessage.pcap", "rb") as f:
        reader = PcapReader(f)
        (packet,) = list(reader)
    assert reader.nanosecond and not reader.big_endian
    assert packet.ts_ns == sec * 10**9 + frac

    raw = (OUCH / "EnterOrderMessage.pcap").read_bytes()
    sec, usec = struct.unpack_from("<II", raw, 24)
    with open(OUCH / "EnterOrderMessage.pcap", "rb") as f:
        reader = PcapReader(f)
        (packet,) = list(reader)
    assert not reader.nanosecond
    assert packet.ts_ns == sec * 10**9 + usec * 1000


@needs_captures
def test_trailers_after_the_ip_packet_are_dropped() -> None:
    ((_, frame, _),) = records(OUCH / "ClientHeartbeatPacket.pcap")
    (packet,) = pcap.read_pcap(OUCH / "ClientHeartbeatPacket.pcap")
    ip = ip_start(frame)
    total = int.from_bytes(frame[ip + 2:ip + 4], "big")
    assert len(frame) > ip + total                  # the capture carries a trailer
    assert packet.payload == b"\x00\x01R"           # one SoupBinTCP client heartbeat, nothing more


@needs_captures
def test_frames_with_real_checksums_are_rebuilt_byte_for_byte() -> None:
    """Our IPv4, UDP and TCP headers, checksums included, equal NASDAQ's for the same fields."""
    rebuilt = 0
    for path in sorted(ORIGINAL.glob("*.pcap")) + sorted(OUCH.glob("*.pcap")):
        for ts, frame, _ in records(path):
            ip = ip_start(frame)
            tos, total, ident, flags, ttl, proto, checksum = struct.unpack_from(">xBHHHBBH", frame, ip)
            assert checksum != 0 and flags == 0x4000 and tos == 0
            original = frame[ip:ip + total]
            packet = pcap.parse_frame(ts, frame)
            assert packet is not None
            if proto == pcap.IPPROTO_UDP:
                ours = pcap.udp_frame(packet.src_ip, packet.src_port, packet.dst_ip, packet.dst_port,
                                      packet.payload, ident=ident, ttl=ttl)
                assert ours[:6] == frame[:6]        # the multicast MAC of 233.54.12.111
            else:
                seq, ack, _, tcp_flags, window = struct.unpack_from(">IIBBH", frame, ip + 24)
                ours = pcap.tcp_frame(packet.src_ip, packet.src_port, packet.dst_ip, packet.dst_port,
                                      seq, ack, tcp_flags, packet.payload, window=window,
                                      ident=ident, ttl=ttl)
            assert ours[14:] == original, path.name
            rebuilt += 1
    assert rebuilt == 9 + 6


@needs_captures
def test_big_endian_files_read_the_same() -> None:
    for path in (ORIGINAL / "Multiple.Packets.pcap", OUCH / "EnterOrderMessage.pcap"):
        raw = path.read_bytes()
        out = bytearray(struct.pack(">IHHiIII", *struct.unpack_from("<IHHiIII", raw, 0)))
        pos = 24
        while pos < len(raw):
            sec, frac, incl, orig = struct.unpack_from("<IIII", raw, pos)
            out += struct.pack(">IIII", sec, frac, incl, orig) + raw[pos + 16:pos + 16 + incl]
            pos += 16 + incl
        reader = PcapReader(io.BytesIO(bytes(out)))
        assert reader.big_endian
        assert list(reader) == pcap.read_pcap(path)


# --------------------------------------------------------------------------------------------
# Frame building
# --------------------------------------------------------------------------------------------

def test_multicast_macs() -> None:
    assert pcap.multicast_mac("233.54.12.111") == bytes.fromhex("01005e360c6f")
    assert pcap.multicast_mac("239.255.1.1") == bytes.fromhex("01005e7f0101")
    assert pcap.multicast_mac("224.128.0.1") == bytes.fromhex("01005e000001")   # bit 23 dropped
    assert pcap.mac_for("10.0.0.7") == bytes.fromhex("02000a000007")
    for bad in ("10.0.0.1", "1.2.3", "::1", "300.1.1.1"):
        with pytest.raises(ValueError):
            pcap.multicast_mac(bad)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.sampled_from([b"", b"\0\0", b"\xff\xff", b"\xff\xff\xff\xff", b"\0"]))
def test_internet_checksum_matches_the_reference(data: bytes) -> None:
    assert pcap.internet_checksum(data) == reference_checksum(data)


def test_ipv4_header_checksum_verifies() -> None:
    header = pcap.ipv4_header("10.0.0.1", "233.54.12.111", pcap.IPPROTO_UDP, 100, ident=7, ttl=1)
    assert len(header) == 20 and pcap.internet_checksum(header) == 0
    with pytest.raises(ValueError):
        pcap.ipv4_header("10.0.0.1", "10.0.0.2", pcap.IPPROTO_UDP, 65516)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1500), st.integers(0, 65535), st.integers(0, 65535))
def test_udp_frames_parse_back_with_verifying_checksums(payload: bytes, sport: int, dport: int) -> None:
    frame = pcap.udp_frame("192.168.1.2", sport, "233.1.2.3", dport, payload)
    packet = pcap.parse_frame(5, frame)
    assert packet == Packet(5, "192.168.1.2", sport, "233.1.2.3", dport, pcap.IPPROTO_UDP, payload)
    ip = frame[14:34]
    assert pcap.internet_checksum(ip) == 0
    pseudo = ip[12:20] + b"\0\x11" + (8 + len(payload)).to_bytes(2, "big")
    assert pcap.internet_checksum(pseudo + frame[34:]) == 0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1460), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_tcp_frames_parse_back_with_verifying_checksums(payload: bytes, seq: int, ack: int) -> None:
    frame = pcap.tcp_frame("10.0.0.1", 9000, "10.0.0.2", 50000, seq, ack,
                           pcap.TCP_PSH | pcap.TCP_ACK, payload)
    packet = pcap.parse_frame(0, frame)
    assert packet == Packet(0, "10.0.0.1", 9000, "10.0.0.2", 50000, pcap.IPPROTO_TCP, payload, seq,
                            pcap.TCP_PSH | pcap.TCP_ACK)
    assert struct.unpack_from(">II", frame, 38) == (seq, ack)
    pseudo = frame[26:34] + b"\0\x06" + (20 + len(payload)).to_bytes(2, "big")
    assert pcap.internet_checksum(pseudo + frame[34:]) == 0


def test_parse_frame_handles_tags_cooked_and_raw_links_and_skips_the_rest() -> None:
    frame = pcap.udp_frame("10.0.0.1", 1, "10.0.0.2", 2, b"hello")
    eth, ip = frame[:14], frame[14:]
    expected = Packet(0, "10.0.0.1", 1, "10.0.0.2", 2, pcap.IPPROTO_UDP, b"hello")
    qinq = eth[:12] + b"\x88\xa8\x00\x05\x81\x00\x00\x07" + eth[12:] + ip
    assert pcap.parse_frame(0, qinq) == expected
    assert pcap.parse_frame(0, frame + b"\0" * 20) == expected              # Ethernet padding
    sll = b"\x00\x00\x00\x01\x00\x06" + b"\0" * 8 + b"\x08\x00" + ip
    assert pcap.parse_frame(0, sll, pcap.LINKTYPE_LINUX_SLL) == expected
    sll2 = b"\x08\x00" + b"\0" * 18 + ip
    assert pcap.parse_frame(0, sll2, pcap.LINKTYPE_LINUX_SLL2) == expected
    assert pcap.parse_frame(0, ip, pcap.LINKTYPE_RAW) == expected
    fragment = bytearray(frame)
    fragment[20] |= 0x20                                                    # more fragments
    arp = eth[:12] + b"\x08\x06" + b"\0" * 28
    icmp = bytearray(frame)
    icmp[23] = 1
    for junk in (bytes(fragment), arp, bytes(icmp), frame[:30], frame[:-1], b"", b"\0" * 13):
        assert pcap.parse_frame(0, junk) is None
    assert pcap.parse_frame(0, frame, 12345) is None


# --------------------------------------------------------------------------------------------
# Writer round trips
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nanosecond", [True, False])
def test_writer_round_trip(tmp_path: Path, nanosecond: bool) -> None:
    path = tmp_path / "out.pcap"
    payloads = [bytes([i]) * (i * 37 % 1400) for i in range(50)]
    with PcapWriter.open(path, nanosecond=nanosecond) as writer:
        for i, p in enumerate(payloads):
            writer.write_udp(T0 + i, "10.9.8.7", 30000 + i, "233.54.12.111", 26477, p)
    raw = path.read_bytes()
    magic = struct.unpack_from("<I", raw)[0]
    assert magic == (pcap.MAGIC_NANO if nanosecond else pcap.MAGIC_MICRO)
    assert struct.unpack_from("<HHiIII", raw, 4) == (2, 4, 0, 0, 262144, pcap.LINKTYPE_ETHERNET)
    packets = pcap.read_pcap(path)
    assert [p.payload for p in packets] == payloads
    assert [p.src_port for p in packets] == [30000 + i for i in range(50)]
    assert {(p.src_ip, p.dst_ip, p.dst_port, p.proto) for p in packets} == {
        ("10.9.8.7", "233.54.12.111", 26477, pcap.IPPROTO_UDP)}
    if nanosecond:
        assert [p.ts_ns for p in packets] == [T0 + i for i in range(50)]
    else:
        assert {p.ts_ns for p in packets} == {T0 // 1000 * 1000}


def test_writer_to_a_file_object_and_snaplen() -> None:
    out = io.BytesIO()
    writer = PcapWriter(out, snaplen=60)
    writer.write_udp(T0, "10.0.0.1", 1, "10.0.0.2", 2, b"x" * 10)     # 52-byte frame, whole
    writer.write_udp(T0, "10.0.0.1", 1, "10.0.0.2", 2, b"y" * 100)    # cut to 60: unreadable
    writer.close()
    reader = PcapReader(io.BytesIO(out.getvalue()))
    assert [p.payload for p in reader] == [b"x" * 10]
    assert reader.skipped == 1
    (_, _, orig1), (_, cut, orig2) = list(PcapReader(io.BytesIO(out.getvalue())).records())
    assert (len(cut), orig1, orig2) == (60, 52, 142)
    with pytest.raises(ValueError):
        writer.write_frame(-1, b"")


def test_ip_identification_counts_up() -> None:
    out = io.BytesIO()
    writer = PcapWriter(out)
    for _ in range(3):
        writer.write_udp(T0, "10.0.0.1", 1, "10.0.0.2", 2, b"x")
    idents = [struct.unpack_from(">H", frame, 18)[0]
              for _, frame, _ in PcapReader(io.BytesIO(out.getvalue())).records()]
    assert idents == [1, 2, 3]


def test_reader_errors() -> None:
    with pytest.raises(ValueError):
        PcapReader(io.BytesIO(b""))
    with pytest.raises(ValueError):
        PcapReader(io.BytesIO(b"\x0a\x0d\x0d\x0a" + b"\0" * 20))            # pcapng
    out = io.BytesIO()
    writer = PcapWriter(out)
    writer.write_udp(T0, "10.0.0.1", 1, "10.0.0.2", 2, b"first")
    writer.write_udp(T0, "10.0.0.1", 1, "10.0.0.2", 2, b"second")
    data = out.getvalue()
    for cut in (len(data) - 1, len(data) - 50, len(data) - 60):
        got: list[bytes] = []
        with pytest.raises(ValueError):
            for p in PcapReader(io.BytesIO(data[:cut])):
                got.append(p.payload)
        assert got == [b"first"]


def test_tcp_stream_writer_keeps_sequence_numbers_consistent() -> None:
    out = io.BytesIO()
    writer = PcapWriter(out)
    stream = TcpStreamWriter(writer, ("10.0.0.2", 50000), ("10.0.0.1", 9000), client_isn=100,
                             server_isn=2**32 - 10, mss=1000)
    client_data = [b"a" * 10, b"b" * 2500]
    server_data = [b"c" * 3, b"d" * 1000, b"e" * 20]
    stream.handshake(T0)
    for c, s in zip(client_data + [b""], server_data):
        if c:
            stream.send(T0, True, c)
        stream.send(T0, False, s)
    stream.ack(T0, True)
    stream.close(T0)
    segments = []
    for _, frame, _ in PcapReader(io.BytesIO(out.getvalue())).records():
        packet = pcap.parse_frame(0, frame)
        assert packet is not None
        seq, ack, _, flags = struct.unpack_from(">IIBB", frame, 38)
        segments.append((packet.src_port == 50000, seq, ack, flags, packet.payload))
    assert [s[3] for s in segments[:3]] == [pcap.TCP_SYN, pcap.TCP_SYN | pcap.TCP_ACK, pcap.TCP_ACK]
    assert max(len(s[4]) for s in segments) == 1000
    for from_client, isn, data in ((True, 100, client_data), (False, 2**32 - 10, server_data)):
        mine = [s for s in segments if s[0] == from_client and s[4]]
        assert b"".join(s[4] for s in mine) == b"".join(data)
        offset = 0
        for _, seq, _, _, payload in mine:
            assert seq == (isn + 1 + offset) % 2**32
            offset += len(payload)
    # every ACK acknowledges everything the peer sent before it
    last_fin = segments[-2]
    assert last_fin[3] & pcap.TCP_FIN and last_fin[2] == (100 + 1 + 2510 + 1) % 2**32


# --------------------------------------------------------------------------------------------
# tshark
# --------------------------------------------------------------------------------------------

@needs_tshark
@pytest.mark.parametrize("nanosecond", [True, False])
def test_tshark_reads_our_files_with_valid_checksums(tmp_path: Path, nanosecond: bool) -> None:
    assert TSHARK is not None
    path = tmp_path / "mixed.pcap"
    with PcapWriter.open(path, nanosecond=nanosecond) as writer:
        writer.write_udp(T0, "10.0.0.1", 40000, "233.54.12.111", 26477, b"odd-length!")
        writer.write_udp(T0 + 1, "10.0.0.1", 40000, "10.0.0.2", 26478, b"")
        stream = TcpStreamWriter(writer, ("10.0.0.2", 50000), ("10.0.0.1", 9000))
        stream.send(T0 + 2, True, b"x" * 3001)
        stream.send(T0 + 3, False, b"y")
        stream.close(T0 + 4)
    base = [TSHARK, "-n", "-r", str(path), "-o", "ip.check_checksum:TRUE",
            "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
    errors = subprocess.run(base + ["-Y", "_ws.expert.severity >= warning"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert errors == ""
    fields = subprocess.run(base + ["-T", "fields", "-e", "ip.checksum.status", "-e",
                                    "udp.checksum.status", "-e", "tcp.checksum.status",
                                    "-e", "frame.time_epoch"],
                            capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert len(fields) == 2 + 3 + 3 + 1 + 3
    for line in fields:
        statuses = [s for s in line.split("\t")[:3] if s]
        assert statuses == ["1", "1"], line          # 1 = Good (0 Bad, 2 Unverified)
    first_time = fields[0].split("\t")[3]
    assert first_time == ("1700000000.123456789" if nanosecond else "1700000000.123456000")


# --------------------------------------------------------------------------------------------
# pcapng
# --------------------------------------------------------------------------------------------

def ng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def ng_option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def ng_file(order: str) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Two interfaces (Ethernet in ns, SLL in 2**-10 s with an offset), EPBs on both, a Simple
    Packet Block, a statistics block and a custom block to skip, then a second section."""
    eth = pcap.udp_frame("10.0.0.1", 1, "239.1.1.1", 2, b"eth payload")
    sll = b"\0\0\0\x01\0\x06" + b"\x02" * 6 + b"\0\0\x08\x00" + eth[14:]
    shb = ng_block(order, pcap.PCAPNG_SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb0 = ng_block(order, 1, struct.pack(order + "HHI", 1, 0, 0) + ng_option(order, 9, b"\x09")
                    + ng_option(order, 0, b""))
    idb1 = ng_block(order, 1, struct.pack(order + "HHI", 113, 0, 0) + ng_option(order, 9, b"\x8a")
                    + ng_option(order, 14, struct.pack(order + "q", 100)) + ng_option(order, 0, b""))

    def epb(iface: int, ts: int, frame: bytes) -> bytes:
        return ng_block(order, 6, struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame),
                                              len(frame)) + frame)
    spb = ng_block(order, 3, struct.pack(order + "I", len(eth)) + eth)
    isb = ng_block(order, 5, struct.pack(order + "III", 0, 0, 0))
    custom = ng_block(order, 0x40000BAD, b"vendor things")
    data = shb + idb0 + idb1 + epb(0, T0, eth) + epb(1, 3 * 1024 + 512, sll) + isb + custom + spb
    data += shb + idb0 + epb(0, T0 + 5, eth)
    expect = [(T0, pcap.LINKTYPE_ETHERNET, eth), ((100 + 3) * 10**9 + 500_000_000, pcap.LINKTYPE_LINUX_SLL, sll),
              (0, pcap.LINKTYPE_ETHERNET, eth), (T0 + 5, pcap.LINKTYPE_ETHERNET, eth)]
    return data, expect


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_interfaces_resolutions_offsets_and_sections(order: str) -> None:
    data, expect = ng_file(order)
    reader = pcap.capture_reader(io.BytesIO(data))
    assert isinstance(reader, pcap.PcapngReader)
    assert list(reader.frames()) == expect
    packets = list(pcap.capture_reader(io.BytesIO(data)))
    assert [p.payload for p in packets] == [b"eth payload"] * 4
    assert packets[1].ts_ns == (100 + 3) * 10**9 + 500_000_000


def test_pcapng_errors_after_the_complete_blocks() -> None:
    data, _ = ng_file("<")
    for cut in (len(data) - 1, len(data) - 30):
        got = []
        with pytest.raises(ValueError, match="pcapng"):
            for _, _, frame in pcap.capture_reader(io.BytesIO(data[:cut])).frames():
                got.append(frame)
        assert len(got) == 3
    bad = bytearray(data)
    bad[-4] ^= 0xFF                                   # the trailing length of the last block
    with pytest.raises(ValueError, match="trailing length"):
        list(pcap.capture_reader(io.BytesIO(bytes(bad))))
    with pytest.raises(ValueError):
        pcap.capture_reader(io.BytesIO(b"\x0a\x0d\x0d\x0a\x1c\0\0\0\x01\x02\x03\x04"))   # byte-order magic
    with pytest.raises(ValueError, match="not a pcap"):
        pcap.capture_reader(io.BytesIO(b"GET / HTTP/1.1\r\n"))


def test_fast_path_gives_what_the_packet_reader_gives(tmp_path: Path) -> None:
    """udp_datagrams (memory-mapped, frames sliced in place) against Packet parsing, on a file with
    tagged and untagged frames, padding, a fragment, TCP and ARP."""
    path = tmp_path / "mixed.pcap"
    frames = [pcap.udp_frame("10.0.0.1", 1, "239.1.1.1", 2, b"plain"),
              pcap.udp_frame("10.0.0.1", 1, "239.1.1.2", 3, b"padded") + b"\0" * 20,
              (lambda f: f[:12] + b"\x81\x00\x00\x05" + f[12:])(pcap.udp_frame("10.0.0.1", 1, "239.1.1.3", 4, b"vlan")),
              (lambda f: f[:20] + b"\x20\x00" + f[22:])(pcap.udp_frame("10.0.0.1", 1, "239.1.1.4", 5, b"fragment")),
              pcap.tcp_frame("10.0.0.1", 1, "10.0.0.2", 2, 1, 1, pcap.TCP_ACK, b"tcp"),
              b"\xff" * 12 + b"\x08\x06" + b"\0" * 28]
    with PcapWriter.open(path) as w:
        for i, frame in enumerate(frames):
            w.write_frame(T0 + i, frame)
    counts: dict[str, int] = {}
    with open(path, "rb") as f:
        fast = list(pcap.udp_datagrams(pcap.capture_reader(f), counts))
    slow = [(p.ts_ns, (p.dst_ip, p.dst_port), p.payload) for p in pcap.read_pcap(path) if p.proto == pcap.IPPROTO_UDP]
    assert fast == slow == [(T0, ("239.1.1.1", 2), b"plain"), (T0 + 1, ("239.1.1.2", 3), b"padded"),
                            (T0 + 2, ("239.1.1.3", 4), b"vlan")]
    assert counts == {"tcp": 1, "not_ip": 2}
