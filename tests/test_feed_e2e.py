"""End to end: engine -> publisher -> real loopback multicast -> subscriber, and crash recovery of the
publisher with a real feed store (same session, no gap, no duplicate, the feed byte for byte)."""
from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.matching.engine import Engine
from feeds.books import engine_l1_summary, engine_l2_summary, engine_l3_summary, summary_hash
from feeds.channels import CHANNELS, L3, ChannelGroups, FeedConfig
from feeds.moldudp64 import parse_packet
from feeds.moldudp64 import packetize
from feeds.publisher import FeedDivergence, Publisher, read_checkpoint, write_checkpoint
from feeds.store import FeedStore
from feeds.subscriber import FeedSubscriber
from feeds.transport import A, MemoryTransport, UdpTransport, multicast_receiver, transport_for

from test_publisher import FIRM_STP, MIDNIGHT, T0, instruments, iter_batches, random_specs


def random_groups() -> dict[str, ChannelGroups]:
    """Groups in 239.x with random high ports: tests running in parallel do not hear each other."""
    rnd = random.Random(os.getpid() * 7919 + time.time_ns())
    a, b = rnd.randrange(1, 250), rnd.randrange(1, 250)
    port = rnd.randrange(20000, 60000, 4)
    return {ch: ChannelGroups((f"239.{a}.{b}.{10 + i}", port + i), (f"239.{a}.{b}.{20 + i}", port + i))
            for i, ch in enumerate(CHANNELS)}


def assert_books_equal_engine(sub: FeedSubscriber, engine: Engine, levels: int) -> None:
    assert summary_hash(sub.l3.summary()) == summary_hash(engine_l3_summary(engine))
    assert summary_hash(sub.l2.summary()) == summary_hash(engine_l2_summary(engine, levels))
    assert summary_hash(sub.l1.summary()) == summary_hash(engine_l1_summary(engine))


# --------------------------------------------------------------------------------------------
# Real multicast on loopback
# --------------------------------------------------------------------------------------------

def test_engine_publisher_multicast_subscriber_books_equal_the_engine() -> None:
    ins = instruments()
    config = FeedConfig(groups=random_groups(), interface="127.0.0.1", ttl=0, depth_levels=5,
                        end_of_session_ns=2 * 10**9)
    sub = FeedSubscriber(config)
    sub.open()
    transport = UdpTransport(config.interface, config.ttl, config.dscp)
    engine = Engine(ins, FIRM_STP)
    pub = Publisher(config, ins, MIDNIGHT, transport)
    try:
        pub.start(T0)

        def caught_up() -> bool:
            return all(r.expected == pub.channels[ch].next_seq for ch, r in sub.receivers.items())

        for batch in iter_batches(engine, random_specs(31, 4000, ins), 50):
            pub.publish(batch)
            assert sub.shell is not None
            assert sub.shell.run_until(caught_up, 10.0), {ch: r.expected for ch, r in sub.receivers.items()}
        assert_books_equal_engine(sub, engine, config.depth_levels)
        pub.poll(T0 + 10**13)                      # idle: a heartbeat on each channel
        pub.end_session(T0 + 10**13 + 1)
        pub.poll(T0 + 10**13 + 10**9 + 1)
        assert sub.shell is not None
        assert sub.shell.run_until(lambda: all(r.ended for r in sub.receivers.values()) and
                                   all(r.heartbeats for r in sub.receivers.values()), 10.0)
        for ch, r in sub.receivers.items():
            assert r.gaps == 0 and r.malformed == 0 and r.session == pub.channels[ch].session
            assert r.packets[A] and r.packets[1]                 # both groups heard
            assert r.messages == pub.channels[ch].next_seq - 1
        assert sub.l3.directory.system_events[-3:] == [b"M", b"E", b"C"]
        assert transport.channels[L3].errors == 0
    finally:
        pub.close()
        transport.close()
        sub.close()


CHILD = """
import json, sys
from feeds.channels import ChannelGroups, FeedConfig
from retransmit.recovery import REPLAY, RERQUEST, RecoveringSubscriber, RecoveryConfig
groups = {ch: ChannelGroups(tuple(g[0]), tuple(g[1])) for ch, g in json.loads(sys.argv[1]).items()}
config = FeedConfig(groups=groups, depth_levels=int(sys.argv[2]))
rerequest, replay = tuple(json.loads(sys.argv[3])), tuple(json.loads(sys.argv[4]))
drill = {}

def drop(channel, leg, datagram):
    # a loss drill: both copies of about 2 in 97 data datagrams never arrive
    count = int.from_bytes(datagram[18:20], "big")
    if len(datagram) < 20 or count in (0, 0xFFFF):
        return False
    if int.from_bytes(datagram[10:18], "big") * 2654435761 % 97 < 2:
        drill[channel] = drill.get(channel, 0) + 1
        return True
    return False

sub = RecoveringSubscriber(config, RecoveryConfig(small_gap=RERQUEST, large_gap=REPLAY, rerequest=rerequest,
                                                  replay=replay), drop=drop)
sub.open("127.0.0.1")
print("ready", flush=True)
ok = sub.run_until(lambda: all(r.ended and sub.is_fresh(ch) for ch, r in sub.receivers.items()), 90.0)
stats = sub.stats()
print(json.dumps({"ended": ok, "l3": sub.l3.state_hash(), "l2": sub.l2.state_hash(), "l1": sub.l1.state_hash(),
                  "gaps": {ch: stats[ch]["gaps"] for ch in sub.receivers},
                  "recoveries": {ch: stats[ch]["recoveries"] for ch in sub.receivers},
                  "failed": {ch: stats[ch]["failed"] for ch in sub.receivers}, "drill": drill,
                  "expected": {ch: r.expected for ch, r in sub.receivers.items()}}), flush=True)
"""


@pytest.mark.timeout(180)
def test_a_subscriber_in_another_process_builds_the_engines_books(tmp_path: Path) -> None:
    """A subscriber process as a real one runs: losses (a load spike, a full socket buffer, and here
    a loss drill on top) become gaps that it fills from the retransmission server, which serves the
    publisher's feed store; its books end equal to the engine's whatever the machine's load."""
    import json
    import subprocess
    import sys

    from test_retransmit_harness import ServerProcess

    ins = instruments()
    groups = random_groups()
    config = FeedConfig(groups=groups, depth_levels=6, end_of_session_ns=3 * 10**9)
    store = tmp_path / "feed"
    store.mkdir()
    server = ServerProcess(["retransmit", "serve", "--store", str(store), "--rerequest-port", "0",
                            "--replay-port", "0"])
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({ch: list(g) for ch, g in groups.items()}),
                              str(config.depth_levels), json.dumps(server.address("rerequest")),
                              json.dumps(server.address("replay"))], cwd=Path(__file__).resolve().parents[1],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    transport = UdpTransport(config.interface, config.ttl, config.dscp)
    engine = Engine(ins, FIRM_STP)
    pub = Publisher(config, ins, MIDNIGHT, transport, str(store))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        pub.start(T0)
        for batch in iter_batches(engine, random_specs(41, 3000, ins), 100):
            pub.publish(batch)
            time.sleep(0.002)        # a market's pace, not a burst into a 2-core machine's buffers
        end = T0 + 10**13
        pub.poll(end)                # a heartbeat: a loss at the tail shows up as a gap
        pub.end_session(end)
        for k in range(1, 4):
            time.sleep(0.05)
            pub.poll(end + k * 10**9)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        pub.close()
        transport.close()
        server.stop()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ended"], err[-3000:]
    assert result["expected"] == {ch: pub.channels[ch].next_seq for ch in CHANNELS}
    assert result["l3"] == summary_hash(engine_l3_summary(engine))
    assert result["l2"] == summary_hash(engine_l2_summary(engine, config.depth_levels))
    assert result["l1"] == summary_hash(engine_l1_summary(engine))
    for ch in CHANNELS:                # the drill's losses were gaps, and every gap was filled
        assert result["drill"].get(ch, 0) > 0 and result["gaps"][ch] > 0 and result["recoveries"][ch] > 0
        assert result["failed"][ch] == 0
    assert server.stats is not None and server.stats["rerequest"]["answered"] > 0


def test_senders_stay_on_the_configured_interface_with_ttl_and_dscp_and_receivers_join_by_name() -> None:
    groups = random_groups()
    config = FeedConfig(groups=groups, channels=(L3,), dscp=46)
    transport = transport_for(config)
    assert isinstance(transport, UdpTransport)
    sender = transport.channel(L3, groups[L3])
    receiver = multicast_receiver(groups[L3].b, "lo", blocking=True)   # by name: lo is 127.0.0.1
    receiver.settimeout(5)
    try:
        for s in (sender.sock_a, sender.sock_b):
            assert socket.inet_ntoa(s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)) == "127.0.0.1"
            assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 0
            assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 46 << 2
            assert s.getpeername() in (groups[L3].a, groups[L3].b)
        assert receiver.getsockname() == groups[L3].b       # bound to the group, not 0.0.0.0
        if os.geteuid() == 0:    # SO_RCVBUFFORCE: not capped by net.core.rmem_max
            assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 8 << 20
        assert sender.send_packets([b"x" * 30], 0) == 1
        assert receiver.recv(100) == b"x" * 30
    finally:
        receiver.close()
        transport.close()
    with pytest.raises(ValueError):
        transport_for(config, "carrier pigeon")


# --------------------------------------------------------------------------------------------
# Recovery with a file store
# --------------------------------------------------------------------------------------------

SPECS = random_specs(77, 3000)
CONFIG = FeedConfig(depth_levels=4)


def a_leg_is_one_run(transport: MemoryTransport, channel: str) -> list[int]:
    """The A-leg datagrams of a channel, one session: each starts where the previous ended (no
    gap, no duplicate). Returns the sequence numbers of the data datagrams."""
    next_seq = 1
    firsts = []
    for d in transport.of(channel, A):
        p = parse_packet(d)
        if p.message_count == 0 or p.is_end_of_session:
            assert p.sequence == next_seq
            continue
        assert p.sequence == next_seq, f"{channel}: datagram at {p.sequence}, expected {next_seq}"
        firsts.append(p.sequence)
        next_seq = p.sequence + p.message_count
    return firsts


def first_run(store: Path, crash_after: int, crash: str = "before send") -> tuple[MemoryTransport, int]:
    """Publish batches until ``crash_after``; the next batch is committed (applied) but the process
    dies before (or, with crash="after send", inside) its publication. Returns the transport and
    the number of commands committed."""
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    transport = MemoryTransport()
    pub = Publisher(CONFIG, ins, MIDNIGHT, transport, str(store))
    pub.start(T0)
    committed = 0
    for k, batch in enumerate(iter_batches(engine, SPECS, 40)):
        committed += len(batch)
        if k == crash_after:
            if crash == "after send":
                # the datagrams leave, the process dies at the store append of the L3 channel: its
                # first write fails (the store's file is open read-only under it), nothing is written
                l3 = pub.channels[L3].store
                assert l3 is not None
                writable, l3._data_fd = l3._data_fd, os.open(l3.data_path, os.O_RDONLY)
                with pytest.raises(OSError):
                    pub.publish(batch)
                os.close(writable)
            break
        pub.publish(batch)
    return transport, committed


def second_run(store: Path, replay: int, batch: int = 97) -> tuple[Engine, MemoryTransport, Publisher]:
    """Start again: replay the first ``replay`` commands (from the WAL), then go on live. With
    batch=1 the commands go one by one through replay_command, their events list reused as
    recover_state(on_command=...) does."""
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    transport = MemoryTransport()
    pub = Publisher(CONFIG, ins, MIDNIGHT, transport, str(store))
    pub.start(T0 + 10**12)          # a later clock: the stored start time is used
    for res in iter_batches(engine, SPECS[:replay], batch):
        if batch == 1:
            ((seq, ts, cmd, events),) = res
            assert pub.replay_command(seq, ts, cmd, events) is False
            events.clear()
        else:
            pub.replay(res)
    for res in iter_batches(engine, SPECS[replay:], 40, seq0=replay + 1):
        pub.publish(res)
    return engine, transport, pub


def subscribe(*transports: MemoryTransport) -> FeedSubscriber:
    sub = FeedSubscriber(CONFIG)
    for t in transports:
        for ch, leg, ts, d in t.sent:
            sub.receive(ch, ts, d, leg)
    return sub


def straight_run(store: Path) -> Publisher:
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    pub = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), str(store))
    pub.start(T0)
    for batch in iter_batches(engine, SPECS, 40):
        pub.publish(batch)
    return pub


def stored(store: Path, session: bytes) -> list[bytes]:
    with FeedStore(str(store), session) as s:
        return s.read(1, s.count)


def test_a_crash_between_commit_and_send_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    t1, committed = first_run(tmp_path / "feed", crash_after=30)
    engine, t2, pub = second_run(tmp_path / "feed", replay=committed)
    for ch in CHANNELS:
        a_leg_is_one_run(t1, ch)
    # the second run's first datagram continues the first run's last one, in the same session
    joined = MemoryTransport()
    joined.sent = t1.sent + t2.sent
    for ch in CHANNELS:
        a_leg_is_one_run(joined, ch)
        assert {parse_packet(d).session for d in joined.of(ch, None)} == {pub.channels[ch].session}
    sub = subscribe(t1, t2)
    for ch, r in sub.receivers.items():
        assert r.gaps == 0 and r.expected == pub.channels[ch].next_seq
    assert_books_equal_engine(sub, engine, CONFIG.depth_levels)
    # the store holds exactly what an uninterrupted run stores, byte for byte
    straight = straight_run(tmp_path / "straight")
    for ch in CHANNELS:
        assert stored(tmp_path / "feed", pub.channels[ch].session) == stored(
            tmp_path / "straight", straight.channels[ch].session)


def test_recovery_command_by_command_as_the_wal_replay_hands_them_over(tmp_path: Path) -> None:
    t1, committed = first_run(tmp_path / "feed", crash_after=45)
    engine, t2, pub = second_run(tmp_path / "feed", replay=committed, batch=1)
    joined = MemoryTransport()
    joined.sent = t1.sent + t2.sent
    for ch in CHANNELS:
        a_leg_is_one_run(joined, ch)
    # what was not sent before the crash went out in full datagrams, not one per command
    assert len([d for d in t2.of(L3) if parse_packet(d).message_count]) < 40
    sub = subscribe(t1, t2)
    assert all(r.gaps == 0 for r in sub.receivers.values())
    assert_books_equal_engine(sub, engine, CONFIG.depth_levels)


def test_a_crash_between_send_and_store_sends_that_batch_again_and_receivers_drop_it(tmp_path: Path) -> None:
    t1, committed = first_run(tmp_path / "feed", crash_after=20, crash="after send")
    engine, t2, pub = second_run(tmp_path / "feed", replay=committed)
    sub = subscribe(t1, t2)
    for ch, r in sub.receivers.items():
        assert r.gaps == 0
    assert sub.receivers[L3].duplicates > len(t2.of(L3, A))   # the B copies and the repeated batch
    assert_books_equal_engine(sub, engine, CONFIG.depth_levels)


def test_recovery_with_a_lost_store_sends_everything_again_in_the_same_session(tmp_path: Path) -> None:
    t1, committed = first_run(tmp_path / "feed", crash_after=10)
    for f in (tmp_path / "feed").iterdir():
        if not f.name.startswith("CHANNEL-"):
            f.unlink()
    engine, t2, pub = second_run(tmp_path / "feed", replay=committed)
    sub = subscribe(t1, t2)
    for ch, r in sub.receivers.items():
        assert r.gaps == 0 and r.session == pub.channels[ch].session
    assert_books_equal_engine(sub, engine, CONFIG.depth_levels)


def test_a_store_ahead_of_the_wal_changes_the_session(tmp_path: Path) -> None:
    # the first run published 20 batches, but the WAL only gives back 700 commands (e.g. policy
    # "none" lost its tail): what was published cannot be taken back, so the session changes
    t1, _ = first_run(tmp_path / "feed", crash_after=20)
    old = {ch: parse_packet(t1.of(ch)[0]).session for ch in CHANNELS}
    gaps: list[Any] = []
    engine, t2, pub = second_run(tmp_path / "feed", replay=700)
    new = pub.sessions()
    assert all(new[ch] != old[ch] and new[ch][:9] == old[ch][:9] and new[ch][9:] == b"1" for ch in CHANNELS)
    assert any("new session" in n for n in pub.notes)
    sub = FeedSubscriber(CONFIG, on_gap=lambda ch, s, f, c: gaps.append((ch, s, f, c)))
    for t in (t1, t2):
        for ch, leg, ts, d in t.sent:
            sub.receive(ch, ts, d, leg)
    # the new session starts at the regenerated count + 1: subscribers ask for 1..R
    for ch in CHANNELS:
        (g,) = [g for g in gaps if g[0] == ch and g[1] == new[ch]]
        assert g[2] == 1 and g[3] > 0
        # the new store holds the same first R messages as the old one
        assert stored(tmp_path / "feed", new[ch])[:50] == stored(tmp_path / "feed", old[ch])[:50]
    # a subscriber that gets 1..R from the store (the retransmission server's job) is exact
    fresh = FeedSubscriber(CONFIG)
    for ch in CHANNELS:
        msgs = stored(tmp_path / "feed", new[ch])
        framed = [len(m).to_bytes(2, "big") + m for m in msgs]
        for d in packetize(new[ch], 1, framed):
            fresh.receive(ch, 0, d, A)
        assert fresh.receivers[ch].gaps == 0
    assert_books_equal_engine(fresh, engine, CONFIG.depth_levels)


def test_a_regenerated_feed_that_differs_from_the_store_is_refused(tmp_path: Path) -> None:
    first_run(tmp_path / "feed", crash_after=5)
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    pub = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), str(tmp_path / "feed"))
    pub.start(T0)
    with pytest.raises(FeedDivergence):
        for res in iter_batches(engine, random_specs(78, 3000), 40):   # another WAL
            pub.replay(res)


def test_after_end_of_session_a_restart_opens_the_next_generation(tmp_path: Path) -> None:
    pub = straight_run(tmp_path / "feed")
    pub.end_session(T0 + 10**13)
    first = pub.sessions()
    pub.close()
    engine, t2, pub2 = second_run(tmp_path / "feed", replay=len(SPECS) // 2)
    assert all(pub2.sessions()[ch][9:] == b"1" and pub2.sessions()[ch] != first[ch] for ch in CHANNELS)
    sub = subscribe(t2)
    for r in sub.receivers.values():
        assert r.gaps == 0
    assert_books_equal_engine(sub, engine, CONFIG.depth_levels)


def test_a_restart_from_a_feed_checkpoint_replays_only_what_follows_it(tmp_path: Path) -> None:
    # First run: a checkpoint after batch 12, then a crash with batch 30 committed but not sent.
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    t1 = MemoryTransport()
    pub = Publisher(CONFIG, ins, MIDNIGHT, t1, str(tmp_path / "feed"))
    pub.start(T0)
    published = 0
    ckpt: dict[str, Any] = {}
    for k, batch in enumerate(iter_batches(engine, SPECS, 40)):
        if k == 30:
            committed = published + len(batch)
            break
        pub.publish(batch)
        published += len(batch)
        if k == 12:
            write_checkpoint(str(tmp_path / "feed"), pub.checkpoint(published, {"positions": [[1, 1, 5]]}))
            at = published
    pub.close()
    loaded, _path = read_checkpoint(str(tmp_path / "feed"), at)
    assert loaded is not None and loaded["seq"] == at and loaded["extra"] == {"positions": [[1, 1, 5]]}
    # Second run: the engine as the snapshot at `at` has it, the feed resumed from the checkpoint, the
    # WAL after `at` replayed, then live.
    engine2 = Engine(ins, FIRM_STP)
    for _ in iter_batches(engine2, SPECS[:at], 500):
        pass
    t2 = MemoryTransport()
    pub2 = Publisher(CONFIG, ins, MIDNIGHT, t2, str(tmp_path / "feed"))
    assert pub2.resume_problem(loaded) is None
    pub2.resume(loaded)
    for res in iter_batches(engine2, SPECS[at:committed], 97, seq0=at + 1):
        pub2.replay(res)
    for res in iter_batches(engine2, SPECS[committed:], 40, seq0=committed + 1):
        pub2.publish(res)
    joined = MemoryTransport()
    joined.sent = t1.sent + t2.sent
    for ch in CHANNELS:
        a_leg_is_one_run(joined, ch)
    sub = subscribe(t1, t2)
    for ch, r in sub.receivers.items():
        assert r.gaps == 0 and r.expected == pub2.channels[ch].next_seq
    assert_books_equal_engine(sub, engine2, CONFIG.depth_levels)
    # Store and state are those of an uninterrupted run, byte for byte.
    straight = straight_run(tmp_path / "straight")
    for ch in CHANNELS:
        assert stored(tmp_path / "feed", pub2.channels[ch].session) == stored(
            tmp_path / "straight", straight.channels[ch].session)
    n = len(SPECS)
    assert pub2.checkpoint(n) == straight.checkpoint(n)


def test_a_feed_checkpoint_is_refused_when_the_store_or_the_day_does_not_match(tmp_path: Path) -> None:
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    pub = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), str(tmp_path / "feed"))
    pub.start(T0)
    for batch in iter_batches(engine, SPECS[:400], 40):
        pub.publish(batch)
    ckpt = pub.checkpoint(400)
    pub.close()
    lost = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), str(tmp_path / "lost-store"))
    assert "fewer messages" in (lost.resume_problem(ckpt) or "")
    with pytest.raises(ValueError):
        lost.resume(ckpt)
    same = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), str(tmp_path / "feed"))
    assert "day" in (same.resume_problem(dict(ckpt, day="991231")) or "")
    assert same.resume_problem(ckpt) is None
    assert read_checkpoint(str(tmp_path / "feed"), 401)[0] is None
    with open(os.path.join(str(tmp_path / "feed"), "CHECKPOINT-000000000400.json"), "w") as f:
        f.write('{"format": "matchwire-feed-checkpoint-1", "seq": 4')   # torn
    ckpt2, why = read_checkpoint(str(tmp_path / "feed"), 400)
    assert ckpt2 is None and "unreadable" in why


def test_a_feed_checkpoint_written_as_before_is_read_and_the_bytes_are_unchanged(tmp_path: Path) -> None:
    import json

    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    store = str(tmp_path / "feed")
    pub = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), store)
    pub.start(T0)
    for batch in iter_batches(engine, SPECS[:400], 40):
        pub.publish(batch)
    ckpt = pub.checkpoint(400, {"positions": [[1, 1, 5]], "routed": {"gw0": 400}})
    pub.close()
    assert "tracker" in ckpt and "l2" in ckpt and "l1" in ckpt
    # the file is what the standard library's compact json.dumps of the same dict made
    path = write_checkpoint(store, ckpt)
    with open(path, "rb") as f:
        assert f.read() == json.dumps(ckpt, separators=(",", ":")).encode()
    assert read_checkpoint(store, 400)[0] == ckpt
    # a checkpoint written by an older writer (any JSON spacing) is read as it was
    with open(path, "w") as f:
        json.dump(ckpt, f, indent=1)
    old, _ = read_checkpoint(store, 400)
    assert old == ckpt
    again = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), store)
    assert again.resume_problem(old) is None
    # JSON of another shape is refused with a reason, not a KeyError later
    for bad in ({**ckpt, "channels": {"L3": {"session": "X"}}}, {**ckpt, "seq": "400"}, [1, 2]):
        with open(path, "w") as f:
            json.dump(bad, f)
        got, why = read_checkpoint(store, 400)
        assert got is None and "not a feed checkpoint" in why, why
    # a checkpoint of the wrong shape is not written
    with pytest.raises(ValueError):
        write_checkpoint(store, {**ckpt, "channels": {"L3": {"next_seq": 1}}})


def test_a_store_ahead_of_the_wal_after_a_checkpoint_changes_the_session(tmp_path: Path) -> None:
    # Published through batch 20, but the WAL ends at the checkpoint (policy "none" lost its tail):
    # the next generation starts with the regenerated prefix, as after a full replay.
    ins = instruments()
    engine = Engine(ins, FIRM_STP)
    pub = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), str(tmp_path / "feed"))
    pub.start(T0)
    ckpt: dict[str, Any] = {}
    for k, batch in enumerate(iter_batches(engine, SPECS[:840], 40)):
        pub.publish(batch)
        if k == 9:
            ckpt = pub.checkpoint(400)
    old = pub.sessions()
    pub.close()
    engine2 = Engine(ins, FIRM_STP)
    for _ in iter_batches(engine2, SPECS[:400], 400):
        pass
    pub2 = Publisher(CONFIG, ins, MIDNIGHT, MemoryTransport(), str(tmp_path / "feed"))
    pub2.resume(ckpt)
    for res in iter_batches(engine2, SPECS[400:500], 40, seq0=401):
        pub2.publish(res)
    new = pub2.sessions()
    assert all(new[ch][9:] == b"1" and new[ch] != old[ch] for ch in CHANNELS)
    for ch in CHANNELS:
        r = ckpt["channels"][ch]["next_seq"] - 1
        assert stored(tmp_path / "feed", new[ch])[:r] == stored(tmp_path / "feed", old[ch])[:r]
