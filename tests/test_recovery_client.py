"""The recovery client: the sans-IO core on a fake clock, then loss and late join end to end.

End to end: the standard flow (flowgen --seed 42 --target 300, 20k events) goes through the engine
and the publisher (real feed store) over loopback multicast; the retransmission and snapshot
servers run as their own processes (`matchwire retransmit serve`, `matchwire snapshot serve`); the
subscriber in this process loses datagrams on purpose: a seeded RNG in its receive shell drops data
datagrams (both copies, A and B, so the other group cannot mend it; heartbeats and End of Session
get through). Every gap must be filled and the final L3, L2 and L1 books must equal the engine's.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator

import pytest

from feeds.books import L1Book, L2Book, L3Book
from feeds.channels import L3
from feeds.moldudp64 import PacketBuilder, Session, heartbeat
from feeds.subscriber import ChannelReceiver, MessageTap
from retransmit.recovery import (
    REPLAY,
    RERQUEST,
    SNAPSHOT,
    ChannelRecovery,
    RecoveringSubscriber,
    RecoveryConfig,
    feed_blocks,
)
from retransmit.snapshot import encode_end_of_snapshot
from test_retransmit_harness import PASSWORD, USERNAME, FlowRun, Rig, drive, flow, rig_fixture  # noqa: F401

SESSION = b"2311140130"
MS = 1_000_000


# ================================================================================================
# The sans-IO core, on a fake clock
# ================================================================================================

def datagrams(first: int, n: int, per: int = 5) -> list[bytes]:
    """Data datagrams of messages first..first+n-1, ``per`` messages each (ITCH System Events)."""
    b = PacketBuilder(Session(SESSION, first), 20 + per * 14)
    for i in range(n):
        b.add(b"S\x00\x00\x00\x00" + (first + i).to_bytes(6, "big") + b"Q")
    return b.flush()


def core(**kw: Any) -> tuple[ChannelReceiver, ChannelRecovery, list[tuple[str, str, str]]]:
    events: list[tuple[str, str, str]] = []
    receiver = ChannelReceiver(L3, [L3Book()], hold_after_gap=True)
    cfg = RecoveryConfig(**{"rerequest": ("127.0.0.1", 1), "replay": ("127.0.0.1", 2),
                            "snapshot": ("127.0.0.1", 3), **kw})
    rec = ChannelRecovery(L3, receiver, cfg, lambda *e: events.append(e))
    receiver.on_gap = lambda s, f, c: rec.gap(f, c, clock[0])
    return receiver, rec, events


clock = [0]


def test_a_small_gap_is_rerequested_after_the_delay_asked_again_on_timeout_then_escalated() -> None:
    receiver, rec, events = core(large_gap_messages=100, timeout_ns=50 * MS, retries=2)
    dg = datagrams(1, 50)
    clock[0] = 0
    for d in dg[:3] + dg[5:]:            # messages 16..25 lost
        receiver.receive(0, d)
    assert events == [("stale", "l3", "gap of 10 at 16")]
    assert rec.tick(1 * MS) == []                                # the other group may still send it
    assert rec.tick(3 * MS) == [(RERQUEST, SESSION, 16, 10)]
    assert rec.tick(20 * MS) == []                               # asked, waiting
    assert rec.tick(60 * MS) == [(RERQUEST, SESSION, 16, 10)]    # no answer: asked again
    assert rec.tick(200 * MS) == [(SNAPSHOT, SESSION)]           # retries spent: the large method
    assert rec.tick(201 * MS) == []                              # one fetch at a time


def test_an_answer_fills_the_gap_in_order_and_the_channel_is_fresh_again() -> None:
    receiver, rec, events = core()
    book = receiver.sinks[0]
    dg = datagrams(1, 50)
    for d in dg[:3] + dg[5:]:
        receiver.receive(0, d)
    assert receiver.expected == 16 and len(receiver.held) == 25 and book.stale
    assert rec.tick(10 * MS) == [(RERQUEST, SESSION, 16, 10)]
    for d in dg[3:5]:                    # the answer: ordinary datagrams
        receiver.receive(0, d)
    assert receiver.expected == 51 and not receiver.held and not book.stale
    assert rec.tick(11 * MS) == [] and events[-1] == ("fresh", "l3", "") and rec.idle
    assert book.directory.system_events == [b"Q"] * 50            # every message, in order, once


def test_a_late_join_takes_a_snapshot_drops_what_it_covers_and_fills_the_hole_before_the_held() -> None:
    receiver, rec, events = core(large_gap_messages=100)
    dg = datagrams(1, 200)
    for d in dg[30:]:                    # joined at message 151
        receiver.receive(0, d)
    assert receiver.expected == 1 and len(receiver.held) == 50
    assert rec.tick(5 * MS) == [(SNAPSHOT, SESSION)]
    # the snapshot says the book is as of message 139: 140..150 are missing, 151.. are held
    snap = [b"S\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00Q"]
    blocks = b"".join(len(m).to_bytes(2, "big") + m for m in snap + [encode_end_of_snapshot(140)])
    assert rec.snapshot_received(SESSION, blocks, 2, 6 * MS)
    assert receiver.expected == 140 and len(receiver.held) == 50
    assert rec.tick(10 * MS) == [(RERQUEST, SESSION, 140, 11)]
    for d in dg[27:30]:
        receiver.receive(0, d)
    assert receiver.expected == 201 and rec.tick(11 * MS) == [] and events[-1][0] == "fresh"
    assert receiver.sinks[0].directory.system_events == [b"Q"] * (1 + 61)


def test_small_gaps_by_tcp_replay_are_merged_into_one_replay() -> None:
    receiver, rec, _ = core(small_gap=REPLAY, large_gap_messages=1000)
    dg = datagrams(1, 100)
    for i, d in enumerate(dg):
        if i not in (3, 7, 8):
            receiver.receive(0, d)
    assert rec.tick(5 * MS) == [(REPLAY, SESSION, 16, 30)]     # 16..20 and 36..45 in one replay
    for d in dg[3:9]:
        receiver.receive(0, d)
    rec.fetch_finished(True, 6 * MS)
    assert rec.tick(7 * MS) == [] and rec.idle


def test_a_failing_large_method_reports_failure_and_backs_off() -> None:
    receiver, rec, events = core(large_gap_messages=10, retries=2, backoff_ns=1000 * MS, fetch_timeout_ns=100 * MS)
    for d in datagrams(1, 100)[10:]:
        receiver.receive(0, d)
    assert rec.tick(1 * MS) == [(SNAPSHOT, SESSION)]
    rec.fetch_finished(False, 2 * MS, "connect: ECONNREFUSED")
    assert rec.tick(3 * MS) == [(SNAPSHOT, SESSION)]
    assert rec.tick(150 * MS) == [("cancel",)]                  # silent: aborted; 2nd failure
    assert events[-1] == ("failed", "l3", "snapshot: no byte for 0.1 s")
    assert rec.tick(500 * MS) == []                             # backing off
    assert rec.tick(1200 * MS) == [(SNAPSHOT, SESSION)]


def test_a_new_session_forgets_the_old_ones_gaps() -> None:
    receiver, rec, _ = core()
    for d in datagrams(1, 50)[3:]:
        receiver.receive(0, d)
    assert rec.tick(5 * MS) == [(RERQUEST, SESSION, 1, 15)]
    def on_session(old: bytes | None, new: bytes) -> None:
        rec.session_changed(0)

    receiver.on_session = on_session
    receiver.receive(0, heartbeat(b"2311140131", 1))            # the next generation, from 1
    assert rec.tick(6 * MS) == [] and rec.idle


def test_an_overflowing_hold_buffer_recovers_the_whole_channel() -> None:
    receiver, rec, _ = core(large_gap_messages=5000)
    receiver.max_held = 20
    dg = datagrams(1, 50)
    for d in dg[:3] + dg[5:]:
        receiver.receive(0, d)
    assert receiver.gave_up == 1
    assert rec.tick(10 * MS) == [(SNAPSHOT, SESSION)]


def test_a_replay_of_more_than_a_datagram_can_count_is_cut_into_several() -> None:
    seen: list[int] = []
    receiver = ChannelReceiver(L3, [MessageTap(lambda seq, m: seen.append(seq))], hold_after_gap=True)
    receiver.receive(0, heartbeat(SESSION, 1))
    blocks = b"\x00\x01x" * 150_000
    assert feed_blocks(receiver, SESSION, 1, 150_000, blocks, 0) == 150_000
    assert seen == list(range(1, 150_001)) and receiver.expected == 150_001 and receiver.gaps == 0


def test_a_snapshot_sets_l2_and_l1_instrument_sequences_so_the_feed_continues_fresh() -> None:
    from feeds.channels import block_packer, PRICE_LEVEL_UPDATE
    d, h = block_packer(PRICE_LEVEL_UPDATE)
    l2 = L2Book()
    receiver = ChannelReceiver("l2", [l2, L1Book()], hold_after_gap=True)
    ts = b"\x00" * 6
    snap = d(h, 5, 0, ts, 41, b"B", 100, 300, 2, b"N") + d(h, 5, 0, ts, 41, b"S", 101, 100, 1, b"Y")
    receiver.load_snapshot(snap, 2, 1)
    assert not l2.is_stale(5) and l2.depth(5, 0) == [(100, 300, 2)]
    live = PacketBuilder(Session(SESSION, 1))
    live.add(d(h, 5, 0, ts, 42, b"B", 100, 0, 0, b"Y")[2:])
    receiver.receive(0, live.flush()[0])
    assert not l2.is_stale(5) and l2.depth(5, 0) == []


# ================================================================================================
# End to end
# ================================================================================================

@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from rig_fixture(tmp_path_factory, partitions=4, max_payload=600)


class Loss:
    """Drops data datagrams at the subscriber: both copies of a datagram share their fate."""

    def __init__(self, seed: int, rate: float = 0.0, bursts: int = 0, burst_len: int = 500,
                 span: int = 2000) -> None:
        self.rnd = random.Random(seed)
        self.rate = rate
        self.fate: dict[tuple[str, bytes], bool] = {}
        self.count: dict[str, int] = {}
        # bursts: per channel, the data datagram indexes where burst_len datagrams in a row are lost
        self.bursts = sorted(self.rnd.randrange(50, span - burst_len) for _ in range(bursts))
        self.burst_len = burst_len
        self.lost: dict[str, int] = {}

    def __call__(self, channel: str, leg: int, data: bytes) -> bool:
        if len(data) < 20 or data[18:20] in (b"\x00\x00", b"\xff\xff"):
            return False
        key = (channel, bytes(data[:20]))
        fate = self.fate.get(key)
        if fate is None:
            i = self.count[channel] = self.count.get(channel, 0) + 1
            fate = self.rnd.random() < self.rate or any(b <= i < b + self.burst_len for b in self.bursts)
            self.fate[key] = fate
            if fate:
                self.lost[channel] = self.lost.get(channel, 0) + 1
        return fate


def subscriber(rig: Rig, run: FlowRun, drop: Callable[[str, int, bytes], bool] | None, **kw: Any) -> RecoveringSubscriber:
    a = rig.addresses
    cfg = RecoveryConfig(rerequest=a["rerequest"], replay=a["replay"], snapshot=a["snapshot"],
                         username=USERNAME, password=PASSWORD, **kw)
    return RecoveringSubscriber(run.feed, cfg, drop=drop)


def finish_and_check(rig: Rig, run: FlowRun, sub: RecoveringSubscriber) -> None:
    run.idle()
    run.finish()
    want = run.next_seqs()

    def exact() -> bool:
        return all(r.expected == want[ch] and sub.is_fresh(ch) for ch, r in sub.receivers.items())

    ok = sub.run_until(exact, 40.0)
    assert ok, sub.stats()
    assert not [e for e in sub.events if e[1] == "failed"], sub.events
    run.assert_books_equal_engine(sub)
    assert not sub.l3.stale and sub.l3.unknown_refs == 0
    for ch, r in sub.receivers.items():
        assert r.gave_up == 0 and not r.held
    assert rig.retransmit is not None and rig.retransmit.alive()
    assert rig.snapshot is not None and rig.snapshot.alive()


@pytest.mark.parametrize("rate, small_gap", [(0.01, REPLAY), (0.10, RERQUEST)])
def test_random_loss_every_gap_is_filled_and_the_books_equal_the_engines(rig: Rig, flow: bytes, rate: float,
                                                                          small_gap: str) -> None:
    run = FlowRun(rig, rig.partition(), flow)
    loss = Loss(seed=int(rate * 1000), rate=rate)
    sub = subscriber(rig, run, loss, small_gap=small_gap)
    sub.open()
    try:
        drive(run, lambda: sub.poll(0.0))
        finish_and_check(rig, run, sub)
        stats = sub.stats()
        for ch in sub.receivers:
            assert loss.lost.get(ch, 0) > 0 and stats[ch]["gaps"] > 0, stats
            assert stats[ch]["recoveries"] > 0
        key = "replays" if small_gap == REPLAY else "rerequests"
        assert all(stats[ch][key] > 0 for ch in sub.receivers), stats
    finally:
        sub.close()
        run.close()


def test_bursts_of_500_lost_datagrams_are_filled(rig: Rig, flow: bytes) -> None:
    run = FlowRun(rig, rig.partition(), flow)
    loss = Loss(seed=5, bursts=2, burst_len=500, span=1400)
    sub = subscriber(rig, run, loss, large_gap_messages=2000)
    sub.open()
    try:
        drive(run, lambda: sub.poll(0.0))
        finish_and_check(rig, run, sub)
        assert all(n >= 500 for n in loss.lost.values()) and len(loss.lost) == 3, loss.lost
        stats = sub.stats()
        assert sum(stats[ch]["snapshots"] for ch in sub.receivers) > 0, stats    # large gaps: snapshots
    finally:
        sub.close()
        run.close()


def test_a_late_join_halfway_through_a_run_under_load_ends_with_the_engines_books(rig: Rig, flow: bytes) -> None:
    run = FlowRun(rig, rig.partition(), flow)
    sub = subscriber(rig, run, Loss(seed=9, rate=0.01), large_gap_messages=2000)
    half = len(run.cmds) // run.batch // 2
    fresh: list[str] = []
    sub.on_fresh = fresh.append
    try:
        def join(k: int) -> None:
            if k == half:
                sub.open()

        drive(run, lambda: sub.poll(0.0) if sub.shell is not None else None, pace_s=0.0005, before_batch=join)
        finish_and_check(rig, run, sub)
        stats = sub.stats()
        assert all(stats[ch]["snapshots"] >= 1 for ch in sub.receivers), stats
        assert set(fresh) == set(sub.receivers)
    finally:
        sub.close()
        run.close()
