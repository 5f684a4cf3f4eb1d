"""The gap-fill servers as processes, over real sockets: bad requests and logins get a reject or a close
while other sessions go on untouched; the session cap; a client that does not read is dropped; and
tshark's SoupBinTCP dissector reads a capture of a replay and of a snapshot session cleanly."""
from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from feeds.books import L3Book, engine_l3_summary
from feeds.channels import L3
from feeds.moldudp64 import encode_rerequest, parse_packet
from feeds.pcap import PcapWriter, TcpStreamWriter
from feeds.soupbintcp import encode_debug, encode_login_request, encode_packet
from feeds.store import FeedStore
from feeds.subscriber import ChannelReceiver
from retransmit.snapshot import parse_end_of_snapshot
from retransmit.soupclient import SoupClientSession, fetch
from test_retransmit_harness import ROOT, PASSWORD, USERNAME, FlowRun, Rig, flow, rig_fixture  # noqa: F401

TSHARK = shutil.which("tshark")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from rig_fixture(tmp_path_factory, partitions=1)


@pytest.fixture(scope="module")
def published(rig: Rig, flow: bytes) -> dict[str, Any]:
    """The standard flow published once (multicast and store); the snapshot server heard it."""
    run = FlowRun(rig, rig.partition(), flow, batch=200)
    while not run.done:
        run.step()
        time.sleep(0.0005)
    run.idle()
    sessions = {ch: c.session for ch, c in run.pub.channels.items()}
    with FeedStore.open_reader(rig.store_dir(rig.config.partitions[0]), sessions[L3]) as store:
        l3 = store.read(1, store.count)
    run.close()
    return {"run": run, "sessions": sessions, "l3": l3}


def read_until_closed(sock: socket.socket, timeout_s: float = 5.0) -> tuple[bytes, str]:
    """Everything the server sends until it closes: (bytes, "eof" | "reset" | "timeout")."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "timeout"


def packet_types(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 3 <= len(data):
        out.append(data[pos + 2:pos + 3])
        pos += 2 + ((data[pos] << 8) | data[pos + 1])
    return out


def snapshot_books(address: tuple[str, int], session: bytes) -> tuple[L3Book, int]:
    r = fetch(address, USERNAME, PASSWORD, session, 0, replay_only=None)
    assert r.client.ended and r.count > 0
    msgs = r.messages()
    book = L3Book()
    receiver = ChannelReceiver(L3, [book])
    n = parse_end_of_snapshot(msgs[-1])
    receiver.load_snapshot(r.blocks[:len(r.blocks) - 23], r.count - 1, n, session)
    return book, n


def test_bad_requests_and_logins_get_a_reject_or_a_close_and_other_sessions_are_unaffected(
        rig: Rig, published: dict[str, Any]) -> None:
    a = rig.addresses
    l3 = published["sessions"][L3]
    rnd = random.Random(17)
    # two good sessions open before the storm: a live replay and a snapshot
    live = socket.create_connection(a["replay"])
    live.sendall(encode_login_request(USERNAME, PASSWORD, l3.decode(), 1))
    live_client = SoupClientSession(USERNAME, PASSWORD, l3, 1)
    live_client.start(0)
    live_client.data_to_send()

    # UDP: random bytes, wrong lengths, huge counts, unknown sessions
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    udp.bind(("127.0.0.1", 0))
    junk = [rnd.randbytes(rnd.randint(0, 100)) for _ in range(500)]
    junk += [encode_rerequest(l3, rnd.randint(1, 1 << 40), rnd.randint(1, 65534)) for _ in range(200)]
    junk += [encode_rerequest(l3, 1, 65534)] * 3 + [encode_rerequest(b"2311149999", 1, 10)] * 3
    junk += [l3 + b"\x00" * 8 + b"\xff\xff", l3 + b"\xff" * 10, b"\x00" * 20, b"x" * 1400]
    for d in junk:
        udp.sendto(d, a["rerequest"])
    # TCP: garbage, bad lengths, bad logins, to both servers
    outcomes: dict[str, int] = {}
    rejects: list[bytes] = []
    bad_logins = [encode_login_request(USERNAME, "wrong", l3.decode(), 1),
                  encode_login_request("nobody", PASSWORD, "", 1),
                  encode_login_request(USERNAME, PASSWORD, "2311149999", 1),
                  encode_login_request(USERNAME, PASSWORD, "NOTOURS", 1),
                  encode_packet(b"L", b"x" * 46), encode_packet(b"L", b"x" * 10), encode_packet(b"L", b""),
                  b"\x00\x00", b"\xff\xff" + b"x" * 100, encode_packet(b"U", b"order?"), encode_packet(b"Q"),
                  encode_debug(b"REPLAY-ONLY 99999999999999999999999") + encode_login_request(USERNAME, "no")]
    for k in range(60):
        port = a["replay"] if k % 2 else a["snapshot"]
        data = bad_logins[k % len(bad_logins)] if k < 2 * len(bad_logins) else rnd.randbytes(rnd.randint(1, 200))
        with socket.create_connection(port) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got, how = read_until_closed(s)
        outcomes[how] = outcomes.get(how, 0) + 1
        if got[2:3] == b"J":
            rejects.append(got[3:4])
    assert outcomes.get("timeout", 0) == 0, outcomes
    assert rejects.count(b"A") >= 4 and rejects.count(b"S") >= 4, rejects

    # the good sessions were not disturbed
    live.sendall(b"\x00\x01R")
    got = b""
    live.settimeout(5)
    while live_client.messages < len(published["l3"]):
        chunk = live.recv(1 << 20)
        assert chunk
        live_client.receive_data(chunk, 0)
        _, _, blocks = live_client.take_blocks()
        got += blocks
    live.close()
    assert live_client.accepted == (l3, 1)
    r = fetch(a["replay"], USERNAME, PASSWORD, l3, 1, replay_only=len(published["l3"]))
    assert r.messages() == published["l3"] and got == r.blocks
    book, n = snapshot_books(a["snapshot"], l3)
    assert n == len(published["l3"]) + 1
    assert book.summary() == engine_l3_summary(published["run"].engine)
    # drop the answers to the junk still queued, then ask once more: the answer must come
    udp.setblocking(False)
    try:
        while udp.recv(65536):
            pass
    except BlockingIOError:
        pass
    udp.sendto(encode_rerequest(l3, 10, 20), a["rerequest"])
    udp.settimeout(5)
    answered: list[bytes] = []
    while len(answered) < 20:
        p = parse_packet(udp.recv(65536))
        if p.session == l3 and p.sequence == 10 + len(answered):
            answered += p.messages
    assert answered == published["l3"][9:29]
    udp.close()
    assert rig.retransmit is not None and rig.retransmit.alive()
    assert rig.snapshot is not None and rig.snapshot.alive()


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark): no dissector check")
def test_tshark_reads_a_capture_of_a_replay_and_a_snapshot_session_without_expert_errors(
        rig: Rig, published: dict[str, Any], tmp_path: Path) -> None:
    a = rig.addresses
    l3 = published["sessions"][L3]
    replay = fetch(a["replay"], USERNAME, PASSWORD, l3, 100, replay_only=3000, transcript=True)
    snap = fetch(a["snapshot"], USERNAME, PASSWORD, l3, 0, replay_only=None, transcript=True)
    assert replay.count == 3000 and replay.client.ended and snap.client.ended
    path = tmp_path / "sessions.pcap"
    with PcapWriter.open(path) as w:
        for port, (result, client_port) in enumerate(((replay, 40001), (snap, 40002))):
            server = a["replay"] if port == 0 else a["snapshot"]
            tcp = TcpStreamWriter(w, ("127.0.0.1", client_port), ("127.0.0.1", server[1]))
            accepted = True
            for ts, from_client, data in result.transcript:
                if not from_client and accepted:
                    # the server writes Login Accepted on its own (tshark's dissector opens a new
                    # conversation at that frame and would lose a packet straddling its end)
                    assert data[2:3] == b"A"
                    tcp.send(ts, False, data[:33])
                    data = data[33:]
                    accepted = False
                if data:
                    tcp.send(ts, from_client, data)
            tcp.close(result.transcript[-1][0])
    assert TSHARK is not None
    base = [TSHARK, "-n", "-r", str(path), "-d", f"tcp.port=={a['replay'][1]},soupbintcp",
            "-d", f"tcp.port=={a['snapshot'][1]},soupbintcp"]
    errors = subprocess.run(base + ["-Y", "_ws.expert.severity >= error"], capture_output=True, text=True,
                            timeout=120, check=True).stdout
    assert errors == ""
    fields = subprocess.run(base + ["-T", "fields", "-e", "tcp.dstport", "-e", "soupbintcp.packet_type"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    types: dict[str, list[str]] = {}
    for line in fields.splitlines():
        dport, _, kinds = line.partition("\t")
        types.setdefault(dport, []).extend(k.strip("'") for k in kinds.split(",") if k)
    to_replay, to_snapshot = types[str(a["replay"][1])], types[str(a["snapshot"][1])]
    from_servers = types["40001"] + types["40002"]
    assert to_replay.count("+") == 1 and to_replay.count("L") == 1 and to_snapshot.count("L") == 1
    assert from_servers.count("A") == 2 and from_servers.count("Z") == 2
    assert types["40001"].count("S") == 3000 and types["40002"].count("S") == snap.count


def test_the_session_cap_and_a_client_that_does_not_read(tmp_path_factory: pytest.TempPathFactory) -> None:
    rig = Rig(tmp_path_factory.mktemp("cap"), partitions=1, max_sessions=3, send_buffer_bytes=65536,
              slow_client_ms=300)
    big = b"2311140139"
    store_dir = rig.store_dir(rig.config.partitions[0])
    with FeedStore(store_dir, big) as store:
        msg = b"A" + bytes(35)
        for _ in range(40):
            store.append_messages([msg] * 10_000)              # 400,000 messages, 15 MB
    rig.start()
    try:
        a = rig.addresses
        socks = []
        for _ in range(3):
            s = socket.create_connection(a["replay"])
            s.sendall(encode_login_request(USERNAME, PASSWORD, big.decode(), 0))  # live, from the next
            socks.append(s)
            s.settimeout(5)
            assert s.recv(3)[2:3] == b"A"
        s = socket.create_connection(a["replay"])
        s.sendall(encode_login_request(USERNAME, PASSWORD, big.decode(), 0))
        got, how = read_until_closed(s)
        assert got == b"\x00\x02JS" and how == "eof"                # the fourth: J 'S'
        s.close()
        # connections beyond max_sessions + 16 spare ones are dropped before a byte is read
        idle = [socket.create_connection(a["replay"]) for _ in range(16)]
        time.sleep(0.2)
        extra = socket.create_connection(a["replay"])
        got, how = read_until_closed(extra, 5)
        assert got == b"" and how in ("eof", "reset")
        for s in idle + [extra]:
            s.close()
        for s in socks:
            s.close()
        # a client with a small window that does not read a 15 MB replay (once the server has seen
        # the three above go, it may log in)
        for _ in range(50):
            slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.connect(a["replay"])
            slow.sendall(encode_login_request(USERNAME, PASSWORD, big.decode(), 1))
            slow.settimeout(5)
            if slow.recv(3)[2:3] == b"A":
                break
            slow.close()
            time.sleep(0.1)
        closed = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not closed:
            time.sleep(0.5)
            slow.sendall(b"\x00\x01R")                              # alive, but not reading
            try:
                slow.sendall(b"\x00\x01R")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        data, how = read_until_closed(slow, 10)
        assert how in ("reset", "eof") and len(data) < 15_000_000
        slow.close()
    finally:
        rig.stop()
    assert rig.retransmit is not None and rig.retransmit.stats is not None
    replay = rig.retransmit.stats["replay"]
    assert replay["refused_full"] >= 1 and replay["closed"]["slow_client"] == 1, replay
    assert replay["refused_connections"] >= 1, replay


def test_the_benchmark_runs_and_ends_with_one_json_object() -> None:
    out = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "retransmit", "--messages", "20000",
                          "--orders", "2000", "--repeat", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["benchmark"] == "retransmit" and result["replay_messages"] == 20000
    assert result["snapshot_messages"] == 2000 + 22 and result["replay_msgs_per_sec"] > 0
