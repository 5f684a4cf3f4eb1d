"""The WAL stage: a partition's durability in a process of its own (``wal_stage = "process"``).

With it the partition is a pipeline behind one sequence barrier, the durable sequence::

    matcher:   ring poll + decode -> validate + sequence -> WAL records -> WAL ring
               -> match at once -> the gateways' event records, held
    WAL stage: WAL ring -> write -> fdatasync (the policy's group commit) -> durable seq (shared word)
    matcher:   releases what the durable seq covers, in sequence: the held event records to the
               gateways' rings, the WAL records to the feed stage's journal ring

The matcher never waits for the disk: it matches batch n+1 while batch n is being made durable.
The invariant does not move: nothing about a command leaves the box (ack, execution report,
multicast datagram) before the durable sequence covers it, because the gateways only get records
and the feed stage only gets commands the matcher released on the durable word. The held records
are encoded at once (the engine's events refer to live orders), so holding them costs their bytes
only; the WAL ring bounds how far the matcher runs ahead (a full ring is back-pressure: the matcher
stops draining the command rings). The WAL stage needs the feed stage: an inline publisher would
read the live orders of events it publishes late.

``RemoteWal`` stands in for the matcher's WalWriter (``appliance.partition`` calls it the same way);
the stage runs the WalWriter recovery opened, unchanged: same segments, seals, fence, policies.

Ring items::

    W  records   WAL records, whole, in sequence (the stage counts them by their length prefixes)
    Y            sync: write and fdatasync everything, whatever the policy (snapshots, shutdown)
    C            close: sync, seal, close the segment, exit 0

The durable word (a 64-byte file in /dev/shm beside the ring): u64 durable seq @0, u64 failed @8.
A WAL failure in the stage (a write or fsync error, the fence) sets failed, logs one line and exits
74; the matcher then stops without releasing anything more (exit 74). kill -9 of the stage is the
same; kill -9 of the matcher takes the stage along (PR_SET_PDEATHSIG): start-up is recovery.
"""
from __future__ import annotations

import gc
import mmap
import os
import struct
import time
from collections import deque
from typing import Any, Final

from appliance.clock import Clock
from appliance.feedstage import frame_items
from appliance.idle import BUSY_SPIN, make_idle
from appliance.metrics import StageClock
from appliance.ring import SHM_DIR, RingConsumer, wait_on_bells
from appliance.stage import StageLink, fork_stage
from appliance.wal import EXIT_DURABILITY_FAILURE, POLICY_INTERVAL, DurabilityError, WalWriter, frame_records

WAL_SLOTS: Final = 1024
# Items the stage takes per poll: it frees their slots before their fsync, so the matcher can hold
# up to WAL_SLOTS + WAL_POLL batches not yet durable.
WAL_POLL: Final = 64
WAL_SLOT_SIZE: Final = 8192
ITEM_RECORDS: Final = 0x57   # W
ITEM_SYNC: Final = 0x59      # Y
ITEM_CLOSE: Final = 0x43     # C
_U32: Final = struct.Struct("<I")
_SEQ_TS: Final = struct.Struct("<QQ")
SYNC_TIMEOUT_S: Final = 60.0


def wal_ring_name(prefix: str, partition: str) -> str:
    return f"{prefix}.{partition}.wal"


class DurableWord:
    """The durable sequence the WAL stage publishes and the matcher reads: one aligned 8-byte store
    and load (atomic on x86-64, as the ring's counters), and a failed flag."""

    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, 64)
        else:
            fd = os.open(path, os.O_RDWR)
        try:
            self._mm: mmap.mmap | None = mmap.mmap(fd, 64)
        finally:
            os.close(fd)
        self._view = memoryview(self._mm).cast("Q")

    def get(self) -> int:
        return int(self._view[0])

    def set(self, seq: int) -> None:
        self._view[0] = seq

    @property
    def failed(self) -> bool:
        return self._view[1] != 0

    def fail(self) -> None:
        self._view[1] = 1

    def close(self, unlink: bool = False) -> None:
        if self._mm is not None:
            self._view.release()
            self._mm.close()
            self._mm = None
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class RemoteWal:
    """The matcher's WAL writer when the WAL stage runs: frames and sequences records as WalWriter
    does, hands them to the stage, and reads the durable sequence from the shared word. Owned by
    the matching thread."""

    stages: StageClock | None = None

    def __init__(self, link: StageLink, word: DurableWord, writer: WalWriter,
                 tap: deque[tuple[int, int, list[bytes]]] | None) -> None:
        self.link = link
        self.word = word
        self.policy = writer.policy
        self.epoch = writer.epoch
        self._next_seq = writer.next_seq
        self.written_seq = writer.next_seq - 1     # handed to the stage
        self.tap = tap
        self._pending: list[list[bytes]] = []
        self._failed: DurabilityError | None = None
        self.directory = writer.directory
        word.set(writer.durable_seq)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def backlog(self) -> list[bytes]:
        return self.link.backlog

    @property
    def failed(self) -> DurabilityError | None:
        return self._failed

    @property
    def durable_seq(self) -> int:
        w = self.word
        if w.failed:
            self._fail("the WAL stage reported a failure (its log line says which)")
        return w.get()

    def append_batch(self, first_seq: int, ts_ns: int, epoch: int, cmds: list[Any], bodies: list[bytes]) -> None:
        if self._failed:
            raise self._failed
        if epoch != self.epoch or first_seq != self._next_seq:
            raise DurabilityError(f"WAL stage: batch at seq {first_seq} epoch {epoch}, expected seq "
                                  f"{self._next_seq} epoch {self.epoch}")
        recs: list[bytes] = []
        frame_records(first_seq, ts_ns, epoch, cmds, bodies, recs)
        self._next_seq = first_seq + len(recs)
        self._pending.append(recs)
        if self.tap is not None:
            self.tap.append((first_seq, self._next_seq - 1, recs))

    def commit(self, now_ns: int) -> int:
        """Hand the batches appended to the stage (no waiting); the durable seq as the stage says."""
        if self._pending:
            frame_items(self._pending, self.link.max_payload, self.link.backlog)
            self._pending.clear()
            self.written_seq = self._next_seq - 1
        self.link.flush()
        return self.durable_seq

    def poll(self, now_ns: int) -> int:
        self.link.flush()
        return self.durable_seq

    def sync(self, now_ns: int = 0) -> int:
        """Everything appended made durable (snapshots at shutdown): ask, then wait for the word."""
        self.commit(now_ns)
        self.link.send(b"Y")
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while self.durable_seq < self.written_seq:
            self.link.flush()
            if self.link.check() is not None:
                self._fail(f"the WAL stage exited with {self.link.exit_status}")
            if time.monotonic() > deadline:
                self._fail(f"the WAL stage made nothing durable past seq {self.word.get()} in {SYNC_TIMEOUT_S:.0f} s")
            time.sleep(0.0005)
        return self.durable_seq

    def close(self) -> None:
        """Clean shutdown: sync, then the stage seals, closes and exits 0."""
        if self._failed or self.link.exit_status is not None:
            return
        self.sync()
        self.link.send(b"C")
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while self.link.check() is None and time.monotonic() < deadline:
            self.link.flush()
            time.sleep(0.002)
        if self.link.check() != 0:
            self.link.kill()
            self._fail(f"the WAL stage did not close cleanly (exit {self.link.exit_status})")

    def check_alive(self) -> None:
        """DurabilityError once the stage has ended without being asked to."""
        if self.link.check() is not None:
            self._fail(f"the WAL stage (pid {self.link.pid}) exited with {self.link.exit_status}")

    def _fail(self, why: str) -> None:
        err = self._failed or DurabilityError(f"WAL {self.directory}: {why}; no further acknowledgements")
        self._failed = err
        raise err


def start(name: str, prefix: str, writer: WalWriter, idle: str, cpu: int | None, clock: Clock,
          tap: deque[tuple[int, int, list[bytes]]] | None) -> RemoteWal:
    """Create the WAL ring and the durable word, fork the WAL stage (it takes ``writer``); return the
    matcher's stand-in for the writer."""
    ring_name = wal_ring_name(prefix, name)
    word = DurableWord(os.path.join(SHM_DIR, ring_name + ".durable"), create=True)
    word.set(writer.durable_seq)

    def main(consumer: RingConsumer, bell: int) -> int:
        writer.tap = None
        return _stage(consumer, bell, writer, word, clock, idle)

    ring, pid, bell = fork_stage(name, "wal", ring_name, WAL_SLOTS, WAL_SLOT_SIZE, cpu, main,
                                 EXIT_DURABILITY_FAILURE, spins=idle == BUSY_SPIN)
    return RemoteWal(StageLink(name, ring, pid, bell), word, writer, tap)


def _stage(consumer: RingConsumer, bell: int, writer: WalWriter, word: DurableWord, clock: Clock,
           idle_name: str) -> int:
    """The WAL stage's loop (its only thread)."""
    gc.disable()
    idle = make_idle(idle_name, lambda ns: wait_on_bells((consumer,), (bell,), ns))
    unpack_len = _U32.unpack_from
    unpack_st = _SEQ_TS.unpack_from
    interval = writer.policy == POLICY_INTERVAL
    last_gen0 = time.monotonic()
    try:
        while True:
            items = consumer.poll(WAL_POLL)
            if items:
                for item in items:
                    tag = item[0]
                    length = len(item)
                    if tag == ITEM_RECORDS:
                        off = 1
                        count = 0
                        first, _ = unpack_st(item, 9)
                        last = first
                        ts = 0
                        while off < length:
                            last, ts = unpack_st(item, off + 8)
                            off += unpack_len(item, off)[0]
                            count += 1
                        writer.append_framed(item[1:], count, first, last, ts)
                    elif tag == ITEM_SYNC:
                        word.set(writer.sync(clock()))
                    elif tag == ITEM_CLOSE:
                        writer.close()
                        word.set(writer.durable_seq)
                        return 0
                    else:
                        raise ValueError(f"WAL ring: unknown item {tag:#x}")
                word.set(writer.commit(clock()))
                idle.idle(len(items))
                continue
            if interval:
                word.set(writer.poll(clock()))
            t = time.monotonic()
            if t - last_gen0 >= 1.0:
                gc.collect(0)
                last_gen0 = t
            idle.idle(0)
    except DurabilityError:
        word.fail()
        raise
