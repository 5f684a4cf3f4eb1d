"""The feed stage: a partition's market-data publishing in a process of its own (``feed_stage = "process"``).

The matching process sequences, logs, matches and writes the gateways' event records; publishing
(ITCH 5.0 L3, L2 and L1 encoding, MoldUDP64 packing, A and B sends, the retransmission store, feed
checkpoints, heartbeats, End of Session) runs here, on another core, as the consumer of one
shared-memory ring, the *journal ring*::

    matcher:  ... WAL commit -> apply -> event records -> journal ring (the batch's WAL records)
    feed:     journal ring -> decode -> engine replica applies -> Publisher.publish -> A, B, store

What crosses the ring is the sequenced commands, as the WAL records them (the very bytes the WAL
writer wrote), and only those the matcher released: durable under the WAL policy. The feed stage
is a fork of the matching process taken once recovery is done, so it starts with the same engine
and the same publisher state; from there it applies the same commands in the same order, and the
engine being deterministic, it sees the same events and publishes the bytes the matcher would have
published inline. This is recovery's own path (replaying the WAL regenerates every published
byte) run live: the sequence barrier is the matcher's release, so nothing about a command reaches
the wire before the command is durable.

Ring items (the first byte says what follows)::

    W  records     WAL records (prefix, header, body), whole, in sequence, one or more per item
    K  json        a feed checkpoint for the snapshot at seq S: {"seq": S, "extra": {...}}
    S              write the stats file now
    E  u64 u8      End of Session at ts_ns (market_close 0/1); then the stage finishes and exits

Failure is crash-only, as for the matcher. The feed stage exits when its parent dies
(PR_SET_PDEATHSIG); the matcher exits non-zero when its feed stage dies (``FeedStage.check``).
Start-up regenerates from the WAL whatever the store lacks, so either death loses nothing.
"""
from __future__ import annotations

import gc
import json
import os
import struct
import time
from collections import deque
from typing import Any, Final

from appliance.clock import Clock
from appliance.fsutil import atomic_write
from appliance.idle import BUSY_SPIN, make_idle
from appliance.matching.engine import Engine
from appliance.metrics import DUTY_STAGES, S_DECODE, S_MATCH, S_OTHER, StageClock
from appliance.ring import RingConsumer
from appliance.ring import wait_on_bells
from appliance.stage import StageLink, fork_stage
from appliance.walcodec import decode_run
from feeds.moldudp64 import runs_within
from feeds.publisher import Publisher, write_checkpoint

INLINE: Final = "inline"
PROCESS: Final = "process"
STAGE_MODES: Final = (INLINE, PROCESS)

JOURNAL_SLOTS: Final = 1024
JOURNAL_SLOT_SIZE: Final = 8192
ITEM_RECORDS: Final = 0x57    # W
ITEM_CHECKPOINT: Final = 0x4B  # K
ITEM_STATS: Final = 0x53      # S
ITEM_END: Final = 0x45        # E
_END: Final = struct.Struct("<QB")
EXIT_FEED_STAGE: Final = 70               # EX_SOFTWARE: the feed stage failed (its log line says why)
TRANSPORTS_FORKABLE: Final = ("udp", "sendmmsg", "null")


def journal_ring_name(prefix: str, partition: str) -> str:
    return f"{prefix}.{partition}.journal"


def frame_items(recs_batches: Any, limit: int, items: list[bytes]) -> None:
    """Append W items (b"W" + whole WAL records, at most ``limit`` bytes each) for each list of
    records, cut as MoldUDP64 datagrams are (``runs_within``): one join per item."""
    join = b"".join
    for recs in recs_batches:
        try:
            runs = runs_within(recs, limit - 1)
        except ValueError:
            raise ValueError(f"journal ring: a WAL record exceeds an item of {limit} bytes") from None
        items.extend([b"W" + join(recs[i:j]) for i, j in runs])


# ================================================================================================
# The matcher's side
# ================================================================================================

class FeedStage(StageLink):
    """The matching process's handle on its feed stage. Owned by the matching thread.

    ``hand(through)`` moves the WAL records of every released batch up to seq ``through`` (the WAL
    writer's tap) to the journal ring; what the ring cannot take yet waits in ``backlog`` (the
    matcher stops draining command rings while it is not empty, so it stays one batch deep).
    """

    def __init__(self, name: str, ring: Any, pid: int, bell: int, tap: deque[tuple[int, int, list[bytes]]],
                 stats_path: str) -> None:
        super().__init__(name, ring, pid, bell)
        self.tap = tap
        self.stats_path = stats_path
        self.handed_seq = 0

    def hand(self, through: int) -> None:
        tap = self.tap
        if not tap or tap[0][1] > through:
            return
        batches: list[list[bytes]] = []
        while tap and tap[0][1] <= through:
            _first, last, recs = tap.popleft()
            batches.append(recs)
            self.handed_seq = last
        frame_items(batches, self.max_payload, self.backlog)
        self.flush()

    def finish(self, ts_ns: int, market_close: bool, timeout_s: float) -> int | None:
        """End of Session, then wait for the stage to publish everything and exit."""
        self.send(b"E" + _END.pack(ts_ns, 1 if market_close else 0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.flush()
            if self.check() is not None:
                return self.exit_status
            time.sleep(0.005)
        self.kill()
        return self.exit_status

    def read_stats(self) -> dict[str, Any] | None:
        try:
            with open(self.stats_path, "rb") as f:
                return dict(json.loads(f.read()))
        except (OSError, ValueError):
            return None


def start(name: str, ring_name: str, pub: Publisher, engine: Engine, idle: str, cpu: int | None,
          clock: Clock, stats_path: str, store_dir: str, stage_timing: bool,
          tap: deque[tuple[int, int, list[bytes]]]) -> FeedStage:
    """Create the journal ring, fork the feed stage; return the matcher's handle."""
    try:
        os.unlink(stats_path)
    except FileNotFoundError:
        pass

    def main(consumer: RingConsumer, bell: int) -> int:
        st = StageClock(DUTY_STAGES) if stage_timing else None
        pub.stages = st
        stage = _Stage(consumer, bell, pub, engine, clock, stats_path, store_dir, st)
        return stage.run(make_idle(idle, stage.wait))

    ring, pid, bell = fork_stage(name, "feed", ring_name, JOURNAL_SLOTS, JOURNAL_SLOT_SIZE, cpu, main,
                                 EXIT_FEED_STAGE, spins=idle == BUSY_SPIN)
    return FeedStage(name, ring, pid, bell, tap, stats_path)


# ================================================================================================
# The feed stage's side
# ================================================================================================

class _Stage:
    """The feed stage's loop. Owned by the feed stage's only thread."""

    def __init__(self, consumer: RingConsumer, bell: int, pub: Publisher, engine: Engine,
                 clock: Clock, stats_path: str, store_dir: str, st: StageClock | None) -> None:
        self.consumer = consumer
        self.bell = bell
        self.pub = pub
        self.engine = engine
        self.clock = clock
        self.stats_path = stats_path
        self.store_dir = store_dir
        self.st = st
        self.commands = 0
        self.batches = 0
        self.published_seq = 0
        self.first_ns = 0
        self.last_ns = 0

    def run(self, idle: Any) -> int:
        gc.disable()    # as in the matcher: a generation-0 collection at most once a second, when idle
        last_gen0 = time.monotonic()
        consumer = self.consumer
        pub = self.pub
        clock = self.clock
        st = self.st
        while True:
            items = consumer.poll(64)
            if items:
                if st is not None:
                    st.start()
                run: list[bytes] = []    # consecutive W items: decoded, applied and published as one batch
                for item in items:
                    tag = item[0]
                    if tag == ITEM_RECORDS:
                        run.append(item)
                        continue
                    if run:
                        self._records(run)
                        run = []
                    if tag == ITEM_CHECKPOINT:
                        c = json.loads(item[1:])
                        write_checkpoint(self.store_dir, pub.checkpoint(int(c["seq"]), c["extra"]))
                    elif tag == ITEM_STATS:
                        self.write_stats()
                    elif tag == ITEM_END:
                        ts, close = _END.unpack_from(item, 1)
                        return self._end(ts, bool(close))
                    else:
                        raise ValueError(f"journal ring: unknown item {tag:#x}")
                if run:
                    self._records(run)
                if st is not None:
                    st.lap(S_OTHER)
                idle.idle(len(items))
                continue
            pub.poll(clock())
            t = time.monotonic()
            if t - last_gen0 >= 1.0:
                gc.collect(0)
                last_gen0 = t
            idle.idle(0)

    def _records(self, items: list[bytes]) -> None:
        """Decode, apply and publish the WAL records of consecutive W items as one batch: the
        matcher cuts its batches into items of JOURNAL_SLOT_SIZE, and publishing them together
        packs fuller datagrams with fewer sends and store writes."""
        st = self.st
        seqs: list[int] = []
        stamps: list[int] = []
        cmds: list[Any] = []
        for item in items:          # each: the tag byte, then whole WAL records
            cmds += decode_run(item, 1, len(item), seqs, stamps)
        if st is not None:
            st.lap(S_DECODE)
        out: list[Any] = []
        ends: list[int] = []
        self.engine.apply_batch(cmds, out, ends)
        results = []
        start = 0
        for seq, ts, cmd, e in zip(seqs, stamps, cmds, ends):
            results.append((seq, ts, cmd, out[start:e]))
            start = e
        if st is not None:
            st.lap(S_MATCH)
        if not self.first_ns:
            self.first_ns = self.clock()
        self.pub.publish(results)
        self.commands += len(cmds)
        self.batches += 1
        self.published_seq = seqs[-1]
        self.last_ns = self.clock()

    def _end(self, ts_ns: int, market_close: bool) -> int:
        pub = self.pub
        pub.end_session(ts_ns, market_close)
        deadline = time.monotonic() + pub.config.end_of_session_ns / 1e9 + 5
        while not pub.finished and time.monotonic() < deadline:
            time.sleep(0.02)
            pub.poll(self.clock())
        self.write_stats()
        pub.close()
        return 0

    def wait(self, ns: int) -> None:
        """Back-off's park: on the journal ring's doorbell."""
        wait_on_bells((self.consumer,), (self.bell,), ns)

    def write_stats(self) -> None:
        st = self.st
        doc = {"pid": os.getpid(), "commands": self.commands, "batches": self.batches,
               "published_seq": self.published_seq, "first_ns": self.first_ns, "last_ns": self.last_ns,
               "feed": self.pub.stats(), "stages": st.report(self.commands) if st is not None else None}
        atomic_write(self.stats_path, json.dumps(doc).encode(), durable=False)
