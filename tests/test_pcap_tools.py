"""`matchwire pcap gap-check / stats` and `feed dump` on the real NASDAQ captures and on captures of
our own feeds with loss, duplication, reordering and A/B skew injected here; the same traffic as
pcapng, microsecond pcap, 802.1Q-tagged Ethernet and Linux cooked (SLL, SLL2) gives the same reports."""
from __future__ import annotations

import collections
import importlib.util
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from feeds import pcap
from feeds.channels import CHANNELS, L1, L2, L3, ChannelGroups, FeedConfig, decode_any
from feeds.moldudp64 import parse_packet
from feeds.pcap import PcapWriter, udp_frame
from feeds import ouch_layout
from feeds import itch, soupbintcp
from feeds.books import L2Book, L3Book, engine_l2_summary, engine_l3_summary, summary_hash
from feeds.moldudp64 import PacketBuilder, Session
from feeds.pcap import TcpStreamWriter
from feeds.pcap_analysis import SeqTracker, max_in_window, percentiles
from tools.pcap_cli import book
from feeds.transport import A, B, multicast_receiver, transport_for
from tools import cli

from test_feed_e2e import random_groups
from test_publisher import MIDNIGHT, T0, publish_all, random_specs

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MATCHWIRE_SHARED", REPO.parent / "shared"))
CAPTURES = SHARED / "data" / "captures"
ITCH_ORIGINAL = CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0"
ITCH_DATED = CAPTURES / "Nasdaq.Equities.TotalView.Itch.v5.0.20230822"
OUCH = CAPTURES / "Nasdaq.Nsm.Ouch.v5.0"
needs_captures = pytest.mark.skipif(not CAPTURES.is_dir(), reason=f"no captures under {CAPTURES}")
EDITCAP = shutil.which("editcap")
TSHARK = shutil.which("tshark")
needs_wireshark = pytest.mark.skipif(EDITCAP is None or TSHARK is None,
                                     reason="tshark/editcap are not installed (apt-get install tshark)")

GROUPS = {ch: ChannelGroups((f"239.192.1.{31 + i}", 30011 + i), (f"239.193.1.{31 + i}", 30011 + i))
          for i, ch in enumerate(CHANNELS)}
SRC = ("10.9.0.1", 29999)
US = 1000                      # every injected time is a whole microsecond: the us pcap keeps them
SKEWS = (3 * US, 7 * US, -2 * US, 5 * US, 11 * US)   # t(B) - t(A) of L3 datagram k: SKEWS[k % 5]
DROP_A, DROP_BOTH, DUP_A, SWAP_B, LATE = 10, 20, 30, 40, 50


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        rc = cli.main(list(argv))
    finally:
        sys.stdout, sys.stderr = old
    return rc, out.getvalue(), err.getvalue()


def header(d: bytes) -> tuple[int, int]:
    p = parse_packet(d)
    return p.sequence, p.message_count


# --------------------------------------------------------------------------------------------
# A capture of our feeds, with faults injected
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every datagram of a run's three channels, each written on A and B with known times and
    faults on L3; plus a re-request, a stray datagram, a TCP segment and an ARP frame."""
    config = FeedConfig(groups=GROUPS, max_payload=300)
    engine, transport, pub = publish_all(random_specs(7, 500), batch=10, config=config)
    pub.poll(T0 + 20 * 10**9)              # a heartbeat per channel
    pub.end_session(T0 + 25 * 10**9)       # System Events, then End of Session
    sent = {ch: transport.of(ch, A) for ch in CHANNELS}
    assert all(transport.of(ch, B) == sent[ch] for ch in CHANNELS)
    data = {ch: [d for d in sent[ch] if header(d)[1] not in (0, 0xFFFF)] for ch in CHANNELS}
    assert len(data[L3]) > LATE + 5
    base = T0 + 30 * 10**9
    events: list[tuple[int, int, str, int, bytes]] = []     # (ts, order, channel, leg, payload)
    times: dict[tuple[int, int], int] = {}                  # L3 (k, leg) -> ts of its first copy
    for c, ch in enumerate(CHANNELS):
        k = 0
        for i, d in enumerate(sent[ch]):
            t = base + (i * 3 + c) * 10 * US
            tb = t + (SKEWS[k % 5] if ch == L3 else 2 * US)
            is_data = header(d)[1] not in (0, 0xFFFF)
            if ch == L3 and is_data:
                if k == LATE:                   # both copies come after datagram LATE + 1
                    t += 35 * US
                    tb += 35 * US
                if k == SWAP_B:                 # B carries SWAP_B, SWAP_B + 1 swapped
                    tb = base + ((i + 1) * 3 + c) * 10 * US + SKEWS[(k + 1) % 5]
                elif k == SWAP_B + 1:
                    tb = base + ((i - 1) * 3 + c) * 10 * US + SKEWS[(k - 1) % 5]
                if k not in (DROP_A, DROP_BOTH):
                    events.append((t, len(events), ch, A, d))
                    times[(k, A)] = t
                if k == DUP_A:
                    events.append((t + US, len(events), ch, A, d))
                if k != DROP_BOTH:
                    events.append((tb, len(events), ch, B, d))
                    times[(k, B)] = tb
                k += 1
            else:
                events.append((t, len(events), ch, A, d))
                events.append((tb, len(events), ch, B, d))
    events.sort()
    end = events[-1][0]
    stray = [(end + US, udp_frame(SRC[0], 40000, "10.1.1.1", 40001, header_bytes(data[L3][0], 5))),
             (end + 2 * US, udp_frame(SRC[0], 5353, "10.1.1.1", 53, b"hello, not a feed")),
             (end + 3 * US, pcap.tcp_frame(SRC[0], 40000, "10.1.1.1", 9000, 1, 1, pcap.TCP_ACK, b"x")),
             (end + 4 * US, b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28)]   # ARP
    frames = []
    for t, _, ch, leg, d in events:
        group = GROUPS[ch][leg]
        frames.append((t, udp_frame(SRC[0], SRC[1], group[0], group[1], d)))
    frames += stray
    tmp = tmp_path_factory.mktemp("pcaptools")
    path = tmp / "feed.pcap"
    with PcapWriter.open(path) as w:
        for t, frame in frames:
            w.write_frame(t, frame)
    clean = tmp / "clean.pcap"
    with PcapWriter.open(clean) as w:
        for i, d in enumerate(d for ch in CHANNELS for d in sent[ch]):
            ch = next(c for c in CHANNELS if d in sent[c])
            w.write_udp(base + i * US, SRC[0], SRC[1], *GROUPS[ch].a, d)
    return {"path": path, "tmp": tmp, "sent": sent, "data": data, "times": times, "frames": frames,
            "events": events, "engine": engine, "clean": clean}


def header_bytes(d: bytes, count: int) -> bytes:
    """A re-request for ``count`` messages from the first of datagram ``d``."""
    return d[:18] + count.to_bytes(2, "big")


def _session(report: dict[str, Any], channel: str) -> dict[str, Any]:
    [s] = [s for s in report["sessions"] if s["channel"] == channel]
    return s


def test_gap_check_reports_exactly_the_injected_faults(feed: dict[str, Any]) -> None:
    rc, out, err = run("pcap", "gap-check", "--json", str(feed["path"]))
    assert rc == 1 and not err                         # one gap no line could fill
    report = json.loads(out)
    data, sent, times = feed["data"], feed["sent"], feed["times"]
    d20 = header(data[L3][DROP_BOTH])
    d10 = header(data[L3][DROP_A])
    last_seq = {ch: header(data[ch][-1])[0] + header(data[ch][-1])[1] for ch in CHANNELS}
    s3 = _session(report, L3)
    assert s3["gaps"] == {"count": 1, "missing": d20[1], "first": d20[0], "last": d20[0] + d20[1] - 1,
                          "ranges": [[d20[0], d20[0] + d20[1] - 1]]}
    assert s3["late"] == 1 and s3["first_seq"] == 1 and s3["next_seq"] == last_seq[L3]
    assert s3["messages"] == last_seq[L3] - 1 - d20[1]
    assert s3["heartbeats"] == 2 and s3["end_of_session"] == last_seq[L3]
    la, lb = s3["lines"]
    assert (la["line"], la["group"], lb["line"], lb["group"]) == ("A", "239.192.1.31:30011", "B", "239.193.1.31:30011")
    assert la["packets"] == len(sent[L3]) - 2 + 1 and lb["packets"] == len(sent[L3]) - 1
    assert la["gaps"] == {"count": 2, "missing": d10[1] + d20[1], "first": d10[0], "last": d20[0] + d20[1] - 1,
                          "ranges": [[d10[0], d10[0] + d10[1] - 1], [d20[0], d20[0] + d20[1] - 1]]}
    assert (la["duplicates"], la["out_of_order"], la["heartbeats"], la["end_of_session"]) == (1, 1, 1, last_seq[L3])
    assert lb["gaps"]["count"] == 1 and lb["gaps"]["missing"] == d20[1]
    assert (lb["duplicates"], lb["out_of_order"], lb["heartbeats"]) == (0, 2, 1)
    skews = [times[(k, B)] - times[(k, A)] for k in range(len(data[L3])) if (k, A) in times and (k, B) in times]
    assert len(skews) == len(data[L3]) - 2
    arb = s3["arbitration"]
    assert arb["pairs"] == len(skews) and arb["ties"] == 0 and arb["one_line_only"] == {"B": 1}
    assert arb["first"] == {"A": sum(1 for x in skews if x > 0), "B": sum(1 for x in skews if x < 0)}
    ordered = sorted(skews)
    n = len(ordered)
    assert arb["skew_b_minus_a_ns"] == {"min": ordered[0], "p50": ordered[(n + 1) // 2 - 1],
                                        "p90": ordered[-(-90 * n // 100) - 1], "p99": ordered[-(-99 * n // 100) - 1],
                                        "p999": ordered[-(-999 * n // 1000) - 1], "max": ordered[-1]}
    for ch in (L2, L1):
        s = _session(report, ch)
        assert s["gaps"] == {"count": 0, "missing": 0} and s["late"] == 0
        assert s["messages"] == last_seq[ch] - 1 and s["end_of_session"] == last_seq[ch]
        assert [ln["packets"] for ln in s["lines"]] == [len(sent[ch])] * 2
        assert all(ln["gaps"]["count"] == 0 and ln["duplicates"] == 0 and ln["out_of_order"] == 0 for ln in s["lines"])
        assert s["arbitration"]["skew_b_minus_a_ns"]["max"] == 2 * US == s["arbitration"]["skew_b_minus_a_ns"]["min"]
        assert s["arbitration"]["first"] == {"A": len(data[ch])}
    assert report["other"] == {"udp": 1, "rerequests": 1, "tcp_segments": 1, "not_ipv4_udp_tcp": 1,
                               "by_destination": {"10.1.1.1:40001": 1, "10.1.1.1:53": 1}}
    rc, text, _ = run("pcap", "gap-check", str(feed["path"]))
    assert rc == 1 and f"1 gaps, {d20[1]} missing, first {d20[0]}" in text


def test_gap_check_exit_status_follows_the_session_or_any_line(feed: dict[str, Any], tmp_path: Path) -> None:
    """Without the doubly lost datagram only line A has gaps: exit 0, and 1 with --any-line."""
    d20 = feed["data"][L3][DROP_BOTH]
    path = tmp_path / "lineloss.pcap"
    with PcapWriter.open(path) as w:
        for t, frame in feed["frames"]:
            w.write_frame(t, frame)
        w.write_udp(feed["frames"][-1][0] + US, SRC[0], SRC[1], *GROUPS[L3].b, d20)
    assert run("pcap", "gap-check", str(path))[0] == 0
    assert run("pcap", "gap-check", "--any-line", str(path))[0] == 1
    report = json.loads(run("pcap", "gap-check", "--json", str(path))[1])
    assert _session(report, L3)["late"] == 2


def expected_types(feed: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for ch in CHANNELS:
        counts: collections.Counter[str] = collections.Counter()
        for k, d in enumerate(feed["data"][ch]):
            if ch == L3 and k == DROP_BOTH:
                continue
            for m in parse_packet(d).messages:
                decode_any(m)
                counts[chr(m[0])] += 1
        out[parse_packet(feed["data"][ch][0]).session.decode()] = dict(sorted(counts.items()))
    return out


def naive_peak(ts: list[int], w: list[int], width: int) -> int:
    return max(sum(x for t2, x in zip(ts, w) if t <= t2 < t + width) for t in ts)


def test_stats_counts_types_groups_peaks_and_sizes(feed: dict[str, Any]) -> None:
    rc, out, err = run("pcap", "stats", "--json", str(feed["path"]))
    assert rc == 0 and not err
    r = json.loads(out)
    assert r["types"] == expected_types(feed)
    assert r["messages"] == sum(sum(t.values()) for t in r["types"].values())
    assert r["other_udp"] == 2 and r["tcp_segments"] == 1 and r["not_ipv4_udp_tcp"] == 1
    by_group: dict[str, list[tuple[int, bytes]]] = collections.defaultdict(list)
    for t, _, ch, leg, d in feed["events"]:
        g = GROUPS[ch][leg]
        by_group[f"{g[0]}:{g[1]}"].append((t, d))
    groups = {g["group"]: g for g in r["groups"]}
    assert set(by_group) <= set(groups) and len(groups) == len(by_group) + 2
    for name, items in by_group.items():
        g = groups[name]
        sizes = [len(d) for _, d in items]
        msgs = [header(d)[1] if header(d)[1] != 0xFFFF else 0 for _, d in items]
        assert (g["packets"], g["bytes"], g["messages"]) == (len(items), sum(sizes), sum(msgs))
        assert g["size"]["min"] == min(sizes) and g["size"]["max"] == max(sizes)
        assert sum(g["size"]["histogram"].values()) == len(items)
        ts = [t for t, _ in items]
        for window, width in (("1ms", 1_000_000), ("100us", 100_000)):
            assert g["peaks"][window]["messages"] == naive_peak(ts, msgs, width)
            assert g["peaks"][window]["packets"] == naive_peak(ts, [1] * len(ts), width)
            assert g["peaks"][window]["bytes"] == naive_peak(ts, sizes, width)
    rc, text, _ = run("pcap", "stats", str(feed["path"]))
    assert rc == 0 and "peak in 100us" in text


# --------------------------------------------------------------------------------------------
# The same traffic in other containers and link types
# --------------------------------------------------------------------------------------------

def sll(frame: bytes) -> bytes:
    """Linux cooked v1 header for an Ethernet frame: packet type, ARPHRD_ETHER, the source MAC."""
    return (b"\x00\x00" + b"\x00\x01" + b"\x00\x06" + frame[6:12] + b"\0\0" + frame[12:14]) + frame[14:]


def sll2(frame: bytes) -> bytes:
    """Linux cooked v2: protocol, reserved, interface index, ARPHRD_ETHER, packet type, address."""
    return (frame[12:14] + b"\0\0" + (2).to_bytes(4, "big") + b"\x00\x01" + b"\x00" + b"\x06"
            + frame[6:12] + b"\0\0") + frame[14:]


def vlan(frame: bytes) -> bytes:
    return frame[:12] + b"\x81\x00\x00\x64" + frame[12:]


def write_linktype(path: Path, frames: list[tuple[int, bytes]], linktype: int, convert: Any) -> None:
    with open(path, "wb") as f:
        w = PcapWriter(f, linktype=linktype)
        for t, frame in frames:
            w.write_frame(t, convert(frame))


def tshark_udp(path: Path) -> list[str]:
    proc = subprocess.run([TSHARK or "tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch",
                           "-e", "ip.dst", "-e", "udp.dstport", "-e", "udp.length", "-Y", "udp"],
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout.splitlines()


@needs_wireshark
def test_pcapng_microsecond_vlan_and_cooked_captures_give_the_same_reports(feed: dict[str, Any]) -> None:
    tmp: Path = feed["tmp"]
    frames = [(t, f) for t, f in feed["frames"]]
    variants = {}
    write_linktype(tmp / "vlan.pcap", frames, pcap.LINKTYPE_ETHERNET, vlan)
    write_linktype(tmp / "sll.pcap", frames, pcap.LINKTYPE_LINUX_SLL, sll)
    write_linktype(tmp / "sll2.pcap", frames, pcap.LINKTYPE_LINUX_SLL2, sll2)
    variants["vlan"] = tmp / "vlan.pcap"
    variants["sll"] = tmp / "sll.pcap"
    variants["sll2"] = tmp / "sll2.pcap"
    for name, fmt, src in (("pcapng", "pcapng", feed["path"]), ("us", "pcap", feed["path"]),
                           ("sll.pcapng", "pcapng", tmp / "sll.pcap"), ("sll2.pcapng", "pcapng", tmp / "sll2.pcap")):
        out = tmp / f"conv-{name}"
        subprocess.run([EDITCAP or "editcap", "-F", fmt, str(src), str(out)], check=True, timeout=120,
                       capture_output=True)
        variants[name] = out
    with open(variants["pcapng"], "rb") as f:
        assert f.read(4) == b"\x0a\x0d\x0d\x0a"
    with open(variants["us"], "rb") as f:
        assert int.from_bytes(f.read(4), "little") == pcap.MAGIC_MICRO
    # tshark sees the same UDP datagrams at the same times in each (the cooked headers are valid)
    reference = tshark_udp(feed["path"])
    assert len(reference) == len(feed["frames"]) - 2
    for name in ("vlan", "sll", "sll2", "sll.pcapng", "us"):
        assert tshark_udp(variants[name]) == reference, name
    gap = run("pcap", "gap-check", "--json", str(feed["path"]))
    stats = run("pcap", "stats", "--json", str(feed["path"]))
    dump = run("feed", "dump", "--pcap", str(feed["path"]), "--format", "jsonl")
    for name, path in variants.items():
        assert run("pcap", "gap-check", "--json", str(path)) == gap, name
        assert run("pcap", "stats", "--json", str(path)) == stats, name
        assert run("feed", "dump", "--pcap", str(path), "--format", "jsonl") == dump, name


# --------------------------------------------------------------------------------------------
# The real NASDAQ captures
# --------------------------------------------------------------------------------------------

DATED_TYPES = {"AddOrderNoMPID": "A", "AddOrderWithMPID": "F", "CrossTrade": "Q", "LULDAuctionCollar": "J",
               "MarketParticipantPosition": "L", "NetOrderImbalanceIndicator": "I", "NonCrossTrade": "P",
               "OrderCancel": "X", "OrderDelete": "D", "OrderExecuted": "E", "OrderExecutedWithPrice": "C",
               "OrderReplace": "U", "RegSHORestriction": "Y", "StockTradingAction": "H", "SystemEvent": "S"}
ORIGINAL = {"AddOrderNoMpidAttributionMessage": (14757721, "A"), "MarketParticipantPositionMessage": (17861990, "L"),
            "NetOrderImbalanceIndicatorMessage": (14757919, "I"), "OrderDeleteMessage": (14757722, "D"),
            "OrderExecutedMessage": (14757745, "E"), "OrderReplaceMessage": (14757701, "U"),
            "StockTradingActionMessage": (34147961, "H")}


@needs_captures
@pytest.mark.parametrize("name", sorted(DATED_TYPES))
def test_zero_sequence_captures(name: str) -> None:
    path = str(ITCH_DATED / f"{name}.pcap")
    packets = 1 if name == "SystemEvent" else 5
    rc, out, _ = run("pcap", "gap-check", "--json", path)
    [s] = json.loads(out)["sessions"]
    assert rc == 0 and s["session"] == "hex:00000000000000000000" and s["unsequenced_packets"] == packets
    assert s["messages"] == packets and s["gaps"]["count"] == 0 and s["first_seq"] is None
    rc, out, _ = run("pcap", "stats", "--json", path)
    assert json.loads(out)["types"] == {"hex:00000000000000000000": {DATED_TYPES[name]: packets}}
    rc, out, err = run("feed", "dump", "--pcap", path, "--format", "jsonl")
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and len(lines) == packets
    assert {(x["seq"], x["type"], x["session"]) for x in lines} == {(0, DATED_TYPES[name], "hex:00000000000000000000")}
    assert json.loads(err)["unsequenced_packets"] == packets


@needs_captures
def test_original_captures() -> None:
    for name, (seq, mtype) in ORIGINAL.items():
        rc, out, _ = run("pcap", "gap-check", "--json", str(ITCH_ORIGINAL / f"{name}.pcap"))
        [s] = json.loads(out)["sessions"]
        assert rc == 0 and (s["session"], s["first_seq"], s["next_seq"], s["messages"]) == ("000010059B", seq, seq + 1, 1)
        assert s["lines"][0]["group"] == "233.54.12.111:26477" and s["arbitration"] == {}
        rc, out, _ = run("feed", "dump", "--pcap", str(ITCH_ORIGINAL / f"{name}.pcap"))
        assert rc == 0 and out.split()[1:4] == ["000010059B", str(seq), mtype]
    rc, out, _ = run("pcap", "gap-check", "--json", str(ITCH_ORIGINAL / "Multiple.Packets.pcap"))
    [s] = json.loads(out)["sessions"]     # two unrelated samples of one session: the hole between is a gap
    assert rc == 1 and s["gaps"] == {"count": 1, "missing": 4244620, "first": 14764497, "last": 19009116,
                                     "ranges": [[14764497, 19009116]]}
    rc, out, _ = run("pcap", "stats", "--json", str(ITCH_ORIGINAL / "Multiple.Packets.pcap"))
    r = json.loads(out)
    assert r["types"] == {"000010059B": {"A": 36, "D": 1, "F": 2}}
    assert [g["size"]["max"] for g in r["groups"]] == [1472] and r["groups"][0]["peaks"]["100us"]["messages"] == 38


@needs_captures
def test_ouch_captures_are_dumped_as_soupbintcp_and_ouch() -> None:
    expect = {"EnterOrderMessage": ("unsequenced_data", "O", "symbol=CVLT price=630200"),
              "OrderAcceptedMessage": ("sequenced_data", "A", "order_ref=257340661"),
              "CancelOrderMessage": ("unsequenced_data", "X", "user_ref_num=7679601 quantity=0"),
              "CanceledMessage": ("sequenced_data", "C", "reason=U"),
              "ClientHeartbeatPacket": ("client_heartbeat", None, ""),
              "ServerHeartbeatPacket": ("server_heartbeat", None, "")}
    for name, (soup, mtype, text) in expect.items():
        rc, out, err = run("feed", "dump", "--pcap", str(OUCH / f"{name}.pcap"))
        [line] = out.splitlines()
        words = line.split()
        assert rc == 0 and words[2] == soup and text in line, line
        if mtype:
            assert words[3] == mtype
        assert json.loads(err)["soupbintcp"] == {"packets": 1, "segments": 1, "missing_bytes": 0, "framing_errors": 0}
        rc, out, _ = run("pcap", "gap-check", "--json", str(OUCH / f"{name}.pcap"))
        assert rc == 0 and json.loads(out)["other"]["tcp_segments"] == 1
    rc, out, _ = run("feed", "dump", "--pcap", str(OUCH / "EnterOrderMessage.pcap"), "--human")
    assert "price=63.0200" in out and out.startswith("2023-05-11T13:30:00.011074000Z ")


@needs_captures
def test_human_readable_prices_and_times() -> None:
    rc, out, _ = run("feed", "dump", "--pcap", str(ITCH_DATED / "AddOrderNoMPID.pcap"), "--human")
    first = out.splitlines()[0]
    assert first.startswith("2023-08-22T13:30:00.000059094Z hex:00000000000000000000 0 A ")
    assert "timestamp=09:29:59.999894278" in first and "price=87.3900" in first and "stock=IVOO" in first


def test_raw_dump_shows_both_lines_without_arbitration(feed: dict[str, Any]) -> None:
    rc, out, _ = run("feed", "dump", "--pcap", str(feed["path"]), "--raw", "--channel", "l2", "--format", "jsonl")
    lines = [json.loads(x) for x in out.splitlines()]
    per_group = collections.Counter(x["group"] for x in lines)
    n = sum(header(d)[1] for d in feed["data"][L2])
    assert rc == 0 and per_group == {"239.192.1.32:30012": n, "239.193.1.32:30012": n}
    rc, out, _ = run("feed", "dump", "--pcap", str(feed["path"]), "--channel", "l2", "--format", "jsonl")
    assert [json.loads(x)["seq"] for x in out.splitlines()] == list(range(1, n + 1))


# --------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [("feed", "dump", "--pcap"), ("pcap", "gap-check"), ("pcap", "stats"),
                                     ("pcap", "latency"), ("pcap", "book"), ("bench", "pcap")])
def test_every_bad_file_is_one_line_and_exit_2(command: tuple[str, ...], tmp_path: Path, feed: dict[str, Any]) -> None:
    good = Path(feed["path"]).read_bytes()
    cases = {"missing": None, "empty": b"", "text": b"hello, this is not a capture\n", "short": good[:10],
             "cut": good[:len(good) - 7], "ng-cut": b"\x0a\x0d\x0d\x0a\x1c\0\0\0\x4d\x3c\x2b\x1a" + b"\0" * 8,
             "directory": "dir"}
    for name, content in cases.items():
        path = tmp_path / name
        if content == "dir":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)   # type: ignore[arg-type]
        rc, _, err = run(*command, str(path))
        assert rc == 2 and err.count("\n") == 1 and str(path) in err, (name, err)
        assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# The parts
# --------------------------------------------------------------------------------------------

def test_seq_tracker_holes() -> None:
    t = SeqTracker()
    for seq, count in ((5, 2), (7, 1), (12, 3), (9, 1), (7, 1), (3, 1), (10, 2), (20, 0)):
        t.add(seq, count)
    # heard: 3 and 5-14 but 8; the heartbeat names 20 as next: 15-19 never came
    assert (t.first, t.high) == (3, 20)
    assert t.holes == [[4, 5], [8, 9], [15, 20]]
    assert (t.duplicates, t.out_of_order, t.messages) == (1, 3, 10)
    assert t.gap_report()["missing"] == 7


def test_percentiles_and_windows() -> None:
    assert percentiles(list(range(1, 101))) == {"min": 1, "p50": 50, "p90": 90, "p99": 99, "p999": 100, "max": 100}
    assert percentiles([]) == {}
    assert max_in_window([0, 5, 10, 100], [1, 2, 3, 4], 11) == (6, 0)
    assert max_in_window([0, 5, 10, 100], [1, 2, 3, 4], 10) == (5, 5)


# --------------------------------------------------------------------------------------------
# Fixed source ports of the A and B senders
# --------------------------------------------------------------------------------------------

def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_a_and_b_senders_use_the_configured_source_ports_across_restarts() -> None:
    groups = random_groups()
    ports = (free_udp_port(), free_udp_port())
    assert ports[0] != ports[1]
    receivers = {(ch, leg): multicast_receiver(groups[ch][leg], "127.0.0.1", blocking=True)
                 for ch in (L3, L2) for leg in (A, B)}
    try:
        for _ in range(2):                     # a restart binds the same ports again
            config = FeedConfig(channels=(L3, L2), groups=groups, source_port_a=ports[0], source_port_b=ports[1])
            transport = transport_for(config)
            try:
                for ch in (L3, L2):
                    transport.channel(ch, groups[ch]).send_packets([b"datagram of " + ch.encode()], 0)
                for (ch, leg), sock in receivers.items():
                    sock.settimeout(10)
                    data, (src_ip, src_port) = sock.recvfrom(2048)
                    assert data == b"datagram of " + ch.encode() and (src_ip, src_port) == ("127.0.0.1", ports[leg])
            finally:
                transport.close()
    finally:
        for sock in receivers.values():
            sock.close()


def test_source_ports_in_the_config_reach_the_feed() -> None:
    from appliance import config as C
    from appliance.daemon import feed_config
    c = C.default()
    assert (c.market_data.source_port_a, c.market_data.source_port_b) == (0, 0)
    doc = (REPO / "docs" / "config.md").read_text()
    example = doc.split("## A full example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    c = C.loads(example)
    assert (c.market_data.source_port_a, c.market_data.source_port_b) == (29101, 29102)
    fc = feed_config(c, c.partitions[0])
    assert (fc.source_port_a, fc.source_port_b) == (29101, 29102)
    with pytest.raises(C.ConfigError, match="source_port_b"):
        C.loads(example.replace("source_port_b = 29102", "source_port_b = 29101"))
    with pytest.raises(C.ConfigError, match="source_port_a"):
        C.loads(example.replace("source_port_a = 29101", "source_port_a = 70000"))


# --------------------------------------------------------------------------------------------
# latency and book
# --------------------------------------------------------------------------------------------

def test_latency_per_line_from_the_capture_and_message_times(feed: dict[str, Any], tmp_path: Path) -> None:
    png = tmp_path / "latency.png"
    rc, out, err = run("pcap", "latency", "--json", "--plot", str(png), str(feed["path"]))
    assert rc == 0 and not err
    r = json.loads(out)
    wire: dict[str, list[int]] = collections.defaultdict(list)
    arrivals: dict[str, list[int]] = collections.defaultdict(list)
    for t, _, ch, leg, d in feed["events"]:
        g = GROUPS[ch][leg]
        arrivals[f"{g[0]}:{g[1]}"].append(t)
        for m in parse_packet(d).messages:
            wire[f"{g[0]}:{g[1]}"].append(t - MIDNIGHT - int.from_bytes(m[5:11], "big"))
    assert set(r["midnight_ns"].values()) == {MIDNIGHT}
    assert r["wire_minus_timestamp_ns"] == {g: {"messages": len(v), **percentiles(v)} for g, v in sorted(wire.items())}
    gaps = {g: [b - a for a, b in zip(v, v[1:])] for g, v in arrivals.items()}
    assert r["inter_arrival_ns"] == {g: {"gaps": len(v), **percentiles(v)} for g, v in sorted(gaps.items())}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["order_entry_to_market_data_ns"] == {"orders_entered": 0, "matched": 0}


def test_order_entry_to_first_market_data_message(tmp_path: Path) -> None:
    """Two orders entered over OUCH: one rests (its Add Order carries the accepted order ref), one
    executes at once (its Order Executed and the ITCH execution share the match number)."""
    path = tmp_path / "ouch_itch.pcap"
    ms = 1_000_000
    t0 = MIDNIGHT + 10 * 3600 * 10**9
    enter = ouch_layout.EnterOrder(0, b"B", 100, b"ALPH", 1_500_000, b"0", b"Y", b"A", b"N", b"N", b"C1", 0)
    accepted = ouch_layout.OrderAccepted(0, 0, b"B", 100, b"ALPH", 1_500_000, b"0", b"Y", 0, b"A", b"N", b"N",
                                         b"L", b"C1", 0)
    executed = ouch_layout.OrderExecuted(0, 2, 100, 1_500_000, b"R", 777, 0)
    builder = PacketBuilder(Session(b"SESSION001"))
    with PcapWriter.open(path) as w:
        tcp = TcpStreamWriter(w, ("10.0.0.2", 50000), ("10.0.0.1", 15001))
        tcp.handshake(t0)
        for urn, at in ((1, t0 + ms), (2, t0 + 2 * ms)):
            tcp.send(at, True, soupbintcp.encode_unsequenced_data(
                ouch_layout.encode(ouch_layout.ENTER_ORDER, enter._replace(user_ref_num=urn))))
        add = itch.encode_add_order(1, 0, 10 * 3600 * 10**9 + ms + 30_000, 4242, b"B", 100, b"ALPH    ", 1_500_000)
        execd = itch.encode_order_executed(1, 0, 10 * 3600 * 10**9 + 2 * ms + 50_000, 9, 100, 777)
        for at, msg in ((t0 + ms + 40_000, add), (t0 + 2 * ms + 90_000, execd)):
            builder.add(msg)
            for d in builder.flush():
                w.write_udp(at, "10.0.0.1", 29101, "239.192.1.31", 30011, d)
        tcp.send(t0 + ms + 60_000, False, soupbintcp.encode_sequenced_data(
            ouch_layout.encode(ouch_layout.ORDER_ACCEPTED, accepted._replace(user_ref_num=1, order_ref=4242))))
        tcp.send(t0 + 2 * ms + 70_000, False, soupbintcp.encode_sequenced_data(
            ouch_layout.encode(ouch_layout.ORDER_EXECUTED, executed)))
    rc, out, _ = run("pcap", "latency", "--json", str(path))
    r = json.loads(out)
    assert rc == 0 and r["order_entry_to_market_data_ns"] == {"orders_entered": 2, "matched": 2,
                                                              **percentiles([40_000, 90_000])}
    assert r["wire_minus_timestamp_ns"]["239.192.1.31:30011"] == {"messages": 2, **percentiles([10_000, 40_000])}
    rc, out, _ = run("feed", "dump", "--pcap", str(path))
    assert rc == 0 and sum(" O user_ref_num=" in x for x in out.splitlines()) == 2


def test_book_at_the_end_equals_the_engine(feed: dict[str, Any]) -> None:
    books = book(str(feed["clean"]))
    by_kind: dict[type, Any] = {type(b): b for b in books.values()}
    assert summary_hash(by_kind[L3Book].summary()) == summary_hash(engine_l3_summary(feed["engine"]))
    assert summary_hash(by_kind[L2Book].summary()) == summary_hash(engine_l2_summary(feed["engine"], 10))
    rc, out, _ = run("pcap", "book", "--json", "--levels", "3", str(feed["clean"]))
    r = json.loads(out)
    l3 = next(v for v in r.values() if v["kind"] == "L3")
    first = l3["instruments"][0]
    assert first["bids"] == [list(x) for x in by_kind[L3Book].depth(first["locate"], 0, 3)]
    assert all(len(i["bids"]) <= 3 and len(i["asks"]) <= 3 for i in l3["instruments"])
    assert not any(i["stale"] for v in r.values() for i in v["instruments"])
    rc, text, _ = run("pcap", "book", "--levels", "3", str(feed["clean"]))
    assert rc == 0 and "L3 book, session" in text and "L2 book, session" in text and " | " in text
    rc, out, _ = run("pcap", "book", "--json", str(feed["path"]))     # datagram DROP_BOTH lost on A and B
    l3 = next(v for v in json.loads(out).values() if v["kind"] == "L3")
    assert rc == 0 and l3["instruments"] and all(i["stale"] for i in l3["instruments"])


def test_book_at_a_sequence_number_is_the_first_n_messages(feed: dict[str, Any]) -> None:
    messages = [m for d in feed["sent"][L3] for m in parse_packet(d).messages if parse_packet(d).message_count != 0xFFFF]
    n = len(messages) // 2
    reference = L3Book()
    for m in messages[:n]:
        reference.apply(m)
    books = book(str(feed["clean"]), seq=n)
    l3 = next(b for b in books.values() if isinstance(b, L3Book))
    assert l3.messages == n and summary_hash(l3.summary()) == summary_hash(reference.summary())
    stamp = int.from_bytes(messages[n - 1][5:11], "big")
    l2 = next(b for b in books.values() if isinstance(b, L2Book))
    l2_msgs = [m for d in feed["sent"][L2] for m in parse_packet(d).messages
               if parse_packet(d).message_count != 0xFFFF]
    assert l2.messages == sum(1 for _ in itertools.takewhile(lambda m: int.from_bytes(m[5:11], "big") <= stamp,
                                                             l2_msgs))
    rc, _, err = run("pcap", "book", "--seq", str(10**9), str(feed["clean"]))
    assert rc == 2 and "no L3 message with sequence number" in err


def test_bench_pcap_runs_and_ends_with_json(feed: dict[str, Any]) -> None:
    proc = subprocess.run([sys.executable, "-m", "tools", "bench", "pcap", str(feed["path"]), "--scapy-limit", "50",
                           "--with-lua"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    copies = sum(header(d)[1] for _, _, _, _, d in feed["events"] if header(d)[1] != 0xFFFF)
    assert r["messages"] == copies and r["packets"] == len(feed["frames"]) - 1     # not the ARP frame
    assert r["gap_check"]["gap"] is True and r["stats"]["unique_messages"] == sum(
        sum(t.values()) for t in expected_types(feed).values())
    for name in ("read", "gap_check", "stats"):
        assert r[name]["messages_per_s"] > 0
    if importlib.util.find_spec("scapy") is not None:
        assert r["scapy"]["packets"] == 50 and r["scapy"]["messages_per_s"] > 0
    if TSHARK:
        assert r["tshark_mold"]["messages_per_s"] > 0 and r["tshark_lua"]["messages_per_s"] > 0


# --------------------------------------------------------------------------------------------
# A live capture of the appliance's senders, as an engineer takes it (dumpcap -i any)
# --------------------------------------------------------------------------------------------

DUMPCAP = shutil.which("dumpcap")


def start_dumpcap(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([DUMPCAP or "dumpcap", "-q", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def captured(path: Path) -> list[pcap.Packet]:
    """The packets a running capture has written so far (a record still being written is left)."""
    out: list[pcap.Packet] = []
    try:
        with open(path, "rb") as f:
            for p in pcap.capture_reader(f):
                out.append(p)
    except (OSError, ValueError):
        pass
    return out


def probe_until_seen(paths: list[Path], group: tuple[str, int], payload: bytes, timeout_s: float = 30) -> None:
    """Send ``payload`` to ``group`` every 100 ms until every capture holds it (bounded)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s.sendto(payload, group)
            time.sleep(0.1)
            if all(any(p.payload == payload for p in captured(path)) for path in paths):
                return
        raise AssertionError(f"the captures never saw {payload!r}")
    finally:
        s.close()


@pytest.mark.skipif(DUMPCAP is None or os.geteuid() != 0, reason="needs dumpcap and root")
def test_live_capture_on_any_as_sll_and_sll2_gives_the_senders_exact_report(tmp_path: Path) -> None:
    """The three channels sent for real on loopback from fixed source ports, captured at once by
    two dumpcaps on the 'any' device: Linux cooked v2 in pcapng and v1 in pcap. Both give every
    datagram on its A and B line from its port, no gap, the same messages. Probe datagrams to a
    fourth port mark when both captures run and when they have everything."""
    from appliance.matching.engine import Engine
    from feeds.publisher import Publisher
    from test_publisher import FIRM_STP, MIDNIGHT as MID, instruments, iter_batches
    groups = random_groups()
    src = (free_udp_port(), free_udp_port())
    probe = (groups[L1].a[0], groups[L1].a[1] + 1)
    config = FeedConfig(groups=groups, source_port_a=src[0], source_port_b=src[1], max_payload=400)
    ins = instruments()
    _, memory, _ = publish_all(random_specs(11, 300), batch=10, config=config, ins=ins)   # what will be sent
    expected = {ch: memory.of(ch, A) for ch in CHANNELS}
    total = 2 * sum(len(v) for v in expected.values())
    ports = " or ".join(f"dst port {port}" for port in (*(groups[ch].a[1] for ch in CHANNELS), probe[1]))
    sll2, sll = tmp_path / "any.pcapng", tmp_path / "any.pcap"
    caps = [start_dumpcap(["-i", "any", "-y", "LINUX_SLL2", "-f", f"udp and ({ports})", "-w", str(sll2)]),
            start_dumpcap(["-i", "any", "-y", "LINUX_SLL", "-P", "-f", f"udp and ({ports})", "-w", str(sll)])]
    try:
        probe_until_seen([sll2, sll], probe, b"capture started")
        transport = transport_for(config)
        pub = Publisher(config, ins, MID, transport)
        try:
            pub.start(T0 - 10**9)
            for res in iter_batches(Engine(ins, FIRM_STP), random_specs(11, 300), 10):
                pub.publish(res)
        finally:
            pub.close()
            transport.close()
        probe_until_seen([sll2, sll], probe, b"capture complete")
    finally:
        for proc in caps:
            proc.send_signal(signal.SIGINT)
        for proc in caps:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    with open(sll2, "rb") as f:
        assert f.read(4) == b"\x0a\x0d\x0d\x0a"
        f.seek(0)
        assert {lt for _, lt, _ in pcap.capture_reader(f).frames()} == {pcap.LINKTYPE_LINUX_SLL2}
    with open(sll, "rb") as f:
        assert {lt for _, lt, _ in pcap.capture_reader(f).frames()} == {pcap.LINKTYPE_LINUX_SLL}
    reports = []
    for path in (sll2, sll):
        got = [p for p in pcap.read_pcap(path) if p.dst_port != probe[1]]
        assert len(got) == total
        assert {(p.src_port, p.dst_ip) for p in got} == {(src[leg], groups[ch][leg][0]) for ch in CHANNELS
                                                          for leg in (A, B)}
        report = json.loads(run("pcap", "gap-check", "--json", str(path))[1])
        for ch in CHANNELS:
            s = _session(report, ch)
            last = expected[ch][-1]
            assert s["gaps"]["count"] == 0 and s["late"] == 0
            assert s["next_seq"] == header(last)[0] + header(last)[1]
            assert [(ln["line"], ln["group"], ln["packets"], ln["gaps"]["count"], ln["duplicates"])
                    for ln in s["lines"]] == [("A", f"{groups[ch].a[0]}:{groups[ch].a[1]}", len(expected[ch]), 0, 0),
                                              ("B", f"{groups[ch].b[0]}:{groups[ch].b[1]}", len(expected[ch]), 0, 0)]
            assert s["arbitration"]["pairs"] == len(expected[ch])
            s.pop("arbitration")          # capture times differ between the two captures
        assert report["other"]["udp"] >= 2        # the probes
        report.pop("other")
        reports.append(report)
        dump = run("feed", "dump", "--pcap", str(path), "--format", "jsonl")[1].splitlines()
        messages = [m for ch in CHANNELS for d in expected[ch] for m in parse_packet(d).messages]
        assert len(dump) == len(messages)
    assert reports[0] == reports[1]
