"""The standard flow through engine, publisher and the pcap transport; the capture read back by stock
tools (tshark's MoldUDP64 dissector, the itchfeed ITCH 5.0 decoder) and by our subscriber; feed dump
and the feed benchmarks on it."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.catalogue import CancelOrder, Command, Event, NewOrder, ReplaceOrder
from appliance.matching.engine import Engine
from appliance.model import BUY, SELL
from feeds import itch, pcap
from feeds.books import engine_l1_summary, engine_l2_summary, engine_l3_summary
from feeds.channels import CHANNELS, L1, L3, ChannelGroups, FeedConfig
from feeds.moldudp64 import parse_packet
from feeds.publisher import Publisher
from feeds.subscriber import FeedSubscriber
from feeds.transport import A, B, PcapTransport, UdpTransport
from tools import cli
from tools.flowgen import write_flow
from tools.flows import FLOW_FIRM_STP, flow_instrument_count, flow_instruments, read_flow

from test_feed_e2e import random_groups
from test_publisher import MIDNIGHT, T0

REPO = Path(__file__).resolve().parents[1]
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
GROUPS = {ch: ChannelGroups((f"239.192.1.{31 + i}", 30011 + i), (f"239.193.1.{31 + i}", 30011 + i))
          for i, ch in enumerate(CHANNELS)}
PORTS = {g.a[1]: ch for ch, g in GROUPS.items()}
EVENTS = 20_000


def extras(first_id: int) -> list[Command]:
    """After the flow: attributed orders (F), replaces in place (X) and to new prices (U), a
    crossing replace (D, E, A), cancels (D): the message types the flow alone does not make."""
    i = first_id
    out: list[Command] = []
    for k in range(20):
        out.append(NewOrder(i + k, 1, BUY if k % 2 else SELL, 300, 9_000 + k if k % 2 else 11_000 + k,
                            firm=1, mpid="MWXX" if k % 3 == 0 else ""))
    for k in range(0, 20, 4):
        out.append(ReplaceOrder(i + k, 100, 11_000 + k, firm=1))          # down in place
        out.append(ReplaceOrder(i + k + 1, 300, 9_000 + k - 5, firm=1))   # new price: U
        out.append(CancelOrder(i + k + 2, firm=1))
    out.append(ReplaceOrder(i + 3, 5_000, 10_500, firm=1))   # a buy crossing the asks: D, E..., A
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The standard flow (flowgen's f1 settings, fewer events) published into a pcap."""
    tmp = tmp_path_factory.mktemp("feedpcap")
    flow = tmp / "std"
    write_flow(str(flow), EVENTS, seed=42, target=5000)
    cmds, meta = read_flow(flow.with_suffix(".bin"))
    ins = flow_instruments(flow_instrument_count(cmds, meta))
    cmds += extras(max(c.order_id for c in cmds if isinstance(c, NewOrder)) + 1)
    engine = Engine(ins, FLOW_FIRM_STP)
    config = FeedConfig(groups=GROUPS, depth_levels=5)
    path = tmp / "feed.pcap"
    transport = PcapTransport(path, ttl=config.ttl, src_port=config.source_port)
    pub = Publisher(config, ins, MIDNIGHT, transport)
    pub.start(T0)
    seq = 1
    for start in range(0, len(cmds), 256):
        res = []
        ts = T0 + start * 1000
        for cmd in cmds[start:start + 256]:
            out: list[Event] = []
            engine.apply(cmd, out)
            res.append((seq, ts, cmd, out))
            seq += 1
        pub.publish(res)
    end = T0 + 10**12
    pub.poll(end - 10**9)
    pub.end_session(end)
    pub.poll(end + 10**9)
    transport.close()
    return {"path": path, "engine": engine, "config": config, "pub": pub, "flow": flow.with_suffix(".bin"),
            "meta": meta, "counts": {ch: pub.channels[ch].next_seq - 1 for ch in CHANNELS}}


def l3_messages(path: Path) -> list[bytes]:
    out: list[bytes] = []
    for p in pcap.read_pcap(path):
        if PORTS.get(p.dst_port) == L3 and p.dst_ip == GROUPS[L3].a[0]:
            out.extend(parse_packet(p.payload).messages)
    return out


def test_the_flow_matched_as_flowgen_says(run: dict[str, Any]) -> None:
    engine, meta = run["engine"], run["meta"]
    assert meta["events"] == EVENTS
    # the extras trade too, so only the flow's own totals are a lower bound here
    assert engine.next_match - 1 >= meta["fills"]


def tshark(path: Path, *args: str) -> str:
    assert TSHARK is not None
    cmd = [TSHARK, "-n", "-r", str(path), "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    for port in PORTS:
        cmd += ["-d", f"udp.port=={port},moldudp64"]
    result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


@needs_tshark
def test_tshark_reads_the_capture_as_moldudp64_without_expert_errors(run: dict[str, Any]) -> None:
    path = run["path"]
    assert tshark(path, "-Y", "_ws.expert.severity >= error") == ""
    rows = [line.split("\t") for line in tshark(path, "-T", "fields", "-e", "udp.dstport", "-e",
                                                 "moldudp64.session", "-e", "moldudp64.sequence",
                                                 "-e", "moldudp64.count").splitlines()]
    ours = [(p.dst_port, parse_packet(p.payload)) for p in pcap.read_pcap(path)]
    assert len(rows) == len(ours)
    assert [r for r in rows] == [[str(port), m.session.decode(), str(m.sequence), str(m.message_count)]
                                 for port, m in ours]
    for ch in CHANNELS:
        data = [int(r[3]) for r in rows if PORTS[int(r[0])] == ch and r[3] not in ("0", "65535")]
        assert sum(data) == 2 * run["counts"][ch]       # A and B
    assert any(r[3] == "65535" for r in rows) and any(r[3] == "0" for r in rows)


def test_itchfeed_decodes_every_l3_message(run: dict[str, Any], tmp_path: Path) -> None:
    from itch.parser import MessageParser

    msgs = l3_messages(run["path"])
    assert len(msgs) == run["counts"][L3]
    binary = tmp_path / "l3.itch"
    binary.write_bytes(b"".join(len(m).to_bytes(2, "big") + m for m in msgs))
    with open(binary, "rb") as f:
        decoded = list(MessageParser().parse_file(f))
    assert len(decoded) == len(msgs)
    for raw, theirs in zip(msgs, decoded):
        assert theirs.message_type == raw[:1]
        assert theirs.to_bytes() == raw
        ours = itch.decode(raw)
        assert theirs.stock_locate == ours.stock_locate and theirs.timestamp == ours.timestamp
    types = {m[:1] for m in msgs}
    assert {b"S", b"R", b"H", b"A", b"F", b"E", b"X", b"D", b"U"} <= types


def test_replaying_the_capture_into_the_subscriber_gives_the_engines_books(run: dict[str, Any]) -> None:
    engine, config = run["engine"], run["config"]
    sub = FeedSubscriber(config)
    for p in pcap.read_pcap(run["path"]):
        ch = PORTS[p.dst_port]
        sub.receive(ch, p.ts_ns, p.payload, A if p.dst_ip == GROUPS[ch].a[0] else B)
    assert sub.l3.summary() == engine_l3_summary(engine)
    assert sub.l2.summary() == engine_l2_summary(engine, config.depth_levels)
    assert sub.l1.summary() == engine_l1_summary(engine)
    assert sum(len(x[3]) + len(x[4]) for x in sub.l3.summary()) == engine.resting_count()
    for ch, r in sub.receivers.items():
        assert r.gaps == 0 and r.ended and r.messages == run["counts"][ch]


def _dump(*argv: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["feed", "dump", *argv]) == 0
    return out.getvalue(), err.getvalue()


def test_feed_dump_prints_one_line_per_message(run: dict[str, Any]) -> None:
    out, err = _dump("--pcap", str(run["path"]), "--channel", "l3", "--format", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == run["counts"][L3]
    assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1))
    assert lines[0]["type"] == "S" and lines[0]["event_code"] == "O" and lines[0]["session"].endswith("30")
    adds = [x for x in lines if x["type"] == "A"]
    assert adds[0]["stock"] == "F0000" and {"order_ref", "side", "shares", "price", "ts_ns", "timestamp"} <= set(adds[0])
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["messages"] == len(lines)
    text, _ = _dump("--pcap", str(run["path"]), "--channel", "l1")
    first = text.splitlines()[0].split()
    assert first[1].endswith("10") and first[2] == "1" and first[3] == "S"
    assert any(" q " in line and "bid_price=" in line for line in text.splitlines())
    assert len(text.splitlines()) == run["counts"][L1]


def test_feed_dump_from_a_live_group() -> None:
    groups = random_groups()
    group = groups[L3].a
    proc = subprocess.Popen([sys.executable, "-m", "tools", "feed", "dump", "--group", f"{group[0]}:{group[1]}",
                             "--iface", "127.0.0.1", "--count", "9", "--seconds", "20", "--format", "jsonl"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ins = flow_instruments(1)
    config = FeedConfig(channels=(L3,), groups=groups)
    transport = UdpTransport("127.0.0.1", 0)
    engine = Engine(ins, FLOW_FIRM_STP)
    pub = Publisher(config, ins, MIDNIGHT, transport)
    try:
        pub.start(T0)
        deadline = time.monotonic() + 15
        k = 0
        while proc.poll() is None and time.monotonic() < deadline:
            res = []
            for _ in range(3):      # until the dump has joined and printed 9 messages
                k += 1
                out: list[Event] = []
                cmd = NewOrder(k, 1, BUY, 100, 9_000 - k % 50, firm=1)
                engine.apply(cmd, out)
                res.append((k, T0 + k, cmd, out))
            pub.publish(res)
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pub.close()
        transport.close()
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == 9, stderr
    assert all(x["type"] == "A" and x["session"] == pub.channels[L3].session.decode() for x in lines)
    seqs = [x["seq"] for x in lines]
    assert seqs == list(range(seqs[0], seqs[0] + 9))


def test_the_feed_and_subscriber_benchmarks_run_and_end_with_json(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "bench.pcap"
    proc = subprocess.run([sys.executable, "-m", "tools", "bench", "feed", str(run["flow"]), "--limit", "5000",
                           "--pcap", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    feed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert feed["benchmark"] == "feed" and feed["commands"] == 5000
    assert feed["messages"] > 5000 and feed["packets"] > 0 and feed["send_errors"] == 0
    assert feed["msgs_per_sec"] > 0 and feed["msgs_per_sec_multicast_send"] > 0
    proc = subprocess.run([sys.executable, "-m", "tools", "bench", "subscriber", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=True)
    sub = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sub["benchmark"] == "subscriber" and sub["gaps"] == 0
    assert sub["messages"] == feed["messages"] + 3      # with the end-of-session System Events
    assert sub["msgs_per_sec"] > 0
