"""AF_XDP transmit over a veth pair between two network namespaces this test makes and removes
(multicast never leaves them): the publisher sends a generated flow through AF_XDP in one
namespace; a kernel UDP subscriber in the other receives every datagram and builds the engine's
books; tcpdump there sees valid frames (IPv4 and UDP checksums, multicast MAC); and udp, sendmmsg
and afxdp put byte-identical datagrams on the wire."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from feeds.afxdp import AF_XDP, XdpUnavailable
from feeds.channels import CHANNELS, ChannelGroups, FeedConfig
from feeds.pcap import PcapReader, UdpFrameBuilder, internet_checksum, multicast_mac
from feeds.transport import UdpTransport, transport_for
from tools.demo import loopback_config, write_config
from tools.netns import VethPair, in_netns, unavailable

ROOT = Path(__file__).resolve().parent.parent
FLOWGEN = ROOT.parent / "shared" / "bench" / "flowgen.py"


def afxdp_refusal() -> str | None:
    why = unavailable()
    if why is not None:
        return why
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as e:
        return f"the kernel refuses AF_XDP sockets: {e}"
    return None


REFUSAL = afxdp_refusal()
if REFUSAL is not None:
    print(f"test_afxdp: skipped: {REFUSAL}", file=sys.stderr)
needs_afxdp = pytest.mark.skipif(REFUSAL is not None, reason=REFUSAL or "")


@pytest.fixture(scope="module")
def veth() -> Iterator[VethPair]:
    if REFUSAL is not None:
        pytest.skip(REFUSAL)
    with VethPair() as v:
        yield v


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("flow") / "f"
    subprocess.run([sys.executable, str(FLOWGEN), str(out), "--events", "12000", "--instruments", "4",
                    "--seed", "11", "--target", "200"], check=True, capture_output=True, timeout=120)
    return str(out) + ".bin"


GROUPS = {ch: ChannelGroups((f"239.77.{i}.1", 31000 + i), (f"239.77.{i}.2", 31000 + i))
          for i, ch in enumerate(CHANNELS)}
GROUPS_JSON = json.dumps({ch: [list(g.a), list(g.b)] for ch, g in GROUPS.items()})


def peer(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.feed_peer", *args, "--groups", GROUPS_JSON]


def run_pair(veth: VethPair, flow: str, transport: str, pcap: Path | None,
             *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A receiver (books) in b, optionally tcpdump in b, the sender in a; both JSON results."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    dump = None
    if pcap is not None:
        dump = subprocess.Popen(in_netns(veth.b, ["tcpdump", "-i", veth.if_b, "-w", str(pcap), "-U", "-n", "-B", "65536",
                                                  "--time-stamp-precision=nano", "udp"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert dump.stderr is not None
        line = dump.stderr.readline()          # "listening on ...": capture has started
        assert "listening" in line, line
    recv = subprocess.Popen(in_netns(veth.b, peer("receive", "--books", "--interface", veth.addr_b,
                                                  "--timeout", "5", "--limit-s", "120")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == "ready"
        send = subprocess.run(in_netns(veth.a, peer("send", flow, "--interface", veth.addr_a, "--transport",
                                                    transport, *extra)),
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
        assert send.returncode == 0, send.stderr
        out, err = recv.communicate(timeout=180)
        assert recv.returncode == 0, err
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
        if dump is not None:
            assert pcap is not None
            size, deadline = -1, time.monotonic() + 20     # until tcpdump has written what it saw
            while time.monotonic() < deadline and (size != pcap.stat().st_size or size <= 24):
                size = pcap.stat().st_size
                time.sleep(1.0)
            dump.terminate()
            _, report = dump.communicate(timeout=30)
            assert "\n0 packets dropped by kernel" in "\n" + report, report
    return json.loads(send.stdout.strip().splitlines()[-1]), json.loads(out.strip().splitlines()[-1])


def check_frames(pcap: Path, udp_checksums: bool = True) -> dict[tuple[str, int], list[bytes]]:
    """Every frame: multicast MAC of its group, IPv4 header and UDP checksums valid; the UDP
    payloads per destination, in order. (Kernel-sent frames on a veth leave the UDP checksum to
    the "hardware", which a veth never fills in: ``udp_checksums=False`` for those.)"""
    by_dst: dict[tuple[str, int], list[bytes]] = {}
    with open(pcap, "rb") as f:
        reader = PcapReader(f)
        for _, frame, _ in reader.records():
            ip = frame[14:34]
            dst = socket.inet_ntoa(ip[16:20])
            assert frame[:6] == multicast_mac(dst)
            assert internet_checksum(ip) == 0
            total = int.from_bytes(ip[2:4], "big")
            udp = frame[34:14 + total]
            pseudo = ip[12:20] + b"\0\x11" + len(udp).to_bytes(2, "big")
            if udp_checksums:
                assert udp[6:8] != b"\0\0" and internet_checksum(pseudo + udp) == 0
            by_dst.setdefault((dst, int.from_bytes(udp[2:4], "big")), []).append(udp[8:])
    if udp_checksums and shutil.which("tshark"):
        r = subprocess.run(["tshark", "-r", str(pcap), "-o", "ip.check_checksum:TRUE", "-o",
                            "udp.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status", "-e",
                            "udp.checksum.status", "-e", "eth.dst.ig"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        rows = [line.split("\t") for line in r.stdout.splitlines() if line]
        assert len(rows) == sum(len(v) for v in by_dst.values())
        assert all(row[:2] == ["2", "2"] or row[:2] == ["1", "1"] for row in rows), rows[:3]
        assert {row[0] for row in rows} == {"1"} and {row[1] for row in rows} == {"1"}   # 1: Good
        assert {row[2] for row in rows} <= {"1", "True"}                               # group address
    return by_dst


@needs_afxdp
def test_afxdp_feed_reaches_a_kernel_subscriber_that_builds_the_engines_books(veth: VethPair, flow: str,
                                                                              tmp_path: Path) -> None:
    pcap = tmp_path / "afxdp.pcap"
    sent, got = run_pair(veth, flow, "afxdp", pcap)
    assert sent["afxdp"]["mode"] == "copy" or sent["afxdp"]["mode"] == "zero-copy"
    assert sent["afxdp"]["dropped"] == 0 and sent["afxdp"]["tx_invalid_descs"] == 0
    assert any(n.startswith("afxdp on " + veth.if_a) for n in sent["notes"]), sent["notes"]
    by = "kernel" if sent["afxdp"]["checksum_offload"] else "python"
    assert any(f"UDP checksums by {by}" in n for n in sent["notes"]), sent["notes"]
    assert all(got["ended"].values()) and not any(got["gaps"].values()), got
    assert got["messages"] == sent["messages"]
    assert sum(sent["messages"].values()) > 10_000
    for h in ("l3_hash", "l2_hash", "l1_hash"):
        assert got[h] == sent[h], h
    frames = check_frames(pcap)
    for ch, g in GROUPS.items():
        assert len(frames[g.a]) == len(frames[g.b]) and frames[g.a] == frames[g.b]
        assert len(frames[g.a]) >= sent["datagrams"][ch]


@needs_afxdp
def test_udp_sendmmsg_and_afxdp_put_byte_identical_datagrams_on_the_wire(veth: VethPair, flow: str,
                                                                         tmp_path: Path) -> None:
    captured: dict[str, dict[tuple[str, int], list[bytes]]] = {}
    for name, kind, extra in (("udp", "udp", ()), ("sendmmsg", "sendmmsg", ()), ("afxdp", "afxdp", ()),
                              ("afxdp-python-checksums", "afxdp", ("--python-checksums",))):
        pcap = tmp_path / f"{name}.pcap"
        sent, got = run_pair(veth, flow, kind, pcap, *extra)
        assert all(got["ended"].values()) and not any(got["gaps"].values()), (name, got)
        if extra:
            assert sent["afxdp"]["checksum_offload"] is False
        captured[name] = check_frames(pcap, udp_checksums=kind == "afxdp")
        assert sorted(captured[name]) == sorted(GROUPS[ch][leg] for ch in CHANNELS for leg in (0, 1))
    assert captured["udp"] == captured["sendmmsg"] == captured["afxdp"] == captured["afxdp-python-checksums"]


def test_a_host_without_afxdp_says_so_in_one_line_and_falls_back_or_refuses() -> None:
    groups = {ch: ChannelGroups((f"239.78.{i}.1", 32000 + i), (f"239.78.{i}.2", 32000 + i))
              for i, ch in enumerate(CHANNELS)}
    # TTL 0 on loopback: raw frames would not be kept on the host by TTL, so AF_XDP is refused
    config = FeedConfig(groups=groups, interface="127.0.0.1", ttl=0, transports={"l3": "afxdp"})
    t = transport_for(config)
    assert isinstance(t, UdpTransport)
    try:
        for ch in CHANNELS:
            t.channel(ch, groups[ch])
        assert len(t.notes) == 1 and "\n" not in t.notes[0]
        assert t.notes[0].startswith("afxdp unavailable (ttl 0") and "channel l3 falls back to kernel udp" in t.notes[0]
        assert t.xsk is None
    finally:
        t.close()
    required = FeedConfig(groups=groups, interface="127.0.0.1", ttl=0, transports={"l3": "afxdp"},
                          afxdp_required=True)
    t = transport_for(required)
    try:
        with pytest.raises(XdpUnavailable, match="AF_XDP required for channel l3 but unavailable: ttl 0"):
            t.channel("l3", groups["l3"])
    finally:
        t.close()


@needs_afxdp
def test_the_transport_benchmark_runs_over_a_veth_pair_and_ends_with_one_json_object(flow: str) -> None:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "feed", flow, "--limit", "4000",
                        "--transport", "udp,sendmmsg,afxdp"], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "feed_transport" and set(out["transports"]) == {"udp", "sendmmsg", "afxdp"}
    for kind, run in out["transports"].items():
        assert run["sent_datagrams_per_group"] > 50 and run["send_errors"] == 0, (kind, run)
        assert run["received_datagrams"] + run["lost_datagrams"] == 2 * run["sent_datagrams_per_group"]
        assert run["sent_datagrams_per_sec"] > 0 and run["send_cpu_ns_per_datagram"] > 0
        for side in ("send_context_switches", "receive_context_switches"):   # (voluntary, involuntary)
            assert len(run[side]) == 2 and all(isinstance(n, int) and n >= 0 for n in run[side]), (kind, run)
    assert out["transports"]["afxdp"]["afxdp"]["mode"] in ("copy", "zero-copy")
    assert set(out["speedup_vs_udp"]) == set(out["speedup_vs_udp_by_cpu"]) == {"udp", "sendmmsg", "afxdp"}


def daemon_config(tmp_path: Path, required: bool) -> str:
    c = loopback_config(str(tmp_path), rng=random.Random())
    c = dataclasses.replace(c, market_data=dataclasses.replace(c.market_data, transport="afxdp",
                                                               afxdp_required=required))
    return write_config(c, str(tmp_path / "config.toml"))


def test_a_partition_says_in_one_line_that_afxdp_is_unavailable_and_runs_on_kernel_udp(tmp_path: Path) -> None:
    path = daemon_config(tmp_path, required=False)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.daemon", "--config", path, "--partition", "p0",
                             "--state-dir", str(tmp_path / "state"), "--no-realtime"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "ready:" in line:
                break
        assert any("ready:" in x for x in lines), "".join(lines)
        afxdp = [x for x in lines if "afxdp" in x]
        assert len(afxdp) == 1, lines
        assert "feed: afxdp unavailable (ttl 0" in afxdp[0] and "channel l3, l2, l1 falls back to kernel udp" in afxdp[0]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_partition_that_requires_afxdp_refuses_to_start_where_it_is_unavailable(tmp_path: Path) -> None:
    path = daemon_config(tmp_path, required=True)
    r = subprocess.run([sys.executable, "-m", "appliance.daemon", "--config", path, "--partition", "p0",
                        "--state-dir", str(tmp_path / "state"), "--no-realtime"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 78, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "AF_XDP required for channel l3 but unavailable: ttl 0" in last and "Traceback" not in r.stderr


def test_a_partial_frame_finished_as_the_kernel_does_is_the_full_frame() -> None:
    """CHECKSUM_PARTIAL: the field holds the pseudo-header sum; summing the UDP segment from
    csum_start and storing the complement (0 sent as 0xFFFF) gives the software checksum."""
    rnd = random.Random(3)
    flow = UdpFrameBuilder("10.1.2.1", 29999, "239.77.0.1", 31000, ttl=1, src_mac=b"\x02\x00\x00\x00\x00\x07")
    for n in list(range(0, 40)) + [rnd.randrange(40, 1473) for _ in range(300)]:
        payload = rnd.randbytes(n) if n % 5 else b"\xff" * n
        full, partial = flow.frame(payload, n), flow.frame(payload, n, partial=True)
        assert full[:40] == partial[:40] and full[42:] == partial[42:]
        folded = internet_checksum(partial[34:]) ^ 0xFFFF          # the one's-complement sum
        finished = (0xFFFF - folded) or 0xFFFF
        assert finished == int.from_bytes(full[40:42], "big"), n


@needs_afxdp
def test_a_partition_in_a_namespace_publishes_through_afxdp_to_a_subscriber_in_the_other(
        veth: VethPair, tmp_path: Path) -> None:
    c = loopback_config(str(tmp_path), rng=random.Random())
    c = dataclasses.replace(c, market_data=dataclasses.replace(
        c.market_data, interface=veth.addr_a, ttl=1, transport="afxdp", afxdp_required=True))
    path = write_config(c, str(tmp_path / "config.toml"))
    feeds = c.partitions[0].feeds
    groups = json.dumps({ch: [[f.a_group, f.a_port], [f.b_group, f.b_port]] for ch, f in feeds.items()})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    recv = subprocess.Popen(in_netns(veth.b, [sys.executable, "-m", "tools.feed_peer", "receive", "--books",
                                              "--groups", groups, "--interface", veth.addr_b, "--timeout", "20",
                                              "--limit-s", "120"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    state = tmp_path / "state"
    daemon = subprocess.Popen(in_netns(veth.a, [sys.executable, "-m", "appliance.daemon", "--config", path,
                                                "--partition", "p0", "--state-dir", str(state), "--no-realtime"]),
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        assert daemon.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = daemon.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "ready:" in line:
                break
        assert any("ready:" in x for x in lines), "".join(lines)
        afxdp = [x for x in lines if "afxdp" in x]
        assert len(afxdp) == 1 and f"feed: afxdp on {veth.if_a} queue 0" in afxdp[0], lines
        assert "channel l3, l2, l1" in afxdp[0]
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
        assert daemon.returncode == 0
        out, err = recv.communicate(timeout=90)
        assert recv.returncode == 0, err
    finally:
        for p in (daemon, recv):
            if p.poll() is None:
                p.kill()
                p.wait()
    got = json.loads(out.strip().splitlines()[-1])
    stats = json.loads((state / "run" / "p0.stats.json").read_text())
    assert all(got["ended"].values()) and not any(got["gaps"].values()), got
    assert got["messages"]["l3"] > 3                  # start of session, the directory, end of session
    for h in ("l3_hash", "l2_hash", "l1_hash"):
        assert got[h] == stats[h], h
