"""MoldUDP64: packing, parsing, heartbeats, re-requests; real captures and tshark as references."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds import itch, moldudp64, pcap
from feeds.moldudp64 import PacketBuilder, Session, parse_packet

from conftest import needs_shared

SHARED = Path(os.environ.get("MATCHWIRE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CAPTURES = SHARED / "data" / "captures"
ORIGINAL = CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0"

needs_captures = needs_shared(ORIGINAL)   # a skip, except in CI (CI=true): there a failure
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")


def add_order(i: int) -> bytes:
    return itch.encode_add_order(1, 0, 34_200_000_000_000 + i, i + 1, b"B", 100, b"AAPL    ", 1_501_000)


# --------------------------------------------------------------------------------------------
# Layouts and golden bytes
# --------------------------------------------------------------------------------------------

def test_header_and_rerequest_layouts() -> None:
    assert moldudp64.HEADER.struct.format == ">10sQH" and moldudp64.HEADER_SIZE == 20
    assert moldudp64.REREQUEST.struct.format == ">10sQH" and moldudp64.REREQUEST_SIZE == 20
    assert [(f.name, f.offset) for f in moldudp64.HEADER.fields] == [
        ("session", 0), ("sequence", 10), ("message_count", 18)]


def test_heartbeat_and_end_of_session_bytes() -> None:
    session = Session("ABC", next_seq=7)
    assert session.name == b"ABC       "
    assert session.heartbeat() == b"ABC       " + (7).to_bytes(8, "big") + b"\x00\x00"
    assert session.end_of_session() == b"ABC       " + (7).to_bytes(8, "big") + b"\xff\xff"
    assert moldudp64.heartbeat(b"ABC", 7) == session.heartbeat()
    assert moldudp64.end_of_session(b"ABC", 7) == session.end_of_session()
    hb = parse_packet(session.heartbeat())
    assert hb.is_heartbeat and not hb.is_end_of_session and hb.sequence == 7 and hb.messages == []
    eos = parse_packet(session.end_of_session())
    assert eos.is_end_of_session and eos.message_count == 0xFFFF and eos.messages == []


@needs_captures
def test_builder_reproduces_every_captured_datagram_byte_for_byte() -> None:
    checked = 0
    for path in sorted(ORIGINAL.glob("*.pcap")):
        for packet in pcap.read_pcap(path):
            parsed = parse_packet(packet.payload)
            builder = PacketBuilder(Session(parsed.session, parsed.sequence), max_payload=1472)
            seqs = [builder.add(m) for m in parsed.messages]
            assert seqs == list(range(parsed.sequence, parsed.sequence + parsed.message_count))
            assert builder.flush() == [packet.payload]
            checked += 1
    assert checked == 9


@needs_captures
def test_the_full_capture_datagram_is_exactly_full() -> None:
    big = [p for p in pcap.read_pcap(ORIGINAL / "Multiple.Packets.pcap") if len(p.payload) == 1472]
    messages = parse_packet(big[0].payload).messages
    assert len(messages) == 38
    builder = PacketBuilder(Session("000010059B", 19009117))
    for m in messages + messages[:1]:      # one more message starts a second datagram
        builder.add(m)
    first, second = builder.flush()
    assert first == big[0].payload
    assert parse_packet(second) == (b"000010059B", 19009117 + 38, 1, messages[:1])


# --------------------------------------------------------------------------------------------
# PacketBuilder properties
# --------------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.integers(23, 3000), st.integers(1, 2**40),
       st.lists(st.lists(st.integers(1, 400), max_size=40), min_size=1, max_size=6), st.data())
def test_packing_bounds_continuity_and_counts(max_payload: int, start: int,
                                              batches: list[list[int]], data: st.DataObject) -> None:
    session = Session(b"PROP", start)
    builder = PacketBuilder(session, max_payload)
    sent: list[bytes] = []
    packets: list[bytes] = []
    seqs: list[int] = []
    for sizes in batches:
        for n in sizes:
            message = bytes([len(sent) & 0xFF]) * min(n, builder.max_message)
            seqs.append(builder.add(message))
            sent.append(message)
        handed = builder.flush() if data.draw(st.booleans()) else builder.drain()
        packets += handed
        # everything handed over is accounted for in the session's next sequence number
        assert session.next_seq == start + sum(parse_packet(p).message_count for p in packets)
    packets += builder.flush()
    assert builder.flush() == [] and builder.pending_messages == 0
    assert seqs == list(range(start, start + len(sent)))
    assert session.next_seq == start + len(sent) == builder.next_seq

    expected_seq = start
    received: list[bytes] = []
    for raw in packets:
        assert len(raw) <= max_payload
        parsed = parse_packet(raw)
        assert parsed.session == b"PROP      "
        assert parsed.sequence == expected_seq
        assert parsed.message_count == len(parsed.messages) > 0
        expected_seq += parsed.message_count
        received += parsed.messages
    assert received == sent


@settings(max_examples=100, deadline=None)
@given(st.integers(23, 2000), st.lists(st.integers(1, 300), min_size=1, max_size=80))
def test_one_flush_packs_into_as_few_datagrams_as_fit(max_payload: int, sizes: list[int]) -> None:
    builder = PacketBuilder(Session(b"X"), max_payload)
    messages = [b"m" * min(n, builder.max_message) for n in sizes]
    for m in messages:
        builder.add(m)
    packets = builder.flush()
    for i in range(len(packets) - 1):
        next_first = parse_packet(packets[i + 1]).messages[0]
        assert len(packets[i]) + 2 + len(next_first) > max_payload
    # order-preserving greedy packing is optimal: recount by first fit over the sizes
    needed, room = 1, max_payload - 20
    for m in messages:
        if len(m) + 2 > room:
            needed, room = needed + 1, max_payload - 20
        room -= len(m) + 2
    assert len(packets) == needed


def test_default_payload_holds_as_many_add_orders_as_nasdaq_does() -> None:
    builder = PacketBuilder(Session("S"))
    for i in range(100):
        builder.add(add_order(i))
    packets = builder.flush()
    assert [parse_packet(p).message_count for p in packets] == [38, 38, 24]
    assert max(len(p) for p in packets) == 20 + 38 * 38 == 1464


def test_builder_refuses_bad_messages_and_sizes() -> None:
    builder = PacketBuilder(Session("S"), max_payload=100)
    assert builder.max_message == 78
    builder.add(b"x" * 78)
    with pytest.raises(ValueError):
        builder.add(b"x" * 79)
    with pytest.raises(ValueError):
        builder.add(b"")
    assert [parse_packet(p).message_count for p in builder.flush()] == [1]
    for bad in (22, 65508):
        with pytest.raises(ValueError):
            PacketBuilder(Session("S"), max_payload=bad)
    with pytest.raises(ValueError):
        Session("ELEVENCHARS")
    with pytest.raises(ValueError):
        Session("S", next_seq=0)


def test_drain_leaves_the_open_packet_open() -> None:
    session = Session("S", 10)
    builder = PacketBuilder(session, max_payload=20 + 2 * 38)
    assert builder.add(add_order(0)) == 10
    assert builder.drain() == [] and session.next_seq == 10
    assert builder.add(add_order(1)) == 11
    assert builder.add(add_order(2)) == 12     # closes the packet of 10 and 11
    (first,) = builder.drain()
    assert parse_packet(first).sequence == 10 and session.next_seq == 12
    assert session.heartbeat() == moldudp64.heartbeat(b"S", 12)
    (second,) = builder.flush()
    assert parse_packet(second)[:3] == (b"S         ", 12, 1) and session.next_seq == 13


# --------------------------------------------------------------------------------------------
# Parser: malformed input
# --------------------------------------------------------------------------------------------

def test_parse_packet_rejects_malformed_datagrams() -> None:
    builder = PacketBuilder(Session("S"))
    builder.add(add_order(0))
    builder.add(add_order(1))
    (good,) = builder.flush()
    header = good[:20]
    bad = [
        b"", good[:19],                                   # no header
        good[:-1], good[:21], good[:20 + 2 + 36 + 1],     # cut inside a length or a message
        good + b"\0",                                     # trailing byte
        header[:18] + b"\x00\x03" + good[20:],            # count says 3, holds 2
        header[:18] + b"\x00\x01" + good[20:],            # count says 1, holds 2
        moldudp64.heartbeat(b"S", 1) + b"\0\0",           # heartbeat with data
        moldudp64.end_of_session(b"S", 1) + b"\0",        # end of session with data
    ]
    for data in bad:
        with pytest.raises(ValueError):
            parse_packet(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_parse_packet_of_arbitrary_bytes_returns_or_raises_value_error(data: bytes) -> None:
    try:
        parsed = parse_packet(data)
    except ValueError:
        return
    assert len(parsed.messages) in (0, parsed.message_count)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=10), st.data())
def test_every_truncation_of_a_valid_packet_is_refused(messages: list[bytes], data: st.DataObject) -> None:
    builder = PacketBuilder(Session("S"))
    for m in messages:
        builder.add(m)
    (raw,) = builder.flush()
    assert parse_packet(raw).messages == messages
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ValueError):
        parse_packet(raw[:cut])


def test_blocks_helpers_round_trip_and_refuse_cut_input() -> None:
    messages = [b"a", b"", b"xyz" * 100]
    framed = moldudp64.frame_blocks(messages)
    assert moldudp64.split_blocks(framed) == messages
    for cut in (1, 4, 6, len(framed) - 1):
        with pytest.raises(ValueError):
            moldudp64.split_blocks(framed[:cut])
    with pytest.raises(ValueError):
        moldudp64.frame_blocks([b"x" * 65536])


# --------------------------------------------------------------------------------------------
# Re-request
# --------------------------------------------------------------------------------------------

@given(st.binary(min_size=0, max_size=10), st.integers(0, 2**64 - 1), st.integers(1, 0xFFFE))
def test_rerequest_round_trip(session: bytes, first: int, count: int) -> None:
    raw = moldudp64.encode_rerequest(session, first, count)
    assert len(raw) == 20
    assert moldudp64.decode_rerequest(raw) == (session.ljust(10, b" "), first, count)


def test_rerequest_refuses_bad_input() -> None:
    for count in (0, 0xFFFF):
        with pytest.raises(ValueError):
            moldudp64.encode_rerequest(b"S", 1, count)
    with pytest.raises(ValueError):
        moldudp64.encode_rerequest(b"S", -1, 1)
    for size in (0, 19, 21):
        with pytest.raises(ValueError):
            moldudp64.decode_rerequest(b"\0" * size)
    assert Session("S").rerequest(5, 2) == moldudp64.encode_rerequest(b"S", 5, 2)


# --------------------------------------------------------------------------------------------
# tshark as an independent decoder
# --------------------------------------------------------------------------------------------

def tshark(path: Path, decode_as: list[str], *args: str) -> str:
    assert TSHARK is not None
    cmd = [TSHARK, "-n", "-r", str(path), "-o", "ip.check_checksum:TRUE",
           "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
    for d in decode_as:
        cmd += ["-d", d]
    result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


@needs_tshark
def test_tshark_decodes_our_moldudp64_without_errors_and_with_our_counts(tmp_path: Path) -> None:
    session = Session("MWTEST0001")
    builder = PacketBuilder(session)
    everything = [itch.encode(m) for m in (
        itch.SystemEvent(0, 0, 1, b"O"),
        itch.StockDirectory(1, 0, 2, b"AAPL    ", b"Q", b"N", 100, b"N", b"C", b"Z ", b"P", b"N",
                            b"N", b"1", b"N", 0, b"N"),
        itch.StockTradingAction(1, 0, 3, b"AAPL    ", b"T", b" ", b"    "),
    )] + [add_order(i) for i in range(90)] + [itch.encode_order_delete(1, 0, 5, i + 1) for i in range(30)]
    for m in everything:
        builder.add(m)
    packets = builder.flush()
    datagrams = packets + [session.heartbeat(), session.end_of_session()]
    path = tmp_path / "mold.pcap"
    with pcap.PcapWriter.open(path) as writer:
        for i, d in enumerate(datagrams):
            writer.write_udp(1_700_000_000 * 10**9 + i * 1000, "10.1.1.1", 40000, "233.54.12.111", 26477, d)
        writer.write_udp(1_700_000_001 * 10**9, "10.1.1.2", 40001, "10.1.1.1", 26478,
                         session.rerequest(3, 10))
    decode_as = ["udp.port==26477,moldudp64", "udp.port==26478,moldudp64"]
    assert tshark(path, decode_as, "-Y", "_ws.expert.severity >= error") == ""
    fields = tshark(path, decode_as, "-T", "fields", "-e", "moldudp64.session",
                    "-e", "moldudp64.sequence", "-e", "moldudp64.count").splitlines()
    expected = [parse_packet(d) for d in datagrams]
    assert [line.split("\t") for line in fields] == [
        ["MWTEST0001", str(p.sequence), str(p.message_count)] for p in expected
    ] + [["MWTEST0001", "3", "10"]]
    lengths = tshark(path, decode_as, "-T", "fields", "-e", "moldudp64.msglen").split()
    assert [int(n) for line in lengths for n in line.split(",")] == [len(m) for m in everything]
    summary = tshark(path, decode_as)
    assert "Heartbeat" in summary and "End Of Session" in summary and "Request" in summary


@needs_tshark
@needs_captures
def test_tshark_counts_on_the_real_capture_match_ours() -> None:
    path = ORIGINAL / "Multiple.Packets.pcap"
    out = tshark(path, ["udp.port==26477,moldudp64"], "-T", "fields", "-e", "moldudp64.sequence",
                 "-e", "moldudp64.count")
    ours = [parse_packet(p.payload) for p in pcap.read_pcap(path)]
    assert [line.split("\t") for line in out.splitlines()] == [
        [str(p.sequence), str(p.message_count)] for p in ours]
