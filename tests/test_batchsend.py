"""Batched kernel sends (feeds/batchsend.py): the sendmmsg transport puts the same datagrams on the
wire as one send per datagram, on loopback multicast (TTL 0), chosen per channel in config; the
re-request server answers the same datagrams with one sendmmsg per answer."""
from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest

from appliance.config import DEFAULT, ConfigError, dumps, loads
from appliance.daemon import feed_config
from appliance.matching.engine import Engine
from feeds.batchsend import BatchSender, sendmmsg_available
from feeds.channels import CHANNELS, FeedConfig
from feeds.moldudp64 import PacketBuilder, Session, encode_rerequest
from feeds.publisher import Publisher
from feeds.store import FeedStore
from feeds.transport import MemoryTransport, UdpTransport, _MmsgChannel, _UdpChannel, multicast_receiver, \
    transport_for
from retransmit.quota import ClientQuotas, QuotaLimits
from retransmit.rerequest import RerequestCore, RerequestServer
from retransmit.stores import StoreSet

from test_feed_e2e import random_groups
from test_publisher import FIRM_STP, MIDNIGHT, T0, instruments, iter_batches, random_specs

pytestmark = pytest.mark.skipif(not sendmmsg_available(), reason="the C library has no sendmmsg")


def drain(sock: socket.socket, expected: int, timeout_s: float = 20.0) -> list[bytes]:
    """Read datagrams until ``expected`` arrived or nothing came for a while (bounded)."""
    out: list[bytes] = []
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        try:
            out.append(sock.recv(65536))
        except (TimeoutError, socket.timeout):
            if out:
                break
    return out


def run_feed(kind: str, groups: dict[str, object], specs: list[object]) -> dict[str, list[bytes]]:
    """The feed of ``specs`` sent through ``kind`` on loopback; the datagrams each group received."""
    config = FeedConfig(groups=groups, interface="127.0.0.1", ttl=0)  # type: ignore[arg-type]
    receivers = {(ch, leg): multicast_receiver(g, "127.0.0.1", 32 << 20)
                 for ch in CHANNELS for leg, g in enumerate(config.groups_of(ch))}
    transport = transport_for(config, kind)
    memory = MemoryTransport()
    ins = instruments()
    try:
        pubs = [Publisher(config, ins, MIDNIGHT, transport), Publisher(config, ins, MIDNIGHT, memory)]
        for pub in pubs:
            pub.start(T0)
        for batch in iter_batches(Engine(ins, FIRM_STP), specs, 64):   # type: ignore[arg-type]
            for pub in pubs:
                pub.publish(batch)
        for pub in pubs:
            pub.end_session(T0 + 10**12)
        expected = {(ch, leg): memory.of(ch, leg) for ch in CHANNELS for leg in (0, 1)}
        got = {f"{ch}/{leg}": drain(s, len(expected[(ch, leg)])) for (ch, leg), s in receivers.items()}
        for (ch, leg), want in expected.items():
            assert got[f"{ch}/{leg}"] == want, f"{kind}: {ch} leg {leg} differs from what was published"
        assert all(c.errors == 0 for c in transport.channels.values())   # type: ignore[attr-defined]
        return got
    finally:
        transport.close()
        for s in receivers.values():
            s.close()


def test_sendmmsg_and_udp_put_byte_identical_datagrams_on_the_wire() -> None:
    specs = random_specs(71, 3000, instruments())
    groups = random_groups()
    udp = run_feed("udp", groups, specs)            # type: ignore[arg-type]
    mmsg = run_feed("sendmmsg", groups, specs)      # type: ignore[arg-type]
    assert sum(len(v) for v in udp.values()) > 300
    assert udp == mmsg


def test_a_batch_longer_than_the_arrays_goes_in_several_calls_in_order() -> None:
    groups = random_groups()
    g = groups["l3"]
    ra, rb = multicast_receiver(g.a, "127.0.0.1"), multicast_receiver(g.b, "127.0.0.1")
    t = UdpTransport("127.0.0.1", 0, 0, batched=True)
    try:
        ch = t.channel("l3", g)
        assert isinstance(ch, _MmsgChannel)
        ch.batch = BatchSender(capacity=7)
        payloads = [random.Random(i).randbytes(1 + i * 13 % 1400) for i in range(40)]
        assert ch.send_packets(payloads, 0) == 40 and ch.packets == 40
        assert ch.batch.calls == 2 * 6                 # 40 = 5 * 7 + 5: six calls per group
        assert drain(ra, 40) == payloads and drain(rb, 40) == payloads
    finally:
        t.close()
        ra.close()
        rb.close()


def test_the_transport_is_chosen_per_channel_in_config() -> None:
    text = DEFAULT.replace('[partitions.feeds.l2]\n', '[partitions.feeds.l2]\ntransport = "sendmmsg"\n')
    c = loads(text)
    assert c.market_data.transport == "udp" and c.partitions[0].feeds["l2"].transport == "sendmmsg"
    assert loads(dumps(c)) == c
    fcfg = feed_config(c, c.partitions[0])
    assert fcfg.transports == {"l3": "udp", "l2": "sendmmsg", "l1": "udp"}
    fcfg = FeedConfig(groups=random_groups(), transports=fcfg.transports)
    t = transport_for(fcfg)
    try:
        kinds = {ch: type(t.channel(ch, fcfg.groups_of(ch))) for ch in CHANNELS}
        assert kinds == {"l3": _UdpChannel, "l2": _MmsgChannel, "l1": _UdpChannel}
        assert t.notes == []                                                       # type: ignore[attr-defined]
    finally:
        t.close()
    every = loads(text.replace('[market_data]\n', '[market_data]\ntransport = "sendmmsg"\n'))
    assert feed_config(every, every.partitions[0]).transports == dict.fromkeys(CHANNELS, "sendmmsg")
    with pytest.raises(ConfigError, match=r"partitions\[0\]\.feeds\.l2\.transport: 'tcp' is not one of"):
        loads(text.replace('transport = "sendmmsg"', 'transport = "tcp"'))


def test_rerequest_answers_by_sendmmsg_are_the_same_datagrams(tmp_path: Path) -> None:
    rnd = random.Random(5)
    msgs = [bytes([65 + i % 26]) + rnd.randbytes(rnd.randint(5, 300)) for i in range(3000)]
    session = b"2311140130"
    with FeedStore(str(tmp_path), session) as store:
        b = PacketBuilder(Session(session, 1), 1400)
        b.add_many(msgs)
        store.append_packets(b.flush())
    answers: dict[bool, list[bytes]] = {}
    for batched in (False, True):
        core = RerequestCore(StoreSet([str(tmp_path)]), ClientQuotas(QuotaLimits(0, 0, 0)), max_payload=1400)
        server = RerequestServer(core, "127.0.0.1", 0, batched=batched)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        client.bind(("127.0.0.1", 0))
        try:
            client.sendto(encode_rerequest(session, 101, 2500), server.address)
            client.sendto(encode_rerequest(session, 7, 3), server.address)
            deadline = time.monotonic() + 10
            while core.counters["requests"] < 2 and time.monotonic() < deadline:
                server.on_readable()
                time.sleep(0.001)
            assert core.counters["answered"] == 2 and core.counters["send_errors"] == 0
            answers[batched] = drain(client, core.counters["datagrams"])
            assert len(answers[batched]) == core.counters["datagrams"] > 2
            if batched:
                assert server.batch is not None and server.batch.calls == 2    # one call per answer
        finally:
            server.close()
            client.close()
    assert answers[True] == answers[False]


def test_a_sender_for_connected_sockets_refuses_an_address_and_the_other_way_round() -> None:
    with pytest.raises(ValueError):
        BatchSender(capacity=0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError):
            BatchSender().send_to(s, [b"x"], ("127.0.0.1", 9))
        with pytest.raises(ValueError):
            BatchSender(to_address=True).send((s,), [b"x"])
    finally:
        s.close()
